"""What the command-line tests share: settings read afresh from each test's environment, a command's run, and an
Orthanc stand-in for pacs-sync."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from app import cli
from app.settings import get_settings


@pytest.fixture
def fresh_settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Settings read from this test's environment; the commands' JSON logging left out of the test process."""
    monkeypatch.setattr("app.logging_config.configure_logging", lambda level: None)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def run(capsys: pytest.CaptureFixture[str], *arguments: str) -> tuple[int, str, str]:
    """`brain-tumor <arguments>` in this process: its exit code, standard output and standard error."""
    code = cli.main(list(arguments))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


class EmptyChangeLog(BaseHTTPRequestHandler):
    """An Orthanc with nothing new: every GET (``/system``, ``/changes``) answers the last page of an empty change
    log, which passes for both."""

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        body = json.dumps({"Changes": [], "Done": True, "Last": 0}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (http.server's signature)
        pass


@contextmanager
def serving(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """The URL of a loopback HTTP server answering with `handler`, for as long as the block runs."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def empty_orthanc() -> Iterator[str]:
    """The URL of an `EmptyChangeLog` Orthanc: pacs-sync asks Orthanc before it loads the models."""
    with serving(EmptyChangeLog) as url:
        yield url
