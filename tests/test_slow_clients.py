"""Clients that send slowly, or hold too many connections, against a real `nearline serve`.

Each slow client is a socket to 127.0.0.1 that sends its request a byte at a time; one thread
trickles bytes to all of them and notes when the server closes each, and what it answered.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from serving import Server, running_server
from waiting import wait_until

pytestmark = pytest.mark.slow

HEAD = b"POST /api/score/identity HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
BODY = b'{"input": {"text": "' + b"x" * 60 + b'"}}'


@dataclass
class SlowClient:
    """A socket, the bytes it has still to send (one per tick), and what came back."""

    sock: socket.socket
    pending: bytes
    answer: bytes = b""
    closed: bool = False


@dataclass
class Trickle:
    """Sends one byte per ``interval`` to each client until the server closes it."""

    clients: list[SlowClient]
    interval: float = 0.5
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self.stop.is_set() and not all(c.closed for c in self.clients):
            for client in self.clients:
                if not client.closed and client.pending:
                    try:
                        client.sock.send(client.pending[:1])
                        client.pending = client.pending[1:]
                    except OSError:
                        client.closed = True
            self._read(self.interval)

    def _read(self, timeout: float) -> None:
        open_ = {c.sock: c for c in self.clients if not c.closed}
        readable, _, _ = select.select(list(open_), [], [], timeout) if open_ else ([], [], [])
        for sock in readable:
            try:
                data = sock.recv(65536)
            except OSError:
                data = b""
            open_[sock].answer += data
            open_[sock].closed = not data

    def open_count(self) -> int:
        return sum(not c.closed for c in self.clients)


def connect(server: Server, first: bytes, pending: bytes) -> SlowClient:
    port = int(server.url.rsplit(":", 1)[1])
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(first)
    return SlowClient(sock, pending)


@contextlib.contextmanager
def trickling(clients: list[SlowClient]) -> Iterator[Trickle]:
    trickle = Trickle(clients)
    thread = threading.Thread(target=trickle.run, daemon=True)
    thread.start()
    try:
        yield trickle
    finally:
        trickle.stop.set()
        thread.join(timeout=5)
        for client in clients:
            client.sock.close()


def test_slow_heads_and_bodies_are_dropped_while_others_are_served(tmp_path: Path) -> None:
    env = {"NEARLINE_HEADER_TIMEOUT_S": "2", "NEARLINE_BODY_TIMEOUT_S": "3"}
    with running_server(tmp_path, "--no-workers", env=env) as server:
        # 150 that never finish their headers, 50 that send headers and then a byte of body a tick.
        heads = [connect(server, HEAD, b"X-Slow: " + b"a" * 1000) for _ in range(150)]
        length = f"Content-Length: {len(BODY)}\r\n\r\n".encode()
        bodies = [connect(server, HEAD + length, BODY) for _ in range(50)]
        with trickling(heads + bodies) as trickle:
            with httpx.Client(base_url=server.url, timeout=5) as client:
                assert client.get("/api/health").status_code == 200
                r = client.post("/api/score/identity", json={"input": {"n": 1}})
                assert r.status_code == 202, r.text
            assert trickle.open_count() > 0, "the slow clients were dropped before others were served"
            wait_until(lambda: trickle.open_count() == 0, 20, lambda: f"{trickle.open_count()} slow clients")
        assert all(c.answer == b"" for c in heads), "a client whose head never came got an answer"
        for c in bodies:
            assert c.answer.startswith(b"HTTP/1.1 408 "), c.answer[:200]
            assert b'"RequestTimeout"' in c.answer and b"connection: close" in c.answer.lower()
        assert httpx.get(f"{server.url}/api/health", timeout=5).status_code == 200


def test_requests_beyond_the_connection_limit_get_503_with_retry_after(tmp_path: Path) -> None:
    env = {"NEARLINE_MAX_CONNECTIONS": "20", "NEARLINE_HEADER_TIMEOUT_S": "3"}
    with running_server(tmp_path, "--no-workers", env=env) as server:
        idle = [connect(server, b"", b"") for _ in range(30)]
        with trickling(idle) as trickle:
            r = httpx.get(f"{server.url}/api/health", timeout=5)
            assert r.status_code == 503, r.text
            assert r.headers["retry-after"] == "1" and r.headers["connection"] == "close"
            assert r.json()["error"]["code"] == "Overloaded"
            wait_until(lambda: trickle.open_count() == 0, 15, "the idle connections to be dropped")
        assert httpx.get(f"{server.url}/api/health", timeout=5).status_code == 200


def test_a_keep_alive_client_is_served_request_after_request(tmp_path: Path) -> None:
    env = {"NEARLINE_HEADER_TIMEOUT_S": "2"}
    with running_server(tmp_path, "--no-workers", env=env) as server:
        port = int(server.url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            for _ in range(3):  # one connection, three requests, a second apart: under the limit each
                sock.sendall(b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                answer = read_response(sock)
                assert answer.startswith(b"HTTP/1.1 200 "), answer
                time.sleep(1.0)  # the client's think time, under the head timeout


def read_response(sock: socket.socket) -> bytes:
    """One HTTP/1.1 response with a Content-Length body, read whole."""
    return read_one_response(sock, b"")[0]


def test_pipelined_requests_are_answered_in_order_then_an_idle_connection_is_closed(tmp_path: Path) -> None:
    env = {"NEARLINE_HEADER_TIMEOUT_S": "2"}
    with running_server(tmp_path, "--no-workers", env=env) as server:
        port = int(server.url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            score = f"Content-Length: {len(BODY)}\r\n\r\n".encode()
            health = b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
            sock.sendall(health + HEAD + score + BODY + health)  # three requests in one write
            buffered = b""
            answers = []
            for _ in range(3):
                answer, buffered = read_one_response(sock, buffered)
                answers.append(answer)
            assert [a.split(b" ", 2)[1] for a in answers] == [b"200", b"202", b"200"], answers
            assert b'"status":"ok"' in answers[2].replace(b" ", b"")
            # then nothing: the head timer runs again, and the idle connection is closed
            started = time.monotonic()
            assert sock.recv(65536) == b""
            assert time.monotonic() - started < 8


def read_one_response(sock: socket.socket, buffered: bytes) -> tuple[bytes, bytes]:
    """The first HTTP/1.1 response (Content-Length body) from ``buffered`` and the socket, and
    what came after it."""
    data = buffered
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536) or pytest.fail(f"closed after {data!r}")
    head, _, rest = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1])
        for line in head.lower().split(b"\r\n")
        if line.startswith(b"content-length:")
    )
    while len(rest) < length:
        rest += sock.recv(65536) or pytest.fail(f"closed after {data!r}")
    return head + b"\r\n\r\n" + rest[:length], rest[length:]
