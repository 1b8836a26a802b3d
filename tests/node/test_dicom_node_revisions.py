"""A study revised at the DICOM node: what each destination gets to supersede what it holds (review 38).

The node sends by C-STORE, which cannot delete: a revision comes with a rejection note (IHE IOCM Key Object Selection)
for the earlier SEGs and SRs, and its SR names the reports it replaces. Both must be about what the destination
stored, whatever happened in between: revisions made while it was down, results purged from the spool, a destination
that refuses the note.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pynetdicom.sop_class import ComprehensiveSRStorage, KeyObjectSelectionDocumentStorage, SegmentationStorage

from app.dicom.dicom_sr import SR_SERIES_DESCRIPTION
from app.dicom.dicom_sr_reader import predecessors
from app.node.dicom_spool import SpoolLimits
from tests.dicom.builders import mr_series, to_bytes, tumor_channels
from tests.dicom.validation import dciodvfy_errors
from tests.node.node_support import Clock, ResultStore, free_port, record, send_study

ALL_RESULTS = (SegmentationStorage, ComprehensiveSRStorage, KeyObjectSelectionDocumentStorage)
HOUR_SECONDS = 3600.0
WEEK_SECONDS = 7 * 24 * HOUR_SECONDS


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
