"""``nearline serve --reload`` (``nearline/reload.py``): what is watched, what counts as a change,
and a reload that keeps the running version when the new files do not load. The whole loop with
real worker processes is in tests/test_first_hour.py (a model imported and served after a
reload)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from waiting import wait_until

from nearline import reload as r
from nearline.brokers import open_broker
from nearline.pipelines.spec import load_pipelines
from nearline.settings import ServeSettings
from nearline.store import open_store
from nearline.store_jobs import StoreJobs
from nearline.worker_pool import WorkerPool

PIPELINE = """pipelines:
  {name}:
    input_schema: {{type: object}}
    deployment:
      name: v1
      steps: [{{name: step, function: "my_steps:run"}}]
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "pipelines.yaml").write_text(PIPELINE.format(name="first"))
    (tmp_path / "my_steps.py").write_text("def run(item):\n    return item\n")
    (tmp_path / "helpers").mkdir()
    (tmp_path / "helpers" / "text.py").write_text("")
    for junk in ("__pycache__/my_steps.cpython-311.pyc", ".venv/lib/x.py", ".nearline/nearline.db"):
        (tmp_path / junk).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / junk).write_text("")
    (tmp_path / "models" / "m" / "1").mkdir(parents=True)
    (tmp_path / "models" / "m" / "config.pbtxt").write_text("")
    (tmp_path / "models" / "m" / "1" / "model.onnx").write_bytes(b"")
    (tmp_path / "models" / ".m.import-x").mkdir()
    return tmp_path


def test_the_pipelines_their_steps_and_the_models_are_watched(project: Path) -> None:
    catalog = load_pipelines(project / "pipelines.yaml")
    watched = {
        p.relative_to(project).as_posix()
        for p in r.watched_paths([project / "pipelines.yaml"], catalog, project / "models")
    }
    assert watched == {
        "pipelines.yaml",
        "my_steps.py",
        "helpers/text.py",
        "models/m/config.pbtxt",
        "models/m/1/model.onnx",
    }


def test_a_write_an_added_file_and_a_removal_are_changes(project: Path) -> None:
    catalog = load_pipelines(project / "pipelines.yaml")

    def look() -> r.Snapshot:
        return r.snapshot(r.watched_paths([project], catalog, project / "models"))

    before = look()
    assert look() == before
    (project / "my_steps.py").write_text("def run(item):\n    return {'changed': item}\n")
    assert look() != before
    before = look()
    (project / "more.yaml").write_text(PIPELINE.format(name="second"))  # into a folder given as pipelines
    assert look() != before
    before = look()
    (project / "models" / "m" / "1" / "model.onnx").unlink()
    assert look() != before


def reloader(project: Path) -> r.Reloader:
    cfg = ServeSettings(no_workers=True)
    cfg = replace(cfg, worker=replace(cfg.worker, pipelines=(project,), models=project / "models"))
    jobs = StoreJobs(load_pipelines(cfg.worker.pipelines), open_broker("memory://"), open_store("memory://"))
    return r.Reloader(cfg, jobs, WorkerPool(cfg, "memory://"), say=lambda line: None)


def test_files_that_do_not_load_leave_the_running_version(project: Path) -> None:
    watcher = reloader(project)
    said: list[str] = []
    watcher.say = said.append
    (project / "pipelines.yaml").write_text("pipelines: [")
    assert not watcher.reload()
    assert watcher.jobs.catalog.names() == ["first"]
    assert "not valid YAML" in said[0] and said[0].endswith("still serving the previous version")
    (project / "pipelines.yaml").write_text(PIPELINE.format(name="renamed"))
    assert watcher.reload() and watcher.jobs.catalog.names() == ["renamed"]


def test_the_watcher_reloads_once_the_files_settle(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(r, "POLL_S", 0.02)
    watcher = reloader(project).start()
    try:
        (project / "second.yaml").write_text(PIPELINE.format(name="second"))
        wait_until(lambda: watcher.reloads == 1, 10, "a reload")
        assert watcher.jobs.catalog.names() == ["first", "second"]
    finally:
        watcher.stop()
