"""Steps any pipeline may use, by name in ``pipelines.yaml`` (``nearline.pipelines.steps:outputs``).

A model step leaves numpy rows in each item; the job output must be JSON. :func:`outputs` is
the last step of a pipeline that returns a model's outputs as they are, what ``nearline models
import`` prints for an imported model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def outputs(item: Mapping[str, Any], keys: Sequence[str]) -> dict[str, Any]:
    """The values of ``item`` under ``keys``, as JSON: arrays as (nested) lists, numpy scalars as
    Python numbers. (NaN stays NaN, and the runner fails such an item: ``ModelError``.)"""
    return {key: as_json(item[key]) for key in keys}


def as_json(value: Any) -> Any:
    """``value`` with numpy arrays and scalars turned into lists and Python numbers."""
    if isinstance(value, np.ndarray | np.generic):
        return value.tolist()
    if isinstance(value, Mapping):
        return {k: as_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [as_json(v) for v in value]
    return value
