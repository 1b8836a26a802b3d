"""What the DICOM node's background passes cost as its spool fills with studies it has long finished.

A node that has run for months holds a folder per study it ever received. Its worker looks for pending studies every
second, each sender looks for studies with results still to send, the purge looks for studies past their retention
every hour, and each new study is counted against the pending-study cap under the store lock. This builds a
spool of `--studies` settled studies (a record each, instances already purged, as after the retention time),
`--unsent` studies whose results wait for a destination that is down (next attempt in 10 minutes), and a few pending
studies, and times each of those steps through the node's public methods. It starts no listener and loads no model
(the processor is never called: the pending studies are not yet quiet).

    python -m bench.spool_scale --studies 50000 --unsent 100
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from app.node.dicom_node import DicomNode
from app.node.dicom_sender import Destination
from app.node.dicom_spool import study_key
from app.node.node_config import NodeConfig
from app.study_analysis import StudyAnalysis
from bench.measurements import format_table, median_ms, time_calls

DAY = 24 * 3600.0


def never_called(files: Any, notes: Any = ()) -> StudyAnalysis:
    raise AssertionError("no study is quiet in this benchmark")


def settled_record(finished: float) -> dict[str, Any]:
    """The record of a study analysed and delivered: what stays in the spool once its instances are purged."""
    run = {"run_id": "r", "fingerprint": "f", "status": "analysed", "results": [], "sent": {}}
    return {"runs": [run], "finished_at": finished}


def build_spool(root: Path, studies: int, now: float) -> None:
    """`studies` settled studies, their records `30 + i % 400` days old (some past any retention, most not)."""
    for index in range(studies):
        directory = root / "studies" / study_key(f"1.2.3.{index}", "bench")
        directory.mkdir(parents=True)
        record = directory / "record.json"
        record.write_text(json.dumps(settled_record(now)))
        age = (30 + index % 400) * DAY
        os.utime(record, (now - age, now - age))


def add_unsent(node: DicomNode, studies: int, now: float) -> None:
    """`studies` studies whose results failed to reach the destination, to be tried again in 10 minutes."""
    (destination,) = node.config.destinations
    state = {"status": "failed", "attempts": 5, "next_attempt_at": now + 600.0}
    for index in range(studies):
        key = study_key(f"7.7.{index}", "bench")
        run = {
            "run_id": "r",
            "fingerprint": "f",
            "status": "analysed",
            "results": [],
            "sent": {str(destination): state},
        }
        node.spool.study_dir(key).mkdir(parents=True)
        node.spool.write_record(key, {"runs": [run]})
        node.spool.mark_unsent(key)


def timed(step: Callable[[], object], repeats: int) -> float:
    """Median wall time of `step()` over `repeats` calls, in milliseconds."""
    return median_ms(time_calls(step, repeats))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--studies", type=int, default=50_000, help="settled studies in the spool")
    parser.add_argument("--unsent", type=int, default=100, help="studies whose results wait for a destination")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--spool-dir", type=Path, help="where to build the spool (default: a temporary folder)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(dir=args.spool_dir) as folder:
        root = Path(folder) / "spool"
        now = time.time()
        start = time.perf_counter()
        build_spool(root, args.studies, now)
        built_s = time.perf_counter() - start
        config = NodeConfig(
            spool_dir=root,
            quiet_seconds=3600.0,  # nothing becomes quiet: process_ready only looks
            destinations=(Destination("NOWHERE", "127.0.0.1", 9),),
        )
        node = DicomNode(config, never_called)
        add_unsent(node, args.unsent, now)
        for index in range(5):  # a few studies arriving
            node.spool.store_instance(f"9.9.{index}", "bench", "9.9.9.1", b"x" * 1024)
        rows = [
            ("worker pass: pending studies", timed(node.process_ready, args.repeats)),
            ("sender pass: studies with results to send", timed(node.send_unsent, args.repeats)),
        ]
        counter = iter(range(10**9))
        rows.append(
            (
                "store the first instance of a new study",
                timed(lambda: node.spool.store_instance(f"8.8.{next(counter)}", "bench", "8.8.1", b"x"), args.repeats),
            )
        )
        rows.append(("purge pass that removes what expired", timed(node.purge_expired, 1)))
        rows.append(("purge pass (every hour)", timed(node.purge_expired, args.repeats)))
        left = sum(1 for _ in (root / "studies").iterdir())
    print(
        f"spool of {args.studies} settled studies and {args.unsent} unsent built in {built_s:.1f} s; "
        f"{left} study folders after one purge"
    )
    print(format_table([{"step": name, "median ms": round(value, 2)} for name, value in rows], ["step", "median ms"]))


if __name__ == "__main__":
    main()
