"""What the load generator's HTTP client costs: CPU per request of httpx and aiohttp against the same cheap endpoint.

    python -m bench.client_overhead --model-dir models

Starts the service (as `bench.http_load` does), then, for each client and concurrency, sends `GET /health/live`
(no model work, so the client's own cost is a large share of the total) for `--seconds` and reports requests/s and
the client process's CPU time per request. This is why `bench.http_load` uses aiohttp: on a loaded machine every
millisecond the client spends is taken from the server it measures.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import aiohttp
import httpx

from bench.http_load import ready_service
from bench.measurements import DEFAULT_MODEL_DIR, emit_summary, format_table, machine_description

LIVE_PATH = "/health/live"


async def measure(send: Callable[[], Awaitable[None]], concurrency: int, seconds: float) -> dict[str, float]:
    """Keep `concurrency` calls of `send` going for `seconds`; requests/s and client CPU ms per request."""
    done = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            await send()
            done += 1

    started, cpu_started = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    return {"requests_per_s": round(done / elapsed, 1), "client_cpu_ms_per_request": round(1000 * cpu / done, 3)}


async def run(url: str, concurrency_levels: Sequence[int], seconds: float) -> list[dict]:
    rows = []
    limit = max(concurrency_levels)
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=limit), trust_env=False) as client:

        async def send_httpx() -> None:
            (await client.get(url)).raise_for_status()

        for concurrency in concurrency_levels:
            rows.append(
                {"client": "httpx", "concurrency": concurrency, **await measure(send_httpx, concurrency, seconds)}
            )
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=limit)) as session:

        async def send_aiohttp() -> None:
            async with session.get(url) as response:
                response.raise_for_status()
                await response.read()

        for concurrency in concurrency_levels:
            rows.append(
                {"client": "aiohttp", "concurrency": concurrency, **await measure(send_aiohttp, concurrency, seconds)}
            )
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR, help="folder with manifest.json")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--seconds", type=float, default=8.0, help="seconds per (client, concurrency)")
    parser.add_argument("--ready-timeout", type=float, default=180.0, help="seconds to wait for readiness")
    parser.add_argument("--json-out", type=Path, default=None, help="also write the JSON summary here")
    args = parser.parse_args(argv)
    if min(args.concurrency) < 1 or args.seconds <= 0:
        parser.error(f"--concurrency must be >= 1 and --seconds > 0; got {args.concurrency}, {args.seconds}")
    log_path = Path(tempfile.mkstemp(prefix="bench-client-overhead-", suffix=".log")[1])
    with ready_service(args.model_dir.resolve(), log_path, args.ready_timeout) as server:
        rows = asyncio.run(run(server.base_url + LIVE_PATH, args.concurrency, args.seconds))
    summary = {"benchmark": "client_overhead", "machine": machine_description(), "endpoint": LIVE_PATH, "rows": rows}
    print(format_table(summary["rows"], ["client", "concurrency", "requests_per_s", "client_cpu_ms_per_request"]))
    emit_summary(summary, args.json_out, print_json=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
