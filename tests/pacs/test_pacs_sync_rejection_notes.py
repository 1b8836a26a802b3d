"""pacs-sync and an IHE IOCM rejection note stored in a study it answered (interop review 48 F1), against a real
Orthanc: the KO series was not even looked at (not MR), and the SEG and SR made of the rejected images stood. Now a
new or changed KO series has the study analysed again without the instances its rejection notes reject."""

from __future__ import annotations

from pathlib import Path

from pydicom.sr.codedict import codes

from app.dicom.dicom_seg_reader import read_segmentation_masks
from app.dicom.dicom_sr_reader import predecessors
from app.inference import Predictor
from app.pacs.orthanc_client import SYNC_METADATA
from app.pacs.pacs_sync import SyncReport, run_pacs_sync
from tests.dicom.builders import key_object_selection, mr_series, referenced, to_bytes, tumor_channels
from tests.pacs.orthanc_server import Orthanc
from tests.pacs.pacs_sync_support import config_for


def test_pacs_sync_analyses_a_study_again_without_the_instances_a_rejection_note_rejects(
    orthanc: Orthanc, predictor: Predictor, tmp_path: Path
) -> None:
    series = mr_series(tumor_channels())
    study_uid = series[0].StudyInstanceUID
    config = config_for(orthanc, tmp_path / "state.json")
    study_id = orthanc.study_of(orthanc.upload(series))
    assert run_pacs_sync(config, predictor, once=True) == SyncReport(positive=1)
    (first_sr,) = orthanc.results(study_uid, "SR")

    orthanc.upload([key_object_selection(series, series[-1:])])
    orthanc.wait_until_stable(f"/studies/{study_id}")
    report = run_pacs_sync(config, predictor, once=True)

    assert report == SyncReport(positive=1)
    (seg,), (sr,) = orthanc.results(study_uid, "SEG"), orthanc.results(study_uid, "SR")  # the earlier ones deleted
    assert len(read_segmentation_masks(to_bytes(seg))) == 2
    assert series[-1].SOPInstanceUID not in referenced(seg) | referenced(sr)
    assert predecessors(sr) == [first_sr.SOPInstanceUID]
    record = orthanc.record(study_id)
    # Review 48r F6: the rejected file is not counted among those analysed.
    assert (record["summary"]["files"], record["summary"]["slices"], record["instances_rejected"]) == (2, 2, 1)

    orthanc.wait_until_stable(f"/studies/{study_id}")
    assert run_pacs_sync(config, predictor, once=True).positive == 0  # no loop: the result stands


def test_pacs_sync_withdraws_its_results_when_every_instance_is_rejected(
    orthanc: Orthanc, predictor: Predictor, tmp_path: Path
) -> None:
    series = mr_series(tumor_channels())
    study_uid = series[0].StudyInstanceUID
    config = config_for(orthanc, tmp_path / "state.json")
    study_id = orthanc.study_of(orthanc.upload(series))
    assert run_pacs_sync(config, predictor, once=True) == SyncReport(positive=1)

    orthanc.upload([key_object_selection(series, series, codes.DCM.IncorrectModalityWorklistEntry)])
    orthanc.wait_until_stable(f"/studies/{study_id}")
    report = run_pacs_sync(config, predictor, once=True)

    assert report == SyncReport(not_analysed=1)
    assert orthanc.results(study_uid, "SEG") == [] and orthanc.results(study_uid, "SR") == []
    assert orthanc.record(study_id)["instances_rejected"] == 3


def test_pacs_sync_keeps_its_result_for_an_ordinary_key_image_selection(
    orthanc: Orthanc, predictor: Predictor, tmp_path: Path
) -> None:
    series = mr_series(tumor_channels())
    study_uid = series[0].StudyInstanceUID
    config = config_for(orthanc, tmp_path / "state.json")
    study_id = orthanc.study_of(orthanc.upload(series))
    assert run_pacs_sync(config, predictor, once=True) == SyncReport(positive=1)
    (seg,) = orthanc.results(study_uid, "SEG")

    orthanc.upload([key_object_selection(series, series[-1:], codes.DCM.OfInterest)])
    orthanc.wait_until_stable(f"/studies/{study_id}")
    report = run_pacs_sync(config, predictor, once=True)

    assert report.positive == 0
    assert [result.SOPInstanceUID for result in orthanc.results(study_uid, "SEG")] == [seg.SOPInstanceUID]


def test_pacs_sync_leaves_alone_a_study_holding_only_a_ko_series(
    orthanc: Orthanc, predictor: Predictor, tmp_path: Path
) -> None:
    """Review 48r F7: a study of a KO series alone (the DICOM node's withdrawal note at a destination Orthanc) was
    recorded "not analysed: no FLAIR series"; a study without MR series was never looked at before."""
    series = mr_series(tumor_channels())
    config = config_for(orthanc, tmp_path / "state.json")
    study_id = orthanc.study_of(orthanc.upload([key_object_selection(series, series[-1:])]))
    orthanc.wait_until_stable(f"/studies/{study_id}")

    assert run_pacs_sync(config, predictor, once=True) == SyncReport()
    assert (
        orthanc.session.get(f"{orthanc.url}/studies/{study_id}/metadata/{SYNC_METADATA}", timeout=30).status_code == 404
    )
