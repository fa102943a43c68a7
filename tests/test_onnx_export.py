"""The ONNX models `nearline models build` exports beside TorchScript, the int8 gate, the version
policy, and the example topics endpoint's second deployment (ONNX Runtime in a real worker)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from serving import running_server
from tritonclient.grpc import model_config_pb2 as pb

from nearline.errors import ConfigError
from nearline.examples import digits, heldout, topics
from nearline.models import int8_gate, onnx_export
from nearline.models.build import model_config
from nearline.models.onnx_backend import OnnxBackend
from nearline.models.repository import ModelRepository
from nearline.models.torch_backend import TorchBackend
from nearline.pipelines.spec import load_pipelines

TEXTS = [
    "Ok.",
    "The goalkeeper saved a penalty in the last minute of the derby.",
    "Parliament passed the budget after a long debate.",
    "The new phone ships with a faster processor and a better camera.",
    "Astronomers detected water vapour in the atmosphere of an exoplanet.",
    "A very long report, " + "with clause after clause about markets and prices, " * 30 + "ends here.",
]


@pytest.fixture(scope="module")
def repo(models_dir: Path) -> ModelRepository:
    return ModelRepository(models_dir)


@pytest.fixture(scope="module")
def torch_backend(repo: ModelRepository) -> TorchBackend:
    return TorchBackend(repo, device="cpu")


@pytest.fixture(scope="module")
def onnx_backend(repo: ModelRepository) -> OnnxBackend:
    return OnnxBackend(repo)


def embed(backend: TorchBackend | OnnxBackend, model: str, version: int, repo: ModelRepository) -> np.ndarray:
    tokenizer = topics.load_tokenizer(repo.asset(model, topics.TOKENIZER_FILE))
    ids, mask = topics.encode(tokenizer, TEXTS)
    assert ids.shape[1] == topics.MAX_TOKENS  # the long text is truncated: the longest batch there is
    return backend.infer(model, version, {"INPUT__0": ids, "INPUT__1": mask})["OUTPUT__0"]


def test_minilm_onnx_agrees_with_torch_and_gives_the_same_topics(
    repo: ModelRepository, torch_backend: TorchBackend, onnx_backend: OnnxBackend
) -> None:
    expected = embed(torch_backend, "minilm", 1, repo)
    got = embed(onnx_backend, "minilm_onnx", 1, repo)
    assert onnx_export.cosine(got, expected).min() >= onnx_export.MIN_COSINE
    torch_scores = torch_backend.infer("topics", 1, {"INPUT__0": expected})["OUTPUT__0"]
    onnx_scores = onnx_backend.infer("topics_onnx", 1, {"INPUT__0": got})["OUTPUT__0"]
    assert onnx_scores.argmax(axis=1).tolist() == torch_scores.argmax(axis=1).tolist()
    assert [repo.labels("topics")[i] for i in onnx_scores.argmax(axis=1)[1:5]] == [
        "sports", "politics", "technology", "science",
    ]  # fmt: skip
    np.testing.assert_allclose(onnx_scores, torch_scores, atol=1e-4)
    one = embed_one(onnx_backend, repo, TEXTS[1])  # alone, unpadded: the same row as in the batch
    np.testing.assert_allclose(one, got[1], atol=1e-5)


def embed_one(backend: OnnxBackend, repo: ModelRepository, text: str) -> np.ndarray:
    tokenizer = topics.load_tokenizer(repo.asset("minilm_onnx", topics.TOKENIZER_FILE))
    ids, mask = topics.encode(tokenizer, [text])
    return backend.infer("minilm_onnx", 1, {"INPUT__0": ids, "INPUT__1": mask})["OUTPUT__0"][0]


def test_digits_onnx_gives_the_torch_models_labels(
    repo: ModelRepository, torch_backend: TorchBackend, onnx_backend: OnnxBackend
) -> None:
    x_test = digits.split()[1]
    expected = torch_backend.infer("digits", 1, {"INPUT__0": x_test})["OUTPUT__0"]
    got = onnx_backend.infer("digits_onnx", 1, {"INPUT__0": x_test})["OUTPUT__0"]
    assert got.argmax(axis=1).tolist() == expected.argmax(axis=1).tolist()
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_onnx_configs_mirror_the_torch_ones(repo: ModelRepository) -> None:
    for name in ("digits", "minilm", "topics"):
        torch_spec, onnx_spec = repo.model(name), repo.model(name + "_onnx")
        assert onnx_spec.platform == "onnxruntime_onnx" and onnx_spec.model_filename == "model.onnx"
        assert (onnx_spec.inputs, onnx_spec.outputs) == (torch_spec.inputs, torch_spec.outputs)
        assert "INFERENCE_MODE" not in onnx_spec.config.parameters
    assert repo.labels("topics_onnx") == repo.labels("topics")
    assert (
        repo.asset("minilm_onnx", "tokenizer.json").read_bytes()
        == repo.asset("minilm", "tokenizer.json").read_bytes()
    )


def test_the_int8_version_is_there_only_with_the_agreement_it_earned(
    repo: ModelRepository, onnx_backend: OnnxBackend
) -> None:
    facts = json.loads((repo.root / "minilm_onnx" / "build.json").read_text())["int8"]
    assert facts["heldout_texts"] >= int8_gate.MIN_TEXTS
    if not facts["registered"]:
        assert facts["agreement"] < int8_gate.MIN_AGREEMENT
        assert repo.versions("minilm_onnx") == [1]
        return
    assert facts["agreement"] >= int8_gate.MIN_AGREEMENT
    assert repo.versions("minilm_onnx") == repo.served_versions("minilm_onnx") == [1, 2]
    fp32, int8 = (embed(onnx_backend, "minilm_onnx", v, repo) for v in (1, 2))
    assert 0.9 < onnx_export.cosine(int8, fp32).min() < 0.99999  # close, and really another model


@pytest.mark.slow
def test_the_recorded_int8_agreement_is_what_the_held_out_texts_give(
    repo: ModelRepository, onnx_backend: OnnxBackend, torch_backend: TorchBackend
) -> None:
    if 2 not in repo.versions("minilm_onnx"):
        pytest.skip("this build did not register the int8 version")  # the test above covers it
    tokenizer = topics.load_tokenizer(repo.asset("minilm_onnx", topics.TOKENIZER_FILE))
    texts = heldout.texts()
    labels = {}
    for version in (1, 2):
        rows = []
        for start in range(0, len(texts), 64):
            ids, mask = topics.encode(tokenizer, texts[start : start + 64])
            inputs = {"INPUT__0": ids, "INPUT__1": mask}
            rows.append(onnx_backend.infer("minilm_onnx", version, inputs)["OUTPUT__0"])
        scores = torch_backend.infer("topics", 1, {"INPUT__0": np.concatenate(rows)})["OUTPUT__0"]
        labels[version] = scores.argmax(axis=1)
    recorded = json.loads((repo.root / "minilm_onnx" / "build.json").read_text())["int8"]["agreement"]
    assert int8_gate.judge(labels[1], labels[2]).agreement == pytest.approx(recorded, abs=2 / len(texts))


@pytest.mark.parametrize(
    ("differ", "total", "registered", "line"),
    [
        (0, 600, True, "int8 agrees with fp32 on 100.0% of 600 held-out texts: registered as m v2"),
        (6, 600, True, "int8 agrees with fp32 on 99.0% of 600 held-out texts: registered as m v2"),
        (7, 600, False, "int8 agrees with fp32 on 98.8% of 600 held-out texts: not registered (needs 99%)"),
        (0, 499, False, "on 100.0% of 499 held-out texts: not registered (needs at least 500 texts)"),
    ],
)
def test_the_gate_registers_at_99_percent_of_500_texts_and_refuses_below(
    differ: int, total: int, registered: bool, line: str
) -> None:
    fp32 = [i % 7 for i in range(total)]
    int8 = [(label + 1) % 7 if i < differ else label for i, label in enumerate(fp32)]
    verdict = int8_gate.judge(fp32, int8)
    assert (verdict.agreed, verdict.total, verdict.registered) == (total - differ, total, registered)
    assert verdict.line("m v2").endswith(line)
    with pytest.raises(ValueError, match="600 fp32 labels for 599 int8 labels"):
        int8_gate.judge([0] * 600, [0] * 599)


def test_the_held_out_texts_are_the_same_every_time_and_not_the_training_ones() -> None:
    texts = heldout.texts()
    assert texts == heldout.texts() and len(texts) == heldout.COUNT >= int8_gate.MIN_TEXTS
    assert texts != heldout.texts(seed=heldout.SEED + 1)
    assert len(set(texts)) >= 0.9 * len(texts)
    training = {s for t in topics.TOPICS for s in (*topics.DESCRIPTIONS[t], *topics.EXAMPLES[t])}
    assert not training & set(texts)
    assert min(map(len, texts)) < 40 and max(map(len, texts)) > 200  # short and long ones


class Summed(torch.nn.Module):
    """Token ids ``[batch, sequence]`` → their sum and count ``[batch, 2]``: shape-sensitive."""

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.stack([ids.sum(dim=1), (ids > 0).sum(dim=1)], dim=1).float()


def test_export_makes_batch_and_sequence_dynamic(tmp_path: Path) -> None:
    config = onnx_export.onnx_config(model_config("summed", [(pb.TYPE_INT64, [-1])], [(pb.TYPE_FP32, [2])]))
    path = onnx_export.export(
        tmp_path / "summed_onnx", Summed(), [torch.ones(2, 3, dtype=torch.int64)], config
    )
    assert path == tmp_path / "summed_onnx" / "1" / "model.onnx"
    backend = OnnxBackend(ModelRepository(tmp_path))
    for rows, length in ((1, 1), (5, 40)):  # neither the traced batch size nor length
        ids = np.arange(rows * length).reshape(rows, length)
        out = backend.infer("summed_onnx", 1, {"INPUT__0": ids})["OUTPUT__0"]
        np.testing.assert_array_equal(out, Summed()(torch.from_numpy(ids)).numpy())


POLICIES = {
    "": [3],  # Triton's default: the latest one
    "version_policy: { latest: { num_versions: 2 } }": [2, 3],
    "version_policy: { specific: { versions: [1, 3, 7] } }": [1, 3],
    "version_policy: { all: {} }": [1, 2, 3],
}


@pytest.mark.parametrize(("policy", "served"), POLICIES.items())
def test_served_versions_follow_the_version_policy(tmp_path: Path, policy: str, served: list[int]) -> None:
    config = onnx_export.onnx_config(model_config("m", [(pb.TYPE_FP32, [1])], [(pb.TYPE_FP32, [1])]))
    (tmp_path / "m_onnx").mkdir()
    (tmp_path / "m_onnx" / "config.pbtxt").write_text(f"{policy}\n{config}")
    for v in (1, 2, 3):
        (tmp_path / "m_onnx" / str(v)).mkdir()
        (tmp_path / "m_onnx" / str(v) / "model.onnx").write_bytes(b"")
    repo = ModelRepository(tmp_path)
    assert (repo.versions("m_onnx"), repo.served_versions("m_onnx")) == ([1, 2, 3], served)


@pytest.mark.parametrize(
    ("policy", "error"),
    [
        ("version_policy: { latest: { num_versions: 0 } }", "latest: num_versions must be >= 1"),
        ("version_policy: { specific: {} }", "specific: versions must be positive integers"),
    ],
)
def test_a_policy_that_serves_nothing_is_a_config_error(tmp_path: Path, policy: str, error: str) -> None:
    config = model_config("m", [(pb.TYPE_FP32, [1])], [(pb.TYPE_FP32, [1])])
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.pbtxt").write_text(f"{policy}\n{config}")
    with pytest.raises(ConfigError, match=rf"m/config\.pbtxt: version_policy: {error}"):
        ModelRepository(tmp_path).model("m")


def test_the_example_topics_endpoint_ships_v2_with_no_traffic() -> None:
    endpoint = load_pipelines().get("topics")
    assert dict(endpoint.traffic) == {"v1": 100, "v2": 0} and endpoint.deployment.name == "v1"
    embed_step = endpoint.deployment_named("v2").steps[1]
    assert (embed_step.model, embed_step.version, embed_step.backend) == ("minilm_onnx", 1, "onnx")


@pytest.mark.slow
def test_a_targeted_call_reaches_v2_on_onnx_runtime_in_a_real_worker(tmp_path: Path) -> None:
    body = {"input": {"text": "The tennis star won her fifth grand slam title."}}
    with running_server(tmp_path / "data", "--broker", "memory://") as server:
        url = f"{server.url}/api/score/topics?wait=20"
        targeted = httpx.post(url, json=body, headers={"nearline-deployment": "v2"}, timeout=30)
        untargeted = httpx.post(url, json=body, timeout=30)
    for resp, deployment in ((targeted, "v2"), (untargeted, "v1")):
        assert resp.status_code == 200, resp.text
        assert resp.headers["nearline-deployment"] == deployment
        assert resp.json()["runtimeStatus"] == "Completed"
        assert resp.json()["customStatus"]["deployment"] == deployment
        assert resp.json()["output"]["label"] == "sports"
    assert targeted.json()["output"]["scores"] != untargeted.json()["output"]["scores"]  # another head
