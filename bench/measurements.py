"""What the benchmarks measure and print: process memory and CPU, percentiles, the machine, tables and JSON output.

Kept free of TensorFlow and of the service's code so the HTTP load generator stays a light client process.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL_DIR = REPO_ROOT / "models"


def process_memory(pid: int) -> dict[str, float] | None:
    """Resident memory of a process in MiB, now (`rss_mib`) and at its peak (`peak_rss_mib`), from /proc (Linux).

    None where /proc is not there or the process is gone: memory is then simply not reported.
    """
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    values = {}
    for line in status.splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) / 1024.0  # kB -> MiB
    if "VmRSS" not in values:
        return None
    return {"rss_mib": round(values["VmRSS"], 1), "peak_rss_mib": round(values.get("VmHWM", values["VmRSS"]), 1)}


def process_cpu_seconds(pid: int) -> float | None:
    """CPU time (user + system, all threads) a process has used so far, from /proc (Linux); None if unavailable."""
    try:
        # Fields after the command name, which is in parentheses and may hold spaces: utime and stime are the 12th
        # and 13th of them (fields 14 and 15 of proc(5)), in clock ticks.
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def time_calls(call: Callable[[], object], calls: int, warmup: int = 0) -> list[float]:
    """Seconds each of `calls` calls of `call()` took, after `warmup` calls that are not timed.

    The one timing loop of the benchmarks (newcomer review 45 F22: three scripts each wrote their own).
    """
    for _ in range(warmup):
        call()
    seconds = []
    for _ in range(calls):
        started = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - started)
    return seconds


def median_ms(seconds: Sequence[float]) -> float:
    """Median of durations given in seconds, in milliseconds to the microsecond: `statistics.median`, so an even
    count gives the mean of the two middle values (not the upper one)."""
    return round(1000.0 * statistics.median(seconds), 3)


def percentiles_ms(seconds: Sequence[float]) -> dict[str, float | None]:
    """p50/p95/p99/mean/max of durations given in seconds, in milliseconds (None for an empty list)."""
    if not seconds:
        return {"p50_ms": None, "p95_ms": None, "p99_ms": None, "mean_ms": None, "max_ms": None}
    values = np.asarray(seconds, dtype=np.float64) * 1000.0
    p50, p95, p99 = np.percentile(values, [50, 95, 99])
    return {
        "p50_ms": round(float(p50), 2),
        "p95_ms": round(float(p95), 2),
        "p99_ms": round(float(p99), 2),
        "mean_ms": round(float(values.mean()), 2),
        "max_ms": round(float(values.max()), 2),
    }


def machine_description() -> dict:
    """Where the numbers came from: they only compare within one machine."""
    description = {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "git_commit": _git_commit(),
    }
    return description


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return None


def _git_commit() -> str | None:
    try:
        result = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None


def format_table(rows: Sequence[dict], columns: Sequence[str]) -> str:
    """Plain-text table of `rows` (dicts) with the given columns; None shows as '-'."""

    def cell(value: object) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.3g}" if abs(value) < 0.01 and value != 0 else f"{value:.2f}"
        return str(value)

    cells = [[cell(row.get(column)) for column in columns] for row in rows]
    widths = [max([len(column)] + [len(line[index]) for line in cells]) for index, column in enumerate(columns)]
    lines = ["  ".join(column.rjust(width) for column, width in zip(columns, widths, strict=True))]
    lines.append("  ".join("-" * width for width in widths))
    lines.extend("  ".join(value.rjust(width) for value, width in zip(line, widths, strict=True)) for line in cells)
    return "\n".join(lines)


def emit_summary(summary: dict, json_out: Path | None, print_json: bool = True) -> None:
    """Print the JSON summary (unless `print_json` is false) and, if asked, write it to `json_out`."""
    text = json.dumps(summary, indent=2)
    if print_json:
        print(text)
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(text + "\n")
    sys.stdout.flush()
