"""The callback guard (`nearline.callbacks`): where a job's status document may be POSTed.

Network safety: every connection these tests make goes to a loopback address (a receiver of the
test's own, or `nearline serve`). Non-public addresses other than loopback appear only as what a
stub resolver answers, with a recording transport that connects nowhere; the tests assert that
no request was even attempted.
"""

from __future__ import annotations

import datetime
import json
import logging
import ssl
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from serving import running_server
from waiting import wait_until

from nearline.addresses import AllowList
from nearline.brokers.memory import MemoryBroker
from nearline.callbacks import CallbackRefused, CallbackSender, check_callback_url
from nearline.errors import ConfigError
from nearline.jobs import JobRecord, JobStatus
from nearline.lifecycle import Lifecycle
from nearline.settings import ApiSettings
from nearline.store.memory import MemoryStore

PUBLIC = "93.184.215.14"  # never connected to: only a stub resolver answers it

# --- helpers --------------------------------------------------------------------------------


@dataclass
class Received:
    """What a receiver got: one (path, headers, body) per request."""

    requests: list[tuple[str, dict[str, str], Any]] = field(default_factory=list)
    arrived: threading.Event = field(default_factory=threading.Event)


@contextmanager
def receiver(tls: ssl.SSLContext | None = None) -> Iterator[tuple[int, Received]]:
    """A callback receiver on 127.0.0.1 (a free port), answering 204."""
    got = Received()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            got.requests.append((self.path, dict(self.headers), body))
            self.send_response(204)
            self.end_headers()
            got.arrived.set()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], got
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


class Recording:
    """A transport factory whose transports record each request and connect nowhere."""

    def __init__(self, status: int = 204, headers: dict[str, str] | None = None) -> None:
        self.made = 0
        self.requests: list[httpx.Request] = []
        self.status, self.headers = status, headers or {}

    def __call__(self) -> httpx.BaseTransport:
        self.made += 1
        return httpx.MockTransport(self._answer)

    def _answer(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return httpx.Response(self.status, headers=self.headers)


class Resolver:
    """A stub resolver: each name's answers, one list per lookup (the last one repeats)."""

    def __init__(self, **answers: Any) -> None:
        self.answers = {
            name.replace("_", "."): value if value and isinstance(value[0], list) else [value]
            for name, value in answers.items()
        }
        self.lookups: list[str] = []

    def __call__(self, host: str, port: int) -> Sequence[str]:
        self.lookups.append(host)
        if host not in self.answers:
            raise OSError(f"[stub] no such host: {host}")
        answers = self.answers[host]
        return answers[min(len(self.lookups) - 1, len(answers) - 1)]  # type: ignore[return-value]


def job_with(url: str, job_id: str = "j1") -> JobRecord:
    now = time.time()
    return JobRecord(
        job_id,
        "identity",
        {"x": 1},
        created=now,
        updated=now,
        status=JobStatus.COMPLETED,
        output={"x": 1},
        callback_url=url,
    )


def refusals(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "not sent" in r.getMessage()]


# --- at submit: URLs that can never be sent to ------------------------------------------------

LOOPBACK_SPELLINGS = [
    "http://127.0.0.1/",
    "http://127.0.0.1./",
    "http://127.1/",
    "http://127.0.1/",
    "http://2130706433/",
    "http://0x7f000001/",
    "http://0x7f.1/",
    "http://0x7F.0.0.1/",
    "http://0177.0.0.1/",
    "http://017700000001/",
    "http://127.255.255.254:7071/api/jobs/x/terminate",
    "http://[::1]/",
    "http://[0:0:0:0:0:0:0:1]/",
    "http://[::ffff:127.0.0.1]/",
    "http://[::ffff:7f00:1]/",
    "http://[::127.0.0.1]/",
    "http://[64:ff9b::7f00:1]/",
    "http://[2002:7f00:1::]/",
    "http://localhost/",
    "http://LOCALHOST./",
    "http://api.localhost/",
    "http://0.0.0.0/",
    "http://0/",
    "http://[::]/",
]
NON_PUBLIC = [
    "http://10.0.0.1/",
    "http://10.1/",
    "http://172.16.5.4/",
    "http://192.168.1.1/",
    "http://169.254.169.254/latest/meta-data/",
    "http://2852039166/",  # 169.254.169.254
    "http://[::ffff:169.254.169.254]/",
    "http://[fe80::1]/",
    "http://[fe80::1%25eth0]/",
    "http://[fd00:ec2::254]/",
    "http://[fc00::1]/",
    "http://100.64.0.1/",
    "http://224.0.0.1/",
    "http://[ff02::1]/",
    "http://255.255.255.255/",
    "http://240.0.0.1/",
    "http://198.18.0.1/",
]
MALFORMED = [
    "http://user:pw@localhost/",
    "http://user:pw@hooks.example.com/",
    "https://token@hooks.example.com/",
    "ftp://hooks.example.com/",
    "file:///etc/passwd",
    "gopher://hooks.example.com:70/",
    "hooks.example.com/cb",
    "http:///cb",
    "http://hooks.example.com:0/",
    "http://hooks.example.com:99999/",
    "http://[::1/",
    "http://1.2.3.4.5/",
    "http://256.0.0.1/",
    "http://hooks.example.com/\ud800",
    "http://hooks\nexample.com/",
    "http://exa mple.com/",
    "http://hooks.example.com/" + "a" * 2048,
]


@pytest.mark.parametrize("url", LOOPBACK_SPELLINGS + NON_PUBLIC + MALFORMED)
def test_a_url_that_can_never_be_sent_to_is_refused_at_submit(url: str) -> None:
    with pytest.raises(CallbackRefused):
        check_callback_url(url, AllowList())


@pytest.mark.parametrize(
    "url",
    [
        "https://hooks.example.com/cb?job=1",
        "http://hooks.example.com:8080",
        f"http://{PUBLIC}/cb",
        "http://[2606:4700:4700::1111]/cb",
        "http://[::ffff:8.8.8.8]/",
        "http://10.0.0.1.example.com/",  # a name, checked when sent
        "http://metadata.google.internal/",  # likewise
    ],
)
def test_public_addresses_and_host_names_pass_the_submit_check(url: str) -> None:
    check_callback_url(url, AllowList())


def test_the_allow_list_admits_its_networks_and_names_only() -> None:
    allow = AllowList.parse("127.0.0.1/32, 10.1.2.0/24, Hooks.Internal.")
    for url in (
        "http://127.0.0.1:9/",
        "http://2130706433/",
        "http://[::ffff:127.0.0.1]/",
        "http://10.1.2.9/",
    ):
        assert check_callback_url(url, allow).address is not None
    for url in ("http://127.0.0.2/", "http://[::1]/", "http://10.1.3.1/", "http://localhost/"):
        with pytest.raises(CallbackRefused):
            check_callback_url(url, allow)
    assert check_callback_url("http://hooks.internal/", allow).host == "hooks.internal"
    assert check_callback_url("http://localhost/", AllowList.parse("localhost")).host == "localhost"


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ("10.1.2.3/24", "has host bits set"),
        ("127.1", "write an address as a dotted quad or a CIDR"),
        ("hooks internal", "is not a valid host name"),
        ("::g/64", "is not a network"),
    ],
)
def test_a_bad_allow_list_is_a_config_error_naming_the_variable(raw: str, why: str) -> None:
    with pytest.raises(ConfigError, match="NEARLINE_CALLBACK_ALLOW") as caught:
        ApiSettings.from_env({"NEARLINE_CALLBACK_ALLOW": raw})
    assert why in caught.value.message


# --- when sending: names are resolved once and every address checked --------------------------


@pytest.mark.parametrize(
    "addresses",
    [
        ["10.0.0.1"],
        ["169.254.169.254"],
        ["::ffff:169.254.169.254"],
        ["fd00:ec2::254"],
        ["127.0.0.1"],
        [PUBLIC, "10.0.0.1"],  # every address must pass, not the first
    ],
)
def test_a_name_that_resolves_to_a_non_public_address_is_never_connected_to(
    addresses: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    transport, resolver = Recording(), Resolver(hooks_example_com=addresses)
    sender = CallbackSender(resolver=resolver, transport=transport)
    assert not sender.send(job_with("https://hooks.example.com/cb"))
    assert (transport.made, transport.requests) == (0, [])
    (message,) = refusals(caplog)
    assert "resolves to" in message and "not a public address" in message


def test_a_name_that_does_not_resolve_is_logged_once_and_not_sent(caplog: pytest.LogCaptureFixture) -> None:
    transport = Recording()
    assert not CallbackSender(resolver=Resolver(), transport=transport).send(job_with("http://nowhere.test/"))
    assert transport.made == 0
    (message,) = refusals(caplog)
    assert "does not resolve" in message


def test_the_request_goes_to_the_checked_address_with_the_name_in_host_and_sni() -> None:
    """DNS rebinding: a second lookup would answer loopback; there is none."""
    transport = Recording()
    resolver = Resolver(hooks_example_com=[[PUBLIC], ["127.0.0.1"]])
    sender = CallbackSender(resolver=resolver, transport=transport)
    assert sender.send(job_with("https://hooks.example.com:8443/cb?t=1"))
    assert resolver.lookups == ["hooks.example.com"]
    (request,) = transport.requests
    assert str(request.url) == f"https://{PUBLIC}:8443/cb?t=1"
    assert request.headers["host"] == "hooks.example.com:8443"
    assert request.extensions["sni_hostname"] == "hooks.example.com"
    assert "authorization" not in request.headers
    assert json.loads(request.content)["instanceId"] == "j1"


def test_a_redirect_is_not_followed(caplog: pytest.LogCaptureFixture) -> None:
    transport = Recording(307, {"Location": "http://127.0.0.1:7071/api/jobs/x/terminate"})
    sender = CallbackSender(resolver=Resolver(hooks_example_com=[PUBLIC]), transport=transport)
    assert not sender.send(job_with("http://hooks.example.com/cb"))
    assert len(transport.requests) == 1
    assert any("not followed" in r.getMessage() for r in caplog.records)


def test_an_allowed_name_may_resolve_to_a_private_address() -> None:
    transport = Recording()
    sender = CallbackSender(
        AllowList.parse("hooks.internal"), resolver=Resolver(hooks_internal=["10.1.2.3"]), transport=transport
    )
    assert sender.send(job_with("http://hooks.internal/cb"))
    (request,) = transport.requests
    assert (request.url.host, request.headers["host"]) == ("10.1.2.3", "hooks.internal")


def test_refused_callback_is_logged_once_per_job(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "nearline.callbacks")
    sender = CallbackSender(transport=Recording())
    for i in range(3):
        sender.send(job_with("http://127.0.0.1/", job_id=f"j{i}"))
    assert len(refusals(caplog)) == 3  # one line each, no retries


# --- real receivers, on loopback --------------------------------------------------------------


def test_with_loopback_allowed_a_real_receiver_gets_the_document_without_credentials() -> None:
    with receiver() as (port, got):
        sender = CallbackSender(AllowList.parse("127.0.0.1/32"))
        assert sender.send(job_with(f"http://127.0.0.1:{port}/hook?x=1"))
    ((path, headers, body),) = got.requests
    assert path == "/hook?x=1"
    assert "Authorization" not in headers
    assert (body["instanceId"], body["runtimeStatus"]) == ("j1", "Completed")


def test_a_name_is_connected_to_at_the_address_that_was_checked() -> None:
    """``hooks.test`` exists only in the stub: the receiver is reached through its address."""
    with receiver() as (port, got):
        sender = CallbackSender(AllowList.parse("127.0.0.1/32"), resolver=Resolver(hooks_test=["127.0.0.1"]))
        assert sender.send(job_with(f"http://hooks.test:{port}/hook"))
    ((_, headers, _),) = got.requests
    assert headers["Host"] == f"hooks.test:{port}"


def _tls_for(name: str, folder: Path) -> tuple[ssl.SSLContext, ssl.SSLContext, list[str | None]]:
    """A server context with a self-signed certificate for ``name``, a client context trusting
    it, and the SNI names the server sees."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    seen: list[str | None] = []
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert_file, key_file)
    server.sni_callback = lambda _sock, sni, _ctx: seen.append(sni)  # type: ignore[assignment,func-returns-value]
    return server, ssl.create_default_context(cafile=str(cert_file)), seen


def test_https_sends_the_name_as_sni_and_verifies_the_certificate_against_it(tmp_path: Path) -> None:
    server_tls, client_tls, seen = _tls_for("hooks.test", tmp_path)
    resolver = Resolver(hooks_test=["127.0.0.1"], other_test=["127.0.0.1"])

    def sender() -> CallbackSender:
        return CallbackSender(
            AllowList.parse("127.0.0.1/32"),
            resolver=resolver,
            transport=lambda: httpx.HTTPTransport(verify=client_tls),
            attempts=1,
        )

    with receiver(server_tls) as (port, got):
        assert sender().send(job_with(f"https://hooks.test:{port}/hook"))
        assert not sender().send(job_with(f"https://other.test:{port}/hook"))  # the wrong certificate
    assert len(got.requests) == 1
    assert seen[:2] == ["hooks.test", "other.test"]


# --- the lifecycle ----------------------------------------------------------------------------


def test_the_lifecycle_does_not_call_back_to_loopback_unless_allowed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The end of a job would POST to a receiver on loopback; by default it is refused."""
    broker, store = MemoryBroker(), MemoryStore()
    life = Lifecycle(broker, store)
    try:
        with receiver() as (port, got):
            now = time.time()
            url = f"http://127.0.0.1:{port}/api/jobs/other/terminate"
            store.create(JobRecord("cb", "identity", {}, created=now, updated=now, callback_url=url))
            store.finish("cb", JobStatus.TERMINATED, "stop", time.time())
            wait_until(lambda: got.requests or refusals(caplog), 10, "the callback sent or refused")
    finally:
        life.stop()
    assert got.requests == []
    (message,) = refusals(caplog)
    assert "job cb" in message and "loopback" in message


# --- black box: nearline serve --------------------------------------------------------------


@pytest.mark.slow
def test_serve_refuses_callbacks_to_itself_in_every_spelling(tmp_path: Path) -> None:
    """The attack of the issue: a callback that terminates another caller's job through the API."""
    with running_server(tmp_path, "--no-workers") as server:
        port = server.url.rsplit(":", 1)[1]
        other = httpx.post(f"{server.url}/api/score/identity", json={"input": {"secret": 1}}).json()["id"]
        hosts = [
            "127.0.0.1",
            "[::ffff:127.0.0.1]",
            "2130706433",
            "0x7f.1",
            "127.1",
            "localhost.",
            "user:pw@localhost",
            "0.0.0.0",
        ]
        for host in hosts:
            url = f"http://{host}:{port}/api/jobs/{other}/terminate?reason=pwned"
            answer = httpx.post(f"{server.url}/api/score/identity", json={"input": {}, "callback_url": url})
            assert answer.status_code == 400, (host, answer.text)
            assert answer.json()["error"]["code"] == "BadRequest"
            assert "'callback_url'" in answer.json()["error"]["message"]
        status = httpx.get(f"{server.url}/api/jobs/{other}").json()
        assert status["runtimeStatus"] == "Pending"
        assert httpx.get(f"{server.url}/api/health").json()["queueDepth"] == 1


@pytest.mark.slow
def test_serve_calls_back_to_a_receiver_the_allow_list_names(tmp_path: Path) -> None:
    with (
        receiver() as (port, got),
        running_server(tmp_path, "--no-workers", env={"NEARLINE_CALLBACK_ALLOW": "127.0.0.1/32"}) as server,
    ):
        url = f"http://127.0.0.1:{port}/hook"
        job = httpx.post(f"{server.url}/api/score/identity", json={"input": {"a": 1}, "callback_url": url})
        assert job.status_code == 202, job.text
        httpx.post(job.json()["terminatePostUri"].replace("{text}", "enough"))
        assert got.arrived.wait(10)
    ((path, headers, body),) = got.requests
    assert (path, body["runtimeStatus"], body["output"]) == ("/hook", "Terminated", "enough")
    assert "Authorization" not in headers
