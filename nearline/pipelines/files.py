"""Which pipelines files to load: one file, several, folders of them, or the default.

``--pipelines`` / ``NEARLINE_PIPELINES`` name files or folders (a folder stands for its
``*.yaml`` and ``*.yml`` files, in name order, not its subfolders). Named none, the default is
the project's: ``pipelines.yaml`` in the current folder when there is one (what ``nearline
init`` makes), else the packaged examples. :func:`nearline.pipelines.spec.load_pipelines`
merges what they define; a pipeline defined twice is an error naming both files.

A file's folder is its *project folder*: the step modules it names are imported from there
first, whatever the current folder of the worker (:func:`project_folder`).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from nearline.errors import ConfigError
from nearline.examples import PIPELINES_FILE

#: The pipelines file of a project, looked for in the current folder when none is named.
DEFAULT_FILE = "pipelines.yaml"
#: What a folder given as pipelines holds.
SUFFIXES = (".yaml", ".yml")

Paths = str | Path | Sequence[str | Path]


def default_file() -> Path:
    """``./pipelines.yaml`` when there is one, else the packaged example pipelines."""
    local = Path(DEFAULT_FILE)
    return local if local.is_file() else PIPELINES_FILE


def pipeline_files(paths: Paths = ()) -> list[Path]:
    """The files that ``paths`` (files or folders; none: :func:`default_file`) stand for.

    A file named twice (or in a folder and by name) is loaded once. A missing file is left in
    the list: reading it reports it, with the file's name.

    Raises:
        ConfigError: A folder holds no pipelines file.
    """
    given = [Path(paths)] if isinstance(paths, str | Path) else [Path(p) for p in paths]
    files: list[Path] = []
    for path in given or [default_file()]:
        if path.is_dir():
            found = sorted(
                f
                for f in path.iterdir()
                if f.suffix in SUFFIXES and f.is_file() and not f.name.startswith(".")
            )
            if not found:
                raise ConfigError(f"{path}: no pipelines files ({', '.join('*' + s for s in SUFFIXES)}) here")
            files += found
        else:
            files.append(path)
    unique: dict[Path, Path] = {}
    for f in files:
        unique.setdefault(f.resolve(), f)
    return list(unique.values())


def project_folder(source: Path | None) -> Path | None:
    """The folder the steps of the pipelines file ``source`` are imported from, or None.

    None for a file inside a Python package (a folder with ``__init__.py``, such as the packaged
    examples): its steps are imported by their package's name, and putting a package's folder
    on ``sys.path`` would make its modules importable under a second name.
    """
    if source is None:
        return None
    folder = source.resolve().parent
    return None if (folder / "__init__.py").exists() else folder


def importable(source: Path | None) -> None:
    """Put the project folder of the pipelines file ``source`` on ``sys.path`` (once), so that
    its step modules import from there whatever the current folder.

    Appended, not put first: a pipelines file in a shared folder (``/tmp``) must not let a file
    there shadow the standard library or an installed package.
    """
    folder = project_folder(source)
    if folder is not None and str(folder) not in sys.path:
        sys.path.append(str(folder))
