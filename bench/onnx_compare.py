"""Whether ONNX Runtime runs the same exported models faster or lighter than TensorFlow on this CPU.

    python -m bench.onnx_compare --model-dir models --json-out bench/results/onnx_compare.json

1. Converts the classifier and the segmenter with tf2onnx (`training.export_onnx.convert_to_onnx`, input signature
   float32 (None, 256, 256, 3), so any batch size runs on one graph) into `--onnx-dir`.
2. Checks the ONNX outputs against the Keras models (the service's fixed-signature functions) on real slices of the
   mix: the largest absolute difference must be within `--tolerance` (1e-5), for probabilities and mask maps alike.
3. Times both backends at batch 1 and 16, each in its own process, so the memory reported is that backend's alone
   (the ONNX Runtime process never imports TensorFlow, as a `BACKEND=onnxruntime` service would not).

Needs `tf2onnx`, `onnx` and `onnxruntime` (see bench/README.md).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np

from bench.measurements import (
    DEFAULT_MODEL_DIR,
    REPO_ROOT,
    emit_summary,
    format_table,
    machine_description,
    process_memory,
)
from bench.model_limit import cycle_batches, load_inputs, time_cell
from bench.slice_mix import (
    DEFAULT_DATA_ROOT,
    DEFAULT_MIX_SIZE,
    DEFAULT_SEED,
    DEFAULT_TUMOR_FRACTION,
    mix_description,
    select_mix,
)

BACKENDS = ("tensorflow", "onnxruntime")
ROLES = ("classifier", "segmenter")
INPUTS_FILE = "inputs.npy"
DEFAULT_OPSET = 17  # training.export_onnx.ONNX_OPSET, not imported: the ONNX worker must not load Keras


def convert(model_dir: Path, onnx_dir: Path, opset: int) -> dict[str, dict]:
    """Convert both models to `<onnx_dir>/<role>.onnx`; return per role the file, its size and the seconds taken."""
    from app.core.model_store import load_models
    from app.core.onnx_models import convert_to_onnx

    _, classifier, segmenter = load_models(model_dir)
    onnx_dir.mkdir(parents=True, exist_ok=True)
    converted = {}
    for role, model in zip(ROLES, (classifier, segmenter), strict=True):
        path = onnx_dir / f"{role}.onnx"
        started = time.perf_counter()
        path.write_bytes(convert_to_onnx(model, opset))
        converted[role] = {
            "file": str(path),
            "bytes": path.stat().st_size,
            "seconds": round(time.perf_counter() - started, 2),
        }
    return converted


def onnx_sessions(onnx_dir: Path, threads: int) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """One ONNX Runtime session per model (CPU), each wrapped as batch -> first output."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads  # 0: ONNX Runtime's default, one per physical core
    runners = {}
    for role in ROLES:
        session = ort.InferenceSession(str(onnx_dir / f"{role}.onnx"), options, providers=["CPUExecutionProvider"])
        input_name = session.get_inputs()[0].name
        runners[role] = lambda batch, session=session, name=input_name: session.run(None, {name: batch})[0]
    return runners


def tensorflow_runners(model_dir: Path) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """The service's own path: `Predictor` with its fixed-signature `tf.function`s."""
    from app.inference import Predictor

    predictor = Predictor.from_model_dir(model_dir)
    predictor.warm_up()
    return {"classifier": predictor.classify, "segmenter": predictor.segment}


def check_outputs(model_dir: Path, onnx_dir: Path, inputs: np.ndarray, tolerance: float) -> dict[str, dict]:
    """Largest absolute difference between Keras and ONNX outputs per model, and whether it is within tolerance."""
    reference = tensorflow_runners(model_dir)
    candidate = onnx_sessions(onnx_dir, threads=0)
    checks = {}
    for role in ROLES:
        expected = np.asarray(reference[role](inputs)).reshape(len(inputs), -1)
        actual = np.asarray(candidate[role](inputs)).reshape(len(inputs), -1)
        difference = float(np.max(np.abs(expected - actual)))
        checks[role] = {"max_abs_diff": difference, "within_tolerance": difference <= tolerance, "slices": len(inputs)}
    return checks


def discard_sizes(run: Callable[[np.ndarray], np.ndarray]) -> Callable[[np.ndarray, list], None]:
    """Adapt a model runner to `time_cell`, which also passes the slices' sizes and wants no positives count."""

    def timed(batch: np.ndarray, sizes: list) -> None:
        run(batch)

    return timed


def run_worker(args: argparse.Namespace) -> int:
    """Time one backend (in this process alone) and write its cells and memory as JSON to `--json-out`."""
    inputs = np.load(args.onnx_dir / INPUTS_FILE)
    sizes = [(int(inputs.shape[1]), int(inputs.shape[2]))] * len(inputs)
    load_started = time.perf_counter()
    if args.worker == "tensorflow":
        runners = tensorflow_runners(args.model_dir)
    else:
        runners = onnx_sessions(args.onnx_dir, args.ort_threads)
    load_seconds = time.perf_counter() - load_started
    memory_loaded = process_memory(os.getpid())
    cells = []
    for role in ROLES:
        for batch_size in args.batch_sizes:
            cell = time_cell(
                role,
                discard_sizes(runners[role]),
                cycle_batches(inputs, sizes, batch_size),
                args.warmup_batches,
                args.min_batches,
                args.max_batches,
                args.seconds,
            )
            cells.append({"backend": args.worker, **asdict(cell)})
    result = {
        "backend": args.worker,
        "load_seconds": round(load_seconds, 2),
        "memory_after_load": memory_loaded,
        "memory_after_timing": process_memory(os.getpid()),
        "cells": cells,
    }
    emit_summary(result, args.json_out, print_json=False)
    return 0


def time_backend(backend: str, args: argparse.Namespace) -> dict:
    """Run this script in worker mode for one backend, in a fresh process."""
    out = args.onnx_dir / f"timing_{backend}.json"
    command = [sys.executable, "-m", "bench.onnx_compare", "--worker", backend, "--json-out", str(out)]
    command += ["--model-dir", str(args.model_dir), "--onnx-dir", str(args.onnx_dir)]
    command += ["--batch-sizes", *map(str, args.batch_sizes), "--seconds", str(args.seconds)]
    command += ["--min-batches", str(args.min_batches), "--max-batches", str(args.max_batches)]
    command += ["--warmup-batches", str(args.warmup_batches), "--ort-threads", str(args.ort_threads)]
    result = subprocess.run(command, cwd=REPO_ROOT)
    if result.returncode != 0 or not out.is_file():
        raise SystemExit(f"timing {backend} failed (exit code {result.returncode}): {' '.join(command)}")
    return json.loads(out.read_text())


def versions() -> dict[str, str]:
    import keras
    import onnx
    import onnxruntime
    import tensorflow as tf
    import tf2onnx

    return {
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "tf2onnx": tf2onnx.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR, help="folder with manifest.json")
    parser.add_argument("--onnx-dir", type=Path, default=REPO_ROOT / "bench" / "results" / "onnx")
    parser.add_argument("--data-root", type=Path, default=DEFAULT_DATA_ROOT, help="kaggle_3m folder of real slices")
    parser.add_argument(
        "--mix-size", type=int, default=32, help=f"slices checked and timed (http mix: {DEFAULT_MIX_SIZE})"
    )
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET)
    parser.add_argument("--tolerance", type=float, default=1e-5, help="largest accepted absolute difference")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--seconds", type=float, default=5.0, help="timed seconds per (backend, model, batch size)")
    parser.add_argument("--min-batches", type=int, default=3)
    parser.add_argument("--max-batches", type=int, default=2000)
    parser.add_argument("--warmup-batches", type=int, default=2)
    parser.add_argument("--ort-threads", type=int, default=0, help="ONNX Runtime intra-op threads (0: its default)")
    parser.add_argument("--json-out", type=Path, default=None, help="also write the JSON summary here")
    parser.add_argument("--quiet", action="store_true", help="print the tables only, not the JSON")
    parser.add_argument("--worker", choices=BACKENDS, default=None, help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.model_dir = args.model_dir.resolve()
    args.onnx_dir = args.onnx_dir.resolve()
    if args.worker:
        return run_worker(args)
    if not (args.model_dir / "manifest.json").is_file():
        parser.error(f"--model-dir must hold manifest.json; not found: {args.model_dir / 'manifest.json'}")
    mix = select_mix(args.data_root, args.mix_size, DEFAULT_TUMOR_FRACTION, args.seed)
    converted = convert(args.model_dir, args.onnx_dir, args.opset)
    inputs, _ = load_inputs([item.path for item in mix])
    np.save(args.onnx_dir / INPUTS_FILE, inputs)
    checks = check_outputs(args.model_dir, args.onnx_dir, inputs, args.tolerance)
    print(
        format_table(
            [{"model": role, **check} for role, check in checks.items()],
            ["model", "max_abs_diff", "within_tolerance", "slices"],
        )
    )
    timings = {backend: time_backend(backend, args) for backend in BACKENDS}
    rows = []
    for tf_cell, ort_cell in zip(timings["tensorflow"]["cells"], timings["onnxruntime"]["cells"], strict=True):
        rows.append(
            {
                "model": tf_cell["mode"],
                "batch_size": tf_cell["batch_size"],
                "tf_images_per_s": tf_cell["images_per_s"],
                "ort_images_per_s": ort_cell["images_per_s"],
                "ort_speedup": round(ort_cell["images_per_s"] / tf_cell["images_per_s"], 3),
                "tf_ms_per_image": tf_cell["ms_per_image"],
                "ort_ms_per_image": ort_cell["ms_per_image"],
            }
        )
    print(format_table(rows, list(rows[0])))
    memory = {backend: timings[backend]["memory_after_timing"] for backend in BACKENDS}
    print(
        "peak RSS (MiB): "
        + ", ".join(f"{backend} {(memory[backend] or {}).get('peak_rss_mib')}" for backend in BACKENDS)
    )
    summary = {
        "benchmark": "onnx_compare",
        "machine": machine_description(),
        "versions": versions(),
        "model_dir": str(args.model_dir),
        "mix": mix_description(mix, args.data_root, args.seed),
        "opset": args.opset,
        "converted": converted,
        "tolerance": args.tolerance,
        "checks": checks,
        "outputs_match": all(check["within_tolerance"] for check in checks.values()),
        "comparison": rows,
        "memory": memory,
        "load_seconds": {backend: timings[backend]["load_seconds"] for backend in BACKENDS},
        "timings": timings,
    }
    emit_summary(summary, args.json_out, print_json=not args.quiet)
    return 0 if summary["outputs_match"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
