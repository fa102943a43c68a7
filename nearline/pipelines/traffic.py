"""An endpoint's traffic split: checked when ``pipelines.yaml`` is loaded, drawn from at submit.

``traffic`` maps deployment names to integer weights that sum to 100, or are all 0 (no live
traffic: only requests that name a deployment with the ``nearline-deployment`` header are
served). A deployment left out gets 0. ``mirror`` maps deployments at 0 to the percent of
untargeted requests also copied to them as shadow jobs (at most 50 in all). A :class:`Split` is the
two together: what ``pipelines.yaml`` starts an endpoint with, and what
``PUT /api/endpoints/{name}/traffic`` changes it to. docs/deployments.md has the walk-through.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from nearline.errors import ConfigError, UnknownDeployment

#: Weights are percentages, as Azure ML online endpoints write them.
TOTAL = 100
#: At most this share of requests is mirrored: each shadow job is a second job's compute.
MAX_MIRROR = 50
#: The fields of a ``PUT /api/endpoints/{name}/traffic`` body.
_SPLIT_FIELDS = {"traffic", "mirror", "reason"}


@dataclass(frozen=True)
class Split:
    """An endpoint's split: ``traffic`` (weights, every deployment named) and ``mirror`` (the
    percent of untargeted requests also scored, as shadow jobs, by deployments at 0)."""

    traffic: Mapping[str, int]
    mirror: Mapping[str, int] = field(default_factory=dict)

    def document(self) -> dict[str, Any]:
        """``{"traffic": {...}, "mirror": {...}}``, as the API shows and stores it."""
        return {"traffic": dict(self.traffic), "mirror": dict(self.mirror)}


def check_traffic(where: str, traffic: Any, names: Sequence[str]) -> dict[str, int]:
    """``traffic`` as read from a file, checked against the deployments ``names``.

    Raises:
        ConfigError: Not a mapping, a name that is not a deployment, a weight that is not an
            integer in 0..100, or weights that neither sum to 100 nor are all 0; the message
            starts with ``where`` and names the field.
    """
    if not isinstance(traffic, dict):
        raise ConfigError(f"{where}: 'traffic' must map deployment names to weights, e.g. {{v1: 100}}")
    split = {name: 0 for name in names}
    for name, weight in traffic.items():
        if name not in split:
            raise ConfigError(
                f"{where}: traffic: {name!r} is not a deployment; the deployments are: {', '.join(names)}"
            )
        if isinstance(weight, bool) or not isinstance(weight, int) or not 0 <= weight <= TOTAL:
            raise ConfigError(f"{where}: traffic: {name}: the weight must be an integer from 0 to {TOTAL}")
        split[name] = weight
    total = sum(split.values())
    if total not in (0, TOTAL):
        raise ConfigError(f"{where}: traffic: the weights sum to {total}; make them {TOTAL} (or all 0)")
    return split


def check_mirror(where: str, mirror: Any, traffic: Mapping[str, int]) -> dict[str, int]:
    """``mirror`` checked against a checked ``traffic``; deployments at 0 percent are left out.

    Raises:
        ConfigError: Not a mapping, a name that is not a deployment, a percent that is not an
            integer in 0..100, a mirror to a deployment that has traffic, or more than
            :data:`MAX_MIRROR` percent in all; the message starts with ``where`` and names the field.
    """
    if not isinstance(mirror, dict):
        raise ConfigError(f"{where}: 'mirror' must map deployment names to percents, e.g. {{v2: 10}}")
    checked: dict[str, int] = {}
    for name, share in mirror.items():
        if name not in traffic:
            raise ConfigError(
                f"{where}: mirror: {name!r} is not a deployment; the deployments are: {', '.join(traffic)}"
            )
        if isinstance(share, bool) or not isinstance(share, int) or not 0 <= share <= TOTAL:
            raise ConfigError(f"{where}: mirror: {name}: the percent must be an integer from 0 to {TOTAL}")
        if share and traffic[name]:
            raise ConfigError(
                f"{where}: mirror: {name} has {traffic[name]}% of the traffic; mirror only to a "
                "deployment at 0"
            )
        if share:
            checked[name] = share
    total = sum(checked.values())
    if total > MAX_MIRROR:
        raise ConfigError(f"{where}: mirror: the percents sum to {total}; at most {MAX_MIRROR} is mirrored")
    return checked


def check_split(where: str, doc: Any, names: Sequence[str]) -> Split:
    """A ``PUT /api/endpoints/{name}/traffic`` body (``{"traffic": ..., "mirror": ...}``; a
    ``reason`` is allowed and ignored here), checked against the deployments ``names``.

    Raises:
        ConfigError: Not an object, an unknown field, no ``traffic``, or a rule of
            :func:`check_traffic` or :func:`check_mirror` broken; the message names the field.
    """
    if not isinstance(doc, dict):
        raise ConfigError(f'{where}: must be a JSON object: {{"traffic": {{...}}, "mirror": {{...}}}}')
    unknown = sorted(str(k) for k in set(doc) - _SPLIT_FIELDS)
    if unknown:
        fields = ", ".join(sorted(_SPLIT_FIELDS))
        raise ConfigError(f"{where}: unknown field(s): {', '.join(unknown)}; the fields are: {fields}")
    if "traffic" not in doc:
        raise ConfigError(f"""{where}: 'traffic' is required, e.g. {{"traffic": {{"v1": 90, "v2": 10}}}}""")
    traffic = check_traffic(where, doc["traffic"], names)
    return Split(traffic, check_mirror(where, doc.get("mirror", {}), traffic))


def shadows(mirror: Mapping[str, int], rng: random.Random | None = None) -> list[str]:
    """The deployments an untargeted request is mirrored to: each with probability ``mirror[d]/100``."""
    draw = rng or random
    return [name for name, share in mirror.items() if share > 0 and draw.random() * TOTAL < share]


def choose(traffic: Mapping[str, int], endpoint: str, rng: random.Random | None = None) -> str:
    """A deployment drawn by weight.

    Raises:
        UnknownDeployment: (400) every weight is 0: the endpoint takes targeted requests only.
    """
    names = [name for name, weight in traffic.items() if weight > 0]
    if not names:
        raise UnknownDeployment(
            f"endpoint '{endpoint}' has no live traffic; name a deployment with the nearline-deployment "
            f"header (the deployments are: {', '.join(traffic)})"
        )
    if len(names) == 1:  # one live deployment (most endpoints): no draw
        return names[0]
    return (rng or random).choices(names, weights=[traffic[n] for n in names])[0]
