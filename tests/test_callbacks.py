"""The callback guard (`nearline.callbacks`) and one attempt (`nearline.callback_sender`):
where a job's webhook may go, and how it is sent.

Network safety: every connection these tests make goes to a loopback address (a receiver of the
test's own, or `nearline serve`). Non-public addresses other than loopback appear only as what a
stub resolver answers, with a recording transport that connects nowhere; the tests assert that
no request was even attempted. Host names are never looked up by the system resolver here.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from serving import running_server

from nearline.addresses import AllowList, IPAddress
from nearline.brokers.memory import MemoryBroker
from nearline.callback_sender import MAX_REPLY_BYTES, CallbackSender
from nearline.callbacks import CallbackGuard, CallbackRefused, check_callback_url
from nearline.errors import ConfigError
from nearline.guarded_transport import GuardedTransport, tls_context
from nearline.settings import ApiSettings
from nearline.store.memory import MemoryStore
from nearline.store_jobs import StoreJobs

PUBLIC = "93.184.215.14"  # never connected to: only a stub resolver answers it
LOOPBACK = AllowList.parse("127.0.0.1/32")

# --- helpers --------------------------------------------------------------------------------


@dataclass
class Received:
    """What a receiver got: one (path, headers, body) per request."""

    requests: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)
    arrived: threading.Event = field(default_factory=threading.Event)


@contextmanager
def receiver(
    tls: ssl.SSLContext | None = None, answer: Callable[[BaseHTTPRequestHandler], None] | None = None
) -> Iterator[tuple[int, Received]]:
    """A webhook receiver on 127.0.0.1 (a free port): 204, unless ``answer`` answers."""
    got = Received()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            got.requests.append((self.path, dict(self.headers), body))
            if answer is not None:
                answer(self)
            else:
                self.send_response(204)
                self.end_headers()
            got.arrived.set()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
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

    def __call__(self, check: Callable[[IPAddress], str | None]) -> httpx.BaseTransport:
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
        return answers[min(len(self.lookups) - 1, len(answers) - 1)]  # type: ignore[no-any-return]


def sender(allow: AllowList | None = None, transport: Any = None, **resolved: Any) -> CallbackSender:
    return CallbackSender(CallbackGuard(allow, resolver=Resolver(**resolved)), transport=transport)


BODY = b'{"type":"job.completed","data":{}}'
HEADERS = {"webhook-id": "msg_1", "webhook-timestamp": "1800000000", "webhook-signature": "v1,x"}


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
    "http://127.0.0.1#@hooks.example.com/",
    "http://127.0.0.1:80?@hooks.example.com/",
]
NON_PUBLIC = [
    "http://10.0.0.1/",
    "http://10.1/",
    "http://172.16.5.4/",
    "http://192.168.1.1/",
    "http://169.254.169.254/latest/meta-data/",
    "http://2852039166/",  # 169.254.169.254
    "http://0xa9fea9fe/",
    "http://0251.0376.0251.0376/",
    "http://0251.0xfe.43518/",
    "http://[::ffff:a9fe:a9fe]/",
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
    "https://hooks.example.com\\@127.0.0.1/",
    "https://hooks.example.com%40127.0.0.1/",
    "https://:@hooks.example.com/",
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


@pytest.mark.parametrize("scheme", ["http", "https"])
@pytest.mark.parametrize("url", LOOPBACK_SPELLINGS + NON_PUBLIC)
def test_every_spelling_of_a_non_public_address_is_refused_at_submit(url: str, scheme: str) -> None:
    with pytest.raises(CallbackRefused, match=r"not a public address|a loopback name"):
        check_callback_url(url.replace("http://", f"{scheme}://", 1), AllowList())


@pytest.mark.parametrize("url", MALFORMED)
def test_a_url_that_can_never_be_sent_to_is_refused_at_submit(url: str) -> None:
    with pytest.raises(CallbackRefused):
        check_callback_url(url, AllowList())


@pytest.mark.parametrize(
    "url",
    [
        "https://hooks.example.com/cb?job=1",
        "https://hooks.example.com:8443",
        f"https://{PUBLIC}/cb",
        "https://[2606:4700:4700::1111]/cb",
        "https://[::ffff:8.8.8.8]/",
        "https://10.0.0.1.example.com/",  # a name: looked up when checked further
        "https://metadata.google.internal/",  # likewise
    ],
)
def test_https_to_public_addresses_and_host_names_pass_the_literal_check(url: str) -> None:
    check_callback_url(url, AllowList())


@pytest.mark.parametrize("url", [f"http://{PUBLIC}/cb", "http://hooks.example.com/cb"])
def test_plain_http_off_the_allow_list_is_refused(url: str) -> None:
    guard = CallbackGuard(resolver=Resolver(hooks_example_com=[PUBLIC]))
    with pytest.raises(CallbackRefused, match="use https"):
        guard.check_names(url)
    allowed = CallbackGuard(AllowList.parse(f"{PUBLIC}/32"), resolver=Resolver(hooks_example_com=[PUBLIC]))
    allowed.check_names(url)


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


# --- at submit: names are looked up ---------------------------------------------------------

#: What a stub resolver answers for a name whose callbacks must be refused: every address must
#: pass, not the first.
RESOLVED_NON_PUBLIC = [
    ["10.0.0.1"],
    ["169.254.169.254"],
    ["::ffff:169.254.169.254"],
    ["fd00:ec2::254"],
    ["127.0.0.1"],
    [PUBLIC, "10.0.0.1"],
]


def submit(guard: CallbackGuard, url: str) -> Any:
    """Submit through the job seam (no HTTP), with ``guard``'s resolver."""
    jobs = StoreJobs(_catalog(), MemoryBroker(), MemoryStore(), callbacks=guard)
    body = json.dumps({"input": {}, "callback_url": url}).encode()
    return asyncio.run(jobs.submit("identity", body))


def _catalog() -> Any:
    from nearline.examples import PIPELINES_FILE
    from nearline.pipelines.spec import load_pipelines

    return load_pipelines(PIPELINES_FILE)


@pytest.mark.parametrize(
    "addresses",
    RESOLVED_NON_PUBLIC,
)
def test_a_name_resolving_to_a_non_public_address_is_refused_at_submit(addresses: list[str]) -> None:
    guard = CallbackGuard(resolver=Resolver(hooks_example_com=addresses))
    with pytest.raises(CallbackRefused, match=r"'callback_url' names hooks\.example\.com, which resolves to"):
        submit(guard, "https://hooks.example.com/cb")


def test_a_name_resolving_to_public_addresses_or_not_at_all_is_accepted_at_submit() -> None:
    job, created = submit(
        CallbackGuard(resolver=Resolver(hooks_example_com=[PUBLIC])), "https://hooks.example.com/"
    )
    assert created and job.callback_url == "https://hooks.example.com/"
    _, created = submit(
        CallbackGuard(resolver=Resolver()), "https://nowhere.example.com/"
    )  # checked when sent
    assert created


# --- when sending: names are resolved for each attempt, every address checked ---------------


@pytest.mark.parametrize(
    "addresses",
    RESOLVED_NON_PUBLIC,
)
def test_a_name_that_now_resolves_to_a_non_public_address_is_never_connected_to(addresses: list[str]) -> None:
    transport = Recording()
    attempt = sender(transport=transport, hooks_example_com=addresses).post(
        "https://hooks.example.com/cb", BODY, HEADERS
    )
    assert (transport.made, transport.requests) == (0, [])
    assert attempt.refused and not attempt.retryable
    assert "resolves to" in str(attempt.error) and "not a public address" in str(attempt.error)


def test_a_name_that_does_not_resolve_is_not_sent_and_tried_again_later() -> None:
    transport = Recording()
    attempt = sender(transport=transport).post("https://nowhere.test/", BODY, HEADERS)
    assert transport.made == 0
    assert attempt.retryable and "does not resolve" in str(attempt.error)


def test_the_request_goes_to_the_checked_address_with_the_name_in_host_and_sni() -> None:
    """DNS rebinding: the lookup made for this attempt is the one connected to."""
    transport = Recording()
    guard = CallbackGuard(resolver=Resolver(hooks_example_com=[[PUBLIC], ["127.0.0.1"]]))
    attempt = CallbackSender(guard, transport=transport).post(
        "https://hooks.example.com:8443/cb?t=1", BODY, HEADERS
    )
    assert attempt.delivered
    (request,) = transport.requests
    assert str(request.url) == f"https://{PUBLIC}:8443/cb?t=1"
    assert request.headers["host"] == "hooks.example.com:8443"
    assert request.extensions["sni_hostname"] == "hooks.example.com"
    assert "authorization" not in request.headers
    assert request.content == BODY and request.headers["webhook-id"] == "msg_1"
    # The next attempt looks the name up again, and now refuses it.
    again = CallbackSender(guard, transport=transport).post(
        "https://hooks.example.com:8443/cb", BODY, HEADERS
    )
    assert again.refused and len(transport.requests) == 1


def test_the_connected_address_is_checked_again_before_a_byte_is_sent() -> None:
    """Whatever the transport's socket reached is checked: here the check is told the socket
    reached a private address, as a rebinding or a transparent proxy might make it."""
    with receiver() as (port, got):

        def rebinding(check: Callable[[IPAddress], str | None]) -> httpx.BaseTransport:
            return GuardedTransport(lambda peer: check(ipaddress.ip_address("10.0.0.1")), tls_context())

        guard = CallbackGuard(LOOPBACK)
        attempt = CallbackSender(guard, transport=rebinding).post(
            f"http://127.0.0.1:{port}/hook", BODY, HEADERS
        )
    assert attempt.refused and "10.0.0.1" in str(attempt.error)
    assert got.requests == []


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_a_redirect_is_not_followed_and_not_retried(status: int) -> None:
    transport = Recording(status, {"Location": "http://127.0.0.1:7071/api/jobs/x/terminate"})
    attempt = sender(transport=transport, hooks_example_com=[PUBLIC]).post(
        "https://hooks.example.com/cb", BODY, HEADERS
    )
    assert len(transport.requests) == 1
    assert not attempt.retryable and "not followed" in str(attempt.error)


@pytest.mark.parametrize(
    ("status", "retryable"),
    [*((s, False) for s in (200, 204, 400, 401, 404, 410)), *((s, True) for s in (408, 429, 500, 502, 503))],
)
def test_which_answers_are_retried(status: int, retryable: bool) -> None:
    attempt = sender(transport=Recording(status), hooks_example_com=[PUBLIC]).post(
        "https://hooks.example.com/cb", BODY, HEADERS
    )
    assert (attempt.status, attempt.retryable) == (status, retryable)


@pytest.mark.parametrize(
    ("header", "seconds"),
    [("120", 120.0), ("0", 0.0), ("soon", None), ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0)],
)
def test_retry_after_is_read_in_seconds_or_as_a_date(header: str, seconds: float | None) -> None:
    attempt = sender(transport=Recording(429, {"Retry-After": header}), hooks_example_com=[PUBLIC]).post(
        "https://hooks.example.com/cb", BODY, HEADERS
    )
    assert attempt.retry_after == seconds


def test_an_allowed_name_may_resolve_to_a_private_address() -> None:
    transport = Recording()
    attempt = sender(AllowList.parse("hooks.internal"), transport, hooks_internal=["10.1.2.3"]).post(
        "http://hooks.internal/cb", BODY, HEADERS
    )
    assert attempt.delivered
    (request,) = transport.requests
    assert (request.url.host, request.headers["host"]) == ("10.1.2.3", "hooks.internal")


# --- real receivers, on loopback --------------------------------------------------------------


def test_with_loopback_allowed_a_real_receiver_gets_the_event_without_credentials() -> None:
    with receiver() as (port, got):
        attempt = CallbackSender(CallbackGuard(LOOPBACK)).post(
            f"http://127.0.0.1:{port}/hook?x=1", BODY, HEADERS
        )
    assert attempt.delivered and attempt.status == 204
    ((path, headers, body),) = got.requests
    assert (path, body) == ("/hook?x=1", BODY)
    assert "Authorization" not in headers and headers["webhook-signature"] == "v1,x"
    assert headers["Content-Type"] == "application/json"


def test_a_name_is_connected_to_at_the_address_that_was_checked() -> None:
    """``hooks.test`` exists only in the stub: the receiver is reached through its address."""
    with receiver() as (port, got):
        assert (
            sender(LOOPBACK, hooks_test=["127.0.0.1"])
            .post(f"http://hooks.test:{port}/hook", BODY, HEADERS)
            .delivered
        )
    ((_, headers, _),) = got.requests
    assert headers["Host"] == f"hooks.test:{port}"


def test_only_the_first_kilobytes_of_a_reply_are_read() -> None:
    """A receiver that answers 500 with an endless body: the attempt reads 4 KiB and is done."""
    stop = threading.Event()

    def endless(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(500)
        handler.send_header("Content-Length", str(1 << 30))
        handler.end_headers()
        chunk = b"x" * 65536
        with_deadline = time.monotonic() + 60
        while not stop.is_set() and time.monotonic() < with_deadline:
            try:
                handler.wfile.write(chunk)
            except OSError:
                return

    with receiver(answer=endless) as (port, _):
        attempt = CallbackSender(CallbackGuard(LOOPBACK)).post(f"http://127.0.0.1:{port}/", BODY, HEADERS)
        stop.set()
    assert attempt.status == 500 and attempt.retryable
    assert str(attempt.error).startswith("500: xxx") and len(str(attempt.error)) <= 210
    assert MAX_REPLY_BYTES <= 8192


def test_a_receiver_that_never_answers_times_out_and_is_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    import nearline.callback_sender as cs

    monkeypatch.setattr(cs, "TIMEOUT", httpx.Timeout(0.3))
    with socket.socket() as listener:  # accepts connections (backlog) and never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        attempt = CallbackSender(CallbackGuard(LOOPBACK)).post(f"http://127.0.0.1:{port}/", BODY, HEADERS)
    assert attempt.status is None and attempt.retryable
    assert "Timeout" in str(attempt.error)


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
    guard = CallbackGuard(LOOPBACK, resolver=Resolver(hooks_test=["127.0.0.1"], other_test=["127.0.0.1"]))
    with receiver(server_tls) as (port, got):
        assert (
            CallbackSender(guard, verify=client_tls)
            .post(f"https://hooks.test:{port}/hook", BODY, HEADERS)
            .delivered
        )
        wrong = CallbackSender(guard, verify=client_tls).post(
            f"https://other.test:{port}/hook", BODY, HEADERS
        )
    assert wrong.status is None and "CERTIFICATE" in str(wrong.error).upper()
    assert len(got.requests) == 1
    assert seen[:2] == ["hooks.test", "other.test"]


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
            "[::1]",
            "2130706433",
            "0x7f.1",
            "0177.0.0.1",
            "127.1",
            "localhost.",
            "api.localhost",
            "user:pw@localhost",
            "x@127.0.0.1",
            "0.0.0.0",
        ]
        for scheme in ("http", "https"):
            for host in hosts:
                url = f"{scheme}://{host}:{port}/api/jobs/{other}/terminate?reason=pwned"
                answer = httpx.post(
                    f"{server.url}/api/score/identity", json={"input": {}, "callback_url": url}
                )
                assert answer.status_code == 400, (host, answer.text)
                assert answer.json()["error"]["code"] == "CallbackRefused"
                assert "'callback_url'" in answer.json()["error"]["message"]
        status = httpx.get(f"{server.url}/api/jobs/{other}").json()
        assert status["runtimeStatus"] == "Pending"
        assert httpx.get(f"{server.url}/api/health").json()["queueDepth"] == 1
