"""A real Azurite (the Azure Storage emulator, from npm) for the Blob Storage tests.

``make test`` installs it under ``.tools/`` (a Makefile step); the fixture starts its own blob
service on a free loopback port with a temporary folder, telemetry off, and stops it after the
session. Without Azurite the tests skip here and fail under ``CI=true`` (``conftest.unavailable``).

Import the fixture into a test module (``from azurite import azurite_fixture``): it registers
under its name, ``azurite``.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ROOT, unavailable
from waiting import wait_until

from nearline.azure_blobs import AzureBlobs, account_client

#: What CI must provide (named when a test fails under CI=true without it).
AZURITE = "Azurite (make test installs it: npm install --prefix .tools azurite)"
#: Azurite's well-known development account and key (public; Azurite accepts nothing else).
ACCOUNT = "devstoreaccount1"
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def azurite_blob_command() -> str | None:
    """The ``azurite-blob`` the Makefile installed, else one on PATH."""
    local = ROOT / ".tools" / "node_modules" / ".bin" / "azurite-blob"
    return str(local) if local.exists() else shutil.which("azurite-blob")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Azurite:
    """A running Azurite blob service on loopback."""

    def __init__(self, command: str, folder: Path) -> None:
        self.port = free_port()
        self.folder = folder
        self.log = (folder / "azurite.log").open("w")
        self.process = subprocess.Popen(
            [
                *(command, "--blobHost", "127.0.0.1", "--blobPort", str(self.port)),
                *("--location", str(folder), "--silent", "--disableTelemetry", "--skipApiVersionCheck"),
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    @property
    def connection_string(self) -> str:
        """What ``NEARLINE_BLOB_STORE`` is set to for this Azurite."""
        return (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};"
            f"BlobEndpoint=http://127.0.0.1:{self.port}/{ACCOUNT};"
        )

    def answers(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"Azurite exited with {self.process.returncode}: {self.output()}")
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
        except OSError:
            return False
        return True

    def output(self) -> str:
        self.log.flush()
        return (self.folder / "azurite.log").read_text()[-2000:]

    def container(self, name: str) -> AzureBlobs:
        """The container ``name`` as a blob store, emptied (created when missing)."""
        store = AzureBlobs(account_client(self.connection_string).get_container_client(name))
        if not store.container.exists():
            store.container.create_container()
        store.delete_many([b.name for b in store.container.list_blobs()])
        return store

    def names(self, container: str) -> list[str]:
        """The blobs in ``container`` now."""
        client = account_client(self.connection_string).get_container_client(container)
        return sorted(b.name for b in client.list_blobs()) if client.exists() else []

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


@pytest.fixture(scope="session", name="azurite")
def azurite_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    """Azurite's blob service for the session; stopped for sure."""
    command = azurite_blob_command()
    if command is None:
        unavailable(
            AZURITE, "Azurite is not installed (run `make test`, or npm install --prefix .tools azurite)"
        )
    server = Azurite(command, tmp_path_factory.mktemp("azurite"))
    try:
        wait_until(server.answers, 30, lambda: f"Azurite on port {server.port}: {server.output()}")
        yield server
    finally:
        server.stop()
