"""The ceiling: the models alone, in-process, through the service's own fixed-signature functions.

    python -m bench.model_limit --model-dir models --json-out bench/results/model_limit.json

Times the classifier alone, the segmenter alone, and the gated pipeline (`Predictor.predict_preprocessed`: classifier,
then the segmenter on the positives only) at each batch size, on the real slice mix that the HTTP benchmark sends.
Inputs are decoded and preprocessed once beforehand, so the numbers hold only model work (plus the numpy/tensor
conversion and, for the pipeline, mask thresholding): no HTTP, no decoding. Warm-up batches are not counted.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from bench.measurements import (
    DEFAULT_MODEL_DIR,
    emit_summary,
    format_table,
    machine_description,
    percentiles_ms,
    process_memory,
)
from bench.slice_mix import (
    DEFAULT_DATA_ROOT,
    DEFAULT_MIX_SIZE,
    DEFAULT_SEED,
    DEFAULT_TUMOR_FRACTION,
    mix_description,
    select_mix,
)

if TYPE_CHECKING:
    from app.inference import Predictor

MODES = ("classifier", "segmenter", "pipeline")
DEFAULT_BATCH_SIZES = (1, 8, 16, 32)


@dataclass
class CellResult:
    """One (mode, batch size) measurement; `positive_fraction` only for the pipeline."""

    mode: str
    batch_size: int
    batches: int
    images: int
    seconds: float
    images_per_s: float
    ms_per_image: float
    batch_p50_ms: float | None
    batch_p95_ms: float | None
    positive_fraction: float | None = None


def load_inputs(paths: Sequence[Path]) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Decode and preprocess the slices exactly as the service does (same decoder, same `preprocess_slice`)."""
    from app.core.preprocessing import preprocess_slice
    from app.imaging import decode_image

    images = [decode_image(path.read_bytes()) for path in paths]
    return np.stack([preprocess_slice(image) for image in images]), [tuple(image.shape[:2]) for image in images]


def cycle_batches(
    inputs: np.ndarray, sizes: Sequence[tuple[int, int]], batch_size: int
) -> list[tuple[np.ndarray, list[tuple[int, int]]]]:
    """Consecutive batches over the mix, wrapping round, until every slice has been in one (at least one batch)."""
    count = len(inputs)
    batches = []
    for start in range(0, max(count, batch_size), batch_size):
        indices = [(start + offset) % count for offset in range(batch_size)]
        batches.append((np.ascontiguousarray(inputs[indices]), [sizes[index] for index in indices]))
    return batches


def time_cell(
    mode: str,
    run: Callable[[np.ndarray, list[tuple[int, int]]], int | None],
    batches: Sequence[tuple[np.ndarray, list[tuple[int, int]]]],
    warmup_batches: int,
    min_batches: int,
    max_batches: int,
    seconds: float,
) -> CellResult:
    """Run batches round-robin until `seconds` have passed and `min_batches` ran (never more than `max_batches`).

    `run` returns how many slices of the batch went on to the segmenter (pipeline) or None.
    """
    for index in range(warmup_batches):
        run(*batches[index % len(batches)])
    durations: list[float] = []
    positives = 0
    images = 0
    started = time.perf_counter()
    while len(durations) < max_batches:
        elapsed = time.perf_counter() - started
        if len(durations) >= min_batches and elapsed >= seconds:
            break
        inputs, sizes = batches[len(durations) % len(batches)]
        batch_started = time.perf_counter()
        positive = run(inputs, sizes)
        durations.append(time.perf_counter() - batch_started)
        positives += positive or 0
        images += len(inputs)
    total = sum(durations)
    stats = percentiles_ms(durations)
    return CellResult(
        mode=mode,
        batch_size=len(batches[0][0]),
        batches=len(durations),
        images=images,
        seconds=round(total, 3),
        images_per_s=round(images / total, 2),
        ms_per_image=round(1000.0 * total / images, 2),
        batch_p50_ms=stats["p50_ms"],
        batch_p95_ms=stats["p95_ms"],
        positive_fraction=round(positives / images, 3) if mode == "pipeline" else None,
    )


def runners(predictor: Predictor) -> dict[str, Callable[[np.ndarray, list[tuple[int, int]]], int | None]]:
    """The three things timed, each on a preprocessed batch; the pipeline returns its count of positives."""

    def classifier(inputs: np.ndarray, sizes: list[tuple[int, int]]) -> None:
        predictor.classify(inputs)

    def segmenter(inputs: np.ndarray, sizes: list[tuple[int, int]]) -> None:
        predictor.segment(inputs)

    def pipeline(inputs: np.ndarray, sizes: list[tuple[int, int]]) -> int:
        return sum(prediction.detected for prediction in predictor.predict_preprocessed(inputs, sizes))

    return {"classifier": classifier, "segmenter": segmenter, "pipeline": pipeline}


def summarize(cells: Sequence[CellResult]) -> dict:
    """The numbers the comparison uses: the ceiling (best pipeline batch) and the pipeline at batch 1."""
    pipeline = [cell for cell in cells if cell.mode == "pipeline"]
    if not pipeline:
        return {}
    best = max(pipeline, key=lambda cell: cell.images_per_s)
    single = next((cell for cell in pipeline if cell.batch_size == 1), None)
    return {
        "ceiling": {
            "batch_size": best.batch_size,
            "images_per_s": best.images_per_s,
            "ms_per_image": best.ms_per_image,
        },
        "pipeline_batch1": None
        if single is None
        else {"p50_ms": single.batch_p50_ms, "mean_ms": single.ms_per_image, "p95_ms": single.batch_p95_ms},
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR, help="folder with manifest.json")
    parser.add_argument("--data-root", type=Path, default=DEFAULT_DATA_ROOT, help="kaggle_3m folder of real slices")
    parser.add_argument("--mix-size", type=int, default=DEFAULT_MIX_SIZE, help="slices in the mix")
    parser.add_argument("--tumor-fraction", type=float, default=DEFAULT_TUMOR_FRACTION)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=list(DEFAULT_BATCH_SIZES))
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--seconds", type=float, default=5.0, help="timed seconds per (mode, batch size)")
    parser.add_argument("--min-batches", type=int, default=3, help="timed batches at least, even past --seconds")
    parser.add_argument("--max-batches", type=int, default=2000, help="timed batches at most, even before --seconds")
    parser.add_argument("--warmup-batches", type=int, default=2, help="untimed batches before each measurement")
    parser.add_argument("--json-out", type=Path, default=None, help="also write the JSON summary here")
    parser.add_argument(
        "--runtime",
        choices=("keras", "onnxruntime"),
        default=None,
        help="as the service's INFERENCE_RUNTIME (default: the service's setting, read from the environment)",
    )
    parser.add_argument("--quiet", action="store_true", help="print the table only, not the JSON")
    return parser


def backend_description(runtime: str) -> dict[str, str | None]:
    """The runtime and the framework versions behind the numbers."""
    import importlib.metadata

    import keras

    def version(package: str) -> str | None:
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return None

    return {
        "runtime": runtime,
        "keras": keras.__version__,
        "keras_backend": keras.backend.backend(),
        "tensorflow": version("tensorflow") or version("tensorflow-cpu"),
        "onnxruntime": version("onnxruntime") if runtime == "onnxruntime" else None,
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if min(args.batch_sizes) < 1 or args.seconds < 0 or args.min_batches < 1 or args.max_batches < args.min_batches:
        raise SystemExit(
            "batch sizes and --min-batches must be >= 1, --seconds >= 0 and --max-batches >= --min-batches; got "
            f"{args.batch_sizes}, {args.min_batches}, {args.seconds}, {args.max_batches}"
        )
    mix = select_mix(args.data_root, args.mix_size, args.tumor_fraction, args.seed)

    from app.inference import Predictor
    from app.settings import get_settings

    runtime = args.runtime or get_settings().inference_runtime
    load_started = time.perf_counter()
    predictor = Predictor.from_model_dir(args.model_dir, runtime=runtime)
    predictor.warm_up(max(args.batch_sizes))
    load_seconds = time.perf_counter() - load_started
    inputs, sizes = load_inputs([item.path for item in mix])

    cells = []
    run = runners(predictor)
    for mode in args.modes:
        for batch_size in args.batch_sizes:
            cell = time_cell(
                mode,
                run[mode],
                cycle_batches(inputs, sizes, batch_size),
                args.warmup_batches,
                args.min_batches,
                args.max_batches,
                args.seconds,
            )
            cells.append(cell)
            # One line per cell as it ends: a run stopped at a time limit still leaves the cells it finished.
            print(f"{mode} batch {batch_size}: {cell.images_per_s} images/s", flush=True)
    columns = [
        "mode",
        "batch_size",
        "batches",
        "images_per_s",
        "ms_per_image",
        "batch_p50_ms",
        "batch_p95_ms",
        "positive_fraction",
    ]
    print(format_table([asdict(cell) for cell in cells], columns))
    summary = {
        "benchmark": "model_limit",
        "machine": machine_description(),
        "backend": backend_description(runtime),
        "models": predictor.model_tags,
        "model_dir": str(args.model_dir),
        "classifier_threshold": predictor.classifier_threshold,
        "mix": mix_description(mix, args.data_root, args.seed),
        "load_and_warm_up_s": round(load_seconds, 2),
        "process_memory": process_memory(os.getpid()),
        "settings": {
            "seconds": args.seconds,
            "min_batches": args.min_batches,
            "max_batches": args.max_batches,
            "warmup_batches": args.warmup_batches,
        },
        "cells": [asdict(cell) for cell in cells],
        **summarize(cells),
    }
    emit_summary(summary, args.json_out, print_json=not args.quiet)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
