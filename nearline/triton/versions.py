"""Several versions of one model on pytriton's Triton, under one model name.

pytriton 0.7.0 serves one version per model name. Read from its source, and run:

* ``Triton.bind(model_version=...)`` twice is accepted (its ``ModelManager`` keys models by name
  *and* version), but each bound model is loaded by its own ``load_model(name, config, files)``
  call with only its own ``<version>/`` files and a generated config without ``version_policy``:
  the second load is a new model ``name`` that would replace the first (the last version only).
* The sockets between Triton's Python backend stub and the callables are named by model name
  and instance name only (``<name>-data.sock``, ``<name>-config.sock``,
  ``<name>_<group>_<i>-server.sock``), and Triton names the instances of every version
  ``<name>_0_<i>``. Run, the second version's stub dies on the first one's data socket
  (``OSError: [Errno 98] Address already in use``; Triton: ``failed to load 'm' version 2``)
  and ``Triton.run()`` fails.

So the versions are bound *once*, as one pytriton model whose callables are every version's
(version ``k`` of ``n`` owns callables ``k*count .. k*count+count-1``), and its load is widened:
the config sent to Triton names the versions (``version_policy: specific``) and keeps
``count`` instances per version; every version folder gets pytriton's proxy files, and its
``model.py`` becomes a wrapper that renames the stub's instance ``<name>_0_<i>`` to
``<name>_0_<k*count+i>`` (and waits for instance 0's handshake socket: pytriton waits 1 s, and
Triton starts the versions' stubs at once) before pytriton's own ``initialize`` runs. The stubs
of all versions then look like the instances of one pytriton model (one data socket and
handshake, as pytriton's multi-instance models have), each version's requests reach that
version's callables, and Triton routes by version as the official server does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from pytriton.triton import Triton

#: How long a stub that is not its model's first waits for the first one's handshake socket.
#: pytriton's own wait is 1 s, and Triton starts the versions' stubs at once: on a busy machine the
#: first stub may take longer to start than that (seen: minilm_onnx version 2 failing to load).
HANDSHAKE_WAIT_S = 120
#: The version folders' ``model.py``: pytriton's proxy model (copied beside it under this name),
#: with the instance renamed so that it reaches this version's callables.
_PROXY = "pytriton_model"
_WRAPPER = '''"""Version {version} of a nearline model on pytriton (nearline/triton/versions.py)."""

import json
import pathlib
import time

from .{proxy} import TritonPythonModel as _Proxy


class TritonPythonModel(_Proxy):
    def initialize(self, args):
        prefix, _, index = args["model_instance_name"].rpartition("_")
        instance = int(index) + {first}
        args = dict(args, model_instance_name=f"{{prefix}}_{{instance}}")
        if instance:  # pytriton connects it to instance 0's handshake server: wait for that
            config = json.loads(args["model_config"])
            workspace = pathlib.Path(config["parameters"]["workspace-path"]["string_value"])
            handshake = workspace / f"{{args['model_name']}}-config.sock"
            deadline = time.monotonic() + {wait_s}
            while not handshake.exists() and time.monotonic() < deadline:
                time.sleep(0.01)
        return super().initialize(args)
'''


def bind_versions(
    triton: Triton,
    name: str,
    callables: Sequence[Sequence[Callable[..., Any]]],
    versions: Sequence[int],
    **bind_args: Any,
) -> None:
    """Bind every version of model ``name`` (``callables[k]`` serve ``versions[k]``).

    Args:
        triton: The pytriton server, not started yet.
        name: The model name.
        callables: Per version, its callables (one per instance; the same count for every version).
        versions: The versions, ascending.
        bind_args: ``inputs``, ``outputs``, ``config``, ``strict`` of ``Triton.bind``.
    """
    count = len(callables[0])
    triton.bind(
        model_name=name,
        model_version=versions[-1],
        infer_func=[f for per_version in callables for f in per_version],
        **bind_args,
    )
    if len(versions) > 1:
        _widen(_bound_model(triton, name, versions[-1]), versions, count)


def _bound_model(triton: Triton, name: str, version: int) -> Any:
    """The ``pytriton.models.model.Model`` that ``Triton.bind`` just made for ``name``."""
    for model in triton._model_manager.models:  # no public accessor in pytriton 0.7.0
        if model.model_name == name and model.model_version == version:
            return model
    raise LookupError(f"pytriton has no model '{name}' version {version} bound")


def _widen(model: Any, versions: Sequence[int], count: int) -> None:
    """Make the bound model's load carry every version (see the module docstring)."""
    base_config, base_files = model.get_model_config, model.get_proxy_model_files

    def get_model_config() -> dict[str, Any]:
        config = dict(base_config())
        config["version_policy"] = {"specific": {"versions": list(versions)}}
        config["instance_group"] = [dict(g, count=count) for g in config["instance_group"]]
        return config

    def get_proxy_model_files() -> dict[str, bytes]:
        files = {key.split("/", 1)[1]: content for key, content in base_files().items()}
        out = {}
        for k, version in enumerate(versions):
            for filename, content in files.items():
                if filename == "model.py":
                    out[f"file:{version}/{_PROXY}.py"] = content
                    wrapper = _WRAPPER.format(
                        version=version, first=k * count, proxy=_PROXY, wait_s=HANDSHAKE_WAIT_S
                    )
                    out[f"file:{version}/model.py"] = wrapper.encode()
                else:
                    out[f"file:{version}/{filename}"] = content
        return out

    model.get_model_config = get_model_config
    model.get_proxy_model_files = get_proxy_model_files
