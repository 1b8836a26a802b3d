"""The DICOM node against the findings of an outside review: a broken record, re-sends after a failure, refusals
that quote nothing of the instance, a hung destination, a destination taken out of the configuration.

Each test sends real DICOM over 127.0.0.1 to a node whose models are a threshold
(`tests.node.node_support.ThresholdPredictor`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataelem import RawDataElement
from pydicom.tag import Tag
from pydicom.uid import JPEG2000Lossless, JPEGBaseline8Bit, RLELossless, SecondaryCaptureImageStorage

from app.node.dicom_node import DicomNode
from app.node.dicom_received_instance import without_found_values
from app.node.dicom_sender import Destination
from app.node.dicom_spool import SpoolLimits
from app.node.node_config import NodeConfig
from app.study_analysis import ModelStudyProcessor
from tests.dicom.builders import PATIENT_ID, mr_series, tumor_channels, with_broken_rle, write_files
from tests.node.node_support import (
    CALLING_AE,
    NODE_AE,
    QUIET_SECONDS,
    RESULTS_AE,
    Clock,
    ResultStore,
    SilentDestination,
    ThresholdPredictor,
    free_port,
    process_and_send,
    process_ready,
    record,
    store_dataset,
    storescu,
    wait_for,
)

SECRET = "SECRETVALUE"  # stands for patient data a sender put where it does not belong


@pytest.fixture
def node_log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    with caplog.at_level(logging.INFO, logger="app"):
        yield caplog


def lines(caplog: pytest.LogCaptureFixture, message: str) -> list[logging.LogRecord]:
    return [line for line in caplog.records if line.getMessage() == message]


def study_dirs(node: DicomNode) -> list[Path]:
    return sorted((node.spool.root / "studies").iterdir())


def first_slices_processed(make_node: Any, clock: Clock, series: list, folder: Path) -> tuple[DicomNode, Path]:
    """A new node that received the first two slices of `series` and processed them: the node and its study folder."""
    node = make_node()
    assert storescu(node, write_files(series[:2], folder)).returncode == 0
    clock.advance(QUIET_SECONDS)
    process_and_send(node)
    (study,) = study_dirs(node)
    return node, study


# -- 1. an unreadable record ----------------------------------------------------------------------------------------


def test_a_study_whose_record_is_unreadable_holds_up_no_other_study(
    make_node: Any, results: ResultStore, clock: Clock, tmp_path: Path, node_log: pytest.LogCaptureFixture
) -> None:
    broken = mr_series(tumor_channels())
    node, study = first_slices_processed(make_node, clock, broken, tmp_path / "a")
    record_file = study / "record.json"
    record_file.write_bytes(record_file.read_bytes()[:100])  # truncated
    assert storescu(node, write_files(broken[2:], tmp_path / "a_late")).returncode == 0
    assert storescu(node, write_files(mr_series(tumor_channels()), tmp_path / "b")).returncode == 0
    clock.advance(QUIET_SECONDS)

    (healthy,) = process_and_send(node)
    for _ in range(3):
        clock.advance(QUIET_SECONDS)
        assert process_and_send(node) == []

    assert healthy != study.name and len(results.by_modality("SEG")) == 2
    assert node.spool.pending_since(study.name) is not None  # processed once the record is repaired
    (logged,) = lines(node_log, "study record unreadable: study skipped until it is repaired")  # once, not per pass
    assert logged.fields == {"study_key": study.name, "error": "JSONDecodeError"}
    assert not lines(node_log, "DICOM node pass failed")
    assert PATIENT_ID not in node_log.text


def test_a_repaired_record_lets_its_study_be_processed(make_node: Any, clock: Clock, tmp_path: Path) -> None:
    series = mr_series(tumor_channels())
    node, study = first_slices_processed(make_node, clock, series, tmp_path / "a")
    good = (study / "record.json").read_bytes()
    (study / "record.json").write_text('{"runs": 3}')  # JSON, but not a record
    assert storescu(node, write_files(series[2:], tmp_path / "late")).returncode == 0
    clock.advance(QUIET_SECONDS)
    assert process_and_send(node) == []

    (study / "record.json").write_bytes(good)

    assert process_and_send(node) == [study.name]
    assert [run["instances"] for run in record(node)["runs"]] == [2, 3]


# -- 2. a failed or not analysed study sent again -------------------------------------------------------------------


def test_a_study_not_analysed_is_processed_once_more_when_sent_again_and_never_loops(
    make_node: Any, clock: Clock, tmp_path: Path, node_log: pytest.LogCaptureFixture
) -> None:
    node = make_node()
    files = write_files(mr_series(tumor_channels(0), series_description="AX T1"), tmp_path / "in")
    assert storescu(node, files).returncode == 0
    clock.advance(QUIET_SECONDS)
    (key,) = process_and_send(node)

    assert storescu(node, files).returncode == 0  # the operator fixed the sequence rules and sends it again
    clock.advance(QUIET_SECONDS)
    assert process_and_send(node) == [key]
    for _ in range(3):  # no new C-STORE: nothing more
        clock.advance(QUIET_SECONDS)
        assert process_and_send(node) == []

    assert [run["status"] for run in record(node)["runs"]] == ["not_analysed", "not_analysed"]
    assert not lines(node_log, "study unchanged since last processed")


def test_a_failed_study_sent_again_gets_a_fresh_count_of_attempts(
    make_node: Any, clock: Clock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    node = make_node(max_attempts=2)
    files = write_files(mr_series(tumor_channels()), tmp_path / "in")
    assert storescu(node, files).returncode == 0
    real_processor, outcomes = node.processor, ["failed", "error", "error", "error"]

    def processor(paths: list[Path], notes: Any = (), complete: bool = True) -> Any:
        outcome = outcomes.pop(0) if outcomes else "real"
        if outcome == "error":
            raise MemoryError("the decode budget is too small")
        analysis = real_processor(paths, notes, complete)
        return analysis if outcome == "real" else type(analysis)("failed", reason="over the memory budget")

    monkeypatch.setattr(node, "processor", processor)
    clock.advance(QUIET_SECONDS)
    process_and_send(node)  # failed
    assert storescu(node, files).returncode == 0
    for _ in range(4):
        clock.advance(QUIET_SECONDS)
        process_and_send(node)

    assert [run["status"] for run in record(node)["runs"]] == ["failed", "error", "error"]  # 2 attempts, then stop
    assert node.spool.pending_studies() == {}


def test_an_analysed_study_sent_again_unchanged_is_not_processed_again(
    make_node: Any, results: ResultStore, clock: Clock, tmp_path: Path
) -> None:
    node = make_node()
    files = write_files(mr_series(tumor_channels()), tmp_path / "in")
    assert storescu(node, files).returncode == 0
    clock.advance(QUIET_SECONDS)
    process_and_send(node)
    assert storescu(node, files).returncode == 0
    clock.advance(QUIET_SECONDS)

    assert process_and_send(node) == []
    assert len(results.received) == 2


# -- 3. refusals quote no DICOM value -------------------------------------------------------------------------------


def test_a_secondary_capture_of_another_modality_is_taken_not_kept_and_not_quoted(
    make_node: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Interop review 30: answered C000, a scanned form or another scanner's screen save in a study failed Orthanc's
    whole send of the study to the node. It is a valid object the models have no use for: Success, not kept."""
    node = make_node()
    capture = mr_series(tumor_channels()[:1])[0]
    capture.SOPClassUID = capture.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    capture.Modality = SECRET

    with caplog.at_level(logging.INFO, logger="app.node.dicom_node"):
        answer = store_dataset(node.config.port, capture)

    assert answer.Status == 0x0000
    (ignored,) = lines(caplog, "instance ignored: not an image the models read")
    assert ignored.fields["reason"].startswith("a DICOM Secondary Capture is read only as a capture")
    assert SECRET not in str(ignored.__dict__)
    assert list((node.spool.root / "studies").glob("*/instances/*.dcm")) == []


@pytest.mark.parametrize(
    ("message", "kept"),
    [
        (
            "DICOM SOP class must be one of MR Image Storage; got 1.2.3 (1.2.3)",
            "DICOM SOP class must be one of MR Image Storage",
        ),
        (
            "a DICOM file must hold DICM at byte 128 (Part 10 format); found b'SECR'",
            "a DICOM file must hold DICM at byte 128 (Part 10 format)",
        ),
        ("DICOM pixel data holds 10 bytes; Rows x Columns x frames x BitsAllocated needs 20", None),
    ],
    ids=["got", "found", "nothing found"],
)
def test_refusal_reasons_are_cut_before_the_value_found(message: str, kept: str | None) -> None:
    assert without_found_values(message) == (kept or message)


# -- 4. Type 1 UIDs that processing needs ---------------------------------------------------------------------------


def test_an_instance_without_a_series_uid_is_refused_when_it_arrives(make_node: Any) -> None:
    node = make_node()
    orphan = mr_series(tumor_channels()[:1])[0]
    del orphan.SeriesInstanceUID

    answer = store_dataset(node.config.port, orphan)

    assert (answer.Status, answer.ErrorComment) == (0xA900, "Series Instance UID missing or not a UID")
    assert list((node.spool.root / "studies").glob("*/instances/*.dcm")) == []


def test_an_instance_whose_series_uid_is_not_a_uid_is_refused(make_node: Any) -> None:
    node = make_node()
    instance = mr_series(tumor_channels()[:1])[0]
    instance.SeriesInstanceUID = SECRET

    answer = store_dataset(node.config.port, instance)

    assert (answer.Status, answer.ErrorComment) == (0xA900, "Series Instance UID missing or not a UID")


# -- 4b. values that processing would refuse (attack review, session 21) -------------------------------------------


def bad_rescale_text(instance: Any) -> None:
    tag = Tag("RescaleSlope")  # written as is: a DS that is no number (pydicom refuses to set one)
    instance[tag] = RawDataElement(tag, "DS", 4, b"ab.c", 0, False, True, True, False)


@pytest.mark.parametrize(
    ("spoil", "comment"),
    [
        (lambda instance: setattr(instance, "ImagePositionPatient", [0.0, 0.0]), "ImagePositionPatient must hold 3"),
        (lambda instance: setattr(instance, "ImageOrientationPatient", [0.0] * 6), "ImageOrientationPatient must"),
        (bad_rescale_text, "RescaleSlope must be a decimal number"),
        (lambda instance: setattr(instance, "RescaleSlope", 0.0), "RescaleSlope must not be 0"),
        (lambda instance: setattr(instance, "BitsStored", 17), "DICOM BitsStored (0028,0101) must be 1 to"),
        (lambda instance: setattr(instance, "PatientID", "AB\\CD"), "Patient ID breaks its value type"),
        # Attack review 42: answered Success and filed as Absent, 0.0 mL
        (lambda instance: setattr(instance, "Columns", 255), "DICOM pixel data holds 65536 bytes; Rows x Columns"),
        (lambda instance: setattr(instance, "HighBit", 15), "DICOM HighBit (0028,0102) must be one less than"),
    ],
    ids=[
        "position-of-two",
        "orientation-of-zeros",
        "slope-text",
        "slope-zero",
        "bits-stored-over-allocated",
        "id",
        "columns-fewer-than-the-pixel-data",
        "high-bit-not-the-highest-stored",
    ],
)
def test_a_resent_instance_that_processing_would_refuse_is_refused_and_the_stored_copy_kept(
    make_node: Any, spoil: Any, comment: str
) -> None:
    """It was answered Success, replaced the good copy, and the study was analysed again without that slice."""
    node = make_node()
    instance = mr_series(tumor_channels()[:1])[0]
    assert store_dataset(node.config.port, instance).Status == 0x0000
    (stored,) = (node.spool.root / "studies").glob("*/instances/*.dcm")
    good_copy = stored.read_bytes()

    spoil(instance)
    answer = store_dataset(node.config.port, instance)

    assert answer.Status == 0xC000
    assert str(answer.ErrorComment).startswith(comment)
    assert stored.read_bytes() == good_copy


# -- 5. a hung destination ------------------------------------------------------------------------------------------


def test_a_hung_destination_does_not_delay_the_healthy_one(results: ResultStore, tmp_path: Path) -> None:
    hung = SilentDestination()
    config = NodeConfig(
        spool_dir=tmp_path / "spool",
        ae_title=NODE_AE,
        port=free_port(),
        quiet_seconds=0.3,
        poll_seconds=0.1,
        allowed_calling_ae_titles=(CALLING_AE,),
        destinations=(Destination("HUNG", "127.0.0.1", hung.port), Destination(RESULTS_AE, "127.0.0.1", results.port)),
        send_retries=2,
        send_timeout_seconds=60.0,  # longer than the test: every send to HUNG hangs throughout
    )
    node = DicomNode(config, ModelStudyProcessor(ThresholdPredictor()))
    node.start()  # real threads, real clock
    try:
        for index in range(2):
            assert storescu(node, write_files(mr_series(tumor_channels()), tmp_path / f"s{index}")).returncode == 0
            assert wait_for(lambda count=index + 1: len(results.by_modality("SR")) == count, 30)
        assert hung.connections == 1  # still waiting for its first answer
    finally:
        hung.close()  # the hung send fails at once, so the node stops promptly
        node.stop()


def test_each_destination_sent_on_its_own_records_only_its_own_state(
    results: ResultStore, clock: Clock, tmp_path: Path
) -> None:
    other = ResultStore(free_port())
    destinations = (Destination(RESULTS_AE, "127.0.0.1", results.port), Destination("OTHER", "127.0.0.1", other.port))
    config = NodeConfig(
        spool_dir=tmp_path / "spool",
        ae_title=NODE_AE,
        port=free_port(),
        quiet_seconds=QUIET_SECONDS,
        allowed_calling_ae_titles=(CALLING_AE,),
        destinations=destinations,
    )
    node = DicomNode(config, ModelStudyProcessor(ThresholdPredictor()), clock=clock, sleep=lambda _: None)
    node.start(worker=False)
    try:
        assert storescu(node, write_files(mr_series(tumor_channels()), tmp_path / "in")).returncode == 0
        clock.advance(QUIET_SECONDS)
        process_ready(node)

        for destination in destinations:  # as the two sender threads do
            assert node.send_unsent((destination,)) == 1
            assert node.send_unsent((destination,)) == 0

        (run,) = record(node)["runs"]
        assert {name: state["status"] for name, state in run["sent"].items()} == dict.fromkeys(
            map(str, destinations), "sent"
        )
        assert len(results.received) == len(other.received) == 2
        assert node.spool.unsent_studies() == []
    finally:
        node.stop()
        other.close()


# -- 6. a destination taken out of the configuration ----------------------------------------------------------------


def test_results_for_a_removed_destination_are_dropped_so_the_study_is_purged(
    make_node: Any, clock: Clock, tmp_path: Path, node_log: pytest.LogCaptureFixture
) -> None:
    gone = free_port()  # nothing listens there
    node = make_node(destination_port=gone, spool_limits=SpoolLimits(retention_seconds=60))
    assert storescu(node, write_files(mr_series(tumor_channels()), tmp_path / "in")).returncode == 0
    clock.advance(QUIET_SECONDS)
    process_and_send(node)
    node.stop()

    restarted = make_node(destinations=(), spool_limits=SpoolLimits(retention_seconds=60))  # none configured now

    (study,) = study_dirs(restarted)
    assert not restarted.spool.is_unsent(study.name)
    (state,) = record(restarted)["runs"][0]["sent"].values()
    assert state["status"] == "dropped"
    (logged,) = lines(
        node_log,
        "results dropped: their destination is no longer configured (configured again before the study is purged, "
        "it gets them)",
    )
    assert logged.fields == {"study_key": study.name, "destination": f"{RESULTS_AE}@127.0.0.1:{gone}", "runs": 1}
    assert restarted.send_unsent() == 0
    clock.now = time.time() + 3600
    assert restarted.purge_expired() == [study.name]


def test_results_dropped_for_a_destination_are_sent_when_it_is_configured_again(
    make_node: Any, clock: Clock, tmp_path: Path, node_log: pytest.LogCaptureFixture
) -> None:
    """An operations review restarted the node once with its destination misspelt: the results waiting for the PACS
    were dropped for good, and the PACS never got them once the setting was mended. Results the spool still keeps
    now go to a destination configured again."""
    destination_port = free_port()  # the PACS, down at first
    node = make_node(destination_port=destination_port)
    assert storescu(node, write_files(mr_series(tumor_channels()), tmp_path / "in")).returncode == 0
    clock.advance(QUIET_SECONDS)
    process_and_send(node)
    node.stop()
    make_node().stop()  # a restart with the destination misspelt (another port): the results for the PACS are dropped
    pacs_name = f"{RESULTS_AE}@127.0.0.1:{destination_port}"
    assert record(node)["runs"][0]["sent"][pacs_name]["status"] == "dropped"

    pacs = ResultStore(destination_port)
    try:
        mended = make_node(destination_port=destination_port)  # the setting mended, the PACS back

        assert mended.spool.unsent_studies() != []
        assert mended.send_unsent() == 1
        assert sorted(dataset.Modality for dataset in pacs.received) == ["SEG", "SR"]
        assert record(mended)["runs"][0]["sent"][pacs_name]["status"] == "sent"
        assert lines(node_log, "results dropped earlier to be sent: their destination is configured again")
    finally:
        pacs.close()


def test_results_waiting_for_a_destination_that_moved_go_to_it_at_its_new_address(
    make_node: Any, results: ResultStore, clock: Clock, tmp_path: Path, node_log: pytest.LogCaptureFixture
) -> None:
    """Durability review 45 F2: the PACS came back at a new port (same AE title), the node was restarted with its new
    address, and the results that had waited for the old one were dropped for good; a re-send did nothing."""
    old_port = free_port()  # the PACS's old address: nothing listens there now
    node = make_node(destination_port=old_port)
    assert storescu(node, write_files(mr_series(tumor_channels()), tmp_path / "in")).returncode == 0
    clock.advance(QUIET_SECONDS)
    process_and_send(node)
    node.stop()

    moved = make_node()  # DICOM_NODE_DESTINATIONS: the same AE title at `results`' port

    assert moved.send_unsent() == 1
    assert sorted(dataset.Modality for dataset in results.received) == ["SEG", "SR"]
    (run,) = record(moved)["runs"]
    assert {name: state["status"] for name, state in run["sent"].items()} == {
        f"{RESULTS_AE}@127.0.0.1:{old_port}": "dropped",
        f"{RESULTS_AE}@127.0.0.1:{results.port}": "sent",
    }
    (logged,) = lines(node_log, "results to be sent to a destination configured in place of one that never got them")
    assert logged.fields["destination"] == f"{RESULTS_AE}@127.0.0.1:{results.port}"
    assert moved.spool.unsent_studies() == []


@pytest.mark.parametrize("delivered_elsewhere", [False, True], ids=["delivered nowhere", "delivered elsewhere"])
def test_results_delivered_nowhere_go_to_the_destination_that_replaced_theirs(
    make_node: Any, results: ResultStore, clock: Clock, tmp_path: Path, delivered_elsewhere: bool
) -> None:
    """Durability review 45 F2 (a PACS replaced by another of another AE title): results that reached no destination
    go to the destinations configured now; results that reached one are not sent to a new destination."""
    old = Destination("OLDPACS", "127.0.0.1", free_port())  # nothing listens there
    archive = ResultStore(free_port())  # a destination configured throughout
    kept = (Destination("ARCHIVE", "127.0.0.1", archive.port),) if delivered_elsewhere else ()
    try:
        node = make_node(destinations=(old, *kept))
        assert storescu(node, write_files(mr_series(tumor_channels()), tmp_path / "in")).returncode == 0
        clock.advance(QUIET_SECONDS)
        process_and_send(node)
        node.stop()

        replaced = make_node(destinations=(*kept, Destination(RESULTS_AE, "127.0.0.1", results.port)))
        replaced.send_unsent()

        assert len(archive.received) == (2 if delivered_elsewhere else 0)
        assert len(results.received) == (0 if delivered_elsewhere else 2)
        (run,) = record(replaced)["runs"]
        assert run["sent"][str(old)]["status"] == "dropped"
        assert (f"{RESULTS_AE}@127.0.0.1:{results.port}" in run["sent"]) is not delivered_elsewhere
    finally:
        archive.close()


def test_a_blank_series_is_recorded_failed_and_no_absent_report_is_sent(
    make_node: Any, results: ResultStore, clock: Clock, tmp_path: Path
) -> None:
    """attack23: a FLAIR series with one value in every pixel was recorded "analysed" and an Absent SR went out."""
    node = make_node()
    series = mr_series(tumor_channels())
    for dataset in series:
        dataset.PixelData = bytes(len(dataset.PixelData))
    assert storescu(node, write_files(series, tmp_path / "in")).returncode == 0
    clock.advance(QUIET_SECONDS)
    process_and_send(node)

    (run,) = record(node)["runs"]
    assert run["status"] == "failed"
    assert "the FLAIR series holds one value in every pixel" in run["reason"]
    assert results.received == []


def test_native_pixels_under_a_compressed_transfer_syntax_are_refused_when_they_arrive(make_node: Any) -> None:
    """Attack review 37: native pixel data on a JPEG Baseline, JPEG 2000 or RLE context was answered Success; the
    study then failed on it with nothing sent, and the sender had no reason to send again."""
    node = make_node()
    refused = []
    for syntax in (JPEGBaseline8Bit, JPEG2000Lossless, RLELossless):
        instance = mr_series(tumor_channels()[:1])[0]
        instance.file_meta.TransferSyntaxUID = syntax  # the pixels stay native
        refused.append(store_dataset(node.config.port, instance))

    for answer in refused:
        assert answer.Status == 0xC000
        assert str(answer.ErrorComment).startswith("DICOM pixel data is not encapsulated")
    assert list((node.spool.root / "studies").glob("*/instances/*.dcm")) == []


def test_a_resent_instance_whose_pixels_do_not_decode_is_refused_and_the_stored_copy_kept(make_node: Any) -> None:
    """Interop review 37: a corrupt re-send (its header sound, its pixel data not) was answered Success and replaced
    the readable copy; the study was analysed again without that slice."""
    node = make_node()
    instance = mr_series(tumor_channels()[:1])[0]
    assert store_dataset(node.config.port, instance).Status == 0x0000
    (stored,) = (node.spool.root / "studies").glob("*/instances/*.dcm")
    good_copy = stored.read_bytes()

    answer = store_dataset(node.config.port, with_broken_rle(instance))

    assert answer.Status == 0xC000
    assert str(answer.ErrorComment).startswith("DICOM pixel data cannot be decoded")
    assert stored.read_bytes() == good_copy
