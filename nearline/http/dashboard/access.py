"""Who may see the dashboard and who may act in it: the API's keys, carried by a cookie.

A browser cannot send ``x-functions-key``, so the first page is opened as ``/ui?code=KEY``: a
valid key is answered with a redirect to the same page without it and the cookie
``nearline_key`` (HttpOnly, SameSite=Strict, Path=/ui), which every later request of the
dashboard carries. Reading needs an API key (or an admin key); acting (redrive, purge) needs an
admin key, as on the admin API. Forms are POST only and a cross-site request never carries a
SameSite=Strict cookie; a request whose ``Origin`` is another site is refused as well.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from http.cookies import CookieError, SimpleCookie
from urllib.parse import quote, unquote, urlencode

from nearline.errors import Forbidden, Unauthorized
from nearline.http.handlers import Request

COOKIE = "nearline_key"
#: Where the cookie is sent: the dashboard's pages only, never the API.
COOKIE_PATH = "/ui"


@dataclass(frozen=True)
class Access:
    """The keys a dashboard request is checked against (empty: an open, loopback server)."""

    api_keys: tuple[str, ...] = ()
    admin_keys: tuple[str, ...] = ()

    @property
    def open(self) -> bool:
        return not self.api_keys and not self.admin_keys

    def key_of(self, request: Request) -> str:
        """The key a request carries: ``?code=`` first (the first page), else the cookie."""
        return request.query.get("code") or cookie(request, COOKIE) or ""

    def reader(self, request: Request) -> str:
        """Check a page view; returns the key (401 naming how to give one)."""
        key = self.key_of(request)
        if self.open:
            return key
        if not key:
            raise Unauthorized(
                "a key is required: open /ui?code=KEY once, the dashboard keeps it in a cookie"
            )
        if not _one_of(key, self.api_keys + self.admin_keys):
            raise Unauthorized("the key is not valid")
        return key

    def actor(self, request: Request, admin: bool) -> str:
        """Check a form post: same site, a valid key, an admin key when ``admin`` (403)."""
        origin = request.headers.get("origin")
        if origin is not None and origin.rstrip("/") != request.base_url:
            raise Forbidden(f"a form from another site ({origin[:100]}) is refused")
        key = self.reader(request)
        if admin and not self.open and not _one_of(key, self.admin_keys):
            raise Forbidden("this action needs an admin key (NEARLINE_ADMIN_KEYS)")
        return key

    def is_admin(self, key: str) -> bool:
        """Whether the pages should offer the admin actions."""
        return self.open or _one_of(key, self.admin_keys)


def cookie(request: Request, name: str) -> str | None:
    """One cookie's value from the ``Cookie`` header; None if absent or the header is malformed."""
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(request.headers.get("cookie", ""))
    except CookieError:
        return None
    morsel = jar.get(name)
    return unquote(morsel.value) if morsel is not None else None


def remember(request: Request, path: str) -> dict[str, str]:
    """The redirect after ``?code=``: to ``path`` without the key, and the cookie that keeps it."""
    rest = {k: v for k, v in request.query.items() if k != "code"}
    target = path + (f"?{urlencode(rest)}" if rest else "")
    secure = "; Secure" if request.base_url.startswith("https:") else ""
    key = quote(request.query.get("code", ""), safe="")  # any key: ; , = and spaces escaped
    value = f"{COOKIE}={key}; HttpOnly; SameSite=Strict; Path={COOKIE_PATH}{secure}"
    return {"Location": target, "Set-Cookie": value, "Cache-Control": "no-store"}


def _one_of(key: str, keys: tuple[str, ...]) -> bool:
    return any(hmac.compare_digest(key.encode(), k.encode()) for k in keys)
