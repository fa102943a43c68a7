"""A new user's first hour, done as they would do it (issue #16): from an empty temporary folder,
``nearline init``, ``nearline check``, ``nearline serve`` with no flags, score; train a
scikit-learn model, export it with skl2onnx, ``nearline models import`` it, add the pipeline it
prints and score it (the server, started with ``--reload``, picks both up); a pipelines file
naming a missing model stops ``serve`` at once, naming the model; ``/docs`` loads in a real
browser (Debian's headless Chromium, driven by Playwright) and "Try it out" scores, with every
request the browser makes going to 127.0.0.1.

Every command is the ``nearline`` program in a subprocess, run in the project folder.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest
from conftest import unavailable
from serving import Server, free_port, running_server
from waiting import wait_until

from nearline import __version__
from nearline.client import Client

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
#: Chromium resolves no name but the loopback address: nothing can leave even if a page asked.
RESOLVE_LOOPBACK_ONLY = "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"
SETOSA = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
PROJECT_FILES = [
    ".dockerignore",
    "Dockerfile",
    "README.md",
    "build_model.py",
    "models",
    "pipelines.yaml",
    "steps.py",
    "test_pipeline.py",
]


def nearline(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``nearline ARGS`` as a user types it, in ``cwd``."""
    return subprocess.run(
        [sys.executable, "-m", "nearline", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    here = tmp_path_factory.mktemp("first-hour")
    done = nearline("init", "shop", cwd=here)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "nearline check" in done.stdout  # it says what to do next
    return here / "shop"


@pytest.fixture(scope="module")
def server(project: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``nearline serve --reload`` in the project: no pipelines or models flags."""
    with running_server(tmp_path_factory.mktemp("first-hour-data"), "--reload", cwd=project) as s:
        yield s


def test_init_makes_a_project_whose_check_and_own_test_pass(project: Path) -> None:
    assert sorted(p.name for p in project.iterdir()) == PROJECT_FILES
    assert (project / "models" / "iris" / "1" / "model.onnx").is_file()
    done = nearline("check", cwd=project)
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"ok\s+iris\s+2 examples", done.stdout), done.stdout
    test = subprocess.run(
        [sys.executable, "test_pipeline.py"], cwd=project, capture_output=True, text=True, timeout=60
    )
    assert test.returncode == 0 and test.stdout.strip() == "ok", test.stdout + test.stderr


def test_serve_with_no_flags_serves_the_projects_pipeline(server: Server) -> None:
    assert "Try it:" in server.output() and "/api/score/iris" in server.output()
    with Client(server.url) as client:
        assert [p["name"] for p in client.pipelines()] == ["iris"]
        output = client.submit("iris", SETOSA).result(timeout=30)
    assert output["species"] == "setosa" and set(output["probabilities"]) == {
        "setosa",
        "versicolor",
        "virginica",
    }


def test_an_skl2onnx_model_imports_checks_and_scores_once_the_server_reloads(
    project: Path, server: Server
) -> None:
    from skl2onnx import to_onnx
    from sklearn.datasets import load_wine
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    # The documented recipe (docs/models.md): train, export with zipmap off, import.
    x, y = load_wine(return_X_y=True)
    x = x.astype(np.float32)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(x, y)
    (project / "wine.onnx").write_bytes(to_onnx(model, x[:1], options={"zipmap": False}).SerializeToString())
    done = nearline("models", "import", "wine.onnx", "--name", "wine", cwd=project)
    assert done.returncode == 0, done.stderr
    assert re.search(r"input\s+X\s+FP32\s+\[-1, 13\]", done.stdout), done.stdout
    assert re.search(r"output\s+probabilities\s+FP32\s+\[-1, 3\]", done.stdout), done.stdout

    # The printed pipelines file, its entry pasted under `pipelines:` in pipelines.yaml.
    entry = done.stdout[done.stdout.index("\npipelines:\n") + len("\npipelines:\n") :]
    with (project / "pipelines.yaml").open("a") as f:
        f.write(entry)
    checked = nearline("check", cwd=project)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert re.search(r"ok\s+wine\s+1 example", checked.stdout), checked.stdout

    def served() -> bool:
        return "wine" in [p["name"] for p in httpx.get(f"{server.url}/api/pipelines").json()["pipelines"]]

    wait_until(served, 90, lambda: f"the reload; the server said:\n{server.output()}", interval=0.2)
    rows = [0, 70, 170]
    with Client(server.url) as client:
        jobs = [client.submit("wine", {"X": x[i].tolist()}) for i in rows]
        outputs = [job.result(timeout=30) for job in jobs]
    assert [o["label"] for o in outputs] == model.predict(x[rows]).tolist()
    np.testing.assert_allclose([o["probabilities"] for o in outputs], model.predict_proba(x[rows]), atol=1e-4)
    assert "reload: serving iris, wine" in server.output()


def test_a_pipelines_file_naming_a_missing_model_stops_serve_naming_it(project: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text((project / "pipelines.yaml").read_text().replace("model: iris", "model: irises", 1))
    done = nearline(
        "serve", "--port", str(free_port()), "--data-dir", str(tmp_path), "--pipelines", str(bad),
        cwd=project, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2, done.stdout + done.stderr
    error = done.stderr.strip().splitlines()[-1]
    assert error.startswith("nearline serve: ") and "'irises'" in error and str(bad) in error, done.stderr


def test_docs_load_in_chromium_try_it_out_scores_and_nothing_leaves_the_machine(server: Server) -> None:
    if not CHROMIUM.exists():
        unavailable("chromium", f"{CHROMIUM} is not installed (apt-get install chromium; make test does)")
    from playwright.sync_api import sync_playwright

    requests: list[str] = []
    problems: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=[RESOLVE_LOOPBACK_ONLY])
        try:
            page = browser.new_page()
            page.on("request", lambda r: requests.append(r.url))
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.goto(f"{server.url}/")
            page.click("text=API reference")
            score = page.locator("#operations-default-score_iris")
            score.locator(".opblock-summary").click(timeout=20_000)
            assert '"sepal_length": 5.1' in score.locator("textarea").first.input_value()  # the example
            score.locator(".execute").click()
            status = score.locator(".live-responses-table tr.response .response-col_status").first
            status.wait_for(timeout=20_000)
            assert status.inner_text().strip() == "202"
        finally:
            browser.close()
    assert not problems, (problems, requests)
    assert f"{server.url}/docs/swagger-ui-bundle.js?v={__version__}" in requests
    assert f"{server.url}/api/score/iris" in requests
    assert {urlsplit(url).hostname for url in requests} == {"127.0.0.1"}, requests
