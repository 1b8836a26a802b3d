"""The DICOM node when senders, destinations and its own process misbehave (findings of an attack on the node).

Each test sends real DICOM over 127.0.0.1 (dcmtk's storescu, pynetdicom) to a node whose models are a threshold
(`tests.node.node_support.ThresholdPredictor`).
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom.uid import SegmentationStorage, generate_uid
from pynetdicom.association import Association

from app.logging_config import REDACTED, JsonFormatter
from app.node.dicom_node import DicomNode
from app.node.dicom_receiver import RECEIVE_MEMORY_FULL
from app.node.dicom_sender import Destination
from app.node.dicom_spool import SpoolLimits
from app.node.node_config import NodeConfig
from app.settings import MIB
from app.study_analysis import ModelStudyProcessor
from tests.dicom.builders import PATIENT_ID, Study, mr_series, tumor_channels, write_files
from tests.node.node_support import (
    CALLING_AE,
    NODE_AE,
    QUIET_SECONDS,
    RESULTS_AE,
    Clock,
    ResultStore,
    SilentDestination,
    ThresholdPredictor,
    associations_ended,
    echo,
    free_port,
    process_and_send,
    process_ready,
    record,
    records,
    store_dataset,
    storescu,
    wait_for,
)

WEEK_SECONDS = 7 * 24 * 3600.0


def test_two_patients_whose_studies_share_a_study_uid_are_kept_apart(
    make_node: Any, results: ResultStore, clock: Clock, tmp_path: Path
) -> None:
    node = make_node()
    study = Study()
    first, second = mr_series(tumor_channels(), study), mr_series(tumor_channels()[:2], study)
    for dataset in second:
        dataset.PatientID = "TEST-0002"
    assert storescu(node, write_files([*first, *second], tmp_path / "in")).returncode == 0
    clock.advance(QUIET_SECONDS)

    assert len(process_and_send(node)) == 2

    frames = {str(seg.PatientID): int(seg.NumberOfFrames) for seg in results.by_modality("SEG")}
    assert frames == {PATIENT_ID: 3, "TEST-0002": 2}


def test_a_study_sent_with_an_empty_patient_id_on_some_files_is_refused_in_both_parts(
    make_node: Any, results: ResultStore, clock: Clock, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Interop review 39 F1: a series whose later files had an empty Patient ID was analysed as two studies (the node
    keys one by Patient ID and Study Instance UID): the patient's tumor-free part got an SR "absent", the tumor part
    a SEG under an empty Patient ID. The API refuses such files as one request; the node refuses both parts."""
    node = make_node()
    series = mr_series([*tumor_channels(), *tumor_channels()])
    for dataset in series[3:]:
        dataset.PatientID = ""
    assert storescu(node, write_files(series, tmp_path / "in")).returncode == 0
    clock.advance(QUIET_SECONDS)

    with caplog.at_level(logging.INFO, logger="app.node.dicom_node"):
        assert len(process_and_send(node)) == 2

    assert results.received == []
    outcomes = [study["runs"][-1] for study in records(node)]
    assert [run["status"] for run in outcomes] == ["failed", "failed"]
    assert all(
        run["reason"].startswith("mixed_input: files of this study (by Study Instance UID) came with an empty")
        for run in outcomes
    )
    assert not node.spool.pending_studies()  # refused once, not again each pass
    logged = [getattr(record, "fields", {}) for record in caplog.records if record.getMessage() == "study processed"]
    assert [fields.get("error") for fields in logged] == ["mixed_input", "mixed_input"]  # the code, in the log too


@pytest.mark.parametrize("patient_id", [PATIENT_ID, "TMP-0001"], ids=["one patient", "patient merged"])
def test_a_series_sent_under_two_study_uids_is_refused_in_both_parts(
    make_node: Any, results: ResultStore, clock: Clock, tmp_path: Path, patient_id: str
) -> None:
    """Interop review 42 F1: one series whose later files carried a second Study Instance UID (a study split in the
    RIS while it was sent) was analysed as two studies, and the tumor-free part got a COMPLETE "absent" SR. Attack
    review 44 F1: so did the same with a temporary Patient ID on one part (a patient merged in the RIS meanwhile)."""
    node = make_node()
    series = mr_series([*tumor_channels(), *tumor_channels()])
    second_study = generate_uid()
    for dataset in series[3:]:
        dataset.StudyInstanceUID, dataset.PatientID = second_study, patient_id
    assert storescu(node, write_files(series, tmp_path / "in")).returncode == 0
    clock.advance(QUIET_SECONDS)

    assert len(process_and_send(node)) == 2

    assert results.received == []
    outcomes = [study["runs"][-1] for study in records(node)]
    assert [run["status"] for run in outcomes] == ["failed", "failed"]
    assert all(
        run["reason"].startswith("mixed_input: a series of this study (by Series Instance UID) also came under other")
        for run in outcomes
    )

    other = mr_series(tumor_channels(), Study())  # another study's series: analysed as before
    assert storescu(node, write_files(other, tmp_path / "other")).returncode == 0
    clock.advance(QUIET_SECONDS)
    assert len(process_and_send(node)) == 1
    assert len(results.by_modality("SEG")) == 1


def test_a_study_whose_patient_id_differs_only_by_spaces_is_analysed_as_one(
    make_node: Any, results: ResultStore, clock: Clock, tmp_path: Path
) -> None:
    """Attack review 40: leading and trailing spaces of a Patient ID are not significant (PS3.5 6.2) and the API
    reads such files as one patient; the node keyed them apart and sent two SEG/SR pairs of half the tumor each."""
    node = make_node()
    series = mr_series([*tumor_channels(), *tumor_channels()])
    for dataset in series[3:]:
        dataset.PatientID = f" {dataset.PatientID}"
    assert storescu(node, write_files(series, tmp_path / "in")).returncode == 0
    clock.advance(QUIET_SECONDS)

    assert len(process_and_send(node)) == 1

    (study,) = records(node)
    assert study["runs"][-1]["status"] == "analysed"
    assert study["runs"][-1]["summary"]["slices"] == 6
    assert [int(seg.NumberOfFrames) for seg in results.by_modality("SEG")] == [6]


def test_results_are_sent_after_a_stop_between_the_record_and_its_unsent_marker(
    make_node: Any, results: ResultStore, clock: Clock, tmp_path: Path
) -> None:
    node = make_node()
    assert storescu(node, write_files(mr_series(tumor_channels()), tmp_path / "in")).returncode == 0
    clock.advance(QUIET_SECONDS)
    assert len(process_ready(node)) == 1
    (key,) = node.spool.unsent_studies()
    marker = node.spool.root / "unsent" / key
    marker.unlink()  # as if the node had died after writing the record, before marking it
    node.stop()

    restarted = make_node()
    assert restarted.send_unsent() == 1

    assert sorted(dataset.Modality for dataset in results.received) == ["SEG", "SR"]
    assert not marker.exists()  # all sent: the marker is gone again


def test_an_instance_sent_again_with_other_pixels_is_analysed_again(
    make_node: Any, results: ResultStore, clock: Clock, tmp_path: Path
) -> None:
    node = make_node()
    series = mr_series(tumor_channels())
    assert storescu(node, write_files(series, tmp_path / "in")).returncode == 0
    clock.advance(QUIET_SECONDS)
    process_and_send(node)

    series[1].PixelData = np.zeros((256, 256), np.uint8).tobytes()  # corrected image, same SOP Instance UID
    assert storescu(node, write_files(series[1:2], tmp_path / "corrected")).returncode == 0
    clock.advance(QUIET_SECONDS)

    assert len(process_and_send(node)) == 1
    first, second = results.by_modality("SEG")
    assert int(first.NumberOfFrames) == int(second.NumberOfFrames) == 3
    first_run, second_run = record(node)["runs"]
    assert second_run["supersedes"] == first_run["run_id"]
    assert second_run["summary"] != first_run["summary"]  # one tumor slice less


def test_a_destination_that_refuses_the_sr_gets_the_seg_once_and_holds_up_no_other_study(
    make_node: Any, clock: Clock, tmp_path: Path
) -> None:
    """Its SR is declined, for good (interop review 66 F1: retried on every later pass, the studies were never
    delivered nor purged); each study's SEG goes once."""
    seg_only = ResultStore(free_port(), sop_classes=(SegmentationStorage,))
    try:
        node = make_node(destination_port=seg_only.port)
        for index in range(2):
            assert storescu(node, write_files(mr_series(tumor_channels()), tmp_path / f"in{index}")).returncode == 0
        clock.advance(QUIET_SECONDS)
        assert len(process_and_send(node)) == 2
        assert len(seg_only.by_modality("SEG")) == 2  # both studies' SEGs arrived

        for _ in range(3):  # nothing is left to send on later passes
            clock.advance(600)
            assert node.send_unsent() == 0
        assert len(seg_only.received) == 2

        for study in records(node):
            (state,) = study["runs"][0]["sent"].values()
            assert state["status"] == "sent"
            assert state["stored"] == ["00_SEG.dcm"] and len(state["declined"]) == 1
        statuses = {(entry["modality"], entry["status"]) for entry in node.spool.sent_log()}
        assert statuses == {("SEG", "sent"), ("SR", "declined")}
        assert sum(entry["modality"] == "SEG" for entry in node.spool.sent_log()) == 2  # once per study
    finally:
        seg_only.close()


def test_a_failure_while_sending_one_study_does_not_stop_the_others(
    make_node: Any, results: ResultStore, clock: Clock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    node = make_node()
    for index in range(2):
        assert storescu(node, write_files(mr_series(tumor_channels()), tmp_path / f"in{index}")).returncode == 0
    clock.advance(QUIET_SECONDS)
    process_ready(node)
    real_send, calls = node.sender.send, []

    def send_failing_first(destination: Destination, paths: list[Path], **options: Any) -> Any:
        calls.append(paths)
        if len(calls) == 1:
            raise RuntimeError("a bug in the sender")
        return real_send(destination, paths, **options)

    monkeypatch.setattr(node.sender, "send", send_failing_first)

    assert node.send_unsent() == 2

    assert len(results.by_modality("SEG")) == 1  # the second study went out
    failed = [run["sent"] for study in records(node) for run in study["runs"] if run["sent"]]
    assert sorted(state["status"] for sent in failed for state in sent.values()) == ["failed", "sent"]


def test_a_destination_that_never_answers_holds_up_no_processing(
    silent_destination: SilentDestination, tmp_path: Path
) -> None:
    config = NodeConfig(
        spool_dir=tmp_path / "spool",
        ae_title=NODE_AE,
        port=free_port(),
        quiet_seconds=0.3,
        poll_seconds=0.1,
        allowed_calling_ae_titles=(CALLING_AE,),
        destinations=(Destination(RESULTS_AE, "127.0.0.1", silent_destination.port),),
        send_retries=0,
        send_timeout_seconds=60.0,  # longer than the test: the first send hangs throughout
    )
    node = DicomNode(config, ModelStudyProcessor(ThresholdPredictor()))
    node.start()  # real threads, real clock
    try:
        assert storescu(node, write_files(mr_series(tumor_channels()), tmp_path / "a")).returncode == 0
        assert wait_for(lambda: len(records(node)) == 1, 30)
        assert wait_for(lambda: silent_destination.connections == 1, 30)  # its results are being sent
        assert storescu(node, write_files(mr_series(tumor_channels()), tmp_path / "b")).returncode == 0

        assert wait_for(lambda: len(records(node)) == 2, 30)  # processed while the first send hangs

        states = [state["status"] for study in records(node) for state in study["runs"][0]["sent"].values()]
        assert states == ["pending", "pending"]  # the first send has not even timed out
    finally:
        silent_destination.close()  # the hung send fails at once, so the node stops promptly
        node.stop()


def test_a_destination_that_never_answers_is_recorded_as_such(
    make_node: Any, silent_destination: SilentDestination, clock: Clock, tmp_path: Path
) -> None:
    node = make_node(destination_port=silent_destination.port, send_retries=0, send_timeout_seconds=1.0)
    assert storescu(node, write_files(mr_series(tumor_channels()), tmp_path / "in")).returncode == 0
    clock.advance(QUIET_SECONDS)

    process_and_send(node)

    (state,) = record(node)["runs"][0]["sent"].values()
    assert (state["status"], state["last_error"]) == ("failed", "no answer from the destination within 1 s")


@pytest.mark.parametrize(
    "first_bytes",
    [b"", b"\x01\x00\x00"],  # nothing at all; the first bytes of an association request, then silence
    ids=["bare connection", "half a request"],
)
def test_idle_connections_are_closed_so_they_cannot_lock_out_senders(make_node: Any, first_bytes: bytes) -> None:
    node = make_node(max_associations=2, association_timeout_seconds=5.0)
    idle = held_slots(node.config.port, first_bytes, hold_seconds=5.0)
    try:
        for connection in idle:
            connection.settimeout(15)
            assert connection.recv(1024) in (b"", b"\x07\x00\x00\x00\x00\x04\x00\x00\x02\x00")  # closed (maybe aborted)
        assert wait_for(lambda: echo(node.config.port), 10)
    finally:
        for connection in idle:
            connection.close()


def held_slots(port: int, first_bytes: bytes, hold_seconds: float, tries: int = 3) -> list[socket.socket]:
    """Two idle connections that hold both of the node's slots, shown by a C-ECHO refused while they do.

    A C-ECHO answered only after `hold_seconds` proves nothing either way (the node may rightly have closed the idle
    ones by then: a loaded CI machine once took that long), so that attempt is made again with new connections."""
    for _ in range(tries):
        started = time.monotonic()
        idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]
        for connection in idle:
            connection.sendall(first_bytes)
        wait_for(lambda: len(serving_associations(port)) >= 2, 2)  # both taken up by the node
        answered = echo(port)
        if time.monotonic() - started < hold_seconds:
            assert not answered  # both slots held: refused (Local Limit Exceeded)
            return idle
        for connection in idle:
            connection.close()
    pytest.fail(f"no C-ECHO came back within {hold_seconds} s in {tries} tries")


def serving_associations(port: int) -> list[Association]:
    """pynetdicom's threads of the associations the in-process node at `port` serves (as acceptor): not those of a
    result store, or of another test's node still winding down (counted, they let the C-ECHO in too early)."""
    return [
        thread
        for thread in threading.enumerate()
        if isinstance(thread, Association) and thread.is_acceptor and thread.is_alive() and _local_port(thread) == port
    ]


def _local_port(association: Association) -> int | None:
    try:
        return association.dul.socket.socket.getsockname()[1]
    except (AttributeError, OSError):
        return None


def test_pynetdicom_log_lines_do_not_show_uids() -> None:
    line = logging.LogRecord(
        "pynetdicom.dsutils", logging.WARNING, __file__, 1, "Invalid UID '1.2.826.0.1.3680043.8.498.1x'", None, None
    )

    message = json.loads(JsonFormatter().format(line))["message"]

    assert "1.2.826" not in message and REDACTED in message


@pytest.mark.parametrize(
    ("limits", "kept"),
    [
        (SpoolLimits(max_instance_bytes=10_000), 0),  # each instance is about 66 kB
        (SpoolLimits(max_spool_bytes=150_000), 2),
        (SpoolLimits(min_free_bytes=1 << 60), 0),
    ],
    ids=["instance too large", "spool full", "disk full"],
)
def test_instances_that_break_a_spool_limit_are_refused(
    make_node: Any, tmp_path: Path, limits: SpoolLimits, kept: int
) -> None:
    node = make_node(spool_limits=limits)

    storescu(node, write_files(mr_series(tumor_channels()), tmp_path / "in"))

    stored = list((node.spool.root / "studies").glob("*/instances/*.dcm"))
    assert len(stored) == kept
    series_indexed = list((node.spool.root / "series_uids").glob("*/*"))  # noted before the room check
    assert node.spool.size_bytes == sum(node.spool.disk_bytes(path.stat().st_size) for path in stored) + len(
        series_indexed
    ) * node.spool.disk_bytes(1)


def test_delivered_studies_leave_the_spool_after_the_retention_time_and_are_still_recognised(
    make_node: Any, results: ResultStore, clock: Clock, tmp_path: Path
) -> None:
    node = make_node(spool_limits=SpoolLimits(retention_seconds=WEEK_SECONDS))
    files = write_files(mr_series(tumor_channels()), tmp_path / "in")
    assert storescu(node, files).returncode == 0
    clock.advance(QUIET_SECONDS)
    process_and_send(node)
    (study,) = (node.spool.root / "studies").iterdir()

    clock.now = time.time() + WEEK_SECONDS - 60
    assert node.purge_expired() == []
    clock.now = time.time() + WEEK_SECONDS + 60
    assert node.purge_expired() == [study.name]

    assert sorted(path.name for path in study.iterdir()) == ["record.json"]
    assert node.spool.size_bytes == node.spool.disk_bytes(1)  # the index of its series, kept with its record
    assert storescu(node, files).returncode == 0  # the router sends the study again
    clock.advance(QUIET_SECONDS)
    assert process_and_send(node) == []  # recognised: not analysed or sent again
    assert len(results.received) == 2


def test_studies_with_results_still_to_send_are_kept(make_node: Any, clock: Clock, tmp_path: Path) -> None:
    node = make_node(destination_port=free_port(), spool_limits=SpoolLimits(retention_seconds=60))
    assert storescu(node, write_files(mr_series(tumor_channels()), tmp_path / "in")).returncode == 0
    clock.advance(QUIET_SECONDS)
    process_and_send(node)  # nothing listens at the destination

    clock.now = time.time() + 3600

    assert node.purge_expired() == []
    assert len(list((node.spool.root / "studies").glob("*/instances/*.dcm"))) == 3


def test_spool_limits_come_from_the_settings(tmp_path: Path) -> None:
    from app.settings import Settings

    settings = Settings(
        dicom_node_spool_dir=tmp_path,
        dicom_node_max_instance_bytes=2 * MIB,
        dicom_node_max_spool_bytes=100 * MIB,
        dicom_node_min_free_bytes=0,
        dicom_node_retention_hours=2,
        dicom_node_record_retention_days=30,
        dicom_node_max_study_instances=7,
        dicom_node_max_associations=4,
        dicom_node_association_timeout_seconds=5,
        dicom_node_send_timeout_seconds=7,
        dicom_node_max_pending_studies=5,
        dicom_node_receive_memory_bytes=8 * MIB,
    )

    config = NodeConfig.from_settings(settings)

    assert config.spool_limits == SpoolLimits(
        2 * MIB,
        100 * MIB,
        0,
        7200.0,
        max_pending_studies=5,
        record_retention_seconds=30 * 24 * 3600.0,
        max_study_instances=7,
    )
    assert config.receive_memory_bytes == 8 * MIB
    assert (config.max_associations, config.association_timeout_seconds, config.send_timeout_seconds) == (4, 5, 7)


def test_a_sender_cannot_queue_studies_without_end(make_node: Any, clock: Clock) -> None:
    """attack25: one association stored 150 made-up one-slice studies in 3 s, 15 times faster than the node
    analyses them, and a real study sent next waited 53 s behind them (a flood: without end). Studies waiting for
    analysis are now capped; an instance of a study already waiting is still kept."""
    node = make_node(spool_limits=SpoolLimits(max_pending_studies=2))
    first, second, third = (mr_series(tumor_channels()[:2], Study()) for _ in range(3))

    statuses = [store_dataset(node.config.port, dataset) for dataset in (first[0], second[0], third[0], first[1])]

    assert [int(status.Status) for status in statuses] == [0x0000, 0x0000, 0xA700, 0x0000]
    assert statuses[2].ErrorComment == "2 studies wait for analysis; the limit is 2"
    associations_ended(node)  # before the clock moves: an association's end restarts the quiet period at its time
    clock.advance(QUIET_SECONDS)
    assert len(process_ready(node)) == 2
    assert int(store_dataset(node.config.port, third[0]).Status) == 0x0000  # room again once analysed


def test_one_sender_cannot_take_the_whole_queue_of_studies_waiting_for_analysis(make_node: Any) -> None:
    """attack review 46 F3: one address filled the studies waiting for analysis with one-slice studies (and kept
    them waiting by keeping its associations open), and every other sender's new study was refused. One address may
    now have three quarters of the queue waiting; the rest is kept for the others."""
    node = make_node(spool_limits=SpoolLimits(max_pending_studies=4))
    port = node.config.port
    flood = [mr_series(tumor_channels()[:2], Study()) for _ in range(4)]

    statuses = [store_dataset(port, series[0]) for series in flood]

    assert [int(status.Status) for status in statuses] == [0x0000, 0x0000, 0x0000, 0xA700]
    assert statuses[3].ErrorComment == "3 studies of this address wait; its share is 3"
    assert int(store_dataset(port, flood[0][1]).Status) == 0x0000  # a study already waiting is still kept
    scanner = mr_series(tumor_channels()[:2], Study())
    assert [int(store_dataset(port, dataset, from_address="127.0.0.2").Status) for dataset in scanner] == [0, 0]


def test_instances_received_at_once_are_held_to_the_receive_memory(make_node: Any) -> None:
    """attack25: each association holds the instance it receives whole in memory, and nothing bounded them all
    together (8 associations of 118 MB each: +1.6 GiB; at the defaults ~8 GiB). An instance that would take the
    instances being received past DICOM_NODE_RECEIVE_MEMORY_BYTES is now refused, Out of Resources."""
    node = make_node(spool_limits=SpoolLimits(max_instance_bytes=100_000), receive_memory_bytes=100_000)
    first, second, third = (mr_series(tumor_channels()[:1], Study())[0] for _ in range(3))  # ~66 kB each
    storing, release = threading.Event(), threading.Event()
    store_instance = node.spool.store_instance

    def held_store(*args: Any, **kwargs: Any) -> str:  # the first instance stays in memory until the test lets it go
        storing.set()
        assert release.wait(30)
        return store_instance(*args, **kwargs)

    node.spool.store_instance = held_store
    answers: list[Any] = []
    sender = threading.Thread(target=lambda: answers.append(store_dataset(node.config.port, first)))
    sender.start()
    assert storing.wait(30)
    node.spool.store_instance = store_instance

    refused = store_dataset(node.config.port, second)
    release.set()
    sender.join(30)

    assert (int(refused.Status), refused.ErrorComment) == (0xA700, RECEIVE_MEMORY_FULL)
    assert int(answers[0].Status) == 0x0000
    assert int(store_dataset(node.config.port, third).Status) == 0x0000  # held memory is given back


def test_the_receive_memory_must_hold_one_instance_of_the_largest_size() -> None:
    with pytest.raises(ValueError, match="receive_memory_bytes .* must be at least max_instance_bytes"):
        NodeConfig(Path("spool"), spool_limits=SpoolLimits(max_instance_bytes=2 * MIB), receive_memory_bytes=MIB)
