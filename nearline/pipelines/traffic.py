"""An endpoint's traffic split: checked when ``pipelines.yaml`` is loaded, drawn from at submit.

``traffic`` maps deployment names to integer weights that sum to 100, or are all 0 (no live
traffic: only requests that name a deployment with the ``nearline-deployment`` header are
served). A deployment left out gets 0. docs/deployments.md has the walk-through.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

from nearline.errors import ConfigError, UnknownDeployment

#: Weights are percentages, as Azure ML online endpoints write them.
TOTAL = 100


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
    return (rng or random).choices(names, weights=[traffic[n] for n in names])[0]
