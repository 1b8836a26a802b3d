"""Load the running service (or the naive baseline) over HTTP on loopback with real slices; report what clients see.

    python -m bench.http_load --server service --model-dir models --json-out bench/results/http_service.json
    python -m bench.http_load --server naive   --model-dir models --json-out bench/results/http_naive.json
    python -m bench.http_load --url http://127.0.0.1:8000 --server-pid 1234   # a server you started yourself

Starts the server as a subprocess on a free loopback port (unless `--url`), measures the time from process start to
the first 200 from GET /health/ready, sends a few warm-up requests (not counted), then at each concurrency level keeps
that many POST /v1/predict requests in flight, each with one real slice of the mix (about one third with tumor),
until the level's request count or its time is used up, whichever comes first. Reports throughput (successful
requests per second), latency percentiles of the successful requests, errors (any non-200, or no response), the
server's CPU time per request and its resident memory. The client runs on the same machine and takes some of its
CPU, as any loopback test does; each level reports how much (`client_cpu_ms_per_request`). The client is aiohttp:
`bench.client_overhead` measured httpx's AsyncClient at 1.7 ms of CPU per request at concurrency 1 and 4.3 ms at 64
(aiohttp: 0.3 ms at both), and on a GPU machine httpx held the service at concurrency 64 to 157 req/s where aiohttp
measured 348.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import itertools
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp

from bench.measurements import (
    DEFAULT_MODEL_DIR,
    REPO_ROOT,
    emit_summary,
    format_table,
    machine_description,
    percentiles_ms,
    process_cpu_seconds,
    process_memory,
)
from bench.slice_mix import (
    DEFAULT_DATA_ROOT,
    DEFAULT_MIX_SIZE,
    DEFAULT_SEED,
    DEFAULT_TUMOR_FRACTION,
    MixSlice,
    mix_description,
    select_mix,
)

DEFAULT_CONCURRENCY = (1, 4, 16, 64)
PREDICT_PATH = "/v1/predict"
READY_PATH = "/health/ready"
CONTENT_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".tif": "image/tiff"}
SERVICE_ENV_PREFIXES = (
    "INFERENCE_",
    "BACKEND",
    "MAX_",
    "LOG_LEVEL",
    "REQUEST_TIMEOUT",
    "RATE_LIMIT",
    "TF_NUM_",
    "TF_ENABLE_",
    "OMP_",
    "KERAS_",
    "XLA_",
    "JAX_",
    "CUDA_VISIBLE",
)


@dataclass(frozen=True)
class Upload:
    """One ready-made multipart request body (built once, so the client spends its CPU on sending, not encoding)."""

    body: bytes
    tumor: bool


@dataclass
class LevelResult:
    """What one concurrency level measured; latencies are of the successful (200) requests only."""

    concurrency: int
    requests: int
    ok: int
    errors: int
    seconds: float
    throughput_rps: float
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    mean_ms: float | None
    max_ms: float | None
    detected_fraction: float | None
    client_cpu_ms_per_request: float | None
    error_kinds: dict[str, int] = field(default_factory=dict)
    server_memory: dict[str, float] | None = None
    server_cpu_ms_per_request: float | None = None


@dataclass
class ServerProcess:
    """A server this script started: the process, its base URL and log file, and when it was started."""

    process: subprocess.Popen
    base_url: str
    log_path: Path
    started: float


def build_uploads(mix: Sequence[MixSlice], boundary: str = "bench-7d1f3a9c") -> tuple[list[Upload], dict[str, str]]:
    """Multipart bodies with the one `file` field that POST /v1/predict takes, and the header that goes with them."""
    uploads = []
    for item in mix:
        content_type = CONTENT_TYPES.get(item.path.suffix.lower(), "application/octet-stream")
        head = (
            f"--{boundary}\r\n"
            f'Content-Disposition: form-data; name="file"; filename="slice{item.path.suffix.lower()}"\r\n'
            f"Content-Type: {content_type}\r\n\r\n"
        ).encode()
        uploads.append(Upload(head + item.path.read_bytes() + f"\r\n--{boundary}--\r\n".encode(), item.tumor))
    return uploads, {"content-type": f"multipart/form-data; boundary={boundary}"}


def require_loopback(url: str) -> str:
    """Return `url` without a trailing slash if its host is a loopback address; this tool loads only local servers.

    Raises
    ------
    ValueError
        If the URL is not http(s) or its host is not loopback.
    """
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"--url must be http:// or https://; got {url!r}")
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(f"--url must point to a loopback address (127.0.0.0/8, ::1, localhost); got host {host!r}")
    return url.rstrip("/")


def free_port() -> int:
    """A port nothing listens on right now (the OS picks it); the server binds it a moment later."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def server_command(kind: str, model_dir: Path, port: int, naive_threadpool: bool) -> tuple[list[str], dict[str, str]]:
    """Command and environment for `brain-tumor serve` (the service) or `bench/naive_server.py` (the baseline)."""
    env = dict(os.environ)
    if kind == "service":
        script = Path(sys.executable).with_name("brain-tumor")
        command = [str(script), "serve"] if script.is_file() else [sys.executable, "-m", "app.cli", "serve"]
        env.update({"HOST": "127.0.0.1", "PORT": str(port), "MODEL_DIR": str(model_dir)})
        return command, env
    command = [sys.executable, str(REPO_ROOT / "bench" / "naive_server.py"), "--model-dir", str(model_dir)]
    command += ["--host", "127.0.0.1", "--port", str(port)] + (["--threadpool"] if naive_threadpool else [])
    return command, env


def start_server(kind: str, model_dir: Path, log_path: Path, naive_threadpool: bool = False) -> ServerProcess:
    """Start the server in its own process with its output in `log_path` (a pipe nobody reads could fill and stall
    it)."""
    port = free_port()
    command, env = server_command(kind, model_dir, port, naive_threadpool)
    log = log_path.open("wb")
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    log.close()  # the child holds its own descriptor
    return ServerProcess(process, f"http://127.0.0.1:{port}", log_path, started)


def stop_server(server: ServerProcess, grace_seconds: float = 40.0) -> int | None:
    """Ask the server to shut down (SIGTERM: uvicorn finishes in-flight requests), then kill it if it hangs."""
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGTERM)
        try:
            server.process.wait(grace_seconds)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait(10)
    return server.process.returncode


@contextmanager
def ready_service(model_dir: Path, log_path: Path, timeout: float = 300.0) -> Iterator[ServerProcess]:
    """The service started in its own process and ready (`wait_ready`); stopped on leaving the block."""
    server = start_server("service", model_dir, log_path)
    try:

        async def ready() -> None:
            async with aiohttp.ClientSession() as client:
                await wait_ready(client, server.base_url, timeout, server)

        asyncio.run(ready())
        yield server
    finally:
        stop_server(server)


def log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


async def wait_ready(
    client: aiohttp.ClientSession, base_url: str, timeout: float, server: ServerProcess | None = None
) -> float:
    """Poll readiness every 50 ms; return seconds from the server's start (or from now, for `--url`) to the first 200.

    Raises
    ------
    RuntimeError
        If the server exits first, or is not ready within `timeout` seconds.
    """
    started = server.started if server is not None else time.perf_counter()
    while True:
        if server is not None and server.process.poll() is not None:
            raise RuntimeError(
                f"the server exited with code {server.process.returncode} before it was ready; "
                f"end of {server.log_path}:\n{log_tail(server.log_path)}"
            )
        try:
            async with client.get(base_url + READY_PATH, timeout=aiohttp.ClientTimeout(total=2.0)) as response:
                if response.status == 200:
                    return time.perf_counter() - started
        except (aiohttp.ClientError, TimeoutError):
            pass  # not listening yet
        if time.perf_counter() - started > timeout:
            raise RuntimeError(f"{base_url}{READY_PATH} did not answer 200 within {timeout} s")
        await asyncio.sleep(0.05)


async def run_level(
    client: aiohttp.ClientSession,
    url: str,
    uploads: Sequence[Upload],
    headers: dict[str, str],
    concurrency: int,
    max_requests: int,
    max_seconds: float,
) -> LevelResult:
    """Keep `concurrency` requests in flight until `max_requests` were sent or `max_seconds` passed.

    Requests already sent when time runs out still finish (each bounded by the client's timeout), so a level ends by
    itself. Every level sends the mix from its start, so short levels see the same slices.
    """
    counter = itertools.count()
    latencies: list[float] = []
    error_kinds: Counter[str] = Counter()
    detected = 0
    started = time.perf_counter()
    cpu_started = time.process_time()
    deadline = started + max_seconds

    async def worker() -> None:
        nonlocal detected
        while True:
            index = next(counter)
            if index >= max_requests or time.perf_counter() >= deadline:
                return
            upload = uploads[index % len(uploads)]
            sent = time.perf_counter()
            try:
                async with client.post(url, data=upload.body, headers=headers) as response:
                    if response.status != 200:
                        await response.read()
                        error_kinds[str(response.status)] += 1
                        continue
                    body = await response.json()
            except (aiohttp.ClientError, TimeoutError) as error:
                error_kinds[type(error).__name__] += 1
                continue
            latencies.append(time.perf_counter() - sent)
            detected += bool(body.get("tumor_detected"))

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    seconds = time.perf_counter() - started
    client_cpu_seconds = time.process_time() - cpu_started
    errors = sum(error_kinds.values())
    return LevelResult(
        concurrency=concurrency,
        requests=len(latencies) + errors,
        ok=len(latencies),
        errors=errors,
        seconds=round(seconds, 3),
        throughput_rps=round(len(latencies) / seconds, 2) if seconds > 0 else 0.0,
        **percentiles_ms(latencies),
        detected_fraction=round(detected / len(latencies), 3) if latencies else None,
        client_cpu_ms_per_request=round(1000 * client_cpu_seconds / (len(latencies) + errors), 3)
        if latencies or errors
        else None,
        error_kinds=dict(error_kinds),
    )


async def run_benchmark(args: argparse.Namespace) -> dict:
    """Start (or reach) the server, wait for readiness, warm up, run every level, stop the server; return the
    summary."""
    mix = select_mix(args.data_root, args.mix_size, args.tumor_fraction, args.seed)
    uploads, headers = build_uploads(mix)
    if args.api_key:
        headers["X-API-Key"] = args.api_key
    server: ServerProcess | None = None
    if args.url:
        base_url, kind, pid = require_loopback(args.url), "url", args.server_pid
    else:
        kind = args.server
        log_path = args.server_log or Path(tempfile.mkstemp(prefix=f"bench-{kind}-", suffix=".log")[1])
        server = start_server(kind, args.model_dir.resolve(), log_path, args.naive_threadpool)
        base_url, pid = server.base_url, server.process.pid

    def memory() -> dict[str, float] | None:
        return process_memory(pid) if pid else None

    # trust_env=False (the default): proxy variables must never route loopback traffic elsewhere.
    client = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=max(args.concurrency)),
        timeout=aiohttp.ClientTimeout(total=args.request_timeout),
        trust_env=False,
    )
    summary: dict = {
        "benchmark": "http_load",
        "server": kind,
        "url": base_url,
        "machine": machine_description(),
        "mix": mix_description(mix, args.data_root, args.seed),
        "model_dir": None if args.url else str(args.model_dir),
        "server_env": {key: value for key, value in sorted(os.environ.items()) if key.startswith(SERVICE_ENV_PREFIXES)},
        "settings": {
            "concurrency": args.concurrency,
            "requests_per_level": args.requests,
            "seconds_per_level": args.seconds,
            "warmup_requests": args.warmup_requests,
            "request_timeout_s": args.request_timeout,
            "naive_threadpool": args.naive_threadpool if kind == "naive" else None,
        },
    }
    levels: list[LevelResult] = []
    try:
        async with client:
            summary["time_to_ready_s"] = round(await wait_ready(client, base_url, args.ready_timeout, server), 2)
            summary["memory_at_ready"] = memory()
            url = base_url + PREDICT_PATH
            if args.warmup_requests:
                warmup = await run_level(
                    client, url, uploads, headers, min(4, args.warmup_requests), args.warmup_requests, args.seconds
                )
                summary["warmup"] = {"requests": warmup.requests, "errors": warmup.errors}
            summary["memory_before"] = memory()
            for concurrency in args.concurrency:
                cpu_before = process_cpu_seconds(pid) if pid else None
                level = await run_level(client, url, uploads, headers, concurrency, args.requests, args.seconds)
                cpu_after = process_cpu_seconds(pid) if pid else None
                if cpu_before is not None and cpu_after is not None and level.requests:
                    level.server_cpu_ms_per_request = round(1000 * (cpu_after - cpu_before) / level.requests, 2)
                level.server_memory = memory()
                levels.append(level)
                # One line per level as it ends, for a run stopped at a time limit.
                print(
                    f"c={concurrency}: {level.throughput_rps} req/s, p50 {level.p50_ms} ms, errors {level.errors}",
                    flush=True,
                )
                if server is not None and server.process.poll() is not None:
                    raise RuntimeError(f"the server exited during the c={concurrency} level; see {server.log_path}")
            summary["memory_after"] = memory()
    finally:
        if server is not None:
            summary["server_exit_code"] = stop_server(server)
            summary["server_log"] = str(server.log_path)
    summary["levels"] = [asdict(level) for level in levels]
    summary["errors_total"] = sum(level.errors for level in levels)
    return summary


def print_table(summary: dict) -> None:
    rows = [
        {**level, "rss_mib": (level.get("server_memory") or {}).get("rss_mib")} for level in summary.get("levels", [])
    ]
    columns = ["concurrency", "requests", "ok", "errors", "seconds", "throughput_rps", "p50_ms", "p95_ms", "p99_ms"]
    print(f"{summary['server']} at {summary['url']}: ready after {summary.get('time_to_ready_s')} s")
    extra_columns = ["detected_fraction", "client_cpu_ms_per_request", "server_cpu_ms_per_request", "rss_mib"]
    print(format_table(rows, [*columns, *extra_columns]))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    target = parser.add_argument_group("target")
    target.add_argument("--server", choices=("service", "naive"), default="service", help="which server to start")
    target.add_argument("--url", default=None, help="load this already-running loopback server instead")
    target.add_argument("--server-pid", type=int, default=None, help="with --url: its process id, for memory")
    target.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR, help="folder with manifest.json")
    target.add_argument("--naive-threadpool", action="store_true", help="naive server: handler in the thread pool")
    target.add_argument("--server-log", type=Path, default=None, help="server output (default: a file in /tmp)")
    target.add_argument("--api-key", default=None, help="X-API-Key to send, if the server requires one")
    target.add_argument("--ready-timeout", type=float, default=180.0, help="seconds to wait for readiness")
    data = parser.add_argument_group("data")
    data.add_argument("--data-root", type=Path, default=DEFAULT_DATA_ROOT, help="kaggle_3m folder of real slices")
    data.add_argument("--mix-size", type=int, default=DEFAULT_MIX_SIZE, help="slices in the mix")
    data.add_argument("--tumor-fraction", type=float, default=DEFAULT_TUMOR_FRACTION)
    data.add_argument("--seed", type=int, default=DEFAULT_SEED)
    load = parser.add_argument_group("load")
    load.add_argument("--concurrency", type=int, nargs="+", default=list(DEFAULT_CONCURRENCY))
    load.add_argument("--requests", type=int, default=400, help="requests per level at most")
    load.add_argument("--seconds", type=float, default=30.0, help="seconds per level at most (new requests stop)")
    load.add_argument("--warmup-requests", type=int, default=16, help="uncounted requests before the first level")
    load.add_argument("--request-timeout", type=float, default=120.0, help="seconds one request may take")
    parser.add_argument("--json-out", type=Path, default=None, help="also write the JSON summary here")
    parser.add_argument("--quiet", action="store_true", help="print the table only, not the JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if min(args.concurrency) < 1 or args.requests < 1 or args.seconds <= 0 or args.warmup_requests < 0:
        parser.error(
            "--concurrency and --requests must be >= 1, --seconds > 0 and --warmup-requests >= 0; got "
            f"{args.concurrency}, {args.requests}, {args.seconds}, {args.warmup_requests}"
        )
    if args.url:
        try:
            require_loopback(args.url)
        except ValueError as error:
            parser.error(str(error))
    elif not (args.model_dir / "manifest.json").is_file():
        parser.error(f"--model-dir must hold manifest.json; not found: {args.model_dir / 'manifest.json'}")
    summary = asyncio.run(run_benchmark(args))
    print_table(summary)
    emit_summary(summary, args.json_out, print_json=not args.quiet)
    return 0  # errors are part of the measurement, reported in the summary


if __name__ == "__main__":
    raise SystemExit(main())
