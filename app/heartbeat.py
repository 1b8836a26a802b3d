"""The heartbeat of the daemons that serve no HTTP, and the health check that reads it.

`dicom-node` and `pacs-sync` answer no HTTP request, so the probe the API gets (`GET /health/ready`) cannot tell
whether they are up: run from the image as they are, its HEALTHCHECK called them unhealthy for ever, and an
orchestrator that restarts unhealthy containers (Swarm, autoheal) restarted them every few minutes. So each writes
a small JSON file (`HEARTBEAT_FILE`): `starting` while its models load, then `ready` every `BEAT_SECONDS` while its
threads run, `failing` with the reason once one has stopped. `brain-tumor health` (`check_health`, the image's
HEALTHCHECK) reads that file when there is one and asks the API's readiness route otherwise; one command in a
container, so one file says which daemon it is.

A heartbeat says the process runs with its models loaded and its threads alive; whether Orthanc or a destination
answers is for the metrics and the logs (a restart would not mend them).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from app.core.durable_files import write_atomically

logger = logging.getLogger(__name__)

BEAT_SECONDS = 10.0
# Six beats missed: a process frozen, or stopped without saying so.
STALE_SECONDS = 60.0

STARTING = "starting"
READY = "ready"
FAILING = "failing"
STOPPED = "stopped"


class UnhealthyError(Exception):
    """What `check_health` found wrong, in one line."""


class HeartbeatFile:
    """The heartbeat one daemon writes; with no path (`HEARTBEAT_FILE` empty), nothing is written."""

    def __init__(self, path: Path | None, command: str, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.command = command
        self.clock = clock
        self._failed = False

    def write(self, state: str, problem: str | None = None) -> None:
        """Replace the file whole, so a reader never sees half of it. A file that cannot be written is logged once
        and otherwise ignored: the daemon's work goes on without its probe."""
        if self.path is None:
            return
        record = {"command": self.command, "state": state, "written_at": self.clock(), "pid": os.getpid()}
        if problem is not None:
            record["problem"] = problem
        try:
            write_atomically(self.path, json.dumps(record).encode())
        except OSError as error:
            if not self._failed:
                self._failed = True
                logger.warning(
                    "heartbeat file cannot be written; the health check will call this process unhealthy",
                    extra={"fields": {"heartbeat_file": str(self.path), "error": error.strerror or str(error)}},
                )

    @contextmanager
    def beating(self, problem: Callable[[], str | None]) -> Iterator[None]:
        """Write `ready` now and every `BEAT_SECONDS` while the block runs (`failing` while `problem()` names one),
        from a thread of its own; `stopped` once the block ends. Without a file, nothing: no thread."""
        if self.path is None:
            yield
            return
        stop = threading.Event()
        seconds = BEAT_SECONDS
        # A beat under way when the block ends must not land after `stopped` (a loaded machine: the file said
        # `ready` after the daemon had stopped, the join below having waited out its time).
        writing = threading.Lock()

        def beat() -> None:
            reason = problem()
            with writing:
                if not stop.is_set():
                    self.write(READY if reason is None else FAILING, reason)

        def keep_beating() -> None:
            while not stop.wait(seconds):
                beat()

        thread = threading.Thread(target=keep_beating, name=f"{self.command}-heartbeat", daemon=True)
        try:
            # Within the `try`: a SIGTERM (KeyboardInterrupt) that comes as the first `ready` is written still
            # leaves `stopped` (it left `ready`, the stopped daemon healthy until the beat went stale).
            beat()
            thread.start()
            yield
        finally:
            with writing:
                stop.set()
            if thread.ident is not None:
                thread.join(timeout=seconds)
            self.write(STOPPED)


def check_heartbeat(path: Path, now: float) -> str:
    """How the daemon whose heartbeat `path` holds is doing, when well; `UnhealthyError` otherwise."""
    try:
        record = json.loads(path.read_text())
        command, state, written_at = record["command"], record["state"], float(record["written_at"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise UnhealthyError(f"heartbeat file {path} unreadable: {error}") from error
    age = now - written_at
    if state == STARTING:
        raise UnhealthyError(f"{command} starting: loading its models ({age:.0f} s ago)")
    if state == FAILING:
        raise UnhealthyError(f"{command} failing: {record.get('problem', 'no reason given')}")
    if state != READY:
        raise UnhealthyError(f"{command} {state}")
    if age > STALE_SECONDS:
        raise UnhealthyError(
            f"{command} silent: its last heartbeat is {age:.0f} s old (one is due every {BEAT_SECONDS:.0f} s)"
        )
    return f"{command} ready (heartbeat {max(age, 0.0):.0f} s ago)"


def check_api_ready(host: str, port: int, timeout: float) -> str:
    """`GET /health/ready` of the API on this machine; `UnhealthyError` unless it answers 200."""
    address = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    url = f"http://{f'[{address}]' if ':' in address else address}:{port}/health/ready"
    try:
        # Never through a proxy (http_proxy in the container's environment): the API asked is this machine's.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(url, timeout=timeout) as answer:
            status = answer.status
    except urllib.error.HTTPError as error:
        raise UnhealthyError(f"API not ready: {url} answered {error.code}") from error
    except (OSError, ValueError) as error:
        raise UnhealthyError(f"API does not answer at {url}: {getattr(error, 'reason', error)}") from error
    return f"API ready ({url} answered {status})"


def check_health(heartbeat_file: Path | None, host: str, port: int, timeout: float = 4.0) -> str:
    """The daemon's heartbeat when `heartbeat_file` exists (dicom-node, pacs-sync), else the API's readiness."""
    if heartbeat_file is not None and heartbeat_file.exists():
        return check_heartbeat(heartbeat_file, time.time())
    try:
        return check_api_ready(host, port, timeout)
    except UnhealthyError as error:
        if heartbeat_file is None:
            raise
        raise UnhealthyError(f"{error}; and no heartbeat of dicom-node or pacs-sync at {heartbeat_file}") from None
