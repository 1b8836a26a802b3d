"""What a request costs at concurrency 1 besides the models: the floor under p50 against the raw model time.

    python -m bench.latency_floor --model-dir models

Measures, each as the median of `--repeats` tries on this machine:
1. decoding and preprocessing one slice of the benchmark mix (`app.uploads.prepare_upload`, what the service runs
   in a worker thread for every upload);
2. one round trip from an event loop to a worker thread and back (uvloop's `run_in_executor`, as under uvicorn);
   the service makes at least two per request: decoding, and the models on the inference thread;
3. a loopback HTTP round trip to the running service that does no work (`GET /health/live` with aiohttp, the
   client of `bench.http_load`), through the service's middleware.
Their sum (1 + 2 x 2 + 3) is the least the service can add to the model's own time per request here, before
multipart parsing, validation, the response body and logging, which are not counted.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import aiohttp

from bench.http_load import ready_service
from bench.measurements import DEFAULT_MODEL_DIR, emit_summary, machine_description, median_ms, time_calls
from bench.slice_mix import DEFAULT_DATA_ROOT, DEFAULT_MIX_SIZE, DEFAULT_SEED, DEFAULT_TUMOR_FRACTION, select_mix

LIVE_PATH = "/health/live"


def decode_ms(paths: Sequence[Path], repeats: int) -> float:
    """Median per-slice time of `prepare_upload` over the mix (each slice `repeats // len(paths)` times, at least 1)."""
    from app.settings import Settings
    from app.uploads import UploadLimits, prepare_upload

    limits = UploadLimits.from_settings(Settings())
    slices = itertools.cycle([path.read_bytes() for path in paths])
    calls = len(paths) * max(1, repeats // len(paths))
    return median_ms(time_calls(lambda: prepare_upload(next(slices), limits), calls))


def thread_round_trip_ms(repeats: int) -> float:
    """Median time of `await loop.run_in_executor(executor, no-op)` on uvloop (asyncio's loop without it)."""
    executor = ThreadPoolExecutor(max_workers=1)

    async def hops() -> list[float]:
        loop = asyncio.get_running_loop()
        durations = []
        for _ in range(repeats):
            started = time.perf_counter()
            await loop.run_in_executor(executor, int)
            durations.append(time.perf_counter() - started)
        return durations

    try:
        import uvloop

        durations = uvloop.run(hops())
    except ImportError:
        durations = asyncio.run(hops())
    executor.shutdown()
    return median_ms(durations)


async def http_round_trip_ms(base_url: str, repeats: int, warmup: int = 20) -> float:
    """Median time of `GET /health/live` over one connection, after `warmup` untimed requests."""
    async with aiohttp.ClientSession() as client:
        durations = []
        for attempt in range(warmup + repeats):
            started = time.perf_counter()
            async with client.get(base_url + LIVE_PATH) as response:
                await response.read()
                response.raise_for_status()
            if attempt >= warmup:
                durations.append(time.perf_counter() - started)
        return median_ms(durations)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR, help="folder with manifest.json")
    parser.add_argument("--data-root", type=Path, default=DEFAULT_DATA_ROOT, help="kaggle_3m folder of real slices")
    parser.add_argument("--mix-size", type=int, default=DEFAULT_MIX_SIZE, help="slices in the mix")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--repeats", type=int, default=500, help="tries per measurement")
    parser.add_argument("--json-out", type=Path, default=None, help="also write the JSON summary here")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.repeats < 1:
        raise SystemExit(f"--repeats must be >= 1; got {args.repeats}")
    mix = select_mix(args.data_root, args.mix_size, DEFAULT_TUMOR_FRACTION, args.seed)
    # HTTP first: the decoding step imports the service's modules (TensorFlow among them) into this process.
    with tempfile.TemporaryDirectory() as folder, ready_service(args.model_dir, Path(folder) / "service.log") as server:
        http = asyncio.run(http_round_trip_ms(server.base_url, args.repeats))
    parts = {
        "decode_and_preprocess_ms": decode_ms([item.path for item in mix], args.repeats),
        "thread_round_trip_ms": thread_round_trip_ms(args.repeats),
        "http_round_trip_ms": http,
    }
    floor = parts["decode_and_preprocess_ms"] + 2 * parts["thread_round_trip_ms"] + parts["http_round_trip_ms"]
    for name, value in parts.items():
        print(f"{name}: {value} ms")
    print(f"floor per request (decode + 2 thread round trips + HTTP round trip): {floor:.2f} ms")
    summary = {
        "benchmark": "latency_floor",
        "machine": machine_description(),
        "repeats": args.repeats,
        **parts,
        "floor_ms": round(floor, 3),
    }
    emit_summary(summary, args.json_out, print_json=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
