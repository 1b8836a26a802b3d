"""`brain-tumor health`, the image's HEALTHCHECK: the API's readiness, or the heartbeat that dicom-node and
pacs-sync write (`app.heartbeat`). Before it, the image's probe asked every container for /health/ready, so a
dicom-node or pacs-sync run from the image was unhealthy for ever (operations review 68 F12)."""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from types import SimpleNamespace

import pytest

from app import cli
from app.heartbeat import HeartbeatFile
from tests.cli.command_support import fresh_settings, run, serving  # noqa: F401 - fresh_settings is a fixture

pytestmark = pytest.mark.usefixtures("fresh_settings")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def readiness(status: int) -> type[BaseHTTPRequestHandler]:
    """An API stand-in whose /health/ready answers `status` (and any other path 404)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            self.send_response(status if self.path == "/health/ready" else 404)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (http.server's signature)
            pass

    return Handler


@pytest.mark.parametrize(("status", "code"), [(200, cli.EXIT_OK), (503, cli.EXIT_FAILED)])
def test_without_a_heartbeat_it_asks_the_api_for_its_readiness(
    status: int, code: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with serving(readiness(status)) as url:
        monkeypatch.setenv("HOST", "0.0.0.0")  # noqa: S104 - asked on 127.0.0.1, as in the container
        monkeypatch.setenv("PORT", url.rsplit(":", 1)[1])
        monkeypatch.setenv("HEARTBEAT_FILE", str(tmp_path / "none-yet.json"))

        found, out, err = run(capsys, "health")

    assert found == code
    if status == 200:
        assert (out, err) == (f"API ready ({url}/health/ready answered 200)\n", "")
    else:
        assert out == ""
        assert err == (
            f"brain-tumor health: unhealthy: API not ready: {url}/health/ready answered 503; and no heartbeat of "
            f"dicom-node or pacs-sync at {tmp_path / 'none-yet.json'}\n"
        )


def test_the_api_is_asked_directly_whatever_proxy_the_environment_names(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Review 70 F7: with http_proxy in the container's environment (Compose's .env reaches every container) and no
    no_proxy, the probe of 127.0.0.1 went to the proxy, and a ready API was called unhealthy."""
    with serving(readiness(200)) as url:
        monkeypatch.setenv("PORT", url.rsplit(":", 1)[1])
        monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{free_port()}")  # nothing listens there
        monkeypatch.delenv("no_proxy", raising=False)
        monkeypatch.delenv("NO_PROXY", raising=False)

        code, out, err = run(capsys, "health")

    assert (code, err) == (cli.EXIT_OK, "")


def test_an_api_that_does_not_answer_is_unhealthy(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    port = free_port()
    monkeypatch.setenv("PORT", str(port))

    code, out, err = run(capsys, "health")

    assert (code, out) == (cli.EXIT_FAILED, "")
    assert err.startswith(f"brain-tumor health: unhealthy: API does not answer at http://127.0.0.1:{port}/health/ready")


@pytest.mark.parametrize(
    ("record", "age", "verdict"),
    [
        ({"command": "dicom-node", "state": "ready"}, 5, "dicom-node ready (heartbeat 5 s ago)"),
        ({"command": "pacs-sync", "state": "ready"}, 59, "pacs-sync ready (heartbeat 59 s ago)"),
        (
            {"command": "pacs-sync", "state": "ready"},
            61,
            "unhealthy: pacs-sync silent: its last heartbeat is 61 s old (one is due every 10 s)",
        ),
        ({"command": "dicom-node", "state": "starting"}, 30, "unhealthy: dicom-node starting: loading its models"),
        (
            {"command": "dicom-node", "state": "failing", "problem": "not listening for associations"},
            1,
            "unhealthy: dicom-node failing: not listening for associations",
        ),
        ({"command": "dicom-node", "state": "stopped"}, 1, "unhealthy: dicom-node stopped"),
        ({"command": "dicom-node"}, 1, "unhealthy: heartbeat file"),
    ],
)
def test_a_heartbeat_is_healthy_only_when_ready_and_recent(
    record: dict[str, str],
    age: float,
    verdict: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    heartbeat = tmp_path / "heartbeat.json"
    heartbeat.write_text(json.dumps({**record, "written_at": time.time() - age, "pid": 1}))
    monkeypatch.setenv("HEARTBEAT_FILE", str(heartbeat))
    monkeypatch.setenv("PORT", str(free_port()))  # no API there: the heartbeat alone decides

    code, out, err = run(capsys, "health")

    if verdict.startswith("unhealthy"):
        assert (code, out) == (cli.EXIT_FAILED, "")
        assert err.startswith(f"brain-tumor health: {verdict}")
    else:
        assert (code, out, err) == (cli.EXIT_OK, verdict + "\n", "")


def test_a_heartbeat_file_that_cannot_be_written_is_logged_once_and_the_daemon_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    heartbeat = HeartbeatFile(tmp_path / "no-such-folder" / "heartbeat.json", "pacs-sync")

    heartbeat.write("starting")
    heartbeat.write("ready")

    messages = [record.getMessage() for record in caplog.records]
    assert messages == ["heartbeat file cannot be written; the health check will call this process unhealthy"]


def heartbeats(path: Path, stop_when: Callable[[dict[str, object]], bool], seen: list[dict[str, object]]) -> None:
    """Read `path` into `seen` (each change once) until `stop_when` holds for what it holds, then send SIGTERM."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            record = None
        if record is not None and (not seen or record != seen[-1]):
            seen.append(record)
            if stop_when(record):
                break
        time.sleep(0.01)
    os.kill(os.getpid(), signal.SIGTERM)


def models_noting_the_heartbeat(monkeypatch: pytest.MonkeyPatch, heartbeat: Path) -> list[str]:
    """Stand-in models whose loading notes the heartbeat's state then (into the list returned)."""
    states_at_load: list[str] = []

    def load_models(*args: object, **kwargs: object) -> SimpleNamespace:
        states_at_load.append(json.loads(heartbeat.read_text())["state"])
        return SimpleNamespace(warm_up=lambda size=1: None, model_tags={}, classifier_threshold=0.5)

    monkeypatch.setattr("app.inference.Predictor.from_model_dir", load_models)
    return states_at_load


@pytest.fixture
def signal_handlers_restored() -> Iterator[None]:
    before = {handled: signal.getsignal(handled) for handled in (signal.SIGTERM, signal.SIGINT)}
    yield
    for handled, handler in before.items():
        signal.signal(handled, handler)


def test_dicom_node_beats_starting_then_ready_then_failing_once_it_stops_listening_then_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, signal_handlers_restored: None
) -> None:
    from app.heartbeat import UnhealthyError, check_heartbeat
    from app.node import dicom_node_command
    from app.settings import Settings

    heartbeat = tmp_path / "heartbeat.json"
    states_at_load = models_noting_the_heartbeat(monkeypatch, heartbeat)
    monkeypatch.setattr("app.heartbeat.BEAT_SECONDS", 0.05)
    nodes: list[object] = []
    real_node = dicom_node_command.DicomNode

    def node_kept(*args: object, **kwargs: object) -> object:
        nodes.append(real_node(*args, **kwargs))
        return nodes[-1]

    monkeypatch.setattr(dicom_node_command, "DicomNode", node_kept)
    verdicts: list[str] = []
    seen: list[dict[str, object]] = []

    def once_ready_stop_listening(record: dict[str, object]) -> bool:
        if record["state"] == "ready" and not verdicts:
            verdicts.append(check_heartbeat(heartbeat, time.time()))
            nodes[0]._server.shutdown()  # the listener's thread ends: the node cannot take associations
        return record["state"] == "failing"

    settings = Settings(dicom_node_spool_dir=tmp_path / "spool", dicom_node_port=free_port(), heartbeat_file=heartbeat)
    arguments = SimpleNamespace(ae_title=None, host=None, port=None, spool_dir=None, model_dir=None)
    watcher = threading.Thread(target=heartbeats, args=(heartbeat, once_ready_stop_listening, seen))
    watcher.start()
    try:
        assert dicom_node_command.main(arguments, settings) == cli.EXIT_OK
    finally:
        watcher.join()

    assert states_at_load == ["starting"]
    assert verdicts == ["dicom-node ready (heartbeat 0 s ago)"]
    assert [record["state"] for record in seen][-2:] == ["ready", "failing"]
    assert seen[-1]["problem"] == "not listening for associations"
    assert json.loads(heartbeat.read_text())["state"] == "stopped"
    with pytest.raises(UnhealthyError, match="dicom-node stopped"):
        check_heartbeat(heartbeat, time.time())


def test_a_beat_under_way_when_the_daemon_stops_does_not_land_after_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A beat slower than the stop's wait for it (a loaded machine) wrote `ready` after `stopped`: the stopped daemon
    then read as healthy until the heartbeat went stale."""
    monkeypatch.setattr("app.heartbeat.BEAT_SECONDS", 0.01)
    in_beat, release = threading.Event(), threading.Event()
    calls: list[int] = []

    def problem() -> str | None:
        calls.append(1)
        if len(calls) > 1:  # the beating thread's beat, held until the block has ended
            in_beat.set()
            release.wait(5)
        return None

    heartbeat = HeartbeatFile(tmp_path / "heartbeat.json", "pacs-sync")
    with heartbeat.beating(problem):
        assert in_beat.wait(5)
    release.set()
    for thread in threading.enumerate():
        if thread.name == "pacs-sync-heartbeat":
            thread.join(5)

    assert json.loads((tmp_path / "heartbeat.json").read_text())["state"] == "stopped"


def test_pacs_sync_beats_ready_while_it_runs_and_stopped_after(
    tmp_path: Path,
    empty_orthanc: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    signal_handlers_restored: None,
) -> None:
    heartbeat = tmp_path / "heartbeat.json"
    states_at_load = models_noting_the_heartbeat(monkeypatch, heartbeat)
    monkeypatch.setenv("HEARTBEAT_FILE", str(heartbeat))
    monkeypatch.setenv("PACS_STATE_FILE", str(tmp_path / "state.json"))
    seen: list[dict[str, object]] = []
    watcher = threading.Thread(target=heartbeats, args=(heartbeat, lambda record: record["state"] == "ready", seen))
    watcher.start()
    try:
        code, out, err = run(capsys, "pacs-sync", "--orthanc", empty_orthanc, "--poll-seconds", "0.1")
    finally:
        watcher.join()

    # stderr may hold the Orthanc stand-in's own BrokenPipe traceback (SIGTERM can cut a pass mid-request): only
    # the command's lines are its to answer for.
    assert code == cli.EXIT_OK and "brain-tumor pacs-sync" not in err
    assert states_at_load == ["starting"]
    assert seen[-1]["command"] == "pacs-sync" and seen[-1]["state"] == "ready"
    assert json.loads(heartbeat.read_text())["state"] == "stopped"


def test_pacs_sync_once_writes_no_heartbeat(
    tmp_path: Path, empty_orthanc: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    stub = SimpleNamespace(warm_up=lambda size=1: None, model_tags={}, classifier_threshold=0.5)
    monkeypatch.setattr("app.inference.Predictor.from_model_dir", lambda *args, **kwargs: stub)
    monkeypatch.setenv("HEARTBEAT_FILE", str(tmp_path / "heartbeat.json"))
    monkeypatch.setenv("PACS_STATE_FILE", str(tmp_path / "state.json"))

    code, out, err = run(capsys, "pacs-sync", "--orthanc", empty_orthanc, "--once")

    assert (code, err) == (cli.EXIT_OK, "")
    assert not (tmp_path / "heartbeat.json").exists()  # a one-shot command is no daemon to watch


def test_reading_the_settings_without_destinations_imports_no_dicom_network_library(tmp_path: Path) -> None:
    """The destinations' check imported pydicom and pynetdicom whatever the settings said: 1.5 s more for every
    command, `brain-tumor health` (a probe with a 5 s timeout) included."""
    import subprocess
    import sys

    environment = {key: value for key, value in os.environ.items() if not key.startswith("DICOM_NODE_")}
    code = "import sys; from app.settings import get_settings; get_settings(); print('pynetdicom' in sys.modules)"

    found = subprocess.run(
        [sys.executable, "-c", code], env=environment, capture_output=True, text=True, timeout=60, check=True
    )

    assert found.stdout == "False\n"
