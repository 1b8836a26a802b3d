"""Graceful shutdown and refusing tampered model files, on a real `brain-tumor serve` process."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.security import corpus
from tests.security.conftest import REPO_ROOT, free_port, server_environment

SLICES = 32
EXIT_TIMEOUT_SECONDS = 60.0
BOUNDARY = "shutdown-test-boundary"


def batch_body_in_two_halves(halfway: threading.Event, resume: threading.Event) -> Iterator[bytes]:
    """A multipart batch of 32 real slices, streamed: the first half, then a pause until `resume`, then the rest.

    The pause makes the request certainly in flight (headers read, body arriving) when the server gets SIGTERM.
    """
    jpeg = corpus.jpeg_slice()
    part = (
        (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="files"; filename="s.jpg"\r\n'
            "Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + jpeg
        + b"\r\n"
    )
    for index in range(SLICES):
        if index == SLICES // 2:
            halfway.set()
            if not resume.wait(30):
                raise TimeoutError("SIGTERM was not sent within 30 s")
        yield part
    yield f"--{BOUNDARY}--\r\n".encode()


def test_sigterm_finishes_in_flight_batch_then_exits(server_factory, tiny_model_dir: Path):
    # The upload pauses until a new connection is seen refused, which on a loaded machine took over the 2 s after
    # which SIGTERM drops an idle upload (SHUTDOWN_IDLE_UPLOAD_SECONDS, tested in test_server_limits.py).
    server = server_factory(tiny_model_dir, SHUTDOWN_IDLE_UPLOAD_SECONDS="30")
    halfway, resume = threading.Event(), threading.Event()
    outcome: dict = {}

    def send_batch() -> None:
        try:
            with httpx.Client(base_url=server.base_url, timeout=60.0) as client:
                outcome["response"] = client.post(
                    "/v1/predict/batch",
                    content=batch_body_in_two_halves(halfway, resume),
                    headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"},
                )
        except Exception as error:
            outcome["error"] = error

    sender = threading.Thread(target=send_batch, daemon=True)
    sender.start()
    assert halfway.wait(30), "the batch request did not start"
    server.process.send_signal(signal.SIGTERM)
    signalled = time.monotonic()

    # Stop accepting: a new connection is refused while the batch is still uploading.
    refused = False
    while not refused and time.monotonic() - signalled < 10:
        try:
            httpx.get(f"{server.base_url}/health/live", timeout=1.0)
            time.sleep(0.05)
        except httpx.TransportError:
            refused = True
    resume.set()
    sender.join(EXIT_TIMEOUT_SECONDS)

    assert refused, "the server kept accepting connections after SIGTERM"
    assert "error" not in outcome, f"the in-flight request failed: {outcome.get('error')!r}"
    response = outcome["response"]
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert len(results) == SLICES and all(result["ok"] for result in results)
    try:
        server.process.wait(EXIT_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the server did not exit within {EXIT_TIMEOUT_SECONDS:g} s of SIGTERM")
    assert "Application shutdown complete" in server.stderr()


def test_sigterm_exits_zero(server_factory, tiny_model_dir: Path):
    server = server_factory(tiny_model_dir)
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(EXIT_TIMEOUT_SECONDS) == 0, server.stderr()[-2000:]


def test_serve_refuses_to_start_on_tampered_weights(tiny_model_dir: Path, tmp_path: Path):
    model_dir = tmp_path / "models"
    shutil.copytree(tiny_model_dir, model_dir)
    manifest = json.loads((model_dir / "manifest.json").read_text())
    weights = model_dir / manifest["segmenter"]["weights"]
    with weights.open("ab") as handle:
        handle.write(b"\0")  # one byte appended after export
    completed = subprocess.run(
        [sys.executable, "-m", "app.cli", "serve"],
        cwd=REPO_ROOT,
        env=server_environment(model_dir, free_port()),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 3  # the models could not be loaded
    assert "sha256 mismatch" in completed.stderr
    assert weights.name in completed.stderr
    # One line that says why, not uvicorn's traceback of the refused startup.
    assert "Traceback" not in completed.stderr and "Application startup failed" not in completed.stderr
