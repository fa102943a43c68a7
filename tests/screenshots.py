"""Write the dashboard's screenshots for docs/operations.md into docs/images/.

    .venv/bin/python tests/screenshots.py

Starts a real ``nearline serve`` and worker (as tests/test_dashboard.py does, plus the three-step
``tour`` pipeline of tests/data/screenshot_pipelines.yaml), scores a few jobs (one of which
fails), leaves a dead letter, and photographs the overview, its endpoints table, a ``tour``
job's page (its step timings) and the dead letters in headless Chromium.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from serving import running_server
from test_dashboard import ADMIN_KEY, API_KEY, CHROMIUM, LOOPBACK_ONLY, System, stage_dead_letter
from test_worker_process import PIPELINES, TESTS
from waiting import wait_until

IMAGES = Path(__file__).resolve().parent.parent / "docs" / "images"
TOUR = TESTS / "data" / "screenshot_pipelines.yaml"


def start_worker(s: System) -> subprocess.Popen[bytes]:
    """The worker of tests/test_dashboard.py, with the ``tour`` pipeline too."""
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    cmd = [sys.executable, "-m", "workers", "--broker", s.url, "--models", str(s.work)]
    cmd += ["--pipelines", f"{PIPELINES},{TOUR}", "--max-deliveries", "2", "--port", "-1"]
    with (s.work / "worker.log").open("ab") as log:
        return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)


def scored(s: System) -> str:
    """A few jobs: completed ones, one the worker refuses (its job Failed), and ``tour`` jobs;
    the last ``tour`` job's id."""
    tours = [
        httpx.post(
            f"{s.server.url}/api/score/tour", json={"input": {"text": f"match report {n}"}},
            headers={"x-functions-key": API_KEY},
        ).json()["id"]
        for n in range(3)
    ]  # fmt: skip
    last = ""
    for n in range(12):
        last = s.submit(
            {"input": {"n": n, "text": "an example"}, "priority": ("high", "normal", "low")[n % 3]}
        )
    refused = httpx.post(
        f"{s.server.url}/api/score/picky", json={"input": {"bad": True}}, headers={"x-functions-key": API_KEY}
    )
    wait_until(lambda: s.ended(refused.json()["id"]) and s.ended(last) and s.ended(tours[-1]), 60, s.log)
    return str(tours[-1])


def photograph(base: str, tour: str) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=[LOOPBACK_ONLY])
        page = browser.new_page(viewport={"width": 1100, "height": 760})
        page.goto(f"{base}/ui?code={ADMIN_KEY}")
        page.locator("#chart .uplot").wait_for(timeout=10_000)
        page.screenshot(path=IMAGES / "dashboard-overview.png")
        page.locator("#endpoints").screenshot(path=IMAGES / "dashboard-endpoints.png")
        page.goto(f"{base}/ui/jobs/{tour}")
        page.locator("#job-steps").wait_for(timeout=10_000)
        page.screenshot(path=IMAGES / "dashboard-job.png")
        page.goto(f"{base}/ui/deadletters")
        page.screenshot(path=IMAGES / "dashboard-dead-letters.png")
        browser.close()


def main() -> None:
    IMAGES.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        data, work = Path(tmp, "serve"), Path(tmp, "worker")
        work.mkdir()
        env = {"NEARLINE_API_KEYS": API_KEY, "NEARLINE_ADMIN_KEYS": ADMIN_KEY, "PYTHONPATH": str(TESTS)}
        args = ("--no-workers", "--pipelines", f"{PIPELINES},{TOUR}", "--models", str(work))
        with running_server(data, *args, env=env) as server:
            s = System(server, f"sqlite:///{data / 'nearline.db'}", work)
            dead = stage_dead_letter(s)
            s.worker = start_worker(s)
            try:
                wait_until(lambda: s.ended(dead), 60, s.log)
                photograph(server.url, scored(s))
            finally:
                assert s.worker is not None
                s.worker.kill()
                s.worker.wait(10)
    for png in sorted(IMAGES.glob("dashboard-*.png")):
        print(f"{png.relative_to(IMAGES.parent.parent)}: {png.stat().st_size // 1024} KB")


if __name__ == "__main__":
    main()
