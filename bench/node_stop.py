"""How long `brain-tumor dicom-node` takes from SIGTERM to exit, in three states.

    python -m bench.node_stop

Each case starts the node on the committed models with a destination that accepts TCP and never answers (the
sender's worst case), then sends SIGTERM: idle once it is listening; 2.6 s after an 80-slice study arrived (quiet
period 2 s, so inside the analysis); and after a 3-slice study was analysed, while its send waits on the silent
destination (`DICOM_NODE_SEND_TIMEOUT_SECONDS=20`). Prints each case's exit code and seconds. The studies are
synthetic (the committed test slices, tiled), sent with dcmtk's `storescu`. Takes no options but `--help`.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from tests.conftest import REPO_ROOT
from tests.dicom.builders import mr_series, tumor_channels, write_files

QUIET_SECONDS = "2"
AE_TITLE = "BRAINTUMOR"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class SilentDestination:
    """A TCP listener that accepts associations and never answers them."""

    def __init__(self) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(8)
        self.port = self.listener.getsockname()[1]
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                self.held.append(self.listener.accept()[0])
            except OSError:
                return


def start_node(folder: Path, port: int, destination: int) -> tuple[subprocess.Popen, Path]:
    env = dict(
        os.environ,
        PYTHONPATH=str(REPO_ROOT),
        DICOM_NODE_SPOOL_DIR=str(folder / "spool"),
        DICOM_NODE_PORT=str(port),
        DICOM_NODE_DESTINATIONS=f"DEST@127.0.0.1:{destination}",
        DICOM_NODE_QUIET_SECONDS=QUIET_SECONDS,
        DICOM_NODE_SEND_TIMEOUT_SECONDS="20",
    )
    log = folder / "node.log"
    with log.open("w") as stderr:
        node = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "dicom-node"],
            cwd=REPO_ROOT,
            env=env,
            stderr=stderr,
            stdout=subprocess.DEVNULL,
        )
    return node, log


def wait_for_line(log: Path, text: str, seconds: float = 300.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if text in log.read_text():
            return
        time.sleep(0.1)
    raise SystemExit(f"no {text!r} in the node's log within {seconds:g} s:\n{log.read_text()[-2000:]}")


def store(port: int, files: list[Path]) -> None:
    subprocess.run(
        ["storescu", "-aec", AE_TITLE, "127.0.0.1", str(port), *map(str, files)], capture_output=True, timeout=300
    )


def stop_seconds(node: subprocess.Popen) -> tuple[int | str, float]:
    started = time.monotonic()
    node.send_signal(signal.SIGTERM)
    try:
        code: int | str = node.wait(timeout=300)
    except subprocess.TimeoutExpired:
        node.kill()
        code = "killed after 300 s"
    return code, time.monotonic() - started


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.parse_args(argv)
    channels = tumor_channels()
    small = mr_series(channels)
    large = mr_series([channels[index % len(channels)] for index in range(80)])
    for case in ("idle", "during an analysis", "sending to a silent destination"):
        with tempfile.TemporaryDirectory() as temporary:
            folder = Path(temporary)
            destination = SilentDestination()
            port = free_port()
            node, log = start_node(folder, port, destination.port)
            wait_for_line(log, "DICOM node listening")
            if case == "during an analysis":
                store(port, write_files(large, folder / "large"))
                time.sleep(2.6)
            elif case == "sending to a silent destination":
                store(port, write_files(small, folder / "small"))
                wait_for_line(log, "study processed")
                time.sleep(2.0)
            else:
                time.sleep(2.0)
            code, seconds = stop_seconds(node)
            print(f"{case}: exit {code}, SIGTERM to exit {seconds:.1f} s", flush=True)


if __name__ == "__main__":
    main()
