"""The command line and the environment as a user types them wrong: each mistake gets one line naming it and a
documented exit code, never a traceback, and nothing already on disk is replaced."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import logging
import re
import shutil
import socket
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import uvicorn
from fastapi.testclient import TestClient

from app import cli
from app.core.model_store import ModelStoreError
from app.errors import FileUnreadableError, PayloadTooLargeError
from app.pacs.pacs_sync_config import PacsSyncConfig
from app.predict_command import InputError, MaskWriter, holds_dicom, read_file
from app.settings import REPO_ROOT, SettingsError, get_settings, misspelt_variables, setting_variables
from app.uploads import UploadLimits
from tests.cli.command_support import fresh_settings, run  # noqa: F401 - fresh_settings is a fixture
from tests.conftest import COMMITTED_MODEL_DIR, TUMOR_SLICE, mask_path_of
from tests.node.node_support import free_port

NO_MODELS = "/nonexistent/models"  # the commands below stop before the models would load


pytestmark = pytest.mark.usefixtures("fresh_settings")


@pytest.mark.parametrize(
    ("variable", "value", "named"),
    [
        ("PORT", "abc", "PORT: Input should be a valid integer"),
        ("INFERENCE_BATCH_SIZE", "0", "INFERENCE_BATCH_SIZE: Input should be greater than 0"),
        ("INFERENCE_RUNTIME", "torch", "INFERENCE_RUNTIME (or BACKEND): Input should be 'keras' or 'onnxruntime'"),
        ("BACKEND", "torch", "INFERENCE_RUNTIME (or BACKEND): Input should be 'keras' or 'onnxruntime'"),
        ("LOG_LEVEL", "chatty", "LOG_LEVEL: Input should be 'DEBUG', 'INFO', 'WARNING', 'ERROR' or 'CRITICAL'"),
        ("TRUSTED_PROXIES", "proxy.local", "TRUSTED_PROXIES: 'proxy.local' is not an IP address or network"),
        # "*" was taken as a host name: every API call got 403 while health stayed green (operations review)
        ("ALLOWED_HOSTS", "localhost,*", "ALLOWED_HOSTS: '*' is not a host name or IP address (no port, scheme"),
        ("ALLOWED_HOSTS", "api.example.org:8000", "ALLOWED_HOSTS: 'api.example.org:8000' is not a host name"),
    ],
)
def test_predict_with_an_invalid_variable_is_one_line_and_exit_2(
    variable: str, value: str, named: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(variable, value)

    code, out, err = run(capsys, "predict", str(TUMOR_SLICE), "--model-dir", NO_MODELS)

    assert code == cli.EXIT_USAGE
    assert out == ""
    assert err.startswith(f"brain-tumor predict: invalid environment variable: {named}")
    assert err.count("\n") == 1


@pytest.mark.parametrize("command", [["serve"], ["pacs-sync", "--once"], ["dicom-node"]])
def test_every_command_reports_an_invalid_variable_in_one_line(
    command: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PORT", "-1")
    monkeypatch.setenv("DICOM_NODE_PORT", "-1")

    code, _, err = run(capsys, *command)

    assert code == cli.EXIT_USAGE
    assert err.startswith(f"brain-tumor {command[0]}: invalid environment variable: ")
    assert "Input should be greater than or equal to 1 (got '-1')" in err


@pytest.mark.parametrize("command", [["serve"], ["pacs-sync", "--once"], ["dicom-node"]])
def test_a_misspelt_setting_is_refused_at_start_not_left_to_its_default(
    command: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An operations review restarted the DICOM node with DICOM_NODE_DESTINATION (no S): ignored as any unknown
    variable, it left the node without a destination, which dropped the results waiting to be sent."""
    monkeypatch.setenv("DICOM_NODE_DESTINATION", "PACS@127.0.0.1:11112")

    code, out, err = run(capsys, *command)

    assert (code, out) == (cli.EXIT_USAGE, "")
    assert err == (
        f"brain-tumor {command[0]}: invalid environment variable: DICOM_NODE_DESTINATION is not a setting: did you "
        "mean DICOM_NODE_DESTINATIONS? (unset or rename it)\n"
    )


@pytest.mark.parametrize(
    ("command", "variable", "setting"),
    [
        (["dicom-node"], "DICOM_NODE_SPOOL", "DICOM_NODE_SPOOL_DIR"),
        (["pacs-sync", "--once"], "ORTHANC_PASS", "ORTHANC_PASSWORD"),
    ],
)
def test_a_setting_name_cut_short_is_refused_at_start(
    command: list[str], variable: str, setting: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Ops review 44 F4: too far from the name for difflib's cutoff, they were ignored: the node opened a fresh
    spool in the working directory, pacs-sync went on without a password."""
    monkeypatch.setenv(variable, "/srv/spool-or-s3cr3tZZ")
    monkeypatch.setattr("app.inference.Predictor.from_model_dir", lambda *args, **kwargs: pytest.fail("no models"))

    code, out, err = run(capsys, *command)

    assert (code, out) == (cli.EXIT_USAGE, "")
    assert err == (
        f"brain-tumor {command[0]}: invalid environment variable: {variable} is not a setting: did you mean "
        f"{setting}? (unset or rename it)\n"
    )


def test_only_a_name_of_two_words_that_begins_one_setting_is_taken_for_it() -> None:
    """A single word (other programs' MODEL, LOG) and the start of several settings (DICOM_NODE) are left alone, as
    are names no setting begins (Kubernetes' ORTHANC_PORT, DICOM_NODE_SERVICE_HOST for services of those names)."""
    ignored = ["MODEL", "LOG", "DICOM_NODE", "SEQUENCE_FLAIR", "PACS_", "ORTHANC_PORT", "DICOM_NODE_SERVICE_HOST"]

    assert misspelt_variables(dict.fromkeys(ignored, "1")) == []
    assert misspelt_variables({"API_KEYS_F": "1"}) == [
        "API_KEYS_F is not a setting: did you mean API_KEYS_FILE? (unset or rename it)"
    ]


def test_the_variables_docker_compose_reads_are_not_taken_for_misspelt_settings() -> None:
    """Compose's own variables (host ports, build extras) reach the containers through .env: none may be refused."""
    compose = (REPO_ROOT / "docker-compose.yml").read_text()
    variables = set(re.findall(r"\$\{([A-Z0-9_]+)", compose))

    assert {"API_PORT", "ORTHANC_HTTP_PORT"} <= variables - setting_variables()
    assert misspelt_variables(dict.fromkeys(variables, "1")) == []


@pytest.mark.parametrize("variable", ["HOST", "DICOM_NODE_HOST", "MODEL_DIR", "DICOM_NODE_SPOOL_DIR"])
def test_empty_host_or_folder_is_refused_not_taken_as_everywhere_or_here(
    variable: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HOST= used to listen on every interface; MODEL_DIR= and DICOM_NODE_SPOOL_DIR= meant the working directory."""
    monkeypatch.setenv(variable, "")

    with pytest.raises(SettingsError, match=f"{variable}: must not be empty; unset it for the default"):
        get_settings()


@pytest.mark.parametrize(
    ("variable", "value"),
    [("PACS_POLL_SECONDS", "inf"), ("PACS_POLL_SECONDS", "1e400"), ("INFERENCE_BATCH_WAIT_MS", "inf")],
)
def test_infinite_durations_are_refused(variable: str, value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """time.sleep(inf) raises OverflowError: pacs-sync would crash after its first pass."""
    monkeypatch.setenv(variable, value)

    with pytest.raises(SettingsError, match=f"{variable}: Input should be a finite number"):
        get_settings()


def test_model_dir_of_an_unknown_user_is_a_settings_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODEL_DIR", "~no-such-user-here/models")

    with pytest.raises(SettingsError, match="MODEL_DIR: cannot resolve the path"):
        get_settings()


def test_ae_title_of_spaces_is_refused_before_the_models_load(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DICOM_NODE_AE_TITLE", "   ")

    with pytest.raises(SettingsError, match="DICOM_NODE_AE_TITLE: an AE title is 1 to 16 printable ASCII characters"):
        get_settings()


AE_RULE = "an AE title is 1 to 16 printable ASCII characters, not all spaces, without a backslash"


@pytest.mark.parametrize(
    ("command", "variable", "value", "message"),
    [
        (
            ["dicom-node"],
            "DICOM_NODE_DESTINATIONS",
            "garbage",
            "a destination must be AE@host:port (e.g. PACS@10.0.0.5:104); got 'garbage'",
        ),
        (
            ["dicom-node"],
            "DICOM_NODE_DESTINATIONS",
            "PACS@10.0.0.5:104, PACS@10.0.0.6:70000",
            "a destination's port must be 1 to 65535; got 70000",
        ),
        (
            ["dicom-node"],
            "DICOM_NODE_DESTINATIONS",
            "PA\\CS@10.0.0.5:104",
            f"a destination's AE title: {AE_RULE}; got 'PA\\\\CS'",
        ),
        (["pacs-sync", "--once"], "ORTHANC_URL", "notaurl", "must start with http:// or https:// (got 'notaurl')"),
        (["dicom-node"], "DICOM_NODE_ALLOWED_CALLING_AE_TITLES", "MODALITY,A\\B", f"{AE_RULE}; got 'A\\\\B'"),
        (["dicom-node"], "DICOM_NODE_AE_TITLE", "ÉTUDE", f"{AE_RULE} (got 'ÉTUDE')"),
        (["predict", str(TUMOR_SLICE)], "DICOM_NODE_DESTINATIONS", "garbage", "a destination must be AE@host:port"),
        (["serve"], "ORTHANC_URL", "pacs:8042", "must start with http:// or https:// (got 'pacs:8042')"),
        (
            ["predict", str(TUMOR_SLICE)],
            "SEQUENCE_FLAIR_PATTERNS",
            ",",
            "must hold at least one wildcard; unset it for the default (got ',')",
        ),
        (
            ["predict", str(TUMOR_SLICE)],
            "SEQUENCE_FLAIR_MIN_INVERSION_MS",
            "1000",
            "Input should be greater than or equal to 1300 (got '1000')",
        ),
    ],
    ids=[
        "node-destination",
        "node-destination-port",
        "node-destination-ae-title",
        "orthanc-url",
        "calling-ae-titles",
        "non-ascii-ae-title",
        "predict-reads-node-settings",
        "serve-reads-pacs-settings",
        "no-flair-pattern",
        "flair-inversion-in-t1-range",
    ],
)
def test_a_bad_variable_of_any_command_is_one_line_naming_it_before_anything_runs(
    command: list[str],
    variable: str,
    value: str,
    message: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """These were checked only where used: as JSON on stdout naming orthanc_url, as pynetdicom's require_calling_aet
    once the models had loaded, or (predict with no FLAIR pattern) as a traceback; predict ignored a bad node."""
    monkeypatch.setenv(variable, value)
    monkeypatch.setattr("app.cli.run_server", lambda *args: pytest.fail("the server must not start"))
    monkeypatch.setattr("app.inference.Predictor.from_model_dir", lambda *args, **kwargs: pytest.fail("no models"))

    code, out, err = run(capsys, *command)

    assert code == cli.EXIT_USAGE
    assert out == ""
    assert err.startswith(f"brain-tumor {command[0]}: invalid environment variable: {variable}: {message}")
    assert err.count("\n") == 1


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (
            ["pacs-sync", "--once", "--orthanc", "pacs:8042"],
            "--orthanc must start with http:// or https://; got 'pacs:8042'",
        ),
        (["dicom-node", "--ae-title", "A\\B"], f"--ae-title: {AE_RULE}; got 'A\\\\B'"),
        (["dicom-node", "--ae-title", ""], f"--ae-title: {AE_RULE}; got ''"),
    ],
    ids=["orthanc-url", "backslash-ae-title", "empty-ae-title"],
)
def test_daemons_refuse_a_bad_address_or_ae_title_option_in_one_line(
    arguments: list[str], message: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("app.inference.Predictor.from_model_dir", lambda *args, **kwargs: pytest.fail("no models"))

    code, out, err = run(capsys, *arguments)

    assert code == cli.EXIT_USAGE
    assert out == ""
    assert err == f"brain-tumor {arguments[0]}: error: {message}\n"


def test_empty_key_and_audit_files_mean_none(monkeypatch: pytest.MonkeyPatch) -> None:
    """They used to be Path('.'): serve then died on reading a folder as the keys file."""
    monkeypatch.setenv("API_KEYS_FILE", "")
    monkeypatch.setenv("AUDIT_LOG_FILE", " ")

    settings = get_settings()

    assert settings.api_keys_file is None
    assert settings.audit_log_file is None


@pytest.mark.parametrize("held", ["1000", str(100 * 2**20)])
def test_serve_with_less_upload_room_than_one_request_body_is_one_line_and_exit_2(
    held: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Operations review 68 F6: MAX_UPLOADS_HELD_BYTES=1000 started, said ready, and answered every upload 503
    "retry later" for ever (and 100 MiB every batch body between it and MAX_BATCH_UPLOAD_BYTES, 128 MiB)."""
    monkeypatch.setenv("MAX_UPLOADS_HELD_BYTES", held)
    monkeypatch.setattr("app.cli.listening_socket", lambda host, port: pytest.fail("nothing must be bound"))

    code, _, err = run(capsys, "serve", "--port", "8000")

    assert code == cli.EXIT_USAGE
    assert err == (
        f"brain-tumor serve: error: MAX_UPLOADS_HELD_BYTES ({held}) must be at least the largest request body, "
        f"MAX_BATCH_UPLOAD_BYTES or MAX_UPLOAD_BYTES and 64 KiB of form ({128 * 2**20})\n"
    )


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("API_KEYS", "no-colon-here", "brain-tumor serve: error: API_KEYS item 1: expected id:key\n"),
        # attack23b: HTTP trims a header's outer spaces, so "alice: key" made a key its owner could never send.
        (
            "API_KEYS",
            "bob:bob-key-0123456789abcdef,alice: key",
            "brain-tumor serve: error: API_KEYS item 2: the key must be printable ASCII",
        ),
        ("API_KEYS", "alice:k\x07ey", "brain-tumor serve: error: API_KEYS item 1: the key must be printable ASCII"),
        # attack review 44 F7: the per-address count of wrong keys does not stop a client with many addresses.
        (
            "API_KEYS",
            "bob:bob-key-0123456789abcdef,alice:fifteen-chars-k",
            "brain-tumor serve: error: API_KEYS item 2: the key must have at least 16 characters",
        ),
        (
            "API_KEYS",
            "bob:bob-key-0123456789abcdef,alice:passwordpassword",
            "brain-tumor serve: error: API_KEYS item 2: the key must have at least 16 characters, 8 of them different",
        ),
        (
            "API_KEYS_FILE",
            "{missing}/keys.txt",
            "brain-tumor serve: error: API_KEYS_FILE: cannot open {missing}/keys.txt: No such",
        ),
        (
            "AUDIT_LOG_FILE",
            "{missing}/audit.log",
            "brain-tumor serve: error: AUDIT_LOG_FILE: cannot open {missing}/audit.log: No such",
        ),
        # review 69 F4: a keys file whose read fails (EIO) was blamed on AUDIT_LOG_FILE, "cannot open None"
        ("API_KEYS_FILE", "/proc/self/mem", "brain-tumor serve: error: API_KEYS_FILE: cannot open /proc/self/mem: "),
        # operations review 68 F10: "cannot open None: Invalid argument", no file, no setting
        ("AUDIT_LOG_FILE", "/proc/version", "brain-tumor serve: error: AUDIT_LOG_FILE: cannot open /proc/version: "),
    ],
)
def test_serve_with_unusable_keys_or_audit_file_is_one_line_and_exit_2(
    variable: str,
    value: str,
    message: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    missing = tmp_path / "missing"
    monkeypatch.setenv(variable, value.format(missing=missing))
    monkeypatch.setattr("app.cli.listening_socket", lambda host, port: socket.socket())  # port 8000 may be taken
    monkeypatch.setattr("app.cli.run_server", lambda *args: pytest.fail("the server must not start"))

    code, _, err = run(capsys, "serve", "--port", "8000")

    assert code == cli.EXIT_USAGE
    assert err.startswith(message.format(missing=missing))
    assert err.count("\n") == 1


@pytest.mark.parametrize("content", ["alice:" + "ab" * 32 + "\n", "\xff\xfe"], ids=["saved-as-utf-16", "two-bytes"])
def test_serve_with_a_keys_file_that_is_not_utf8_is_one_line_naming_it_and_exit_2(
    content: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Ops review 44 F3: a UnicodeDecodeError traceback and exit 1."""
    keys_file = tmp_path / "keys.txt"
    keys_file.write_bytes(content.encode("utf-16") if content.isascii() else content.encode("latin-1"))
    monkeypatch.setenv("API_KEYS_FILE", str(keys_file))
    monkeypatch.setattr("app.cli.listening_socket", lambda host, port: socket.socket())  # port 8000 may be taken
    monkeypatch.setattr("app.cli.run_server", lambda *args: pytest.fail("the server must not start"))

    code, out, err = run(capsys, "serve", "--port", "8000")

    assert (code, out) == (cli.EXIT_USAGE, "")
    assert err == (
        f"brain-tumor serve: error: API_KEYS_FILE {keys_file}: not UTF-8 text (byte 0 cannot be read); save it as "
        "UTF-8\n"
    )


PUBLIC_ADDRESS_WARNING = (
    "no API keys configured while bound to a non-loopback address: anyone who reaches it can use it"
)


@pytest.mark.parametrize(
    ("environment", "arguments", "bound", "warned"),
    [
        ({}, ["--host", "0.0.0.0", "--port", "8123"], ("0.0.0.0", 8123), True),
        ({"HOST": "0.0.0.0", "PORT": "9000"}, ["--host", "127.0.0.1"], ("127.0.0.1", 9000), False),
        ({"HOST": "0.0.0.0"}, [], ("0.0.0.0", 8000), True),
    ],
    ids=["public-option", "loopback-option-over-public-variable", "public-variable"],
)
def test_serve_warns_about_the_address_it_binds_not_the_host_variable(
    environment: dict[str, str],
    arguments: list[str],
    bound: tuple[str, int],
    warned: bool,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """`HOST=0.0.0.0 serve --host 127.0.0.1` warned while listening on loopback only; `serve --host 0.0.0.0` never."""
    for variable, value in {"INFERENCE_RUNTIME": "onnxruntime", **environment}.items():
        monkeypatch.setenv(variable, value)
    monkeypatch.delenv("API_KEYS", raising=False)
    monkeypatch.delenv("API_KEYS_FILE", raising=False)
    monkeypatch.setattr(
        "app.main.load_models_in_background", lambda app: asyncio.sleep(0)
    )  # the address is all this is about
    served: list[tuple[str, int]] = []

    def run_lifespan(server: uvicorn.Server, listener: socket.socket) -> None:
        served.append((server.config.host, server.config.port))
        with TestClient(server.config.app):
            pass

    monkeypatch.setattr("app.cli.listening_socket", lambda host, port: socket.socket())  # the ports may be taken
    monkeypatch.setattr("app.cli.run_server", run_lifespan)
    monkeypatch.setattr("signal.signal", lambda number, handler: None)  # keep Ctrl-C working in the test run

    with caplog.at_level(logging.WARNING, logger="app.main"):
        assert cli.main(["serve", *arguments]) == cli.EXIT_OK

    assert served == [bound]
    warnings = [record for record in caplog.records if record.getMessage() == PUBLIC_ADDRESS_WARNING]
    assert [record.fields["host"] for record in warnings] == (["0.0.0.0"] if warned else [])


@pytest.mark.parametrize("port", ["0", "70000", "-1", "http"])
def test_serve_refuses_a_port_out_of_range(port: str, capsys: pytest.CaptureFixture[str]) -> None:
    """--port 70000 used to listen on 4464 (70000 mod 65536) while logging 70000; 0 falls back to PORT."""
    with pytest.raises(SystemExit) as stopped:
        cli.build_parser().parse_args(["serve", "--port", port])

    assert stopped.value.code == cli.EXIT_USAGE
    assert "brain-tumor serve: error: argument --port: must be" in capsys.readouterr().err


@pytest.mark.parametrize("port", ["0", "70000"])
def test_dicom_node_refuses_a_port_out_of_range(port: str, capsys: pytest.CaptureFixture[str]) -> None:
    """0 listened on a port chosen at random; 70000 ended in an OverflowError traceback."""
    code, _, err = run(capsys, "dicom-node", "--port", port, "--model-dir", NO_MODELS)

    assert code == cli.EXIT_USAGE
    assert err == f"brain-tumor dicom-node: error: --port must be 1 to 65535; got {port}\n"


def daemons_may_start(monkeypatch: pytest.MonkeyPatch, orthanc_url: str, tmp_path: Path) -> None:
    """Settings with which pacs-sync and the DICOM node get as far as loading their models."""
    monkeypatch.setenv("ORTHANC_URL", orthanc_url)
    monkeypatch.setenv("DICOM_NODE_PORT", str(free_port()))
    monkeypatch.setenv("DICOM_NODE_SPOOL_DIR", str(tmp_path / "spool"))


@pytest.mark.parametrize("command", [["predict", str(TUMOR_SLICE)], ["pacs-sync", "--once"], ["dicom-node"]])
def test_commands_that_load_the_models_ask_for_gpu_memory_growth_first(
    command: list[str],
    empty_orthanc: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Newcomer review 45 F2: only serve enabled TensorFlow's GPU memory growth; predict, pacs-sync and the node
    loaded the models without it and took the whole card."""
    steps: list[str] = []
    monkeypatch.setattr("app.inference.enable_gpu_memory_growth", lambda: steps.append("memory growth") or 0)

    def no_models(*args: object, **kwargs: object) -> None:
        steps.append("models")
        raise ModelStoreError("no models here")

    monkeypatch.setattr("app.inference.Predictor.from_model_dir", no_models)
    daemons_may_start(monkeypatch, empty_orthanc, tmp_path)

    code, _, err = run(capsys, *command, "--model-dir", NO_MODELS)

    assert code == cli.EXIT_MODELS, err
    assert steps == ["memory growth", "models"]


def pacs_sync_settings_error(
    state_file: str,
    empty_orthanc: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> dict:
    """The JSON error of `pacs-sync --once` with PACS_STATE_FILE=`state_file`, once checked to stop it with exit 2 as
    a settings error before the models load."""
    monkeypatch.setenv("PACS_STATE_FILE", state_file)
    daemons_may_start(monkeypatch, empty_orthanc, tmp_path)
    monkeypatch.setattr("app.inference.Predictor.from_model_dir", lambda *args, **kwargs: pytest.fail("no models"))

    code, out, _ = run(capsys, "pacs-sync", "--once", "--model-dir", NO_MODELS)

    assert code == cli.EXIT_USAGE
    error = json.loads(out)["error"]
    assert error["code"] == "invalid_configuration"
    return error


def test_pacs_sync_with_a_state_file_it_cannot_write_exits_2_before_the_models(
    empty_orthanc: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Operations review 68 F5: an unwritable PACS_STATE_FILE was found after the first pass, logged at every pass
    (exit 0 with --once), and after a restart Orthanc's change log was read from the start again."""
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")

    error = pacs_sync_settings_error(str(not_a_folder / "state.json"), empty_orthanc, tmp_path, monkeypatch, capsys)

    assert error["message"].startswith(f"pacs-sync state file {not_a_folder / 'state.json'} cannot be written (")
    assert "PACS_STATE_FILE must name a file in a writable folder" in error["message"]
    assert list(tmp_path.iterdir()) == [not_a_folder]  # no probe left behind


@pytest.mark.parametrize("state_file", ["/", ".", "{tmp}", "{tmp}/", "{tmp}/missing/.."])
def test_pacs_sync_with_a_folder_for_its_state_file_exits_2_before_the_models(
    state_file: str,
    empty_orthanc: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Attack review 62 F2: "/" and "." stopped it with a traceback and exit 1 (a path with no name); a folder with a
    name passed the start check and was refused only after Orthanc was asked. Attack review 63 F1: "missing/.."
    passed it, and its probe made the folder "missing" the state file then named."""
    monkeypatch.setenv("PACS_STATE_FILE", state_file.format(tmp=tmp_path))
    daemons_may_start(monkeypatch, empty_orthanc, tmp_path)
    monkeypatch.setattr("app.inference.Predictor.from_model_dir", lambda *args, **kwargs: pytest.fail("no models"))
    monkeypatch.chdir(tmp_path)
    before = sorted(tmp_path.iterdir())

    code, out, _ = run(capsys, "pacs-sync", "--once", "--model-dir", NO_MODELS)

    assert code == cli.EXIT_USAGE
    error = json.loads(out)["error"]
    assert error["code"] == "invalid_configuration"
    assert error["message"].endswith("is a folder; PACS_STATE_FILE must name a file in a writable folder")
    assert sorted(tmp_path.iterdir()) == before


@pytest.mark.parametrize("name_bytes", [300, 230])
def test_pacs_sync_with_a_state_file_name_too_long_for_the_file_system_exits_2_before_the_models(
    name_bytes: int,
    empty_orthanc: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Attack review 63 F1: a name over 255 bytes stopped it with a traceback and exit 1 (asking whether it was a
    folder raised before the check that turns an OSError into the settings error). Review 71 F5: one of 230 bytes
    passed, and every save of the state failed (its temporary name is 38 bytes longer)."""
    error = pacs_sync_settings_error(str(tmp_path / ("a" * name_bytes)), empty_orthanc, tmp_path, monkeypatch, capsys)

    assert "cannot be written (OSError: File name too long)" in error["message"]


@pytest.mark.parametrize("command", [["pacs-sync", "--once"], ["dicom-node"]])
def test_daemons_without_models_exit_3_with_one_line(
    command: list[str],
    empty_orthanc: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    daemons_may_start(monkeypatch, empty_orthanc, tmp_path)  # both check what they can before the models

    code, _, err = run(capsys, *command, "--model-dir", NO_MODELS)

    assert code == cli.EXIT_MODELS
    assert err == (
        f"brain-tumor {command[0]}: cannot load the models: model manifest not found: {NO_MODELS}/manifest.json\n"
    )


def test_dicom_node_with_a_spool_under_a_file_is_one_line_and_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    a_file = tmp_path / "not-a-folder"
    a_file.write_text("kept")
    stub = SimpleNamespace(warm_up=lambda *args: None, model_tags={})
    monkeypatch.setattr("app.inference.Predictor.from_model_dir", lambda *args, **kwargs: stub)

    code, _, err = run(capsys, "dicom-node", "--port", "11112", "--spool-dir", str(a_file / "spool"))

    assert code == cli.EXIT_USAGE
    assert err == f"brain-tumor dicom-node: cannot start: {a_file / 'spool'}: Not a directory\n"  # before the models
    assert a_file.read_text() == "kept"


def test_dicom_node_that_cannot_listen_names_the_address(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    stub = SimpleNamespace(warm_up=lambda *args: None, model_tags={})
    monkeypatch.setattr("app.inference.Predictor.from_model_dir", lambda *args, **kwargs: stub)

    code, _, err = run(
        capsys, "dicom-node", "--host", "256.1.1.1", "--port", "11112", "--spool-dir", str(tmp_path / "spool")
    )

    assert code == cli.EXIT_USAGE
    assert err.startswith("brain-tumor dicom-node: cannot start: cannot listen on 256.1.1.1:11112: ")
    assert err.count("\n") == 1


URL_HOST_RULE = "must name a host after the scheme (and after user:password@, if any)"
URL_PORT_RULE = "its port must be a number from 1 to 65535"


@pytest.mark.parametrize(
    ("url", "rule", "shown"),
    [
        ("http://", URL_HOST_RULE, "http://"),
        ("http://127.0.0.1:99999", URL_PORT_RULE, "http://127.0.0.1:99999"),
        ("http://127.0.0.1:0", URL_PORT_RULE, "http://127.0.0.1:0"),
        ("https://[::1", "is not a URL: a bracketed IPv6 address must be closed", "https://[::1"),
        ("http://pacs:8042 /", "must not hold spaces or control characters", "http://pacs:8042 /"),
        ("http://ops:s3cr3tPW@127.0.0.1:99999", URL_PORT_RULE, "http://***@127.0.0.1:99999"),
        ("http://ops:s3cr3tPW@", URL_HOST_RULE, "http://***@"),
        ("https://ops:s3cr3tPW@[::1", "is not a URL: a bracketed IPv6 address must be closed", "https://***@[::1"),
        ("http://ops:s3cr3tPW", URL_PORT_RULE, "http://ops:***"),
        ("http://ops:s3cr3tPW/orthanc", URL_PORT_RULE, "http://ops:***/orthanc"),
        ("http://[::1]:s3cr3tPW", URL_PORT_RULE, "http://[::1]:***"),
    ],
)
@pytest.mark.parametrize("given_as", ["ORTHANC_URL", "--orthanc"])
def test_pacs_sync_refuses_a_malformed_orthanc_url_in_one_line_without_its_password(
    url: str,
    rule: str,
    shown: str,
    given_as: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """They passed the http:// prefix check and pacs-sync crashed with a traceback (exit 1) that printed the URL,
    password included (ops review 44 F2)."""
    monkeypatch.setattr("app.inference.Predictor.from_model_dir", lambda *args, **kwargs: pytest.fail("no models"))
    if given_as == "ORTHANC_URL":
        monkeypatch.setenv("ORTHANC_URL", url)
        expected = f"brain-tumor pacs-sync: invalid environment variable: ORTHANC_URL: {rule} (got {shown!r})\n"
        arguments = ["pacs-sync", "--once"]
    else:
        expected = f"brain-tumor pacs-sync: error: --orthanc {rule}; got {shown!r}\n"
        arguments = ["pacs-sync", "--once", "--orthanc", url]

    code, out, err = run(capsys, *arguments)

    assert (code, out, err) == (cli.EXIT_USAGE, "", expected)
    assert "s3cr3tPW" not in err


def test_pacs_sync_config_refuses_a_url_without_host_and_hides_its_password() -> None:
    with pytest.raises(ValueError, match=r"orthanc_url must name a host .*; got 'http://\*\*\*@'$") as raised:
        PacsSyncConfig("http://ops:s3cr3tPW@")
    assert "s3cr3tPW" not in str(raised.value)


def test_a_url_with_credentials_ipv6_or_a_path_is_a_valid_orthanc_url(monkeypatch: pytest.MonkeyPatch) -> None:
    for url in ("http://ops:ops-pass@127.0.0.1:28440", "https://[::1]:8042", "http://pacs/orthanc/", "http://pacs:1"):
        monkeypatch.setenv("ORTHANC_URL", url)
        get_settings.cache_clear()
        assert get_settings().orthanc_url == url
        assert PacsSyncConfig(url).orthanc_url == url


@pytest.mark.parametrize("seconds", [-1.0, 0.0, float("nan"), float("inf")])
def test_pacs_sync_refuses_a_pause_time_sleep_cannot_take(seconds: float) -> None:
    """--poll-seconds -1 used to crash the loop with a ValueError traceback after its first pass."""
    with pytest.raises(ValueError, match="poll_seconds must be a positive number of seconds"):
        PacsSyncConfig("http://orthanc.invalid", poll_seconds=seconds)


def test_predict_writes_its_masks_beside_the_ground_truth_without_touching_it(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`predict patient/ --masks-dir patient/` wrote `<stem>_mask.png`, the LGG ground truth's name, so it was refused
    there; predicted masks are `<stem>_predicted_mask.png` now, as the upload page names them. A second run finds the
    first run's masks and stops unless --overwrite is given, and never predicts them as slices."""
    patient = tmp_path / "patient"
    patient.mkdir()
    shutil.copy(TUMOR_SLICE, patient)
    truth = Path(shutil.copy(mask_path_of(TUMOR_SLICE), patient))
    before = truth.read_bytes()
    predicted = patient / f"{TUMOR_SLICE.stem}_predicted_mask.png"
    arguments = ("predict", str(patient), "--masks-dir", str(patient), "--model-dir", str(tiny_model_dir))

    code, out, err = run(capsys, *arguments)
    again, again_out, again_err = run(capsys, *arguments)
    replaced, replaced_out, _ = run(capsys, *arguments, "--overwrite")

    assert (code, err) == (cli.EXIT_OK, "")
    (result,) = json.loads(out)["results"]
    assert (result["file"], result["mask_file"]) == (str(patient / TUMOR_SLICE.name), str(predicted))
    assert predicted.read_bytes().startswith(b"\x89PNG")
    assert truth.read_bytes() == before
    assert (again, again_out) == (cli.EXIT_USAGE, "")
    assert again_err == (
        f"brain-tumor predict: error: the mask file {predicted} already exists; choose another --masks-dir, or pass "
        "--overwrite to replace the masks of an earlier run\n"
    )
    assert replaced == cli.EXIT_OK
    assert [item["file"] for item in json.loads(replaced_out)["results"]] == [str(patient / TUMOR_SLICE.name)]
    assert sorted(path.name for path in patient.iterdir()) == sorted([TUMOR_SLICE.name, truth.name, predicted.name])


def test_overwrite_lets_a_run_replace_its_earlier_masks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    masks = tmp_path / "masks"
    masks.mkdir()
    earlier = masks / f"{TUMOR_SLICE.stem}_predicted_mask.png"
    earlier.write_bytes(b"earlier run")

    refused, _, refused_err = run(
        capsys, "predict", str(TUMOR_SLICE), "--masks-dir", str(masks), "--model-dir", NO_MODELS
    )
    code, _, err = run(
        capsys, "predict", str(TUMOR_SLICE), "--masks-dir", str(masks), "--overwrite", "--model-dir", NO_MODELS
    )

    assert refused == cli.EXIT_USAGE and f"the mask file {earlier} already exists" in refused_err
    assert code == cli.EXIT_MODELS  # past the mask checks: only the (missing) models stop it
    assert "cannot load the models" in err


def test_mask_writer_refuses_a_file_already_there(tmp_path: Path) -> None:
    """DICOM masks are only known while the series runs: the writer itself must not replace a file."""
    target = tmp_path / "IM0001_predicted_mask.png"
    target.write_bytes(b"precious")

    with pytest.raises(InputError, match="already exists"):
        MaskWriter().write(target, np.ones((4, 4), dtype=np.uint8))

    assert target.read_bytes() == b"precious"
    assert MaskWriter(overwrite=True).write(target, np.ones((4, 4), dtype=np.uint8)) == str(target)
    assert target.read_bytes().startswith(b"\x89PNG")


@pytest.mark.parametrize(
    ("masks_dir", "reason"), [("a-file", "it is a file, not a folder"), ("a-file/masks", "Not a directory")]
)
def test_predict_with_an_unusable_masks_dir_stops_before_the_models(
    masks_dir: str, reason: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """It used to end in a FileExistsError/NotADirectoryError traceback after every file was predicted."""
    (tmp_path / "a-file").write_text("kept")

    code, _, err = run(
        capsys, "predict", str(TUMOR_SLICE), "--masks-dir", str(tmp_path / masks_dir), "--model-dir", NO_MODELS
    )

    assert code == cli.EXIT_USAGE
    assert err == f"brain-tumor predict: error: cannot use --masks-dir {tmp_path / masks_dir}: {reason}\n"
    assert (tmp_path / "a-file").read_text() == "kept"


def test_mask_writer_reports_an_unwritable_target_as_an_input_error(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("kept")

    with pytest.raises(InputError, match="cannot write the mask file .*: File exists"):
        MaskWriter().write(tmp_path / "a-file" / "IM0001_predicted_mask.png", np.ones((4, 4), dtype=np.uint8))


def test_read_file_stops_reading_past_the_upload_limit(tmp_path: Path) -> None:
    """A 3 GB file was read whole (4 GB resident) before being refused; /dev/zero never ended."""
    limits = UploadLimits(max_upload_bytes=1024)
    sparse = tmp_path / "huge.png"
    with sparse.open("wb") as stream:
        stream.truncate(1 << 40)  # 1 TiB, sparse: takes no disk

    error = read_file(sparse, limits)
    assert isinstance(error, PayloadTooLargeError)
    assert error.message == "file must be at most 1024 bytes; got more than 1024 bytes"
    assert error.__traceback__ is None  # attack review 65 F1: its frames held the bytes read until the run ended
    assert read_file(TUMOR_SLICE, UploadLimits(max_upload_bytes=1 << 20)) == TUMOR_SLICE.read_bytes()


def test_a_device_in_a_folder_is_never_opened(tmp_path: Path) -> None:
    """Attack review 57 F2: a folder's link to /dev/ptmx hung `predict` before any output (its read blocks)."""
    for device in ("/dev/zero", "/dev/ptmx"):
        link = tmp_path / f"{Path(device).name}.jpg"
        link.symlink_to(device)

        error = read_file(link, UploadLimits(max_upload_bytes=1024))

        assert isinstance(error, FileUnreadableError)
        assert error.message == "cannot read the file: it is not a regular file (a device or a socket)"
        assert not holds_dicom([link])


def test_predict_of_a_symlink_loop_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    loop = tmp_path / "loop"
    loop.symlink_to(tmp_path / "back")
    (tmp_path / "back").symlink_to(loop)

    code, _, err = run(capsys, "predict", str(loop), "--model-dir", NO_MODELS)

    assert code == cli.EXIT_USAGE
    assert (
        err
        == f"brain-tumor predict: error: {loop} is a symbolic link that leads nowhere (a missing target or a loop)\n"
    )


@pytest.mark.parametrize("key_id", ["ops:team", "al#ice", "", "two words"])
def test_hash_key_refuses_an_id_the_keys_file_cannot_hold(
    key_id: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`ops:team:<hash>` or `al#ice:<hash>` used to be printed, and then stopped serve as a malformed keys file."""
    monkeypatch.setattr("sys.stdin", io.StringIO("a-new-secret\n"))

    code, out, err = run(capsys, "hash-key", key_id)

    assert code == cli.EXIT_USAGE
    assert out == ""
    assert err == (
        f"brain-tumor hash-key: error: key_id must be letters, digits, '.', '_', '@' or '-'; got {key_id!r}\n"
    )


@pytest.mark.parametrize("key", ["clé-secrète-2026", " padded", "tab\tinside"])
def test_hash_key_refuses_a_key_no_header_carries(
    key: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Attack review 30: its hash was printed, and the key was then refused at every request (401), each try counted
    as a failed key, so its owner locked out their own address."""
    monkeypatch.setattr("sys.stdin", io.StringIO(f"{key}\n"))

    code, out, err = run(capsys, "hash-key", "alice")

    assert (code, out) == (cli.EXIT_USAGE, "")
    assert err == (
        "brain-tumor hash-key: error: the key must be printable ASCII without spaces at its start or end (an HTTP "
        "header cannot carry them)\n"
    )


@pytest.mark.parametrize(
    ("key", "code"),
    [
        ("fifteen-chars-k", cli.EXIT_USAGE),
        ("sixteen-chars-ok", 0),
        # attack review 46 F6: long enough, and guessed first
        ("aaaaaaaaaaaaaaaa", cli.EXIT_USAGE),
        ("passwordpassword", cli.EXIT_USAGE),
        ("0000000011111111", cli.EXIT_USAGE),
    ],
)
def test_hash_key_refuses_a_key_short_enough_to_guess(
    key: str, code: int, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Attack review 44 F7: 200 wrong keys from 200 addresses were all answered 401, none 429, so the length of the
    key is what stops guessing."""
    monkeypatch.setattr("sys.stdin", io.StringIO(f"{key}\n"))

    exit_code, out, err = run(capsys, "hash-key", "alice")

    assert exit_code == code
    if code:
        assert out == ""
        assert err.startswith("brain-tumor hash-key: error: the key must have at least 16 characters, 8 of them")
        assert "secrets.token_urlsafe(32)" in err
    else:
        assert out == f"alice:{hashlib.sha256(key.encode()).hexdigest()}\n"


def test_manifest_with_a_nan_threshold_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A NaN threshold passes no comparison: a slice at probability 0.999 was answered tumor_detected false, exit 0."""
    manifest = json.loads((COMMITTED_MODEL_DIR / "manifest.json").read_text())
    manifest["classifier"]["threshold"] = float("nan")
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))

    code, _, err = run(capsys, "predict", str(TUMOR_SLICE), "--model-dir", str(tmp_path))

    assert code == cli.EXIT_MODELS
    assert err.startswith(f"brain-tumor predict: cannot load the models: model manifest {tmp_path / 'manifest.json'}")
    assert "classifier.threshold" in err
    assert "Input should be a finite number" in err


class FullDisk(io.StringIO):
    def write(self, text: str) -> int:
        raise OSError(28, "No space left on device")


def test_predict_whose_output_cannot_be_written_says_so_with_exit_2(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`predict ... > /dev/full`: the results are lost, so the command fails in one line instead of a traceback."""
    monkeypatch.setattr("sys.stdout", FullDisk())

    code = cli.main(["predict", str(TUMOR_SLICE), "--model-dir", str(tiny_model_dir)])

    assert code == cli.EXIT_USAGE
    assert capsys.readouterr().err == "brain-tumor predict: error: cannot write the output: No space left on device\n"
