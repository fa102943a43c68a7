"""The example pipelines' steps and their default ``pipelines.yaml``.

``digits`` (an MLP on scikit-learn's digits), ``topics`` (MiniLM sentence embeddings and a
classification head) and ``identity`` (no model). ``nearline models build`` creates their models.
"""

from pathlib import Path

#: The default pipelines file (API, workers and tests use it unless told otherwise).
PIPELINES_FILE = Path(__file__).resolve().parent / "pipelines.yaml"
