"""What kind of address a host name is: the one place nearline decides "is this loopback?".

``nearline serve`` and ``nearline triton serve`` refuse to listen off loopback without keys;
the callback guard (:mod:`nearline.callbacks`) refuses to send to loopback, private, link-local
and other non-public addresses.
"""

from __future__ import annotations

import ipaddress


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and the loopback ranges (127.0.0.0/8, ``::1``)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
