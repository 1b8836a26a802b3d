"""The DICOM node against what review dicom24 found with real tools: an association still open or aborted, a whole
study forwarded with our own results in it, an MR object of another modality, a file over the HTTP upload limit, and
files the SR did not mention."""

from __future__ import annotations

import io
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ComprehensiveSRStorage, MRImageStorage, SegmentationStorage
from pynetdicom import AE
from pynetdicom.association import Association

from app.dicom.dicom_sr_reader import read_volume_report
from app.node.dicom_node import DicomNode
from app.node.dicom_study_runs import ABORTED_NOTE, REFUSED_NOTE
from app.node.dicom_study_worker import OPEN_ASSOCIATION_WAIT
from app.settings import Settings
from app.study_analysis import ModelStudyProcessor, unread_files_note
from app.uploads import UploadLimits
from tests.dicom.builders import mr_series, to_bytes, tumor_channels, write_files
from tests.node.node_support import (
    CALLING_AE,
    NODE_AE,
    QUIET_SECONDS,
    Clock,
    ResultStore,
    ThresholdPredictor,
    associations_ended,
    process_and_send,
    record,
    storescu,
    wait_for,
)


def associate(node: DicomNode, *sop_classes: str) -> Association:
    ae = AE(ae_title=CALLING_AE)
    for sop_class in sop_classes:
        ae.add_requested_context(sop_class)
    association = ae.associate("127.0.0.1", node.config.port, ae_title=NODE_AE)
    assert association.is_established
    return association


def store(association: Association, dataset: Dataset) -> int:
    status = association.send_c_store(dataset)
    return int(status.Status)


def test_a_study_waits_while_its_association_is_open_and_its_quiet_period_starts_at_the_release(
    make_node: Any, results: ResultStore, clock: Clock
) -> None:
    """dicom24 finding 3: a study was processed while its last instance was still on the wire (a slow link), and
    again once it came: two results in the PACS."""
    node = make_node()
    series = mr_series(tumor_channels())
    association = associate(node, MRImageStorage)
    assert [store(association, dataset) for dataset in series[:2]] == [0, 0]

    clock.advance(QUIET_SECONDS * 3)
    assert process_and_send(node, associations_ended=False) == []  # quiet for long, but its association is open

    assert store(association, series[2]) == 0
    association.release()
    assert process_and_send(node) == []  # the quiet period starts at the release
    clock.advance(QUIET_SECONDS)
    assert len(process_and_send(node)) == 1
    (run,) = record(node)["runs"]
    assert run["instances"] == 3
    assert read_volume_report(results.by_modality("SR")[0])["notes"] == []


def test_an_association_never_released_holds_its_study_for_ten_quiet_periods_at_most(
    make_node: Any, results: ResultStore, clock: Clock
) -> None:
    """A router that keeps one association open for study after study must not hold the first one forever."""
    node = make_node()
    association = associate(node, MRImageStorage)
    assert [store(association, dataset) for dataset in mr_series(tumor_channels())] == [0, 0, 0]

    clock.advance(OPEN_ASSOCIATION_WAIT * QUIET_SECONDS - 1)
    assert process_and_send(node, associations_ended=False) == []
    clock.advance(1)
    assert len(process_and_send(node, associations_ended=False)) == 1
    association.release()


def test_a_study_left_by_an_aborted_association_says_so_in_its_report(
    make_node: Any, results: ResultStore, clock: Clock
) -> None:
    node = make_node()
    series = mr_series(tumor_channels())
    association = associate(node, MRImageStorage)
    assert [store(association, dataset) for dataset in series[:2]] == [0, 0]
    association.abort()
    associations_ended(node)

    clock.advance(QUIET_SECONDS)
    assert len(process_and_send(node)) == 1

    note = ABORTED_NOTE.format(count=1)
    (run,) = record(node)["runs"]
    assert run["summary"]["notes"] == [note]
    (report,) = results.by_modality("SR")
    assert read_volume_report(report)["notes"] == [note]
    # Interop review 40: the report of a study that may lack instances went out COMPLETE; its coded part says it.
    assert report.CompletionFlag == "PARTIAL"
    assert "aborted_associations" not in record(node)  # said once, in the run it belongs to


@pytest.mark.parametrize("cut_off_by", ["abort", "crash"])
@pytest.mark.parametrize("resent", ["whole", "the rest"])
def test_a_cut_off_study_sent_again_whole_over_released_associations_is_reported_complete(
    make_node: Any, results: ResultStore, clock: Clock, cut_off_by: str, resent: str
) -> None:
    """Durability review 45 F5: a study cut off by a node crash and then sent again whole, as a sender does after a
    failure, was reported PARTIAL ("instances may be missing") for good. Sent again in part, it still is: the
    cut-off association may have meant to send more than it did."""
    node = make_node()
    series = mr_series(tumor_channels())
    first = associate(node, MRImageStorage)
    assert [store(first, dataset) for dataset in series[:2]] == [0, 0]
    if cut_off_by == "abort":
        first.abort()
        associations_ended(node)
    else:
        first.release()
        associations_ended(node)
        (key,) = node.spool.pending_studies()
        node.spool.mark_receiving(key)  # as a node killed while the association was open leaves it
        node.stop()
        node = make_node()
    again = associate(node, MRImageStorage)
    sent_again = series if resent == "whole" else series[2:]
    assert [store(again, dataset) for dataset in sent_again] == [0] * len(sent_again)
    again.release()
    associations_ended(node)
    clock.advance(QUIET_SECONDS)

    assert len(process_and_send(node)) == 1

    (run,) = record(node)["runs"]
    (report,) = results.by_modality("SR")
    if resent == "whole":
        assert run["summary"]["notes"] == [] and report.CompletionFlag == "COMPLETE"
    else:
        assert run["summary"]["notes"] == [ABORTED_NOTE.format(count=1)] and report.CompletionFlag == "PARTIAL"
    assert run["summary"]["slices"] == 3


@pytest.mark.parametrize("restarted", [False, True])
def test_a_cut_off_study_analysed_and_then_sent_again_whole_gets_a_complete_report_revising_the_partial_one(
    make_node: Any, results: ResultStore, clock: Clock, restarted: bool
) -> None:
    """Interop review 46 F1: a study analysed after its association was cut off got a PARTIAL report ("instances may
    be missing; a later send of them gives a new result"); the sender then sent it again whole, released, and the
    node called it "unchanged": the PARTIAL report stood for good, also when sent again after a restart. A re-send
    in part, or of a study whose report is COMPLETE, still gives nothing new."""
    node = make_node()
    series = mr_series(tumor_channels())
    first = associate(node, MRImageStorage)
    assert [store(first, dataset) for dataset in series] == [0, 0, 0]
    first.abort()
    associations_ended(node)
    clock.advance(QUIET_SECONDS)
    assert len(process_and_send(node)) == 1
    (partial,) = results.by_modality("SR")
    assert partial.CompletionFlag == "PARTIAL"
    if restarted:
        node.stop()
        node = make_node()

    def send_again(datasets: list[Dataset]) -> list[str]:
        again = associate(node, MRImageStorage)
        assert [store(again, dataset) for dataset in datasets] == [0] * len(datasets)
        again.release()
        associations_ended(node)
        clock.advance(QUIET_SECONDS)
        return process_and_send(node)

    assert send_again(series[:2]) == []  # in part: the cut-off association may have meant to send more
    assert len(send_again(series)) == 1

    first_run, second_run = record(node)["runs"]
    assert second_run["summary"]["notes"] == [] and second_run["status"] == "analysed"
    complete = results.by_modality("SR")[-1]
    assert complete.CompletionFlag == "COMPLETE" and read_volume_report(complete)["notes"] == []
    assert complete.SeriesDescription.endswith(" - revised")
    (predecessor,) = complete.PredecessorDocumentsSequence[0].ReferencedSeriesSequence
    assert predecessor.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == partial.SOPInstanceUID
    assert "sent_whole_after_cut_off" not in record(node)
    sent = len(results.received)
    assert send_again(series) == []  # the same study again, now reported complete: nothing new
    assert len(results.received) == sent


def test_a_study_some_of_whose_instances_the_node_refused_says_so_in_its_report(
    make_node: Any, results: ResultStore, clock: Clock
) -> None:
    """Attack review 41: the node refused 10 of a study's 23 instances at C-STORE (a Patient ID it could not file),
    then reported the other 13 as the whole study, COMPLETE, without a word of the others."""
    node = make_node()
    series = mr_series([*tumor_channels(), *tumor_channels()])
    for dataset in series[4:]:
        dataset.Modality = "CT"  # an MR storage object of another modality: refused
    association = associate(node, MRImageStorage)
    assert [store(association, dataset) for dataset in series] == [0, 0, 0, 0, 0xC000, 0xC000]
    association.release()
    associations_ended(node)
    clock.advance(QUIET_SECONDS)

    assert len(process_and_send(node)) == 1

    note = REFUSED_NOTE.format(count=2)
    (run,) = record(node)["runs"]
    assert run["summary"]["notes"] == [note] and run["summary"]["slices"] == 4
    (report,) = results.by_modality("SR")
    assert read_volume_report(report)["notes"] == [note]
    assert report.CompletionFlag == "PARTIAL"
    assert "refused_instances" not in record(node)  # said once, in the run it belongs to


def record_if_written(node: DicomNode) -> dict[str, Any]:
    try:
        return record(node)
    except FileNotFoundError:
        return {}


def test_an_instance_still_being_written_when_its_sender_aborts_does_not_hold_its_study(
    make_node: Any, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """review24: the close of an aborted association came before its last C-STORE handler had stored the instance,
    which then put the association back among the open ones for good (held in memory, its study waiting)."""
    node = make_node()
    store_instance = node.spool.store_instance

    def store_slowly(*arguments: Any, **keywords: Any) -> str:
        time.sleep(1.5)  # a busy disk: the sender's 0.5 s DIMSE timeout passes, and it aborts
        return store_instance(*arguments, **keywords)

    monkeypatch.setattr(node.spool, "store_instance", store_slowly)
    ae = AE(ae_title=CALLING_AE)
    ae.add_requested_context(MRImageStorage)
    ae.dimse_timeout = 0.5
    association = ae.associate("127.0.0.1", node.config.port, ae_title=NODE_AE)
    association.send_c_store(mr_series(tumor_channels())[0])
    assert association.is_aborted

    assert wait_for(lambda: node.spool.pending_studies(), 10)  # stored after the close
    associations_ended(node)
    # Recorded once the late instance is written (flushed to disk), a moment after its study is marked pending.
    assert wait_for(lambda: "aborted_associations" in record_if_written(node), 10)
    clock.advance(QUIET_SECONDS)
    assert len(process_and_send(node)) == 1


def test_an_abort_counted_while_its_study_is_analysed_is_kept_for_the_next_run(
    make_node: Any, results: ResultStore, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """review24: the run's end removed the abort count it had not read, so the next run said nothing of it."""
    node = make_node()
    series = mr_series(tumor_channels())
    association = associate(node, MRImageStorage)
    assert [store(association, dataset) for dataset in series[:2]] == [0, 0]
    association.release()
    associations_ended(node)  # before the clock moves: the end restarts the quiet period at the clock's time
    clock.advance(QUIET_SECONDS)
    analyse = node.processor

    def abort_meanwhile(files: Any, notes: Any, complete: bool = True) -> Any:
        late = associate(node, MRImageStorage)  # the third slice comes, and its sender aborts, during the run
        assert store(late, series[2]) == 0
        late.abort()
        associations_ended(node)
        return analyse(files, notes, complete)

    monkeypatch.setattr(node, "processor", abort_meanwhile)
    assert len(process_and_send(node)) == 1
    monkeypatch.setattr(node, "processor", analyse)
    clock.advance(QUIET_SECONDS)
    assert len(process_and_send(node)) == 1

    first, second = record(node)["runs"]
    assert first["summary"]["notes"] == []
    assert second["summary"]["notes"] == [ABORTED_NOTE.format(count=1)]


def test_an_association_the_node_closes_for_idling_is_no_abort(
    make_node: Any, results: ResultStore, clock: Clock
) -> None:
    """review24: a router that leaves its association open until the node's idle timeout had sent all it meant to;
    counted as an abort, every SR said "instances may be missing"."""
    node = make_node(association_timeout_seconds=3.0)  # not 1 s: a stall between two stores would close it early
    association = associate(node, MRImageStorage)
    assert [store(association, dataset) for dataset in mr_series(tumor_channels())] == [0, 0, 0]
    assert wait_for(lambda: not association.is_established, 10)  # closed by the node
    associations_ended(node)  # the node's own end of it too, before the clock moves (it starts the quiet period)

    clock.advance(QUIET_SECONDS)
    assert len(process_and_send(node)) == 1
    assert read_volume_report(results.by_modality("SR")[0])["notes"] == []


def test_a_study_that_an_association_began_sending_during_the_pass_waits(
    make_node: Any, clock: Clock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """review24: the open associations were read once per pass, before a pass that can take minutes: a study whose
    sender came back meanwhile was processed with its association open."""
    node = make_node()
    first, second = mr_series(tumor_channels()), mr_series(tumor_channels())
    assert storescu(node, write_files(first, tmp_path / "first")).returncode == 0
    clock.advance(1)
    assert storescu(node, write_files(second[:2], tmp_path / "second")).returncode == 0
    clock.advance(QUIET_SECONDS)
    analyse, late = node.processor, []

    def second_sender_returns(files: Any, notes: Any, complete: bool = True) -> Any:
        if not late:  # while the first study is analysed, the second's sender sends its last slice, and holds on
            late.append(associate(node, MRImageStorage))
            assert store(late[0], second[2]) == 0
        return analyse(files, notes, complete)

    monkeypatch.setattr(node, "processor", second_sender_returns)
    assert len(process_and_send(node, associations_ended=False)) == 1  # the first study only
    late[0].release()
    associations_ended(node)  # before the clock moves: the end restarts the quiet period at the clock's time
    clock.advance(QUIET_SECONDS)
    assert len(process_and_send(node)) == 1


def test_an_instance_on_a_context_of_another_class_is_refused(make_node: Any) -> None:
    """review24: whether an instance was ignored was decided by the class its request named, which pynetdicom does
    not check against the negotiated context (one for a class the node ignores accepts every transfer syntax)."""
    node = make_node()
    request = SimpleNamespace(AffectedSOPClassUID=MRImageStorage, DataSet=io.BytesIO(b""))
    event = SimpleNamespace(
        request=request, context=SimpleNamespace(abstract_syntax=ComprehensiveSRStorage), assoc=object()
    )

    answer = node.receiver._handle_store(event)

    assert answer.Status == 0xA900
    assert answer.ErrorComment == "SOP Class UID is not its presentation context's"


def test_our_own_results_forwarded_with_the_study_are_taken_and_not_kept(
    make_node: Any, results: ResultStore, clock: Clock, tmp_path: Path
) -> None:
    """dicom24 finding 2: the node refused SEG and SR, so Orthanc could not forward a study that had results in it:
    the whole send failed before its first instance."""
    node = make_node()
    series = mr_series(tumor_channels())
    assert storescu(node, write_files(series, tmp_path / "in")).returncode == 0
    clock.advance(QUIET_SECONDS)
    process_and_send(node)
    (seg,) = results.by_modality("SEG")
    (sr,) = results.by_modality("SR")

    association = associate(node, MRImageStorage, SegmentationStorage, ComprehensiveSRStorage)
    statuses = [store(association, dataset) for dataset in (*series, seg, sr)]
    association.release()

    assert statuses == [0] * 5
    associations_ended(node)
    clock.advance(QUIET_SECONDS)
    assert process_and_send(node) == []  # the same three MR instances: nothing new to say, and no SEG or SR kept
    assert len(node.spool.instance_files(next(iter(node.spool.root.joinpath("studies").iterdir())).name)) == 3


def test_an_mr_object_of_another_modality_is_refused_at_store(make_node: Any) -> None:
    """dicom24 finding 6: MR Image Storage with Modality CT was kept (Success) and only recorded "not analysed"."""
    node = make_node()
    dataset = mr_series(tumor_channels())[0]
    dataset.Modality = "CT"
    association = associate(node, MRImageStorage)
    status = association.send_c_store(dataset)
    association.release()

    assert int(status.Status) == 0xC000
    assert status.ErrorComment == "an MR storage object must have Modality MR"
    assert node.spool.pending_studies() == {}


def test_the_node_analyses_an_instance_over_the_http_upload_limit(tmp_path: Path) -> None:
    """dicom24 finding 1: C-STORE kept instances up to DICOM_NODE_MAX_INSTANCE_BYTES, then analysis refused any over
    MAX_UPLOAD_BYTES (payload_too_large) and nothing reached the PACS."""
    series = mr_series(tumor_channels())
    size = len(to_bytes(series[0]))
    settings = Settings(max_upload_bytes=size // 2, dicom_node_max_instance_bytes=8 * size)
    files = write_files(series, tmp_path / "in")

    limits = UploadLimits.for_node(settings)
    analysis = ModelStudyProcessor(ThresholdPredictor(), limits=limits)(files)

    assert limits.max_upload_bytes == settings.dicom_node_max_instance_bytes
    assert limits.max_decode_bytes == settings.decode_memory_bytes
    assert analysis.status == "analysed", analysis.reason
    assert analysis.summary["slices"] == 3


def test_files_that_were_not_read_are_named_in_the_report(tmp_path: Path) -> None:
    """dicom24 finding 4: a received file left out at the series' end was counted nowhere in the SR."""
    files = write_files(mr_series(tumor_channels()), tmp_path / "in")
    broken = tmp_path / "in" / "broken.dcm"
    broken.write_bytes(b"no DICOM file")

    analysis = ModelStudyProcessor(ThresholdPredictor())([*files, broken])

    note = unread_files_note({"unreadable_header": 1})
    assert note == "1 received file was not read (unreadable_header: 1): the slices in them are not in this result"
    assert analysis.summary["notes"] == [note]
    report = read_volume_report(pydicom.dcmread(io.BytesIO(to_bytes(analysis.datasets[-1]))))
    assert report["notes"] == [note]


def test_a_file_left_out_by_the_flow_is_named_by_series_and_instance_number(tmp_path: Path) -> None:
    """Interop review 39: a corrupt instance was left out with "1 received file was not read (undecodable_dicom: 1)",
    nothing saying which; its index in the flow is the order the files arrived in, which no PACS user sees."""
    series = mr_series(tumor_channels() * 2)
    series[4].PixelData = series[4].PixelData[:-100]  # a header that reads, pixels that do not

    analysis = ModelStudyProcessor(ThresholdPredictor())(write_files(series[::-1], tmp_path / "in"))

    assert analysis.status == "analysed", analysis.reason
    assert analysis.summary["notes"] == [
        "1 received file was not read (invalid_dicom_image: 1; series 1: instance 5): the slices in them are not in "
        "this result"
    ]


@pytest.mark.parametrize(("errors", "expected"), [({"a": 2, "b": 1}, "3 received files were not read (a: 2, b: 1)")])
def test_the_unread_files_note_counts_by_code(errors: dict[str, int], expected: str) -> None:
    assert unread_files_note(errors).startswith(expected)
