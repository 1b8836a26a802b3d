"""A study revised at the DICOM node: what each destination gets to supersede what it holds (review 38).

The node sends by C-STORE, which cannot delete: a revision comes with a rejection note (IHE IOCM Key Object Selection)
for the earlier SEGs and SRs, and its SR names the reports it replaces. Both must be about what the destination
stored, whatever happened in between: revisions made while it was down, results purged from the spool, a destination
that refuses the note.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom.sop_class import ComprehensiveSRStorage, KeyObjectSelectionDocumentStorage, SegmentationStorage

from app.dicom.dicom_sr import REVISED_SUFFIX, SR_SERIES_DESCRIPTION
from app.dicom.dicom_sr_reader import predecessors
from app.dicom.rejection_note import REJECTION_SERIES_DESCRIPTION, WITHDRAWAL_SERIES_DESCRIPTION
from app.node.dicom_spool import SpoolLimits
from app.study_analysis import ModelStudyProcessor
from tests.dicom.builders import mr_series, to_bytes, tumor_channels
from tests.dicom.validation import dciodvfy_errors
from tests.node.node_support import (
    QUIET_SECONDS,
    Clock,
    ResultStore,
    ThresholdPredictor,
    free_port,
    process_and_send,
    record,
    records,
    send_study,
)

ALL_RESULTS = (SegmentationStorage, ComprehensiveSRStorage, KeyObjectSelectionDocumentStorage)
HOUR_SECONDS = 3600.0
WEEK_SECONDS = 7 * 24 * HOUR_SECONDS


class UpgradedPredictor(ThresholdPredictor):
    """The same masks from models of a newer version: what a site runs after upgrading its models."""

    model_tags = {"classifier": "threshold-classifier@0.2", "segmenter": "threshold-segmenter@0.2"}


def negative(series: list[Dataset]) -> list[Dataset]:
    """The series corrected to show no tumor (one bright pixel, nothing the threshold models call tumor); same UIDs."""
    series = copy.deepcopy(series)
    for dataset in series:
        corrected = np.zeros_like(dataset.pixel_array)
        corrected[0, 0] = 255
        dataset.PixelData = corrected.tobytes()
    return series


def moved(series: list[Dataset]) -> list[Dataset]:
    """The series with its first and last slices' pixels swapped: a tumor elsewhere, same UIDs."""
    series = copy.deepcopy(series)
    first, last = series[0].PixelData, series[-1].PixelData
    series[0].PixelData, series[-1].PixelData = last, first
    return series


def rejected(note: Dataset) -> set[str]:
    return {item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for item in note.ContentSequence}


def test_revisions_made_while_the_destination_was_down_reject_what_it_holds(
    make_node: Any, clock: Clock, tmp_path: Path
) -> None:
    """Review 38 F1: positive, then (destination down) negative, then moved. The destination got the last results
    and a note rejecting the middle run's SR, which it never had, and nothing rejected the first SEG it held."""
    port = free_port()
    node = make_node(destination_port=port)
    series = mr_series(tumor_channels())
    store = ResultStore(port, ALL_RESULTS)
    try:
        send_study(node, clock, series, tmp_path / "first")
        (first_seg,), (first_sr,) = store.by_modality("SEG"), store.by_modality("SR")
    finally:
        store.close()
    send_study(node, clock, negative(series), tmp_path / "negative")
    send_study(node, clock, moved(series), tmp_path / "moved")
    assert len(record(node)["runs"]) == 3

    store = ResultStore(port, ALL_RESULTS)
    try:
        clock.advance(HOUR_SECONDS)  # past the wait for a destination that could not be reached
        node.send_unsent()
        assert [len(store.by_modality(modality)) for modality in ("SEG", "SR", "KO")] == [1, 1, 1]
        (note,), (last_sr,) = store.by_modality("KO"), store.by_modality("SR")
        assert rejected(note) == {first_seg.SOPInstanceUID, first_sr.SOPInstanceUID}
        assert predecessors(last_sr) == [first_sr.SOPInstanceUID]  # not the middle run's, which it never had
        assert dciodvfy_errors(to_bytes(note), "KeyObjectSelectionDocument") == []
    finally:
        store.close()


def test_earlier_results_that_reach_the_destination_during_a_revision_are_rejected_by_it(
    make_node: Any, clock: Clock, tmp_path: Path
) -> None:
    """The first results, waiting for their destination, reach it while the revision is being analysed: the revision
    was made from the record read before the analysis, so its note and its report's predecessors missed them, and
    the destination kept the first SEG current."""
    port = free_port()
    node = make_node(destination_port=port)
    series = mr_series(tumor_channels())
    send_study(node, clock, series, tmp_path / "first")  # the destination is down: the results wait
    store = ResultStore(port, ALL_RESULTS)
    analyse = node.processor

    def deliver_first_then_analyse(*arguments: Any, **keywords: Any) -> Any:
        clock.advance(HOUR_SECONDS)  # past the wait for the destination, which is now up
        node.send_unsent()  # the sending thread, while the processing thread analyses
        return analyse(*arguments, **keywords)

    node.processor = deliver_first_then_analyse
    try:
        send_study(node, clock, negative(series), tmp_path / "negative")

        (first_seg,) = store.by_modality("SEG")
        first_sr, last_sr = store.by_modality("SR")
        (note,) = store.by_modality("KO")
        assert rejected(note) == {first_seg.SOPInstanceUID, first_sr.SOPInstanceUID}
        assert predecessors(last_sr) == [first_sr.SOPInstanceUID]
    finally:
        store.close()


def test_a_destination_that_never_got_the_earlier_results_gets_no_revision_of_them(
    make_node: Any, clock: Clock, tmp_path: Path
) -> None:
    """Review 38 F6: the first results reached no destination; the second are the first this destination sees, so
    they are no revision: no " - revised", no predecessor, no note."""
    port = free_port()
    node = make_node(destination_port=port)
    series = mr_series(tumor_channels())
    send_study(node, clock, series, tmp_path / "first")
    send_study(node, clock, negative(series), tmp_path / "negative")

    store = ResultStore(port, ALL_RESULTS)
    try:
        clock.advance(HOUR_SECONDS)
        node.send_unsent()
        assert [dataset.Modality for dataset in store.received] == ["SR"]
        (report,) = store.received
        assert report.SeriesDescription == SR_SERIES_DESCRIPTION
        assert predecessors(report) == []
    finally:
        store.close()


def test_a_revision_after_the_spool_purged_the_earlier_results_still_rejects_them(
    make_node: Any, clock: Clock, tmp_path: Path
) -> None:
    """Review 38 F3: the note was read from the earlier results' files, which the retention purge removes; a
    correction sent a week later came without one."""
    store = ResultStore(free_port(), ALL_RESULTS)
    try:
        node = make_node(destination_port=store.port, spool_limits=SpoolLimits(retention_seconds=WEEK_SECONDS))
        series = mr_series(tumor_channels())
        send_study(node, clock, series, tmp_path / "first")
        (first_seg,), (first_sr,) = store.by_modality("SEG"), store.by_modality("SR")
        clock.now = time.time() + WEEK_SECONDS + 60
        (study,) = node.purge_expired()
        assert not (node.spool.study_dir(study) / "results").exists()

        send_study(node, clock, negative(series), tmp_path / "negative")

        (note,) = store.by_modality("KO")
        assert rejected(note) == {first_seg.SOPInstanceUID, first_sr.SOPInstanceUID}
    finally:
        store.close()


def test_the_note_is_filed_under_the_study_s_patient_identity(make_node: Any, clock: Clock, tmp_path: Path) -> None:
    """Review 38 F4: the note lacked the Issuer of Patient ID and Study Description its SEG and SR carry; an archive
    keying patients by ID and issuer filed it under another patient."""
    store = ResultStore(free_port(), ALL_RESULTS)
    try:
        node = make_node(destination_port=store.port)
        series = mr_series(tumor_channels())
        for dataset in series:
            dataset.IssuerOfPatientID, dataset.StudyDescription = "SYNTH-SITE", "MRI BRAIN"
        send_study(node, clock, series, tmp_path / "first")
        send_study(node, clock, negative(series), tmp_path / "negative")

        (note,), (_, last_sr) = store.by_modality("KO"), store.by_modality("SR")
        for keyword in ("PatientID", "IssuerOfPatientID", "StudyInstanceUID", "StudyDescription", "AccessionNumber"):
            assert note.get(keyword) == last_sr.get(keyword) == series[0].get(keyword), keyword
    finally:
        store.close()


def test_a_destination_that_refuses_the_note_has_the_revision_delivered(
    make_node: Any, clock: Clock, tmp_path: Path
) -> None:
    """Review 38 F2: a destination that accepted the Key Object Selection context and refused the note's C-STORE
    (0x0122) had the study retried for good, every alert firing; the note is optional, as when declined at
    association, and recorded "declined" (F5: it was recorded "sent")."""
    store = ResultStore(free_port(), ALL_RESULTS, refused=("KO",))
    try:
        node = make_node(destination_port=store.port)
        series = mr_series(tumor_channels())
        send_study(node, clock, series, tmp_path / "first")
        send_study(node, clock, negative(series), tmp_path / "negative")
        received = len(store.received)
        clock.advance(HOUR_SECONDS)
        node.send_unsent()

        assert len(store.received) == received == 3  # SEG, SR, then the negative SR; the note refused once only
        last = record(node)["runs"][-1]
        (state,) = last["sent"].values()
        note = next(result for result in last["results"] if result["modality"] == "KO")
        assert (state["status"], state["declined"], note["file"] in state["stored"]) == ("sent", [note["file"]], False)
        statuses = {
            (entry["modality"], entry["status"]) for entry in node.spool.sent_log() if entry["run_id"] == last["run_id"]
        }
        assert statuses == {("SR", "sent"), ("KO", "declined")}
        assert node.spool.unsent_studies() == []  # settled: no alert on results waiting, and purged in time
    finally:
        store.close()


def series_split_over_two_studies() -> list[Dataset]:
    """Six slices of one series, the last three under a second Study Instance UID (a study split in the RIS)."""
    series = mr_series([*tumor_channels(), *tumor_channels()])
    second_study = generate_uid()
    for dataset in series[3:]:
        dataset.StudyInstanceUID = second_study
    return series


def test_a_series_part_under_another_study_uid_withdraws_the_result_sent_for_the_first_part(
    make_node: Any, clock: Clock, tmp_path: Path
) -> None:
    """Attack review 43 F5: the second part of a series split over two Study Instance UIDs came after the first part
    was analysed and sent; the second was refused, but the first part's SEG and SR stood as the study's result. Now
    the first part is refused too, and a rejection note withdraws what the destination holds of it."""
    port = free_port()
    node = make_node(destination_port=port)
    series = series_split_over_two_studies()
    store = ResultStore(port, ALL_RESULTS)
    try:
        send_study(node, clock, series[:3], tmp_path / "first")
        (seg,), (sr,) = store.by_modality("SEG"), store.by_modality("SR")

        send_study(node, clock, series[3:], tmp_path / "second")  # refused; the first part is reopened
        clock.advance(QUIET_SECONDS)
        process_and_send(node)

        (note,) = store.by_modality("KO")
        assert rejected(note) == {seg.SOPInstanceUID, sr.SOPInstanceUID}
        assert note.StudyInstanceUID == seg.StudyInstanceUID
        assert (len(store.by_modality("SEG")), len(store.by_modality("SR"))) == (1, 1)  # no new result claimed
        outcomes = [study["runs"][-1] for study in records(node)]
        assert [run["status"] for run in outcomes] == ["failed", "failed"]
        assert all(run["reason"].startswith("mixed_input: a series of this study") for run in outcomes)

        clock.advance(QUIET_SECONDS)  # two refused parts do not reopen each other
        assert process_and_send(node) == []
        assert len(store.received) == 3
    finally:
        store.close()


def test_a_series_part_under_another_study_uid_cancels_the_first_parts_results_not_yet_sent(
    make_node: Any, clock: Clock, tmp_path: Path
) -> None:
    """The same split found while the destination was down: the first part's results are never sent."""
    port = free_port()
    node = make_node(destination_port=port)
    series = series_split_over_two_studies()
    send_study(node, clock, series[:3], tmp_path / "first")  # nobody listens at the destination
    send_study(node, clock, series[3:], tmp_path / "second")
    clock.advance(QUIET_SECONDS)
    process_and_send(node)
    assert [study["runs"][-1]["status"] for study in records(node)] == ["failed", "failed"]

    store = ResultStore(port, ALL_RESULTS)
    try:
        clock.advance(HOUR_SECONDS)  # past the wait for a destination that could not be reached
        node.send_unsent()
        assert store.received == []
        assert node.spool.unsent_studies() == []
    finally:
        store.close()


def test_a_study_that_can_no_longer_be_analysed_withdraws_its_earlier_results(
    make_node: Any, clock: Clock, tmp_path: Path
) -> None:
    """Interop review 44 F2: a slice sent under a new SOP Instance UID at another's position makes the study
    unreadable (two different slices at one position); it was refused, and its earlier SEG and SR stood at the
    destination as the study's current result. A rejection note withdraws them now."""
    port = free_port()
    node = make_node(destination_port=port)
    series = mr_series(tumor_channels())
    again = copy.deepcopy(series[0])
    again.SOPInstanceUID, again.InstanceNumber = generate_uid(), len(series) + 1
    again.PixelData = series[1].PixelData  # another image: an identical one is read once (next test)
    store = ResultStore(port, ALL_RESULTS)
    try:
        send_study(node, clock, series, tmp_path / "first")
        (seg,), (sr,) = store.by_modality("SEG"), store.by_modality("SR")

        send_study(node, clock, [again], tmp_path / "again")

        assert record(node)["runs"][-1]["status"] == "failed"
        (note,) = store.by_modality("KO")
        assert rejected(note) == {seg.SOPInstanceUID, sr.SOPInstanceUID}
        # Nothing supersedes them: "Superseded results rejected" sent PACS users looking for newer ones (interop 58 F4)
        assert note.SeriesDescription == WITHDRAWAL_SERIES_DESCRIPTION
        assert (len(store.by_modality("SEG")), len(store.by_modality("SR"))) == (1, 1)
    finally:
        store.close()


def test_a_series_sent_again_under_new_instance_uids_keeps_the_study_analysed(
    make_node: Any, clock: Clock, tmp_path: Path
) -> None:
    """Interop review 58 F1: a PACS that sends a series again under new SOP Instance UIDs (a re-import) gave two
    identical slices at each position; the study was refused and its results withdrawn by a rejection note. Each
    slice is read once now: the study stays analysed, with the same figures, and nothing is withdrawn unreplaced."""
    port = free_port()
    node = make_node(destination_port=port)
    series = mr_series(tumor_channels())
    again = copy.deepcopy(series)
    for dataset in again:
        dataset.SOPInstanceUID = generate_uid()
    store = ResultStore(port, ALL_RESULTS)
    try:
        send_study(node, clock, series, tmp_path / "first")

        send_study(node, clock, again, tmp_path / "again")

        first, second = record(node)["runs"]
        assert second["status"] == "analysed", second
        assert second["summary"]["tumor_volume_ml"] == first["summary"]["tumor_volume_ml"]
        assert second["summary"]["slices"] == len(series)
        current = {store.by_modality(modality)[-1].SOPInstanceUID for modality in ("SEG", "SR")}
        for note in store.by_modality("KO"):
            assert not rejected(note) & current  # a note withdraws only what a newer result replaces
    finally:
        store.close()


def test_a_study_sent_again_after_a_model_upgrade_is_analysed_again_and_revises_the_old_results(
    make_node: Any, clock: Clock, tmp_path: Path
) -> None:
    """Durability review 45 F6: the same instances sent again to a node restarted with new model versions were
    called unchanged, and the destination kept the old models' results with no way to refresh them."""
    port = free_port()
    store = ResultStore(port, ALL_RESULTS)
    series = mr_series(tumor_channels())
    try:
        node = make_node(destination_port=port)
        send_study(node, clock, series, tmp_path / "first")
        (first_seg,), (first_sr,) = store.by_modality("SEG"), store.by_modality("SR")
        node.stop()

        upgraded = make_node(destination_port=port, processor=ModelStudyProcessor(UpgradedPredictor()))
        send_study(upgraded, clock, series, tmp_path / "again")
        assert [len(store.by_modality(modality)) for modality in ("SEG", "SR", "KO")] == [2, 2, 1]
        (note,), (_, new_sr) = store.by_modality("KO"), store.by_modality("SR")
        assert rejected(note) == {first_seg.SOPInstanceUID, first_sr.SOPInstanceUID}
        assert note.SeriesDescription == REJECTION_SERIES_DESCRIPTION
        assert predecessors(new_sr) == [first_sr.SOPInstanceUID]
        assert new_sr.SeriesDescription == SR_SERIES_DESCRIPTION + REVISED_SUFFIX
        runs = record(upgraded)["runs"]
        assert [run["models"] for run in runs] == [ThresholdPredictor.model_tags, UpgradedPredictor.model_tags]

        send_study(upgraded, clock, series, tmp_path / "third")  # the new models' result stands
        assert len(record(upgraded)["runs"]) == 2
        assert len(store.received) == 5
    finally:
        store.close()


def test_a_run_recorded_without_its_models_counts_as_made_by_the_current_ones(
    make_node: Any, results: ResultStore, clock: Clock, tmp_path: Path
) -> None:
    """A record written before runs kept their models: an upgrade does not analyse every such study sent again."""
    node = make_node()
    series = mr_series(tumor_channels())
    send_study(node, clock, series, tmp_path / "first")
    (study,) = (node.spool.root / "studies").iterdir()
    stored = json.loads((study / "record.json").read_text())
    for run in stored["runs"]:
        del run["models"]
    (study / "record.json").write_text(json.dumps(stored))
    node.stop()

    upgraded = make_node(processor=ModelStudyProcessor(UpgradedPredictor()))
    send_study(upgraded, clock, series, tmp_path / "again")
    assert len(record(upgraded)["runs"]) == 1
    assert len(results.received) == 2
