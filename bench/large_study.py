"""What a study of very many one-slice instances costs the DICOM node's processor before it is refused.

Builds `--instances` one-slice 64x64 MR instances of one series in a temporary folder (in a child process, so building
them does not count in this process's memory), then runs `app.study_analysis.ModelStudyProcessor` on them once, as
the node does, with the default limits: the series is over the decoding memory budget, so the study is refused
before the models run (the tests' threshold predictor stands in for them). Prints the outcome, the seconds, the
growth of resident memory and how many files were read whole.

    python -m bench.large_study --instances 10000
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.measurements import process_memory


def build(count: int, directory: Path) -> None:
    import numpy as np
    from pydicom.uid import generate_uid

    from tests.dicom.builders import Study, mr_dataset, to_bytes

    study, series_uid, rng = Study(), generate_uid(), np.random.default_rng(0)
    for index in range(count):
        image = rng.integers(0, 255, size=(64, 64), dtype=np.uint8)
        dataset = mr_dataset(image, study, series_uid, instance_number=index + 1, position_mm=float(index))
        (directory / f"{index:06d}.dcm").write_bytes(to_bytes(dataset))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instances", type=int, default=10_000)
    parser.add_argument("--build-into", type=Path, help=argparse.SUPPRESS)  # the child process that builds
    args = parser.parse_args()
    if args.build_into:
        build(args.instances, args.build_into)
        return

    from app.study_analysis import ModelStudyProcessor
    from tests.node.node_support import ThresholdPredictor

    with tempfile.TemporaryDirectory() as folder:
        command = [sys.executable, "-m", "bench.large_study", "--instances", str(args.instances)]
        subprocess.run([*command, "--build-into", folder], check=True)
        files = sorted(Path(folder).glob("*.dcm"))
        processor = ModelStudyProcessor(ThresholdPredictor())
        read = []
        original = Path.read_bytes
        Path.read_bytes = lambda path: read.append(path) or original(path)  # type: ignore[method-assign]
        before = process_memory(os.getpid())
        started = time.perf_counter()
        analysis = processor(files)
        seconds = time.perf_counter() - started
        peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rss_before = before["rss_mib"] if before else 0.0
    print(f"{len(files)} one-slice 64x64 instances of one series: {analysis.status} ({analysis.reason})")
    print(
        f"{seconds:.1f} s; peak RSS {peak_mib:.0f} MiB, +{peak_mib - rss_before:.0f} MiB; files read whole: {len(read)}"
    )


if __name__ == "__main__":
    main()
