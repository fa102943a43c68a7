"""``nearline init`` (``nearline/project.py``): the files it writes and the folders it refuses.
Running the project it makes (check, serve, score, its own test) is tests/test_first_hour.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from nearline.errors import ConfigError
from nearline.pipelines.spec import load_pipelines
from nearline.project import FILES, init

ROOT = Path(__file__).resolve().parent.parent


def test_init_writes_every_file_named_for_the_project(tmp_path: Path) -> None:
    written = init(tmp_path / "fraud-scoring", build=False)
    assert sorted(p.name for p in written) == sorted(FILES.values())
    dockerfile = (tmp_path / "fraud-scoring" / "Dockerfile").read_text()
    assert "docker build -t fraud-scoring-worker:1" in dockerfile and "{{" not in dockerfile
    assert (
        "COPY models /opt/nearline/models" in dockerfile
        and "NEARLINE_PIPELINES=/project/pipelines.yaml" in dockerfile
    )
    catalog = load_pipelines(tmp_path / "fraud-scoring" / "pipelines.yaml")
    assert catalog.names() == ["iris"] and len(catalog.get("iris").examples) == 2
    init(tmp_path / "My Project!", build=False)
    assert "-t my-project-worker:1" in (tmp_path / "My Project!" / "Dockerfile").read_text()


def test_the_projects_python_passes_this_repositorys_lint(tmp_path: Path) -> None:
    init(tmp_path / "p", build=False)
    ruff = Path(sys.executable).parent / "ruff"
    config = ["--config", str(ROOT / "pyproject.toml")]
    for command in (["check", *config, "."], ["format", "--check", *config, "."]):
        done = subprocess.run([str(ruff), *command], cwd=tmp_path / "p", capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr


def test_init_refuses_a_folder_that_is_not_empty_or_a_file(tmp_path: Path) -> None:
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    (tmp_path / "file").write_text("")
    for target in (tmp_path / "taken", tmp_path / "file"):
        with pytest.raises(ConfigError, match="exists and is not an empty folder"):
            init(target, build=False)
    assert (tmp_path / "taken" / "notes.txt").read_text() == "mine"
    (tmp_path / "empty").mkdir()
    assert init(tmp_path / "empty", build=False)  # an empty folder is fine
