"""Operations review 28: the daemons (serve, dicom-node, pacs-sync) started wrong say so in one line with the
documented exit code, before or instead of running in a state that cannot work."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from types import SimpleNamespace

import pytest
import uvicorn

from app import cli
from app.node.dicom_spool import hold_spool
from app.pacs.pacs_sync_config import PacsSyncConfig
from tests.cli.command_support import fresh_settings, run, serving  # noqa: F401 - fresh_settings is a fixture
from tests.conftest import replace_model_file

pytestmark = pytest.mark.usefixtures("fresh_settings")


@pytest.mark.parametrize(
    ("option", "why"),
    [("--host", "it would listen on every interface"), ("--spool-dir", "the spool would be the working directory")],
)
@pytest.mark.parametrize("value", ["", "  "])
def test_dicom_node_refuses_an_empty_host_or_spool_option(
    option: str,
    why: str,
    value: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`--host ""` listened on 0.0.0.0 and `--spool-dir ""` spooled into the working directory (finding 3), while
    the same values of DICOM_NODE_HOST and DICOM_NODE_SPOOL_DIR are refused."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("app.inference.Predictor.from_model_dir", lambda *args, **kwargs: pytest.fail("no models"))

    code, out, err = run(capsys, "dicom-node", "--port", "11112", option, value)

    assert code == cli.EXIT_USAGE
    assert out == ""
    assert err == f"brain-tumor dicom-node: error: {option} must not be empty ({why}); leave it out for the default\n"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", [["pacs-sync", "--once"], ["dicom-node"]])
def test_daemons_with_an_architecture_that_is_no_model_exit_3_in_one_line(
    command: list[str],
    tiny_model_dir: Path,
    tmp_path: Path,
    empty_orthanc: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`tumor_classifier.json` of `{}` (manifest re-hashed) gave a 25-line AttributeError traceback and exit 1
    (finding 6)."""
    model_dir = replace_model_file(tiny_model_dir, tmp_path / "models", "tumor_classifier.json", b"{}")
    monkeypatch.setenv("ORTHANC_URL", empty_orthanc)  # both check what they can before the models
    monkeypatch.setenv("DICOM_NODE_PORT", str(free_port()))
    monkeypatch.setenv("DICOM_NODE_SPOOL_DIR", str(tmp_path / "spool"))

    code, out, err = run(capsys, *command, "--model-dir", str(model_dir))

    assert code == cli.EXIT_MODELS
    assert out == ""
    assert err == (
        f"brain-tumor {command[0]}: cannot load the models: cannot load tumor_classifier@0.0.0-test from {model_dir}: "
        "tumor_classifier.json does not describe a Keras model (it gives a dict)\n"
    )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_serve_whose_models_fail_to_load_exits_3_in_one_line(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Models that passed their sha256 but could not load left serve up for ever, live 200 and ready 503, where
    dicom-node and pacs-sync exit 3 (finding 5): nothing restarts a process that does not exit."""
    model_dir = replace_model_file(tiny_model_dir, tmp_path / "models", "tumor_classifier.json", b"{}")
    monkeypatch.setenv("MODEL_DIR", str(model_dir))
    monkeypatch.setattr("signal.signal", lambda number, handler: None)  # keep Ctrl-C working in the test run
    run_server = cli.run_server

    def run_server_for_30_s_at_most(server: uvicorn.Server, listener: socket.socket) -> None:
        watchdog = threading.Timer(30, lambda: setattr(server, "should_exit", True))  # a server that would not stop
        watchdog.start()
        try:
            run_server(server, listener)
        finally:
            watchdog.cancel()

    monkeypatch.setattr("app.cli.run_server", run_server_for_30_s_at_most)

    code, out, err = run(capsys, "serve", "--port", str(free_port()))

    assert code == cli.EXIT_MODELS
    assert out == ""
    assert err == (
        f"brain-tumor serve: cannot load the models: cannot load tumor_classifier@0.0.0-test from {model_dir}: "
        "tumor_classifier.json does not describe a Keras model (it gives a dict)\n"
    )


def test_serve_on_a_busy_port_exits_2_naming_the_address_before_loading_anything(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A second serve on a port in use exited 3, the code of models that cannot load, after loading them (finding
    2)."""
    monkeypatch.setattr("app.cli.hold_back_tensorflow_log", lambda *args: pytest.fail("TensorFlow must not load"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        code, out, err = run(capsys, "serve", "--host", "127.0.0.1", "--port", str(port))

    assert code == cli.EXIT_USAGE
    assert out == ""
    assert err == f"brain-tumor serve: cannot listen on 127.0.0.1:{port}: Address already in use\n"


def test_serve_on_a_host_that_does_not_resolve_exits_2_naming_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """HOST=no-such-host.invalid exited 3 with uvicorn's "[Errno -2] Name or service not known" (finding 2)."""
    monkeypatch.setenv("HOST", "no-such-host.invalid")
    monkeypatch.setattr("app.cli.hold_back_tensorflow_log", lambda *args: pytest.fail("TensorFlow must not load"))
    port = free_port()

    code, out, err = run(capsys, "serve", "--port", str(port))

    assert code == cli.EXIT_USAGE
    assert out == ""
    assert err.startswith(f"brain-tumor serve: cannot listen on no-such-host.invalid:{port}: ")
    assert err.count("\n") == 1


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("PACS_POLL_SECONDS", "1e300"),
        ("PACS_RETRY_SECONDS", "86401"),
        ("DICOM_NODE_ASSOCIATION_TIMEOUT_SECONDS", "1e300"),
        ("DICOM_NODE_SEND_TIMEOUT_SECONDS", "1e300"),
        ("DICOM_NODE_SEND_BACKOFF_SECONDS", "1e300"),
        ("DICOM_NODE_QUIET_SECONDS", "1e300"),
        ("REQUEST_TIMEOUT_SECONDS", "1e300"),
        ("KEEP_ALIVE_TIMEOUT_SECONDS", "1e300"),
        ("INFERENCE_BATCH_WAIT_MS", "1e300"),
    ],
)
@pytest.mark.parametrize("command", [["serve"], ["pacs-sync", "--once"], ["dicom-node"]])
def test_a_wait_longer_than_a_day_is_refused_in_one_line_naming_the_variable(
    variable: str, value: str, command: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """PACS_POLL_SECONDS=1e300 crashed pacs-sync with a traceback after its first pass, and
    DICOM_NODE_ASSOCIATION_TIMEOUT_SECONDS=1e300 stopped the node, models loaded, with "timestamp out of range for
    platform time_t" (finding 7)."""
    monkeypatch.setenv(variable, value)
    monkeypatch.setattr("app.inference.Predictor.from_model_dir", lambda *args, **kwargs: pytest.fail("no models"))
    monkeypatch.setattr("app.cli.run_server", lambda *args: pytest.fail("the server must not start"))

    code, out, err = run(capsys, *command)

    assert code == cli.EXIT_USAGE
    assert out == ""
    limit = "86400000" if variable == "INFERENCE_BATCH_WAIT_MS" else "86400"
    assert err == (
        f"brain-tumor {command[0]}: invalid environment variable: {variable}: Input should be less than or equal to "
        f"{limit} (got '{value}')\n"
    )


def test_pacs_sync_refuses_a_poll_option_longer_than_a_day(capsys: pytest.CaptureFixture[str]) -> None:
    """--poll-seconds 1e300 would crash the loop as PACS_POLL_SECONDS did (finding 7)."""
    with pytest.raises(ValueError, match=r"poll_seconds must be a positive number of seconds, at most a day \(86400\)"):
        PacsSyncConfig("http://orthanc.invalid", poll_seconds=1e300)


@pytest.mark.parametrize("value", ["0", "-1", "1e300", "nan"])
def test_pacs_sync_says_a_bad_poll_option_in_one_line_on_stderr(
    value: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Style review 51 F1: `--poll-seconds 0` was JSON on standard output naming the field `poll_seconds`, where the
    README promises an invalid option one line on standard error."""
    monkeypatch.setattr("app.inference.Predictor.from_model_dir", lambda *args, **kwargs: pytest.fail("no models"))

    code, out, err = run(capsys, "pacs-sync", "--orthanc", "http://127.0.0.1:9", "--poll-seconds", value, "--once")

    assert (code, out) == (cli.EXIT_USAGE, "")
    assert err == (
        "brain-tumor pacs-sync: error: --poll-seconds must be a positive number of seconds, at most a day (86400); "
        f"got {float(value)}\n"
    )


def test_dicom_node_says_settings_that_cannot_go_together_in_one_line_on_stderr(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Style review 51 F1: a receive memory below the largest instance was JSON on standard output."""
    monkeypatch.setattr("app.inference.Predictor.from_model_dir", lambda *args, **kwargs: pytest.fail("no models"))
    monkeypatch.setenv("DICOM_NODE_SPOOL_DIR", str(tmp_path / "spool"))
    monkeypatch.setenv("DICOM_NODE_MAX_INSTANCE_BYTES", str(2 * 1024 * 1024))
    monkeypatch.setenv("DICOM_NODE_RECEIVE_MEMORY_BYTES", str(1024 * 1024))

    code, out, err = run(capsys, "dicom-node", "--port", str(free_port()))

    assert (code, out) == (cli.EXIT_USAGE, "")
    assert err.startswith("brain-tumor dicom-node: error: receive_memory_bytes (DICOM_NODE_RECEIVE_MEMORY_BYTES) must")
    assert err.count("\n") == 1


def test_a_second_dicom_node_on_a_spool_in_use_refuses_to_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two nodes on one spool both started, analysed each study twice and sent its results three times (finding
    4); the lock goes with the process holding it (closed here as a SIGKILL closes it), so a restart is not kept
    out."""
    spool = tmp_path / "spool"
    monkeypatch.setattr("app.inference.Predictor.from_model_dir", lambda *args, **kwargs: pytest.fail("no models"))
    first_node = hold_spool(spool)

    code, out, err = run(capsys, "dicom-node", "--port", "11112", "--spool-dir", str(spool))

    assert code == cli.EXIT_USAGE
    assert out == ""
    assert err == (
        f"brain-tumor dicom-node: cannot start: the spool {spool} (DICOM_NODE_SPOOL_DIR or --spool-dir) is in use by "
        "another dicom-node; give each node its own spool\n"
    )
    first_node.close()
    hold_spool(spool).close()


@pytest.fixture
def signals_left_to_the_default() -> Iterator[None]:
    """SIGTERM and SIGINT raise AssertionError where a command leaves them to their default action (death by the
    signal, which would end pytest too); the test's handlers come back afterwards."""

    def left_to_the_default(number: int, frame: object) -> None:
        raise AssertionError(f"the command left {signal.Signals(number).name} to its default action")

    before = {handled: signal.signal(handled, left_to_the_default) for handled in (signal.SIGTERM, signal.SIGINT)}
    yield
    for handled, handler in before.items():
        signal.signal(handled, handler)


def test_pacs_sync_stops_on_sigterm_as_on_ctrl_c(
    empty_orthanc: str,
    signals_left_to_the_default: None,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """SIGTERM (docker compose stop, systemd) killed pacs-sync by the signal: exit -15, no "pacs-sync stopped"
    (finding 8)."""

    stub = SimpleNamespace(warm_up=lambda *args: None)
    monkeypatch.setattr("app.inference.Predictor.from_model_dir", lambda *args, **kwargs: stub)

    def a_pass_that_gets_sigterm(*args: object, **kwargs: object) -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler interrupts it at once
        pytest.fail("SIGTERM did not stop the pass")

    monkeypatch.setattr("app.pacs.pacs_sync.run_pacs_sync", a_pass_that_gets_sigterm)

    with caplog.at_level(logging.INFO, logger="app.pacs.pacs_sync"):
        code, out, err = run(capsys, "pacs-sync", "--orthanc", empty_orthanc)

    assert (code, out, err) == (cli.EXIT_OK, "", "")
    assert "pacs-sync stopped" in [record.getMessage() for record in caplog.records]
    # Stopping: a second signal is ignored for the rest of the exit, not death by the signal (review 49 F6).
    assert signal.getsignal(signal.SIGTERM) == signal.getsignal(signal.SIGINT) == signal.SIG_IGN


@pytest.mark.parametrize(
    ("command", "stopped"), [("pacs-sync", "pacs-sync stopped"), ("dicom-node", "DICOM node stopped")]
)
def test_daemons_stop_on_sigterm_while_their_models_load_with_exit_0(
    command: str,
    stopped: str,
    tmp_path: Path,
    empty_orthanc: str,
    signals_left_to_the_default: None,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Ops review 44 F6: their handlers came after the models (10 s to a minute), so SIGTERM then killed them by the
    signal, exit 143, where the README promises a clean stop."""

    def models_that_get_sigterm(*args: object, **kwargs: object) -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler interrupts it at once
        pytest.fail("SIGTERM did not stop the model loading")

    monkeypatch.setattr("app.inference.Predictor.from_model_dir", models_that_get_sigterm)
    monkeypatch.setenv("ORTHANC_URL", empty_orthanc)
    monkeypatch.setenv("DICOM_NODE_PORT", str(free_port()))
    monkeypatch.setenv("DICOM_NODE_SPOOL_DIR", str(tmp_path / "spool"))

    with caplog.at_level(logging.INFO):
        code, out, err = run(capsys, command)

    assert (code, out, err) == (cli.EXIT_OK, "", "")
    assert stopped in [record.getMessage() for record in caplog.records]
    # Stopping: a second signal is ignored for the rest of the exit, not death by the signal (review 49 F6).
    assert signal.getsignal(signal.SIGTERM) == signal.getsignal(signal.SIGINT) == signal.SIG_IGN


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_serve_stops_with_exit_0_on_a_signal_while_tensorflow_is_imported(
    stop_signal: signal.Signals,
    signals_left_to_the_default: None,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Review 49 F3: before uvicorn took the signals, SIGTERM killed serve by the signal (143) and SIGINT printed
    "interrupted" with exit 130, in the seconds of every start that TensorFlow is imported."""

    def import_that_gets_the_signal(*args: object) -> None:
        os.kill(os.getpid(), stop_signal)
        time.sleep(5)  # the handler interrupts it at once
        pytest.fail("the signal did not stop the import")

    monkeypatch.setattr(cli, "hold_back_tensorflow_log", import_that_gets_the_signal)
    with caplog.at_level(logging.INFO):
        code, out, err = run(capsys, "serve", "--port", str(free_port()))

    assert (code, out, err) == (cli.EXIT_OK, "", "")
    assert "stopped before serving" in [record.getMessage() for record in caplog.records]


@pytest.mark.parametrize(
    ("command", "first_step"),
    [
        ("serve", "app.main.create_app"),
        ("dicom-node", "app.node.dicom_node_command.check_address"),
        ("pacs-sync", "app.pacs.pacs_sync.config_from_args"),
    ],
)
@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_daemons_stopped_in_their_first_step_exit_0(
    command: str,
    first_step: str,
    stop_signal: signal.Signals,
    signals_left_to_the_default: None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Review 49 F4: a signal before a daemon's own handlers (its settings, the web framework's import: the first
    second or two of every start) killed it by the signal (143) or ended it as interrupted (130)."""

    def step_that_gets_the_signal(*args: object, **kwargs: object) -> None:
        os.kill(os.getpid(), stop_signal)
        time.sleep(5)  # the handler interrupts it at once
        pytest.fail("the signal did not stop the first step")

    monkeypatch.setattr(first_step, step_that_gets_the_signal)
    monkeypatch.setenv("ORTHANC_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("DICOM_NODE_SPOOL_DIR", str(tmp_path / "spool"))
    with caplog.at_level(logging.INFO):
        code, out, err = run(capsys, command)

    assert (code, out, err) == (cli.EXIT_OK, "", "")
    assert f"brain-tumor {command} stopped" in [record.getMessage() for record in caplog.records]
    # A second signal is ignored for the rest of the exit (review 49 F6).
    assert signal.getsignal(signal.SIGTERM) == signal.getsignal(signal.SIGINT) == signal.SIG_IGN


def test_serve_stopped_while_its_models_load_exits_0_without_waiting_for_the_load(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    """Review 49 F1: the load ran in asyncio's default executor, which `asyncio.run` joins when the server stops, so
    SIGTERM during a 10-50 s load waited for all of it, past Compose's 10 s before SIGKILL."""
    loading, release = threading.Event(), threading.Event()

    def slow_models(*args: object, **kwargs: object) -> None:
        loading.set()
        release.wait(30)  # a load that goes on for 30 s unless the test ends it
        raise RuntimeError("a load the test ended")

    run_server = cli.run_server

    def stop_once_loading(server: uvicorn.Server, listener: socket.socket) -> None:  # as SIGTERM would
        threading.Thread(target=lambda: loading.wait(30) and setattr(server, "should_exit", True)).start()
        run_server(server, listener)

    exits: list[int] = []
    monkeypatch.setattr("app.main.load_predictor", slow_models)
    monkeypatch.setattr("signal.signal", lambda number, handler: None)  # keep Ctrl-C working in the test run
    monkeypatch.setattr(cli, "run_server", stop_once_loading)
    monkeypatch.setattr(cli, "exit_at_once", exits.append, raising=False)
    started = time.monotonic()
    try:
        with caplog.at_level(logging.INFO):
            run(capsys, "serve", "--port", str(free_port()))
        took = time.monotonic() - started
    finally:
        release.set()

    assert exits == [cli.EXIT_OK]
    assert took < 20, f"serve took {took:.0f} s to stop"
    assert "stopped while the models loaded" in [record.getMessage() for record in caplog.records]


def test_dicom_node_stopped_just_before_its_models_load_does_not_listen_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Review 49 F5: SIGTERM in the moment after the node noted stop signals and before the model load could be
    interrupted was only noted: the node loaded its models (10 s to a minute), listened, then stopped."""
    from contextlib import contextmanager

    from app.node import dicom_node_command
    from app.settings import Settings

    interrupting = dicom_node_command.signals_interrupt

    @contextmanager
    def sigterm_first() -> Iterator[None]:
        os.kill(os.getpid(), signal.SIGTERM)  # noted by the node's handler, which is in place
        with interrupting():
            yield

    def not_to_be_made(*args: object, **kwargs: object) -> None:
        raise AssertionError("the node was made, to listen, after SIGTERM")

    stub = SimpleNamespace(warm_up=lambda size=1: None, model_tags={}, classifier_threshold=0.5)
    monkeypatch.setattr("app.inference.Predictor.from_model_dir", lambda *args, **kwargs: stub)
    monkeypatch.setattr(dicom_node_command, "signals_interrupt", sigterm_first)
    monkeypatch.setattr(dicom_node_command, "DicomNode", not_to_be_made)
    settings = Settings(dicom_node_spool_dir=tmp_path / "spool", dicom_node_port=free_port())
    arguments = SimpleNamespace(ae_title=None, host=None, port=None, spool_dir=None, model_dir=None)
    before = {handled: signal.getsignal(handled) for handled in (signal.SIGTERM, signal.SIGINT)}
    try:
        with caplog.at_level(logging.INFO):
            assert dicom_node_command.main(arguments, settings) == cli.EXIT_OK
    finally:
        for handled, handler in before.items():
            signal.signal(handled, handler)

    assert "DICOM node stopped" in [record.getMessage() for record in caplog.records]


class BatchSizeSeen(Exception):
    """Raised by the stand-in DicomNode, carrying the processor the command built."""


def test_the_dicom_node_and_pacs_sync_run_the_models_in_inference_batch_size_slices(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """INFERENCE_BATCH_SIZE bounded the micro-batcher only: the node ran 16 slices at a time and pacs-sync 32
    whatever it said (newcomer review 28, finding 9)."""
    from app.node import dicom_node_command
    from app.pacs import pacs_sync
    from app.settings import Settings

    settings = Settings(inference_batch_size=3, dicom_node_spool_dir=tmp_path / "spool")
    warmed: list[int] = []
    stub = SimpleNamespace(warm_up=lambda size=1: warmed.append(size), model_tags={}, classifier_threshold=0.5)
    monkeypatch.setattr("app.inference.Predictor.from_model_dir", lambda *args, **kwargs: stub)

    def processor(*args: object, **kwargs: object) -> dict[str, object]:
        return kwargs

    def seen(config: object, processor: dict[str, object], **kwargs: object) -> None:
        raise BatchSizeSeen(processor["batch_size"])

    monkeypatch.setattr("app.study_analysis.ModelStudyProcessor", processor)
    monkeypatch.setattr(dicom_node_command, "DicomNode", seen)
    arguments = SimpleNamespace(ae_title=None, host=None, port=None, spool_dir=None, model_dir=None)
    with pytest.raises(BatchSizeSeen) as raised:
        dicom_node_command.main(arguments, settings)
    assert raised.value.args == (3,)
    assert warmed == [3]  # warmed up at the batch size it runs (JAX compiles one per size; it warmed 1)

    pacs_arguments = SimpleNamespace(orthanc=None, user=None, password=None, state_file=None, poll_seconds=None)
    assert pacs_sync.config_from_args(pacs_arguments, settings).batch_size == 3


# -- finding 10: what can be checked in a moment is checked before TensorFlow and the models (10-50 s) ---------------


def no_models_nor_tensorflow(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if the command imports TensorFlow or loads the models."""
    monkeypatch.setattr("app.cli.hold_back_tensorflow_log", lambda *args: pytest.fail("TensorFlow must not load"))
    monkeypatch.setattr("app.inference.Predictor.from_model_dir", lambda *args, **kwargs: pytest.fail("no models"))


def test_dicom_node_on_a_busy_port_exits_2_before_loading_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The node loaded TensorFlow and the models before it found its port in use (56 s under load)."""
    no_models_nor_tensorflow(monkeypatch)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        code, out, err = run(capsys, "dicom-node", "--port", str(port), "--spool-dir", str(tmp_path / "spool"))

    assert code == cli.EXIT_USAGE
    assert out == ""
    assert err == f"brain-tumor dicom-node: cannot start: cannot listen on 127.0.0.1:{port}: Address already in use\n"
    hold_spool(tmp_path / "spool").close()  # and the spool was let go


class RefusesCredentials(BaseHTTPRequestHandler):
    """An Orthanc that refuses the credentials given, as it answers a wrong password."""

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.send_response(401)
        self.send_header("WWW-Authenticate", 'Basic realm="Orthanc"')
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (http.server's signature)
        pass


@pytest.fixture
def refusing_orthanc() -> Iterator[str]:
    with serving(RefusesCredentials) as url:
        yield url


def test_pacs_sync_once_with_refused_credentials_exits_1_before_loading_anything(
    refusing_orthanc: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A wrong password was reported after the models had loaded (16 s; 59 s for an Orthanc that is down)."""
    no_models_nor_tensorflow(monkeypatch)

    code, out, err = run(capsys, "pacs-sync", "--once", "--orthanc", refusing_orthanc, "--password", "wrong")

    assert (code, err) == (1, "")
    error = json.loads(out)["error"]
    assert error["code"] == "orthanc_credentials_refused"
    assert error["message"] == "GET /system failed with HTTP 401"


def test_pacs_sync_without_once_logs_an_orthanc_that_refuses_it_and_goes_on(
    refusing_orthanc: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Without --once the passes try again, as for an Orthanc that goes away later: said first, not fatal."""

    class ModelsLoaded(Exception):
        """Raised by the stand-in model loader: the command went on to the models."""

    def load(*args: object, **kwargs: object) -> None:
        raise ModelsLoaded

    monkeypatch.setattr("app.cli.hold_back_tensorflow_log", lambda *args: None)
    monkeypatch.setattr("app.inference.Predictor.from_model_dir", load)

    with caplog.at_level(logging.ERROR, logger="app.pacs.pacs_sync"), pytest.raises(ModelsLoaded):
        run(capsys, "pacs-sync", "--orthanc", refusing_orthanc)

    (line,) = [record for record in caplog.records if record.name == "app.pacs.pacs_sync"]
    assert line.getMessage() == "orthanc does not answer as it should; tried again each pass"
    assert line.fields == {"code": "orthanc_credentials_refused", "error": "GET /system failed with HTTP 401"}


def test_serve_with_an_api_keys_file_it_cannot_open_exits_2_before_loading_tensorflow(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`API_KEYS_FILE=/nonexistent/keys` was reported after TensorFlow's import (22.8 s under load)."""
    monkeypatch.setenv("API_KEYS_FILE", "/nonexistent/keys")
    no_models_nor_tensorflow(monkeypatch)
    monkeypatch.setattr("app.cli.run_server", lambda *args: pytest.fail("the server must not start"))

    code, out, err = run(capsys, "serve", "--port", str(free_port()))

    assert code == cli.EXIT_USAGE
    assert out == ""
    assert err == "brain-tumor serve: error: API_KEYS_FILE: cannot open /nonexistent/keys: No such file or directory\n"


@pytest.mark.parametrize(
    ("command", "variable"),
    [
        (["dicom-node", "--port", "{free}", "--spool-dir", "{spool}"], "DICOM_NODE_METRICS_PORT"),
        (["pacs-sync", "--once", "--orthanc", "http://127.0.0.1:9"], "PACS_SYNC_METRICS_PORT"),
    ],
)
def test_daemons_with_their_metrics_port_in_use_exit_2_in_one_line(
    command: list[str],
    variable: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """DICOM_NODE_METRICS_PORT / PACS_SYNC_METRICS_PORT taken by another process: said at once, as the node's port."""
    no_models_nor_tensorflow(monkeypatch)
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        free_port = free.getsockname()[1]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        monkeypatch.setenv(variable, str(port))
        arguments = [part.format(free=free_port, spool=tmp_path / "spool") for part in command]

        code, out, err = run(capsys, *arguments)

    assert code == cli.EXIT_USAGE
    assert out == ""
    name = command[0]
    assert (
        err == f"brain-tumor {name}: cannot start: cannot serve metrics on 127.0.0.1:{port}: Address already in use\n"
    )
