"""The Triton backend: model steps run on a Triton Inference Server serving the same repository.

Guarantees: requests carry the repository's config.pbtxt input names and dtypes (inputs are cast
to them) as binary tensors, and ask for every config output; a batch larger than the model's
``max_batch_size`` goes as several requests *in flight at once* (so is each concurrent call from
a worker's threads), which is what gives Triton's dynamic batcher work to merge; every output
must come back with as many rows as the batch, or the call raises
:class:`~nearline.errors.ModelError`.

URL: ``grpc://host:8001`` (default) or ``http://host:8000``, options ``?timeout_s=10&retry_s=15``
(:mod:`nearline.models.triton_client` has the policy: per-request deadline; retries with backoff
while the server or model is unavailable; then ``ModelError`` naming the URL and the model).
A worker turns that ``ModelError`` into a Failed job for the items of that batch: no message is
lost, each gets exactly one result.

``load`` (worker start-up) waits up to ``retry_s`` for the server to be live and the model ready,
then checks the served model has the config's tensors; otherwise ``ConfigError`` naming the model
and the URL.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import numpy as np
from tritonclient.utils import np_to_triton_dtype

from nearline.errors import ConfigError, ModelError
from nearline.models.backend import model_inputs
from nearline.models.repository import ModelRepository, ModelSpec
from nearline.models.triton_client import BACKOFF_MAX_S, TritonClient, TritonTarget


class TritonBackend:
    """Runs the repository's models on a Triton server.

    Args:
        repository: The model repository the server serves (configs are read from it).
        triton_url: ``grpc://host:port`` or ``http://host:port``, optionally ``?timeout_s=&retry_s=``.
        timeout_s: Per-request deadline in seconds (overrides the URL's).
        retry_s: How long to retry while the server is unavailable (overrides the URL's).

    Raises:
        ConfigError: The URL is malformed.
    """

    def __init__(
        self,
        repository: ModelRepository,
        triton_url: str,
        *,
        timeout_s: float | None = None,
        retry_s: float | None = None,
    ) -> None:
        self.repository = repository
        self.target = TritonTarget.parse(triton_url, timeout_s=timeout_s, retry_s=retry_s)
        self._client = TritonClient(self.target)

    def load(self, model: str, version: int) -> None:
        """Check that the server serves ``model`` at ``version`` with the config's tensors.

        Waits up to ``retry_s`` for the server to come up and the model to be ready.

        Raises:
            ConfigError: The model is not in the repository, not ready on the server after the
                wait, or served with other tensors; the message names the model and the URL.
        """
        spec = self.repository.model(model)
        problem = self._client.run(self._wait_ready(model, version))
        if problem is not None:
            served_here = self.repository.served_versions(model)
            if version not in served_here:  # Triton loads only what the version_policy names
                problem += f"; {spec.path}'s version_policy serves versions {served_here}, not {version}"
            raise ConfigError(
                f"Triton at {self.target.url}: model '{model}' version {version} is not available "
                f"after {self.target.retry_s:g} s: {problem}"
            )
        try:
            served = self._client.run(self._client.tensors(model, version))
        except ModelError as exc:
            raise ConfigError(exc.message) from None
        expected = {t.name: np_to_triton_dtype(np.dtype(t.dtype)) for t in (*spec.inputs, *spec.outputs)}
        if served != expected:
            raise ConfigError(
                f"Triton at {self.target.url}: model '{model}' version {version} is served with tensors "
                f"{served}; {spec.path} declares {expected}"
            )

    def infer(self, model: str, version: int, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch; see :meth:`nearline.models.backend.ModelBackend.infer`.

        Raises:
            ModelError: A missing input, inputs of different batch sizes, Triton unavailable
                beyond the retry window, a timeout, the model failing, or outputs missing or of
                the wrong row count.
        """
        try:
            spec = self.repository.model(model)
        except ConfigError as exc:
            raise ModelError(exc.message) from None
        arrays = model_inputs(spec, inputs)
        rows = next(iter(arrays.values())).shape[0]
        size = spec.max_batch_size
        chunks = [{k: a[i : i + size] for k, a in arrays.items()} for i in range(0, rows, size)]
        results = self._client.run(self._infer_chunks(spec, version, chunks))
        out = {}
        for t in spec.outputs:
            parts = [r[t.name] for r in results]
            out[t.name] = parts[0] if len(parts) == 1 else np.concatenate(parts)
        return out

    def close(self) -> None:
        """Close the connection to the server."""
        self._client.close()

    async def _wait_ready(self, model: str, version: int) -> str | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.target.retry_s
        while True:
            problem = await self._client.problem(model, version)
            if problem is None or loop.time() >= deadline:
                return problem
            await asyncio.sleep(min(BACKOFF_MAX_S / 4, max(deadline - loop.time(), 0)))

    async def _infer_chunks(
        self, spec: ModelSpec, version: int, chunks: list[dict[str, np.ndarray]]
    ) -> list[dict[str, np.ndarray]]:
        names = [t.name for t in spec.outputs]
        calls = [self._client.infer(spec.name, version, chunk, names) for chunk in chunks]
        results = await asyncio.gather(*calls)
        checked = []
        for chunk, result in zip(chunks, results, strict=True):
            rows = next(iter(chunk.values())).shape[0]
            outputs = {}
            for name in names:
                out = result.get(name)
                if out is None or out.ndim == 0 or out.shape[0] != rows:
                    got = "no" if out is None else (out.shape[0] if out.ndim else 0)
                    raise ModelError(
                        f"Triton at {self.target.url}: model '{spec.name}' output {name} has {got} rows "
                        f"for a batch of {rows}"
                    )
                outputs[name] = out
            checked.append(outputs)
        return checked


