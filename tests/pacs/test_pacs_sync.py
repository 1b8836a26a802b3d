"""pacs-sync against a real Orthanc started by the tests on 127.0.0.1: what it stores, and when it stores it again."""

from __future__ import annotations

import argparse
import json
import logging
import re
import subprocess
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pydicom
import pytest
import requests
from pydicom.dataset import Dataset
from pydicom.uid import JPEGExtended12Bit, generate_uid

from app import cli
from app.dicom.dicom_input import undecodable_transfer_syntax
from app.dicom.dicom_seg import SEG_SERIES_NUMBER
from app.dicom.dicom_seg_reader import read_segmentation_masks
from app.dicom.dicom_sr import SR_SERIES_NUMBER
from app.dicom.dicom_sr_reader import predecessors, read_volume_report
from app.inference import Predictor
from app.pacs import pacs_sync
from app.pacs.orthanc_client import OrthancClient
from app.pacs.pacs_study import StudySync
from app.pacs.pacs_sync import SyncReport, run_pacs_sync, sync_once
from app.pacs.pacs_sync_state import SyncState
from app.series.sequence_roles import StudySelection
from app.study_analysis import ModelStudyProcessor, StudyAnalysis
from tests.dicom.builders import (
    SLICE_GAP_MM,
    Study,
    lossy_copies,
    mr_dataset,
    mr_series,
    to_bytes,
    tumor_channels,
    write_files,
)
from tests.dicom.validation import dciodvfy_errors
from tests.node.node_support import dcmtk
from tests.pacs.orthanc_server import Orthanc, free_port, running_orthanc
from tests.pacs.pacs_sync_support import (
    NegativePredictor,
    assert_masks_are_the_predictions,
    cli_settings,
    config_for,
)


def test_pacs_sync_stores_a_seg_and_a_volume_report_once(
    orthanc: Orthanc, predictor: Predictor, tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    series = mr_series(tumor_channels())
    study_uid = series[0].StudyInstanceUID
    config = config_for(orthanc, tmp_path / "state.json")
    study_id = orthanc.study_of(orthanc.upload(series))

    report = run_pacs_sync(config, predictor, once=True)

    assert report == SyncReport(positive=1)
    (seg,) = orthanc.results(study_uid, "SEG")
    (sr,) = orthanc.results(study_uid, "SR")
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == series[0].SeriesInstanceUID
    assert seg.SeriesNumber == SEG_SERIES_NUMBER and sr.SeriesNumber == SR_SERIES_NUMBER
    assert_masks_are_the_predictions(seg, series, predictor)
    record = orthanc.record(study_id)
    figures = read_volume_report(sr)
    assert figures["finding"] == "Present"
    assert figures["segmentation_sop_instance_uid"] == seg.SOPInstanceUID
    assert figures["tumor_volume_ml"] == pytest.approx(record["summary"]["tumor_volume_ml"], abs=5e-4)  # DS: 3 decimals
    assert (figures["slices_analysed"], figures["slices_with_tumor"]) == (3, 3)
    assert record["status"] == "positive"
    assert (record["seg_sop_instance_uid"], record["sr_sop_instance_uid"]) == (seg.SOPInstanceUID, sr.SOPInstanceUID)
    assert record["summary"]["models"] == predictor.model_tags
    assert dciodvfy_errors(sr, "ComprehensiveSR") == []
    assert dciodvfy_errors(seg, "Segmentation") == []

    # The CLI after a restart, with the same state file: the change was handled, nothing is looked at again.
    parser = argparse.ArgumentParser()
    cli.add_pacs_sync_arguments(parser)
    args = parser.parse_args(["--orthanc", orthanc.url, "--state-file", str(config.state_file), "--once"])
    assert pacs_sync.main(args, settings=cli_settings(tiny_model_dir)) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == SyncReport().as_dict()
    # Without the state, the change log is read again: the record says done, so no second SEG.
    (tmp_path / "state.json").unlink()
    replay = config_for(orthanc, tmp_path / "state.json")
    SyncState(replay.state_file, last_change=0).save()
    orthanc.wait_until_stable(f"/studies/{study_id}")  # the SEG and SR stored made it unstable for StableAge
    assert run_pacs_sync(replay, predictor, once=True).already_done >= 1
    assert len(orthanc.results(study_uid, "SEG")) == 1 and len(orthanc.results(study_uid, "SR")) == 1


def test_pacs_sync_stores_a_volume_report_for_a_negative_study(orthanc: Orthanc, tmp_path: Path) -> None:
    series = mr_series(tumor_channels())
    config = config_for(orthanc, tmp_path / "state.json")
    study_id = orthanc.study_of(orthanc.upload(series))

    report = run_pacs_sync(config, NegativePredictor(), once=True)  # type: ignore[arg-type]

    assert report == SyncReport(negative=1)
    assert orthanc.results(series[0].StudyInstanceUID, "SEG") == []
    (sr,) = orthanc.results(series[0].StudyInstanceUID, "SR")
    figures = read_volume_report(sr)
    assert (figures["finding"], figures["tumor_volume_ml"], figures["slices_analysed"]) == ("Absent", 0.0, 3)
    assert orthanc.record(study_id)["status"] == "negative"


def test_pacs_sync_stores_the_report_alone_for_a_positive_study_no_seg_can_be_made_of(
    orthanc: Orthanc, predictor: Predictor, tmp_path: Path
) -> None:
    """Interop review 62 F1: slices without a Frame of Reference UID cannot be covered by a SEG; the study was failed,
    tried again `PACS_MAX_ATTEMPTS` times (each a full analysis) and given up, and Orthanc got no report."""
    series = mr_series(tumor_channels())
    for dataset in series:
        del dataset.FrameOfReferenceUID
    config = config_for(orthanc, tmp_path / "state.json")
    study_id = orthanc.study_of(orthanc.upload(series))

    report = run_pacs_sync(config, predictor, once=True)

    assert report == SyncReport(positive=1)
    assert orthanc.results(series[0].StudyInstanceUID, "SEG") == []
    (sr,) = orthanc.results(series[0].StudyInstanceUID, "SR")
    figures = read_volume_report(sr)
    assert (figures["finding"], figures["slices_with_tumor"]) == ("Present", 3)
    assert any(note.startswith("No DICOM SEG was made of this series: ") for note in figures["notes"])
    assert orthanc.record(study_id)["summary"]["segmentation_refused"]


def test_pacs_sync_does_not_segment_a_t1_only_study_then_segments_its_late_flair(
    orthanc: Orthanc, predictor: Predictor, tmp_path: Path
) -> None:
    study = Study()
    pre = mr_series(tumor_channels(0), study=study, series_number=2, series_description="AX T1 PRE")
    post = mr_series(tumor_channels(2), study=study, series_number=3, series_description="AX T1 POST GAD")
    config = config_for(orthanc, tmp_path / "state.json")
    orthanc.upload(pre)
    study_id = orthanc.study_of(orthanc.upload(post))

    first = run_pacs_sync(config, predictor, once=True)

    assert first == SyncReport(not_analysed=1)
    assert orthanc.results(study.study_uid, "SEG") == [] and orthanc.results(study.study_uid, "SR") == []
    record = orthanc.record(study_id)
    assert record["status"] == "not_analysed"
    assert record["reason"].startswith("the study has no FLAIR series")
    assert {item["role"] for item in record["summary"]["series"]} == {"T1 pre-contrast", "T1 post-contrast"}

    flair = mr_series(tumor_channels(), study=study, series_number=1, series_description="AX FLAIR")
    orthanc.upload(flair)
    second = run_pacs_sync(config, predictor, once=True)

    assert second == SyncReport(positive=1)
    (seg,) = orthanc.results(study.study_uid, "SEG")
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == flair[0].SeriesInstanceUID
    summary = orthanc.record(study_id)["summary"]
    assert summary["channels"] == 3  # the two T1 series pair with FLAIR, by their attributes
    assert {item["role"] for item in summary["series"] if item["used"]} == {
        "FLAIR",
        "T1 pre-contrast",
        "T1 post-contrast",
    }


def test_pacs_sync_once_counts_and_logs_a_study_still_waiting_for_stable_age(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """Interop review 48 F5: a study stored within Orthanc's StableAge made ``--once`` print all zeros and log
    nothing, which an operator reads as "nothing to do"; the study was in fact waiting to be analysed."""
    (tmp_path / "pacs").mkdir()
    with running_orthanc(tmp_path / "pacs", stable_age=120) as orthanc:
        state_file = tmp_path / "state.json"
        config_for(orthanc, state_file)
        study_id = orthanc.study_of(orthanc.store(mr_series(tumor_channels())))
        parser = argparse.ArgumentParser()
        cli.add_pacs_sync_arguments(parser)
        args = parser.parse_args(["--orthanc", orthanc.url, "--state-file", str(state_file), "--once"])

        with caplog.at_level(logging.INFO, logger=pacs_sync.__name__):
            assert pacs_sync.main(args, settings=cli_settings(tiny_model_dir)) == 0

    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == SyncReport(waiting_for_stable=1).as_dict()
    (waiting,) = [record for record in caplog.records if record.getMessage().startswith("studies waiting")]
    assert waiting.fields["orthanc_studies"] == [study_id]  # type: ignore[attr-defined]
    assert waiting.fields["waiting_for_stable"] == 1  # type: ignore[attr-defined]


@pytest.mark.parametrize("read_before_restart", [True, False], ids=["changes read before", "changes read after"])
def test_pacs_sync_analyses_a_series_whose_stable_change_an_orthanc_restart_lost(
    predictor: Predictor, tmp_path: Path, read_before_restart: bool
) -> None:
    # Orthanc keeps its StableAge timers in memory: restarted while a series is still receiving, it calls the series
    # stable afterwards but never logs a StableSeries change for it.
    series = mr_series(tumor_channels())
    port, now = free_port(), [1000.0]
    state_file = tmp_path / "state.json"
    (tmp_path / "pacs").mkdir()
    with running_orthanc(tmp_path / "pacs", stable_age=120, port=port) as orthanc:
        config = config_for(orthanc, state_file)
        study_id = orthanc.study_of(orthanc.store(series))
        if read_before_restart:
            not_stable = run_pacs_sync(config, predictor, once=True, clock=lambda: now[0])
            assert not_stable == SyncReport(waiting_for_stable=1)
    with running_orthanc(tmp_path / "pacs", stable_age=120, port=port) as orthanc:
        assert orthanc.get(f"/studies/{study_id}")["IsStable"]
        assert "StableSeries" not in {change["ChangeType"] for change in orthanc.get("/changes")["Changes"]}
        if not read_before_restart:
            assert run_pacs_sync(config, predictor, once=True, clock=lambda: now[0]) == SyncReport(waiting_for_stable=1)
        now[0] += config.poll_seconds

        assert run_pacs_sync(config, predictor, once=True, clock=lambda: now[0]) == SyncReport(positive=1)

        assert len(orthanc.results(series[0].StudyInstanceUID, "SEG")) == 1
        assert orthanc.record(study_id)["status"] == "positive"
        now[0] += config.poll_seconds
        assert run_pacs_sync(config, predictor, once=True, clock=lambda: now[0]) == SyncReport()  # looked at once


def test_pacs_sync_revises_a_result_when_late_instances_lost_their_stable_change_to_an_orthanc_restart(
    predictor: Predictor, tmp_path: Path
) -> None:
    # Durability review 45 F1: late instances of a series already analysed log only NewInstance; an Orthanc stopped
    # within StableAge never logs their StableSeries, and the result without them stood as current.
    series = mr_series(tumor_channels())
    port, now = free_port(), [1000.0]
    state_file = tmp_path / "state.json"
    (tmp_path / "pacs").mkdir()
    with running_orthanc(tmp_path / "pacs", port=port) as orthanc:
        config = config_for(orthanc, state_file)
        study_id = orthanc.study_of(orthanc.upload(series[:2]))
        assert run_pacs_sync(config, predictor, once=True, clock=lambda: now[0]) == SyncReport(positive=1)
        orthanc.wait_until_stable(f"/studies/{study_id}")
        analysed_up_to = orthanc.last_change()
    with running_orthanc(tmp_path / "pacs", stable_age=120, port=port) as orthanc:
        orthanc.store(series[2:])
    with running_orthanc(tmp_path / "pacs", stable_age=120, port=port) as orthanc:
        later = orthanc.get(f"/changes?since={analysed_up_to}")["Changes"]
        assert {change["ChangeType"] for change in later} >= {"NewInstance"}
        assert "StableSeries" not in {change["ChangeType"] for change in later}
        assert run_pacs_sync(config, predictor, once=True, clock=lambda: now[0]) == SyncReport(waiting_for_stable=1)
        now[0] += config.poll_seconds

        assert run_pacs_sync(config, predictor, once=True, clock=lambda: now[0]) == SyncReport(positive=1)

        assert orthanc.record(study_id)["summary"]["slices"] == 3
        (seg,) = orthanc.results(series[0].StudyInstanceUID, "SEG")
        assert len(read_segmentation_masks(to_bytes(seg))) == 3
        now[0] += config.poll_seconds
        assert run_pacs_sync(config, predictor, once=True, clock=lambda: now[0]) == SyncReport()  # looked at once


ORTHANC_ID = re.compile(r"[0-9a-f]{8}(-[0-9a-f]{8}){4}")


class AnswerCounter:
    """Counts a client's requests and the bytes of their answers by kind of request (``"GET /series/<id>"``)."""

    def __init__(self, client: OrthancClient) -> None:
        self.calls: Counter[str] = Counter()
        self.answer_bytes = 0
        client.session.hooks["response"].append(self._count)

    def _count(self, response: requests.Response, *args: object, **kwargs: object) -> None:
        path = ORTHANC_ID.sub("<id>", requests.utils.urlparse(response.url).path)
        self.calls[f"{response.request.method} {path}"] += 1
        self.answer_bytes += len(response.content)

    def clear(self) -> None:
        self.calls.clear()
        self.answer_bytes = 0


def test_pacs_sync_asks_for_a_receiving_series_once_a_pass_however_many_instances_arrive(
    predictor: Predictor, tmp_path: Path
) -> None:
    # Attack review 46 F4: each NewInstance was resolved by /instances/<id>/series, whose answer lists every instance
    # of the series: a series of N arriving cost N requests of N instance IDs each, at each read of the log.
    (tmp_path / "pacs").mkdir()
    with running_orthanc(tmp_path / "pacs", stable_age=120) as orthanc:
        config = config_for(orthanc, tmp_path / "state.json")
        client = OrthancClient(config)
        counter = AnswerCounter(client)
        answer_bytes = {}
        for waiting, instances in enumerate((10, 60), start=1):
            study, series_uid = Study(), generate_uid()
            image = np.full((8, 8), 7, np.uint8)
            orthanc.store([mr_dataset(image, study, series_uid, n + 1, n * SLICE_GAP_MM) for n in range(instances)])
            counter.clear()

            report = run_pacs_sync(config, predictor, once=True, client=client, clock=lambda: 1000.0)

            assert report == SyncReport(waiting_for_stable=waiting)  # still receiving: looked at at a later pass
            assert counter.calls["GET /instances/<id>"] == instances
            assert counter.calls["GET /series/<id>"] == 1
            assert counter.calls["GET /instances/<id>/series"] == 0
            answer_bytes[instances] = counter.answer_bytes
        assert len(SyncState.load(config.state_file).receiving) == 2  # both studies, looked at later
    assert answer_bytes[60] < 6 * answer_bytes[10] * 1.25  # linear in the instances


def test_pacs_sync_asks_orthanc_for_an_uncompressed_copy_of_what_it_cannot_decode(
    orthanc: Orthanc, predictor: Predictor, tmp_path: Path
) -> None:
    # Interop review 35: a study Orthanc stores as 12-bit JPEG Extended (no decoder here) was failed and given up,
    # though Orthanc decodes it; the node's path worked (Orthanc transcodes when it sends).
    if undecodable_transfer_syntax(JPEGExtended12Bit, 12) is None:
        pytest.skip("this environment decodes 12-bit JPEG itself")
    study, series_uid = Study(), generate_uid()
    series = [
        mr_dataset(image.astype(np.uint16) * 16, study, series_uid, index + 1, index * SLICE_GAP_MM, bits_stored=12)
        for index, image in enumerate(tumor_channels())
    ]
    config = config_for(orthanc, tmp_path / "state.json")
    stored_series, stored_uids = set(), set()
    for path in write_files(series, tmp_path / "plain"):
        compressed = tmp_path / "jpeg12" / path.name
        compressed.parent.mkdir(exist_ok=True)
        subprocess.run([dcmtk("dcmcjpeg"), "+ee", str(path), str(compressed)], check=True, capture_output=True)
        header = pydicom.dcmread(compressed, stop_before_pixels=True)
        assert header.file_meta.TransferSyntaxUID == JPEGExtended12Bit
        stored_uids.add(header.SOPInstanceUID)  # lossy: dcmtk gives each a new one, as the standard requires
        stored = orthanc.session.post(f"{orthanc.url}/instances", data=compressed.read_bytes(), timeout=30)
        stored.raise_for_status()
        stored_series.add(stored.json()["ParentSeries"])
    (series_id,) = stored_series
    study_id = orthanc.study_of(series_id)
    orthanc.wait_until_stable(f"/studies/{study_id}")

    report = run_pacs_sync(config, predictor, once=True)

    assert report.failed == 0 and report.positive + report.negative == 1
    assert orthanc.record(study_id)["status"] in ("positive", "negative")
    (sr,) = orthanc.results(study.study_uid, "SR")
    assert read_volume_report(sr)["slices_analysed"] == 3
    evidence = {  # the SR names its sources by the stored UIDs, not a transcoded copy's
        item.SeriesInstanceUID: item
        for item in sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
    }
    assert {item.ReferencedSOPInstanceUID for item in evidence[series_uid].ReferencedSOPSequence} == stored_uids
    # Orthanc transcoded without storing anything: the study holds the JPEG files and the results only.
    assert len(orthanc.get(f"/series/{series_id}")["Instances"]) == 3


def test_pacs_sync_supersedes_its_result_when_a_late_instance_arrives(
    orthanc: Orthanc, predictor: Predictor, tmp_path: Path
) -> None:
    series = mr_series(tumor_channels())
    study_uid = series[0].StudyInstanceUID
    config = config_for(orthanc, tmp_path / "state.json")
    study_id = orthanc.study_of(orthanc.upload(series[:2]))
    assert run_pacs_sync(config, predictor, once=True) == SyncReport(positive=1)
    (first_seg,) = orthanc.results(study_uid, "SEG")
    (first_sr,) = orthanc.results(study_uid, "SR")
    assert len(read_segmentation_masks(to_bytes(first_seg))) == 2

    orthanc.upload(series[2:])
    report = run_pacs_sync(config, predictor, once=True)

    assert report == SyncReport(positive=1)
    (seg,) = orthanc.results(study_uid, "SEG")  # the earlier SEG and SR are deleted
    (sr,) = orthanc.results(study_uid, "SR")
    assert seg.SeriesInstanceUID != first_seg.SeriesInstanceUID and seg.SeriesNumber == first_seg.SeriesNumber
    assert sr.SeriesInstanceUID != first_sr.SeriesInstanceUID
    assert_masks_are_the_predictions(seg, series, predictor)
    assert read_volume_report(sr)["segmentation_sop_instance_uid"] == seg.SOPInstanceUID
    record = orthanc.record(study_id)
    assert sorted(record["superseded"]) == sorted([first_seg.SeriesInstanceUID, first_sr.SeriesInstanceUID])
    assert record["summary"]["slices"] == 3
    # The new report names the deleted one: an archive the first was forwarded to can tell which is current.
    assert predecessors(first_sr) == []
    assert predecessors(sr) == [first_sr.SOPInstanceUID]
    series_item = sr.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0]
    assert series_item.SeriesInstanceUID == first_sr.SeriesInstanceUID
    assert series_item.ReferencedSOPSequence[0].ReferencedSOPClassUID == first_sr.SOPClassUID
    assert dciodvfy_errors(sr, "ComprehensiveSR") == []


def test_pacs_sync_leaves_a_revised_result_standing_when_copies_of_its_slices_arrive(
    orthanc: Orthanc, predictor: Predictor, tmp_path: Path
) -> None:
    """Interop review 55 F1: lossy copies of the slices (new UIDs, each naming its original) change nothing the
    analysis reads; after a revision, pacs-sync stored one more identical " - revised" SEG and SR and deleted the
    current ones. The DICOM node gives the same results under the same UIDs, and so does pacs-sync now."""
    series = mr_series(tumor_channels())
    study_uid = series[0].StudyInstanceUID
    config = config_for(orthanc, tmp_path / "state.json")
    study_id = orthanc.study_of(orthanc.upload(series[:2]))
    assert run_pacs_sync(config, predictor, once=True) == SyncReport(positive=1)
    orthanc.upload(series[2:])
    assert run_pacs_sync(config, predictor, once=True) == SyncReport(positive=1)  # a revision: a slice came
    (revised_seg,) = orthanc.results(study_uid, "SEG")
    (revised_sr,) = orthanc.results(study_uid, "SR")

    orthanc.upload(lossy_copies(series))
    run_pacs_sync(config, predictor, once=True)

    (seg,) = orthanc.results(study_uid, "SEG")
    (sr,) = orthanc.results(study_uid, "SR")
    assert (seg.SOPInstanceUID, sr.SOPInstanceUID) == (revised_seg.SOPInstanceUID, revised_sr.SOPInstanceUID)
    assert predecessors(sr) == predecessors(revised_sr) != []
    record = orthanc.record(study_id)
    assert record["superseded"] == [] and record["summary"]["slices"] == 3


def test_pacs_sync_retries_a_failed_study_and_processes_it_once_its_bad_instance_is_deleted(
    orthanc: Orthanc, predictor: Predictor, tmp_path: Path
) -> None:
    series = mr_series(tumor_channels())
    series[1].ImagePositionPatient = series[0].ImagePositionPatient  # two slices at one position: not a volume
    config = config_for(orthanc, tmp_path / "state.json", max_attempts=2)
    series_id = orthanc.upload(series)
    study_id = orthanc.study_of(series_id)

    passes = [run_pacs_sync(config, predictor, once=True) for _ in range(3)]

    assert passes == [SyncReport(failed=1), SyncReport(failed=1), SyncReport(gave_up=1)]
    record = orthanc.record(study_id)
    assert (record["status"], record["attempts"]) == ("failed", 2)
    assert record["error"].startswith("invalid_dicom_image:")
    assert "2 frames lie at one slice position" in record["error"]
    assert orthanc.results(series[0].StudyInstanceUID, "SEG") == []

    bad = next(
        instance["ID"]
        for instance in orthanc.get(f"/series/{series_id}/instances")
        if instance["MainDicomTags"]["SOPInstanceUID"] == series[1].SOPInstanceUID
    )
    orthanc.session.delete(f"{orthanc.url}/instances/{bad}", timeout=30).raise_for_status()
    report = run_pacs_sync(config, predictor, once=True)

    assert report == SyncReport(positive=1)
    (seg,) = orthanc.results(series[0].StudyInstanceUID, "SEG")
    assert_masks_are_the_predictions(seg, [series[0], series[2]], predictor)
    assert orthanc.record(study_id)["status"] == "positive"
    assert SyncState.load(config.state_file).retries == {}


def test_pacs_sync_keeps_another_patients_results_in_a_study_with_the_same_uid(
    orthanc: Orthanc, predictor: Predictor, tmp_path: Path
) -> None:
    # Orthanc keys a study by Patient ID and Study Instance UID: two patients, one UID, two Orthanc studies.
    study = Study()
    first = mr_series(tumor_channels(), study=study)
    second = mr_series(tumor_channels(), study=study)
    for dataset in second:
        dataset.PatientID = "TEST-0002"
    config = config_for(orthanc, tmp_path / "state.json")
    first_study = orthanc.study_of(orthanc.upload(first[:2]))
    second_study = orthanc.study_of(orthanc.upload(second))
    assert first_study != second_study
    assert run_pacs_sync(config, predictor, once=True) == SyncReport(positive=2)
    first_results, second_results = orthanc.result_series(first_study), orthanc.result_series(second_study)

    orthanc.upload(first[2:])  # a late instance: the first patient's study is processed again, and supersedes
    report = run_pacs_sync(config, predictor, once=True)

    assert report == SyncReport(positive=1)
    assert orthanc.result_series(second_study) == second_results  # the other patient's SEG and SR survive
    assert [len(uids) for uids in second_results.values()] == [1, 1]
    assert orthanc.record(second_study)["superseded"] == []
    assert sorted(orthanc.record(first_study)["superseded"]) == sorted(first_results["SEG"] + first_results["SR"])
    renewed = orthanc.result_series(first_study)
    assert [len(uids) for uids in renewed.values()] == [1, 1] and renewed != first_results
    assert orthanc.record(first_study)["summary"]["slices"] == 3


class OtherPatientAnalyser:
    """The service's analyser, whose results carry another Patient ID: they land in another Orthanc study."""

    def __init__(self, inner: ModelStudyProcessor) -> None:
        self.inner = inner
        self.model_tags = inner.model_tags
        self.result_series: list[str] = []

    def select(self, headers: Iterable[Dataset]) -> StudySelection:
        return self.inner.select(headers)

    def analyse(
        self,
        selection: StudySelection,
        files_by_series: Mapping[str, Sequence[bytes]],
        files: int,
        file_errors: dict[str, int] | None = None,
    ) -> StudyAnalysis:
        analysis = self.inner.analyse(selection, files_by_series, files, file_errors)
        for dataset in analysis.datasets:
            dataset.PatientID = "SOMEONE-ELSE"
            self.result_series.append(str(dataset.SeriesInstanceUID))
        return analysis


def test_pacs_sync_deletes_results_that_land_outside_the_study_and_keeps_the_earlier_ones(
    orthanc: Orthanc, predictor: Predictor, tmp_path: Path
) -> None:
    series = mr_series(tumor_channels())
    config = config_for(orthanc, tmp_path / "state.json")
    study_id = orthanc.study_of(orthanc.upload(series[:2]))
    assert run_pacs_sync(config, predictor, once=True) == SyncReport(positive=1)
    earlier = orthanc.result_series(study_id)
    orthanc.upload(series[2:])
    analyser = OtherPatientAnalyser(ModelStudyProcessor(predictor))

    report = sync_once(StudySync(OrthancClient(config), analyser), SyncState.load(config.state_file))

    assert report == SyncReport(failed=1)
    assert orthanc.result_series(study_id) == earlier
    assert len(analyser.result_series) == 2
    assert all(orthanc.series_with_uid(uid) == [] for uid in analyser.result_series)
    record = orthanc.record(study_id)
    assert (record["status"], record["attempts"]) == ("failed", 1)
    assert record["error"] == (
        "MisplacedResultsError: 2 of the 2 result series stored are not in the study; deleted, and the earlier "
        "results kept"
    )
