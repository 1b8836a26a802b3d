"""A destination that is down costs one study's try per pass, not one per study.

Each try of a destination that cannot be reached costs the sender's retries, their waits and, behind a firewall,
their timeouts (4 retries of 30 s and 30 s of waits: 3 minutes a study). Before, every study with results to send
paid that on every pass, so with 50 studies waiting a pass took hours and results of a new study waited behind
them; the studies after the first in a pass would only have failed the same way.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.dicom.builders import Study, mr_series, tumor_channels, write_files
from tests.node.node_support import QUIET_SECONDS, Clock, ResultStore, free_port, process_ready, storescu


def studies_tried(spool: Path) -> set[str]:
    """Keys of the studies whose results the node tried to send (``sent.jsonl``)."""
    log = spool / "sent.jsonl"
    return {json.loads(line)["study_key"] for line in log.read_text().splitlines()} if log.exists() else set()


def test_a_destination_that_is_down_is_tried_with_one_study_per_pass_and_gets_all_once_back(
    make_node: Any, clock: Clock, tmp_path: Path
) -> None:
    port = free_port()  # nothing listens there yet
    node = make_node(destination_port=port, send_retries=1, send_backoff_seconds=10.0)
    for index in range(3):
        files = write_files(mr_series(tumor_channels()[:2], Study()), tmp_path / f"study{index}")
        assert storescu(node, files).returncode == 0
    clock.advance(QUIET_SECONDS)
    assert len(process_ready(node)) == 3

    assert node.send_unsent() == 1  # one study tried; the other two not, the destination being down
    assert len(studies_tried(node.spool.root)) == 1
    clock.advance(15.0)  # the first study's wait is 20 s, the destination's 20 s too
    assert node.send_unsent() == 0
    assert len(studies_tried(node.spool.root)) == 1
    clock.advance(10.0)
    assert node.send_unsent() == 1  # one more try, of a study whose wait has passed
    assert node.send_unsent() == 0  # and the destination waits longer now: 40 s

    back = ResultStore(port)
    try:
        clock.advance(700.0)  # past every wait (at most 10 minutes)
        assert node.send_unsent() == 3
        assert sorted(dataset.Modality for dataset in back.received) == ["SEG"] * 3 + ["SR"] * 3
        assert node.spool.unsent_studies() == []
    finally:
        back.close()
