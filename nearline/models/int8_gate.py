"""int8 as a version that must earn its place: the quantized MiniLM, and the gate it must pass.

:func:`quantize` makes an int8 copy of an fp32 ONNX encoder with ONNX Runtime's dynamic
quantization (int8 weights per output channel, activations quantized per batch at run time).
:func:`judge` compares the labels the topic head gives over each encoder's embeddings on the
build's held-out texts (:mod:`nearline.examples.heldout`): the int8 model is registered as a
version of its own only when they agree on at least :data:`MIN_AGREEMENT` of at least
:data:`MIN_TEXTS` texts. The build prints the verdict either way (:meth:`Verdict.line`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nearline.models.repository import CONFIG_FILE, read_config, write_config

#: The share of held-out texts whose label must not change.
MIN_AGREEMENT = 0.99
#: Fewer held-out texts than this prove nothing: the gate refuses.
MIN_TEXTS = 500
#: MatMul weights only (the encoder's linear layers); quantizing the embedding tables' Gather
#: as well makes the file 2.5 x smaller but moved ~0.7% of the held-out labels (vs ~0.3%).
_OPS = ["MatMul"]


@dataclass(frozen=True)
class Verdict:
    """What the gate decided.

    Attributes:
        agreed: Held-out texts whose int8 label is the fp32 label.
        total: Held-out texts.
        minimum: The share needed.
    """

    agreed: int
    total: int
    minimum: float = MIN_AGREEMENT

    @property
    def agreement(self) -> float:
        """The share of texts whose label agrees (0 for none)."""
        return self.agreed / self.total if self.total else 0.0

    @property
    def registered(self) -> bool:
        """True when the int8 version earned its place."""
        return self.total >= MIN_TEXTS and self.agreement >= self.minimum

    def line(self, registered_as: str = "") -> str:
        """One line for the build's output, e.g. ``int8 agrees with fp32 on 99.7% of 600
        held-out texts: registered as minilm_onnx v2``."""
        head = f"int8 agrees with fp32 on {self.agreement:.1%} of {self.total} held-out texts"
        if self.registered:
            return f"{head}: registered{f' as {registered_as}' if registered_as else ''}"
        if self.total < MIN_TEXTS:
            return f"{head}: not registered (needs at least {MIN_TEXTS} texts)"
        return f"{head}: not registered (needs {self.minimum:.0%})"


def judge(
    fp32_labels: Sequence[int] | np.ndarray,
    int8_labels: Sequence[int] | np.ndarray,
    minimum: float = MIN_AGREEMENT,
) -> Verdict:
    """Compare the labels of the same texts under the fp32 and the int8 encoder.

    Raises:
        ValueError: The two label lists differ in length.
    """
    a, b = np.asarray(fp32_labels), np.asarray(int8_labels)
    if a.shape != b.shape:
        raise ValueError(f"{len(a)} fp32 labels for {len(b)} int8 labels")
    return Verdict(int((a == b).sum()), len(a), minimum)


def register(fp32: Path, fp32_labels: np.ndarray, labels: Callable[[Path], np.ndarray]) -> Verdict:
    """Quantize ``<model>/1/model.onnx`` to ``<model>/2/model.onnx`` and keep it if it earns it.

    Args:
        fp32: The fp32 model file, version 1 of its model folder.
        fp32_labels: The held-out texts' labels over the fp32 model.
        labels: The held-out texts' labels over a model file (called with the int8 one).

    Returns:
        The verdict. Registered: the config serves both versions (``version_policy: all``).
        Not: version 2 is removed. ``build.json`` records it either way (``int8``).
    """
    folder = fp32.parent.parent
    int8 = folder / "2" / fp32.name
    quantize(fp32, int8)
    verdict = judge(fp32_labels, labels(int8))
    facts = json.loads((folder / "build.json").read_text())
    facts["int8"] = {"agreement": verdict.agreement, "heldout_texts": verdict.total,
                     "registered": verdict.registered}  # fmt: skip
    if verdict.registered:
        config = read_config(folder / CONFIG_FILE).config
        config.version_policy.all.SetInParent()
        write_config(folder / CONFIG_FILE, config)
        read_config(folder / CONFIG_FILE)
        facts["versions"] = [1, 2]
    else:
        shutil.rmtree(int8.parent)
    (folder / "build.json").write_text(json.dumps(facts, indent=2) + "\n")
    return verdict


def quantize(fp32: Path, int8: Path) -> None:
    """Write the dynamically quantized (int8) copy of the ONNX model ``fp32`` to ``int8``."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    int8.parent.mkdir(parents=True, exist_ok=True)
    with _without_preprocessing_advice():
        quantize_dynamic(fp32, int8, weight_type=QuantType.QInt8, per_channel=True, op_types_to_quantize=_OPS)


@contextlib.contextmanager
def _without_preprocessing_advice() -> Iterator[None]:
    """Drop the quantizer's "consider pre-processing" warning (it logs it on the root logger).

    The pre-processing (symbolic shape inference) changes nothing for dynamic quantization of
    MatMuls; ``logging.warning`` would also configure the root logger when it has no handler,
    hence the temporary NullHandler.
    """
    root = logging.getLogger()
    keep = logging.NullHandler()

    def advice(record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()

    root.addHandler(keep)
    root.addFilter(advice)
    try:
        yield
    finally:
        root.removeFilter(advice)
        root.removeHandler(keep)
