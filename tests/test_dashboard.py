"""The dashboard at ``/ui`` (nearline/http/dashboard/) on a real ``nearline serve``, in headless
Chromium (Playwright driving Debian's /usr/bin/chromium): every page loads with no console error
and no request leaving 127.0.0.1; a dead letter a real worker made is found and redriven by a
click, then its job completes; the try-it form scores; a job shows on the recent list, by its
id and on its page. Keys: without one a page is 401; ``?code=`` sets the cookie; an API key
cannot redrive (403); a form from another site is refused.

The serve runs no workers: this test's own worker process (``python -m workers`` on the serve's
SQLite file) starts once the dead letter's two failed deliveries are staged.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import redis
from conftest import require_server, unavailable
from serving import Server, running_server
from test_worker_process import PIPELINES, TESTS, start_worker
from waiting import wait_until

from nearline.brokers import open_broker
from nearline.constants import REQUEST_QUEUE
from nearline.http.dashboard import stats
from nearline.jobs import JobRecord, JobStatus
from nearline.store import StatusStore
from nearline.store.memory import MemoryStore
from nearline.store.redis_hashes import JOB_PREFIX, RedisStore
from nearline.store.sqlite import SqliteStore

ROOT = Path(__file__).resolve().parent.parent
STATIC = ROOT / "nearline" / "http" / "dashboard" / "static"
CHROMIUM = Path("/usr/bin/chromium")
API_KEY, ADMIN_KEY = "dash-api-key", "dash-admin-key"
#: Every name but loopback's fails to resolve in the browser: nothing can leave the machine.
LOOPBACK_ONLY = "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"


@dataclass
class System:
    """A serve without workers, then the test's worker on its SQLite file."""

    server: Server
    url: str
    work: Path
    worker: subprocess.Popen[bytes] | None = None
    jobs: dict[str, str] = field(default_factory=dict)

    def start_worker(self) -> None:
        self.worker = start_worker(self.url, self.work, "--max-deliveries", "2", "--port", "-1")

    def submit(self, body: dict[str, Any]) -> str:
        r = httpx.post(f"{self.server.url}/api/score/record", json=body, headers={"x-functions-key": API_KEY})
        assert r.status_code == 202, r.text
        return str(r.json()["id"])

    def status(self, job_id: str) -> dict[str, Any]:
        r = httpx.get(f"{self.server.url}/api/jobs/{job_id}", headers={"x-functions-key": API_KEY})
        return dict(r.json())

    def ended(self, job_id: str) -> dict[str, Any] | None:
        doc = self.status(job_id)
        return doc if doc["runtimeStatus"] in ("Completed", "Failed", "Terminated") else None

    def log(self) -> str:
        return (self.work / "worker.log").read_text(errors="replace") + self.server.output()


def stage_dead_letter(system: System) -> str:
    """A job whose request two workers died holding (leases that ran out): the worker started
    next dead-letters it (``--max-deliveries 2``) and its job ends Failed, PoisonMessage."""
    job_id = system.submit({"input": {"n": 1}})
    broker = open_broker(system.url)
    try:
        for count in (1, 2):
            [held] = broker.receive(REQUEST_QUEUE, 1, wait_s=5, lease_s=0.05)
            assert (held.message_id, held.delivery_count) == (job_id, count)
            time.sleep(0.1)  # the lease runs out: the next receive is the next delivery
    finally:
        broker.close()
    return job_id


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    data, work = tmp_path_factory.mktemp("dash-serve"), tmp_path_factory.mktemp("dash-worker")
    env = {"NEARLINE_API_KEYS": API_KEY, "NEARLINE_ADMIN_KEYS": ADMIN_KEY, "PYTHONPATH": str(TESTS)}
    args = ("--no-workers", "--pipelines", str(PIPELINES), "--models", str(work))
    with running_server(data, *args, env=env) as server:
        s = System(server, f"sqlite:///{data / 'nearline.db'}", work)
        s.jobs["dead"] = stage_dead_letter(s)
        s.start_worker()
        try:
            failed = wait_until(lambda: s.ended(s.jobs["dead"]), 60, s.log)
            assert failed["output"]["error"]["code"] == "PoisonMessage", failed
            s.jobs["done"] = s.submit({"input": {"n": 2}})
            wait_until(lambda: s.ended(s.jobs["done"]), 60, s.log)
            yield s
        finally:
            if s.worker is not None:
                s.worker.kill()
                s.worker.wait(10)


def get(system: System, path: str, key: str | None = None, **kw: Any) -> httpx.Response:
    cookies = {"nearline_key": key} if key else None
    return httpx.get(f"{system.server.url}{path}", cookies=cookies, **kw)


def test_without_a_key_a_page_is_401_and_code_sets_the_cookie(system: System) -> None:
    refused = get(system, "/ui")
    assert refused.status_code == 401 and "?code=KEY" in refused.text
    assert get(system, "/ui", "wrong").status_code == 401
    opened = get(system, "/ui/jobs?code=" + API_KEY)
    assert opened.status_code == 303 and opened.headers["location"] == "/ui/jobs"  # the key leaves the URL
    cookie = opened.headers["set-cookie"]
    assert cookie.startswith(f"nearline_key={API_KEY};")
    assert {"HttpOnly", "SameSite=Strict", "Path=/ui"} <= {p.strip() for p in cookie.split(";")}
    page = get(system, "/ui/jobs", API_KEY)
    assert page.status_code == 200 and system.jobs["done"] in page.text
    assert page.headers["content-security-policy"].startswith("default-src 'self'")
    assert get(system, "/ui/static/htmx.min.js").status_code == 200  # packaged code, no data: no key
    assert get(system, "/ui/static/views.py").status_code == 404


def test_an_api_key_cannot_redrive_nor_post_from_another_site(system: System) -> None:
    form = {"action": "redrive", "ids": system.jobs["dead"]}
    origin = {"origin": system.server.url}
    url = f"{system.server.url}/ui/deadletters"
    as_api = httpx.post(url, data=form, headers=origin, cookies={"nearline_key": API_KEY})
    assert as_api.status_code == 403 and "admin key" in as_api.text
    elsewhere = httpx.post(
        url, data=form, headers={"origin": "https://evil.example"}, cookies={"nearline_key": ADMIN_KEY}
    )
    assert elsewhere.status_code == 403 and "another site" in elsewhere.text
    listed = get(system, "/ui/deadletters", API_KEY)  # (whether the redrive test has run or not)
    assert listed.status_code == 200 and 'value="redrive"' not in listed.text  # no buttons for it
    assert get(system, "/ui/deadletters?older_than_s=-1", ADMIN_KEY).status_code == 400


def test_an_admin_changes_an_endpoints_traffic_from_the_overview(system: System) -> None:
    url, origin = f"{system.server.url}/ui/traffic/record", {"origin": system.server.url}
    form = {"traffic.v1": "100", "mirror.v1": "0", "reason": "from the dashboard"}
    as_api = httpx.post(url, data=form, headers=origin, cookies={"nearline_key": API_KEY})
    assert as_api.status_code == 403
    broken = httpx.post(
        url, data={**form, "traffic.v1": "50"}, headers=origin, cookies={"nearline_key": ADMIN_KEY}
    )
    assert broken.status_code == 400 and "traffic" in broken.text
    typo = httpx.post(
        url, data={**form, "mirror.v1": "x"}, headers=origin, cookies={"nearline_key": ADMIN_KEY}
    )
    assert typo.status_code == 400 and "mirror.v1" in typo.text
    done = httpx.post(url, data=form, headers=origin, cookies={"nearline_key": ADMIN_KEY})
    assert done.status_code == 303 and done.headers["location"].startswith("/ui?done=")
    endpoint = httpx.get(
        f"{system.server.url}/api/endpoints/record", headers={"x-functions-key": API_KEY}
    ).json()
    assert endpoint["traffic"] == {"v1": 100}
    assert endpoint["history"][0]["reason"] == "from the dashboard"
    assert 'action="/ui/traffic/record"' in get(system, "/ui", ADMIN_KEY).text
    assert 'action="/ui/traffic/record"' not in get(system, "/ui", API_KEY).text


def test_a_jobs_page_draws_the_workers_step_timings_kept_off_the_status_document(system: System) -> None:
    done = system.jobs["done"]
    page = get(system, f"/ui/jobs/{done}", API_KEY).text
    steps = re.search(r'<table class="steps" id="job-steps">(.*?)</table>', page, re.S)
    assert steps is not None, page
    [(step, ms, width)] = re.findall(
        r'<tr><td>(\w+)</td><td class="num">([0-9.]+)</td><td class="barcell"><span class="bar" '
        r'style="width: ([0-9.]+)%"></span></td></tr>',
        steps.group(1),
    )
    assert (step, float(width)) == ("record", 100.0) and float(ms) >= 0  # the longest step is the full bar
    assert "timings" not in system.status(done)  # the contract's document is unchanged
    dead = get(system, f"/ui/jobs/{system.jobs['dead']}", API_KEY).text
    assert 'id="job-steps"' not in dead  # dead-lettered: no worker ran its steps


def test_the_overview_shows_each_deployments_compare_figures(system: System) -> None:
    page = get(system, "/ui", API_KEY).text
    cells = re.search(
        r'<td class="num" data-compare="record/v1">(\d+)[^<]*</td>\s*<td class="num[^"]*">([^<]+)</td>\s*'
        r'<td class="num">([^<]+)</td>',
        page,
    )
    assert cells is not None, page
    requests, failure_rate, latency = cells.groups()
    assert int(requests) >= 2  # the dead letter's job (Failed) and the completed one, at least
    assert failure_rate.endswith("%") and re.fullmatch(r"[0-9.]+ / [0-9.]+", latency), cells.groups()
    assert "GET /api/endpoints/{name}/compare" in page


@dataclass
class Browser:
    """A page in headless Chromium that records console errors and every URL it asks for."""

    page: Any
    errors: list[str] = field(default_factory=list)
    urls: list[str] = field(default_factory=list)


@pytest.fixture
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        unavailable("chromium", f"{CHROMIUM} is not installed (apt-get install chromium; make test does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=[LOOPBACK_ONLY])
        try:
            page = chromium.new_page(viewport={"width": 1280, "height": 900})
            b = Browser(page)
            page.on("console", lambda m: b.errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: b.errors.append(str(e)))
            page.on("request", lambda r: b.urls.append(r.url))
            yield b
        finally:
            chromium.close()


@pytest.mark.slow
def test_a_dead_letter_is_redriven_from_the_dashboard_and_its_job_completes(
    system: System, browser: Browser
) -> None:
    page, base, dead = browser.page, system.server.url, system.jobs["dead"]
    page.goto(f"{base}/ui?code={ADMIN_KEY}")
    assert urlsplit(page.url).path == "/ui" and "code=" not in page.url
    page.locator("#dead-count").click()  # the overview's count opens the list
    page.locator(f'a:text("{dead}")').click()
    assert '"n": 1' in page.locator("pre").inner_text()  # the request message
    page.locator("#redrive").click()
    assert page.locator("#done").inner_text() == "1 dead letter(s) redriven"
    done = wait_until(lambda: system.ended(dead), 60, system.log)
    assert (done["runtimeStatus"], done["output"]) == ("Completed", {"echo": {"n": 1}})
    page.goto(f"{base}/ui/jobs/{dead}")
    assert page.locator("#job-status").inner_text() == "Completed"
    assert not browser.errors, browser.errors


@pytest.mark.slow
def test_the_try_it_form_scores_and_the_job_is_listed_and_found(system: System, browser: Browser) -> None:
    page, base = browser.page, system.server.url
    page.goto(f"{base}/ui?code={API_KEY}")
    page.locator('a.button[href="/ui/try/record"]').click()
    page.locator("textarea").fill('{"hello": "world"}')
    page.locator("#try button").click()
    job_id = urlsplit(page.url).path.rsplit("/", 1)[1]
    page.locator("#job-status:text('Completed')").wait_for(timeout=30_000)  # htmx refreshes it
    assert '"world"' in page.locator("#job-output").inner_text()
    page.goto(f"{base}/ui/jobs")
    assert page.locator(f'#jobs a:text("{job_id}")').count() == 1
    page.locator("nav input[name=id]").fill(job_id)
    page.locator("nav .search button").click()
    assert urlsplit(page.url).path == f"/ui/jobs/{job_id}"
    page.goto(f"{base}/ui/jobs/{'0' * 32}")
    assert page.locator("#error").inner_text().startswith("no job with id")
    browser.errors.clear()  # the 404 above is a console error by design; the pages below are not
    for path in ("/ui", "/ui/jobs", "/ui/deadletters", f"/ui/jobs/{job_id}", "/ui/try/record", "/"):
        page.goto(f"{base}{path}")
        page.wait_for_load_state("networkidle")
    page.goto(f"{base}/ui")
    page.locator("#chart .uplot").wait_for(timeout=10_000)  # the chart drew from /ui/stats
    with page.expect_response(lambda r: urlsplit(r.url).path == "/ui/live") as live:
        pass  # htmx refreshes the live panel
    assert live.value.status == 200
    assert not browser.errors, browser.errors
    assert {urlsplit(u).hostname for u in browser.urls} == {"127.0.0.1"}, browser.urls


def test_the_vendored_scripts_are_what_vendor_md_says() -> None:
    table = dict(
        re.findall(
            r"\| `([^`]+)` \| [^|]+ \| [^|]+ \| [^|]+ \| `([0-9a-f]{64})`", (STATIC / "VENDOR.md").read_text()
        )
    )
    assert set(table) == {"htmx.min.js", "uPlot.iife.min.js", "uPlot.min.css"}
    for name, digest in table.items():
        assert hashlib.sha256((STATIC / name).read_bytes()).hexdigest() == digest, name


#: This suite's Redis database (flushed before and after each test that uses it).
REDIS_DB = 8


def open_kind(kind: str, tmp_path: Path) -> StatusStore:
    """A fresh, empty store of ``kind``."""
    if kind == "memory":
        return MemoryStore()
    if kind == "sqlite":
        return SqliteStore(f"sqlite:///{tmp_path / 'n.db'}")
    require_server("Redis", "127.0.0.1", 6379)
    url = f"redis://127.0.0.1:6379/{REDIS_DB}"
    with redis.Redis.from_url(url) as r:
        r.flushdb()
    return RedisStore(url)


@pytest.fixture(params=["memory", "sqlite", pytest.param("redis", marks=pytest.mark.redis)])
def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StatusStore]:
    store = open_kind(request.param, tmp_path)
    try:
        yield store
    finally:
        store.close()
        if request.param == "redis":
            with redis.Redis.from_url(f"redis://127.0.0.1:6379/{REDIS_DB}") as r:
                r.flushdb()


def test_a_store_lists_the_newest_jobs_first(any_store: StatusStore) -> None:
    store = any_store
    for n in range(5):  # every submitted job has a deadline (the Redis store lists by it)
        created = 1000.0 + n
        store.create(
            JobRecord(f"job-{n}", "record", {"n": n}, created=created, updated=created, deadline=created + 30)
        )
    store.finish("job-1", JobStatus.COMPLETED, {"ok": True}, 2000.0)
    store.finish("job-4", JobStatus.FAILED, None, 2001.0)  # ended last, created last: first still
    assert [j.id for j in store.recent(3)] == ["job-4", "job-3", "job-2"]
    listed = store.recent(10)
    assert [j.id for j in listed] == ["job-4", "job-3", "job-2", "job-1", "job-0"]
    assert [j.status for j in listed] == [
        JobStatus.FAILED,
        *[JobStatus.PENDING] * 2,
        JobStatus.COMPLETED,
        JobStatus.PENDING,
    ]
    assert listed[3].output == {"ok": True} and listed[2].input == {"n": 2}
    assert store.recent(1)[0].id == "job-4"
    store.delete("job-4")
    assert [j.id for j in store.recent(2)] == ["job-3", "job-2"]


@pytest.mark.redis
def test_the_redis_store_lists_unfinished_and_ended_jobs_and_skips_expired_records(tmp_path: Path) -> None:
    # recent() on Redis merges two indexes (unfinished by deadline, ended by update time) and reads
    # the records: an index entry whose record the retention TTL removed is left out. Exact when
    # jobs share a timeout and end in about the order they came (docs/operations.md says so).
    store = open_kind("redis", tmp_path)
    assert isinstance(store, RedisStore)
    try:
        for n in range(60):  # more than one index page of the default limit
            t = 1000.0 + n
            store.create(JobRecord(f"job-{n:02}", "record", None, created=t, updated=t, deadline=t + 30))
        for n in range(0, 60, 2):
            store.finish(f"job-{n:02}", JobStatus.COMPLETED, n, 2000.0 + n)
        assert [j.id for j in store.recent(4)] == ["job-59", "job-58", "job-57", "job-56"]
        assert [j.id for j in store.recent()] == [f"job-{n:02}" for n in range(59, 9, -1)]
        store.client.delete(JOB_PREFIX + "job-58")  # expired: still in the finished index
        assert [j.id for j in store.recent(3)] == ["job-59", "job-57", "job-56"]
        assert store.recent(0) == []
    finally:
        store.close()
        with redis.Redis.from_url(f"redis://127.0.0.1:6379/{REDIS_DB}") as r:
            r.flushdb()


def test_the_live_numbers_count_ends_latency_failures_and_lanes() -> None:
    now = 10_000.0
    jobs = [
        *(
            JobRecord(f"ok-{n}", "p", None, JobStatus.COMPLETED, created=now - 60, updated=now - 60 + n / 100)
            for n in range(1, 101)
        ),
        JobRecord("bad", "p", None, JobStatus.FAILED, created=now - 30, updated=now - 29),
        JobRecord(
            "old", "p", None, JobStatus.FAILED, created=now - 900, updated=now - 899
        ),  # out of the window
        JobRecord("wait", "p", None, JobStatus.PENDING, created=now - 1, priority="high"),
        JobRecord("run", "p", None, JobStatus.RUNNING, created=now - 2, priority="low"),
    ]
    numbers = stats.compute(jobs, now)
    assert (numbers.completed, numbers.failed) == (100, 1)
    assert (numbers.p50_ms, numbers.p99_ms) == pytest.approx((500.0, 990.0))  # 10 .. 1000 ms, nearest rank
    assert numbers.lanes["high"] == {"Pending": 1, "Running": 0} and numbers.lanes["low"]["Running"] == 1
    assert sum(numbers.series["completed"]) == 100 and sum(numbers.series["failed"]) == 1
    assert stats.quantile([], 0.5) is None
