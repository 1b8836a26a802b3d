"""An instance corrected, then sent again as it was (attack review 27, finding 5).

The node called the study "unchanged" because an earlier run had analysed those very instances, and sent nothing:
the newest results at the destination described the correction, which the node no longer held. Now the latest run
decides, and the report that replaces the correction's is a new document (its own UIDs), which the destination
cannot take for the first run's copy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from app.dicom.dicom_sr_reader import predecessors, read_volume_report
from app.node.dicom_study_runs import already_analysed
from tests.dicom.builders import mr_series, tumor_channels, write_files
from tests.node.node_support import QUIET_SECONDS, Clock, ResultStore, process_and_send, record, storescu


def test_an_instance_sent_again_as_it_was_before_its_correction_is_analysed_again(
    make_node: Any, results: ResultStore, clock: Clock, tmp_path: Path
) -> None:
    node = make_node()
    series = mr_series(tumor_channels())
    original = series[2].PixelData
    assert storescu(node, write_files(series, tmp_path / "a")).returncode == 0
    clock.advance(QUIET_SECONDS)
    process_and_send(node)
    series[2].PixelData = np.zeros((256, 256), np.uint8).tobytes()  # corrected, same SOP Instance UID
    assert storescu(node, write_files(series[2:], tmp_path / "b")).returncode == 0
    clock.advance(QUIET_SECONDS)
    process_and_send(node)
    series[2].PixelData = original  # and back
    assert storescu(node, write_files(series[2:], tmp_path / "a_again")).returncode == 0
    clock.advance(QUIET_SECONDS)

    assert len(process_and_send(node)) == 1

    first, corrected, again = record(node)["runs"]
    assert again["fingerprint"] == first["fingerprint"] and again["status"] == "analysed"
    assert again["supersedes"] == corrected["run_id"]
    first_sr, corrected_sr, again_sr = results.by_modality("SR")
    assert read_volume_report(again_sr)["tumor_volume_ml"] == read_volume_report(first_sr)["tumor_volume_ml"]
    assert again_sr.SOPInstanceUID not in (first_sr.SOPInstanceUID, corrected_sr.SOPInstanceUID)
    assert predecessors(again_sr) == [corrected_sr.SOPInstanceUID]
    # The SEG too is a new object (the first run's, made again, would be ignored by a PACS that holds it, leaving
    # the correction's SEG the newest), and the report refers to it by its new UIDs.
    first_seg, corrected_seg, again_seg = results.by_modality("SEG")
    assert again_seg.SOPInstanceUID not in (first_seg.SOPInstanceUID, corrected_seg.SOPInstanceUID)
    assert again_seg.SeriesInstanceUID not in (first_seg.SeriesInstanceUID, corrected_seg.SeriesInstanceUID)
    assert again_seg.file_meta.MediaStorageSOPInstanceUID == again_seg.SOPInstanceUID
    assert read_volume_report(again_sr)["segmentation_sop_instance_uids"] == [again_seg.SOPInstanceUID]
    evidence = [
        (series.SeriesInstanceUID, instance.ReferencedSOPInstanceUID)
        for study in again_sr.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for instance in series.ReferencedSOPSequence
    ]
    assert (again_seg.SeriesInstanceUID, again_seg.SOPInstanceUID) in evidence
    assert first_seg.SOPInstanceUID not in str(again_sr)


def test_only_the_latest_outcome_makes_instances_already_analysed() -> None:
    runs = [
        {"fingerprint": "a", "status": "analysed"},
        {"fingerprint": "b", "status": "analysed"},
        {"fingerprint": "a", "status": "error"},  # an error run is no outcome
    ]

    assert not already_analysed(runs, "a", {})
    assert already_analysed(runs, "b", {})
    assert not already_analysed([], "a", {})
    assert not already_analysed([{"fingerprint": "a", "status": "not_analysed"}], "a", {})


def test_a_study_sent_again_with_a_corrected_patient_name_gets_results_of_their_own(
    make_node: Any, results: ResultStore, clock: Clock, tmp_path: Path
) -> None:
    """Interop review 40: the same instances sent again with a corrected Patient's Name and Accession Number made a SEG
    and SR of other content under the UIDs already delivered, which a PACS keeping the first copy of a UID ignored.
    One UID stands for one content: the correction's results are new objects, and its report replaces the first."""
    node = make_node()
    series = mr_series(tumor_channels())
    assert storescu(node, write_files(series, tmp_path / "a")).returncode == 0
    clock.advance(QUIET_SECONDS)
    process_and_send(node)
    for dataset in series:
        dataset.PatientName, dataset.AccessionNumber = "Corrected^Name", "ACCFIXED"
    assert storescu(node, write_files(series, tmp_path / "b")).returncode == 0
    clock.advance(QUIET_SECONDS)

    assert len(process_and_send(node)) == 1

    first_sr, corrected_sr = results.by_modality("SR")
    first_seg, corrected_seg = results.by_modality("SEG")
    assert corrected_sr.SOPInstanceUID != first_sr.SOPInstanceUID
    assert corrected_seg.SOPInstanceUID != first_seg.SOPInstanceUID
    assert (str(corrected_sr.PatientName), corrected_sr.AccessionNumber) == ("Corrected^Name", "ACCFIXED")
    assert predecessors(corrected_sr) == [first_sr.SOPInstanceUID]
