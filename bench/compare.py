"""One run of all three benchmarks, and the ratios the performance issue sets targets for, side by side.

    python -m bench.compare --model-dir models                     # full run (about 11 minutes on 2 cores)
    python -m bench.compare --model-dir /tmp/tiny-models --quick   # smoke run: tiny counts, numbers mean nothing

Runs, one after the other and each in its own process so none shares a CPU or memory with another:
`bench.model_limit` (the ceiling), `bench.http_load --server service`, `bench.http_load --server naive`, all on the
same mix of real slices. Each writes its JSON into the output folder; this script adds `compare.json` with the ratios.

Then paired rounds (`--rounds`, 5 by default): with one service process started, each round measures the ceiling
(pipeline at batch 1 and at the batch size that gave the ceiling) and right after it the service at concurrency 1
and 16. A shared machine drifts by 15 % and more within minutes (in one run of this script on the 2-core build
machine the ceiling measured 52.4 and 60.9 images/s in consecutive rounds), so the two ratios that set a service
figure against a model figure (throughput at 16 against the ceiling, p50 at 1 against the model's) are taken per
round, from numbers measured within a minute of each other, and the targets use the median over the rounds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from bench.http_load import ready_service
from bench.measurements import DEFAULT_MODEL_DIR, REPO_ROOT, emit_summary, format_table, machine_description
from bench.slice_mix import DEFAULT_DATA_ROOT, DEFAULT_MIX_SIZE, DEFAULT_SEED

# (name, comparison, target): what the issue asks of the service on this machine.
TARGETS: tuple[tuple[str, str, float], ...] = (
    ("service_c16_vs_ceiling", ">=", 0.85),
    ("service_c16_vs_naive_c16", ">=", 3.0),
    ("service_p50_c1_vs_model_p50_batch1", "<=", 1.15),
    ("service_peak_rss_gib", "<=", 1.2),
    ("service_time_to_ready_s", "<=", 15.0),
)
FULL = {
    "batch_sizes": [1, 8, 16, 32],
    "model_seconds": 5.0,
    "concurrency": [1, 4, 16, 64],
    "requests": 400,
    "seconds": 30.0,
    "warmup_requests": 16,
    "mix_size": DEFAULT_MIX_SIZE,
    "rounds": 5,
    "round_seconds": 10.0,
}
QUICK = {
    "batch_sizes": [1, 8],
    "model_seconds": 0.5,
    "concurrency": [1, 4, 16, 64],
    "requests": 24,
    "seconds": 5.0,
    "warmup_requests": 4,
    "mix_size": 24,
    "rounds": 1,
    "round_seconds": 2.0,
}
PAIRED_RATIOS = ("service_c16_vs_ceiling", "service_p50_c1_vs_model_p50_batch1")


def run_step(name: str, module: str, arguments: Sequence[str], json_out: Path) -> dict:
    """Run `python -m <module>` with the output going to this console, and return the JSON it wrote.

    Raises
    ------
    SystemExit
        If the step fails or writes no JSON, naming the step and the command.
    """
    command = [sys.executable, "-m", module, *arguments, "--json-out", str(json_out), "--quiet"]
    print(f"\n=== {name}: {' '.join(command)}", flush=True)
    started = time.perf_counter()
    result = subprocess.run(command, cwd=REPO_ROOT)
    if result.returncode != 0 or not json_out.is_file():
        raise SystemExit(f"{name} failed (exit code {result.returncode}): {' '.join(command)}")
    print(f"=== {name} done in {time.perf_counter() - started:.0f} s", flush=True)
    return json.loads(json_out.read_text())


def level(summary: dict, concurrency: int) -> dict | None:
    return next((item for item in summary.get("levels", []) if item["concurrency"] == concurrency), None)


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return round(numerator / denominator, 3)


def compute_ratios(model: dict, service: dict, naive: dict) -> dict[str, float | None]:
    """The issue's five numbers, from the three summaries (None where a level or a measurement is missing)."""
    service_c16, naive_c16, service_c1 = level(service, 16), level(naive, 16), level(service, 1)
    ceiling = (model.get("ceiling") or {}).get("images_per_s")
    batch1 = model.get("pipeline_batch1") or {}
    peaks = [
        memory["peak_rss_mib"]
        for memory in (service.get("memory_at_ready"), service.get("memory_before"), service.get("memory_after"))
        if memory
    ]
    return {
        "service_c16_vs_ceiling": ratio(service_c16 and service_c16["throughput_rps"], ceiling),
        "service_c16_vs_naive_c16": ratio(
            service_c16 and service_c16["throughput_rps"], naive_c16 and naive_c16["throughput_rps"]
        ),
        "service_p50_c1_vs_model_p50_batch1": ratio(service_c1 and service_c1["p50_ms"], batch1.get("p50_ms")),
        "service_mean_c1_vs_model_mean_batch1": ratio(service_c1 and service_c1["mean_ms"], batch1.get("mean_ms")),
        "service_peak_rss_gib": round(max(peaks) / 1024.0, 3) if peaks else None,
        "service_rss_after_gib": round(service["memory_after"]["rss_mib"] / 1024.0, 3)
        if service.get("memory_after")
        else None,
        "service_time_to_ready_s": service.get("time_to_ready_s"),
        "naive_time_to_ready_s": naive.get("time_to_ready_s"),
    }


def check_targets(ratios: dict[str, float | None]) -> list[dict]:
    rows = []
    for name, comparison, target in TARGETS:
        value = ratios.get(name)
        met = None if value is None else (value >= target if comparison == ">=" else value <= target)
        rows.append({"metric": name, "value": value, "target": f"{comparison} {target:g}", "met": met})
    return rows


def side_by_side(service: dict, naive: dict) -> list[dict]:
    rows = []
    for concurrency in service["settings"]["concurrency"]:
        ours, theirs = level(service, concurrency) or {}, level(naive, concurrency) or {}
        rows.append(
            {
                "concurrency": concurrency,
                "service_rps": ours.get("throughput_rps"),
                "naive_rps": theirs.get("throughput_rps"),
                "speedup": ratio(ours.get("throughput_rps"), theirs.get("throughput_rps")),
                "service_p50_ms": ours.get("p50_ms"),
                "naive_p50_ms": theirs.get("p50_ms"),
                "service_p99_ms": ours.get("p99_ms"),
                "naive_p99_ms": theirs.get("p99_ms"),
                "service_errors": ours.get("errors"),
                "naive_errors": theirs.get("errors"),
            }
        )
    return rows


def paired_rounds(model_dir: Path, profile: dict, shared: list[str], best_batch: int, output_dir: Path) -> list[dict]:
    """Alternate the ceiling and the service, `profile["rounds"]` times, against one service process (see the module
    docstring); return each round's numbers and its two ratios. Each service measurement is bounded by time only."""
    rounds = []
    with ready_service(model_dir, output_dir / "service-rounds.log") as server:
        seconds = str(profile["round_seconds"])
        for number in range(1, profile["rounds"] + 1):
            model = run_step(
                f"round {number}: model ceiling",
                "bench.model_limit",
                [
                    *shared,
                    "--modes",
                    "pipeline",
                    "--batch-sizes",
                    *map(str, sorted({1, best_batch})),
                    "--seconds",
                    seconds,
                ],
                output_dir / f"round{number}_model_limit.json",
            )
            service = run_step(
                f"round {number}: service over HTTP",
                "bench.http_load",
                [
                    *shared,
                    "--url",
                    server.base_url,
                    "--server-pid",
                    str(server.process.pid),
                    "--concurrency",
                    "1",
                    "16",
                    "--requests",
                    "100000",
                    "--seconds",
                    seconds,
                    "--warmup-requests",
                    "4",
                ],
                output_dir / f"round{number}_http_service.json",
            )
            ratios = compute_ratios(model, service, {})
            round_result = {
                "round": number,
                "ceiling_images_per_s": (model.get("ceiling") or {}).get("images_per_s"),
                "service_c16_rps": (level(service, 16) or {}).get("throughput_rps"),
                "model_p50_batch1_ms": (model.get("pipeline_batch1") or {}).get("p50_ms"),
                "service_p50_c1_ms": (level(service, 1) or {}).get("p50_ms"),
                **{name: ratios[name] for name in PAIRED_RATIOS},
            }
            print(f"round {number}: " + ", ".join(f"{key} {value}" for key, value in round_result.items()), flush=True)
            rounds.append(round_result)
    return rounds


def median_ratios(rounds: Sequence[dict]) -> dict[str, float | None]:
    medians = {}
    for name in PAIRED_RATIOS:
        values = [item[name] for item in rounds if item[name] is not None]
        medians[name] = round(statistics.median(values), 3) if values else None
    return medians


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR, help="folder with manifest.json")
    parser.add_argument("--data-root", type=Path, default=DEFAULT_DATA_ROOT, help="kaggle_3m folder of real slices")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny counts and times")
    parser.add_argument("--mix-size", type=int, default=None, help="slices in the mix (default 96; quick: 24)")
    parser.add_argument("--requests", type=int, default=None, help="requests per level at most (400; quick: 24)")
    parser.add_argument("--seconds", type=float, default=None, help="seconds per level at most (30; quick: 5)")
    parser.add_argument("--naive-threadpool", action="store_true", help="naive server: handler in the thread pool")
    parser.add_argument(
        "--rounds", type=int, default=None, help="paired rounds of ceiling then service (5; quick: 1; 0: none)"
    )
    parser.add_argument("--round-seconds", type=float, default=None, help="seconds per measurement in a round (10)")
    parser.add_argument(
        "--output-dir",
        type=Path,
        default=None,
        help="where the JSON files and server logs go (default: bench/results/<UTC time>)",
    )
    parser.add_argument(
        "--json-out", type=Path, default=None, help="the comparison (default: <output-dir>/compare.json)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not (args.model_dir / "manifest.json").is_file():
        parser.error(f"--model-dir must hold manifest.json; not found: {args.model_dir / 'manifest.json'}")
    profile = dict(QUICK if args.quick else FULL)
    for key in ("mix_size", "requests", "seconds", "rounds", "round_seconds"):
        if getattr(args, key) is not None:
            profile[key] = getattr(args, key)
    output_dir = args.output_dir or REPO_ROOT / "bench" / "results" / datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    output_dir.mkdir(parents=True, exist_ok=True)
    model_dir, data_root = str(args.model_dir.resolve()), str(args.data_root.resolve())
    shared = ["--model-dir", model_dir, "--data-root", data_root, "--mix-size", str(profile["mix_size"])]
    shared += ["--seed", str(args.seed)]
    model = run_step(
        "model ceiling",
        "bench.model_limit",
        [
            *shared,
            "--batch-sizes",
            *map(str, profile["batch_sizes"]),
            "--seconds",
            str(profile["model_seconds"]),
            *(["--min-batches", "2", "--warmup-batches", "1"] if args.quick else []),
        ],
        output_dir / "model_limit.json",
    )
    load = [
        *shared,
        "--concurrency",
        *map(str, profile["concurrency"]),
        "--requests",
        str(profile["requests"]),
        "--seconds",
        str(profile["seconds"]),
        "--warmup-requests",
        str(profile["warmup_requests"]),
    ]
    service = run_step(
        "service over HTTP",
        "bench.http_load",
        [*load, "--server", "service", "--server-log", str(output_dir / "service.log")],
        output_dir / "http_service.json",
    )
    naive = run_step(
        "naive server over HTTP",
        "bench.http_load",
        [
            *load,
            "--server",
            "naive",
            "--server-log",
            str(output_dir / "naive.log"),
            *(["--naive-threadpool"] if args.naive_threadpool else []),
        ],
        output_dir / "http_naive.json",
    )

    ratios = compute_ratios(model, service, naive)
    best_batch = (model.get("ceiling") or {}).get("batch_size") or max(profile["batch_sizes"])
    rounds = paired_rounds(Path(model_dir), profile, shared, best_batch, output_dir) if profile["rounds"] > 0 else []
    single_run = {name: ratios[name] for name in PAIRED_RATIOS}
    if rounds:
        ratios.update(median_ratios(rounds))
    targets = check_targets(ratios)
    rows = side_by_side(service, naive)
    ceiling = model.get("ceiling") or {}
    print("\n=== service vs naive server (same mix, same load script)")
    print(format_table(rows, list(rows[0]) if rows else []))
    print(
        f"\nmodel ceiling (gated pipeline, batch {ceiling.get('batch_size')}): {ceiling.get('images_per_s')} images/s;"
        f" pipeline at batch 1: p50 {(model.get('pipeline_batch1') or {}).get('p50_ms')} ms"
    )
    if rounds:
        print(f"\n=== paired rounds (ceiling, then the service at 1 and 16, {profile['round_seconds']:g} s each)")
        print(format_table(rounds, list(rounds[0])))
        print(f"single run above: {single_run}; the targets below take the median of the rounds")
    print("\n=== targets" + ("  (QUICK RUN: smoke test only, the numbers mean nothing)" if args.quick else ""))
    print(format_table(targets, ["metric", "value", "target", "met"]))
    summary = {
        "benchmark": "compare",
        "quick": args.quick,
        "machine": machine_description(),
        "model_dir": model_dir,
        "models": model.get("models"),
        "profile": profile,
        "ratios": ratios,
        "single_run_ratios": single_run,
        "paired_rounds": rounds,
        "targets": targets,
        "side_by_side": rows,
        "ceiling": ceiling,
        "pipeline_batch1": model.get("pipeline_batch1"),
        "files": {
            name: str(output_dir / file)
            for name, file in (
                ("model_limit", "model_limit.json"),
                ("http_service", "http_service.json"),
                ("http_naive", "http_naive.json"),
            )
        },
    }
    json_out = args.json_out or output_dir / "compare.json"
    emit_summary(summary, json_out, print_json=False)
    print(f"\nwritten: {json_out} (and the step summaries beside it in {output_dir})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
