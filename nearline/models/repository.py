"""The model repository: Triton's layout, read with Triton's own model-config proto.

Layout (the folder a Triton server loads with its PyTorch and ONNX Runtime backends, and the
folder the in-process torch and onnx backends load)::

    <root>/<model>/config.pbtxt          # protobuf text of inference.ModelConfig
    <root>/<model>/<version>/model.pt    # TorchScript (or model.onnx), version a positive integer
    <root>/<model>/labels.txt            # optional: an output's ``label_filename``

Configs are parsed with :mod:`google.protobuf.text_format` into
``tritonclient.grpc.model_config_pb2.ModelConfig`` (no hand parser), then checked for what the
backends and our runner need: ``platform`` one of :data:`MODEL_FILES` (or the matching
``backend``), ``max_batch_size > 0`` (dims exclude the batch dimension), a ``version_policy``
(optional; ``all {}`` where a pipeline calls several versions: Triton serves only the latest one
by default; :meth:`ModelRepository.served_versions` applies it), and, for TorchScript,
inputs and outputs named ``INPUT__<i>`` / ``OUTPUT__<i>`` in index order (TorchScript passes
tensors by position; ONNX models keep their own names, which Triton matches by name). A tensor
with a ``reshape`` (Triton's way to give a model a tensor of shape ``[batch]``: ``dims: [1]``,
``reshape: {shape: []}``) is exchanged in its reshaped form.
A missing or garbled config raises :class:`~nearline.errors.ConfigError` naming the file.
This module imports no torch: API processes may read configs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as pb

from nearline.errors import ConfigError

CONFIG_FILE = "config.pbtxt"
MODEL_FILE = "model.pt"
#: Each platform this project runs, and its model file's default name (as Triton has them).
MODEL_FILES = {"pytorch_libtorch": MODEL_FILE, "onnxruntime_onnx": "model.onnx"}
#: Triton's ``backend`` names of those platforms (a config may give either).
_BACKEND_PLATFORMS = {"pytorch": "pytorch_libtorch", "onnxruntime": "onnxruntime_onnx"}

#: Triton data types the examples use, and the numpy dtype each is exchanged as.
DTYPES = {
    pb.TYPE_BOOL: "bool",
    pb.TYPE_INT32: "int32",
    pb.TYPE_INT64: "int64",
    pb.TYPE_FP16: "float16",
    pb.TYPE_FP32: "float32",
    pb.TYPE_FP64: "float64",
}

_TENSOR_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*__(\d+)$")


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of a model: name, numpy dtype and dims without the batch dimension."""

    name: str
    dtype: str
    dims: tuple[int, ...]
    label_filename: str = ""

    def accepts(self, shape: tuple[int, ...]) -> bool:
        """True when a row of ``shape`` (no batch dimension) fits ``dims`` (-1 matches any size)."""
        return len(shape) == len(self.dims) and all(
            d in (-1, s) for d, s in zip(self.dims, shape, strict=True)
        )


@dataclass(frozen=True)
class ModelSpec:
    """A model's parsed, checked config.pbtxt."""

    name: str
    path: Path
    max_batch_size: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    config: pb.ModelConfig = field(repr=False, compare=False)
    platform: str = "pytorch_libtorch"

    @property
    def model_filename(self) -> str:
        """The file each version folder holds: the config's ``default_model_filename``, else the
        platform's (``model.pt``, ``model.onnx``)."""
        return self.config.default_model_filename or MODEL_FILES[self.platform]


class ModelRepository:
    """A Triton-layout model repository on disk; configs are parsed once and cached.

    Args:
        root: The repository folder (``models/`` by default in this project).

    Raises:
        ConfigError: ``root`` is not a directory.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise ConfigError(f"model repository {self.root}: not a directory")
        self._specs: dict[str, ModelSpec] = {}

    def names(self) -> list[str]:
        """Names of the models in the repository (folders holding a config.pbtxt), sorted."""
        return sorted(p.parent.name for p in self.root.glob(f"*/{CONFIG_FILE}"))

    def model(self, name: str) -> ModelSpec:
        """The parsed config of model ``name``.

        Raises:
            ConfigError: No such model, or its config.pbtxt is garbled or unusable.
        """
        spec = self._specs.get(name)
        if spec is None:
            spec = self._specs[name] = read_config(self.root / name / CONFIG_FILE)
        return spec

    def versions(self, name: str) -> list[int]:
        """The versions of ``name`` that hold a model file, ascending."""
        folder = self.root / name
        try:
            files = {self.model(name).model_filename}
        except ConfigError:  # listed in a message about the config: any model file counts
            files = set(MODEL_FILES.values())
        return sorted(
            int(p.name)
            for p in folder.iterdir()
            if p.name.isdigit() and any((p / f).is_file() for f in files)
        )

    def served_versions(self, name: str) -> list[int]:
        """The versions of ``name`` a Triton server serves: those of :meth:`versions` that the
        config's ``version_policy`` names (``all``; ``specific {versions}``; ``latest
        {num_versions}``, and without a policy Triton's default, the latest one), ascending.

        Raises:
            ConfigError: No such model, or its config.pbtxt is garbled or unusable.
        """
        policy = self.model(name).config.version_policy
        available = self.versions(name)
        kind = policy.WhichOneof("policy_choice")
        if kind == "all":
            return available
        if kind == "specific":
            return [v for v in available if v in set(policy.specific.versions)]
        latest = policy.latest.num_versions if kind == "latest" else 1
        return available[-max(latest, 1) :]

    def model_file(self, name: str, version: int) -> Path:
        """The model file (TorchScript, ONNX) of ``name`` at ``version``.

        Raises:
            ConfigError: The model or that version of it is not in the repository.
        """
        path = self.root / name / str(version) / self.model(name).model_filename
        if not path.is_file():
            raise ConfigError(f"model '{name}' version {version}: {path} does not exist")
        return path

    def asset(self, name: str, filename: str) -> Path:
        """A file kept beside model ``name``'s config (a tokenizer, say; Triton ignores it).

        Raises:
            ConfigError: The file is not there.
        """
        path = self.root / name / filename
        if not path.is_file():
            raise ConfigError(f"model '{name}': {path} does not exist")
        return path

    def labels(self, name: str) -> list[str]:
        """The class labels of ``name``: its first output's ``label_filename``, one label a line.

        Raises:
            ConfigError: The model has no labelled output or the labels file is missing.
        """
        spec = self.model(name)
        for out in spec.outputs:
            if out.label_filename:
                path = spec.path.parent / out.label_filename
                try:
                    return [line for line in path.read_text().splitlines() if line]
                except OSError as exc:
                    raise ConfigError(f"{path}: cannot read labels: {exc.strerror}") from None
        raise ConfigError(f"{spec.path}: no output has a label_filename")


def read_config(path: Path) -> ModelSpec:
    """Parse and check one config.pbtxt.

    Raises:
        ConfigError: The file is missing, not valid ModelConfig text, or not a config this
            project can run; the message names the file and the field.
    """
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read model config: {exc.strerror}") from None
    config = pb.ModelConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as exc:
        raise ConfigError(f"{path}: not a valid Triton model config: {exc}") from None
    name = path.parent.name
    if config.name and config.name != name:
        raise ConfigError(f"{path}: name {config.name!r} differs from its folder {name!r}")
    platform = config.platform or _BACKEND_PLATFORMS.get(config.backend, "")
    if platform not in MODEL_FILES:
        raise ConfigError(
            f"{path}: platform must be one of {', '.join(map(repr, MODEL_FILES))} "
            f"(or backend {' or '.join(map(repr, _BACKEND_PLATFORMS))})"
        )
    if config.max_batch_size <= 0:
        raise ConfigError(f"{path}: max_batch_size must be > 0 (the batch dimension is dimension 0)")
    _check_version_policy(path, config.version_policy)
    positional = platform == "pytorch_libtorch"
    return ModelSpec(
        name=name,
        path=path,
        max_batch_size=config.max_batch_size,
        inputs=_tensors(path, "input", config.input, positional),
        outputs=_tensors(path, "output", config.output, positional),
        config=config,
        platform=platform,
    )


def _check_version_policy(path: Path, policy: pb.ModelVersionPolicy) -> None:
    kind = policy.WhichOneof("policy_choice")
    if kind == "latest" and policy.latest.num_versions < 1:
        raise ConfigError(f"{path}: version_policy: latest: num_versions must be >= 1")
    if kind == "specific" and (not policy.specific.versions or min(policy.specific.versions) < 1):
        raise ConfigError(f"{path}: version_policy: specific: versions must be positive integers")


def _tensors(
    path: Path, kind: str, tensors: list[pb.ModelInput] | list[pb.ModelOutput], positional: bool
) -> tuple[TensorSpec, ...]:
    if not tensors:
        raise ConfigError(f"{path}: at least one {kind} is required")
    specs = []
    for i, t in enumerate(tensors):
        match = _TENSOR_NAME.match(t.name)
        if positional and (match is None or int(match.group(1)) != i):
            raise ConfigError(f"{path}: {kind} {i} is named {t.name!r}; expected {kind.upper()}__{i}")
        if not t.name:
            raise ConfigError(f"{path}: {kind} {i} has no name")
        dtype = DTYPES.get(t.data_type)
        if dtype is None:
            raise ConfigError(
                f"{path}: {kind} {t.name}: data_type {pb.DataType.Name(t.data_type)} is not supported"
            )
        if not t.dims:
            raise ConfigError(f"{path}: {kind} {t.name}: dims are required")
        dims = tuple(t.reshape.shape) if t.HasField("reshape") else tuple(t.dims)
        specs.append(TensorSpec(t.name, dtype, dims, getattr(t, "label_filename", "")))
    return tuple(specs)


def write_config(path: Path, config: pb.ModelConfig) -> None:
    """Write ``config`` as protobuf text, the form Triton reads."""
    path.write_text(text_format.MessageToString(config))
