"""``nearline init DIR``: a new scoring project that works before it is changed.

The files come from ``nearline/templates/project/`` (package data; ``{{project}}`` becomes the
folder's name, lower-cased as an image name allows): ``pipelines.yaml`` (one pipeline, ``iris``,
with examples), ``steps.py``, ``build_model.py`` (trains a scikit-learn model, exports it with
skl2onnx and imports it into ``models/``), ``test_pipeline.py``, a ``Dockerfile`` for the
project's worker image, a ``.dockerignore`` and a ``README.md``. Then ``build_model.py`` runs
(``--no-build``: not), so that in ``DIR`` ``nearline check`` passes and ``nearline serve``
serves the pipeline with no flags: the current folder is the default place of
``pipelines.yaml`` and ``models/``.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from importlib import resources
from pathlib import Path

from nearline.errors import ConfigError, NearlineError

PROG = "nearline init"
#: Template file → the file it becomes in the project.
FILES = {
    "pipelines.yaml.tmpl": "pipelines.yaml",
    "steps.py.tmpl": "steps.py",
    "build_model.py.tmpl": "build_model.py",
    "test_pipeline.py.tmpl": "test_pipeline.py",
    "Dockerfile.tmpl": "Dockerfile",
    "dockerignore.tmpl": ".dockerignore",
    "README.md.tmpl": "README.md",
}


class ProjectBuildFailed(NearlineError):
    """The new project's ``build_model.py`` failed (its output says why)."""

    code = "ProjectBuildFailed"


def init(folder: Path, *, build: bool = True) -> list[Path]:
    """Write a new project into ``folder`` (created; it must be empty if it exists).

    Returns:
        The files written.

    Raises:
        ConfigError: ``folder`` is a file or a folder that is not empty.
        ProjectBuildFailed: ``build_model.py`` failed (the files are left, to fix and run it again).
    """
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise ConfigError(f"{folder}: exists and is not an empty folder; name a new one")
    folder.mkdir(parents=True, exist_ok=True)
    # The folder's name, as an image name allows it (it names the worker image in the Dockerfile).
    name = re.sub(r"[^a-z0-9._-]+", "-", folder.resolve().name.lower()).strip("-._") or "project"
    templates = resources.files("nearline") / "templates" / "project"
    written = []
    for template, target in FILES.items():
        text = (templates / template).read_text().replace("{{project}}", name)
        (folder / target).write_text(text)
        written.append(folder / target)
    if build:
        print(f"building the model: python {folder / 'build_model.py'}", flush=True)
        done = subprocess.run([sys.executable, "build_model.py"], cwd=folder, check=False)
        if done.returncode != 0:
            raise ProjectBuildFailed(
                f"{folder / 'build_model.py'} exited with {done.returncode}; fix it and run it again"
            )
    return written


def main(argv: list[str] | None = None) -> int:
    """``nearline init DIR [--no-build]``; returns the exit status."""
    from nearline.cli import fail

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Make a new project: pipelines.yaml, steps, a model and its build script, a "
        "test, a worker Dockerfile and a README.",
    )
    parser.add_argument("folder", type=Path, help="the project folder (new, or empty)")
    parser.add_argument("--no-build", action="store_true", help="do not run build_model.py")
    args = parser.parse_args(argv)
    try:
        init(args.folder, build=not args.no_build)
    except (NearlineError, OSError, KeyboardInterrupt) as exc:
        return fail(PROG, exc)
    where = args.folder
    print(
        f"made {where}: {', '.join(FILES.values())}, models/\n"
        f"next:\n"
        f"  cd {where}\n"
        f"  nearline check     # loads the pipeline and the model, runs the examples\n"
        f"  nearline serve     # then open http://127.0.0.1:7071/docs (and see README.md)"
    )
    return 0
