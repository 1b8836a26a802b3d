"""Operations review 28, finding 9: the DICOM node stops within seconds, and what it had not finished is done after
the restart.

SIGTERM took 8 s idle, 28 s during an analysis, and 67 s while the only destination accepted TCP but never answered:
the sender's retries and backoff waits did not look at the stop, and `stop` joined each thread for up to 60 s.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from app.node.dicom_node import DicomNode
from app.node.dicom_sender import Destination
from app.node.dicom_spool import SENT_LOG
from app.node.node_config import NodeConfig
from app.study_analysis import ModelStudyProcessor, StudyAnalysis, StudyProcessor
from tests.dicom.builders import mr_series, tumor_channels, write_files
from tests.node.node_support import (
    CALLING_AE,
    NODE_AE,
    RESULTS_AE,
    ResultStore,
    SilentDestination,
    ThresholdPredictor,
    free_port,
    storescu,
    wait_for,
)

# What the test allows a stop (0.4-0.9 s here, about twice that under the suite's load); the old node took a send
# timeout (20 s here), the association timeout (30 s) or a held analysis (60 s).
STOP_SECONDS = 10.0


def started_node(
    spool: Path, destination_port: int, processor: StudyProcessor | None = None, **settings: Any
) -> DicomNode:
    """A node with real threads and a real clock, its results going to `destination_port`."""
    config = NodeConfig(
        spool_dir=spool,
        ae_title=NODE_AE,
        port=free_port(),
        quiet_seconds=0.3,
        poll_seconds=0.1,
        allowed_calling_ae_titles=(CALLING_AE,),
        destinations=(Destination(RESULTS_AE, "127.0.0.1", destination_port),),
        **settings,
    )
    node = DicomNode(config, processor or ModelStudyProcessor(ThresholdPredictor()))
    node.start()
    return node


def stops_within(node: DicomNode, seconds: float) -> bool:
    """Whether `node.stop()` returns within `seconds` (it goes on in the background otherwise)."""
    stopping = threading.Thread(target=node.stop, daemon=True)
    stopping.start()
    stopping.join(seconds)
    return not stopping.is_alive()


def the_record(spool: Path) -> dict[str, Any]:
    (record_file,) = (spool / "studies").glob("*/record.json")
    return json.loads(record_file.read_text())


def send_study(node: DicomNode, folder: Path) -> None:
    assert storescu(node, write_files(mr_series(tumor_channels()), folder)).returncode == 0


def test_stop_cuts_off_a_send_to_a_destination_that_never_answers_and_the_restart_sends_it_once(
    silent_destination: SilentDestination, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    node = started_node(spool, silent_destination.port, send_retries=2, send_timeout_seconds=20.0)
    send_study(node, tmp_path / "in")
    assert wait_for(lambda: silent_destination.connections == 1, 30)  # the results are being sent, unanswered

    assert stops_within(node, STOP_SECONDS)

    (run,) = the_record(spool)["runs"]
    assert run["sent"] == {f"{RESULTS_AE}@127.0.0.1:{silent_destination.port}": {"status": "pending", "attempts": 0}}
    assert node.spool.unsent_studies() != []  # still to send: not an attempt that failed
    assert not (spool / SENT_LOG).exists()
    assert silent_destination.connections == 1  # no second attempt

    silent_destination.close()  # the destination comes back, on the same address
    results = ResultStore(silent_destination.port)
    restarted = started_node(spool, silent_destination.port)
    try:
        assert wait_for(lambda: len(results.received) == 2, 30)
        assert wait_for(lambda: restarted.spool.unsent_studies() == [], 10)
    finally:
        restarted.stop()
        results.close()
    assert sorted(dataset.Modality for dataset in results.received) == ["SEG", "SR"]  # once each
    assert len(the_record(spool)["runs"]) == 1  # not analysed again


def test_stop_ends_a_backoff_wait_at_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A destination with nothing listening fails at once; the node then waits out the backoff before retrying."""
    spool, port = tmp_path / "spool", free_port()

    def first_attempt_failed() -> bool:
        return any(
            line.getMessage() == "sending results failed" and str(port) in line.fields["destination"]
            for line in caplog.records
        )

    with caplog.at_level(logging.WARNING, logger="app.node.dicom_sender"):
        node = started_node(spool, port, send_retries=3, send_backoff_seconds=60.0)
        send_study(node, tmp_path / "in")
        assert wait_for(first_attempt_failed, 30)

        assert stops_within(node, STOP_SECONDS)

    (run,) = the_record(spool)["runs"]
    (state,) = run["sent"].values()
    assert state["status"] == "pending"  # the attempt cut short by the stop is not charged to the destination
    assert node.spool.unsent_studies() != []


class HeldAnalysis:
    """A study processor that does not finish until the test lets it: an analysis in progress at the stop."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.finish = threading.Event()
        self._processor = ModelStudyProcessor(ThresholdPredictor())
        self.model_tags = self._processor.model_tags

    def __call__(self, files: Sequence[Path], notes: Sequence[str] = (), complete: bool = True) -> StudyAnalysis:
        self.started.set()
        self.finish.wait(60)
        return self._processor(files, notes, complete)


def test_an_analysis_the_stop_does_not_wait_for_leaves_the_study_pending_and_is_done_once_after_the_restart(
    tmp_path: Path,
) -> None:
    spool = tmp_path / "spool"
    results = ResultStore(free_port())
    held = HeldAnalysis()
    node = started_node(spool, results.port, held, stop_seconds=0.5)
    try:
        send_study(node, tmp_path / "in")
        assert held.started.wait(30)

        assert stops_within(node, STOP_SECONDS)
        held.finish.set()  # the abandoned analysis ends after the stop: it must write nothing

        def worker_ended() -> bool:
            return not any(thread.name == "dicom-node-worker" for thread in threading.enumerate())

        assert wait_for(worker_ended, 30)

        assert list((spool / "studies").glob("*/record.json")) == []  # no run recorded, not even an error
        assert list(node.spool.pending_studies()) != []
        assert results.received == []

        restarted = started_node(spool, results.port)
        try:
            assert wait_for(lambda: len(results.received) == 2, 30)
        finally:
            restarted.stop()
        assert len(the_record(spool)["runs"]) == 1
        assert sorted(dataset.Modality for dataset in results.received) == ["SEG", "SR"]
    finally:
        held.finish.set()
        results.close()


def test_stop_cuts_off_an_association_left_open_so_the_process_can_exit(tmp_path: Path, results: ResultStore) -> None:
    """attack review 31: pynetdicom's reader of each association is a non-daemon thread, and the stop left open
    associations running: with a router holding one open, the process went on for the idle timeout (30 s) after
    SIGTERM, and with a peer sending a C-ECHO every few seconds it never exited."""
    node = started_node(tmp_path / "spool", results.port)  # the default association timeout, 30 s
    ae = AE(ae_title=CALLING_AE)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    association = ae.associate("127.0.0.1", node.config.port, ae_title=NODE_AE)
    try:
        assert association.is_established
        assert int(association.send_c_echo().Status) == 0x0000  # busy, not idle
        (accepted,) = node._server.active_associations

        assert stops_within(node, STOP_SECONDS)
        assert wait_for(lambda: not accepted.dul.is_alive() and not accepted.is_alive(), STOP_SECONDS)
        assert wait_for(lambda: not association.is_established, STOP_SECONDS)  # the peer sees it end
    finally:
        if association.is_established:
            association.release()
