"""Fixtures for the tests that attack the service: an in-process app with small limits, and a real server process.

The limits are set low (1 MiB uploads, 4 files a batch) so that oversized requests stay cheap to build; the
behaviour under test is the same at the default limits.
"""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.api.openapi_docs import ERROR_CATALOGUE
from app.main import create_app
from app.settings import Settings
from tests.conftest import REPO_ROOT, TUMOR_SLICE
from tests.service_processes import answers_ready, as_runtime_install

MIB = 1 << 20
MAX_UPLOAD_BYTES = 1 * MIB
MAX_BATCH_FILES = 4
MAX_IMAGE_PIXELS = 4096 * 4096
READY_TIMEOUT_SECONDS = 120.0
ERROR_CODES_BY_STATUS: dict[int, set[str]] = {}
for _entry in ERROR_CATALOGUE:  # what /docs and the README document, status by status
    ERROR_CODES_BY_STATUS.setdefault(_entry.status, set()).add(_entry.code)
"""Every documented (status, error code) pair: the table in `app.api.handlers`."""


def security_settings(model_dir: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "model_dir": model_dir,
        "max_upload_bytes": MAX_UPLOAD_BYTES,
        "max_batch_files": MAX_BATCH_FILES,
        "max_batch_upload_bytes": MAX_BATCH_FILES * MAX_UPLOAD_BYTES + 64 * 1024,
        "max_image_pixels": MAX_IMAGE_PIXELS,
    }
    values.update(overrides)
    return Settings(**values)


def wait_until_ready(client: TestClient | httpx.Client, timeout_seconds: float = READY_TIMEOUT_SECONDS) -> None:
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        if client.get("/health/ready").status_code == 200:
            return
        time.sleep(0.05)
    pytest.fail(f"the service was not ready within {timeout_seconds:g} s")


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    """The documented status, the documented code for it, and exactly the body `{"error": {"code", "message"}}`."""
    assert response.status_code == status, response.text
    assert code in ERROR_CODES_BY_STATUS[status], f"{code} is not documented for {status}"
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message"}, body
    assert body["error"]["code"] == code, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"], body


def png_bytes(array: np.ndarray, **save_options: object) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", **save_options)
    return buffer.getvalue()


@pytest.fixture(scope="session")
def good_jpeg() -> bytes:
    """A real LGG slice (256x256 RGB JPEG): the request that must still work after each attack."""
    return TUMOR_SLICE.read_bytes()


@pytest.fixture
def audit_path(tmp_path: Path) -> Path:
    """Where an app's audit log is written (`audit_log_file`), fresh for each test."""
    return tmp_path / "audit.jsonl"


@pytest.fixture(scope="module")
def client(tiny_model_dir: Path) -> Iterator[TestClient]:
    """The app on the tiny models, lifespan running, ready to predict."""
    with TestClient(create_app(security_settings(tiny_model_dir))) as test_client:
        wait_until_ready(test_client)
        yield test_client


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class ServerProcess:
    """`brain-tumor serve` in a child process on a loopback port."""

    process: subprocess.Popen
    base_url: str
    stderr_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def rss_kib(self) -> int:
        """Resident memory of the server now (VmRSS from /proc), in KiB."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError(f"no VmRSS in /proc/{self.pid}/status")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def ready(self) -> bool:
        """Whether `/health/ready` answers 200 now."""
        return answers_ready(self.base_url)

    def wait_until_ready(self) -> bool:
        """Whether the server is ready within `READY_TIMEOUT_SECONDS`; False at once if it exits first."""
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while time.monotonic() < deadline and self.process.poll() is None:
            if self.ready():
                return True
            time.sleep(0.05)
        return False

    def stop(self, timeout_seconds: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_seconds)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        return self.process.returncode


def server_environment(model_dir: Path, port: int, **extra: str) -> dict[str, str]:
    environment = {
        key: value
        for key, value in os.environ.items()
        if key in {"PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "PYTHONHASHSEED"}
    }
    environment.update(
        {
            "MODEL_DIR": str(model_dir),
            "HOST": "127.0.0.1",
            "PORT": str(port),
            "LOG_LEVEL": "INFO",
            "TF_CPP_MIN_LOG_LEVEL": "3",
            "CUDA_VISIBLE_DEVICES": "",
            "PYTHONPATH": str(REPO_ROOT),
        }
    )
    environment.update(extra)
    return as_runtime_install(environment)


def start_server(model_dir: Path, log_dir: Path, **extra_env: str) -> ServerProcess:
    """Start `python -m app.cli serve` and wait for readiness; the caller stops it. Started again on another port
    if the free one was taken before the server bound it (the other test worker's connections take ports too)."""
    for attempt in range(3):
        server = launch_server(model_dir, log_dir, **extra_env)
        if server.wait_until_ready() or attempt == 2 or "Address already in use" not in server.stderr():
            break
    if server.process.poll() is not None:
        pytest.fail(f"server exited with {server.process.returncode} before it was ready:\n{server.stderr()[-4000:]}")
    if not server.ready():
        server.stop()
        pytest.fail(f"server not ready within {READY_TIMEOUT_SECONDS:g} s:\n{server.stderr()[-4000:]}")
    return server


def launch_server(model_dir: Path, log_dir: Path, **extra_env: str) -> ServerProcess:
    """`python -m app.cli serve` on a free port, just started."""
    port = free_port()
    stderr_path = log_dir / f"server-{port}.stderr"
    with stderr_path.open("wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve"],
            cwd=REPO_ROOT,
            env=server_environment(model_dir, port, **extra_env),
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    return ServerProcess(process, f"http://127.0.0.1:{port}", stderr_path)


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator:
    """Start servers with `server_factory(model_dir, **env)`; each is stopped (SIGTERM) at teardown."""
    started: list[ServerProcess] = []

    def factory(model_dir: Path, **extra_env: str) -> ServerProcess:
        server = start_server(model_dir, tmp_path, **extra_env)
        started.append(server)
        return server

    yield factory
    for server in started:
        server.stop()
