"""``nearline models import FILE --name N``: put a user's ONNX or TorchScript model into the repository.

Writes the Triton layout (``<models>/<N>/config.pbtxt``, ``<models>/<N>/<V>/model.onnx`` or
``model.pt``) with a config whose inputs and outputs are read from the model itself, then prints
them and a pipeline for ``pipelines.yaml`` that serves the model as it is
(:mod:`nearline.models.snippet`).

* ONNX (``.onnx``, e.g. from skl2onnx or ``torch.onnx.export``): names, dtypes and dims come
  from the file (read by ONNX Runtime, which also proves it loads). Dimension 0 must be the
  batch (dynamic); a tensor of shape ``[batch]`` gets Triton's ``dims: [1]`` + ``reshape:
  {shape: []}``. A sequence or map output (skl2onnx's ZipMap) is refused: convert with
  ``options={"zipmap": False}``.
* TorchScript (``.pt``): a TorchScript file records no dtypes or shapes, so each input is given
  as ``--input DTYPE:DIMS`` (``fp32:64``; ``int64:-1`` for a variable length); the outputs are
  read by running the module on zeros, twice (two batch sizes, two lengths for ``-1``), which
  also proves dimension 0 is the batch.

Nothing is written unless every check passes; the version folder is written beside the
repository and renamed into place.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tritonclient.grpc import model_config_pb2 as pb

from nearline.constants import MODELS_DIR
from nearline.errors import ConfigError, NearlineError
from nearline.models.repository import CONFIG_FILE, DTYPES, MODEL_FILES, read_config, write_config

#: The config's max_batch_size (as ``nearline models build``'s): at least the workers' MAX_BATCH
#: (32), so a full micro-batch is one model call.
MAX_BATCH_SIZE = 64
#: Triton's dynamic batcher waits at most this long for more requests to join a batch.
QUEUE_DELAY_US = 500
#: Model names are folder names Triton loads; keep them plain.
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
#: ONNX Runtime's tensor types, as Triton's.
ONNX_TYPES = {
    "tensor(float)": pb.TYPE_FP32,
    "tensor(float16)": pb.TYPE_FP16,
    "tensor(double)": pb.TYPE_FP64,
    "tensor(int32)": pb.TYPE_INT32,
    "tensor(int64)": pb.TYPE_INT64,
    "tensor(bool)": pb.TYPE_BOOL,
}
#: ``--input`` dtype words (``fp32``, ``int64``, ...), as Triton's types.
TYPE_WORDS = {pb.DataType.Name(t).removeprefix("TYPE_").lower(): t for t in DTYPES}


@dataclass(frozen=True)
class Tensor:
    """A model input or output as read from the file: dims exclude the batch; -1 is variable."""

    name: str
    data_type: int
    dims: tuple[int, ...]


def import_model(
    file: Path,
    name: str,
    models: Path,
    version: int = 1,
    *,
    inputs: Sequence[str] = (),
    force: bool = False,
) -> Path:
    """Import ``file`` as model ``name`` at ``version`` into the repository ``models``.

    Args:
        inputs: TorchScript only: each input as ``DTYPE:DIMS`` (``fp32:64``).
        force: Replace that version (and the model's config) if it exists.

    Returns:
        The model's config.pbtxt.

    Raises:
        ConfigError: The file cannot be read as a model, or is not one the workers can batch;
            the version exists (without ``force``); the message says what to change.
    """
    if not MODEL_NAME.match(name):
        raise ConfigError(f"--name {name!r}: must match {MODEL_NAME.pattern}")
    if version < 1:
        raise ConfigError(f"--version {version}: must be >= 1")
    if not file.is_file():
        raise ConfigError(f"{file}: no such file")
    platform = _platform(file)
    if platform == "onnxruntime_onnx":
        if inputs:
            raise ConfigError("--input is for TorchScript files: an ONNX file records its inputs")
        ins, outs = read_onnx(file)
    else:
        from nearline.models.torchscript_reader import read_torchscript

        ins, outs = read_torchscript(file, [parse_input(i) for i in inputs])
    config = model_config(name, platform, ins, outs)
    _install(models, name, version, file, config, force)
    return models / name / CONFIG_FILE


def _platform(file: Path) -> str:
    if file.suffix == ".onnx":
        return "onnxruntime_onnx"
    if file.suffix in (".pt", ".pth", ".ts", ".torchscript"):
        return "pytorch_libtorch"
    raise ConfigError(f"{file}: expected an ONNX (.onnx) or TorchScript (.pt) file")


def parse_input(raw: str) -> Tensor:
    """``DTYPE:DIMS`` (``fp32:64``, ``int64:-1``, ``fp32:3,32,32``) as an input of a TorchScript model.

    Raises:
        ConfigError: Not of that form; the message lists the dtypes.
    """
    word, _, dims = raw.partition(":")
    data_type = TYPE_WORDS.get(word.strip().lower().removeprefix("type_"))
    try:
        shape = tuple(int(d) for d in dims.split(",")) if dims.strip() else ()
    except ValueError:
        shape = ()
    if data_type is None or not shape or any(d == 0 or d < -1 for d in shape):
        raise ConfigError(
            f"--input {raw!r}: expected DTYPE:DIMS without the batch dimension, e.g. fp32:64 or "
            f"int64:-1 (-1: a variable length); dtypes: {', '.join(TYPE_WORDS)}"
        )
    return Tensor("", data_type, shape)


def read_onnx(file: Path) -> tuple[list[Tensor], list[Tensor]]:
    """The inputs and outputs of an ONNX file, batch dimension removed.

    Raises:
        ConfigError: ONNX Runtime cannot load it, a tensor type is not supported (a ZipMap
            output, say), or dimension 0 is not a dynamic batch dimension.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(file), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime's own error types
        raise ConfigError(f"{file}: ONNX Runtime cannot load it: {exc}") from None
    ins = [_onnx_tensor(file, "input", t.name, t.type, t.shape) for t in session.get_inputs()]
    outs = [_onnx_tensor(file, "output", t.name, t.type, t.shape) for t in session.get_outputs()]
    return ins, outs


def _onnx_tensor(file: Path, kind: str, name: str, type_: str, shape: list[object]) -> Tensor:
    data_type = ONNX_TYPES.get(type_)
    if data_type is None:
        hint = ""
        if type_.startswith(("seq(", "map(")):
            hint = ' (skl2onnx\'s ZipMap: convert with options={"zipmap": False})'
        raise ConfigError(f"{file}: {kind} {name!r} is {type_}{hint}; supported: {', '.join(ONNX_TYPES)}")
    if not shape or isinstance(shape[0], int):
        first = "none" if not shape else shape[0]
        raise ConfigError(
            f"{file}: {kind} {name!r} has shape {shape}: dimension 0 must be a dynamic batch "
            f"dimension, not {first} (torch.onnx.export: dynamic_axes={{{name!r}: {{0: 'batch'}}}})"
        )
    dims = tuple(d if isinstance(d, int) and d > 0 else -1 for d in shape[1:])
    return Tensor(name, data_type, dims)


def model_config(name: str, platform: str, inputs: list[Tensor], outputs: list[Tensor]) -> pb.ModelConfig:
    """A config Triton and the in-process backends accept for these tensors (a rank-1 tensor,
    ``[batch]``, as ``dims: [1]`` with ``reshape: {shape: []}``)."""
    config = pb.ModelConfig(name=name, platform=platform, max_batch_size=MAX_BATCH_SIZE)
    for tensors, add in ((inputs, config.input.add), (outputs, config.output.add)):
        for t in tensors:
            entry = add(name=t.name, data_type=t.data_type, dims=list(t.dims) or [1])
            if not t.dims:
                entry.reshape.SetInParent()  # shape [] : the model sees [batch]
    config.dynamic_batching.max_queue_delay_microseconds = QUEUE_DELAY_US
    # KIND_AUTO: on the GPU when Triton sees one, else on the CPU (so one repository serves both).
    config.instance_group.add(kind=pb.ModelInstanceGroup.KIND_AUTO, count=1)
    return config


def _install(models: Path, name: str, version: int, file: Path, config: pb.ModelConfig, force: bool) -> None:
    folder = models / name
    target = folder / str(version)
    if target.exists() and not force:
        raise ConfigError(f"{target} exists: pass --force to replace it, or --version {version + 1}")
    models.mkdir(parents=True, exist_ok=True)
    # Built beside the repository, never in it: Triton loads every folder of its repository.
    scratch = Path(tempfile.mkdtemp(prefix=f".{models.name}.import-", dir=models.parent))
    try:
        staged = scratch / name
        (staged / str(version)).mkdir(parents=True)
        shutil.copyfile(file, staged / str(version) / MODEL_FILES[config.platform])
        write_config(staged / CONFIG_FILE, config)
        read_config(staged / CONFIG_FILE)  # what we write must be what we read
        folder.mkdir(exist_ok=True)
        if target.exists():
            shutil.rmtree(target)
        (staged / CONFIG_FILE).replace(folder / CONFIG_FILE)
        (staged / str(version)).chmod(0o755)
        (staged / str(version)).rename(target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    """``nearline models import FILE --name N [--version V] [--models DIR] [--input D:DIMS ...]``."""
    from nearline.cli import fail
    from nearline.models.repository import ModelRepository
    from nearline.models.snippet import describe

    parser = argparse.ArgumentParser(
        prog="nearline models import",
        description="Import an ONNX (.onnx) or TorchScript (.pt) model into the model repository.",
    )
    parser.add_argument("file", type=Path, help="the model file")
    parser.add_argument("--name", required=True, help="model name (its folder in the repository)")
    parser.add_argument("--version", type=int, default=1, help="model version (default: 1)")
    parser.add_argument(
        "--models", type=Path, default=Path(MODELS_DIR), help=f"repository folder (default: {MODELS_DIR})"
    )
    parser.add_argument(
        "--input",
        action="append",
        default=[],
        metavar="DTYPE:DIMS",
        help="TorchScript only, once per input in order: e.g. fp32:64 or int64:-1 (no batch dimension)",
    )
    parser.add_argument("--force", action="store_true", help="replace the version if it exists")
    args = parser.parse_args(argv)
    try:
        import_model(args.file, args.name, args.models, args.version, inputs=args.input, force=args.force)
        spec = ModelRepository(args.models).model(args.name)
        print(describe(spec, args.version, args.file))
    except (NearlineError, OSError, KeyboardInterrupt) as exc:
        return fail(parser.prog, exc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
