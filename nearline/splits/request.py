"""The body of ``PUT /api/endpoints/{name}/traffic``, parsed and checked (docs/api.md)."""

from __future__ import annotations

from collections.abc import Sequence

from nearline import strict_json
from nearline.errors import ConfigError, RequestError
from nearline.pipelines.traffic import Split, check_split

#: A reason longer than this is refused: it is kept in every replica's history for good.
MAX_REASON = 500


def parse_split_request(body: bytes, names: Sequence[str]) -> tuple[Split, str]:
    """``{"traffic": {...}, "mirror": {...}?, "reason": "..."?}`` checked against the endpoint's
    deployments ``names``: the split and the reason.

    Raises:
        RequestError: (400) not strict JSON, not an object, an unknown field, or a broken rule
            (:func:`nearline.pipelines.traffic.check_split`); the message names the field.
    """
    try:
        doc = strict_json.load(body)
    except strict_json.StrictJSONError as exc:
        raise RequestError(str(exc)) from None
    try:
        split = check_split("request body", doc, names)
    except ConfigError as exc:
        raise RequestError(exc.message) from None
    reason = doc.get("reason", "")
    if not isinstance(reason, str) or len(reason) > MAX_REASON:
        raise RequestError(f"request body: 'reason' must be a string of at most {MAX_REASON} characters")
    return split, reason
