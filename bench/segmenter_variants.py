"""Batch-1 latency of the model architectures (untrained weights: the cost does not depend on them).

    python -m bench.segmenter_variants --calls 100

Made to weigh the segmenter with a full-resolution output (`build_resunet(full_resolution_output=True)`) against
the plain one, which upsamples half-resolution logits, next to the classifier; each is called `--calls` times on one
256 x 256 slice after `--warmup` calls, and the median and 90th percentile are printed.
"""

from __future__ import annotations

import argparse
import time

import keras
import numpy as np

from training.models import build_classifier, build_resunet


def time_calls(model: keras.Model, calls: int, warmup: int) -> list[float]:
    """Seconds per call of `model.predict_on_batch` on one random slice, warm-up calls not counted."""
    image = np.random.default_rng(0).random((1, 256, 256, 3), dtype=np.float32)
    for _ in range(warmup):
        model.predict_on_batch(image)
    seconds = []
    for _ in range(calls):
        start = time.perf_counter()
        model.predict_on_batch(image)
        seconds.append(time.perf_counter() - start)
    return seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=10)
    args = parser.parse_args(argv)
    models = {
        "classifier": build_classifier(),
        "segmenter, half-resolution logits (served)": build_resunet(),
        "segmenter, full-resolution output": build_resunet(full_resolution_output=True),
    }
    for name, model in models.items():
        seconds = np.array(time_calls(model, args.calls, args.warmup)) * 1000
        print(f"{name}: median {np.median(seconds):.1f} ms, p90 {np.percentile(seconds, 90):.1f} ms at batch 1")


if __name__ == "__main__":
    main()
