"""The `brain-tumor` command: serve the API, predict files offline, train and evaluate models.

brain-tumor serve                         # HOST:PORT from the environment (default 127.0.0.1:8000)
brain-tumor predict slices/ --format table --masks-dir masks/     # files or folders; or the DICOM files of a series
brain-tumor dicom-node                    # DICOM_NODE_AE_TITLE on DICOM_NODE_HOST:DICOM_NODE_PORT (default 11112)
brain-tumor dicom-node-forget STUDY_UID   # node stopped: drop a refused study's instances so a re-send starts afresh
brain-tumor health                        # exit 0 when this container's daemon is well (the image's HEALTHCHECK)
brain-tumor train --model segmenter --data-root ../shared/lgg/kaggle_3m_dev --output-dir runs/segmenter
brain-tumor evaluate --data-root ../shared/lgg/kaggle_3m_dev --classifier-weights ... --segmenter-weights ...

TensorFlow's startup log is hidden; `brain-tumor --verbose COMMAND` (or `predict --verbose`) shows it.
"""

from __future__ import annotations

import argparse
import atexit
import ctypes
import gc
import logging
import os
import re
import signal
import socket
import sys
from typing import TYPE_CHECKING, Any

from app import schemas
from app.core.model_store import ModelStoreError, read_manifest
from app.exit_codes import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_MODELS, EXIT_OK, EXIT_USAGE, fail
from app.predict_command import PrintFormat
from app.release import service_version
from app.settings import (
    AE_TITLE_RULE,
    DAY_SECONDS,
    Settings,
    SettingsError,
    get_settings,
    http_url_problem,
    is_ae_title,
    without_credentials,
)

if TYPE_CHECKING:
    import uvicorn

EXIT_FILES_FAILED = EXIT_FAILED
MIN_PORT, MAX_PORT = 1, 65535
KEY_ID = re.compile(r"[\w.@-]+")

PREDICT_EPILOG = f"""\
A folder stands for the files directly inside it, in natural order (slice_2 before slice_10), without hidden files
and *_mask.* files. PNG/JPEG/TIFF files get one result each (with --series, as the slices of one volume in order:
their masks get the series clean-up); DICOM files are read as one series (one result per slice, and the series'
tumor_detected and tumor_volume_ml). JSON: for images what POST /v1/predict/batch answers; for a DICOM series
the slices under "results" (each with its file) and the series' fields under "series". Table and csv give one line
per file (or slice), csv without the series totals. Images are read INFERENCE_BATCH_SIZE files at a time; a series
(DICOM files, or images with --series) is read whole, and its files together may hold at most
MAX_BATCH_UPLOAD_BYTES, as one POST /v1/predict/batch request.

Masks (--masks-dir): MASKS_DIR/<stem>_predicted_mask.png per positive file (as the upload page names them, never the
LGG ground truth's <stem>_mask.png), 8-bit, 0 background, 255 tumor; a multi-frame DICOM file gets
<stem>_frame<N>_predicted_mask.png. Inputs that would share a mask file (a/slice.png and b/slice.png) stop the
command with exit code 2 (images before anything runs, DICOM files when a second mask would land on the first):
predict them in separate runs, each with its own --masks-dir. A file already there (an earlier run's mask) is never
replaced unless --overwrite is given: it stops the command with exit code 2 the same way.

Progress ([done/total] lines) goes to standard error when it is a terminal, or with --progress.

exit codes:
  {EXIT_OK}    every file was predicted (DICOM images an IHE IOCM rejection note among the files withdraws are left
       out as asked, listed under file_errors as rejected_instance and the note as rejection_note)
  {EXIT_FILES_FAILED}    a file could not be predicted (its error is in the output), or the files cannot go together
       (DICOM mixed with images)
  {EXIT_USAGE}    bad arguments: an unknown option, a missing file or folder, an empty folder, masks that would collide
       or replace a file, a --masks-dir that cannot be written, a series larger than MAX_BATCH_UPLOAD_BYTES, an
       invalid environment variable, standard output that cannot be written (a full disk)
  {EXIT_MODELS}    the models could not be loaded (MODEL_DIR or --model-dir missing, a sha256 mismatch, an invalid
       manifest, a model file that does not load)
  {EXIT_INTERRUPTED}  interrupted (Ctrl-C)
"""


def serve(args: argparse.Namespace) -> int:
    """Listen on HOST:PORT, load the models in the background, serve until SIGTERM/SIGINT.

    Exit codes: 0 stopped by a signal; 2 an address it cannot listen on, bad API keys or audit log file; 3 models
    that cannot be loaded, found before serving (missing, sha256) or while loading (the process stops then, so that
    Compose, systemd or Kubernetes restart it instead of leaving it unready for ever).
    """
    limit_malloc_arenas()
    from app.logging_config import configure_logging
    from app.main import create_app
    from app.security import KeyConfigurationError
    from app.stop_signals import signals_interrupt

    # --host and --port go into the settings the app is built with, so that what it says about its address (the
    # warning for a public one without API keys) is about the address uvicorn binds.
    settings = with_address(get_settings(), host=args.host, port=args.port)
    configure_logging(settings.log_level)
    largest_body = max(settings.upload_body_limit_bytes, settings.max_batch_upload_bytes)
    if settings.max_uploads_held_bytes < largest_body:  # such a body would get 503 "retry later" for ever
        return fail(
            f"brain-tumor serve: error: MAX_UPLOADS_HELD_BYTES ({settings.max_uploads_held_bytes}) must be at least "
            f"the largest request body, MAX_BATCH_UPLOAD_BYTES or MAX_UPLOAD_BYTES and 64 KiB of form ({largest_body})",
            EXIT_USAGE,
        )
    # Bound here, before TensorFlow and the models, and handed to uvicorn: a busy port or a host that does not resolve
    # is one line and exit 2 at once (uvicorn exits 3 for it, the code of models that cannot load), with no window
    # for another process to take the port in between.
    try:
        listener = listening_socket(settings.host, settings.port)
    except OSError as error:
        reason = error.strerror or str(error)
        return fail(f"brain-tumor serve: cannot listen on {settings.host}:{settings.port}: {reason}", EXIT_USAGE)
    with listener:
        try:  # before TensorFlow too: a keys file that cannot be read is said at once, not after its import (22 s)
            app = create_app(settings)
        except KeyConfigurationError as error:
            return fail(f"brain-tumor serve: error: {error}", EXIT_USAGE)
        except OSError as error:  # API_KEYS_FILE or AUDIT_LOG_FILE (`AuditLog` names its file)
            setting = "API_KEYS_FILE" if str(error.filename) == str(settings.api_keys_file) else "AUDIT_LOG_FILE"
            return fail(
                f"brain-tumor serve: error: {setting}: cannot open {error.filename}: {error.strerror}", EXIT_USAGE
            )
        except UnicodeDecodeError as error:  # only API_KEYS_FILE is read here; its bytes are never shown
            # (ops review 44 F3: a keys file saved as UTF-16 stopped serve with a traceback and exit 1)
            return fail(
                f"brain-tumor serve: error: API_KEYS_FILE {settings.api_keys_file}: not UTF-8 text (byte {error.start} "
                "cannot be read); save it as UTF-8",
                EXIT_USAGE,
            )
        try:
            # SIGTERM or SIGINT while TensorFlow is imported (up to 22 s, before uvicorn takes them) stop the server
            # with exit 0, as once it serves: SIGTERM killed it by the signal (143) (review 49 F3).
            with signals_interrupt():
                hold_back_tensorflow_log(settings, args.verbose)
        except KeyboardInterrupt:
            logging.getLogger("uvicorn.error").info("stopped before serving")
            return EXIT_OK
        # The lifespan checks the model files too (for `uvicorn --factory app.main:create_app`), but a refusal there
        # also gets uvicorn's traceback: checked here first, a missing or tampered file is one line and exit 3.
        read_manifest(settings.model_dir)
        server = uvicorn_server(app, settings)
        # Models that pass their sha256 and still cannot load (another model's weights, a broken architecture) stop
        # the server as SIGTERM would: requests in flight (none can predict) end, then exit 3 below.
        app.state.on_load_failure = lambda: setattr(server, "should_exit", True)
        # uvicorn handles SIGTERM/SIGINT itself (stop accepting, finish in-flight requests, run the lifespan's
        # shutdown) and afterwards re-raises the signal it caught against the handler that was there before. With
        # the default handler that would kill the process with -15 after a clean shutdown; a no-op lets `serve`
        # return 0.
        for handled in (signal.SIGTERM, signal.SIGINT):
            signal.signal(handled, lambda number, frame: None)
        run_server(server, listener)
    if app.state.model_loader is not None and not app.state.model_loader.done():
        # Stopped while the models load: that thread cannot be interrupted, and waiting for it (up to 50 s) outlasts
        # Compose's 10 s before SIGKILL (review 49 F1). Nothing is left to save: the lifespan has closed the audit log.
        logging.getLogger("uvicorn.error").info("stopped while the models loaded")
        exit_at_once(EXIT_OK)
    if app.state.load_error is not None:
        return fail(f"brain-tumor serve: cannot load the models: {app.state.load_error}", EXIT_MODELS)
    return EXIT_OK


def uvicorn_server(app: Any, settings: Settings) -> uvicorn.Server:
    """The uvicorn server `serve` runs `app` with: our JSON log and access lines, the connection limits of
    `app.http_protocol`, and nothing of uvicorn's own that the app does in its own way. `app` is `create_app`'s (not
    annotated as FastAPI: only the web edge imports it, `tests/core/test_import_graph.py`)."""
    import uvicorn

    from app.http_protocol import ConnectionLimits, protocol_with_limits

    return uvicorn.Server(
        uvicorn.Config(
            app,
            host=settings.host,
            port=settings.port,
            log_config=None,  # keep our JSON logging
            access_log=False,  # RequestContextMiddleware writes the access line (with the request id and latency)
            # Header size and time, body idle time, connection count, idle uploads at shutdown: app.http_protocol.
            http=protocol_with_limits(
                ConnectionLimits.from_settings(settings),
                audit=app.state.audit,
                refusals=app.state.metrics.connection_refusals,
            ),
            timeout_keep_alive=settings.keep_alive_timeout_seconds,
            timeout_graceful_shutdown=settings.shutdown_timeout_seconds,
            # X-Forwarded-For is read by the app, and only from TRUSTED_PROXIES (ClientAddressMiddleware);
            # uvicorn's own handling would believe it from any loopback peer.
            proxy_headers=False,
            server_header=False,
            # No route takes a WebSocket: an upgrade request is served as the plain HTTP request it also is (the
            # key check, the JSON error, the audit line) instead of being handed to a WebSocket handshake.
            ws="none",
        )
    )


def exit_at_once(code: int) -> None:
    """End the process now, its log flushed: no interpreter shutdown, which would wait for the threads still
    running (a model load) and could crash in TensorFlow's native code while it tears objects down."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def listening_socket(host: str, port: int) -> socket.socket:
    """A socket bound to `host`:`port` as uvicorn binds one it is handed (IPv6 for an address with a colon, then
    IPv6 only, as asyncio does), not yet listening: uvicorn's server listens on it.

    Raises
    ------
    OSError
        The port is in use or not ours to take, or the host does not resolve or is not an address of this machine.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family=family)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart is not refused for TIME_WAIT
        if family == socket.AF_INET6:
            listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        listener.bind((host, port))
    except OSError:
        listener.close()
        raise
    return listener


def run_server(server: uvicorn.Server, listener: socket.socket) -> None:
    """Serve on `listener` until a signal, or until the models fail to load (tests replace this)."""
    server.run(sockets=[listener])


def with_address(settings: Settings, host: str | None, port: int | None) -> Settings:
    """`settings` with `serve --host/--port` where given (an empty --host is not given: it would bind everywhere)."""
    return settings.model_copy(update={"host": host or settings.host, "port": port or settings.port})


def limit_malloc_arenas(arenas: int = 2) -> None:
    """Cap glibc's malloc arenas (as MALLOC_ARENA_MAX would): with one arena per thread, TensorFlow's and the
    server's thread pools let resident memory creep up under load. A no-op outside glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_arena_max = -8  # from glibc's malloc.h
    libc.mallopt(m_arena_max, arenas)


def predict(args: argparse.Namespace) -> int:
    """`brain-tumor predict`: the command lives in `app.predict_command.run` (newcomer review 45 F20); its heavy
    imports (the flow, the models) happen there, only for this command. Exit codes: see `PREDICT_EPILOG`."""
    from app.predict_command import run

    return run(args, get_settings())


def hold_back_tensorflow_log(settings: Settings, verbose: bool) -> None:
    """For the commands whose log is JSON lines (serve, pacs-sync, dicom-node): TensorFlow's C++ startup lines
    (oneDNN, CPU features, absl) would break it, so with the Keras runtime it is imported now, quietly unless
    `verbose`. ONNX Runtime never starts TensorFlow."""
    if settings.inference_runtime == "keras":
        import_tensorflow_quietly(verbose)


def import_tensorflow_quietly(verbose: bool) -> None:
    """Import TensorFlow and Keras now, their startup log held back unless `verbose` (see `app.tensorflow_log`).

    The garbage collector is also told to collect nothing more at exit: collecting TensorFlow's objects took the
    interpreter 1.4 s on an idle machine, and 8 s on a busy one, after `dicom-node` had stopped (operations review 28,
    finding 9); the operating system frees that memory anyway.
    """
    from app.tensorflow_log import tensorflow_log_held

    atexit.register(gc.freeze)  # first: an import stopped by SIGTERM leaves TensorFlow's objects too (review 49 F2)
    with tensorflow_log_held(verbose):
        import keras  # noqa: F401
        import tensorflow  # noqa: F401


def pacs_sync(args: argparse.Namespace) -> int:
    from app.logging_config import configure_logging
    from app.pacs import pacs_sync as sync

    settings = get_settings()
    configure_logging(settings.log_level)
    url_problem = http_url_problem(args.orthanc) if args.orthanc else None
    if url_problem:  # as ORTHANC_URL's (ops review 44 F2): one line, the password never shown
        return fail(
            f"brain-tumor pacs-sync: error: --orthanc {url_problem}; got {without_credentials(args.orthanc)!r}",
            EXIT_USAGE,
        )
    if args.poll_seconds is not None and not 0 < args.poll_seconds <= DAY_SECONDS:  # as PACS_POLL_SECONDS's
        return fail(
            "brain-tumor pacs-sync: error: --poll-seconds must be a positive number of seconds, at most a day "
            f"({DAY_SECONDS:g}); got {args.poll_seconds}",
            EXIT_USAGE,
        )
    # TensorFlow once Orthanc has been asked: a wrong URL or password is said in seconds (it came after the models)
    return sync.main(args, settings, before_models=lambda: hold_back_tensorflow_log(settings, args.verbose))


def dicom_node(args: argparse.Namespace) -> int:
    from app.logging_config import configure_logging
    from app.node import dicom_node_command as node

    settings = get_settings()
    configure_logging(settings.log_level)
    if args.port is not None and not MIN_PORT <= args.port <= MAX_PORT:  # 0 would listen on a port chosen at random
        return fail(
            f"brain-tumor dicom-node: error: --port must be {MIN_PORT} to {MAX_PORT}; got {args.port}", EXIT_USAGE
        )
    if args.ae_title is not None and not is_ae_title(args.ae_title):
        return fail(f"brain-tumor dicom-node: error: --ae-title: {AE_TITLE_RULE}; got {args.ae_title!r}", EXIT_USAGE)
    # The same rule as DICOM_NODE_HOST and DICOM_NODE_SPOOL_DIR: a wrapper's `--host "$UNSET"` must not expose the node.
    for option, value, why in (
        ("--host", args.host, "it would listen on every interface"),
        ("--spool-dir", args.spool_dir, "the spool would be the working directory"),
    ):
        if value is not None and not value.strip():
            return fail(
                f"brain-tumor dicom-node: error: {option} must not be empty ({why}); leave it out for the default",
                EXIT_USAGE,
            )
    try:  # TensorFlow after the address check: a port in use is said in seconds, not after the models load
        return node.main(args, settings, before_models=lambda: hold_back_tensorflow_log(settings, args.verbose))
    except (OSError, OverflowError, ValueError) as error:  # the spool folder, the address, the AE title
        return fail(f"brain-tumor dicom-node: cannot start: {describe_start_error(error)}", EXIT_USAGE)


def dicom_node_forget(args: argparse.Namespace) -> int:
    from app.node import dicom_node_command as node

    settings = get_settings()
    if args.spool_dir is not None and not args.spool_dir.strip():  # as for dicom-node: not the working directory
        return fail("brain-tumor dicom-node-forget: error: --spool-dir must not be empty", EXIT_USAGE)
    try:
        return node.forget_main(args, settings)
    except OSError as error:  # a spool that cannot be read or written
        return fail(f"brain-tumor dicom-node-forget: {describe_start_error(error)}", EXIT_USAGE)


def describe_start_error(error: Exception) -> str:
    if isinstance(error, OSError) and error.filename is not None:
        return f"{error.filename}: {error.strerror}"
    return str(error) or type(error).__name__


def hash_key_command(args: argparse.Namespace) -> int:
    """Print `id:sha256` for an API keys file; the key is read from standard input so it stays out of the shell
    history."""
    from app.security import HEADER_SAFE_RULE, WEAK_KEY_RULE, hash_key, header_safe, strong_enough

    # The line it prints is `id:sha256`, in a file where `#` starts a comment: such an id would make it unreadable.
    if not KEY_ID.fullmatch(args.key_id):
        return fail(
            f"brain-tumor hash-key: error: key_id must be letters, digits, '.', '_', '@' or '-'; got {args.key_id!r}",
            EXIT_USAGE,
        )
    key = sys.stdin.readline().rstrip("\r\n")
    if not key:
        return fail("brain-tumor hash-key: error: no key on standard input", EXIT_USAGE)
    if not header_safe(key):  # API_KEYS refuses it too: hashed, it would be refused at every request
        return fail(f"brain-tumor hash-key: error: {HEADER_SAFE_RULE}", EXIT_USAGE)
    if not strong_enough(key):
        return fail(f"brain-tumor hash-key: error: {WEAK_KEY_RULE}", EXIT_USAGE)
    print(f"{args.key_id}:{hash_key(key)}")
    return 0


def health(args: argparse.Namespace) -> int:
    """Exit 0 when the daemon of this container is well, 1 otherwise, with one line saying why (`app.heartbeat`):
    the image's HEALTHCHECK, so it works whichever daemon the image runs."""
    from app.heartbeat import UnhealthyError, check_health

    settings = get_settings()
    try:
        print(check_health(settings.heartbeat_file, settings.host, settings.port))
    except UnhealthyError as error:
        return fail(f"brain-tumor health: unhealthy: {error}", EXIT_FAILED)
    return EXIT_OK


def port_number(text: str) -> int:
    """A TCP port, 1 to 65535: a larger number would wrap around to another port, and 0 pick one at random."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number; got {text!r}") from None
    if not MIN_PORT <= port <= MAX_PORT:
        raise argparse.ArgumentTypeError(f"must be {MIN_PORT} to {MAX_PORT}; got {port}")
    return port


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="brain-tumor", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {service_version()}")
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="predict, serve, pacs-sync, dicom-node, train, evaluate: show TensorFlow's and Keras's startup log",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    _add_serve_parser(commands)
    _add_predict_parser(commands)
    _add_dicom_parsers(commands)
    _add_hash_key_parser(commands)
    _add_health_parser(commands)
    _add_training_parsers(commands)
    return parser


def _add_serve_parser(commands: argparse._SubParsersAction) -> None:
    serve_parser = commands.add_parser("serve", help="run the HTTP service on the models in MODEL_DIR")
    serve_parser.add_argument("--host", default=None, help="default: HOST, else 127.0.0.1")
    serve_parser.add_argument("--port", type=port_number, default=None, help="default: PORT, else 8000")
    serve_parser.set_defaults(run=serve)


def _add_predict_parser(commands: argparse._SubParsersAction) -> None:
    predict_parser = commands.add_parser(
        "predict",
        help="predict image files offline (JSON, a table or CSV on stdout)",
        description="Predict PNG/JPEG/TIFF slices, or the DICOM files of one series, with the models in MODEL_DIR.",
        epilog=PREDICT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    predict_parser.add_argument(
        "files", nargs="+", metavar="FILE_OR_FOLDER", help="PNG, JPEG or TIFF slices, or the DICOM files of one series"
    )
    predict_parser.add_argument(
        "--format",
        choices=[item.value for item in PrintFormat],
        default=PrintFormat.JSON.value,
        help="what stdout gets (default: json)",
    )
    predict_parser.add_argument(
        "--masks-dir", default=None, help="write <stem>_predicted_mask.png here for each slice with a mask"
    )
    predict_parser.add_argument(
        "--mask-format",
        type=schemas.MaskFormat,
        default=schemas.MaskFormat.RLE,
        metavar="{" + ",".join(item.value for item in schemas.MaskFormat) + "}",
        help="how the JSON carries each mask (default: rle)",
    )
    predict_parser.add_argument(
        "--series",
        action="store_true",
        help="the PNG/JPEG/TIFF files are the slices of one volume, in order: masks get the series clean-up (3-D "
        "blobs too small to be tumor are dropped; DICOM files are always a series)",
    )
    predict_parser.add_argument(
        "--overwrite", action="store_true", help="replace mask files already in --masks-dir (default: refuse)"
    )
    predict_parser.add_argument("--model-dir", default=None, help="default: MODEL_DIR, else the repository's models/")
    predict_parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="[done/total] lines on stderr (default: only when stderr is a terminal)",
    )
    predict_parser.add_argument(
        "--verbose", action="store_true", dest="predict_verbose", help="show TensorFlow's and Keras's log"
    )
    predict_parser.set_defaults(run=predict)


def _add_dicom_parsers(commands: argparse._SubParsersAction) -> None:
    """pacs-sync, dicom-node and dicom-node-forget. Their options are written here, not in their modules, so that
    building the parser imports none of them: those imports (pydicom, pynetdicom, the flow) took 1-2.5 s of every
    command's start, `predict` and `--help` too, in which a daemon could not yet take SIGTERM."""
    sync_parser = commands.add_parser(
        "pacs-sync",
        help="analyse the MR studies in Orthanc with no result from us yet (or new instances since), store the SEG "
        "and the volume report (SR) back",
    )
    add_pacs_sync_arguments(sync_parser)
    sync_parser.set_defaults(run=pacs_sync)

    node_parser = commands.add_parser(
        "dicom-node", help="DICOM node: C-STORE MR studies in, SEG and volume report (SR) out by C-STORE"
    )
    add_dicom_node_arguments(node_parser)
    node_parser.set_defaults(run=dicom_node)

    forget_parser = commands.add_parser(
        "dicom-node-forget",
        help="with dicom-node stopped: remove a study's received instances from its spool, keeping its record, so "
        "that the next send of the study is analysed afresh (a study refused for a stray instance)",
        description="Remove one study's received instances from the DICOM node's spool, keeping its record: the next "
        "send of the study is analysed afresh, and its results revise the earlier ones. Stop the node first: a spool "
        "a running dicom-node holds is refused (exit 2). Exit 1 when the spool holds no such study. Prints the "
        "study's key (as the node's logs name it), never the UID or Patient ID.",
    )
    add_dicom_node_forget_arguments(forget_parser)
    forget_parser.set_defaults(run=dicom_node_forget)


def add_pacs_sync_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``brain-tumor pacs-sync``; unset ones come from the settings (environment)."""
    parser.add_argument("--orthanc", metavar="URL", help="Orthanc base URL (default: ORTHANC_URL)")
    parser.add_argument("--user", help="HTTP basic-auth user (default: ORTHANC_USERNAME)")
    parser.add_argument(
        "--password", help="HTTP basic-auth password (default: ORTHANC_PASSWORD; prefer it: arguments show in ps)"
    )
    parser.add_argument(
        "--state-file", help="where the last change handled is kept, to resume there (default: PACS_STATE_FILE)"
    )
    parser.add_argument("--poll-seconds", type=float, help="pause between passes (default: PACS_POLL_SECONDS)")
    parser.add_argument("--model-dir", help="folder with the exported models (default: MODEL_DIR)")
    parser.add_argument("--once", action="store_true", help="run one pass and exit")


def add_dicom_node_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``brain-tumor dicom-node``; unset ones come from the settings (``DICOM_NODE_*``)."""
    parser.add_argument("--ae-title", help="AE title to answer to (default: DICOM_NODE_AE_TITLE)")
    parser.add_argument("--host", help="address to listen on (default: DICOM_NODE_HOST)")
    parser.add_argument("--port", type=int, help="DICOM port (default: DICOM_NODE_PORT)")
    # A string, not a Path: Path("") is ".", and an empty --spool-dir must be told from `--spool-dir .`.
    parser.add_argument("--spool-dir", help="where instances and results are kept (DICOM_NODE_SPOOL_DIR)")
    parser.add_argument("--model-dir", help="folder with the exported models (default: MODEL_DIR)")


def add_dicom_node_forget_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``brain-tumor dicom-node-forget``."""
    parser.add_argument("study_instance_uid", metavar="STUDY_INSTANCE_UID", help="the study to forget")
    parser.add_argument(
        "--patient-id",
        help='its Patient ID ("" for none): needed only when the spool holds the Study Instance UID under several, '
        "or for a study received before the node indexed Study Instance UIDs",
    )
    parser.add_argument("--spool-dir", help="the node's spool (default: DICOM_NODE_SPOOL_DIR)")


def _add_hash_key_parser(commands: argparse._SubParsersAction) -> None:
    hash_parser = commands.add_parser("hash-key", help="print an API_KEYS_FILE line for the key on standard input")
    hash_parser.add_argument("key_id", help="the name the audit log will show for this key")
    hash_parser.set_defaults(run=hash_key_command)


def _add_health_parser(commands: argparse._SubParsersAction) -> None:
    health_parser = commands.add_parser(
        "health",
        help="exit 0 when this container's daemon is well, 1 with the reason otherwise (the image's HEALTHCHECK)",
        description="dicom-node and pacs-sync: read their heartbeat (HEARTBEAT_FILE), ready and written within the "
        "last minute. serve: GET /health/ready on HOST:PORT (127.0.0.1 for 0.0.0.0). Exit 0 when well, 1 otherwise, "
        "with one line saying why.",
    )
    health_parser.set_defaults(run=health)


def _add_training_parsers(commands: argparse._SubParsersAction) -> None:
    """train and evaluate: their arguments go to `training.train` and `training.evaluate` untouched (`forward`)."""
    for name, module in (("train", "training.train"), ("evaluate", "training.evaluate")):
        # Every argument after the command is the training module's, --help included: with a prefix character no
        # argument can start with, this parser takes them all as they are.
        passthrough = commands.add_parser(
            name, help=f"python -m {module} (see brain-tumor {name} --help)", add_help=False, prefix_chars="\0"
        )
        passthrough.add_argument("arguments", nargs="*")
        passthrough.set_defaults(run=None, module=module)


def forward(module_name: str, command: str, arguments: list[str], verbose: bool) -> int:
    """Run `python -m <module_name>`'s `main()` in this process, its help and errors saying `brain-tumor <command>`
    (its `prog`).

    The module is found by name only when asked for: `app` never imports `training`, so the service image can ship
    without it.
    """
    import importlib

    from app.tensorflow_log import tensorflow_log_held

    try:
        with tensorflow_log_held(verbose):
            module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        return fail(f"brain-tumor {command}: needs the training package ({error}); run it from a checkout", EXIT_USAGE)
    module.main(arguments, prog=f"brain-tumor {command}")
    return EXIT_OK


DAEMONS = ("serve", "dicom-node", "pacs-sync")


def run_daemon(args: argparse.Namespace) -> int:
    """Run a daemon command, stopped with exit 0 by SIGTERM or SIGINT from its first moment on.

    Each daemon takes the stop signals itself once it has read its settings and before its long steps (the import
    of TensorFlow, the models); a signal in the second or two before that (settings, the web framework's import)
    killed it by the signal (143) or ended it as interrupted (130) (review 49 F4). Its own handlers replace these.
    The stop is logged once the daemon has set up its JSON log; a signal before that ends it silently, exit 0.
    """
    from app.stop_signals import signals_interrupt

    try:
        with signals_interrupt():
            return args.run(args)
    except KeyboardInterrupt:
        logging.getLogger("app.cli").info(f"brain-tumor {args.command} stopped")
        return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    args.verbose = args.verbose or getattr(args, "predict_verbose", False)
    try:
        if args.run is None:  # train / evaluate: the remaining arguments are the training module's
            return forward(args.module, args.command, args.arguments, args.verbose)
        if args.command in DAEMONS:
            return run_daemon(args)
        return args.run(args)
    except SettingsError as error:
        return fail(f"brain-tumor {args.command}: {error}", EXIT_USAGE)
    except ModelStoreError as error:  # pacs-sync and dicom-node load the models themselves
        return fail(f"brain-tumor {args.command}: cannot load the models: {error}", EXIT_MODELS)
    except KeyboardInterrupt:
        return fail(f"brain-tumor {args.command}: interrupted", EXIT_INTERRUPTED)


if __name__ == "__main__":
    sys.exit(main())
