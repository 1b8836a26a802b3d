"""The `brain-tumor` command: serve the API, predict files offline, train and evaluate models.

brain-tumor serve                         # HOST:PORT from the environment (default 127.0.0.1:8000)
brain-tumor predict slice.png [--masks-dir masks/] [--mask-format both]   # or DICOM files of one series
brain-tumor dicom-node                    # DICOM_NODE_AE_TITLE on DICOM_NODE_HOST:DICOM_NODE_PORT (default 11112)
brain-tumor train --model segmenter --data-root ../shared/lgg/kaggle_3m_dev --output-dir runs/segmenter
brain-tumor evaluate --data-root ../shared/lgg/kaggle_3m_dev --classifier-weights ... --segmenter-weights ...
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import json
import signal
import sys
from pathlib import Path

from app import schemas
from app.errors import FileUnreadableError, ServiceError
from app.settings import get_settings


def serve(args: argparse.Namespace) -> int:
    limit_malloc_arenas()
    import uvicorn

    from app.http_protocol import ConnectionLimits, protocol_with_limits
    from app.logging_config import configure_logging
    from app.main import create_app

    settings = get_settings()
    configure_logging(settings.log_level)
    # uvicorn handles SIGTERM/SIGINT itself (stop accepting, finish in-flight requests, run the lifespan's shutdown)
    # and afterwards re-raises the signal it caught against the handler that was there before. With the default
    # handler that would kill the process with -15 after a clean shutdown; a no-op lets `serve` return 0.
    for handled in (signal.SIGTERM, signal.SIGINT):
        signal.signal(handled, lambda number, frame: None)
    uvicorn.run(
        create_app(settings),
        host=args.host or settings.host,
        port=args.port or settings.port,
        log_config=None,  # keep our JSON logging
        access_log=False,  # RequestContextMiddleware writes the access line (with the request id and latency)
        # Header size and time, body idle time, connection count, idle uploads at shutdown: see app.http_protocol.
        http=protocol_with_limits(ConnectionLimits.from_settings(settings)),
        timeout_keep_alive=settings.keep_alive_timeout_seconds,
        timeout_graceful_shutdown=settings.shutdown_timeout_seconds,
        # X-Forwarded-For is read by the app, and only from TRUSTED_PROXIES (ClientAddressMiddleware); uvicorn's own
        # handling would believe it from any loopback peer.
        proxy_headers=False,
        server_header=False,
    )
    return 0


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
    """The API's flow and JSON, offline: PNG/JPEG/TIFF files as `POST /v1/predict/batch` answers them one result per
    file, DICOM files as one series with one result per slice; exit 1 if any file failed."""
    from app.inference import Predictor
    from app.model_runners import predictor_runner
    from app.prediction import BatchAnswer, PredictionService
    from app.uploads import UploadLimits

    settings = get_settings()
    predictor = Predictor.from_model_dir(args.model_dir or settings.model_dir, runtime=settings.inference_runtime)
    service = PredictionService(
        predictor,
        predictor_runner(predictor, settings.inference_batch_size),
        UploadLimits.from_settings(settings),
        offload=False,
    )
    uploads = [_read_file(Path(path)) for path in args.files]
    try:
        answer = asyncio.run(service.predict_files(uploads, args.mask_format))
    except ServiceError as error:  # the request as a whole: mixed DICOM and images, frames that form no series
        print(json.dumps(error.body(), indent=2))
        return 1
    if isinstance(answer, BatchAnswer):
        results = [
            _result(args, {"index": index, "file": path}, prediction, payload)
            for index, (path, prediction, payload) in enumerate(
                zip(args.files, answer.predictions, answer.outcomes, strict=True)
            )
        ]
        print(json.dumps({"results": results, "models": predictor.model_tags}, indent=2))
        return 1 if any(not result["ok"] for result in results) else 0
    slices = [
        _result(
            args,
            {"index": index, "sop_instance_uid": item.sop_instance_uid, "frame_number": item.frame_number},
            prediction,
            item.prediction,
        )
        for index, (item, prediction) in enumerate(zip(answer.slices or [], answer.result.predictions, strict=True))
    ]
    failures = [
        {"index": position, "file": args.files[position], "ok": False, "error": error.to_dict()}
        for position, error in sorted(answer.file_errors.items())
    ]
    series = {"tumor_detected": answer.result.tumor_detected, "tumor_volume_ml": answer.result.tumor_volume_ml}
    print(
        json.dumps(
            {"series": series, "results": slices, "file_errors": failures, "models": predictor.model_tags}, indent=2
        )
    )
    return 1 if failures else 0


def _result(args: argparse.Namespace, item: dict, prediction: object, payload: object) -> dict:
    """One file's (or DICOM slice's) entry; with --masks-dir a positive's mask is written as a PNG beside it."""
    from app.masks import png_bytes

    if isinstance(payload, ServiceError):
        return {**item, "ok": False, "error": payload.to_dict()}
    item = {**item, "ok": True, "prediction": payload.model_dump(mode="json")}
    mask = getattr(prediction, "mask", None)
    if args.masks_dir and mask is not None:
        # The index keeps masks of same-named files from different folders apart.
        stem = Path(item["file"]).stem if "file" in item else "slice"
        target = Path(args.masks_dir) / f"{item['index']:04d}_{stem}_mask.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(png_bytes(mask))
        item["mask_file"] = str(target)
    return item


def _read_file(path: Path) -> bytes | ServiceError:
    try:
        return path.read_bytes()
    except OSError as error:
        return FileUnreadableError(f"cannot read the file: {error.strerror or error}")


def pacs_sync(args: argparse.Namespace) -> int:
    from app import pacs_sync as sync
    from app.logging_config import configure_logging

    configure_logging(get_settings().log_level)
    return sync.main(args)


def dicom_node(args: argparse.Namespace) -> int:
    from app import dicom_node as node
    from app.logging_config import configure_logging

    configure_logging(get_settings().log_level)
    return node.main(args)


def hash_key(args: argparse.Namespace) -> int:
    """Print `id:sha256` for an API keys file; the key is read from standard input so it stays out of the shell
    history."""
    from app.security import hash_key as sha256_of_key

    key = sys.stdin.readline().strip()
    if not key:
        print("no key on standard input", file=sys.stderr)
        return 2
    print(f"{args.key_id}:{sha256_of_key(key)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="brain-tumor", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)

    serve_parser = commands.add_parser("serve", help="run the HTTP service on the models in MODEL_DIR")
    serve_parser.add_argument("--host", default=None, help="default: HOST, else 127.0.0.1")
    serve_parser.add_argument("--port", type=int, default=None, help="default: PORT, else 8000")
    serve_parser.set_defaults(run=serve)

    predict_parser = commands.add_parser("predict", help="predict image files offline (JSON on stdout)")
    predict_parser.add_argument("files", nargs="+", help="PNG, JPEG or TIFF slices, or the DICOM files of one series")
    predict_parser.add_argument("--masks-dir", default=None, help="write <stem>_mask.png here for each positive")
    predict_parser.add_argument("--mask-format", type=schemas.MaskFormat, default=schemas.MaskFormat.RLE)
    predict_parser.add_argument("--model-dir", default=None, help="default: MODEL_DIR, else the repository's models/")
    predict_parser.set_defaults(run=predict)

    from app.pacs_sync import add_arguments as add_pacs_sync_arguments

    sync_parser = commands.add_parser(
        "pacs-sync", help="segment MR series in Orthanc that have no SEG from us yet, store the SEGs back"
    )
    add_pacs_sync_arguments(sync_parser)
    sync_parser.set_defaults(run=pacs_sync)

    from app.dicom_node import add_arguments as add_dicom_node_arguments

    node_parser = commands.add_parser(
        "dicom-node", help="DICOM node: C-STORE MR studies in, SEG and volume report (SR) out by C-STORE"
    )
    add_dicom_node_arguments(node_parser)
    node_parser.set_defaults(run=dicom_node)

    hash_parser = commands.add_parser("hash-key", help="print an API_KEYS_FILE line for the key on standard input")
    hash_parser.add_argument("key_id", help="the name the audit log will show for this key")
    hash_parser.set_defaults(run=hash_key)

    for name, module in (("train", "training.train"), ("evaluate", "training.evaluate")):
        passthrough = commands.add_parser(name, help=f"python -m {module} (see --help)", add_help=False)
        passthrough.set_defaults(run=None, module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.run is None:  # train / evaluate: hand the remaining arguments to the training package
        import importlib

        importlib.import_module(args.module).main(rest)
        return 0
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
