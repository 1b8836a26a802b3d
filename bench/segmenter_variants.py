"""Batch-1 latency of the model architectures (untrained weights: the cost does not depend on them).

    python -m bench.segmenter_variants --calls 100

Made to weigh the segmenter with a full-resolution output (`build_resunet(full_resolution_output=True)`) against
the plain one, which upsamples half-resolution logits, next to the classifier; each is called `--calls` times on one
256 x 256 slice after `--warmup` calls, and the median and 90th percentile are printed.
"""

from __future__ import annotations

import argparse
import functools

import numpy as np

from bench.measurements import median_ms, time_calls
from training.models import build_classifier, build_resunet


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
    image = np.random.default_rng(0).random((1, 256, 256, 3), dtype=np.float32)
    for name, model in models.items():
        seconds = time_calls(functools.partial(model.predict_on_batch, image), args.calls, args.warmup)
        p90_ms = 1000 * np.percentile(seconds, 90)
        print(f"{name}: median {median_ms(seconds):.1f} ms, p90 {p90_ms:.1f} ms at batch 1")


if __name__ == "__main__":
    main()
