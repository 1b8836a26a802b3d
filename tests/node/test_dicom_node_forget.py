"""`brain-tumor dicom-node-forget`: a study the node refused for a stray instance is answered again once its
instances are forgotten (interop review 46 F2)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom.sop_class import ComprehensiveSRStorage, KeyObjectSelectionDocumentStorage, SegmentationStorage

from app.cli import main
from app.dicom.dicom_sr import REVISED_SUFFIX
from app.dicom.dicom_sr_reader import predecessors
from app.node.dicom_spool import hold_spool, study_key
from tests.dicom.builders import Study, mr_series, tumor_channels
from tests.node.node_support import Clock, ResultStore, free_port, record, send_study

ALL_RESULTS = (SegmentationStorage, ComprehensiveSRStorage, KeyObjectSelectionDocumentStorage)


def stray_slice(series: list[Dataset]) -> Dataset:
    """The first slice sent again under a new SOP Instance UID at the second slice's position: two slices at one
    position, which the series flow refuses (`invalid_dicom_image`)."""
    stray = copy.deepcopy(series[0])
    stray.SOPInstanceUID = generate_uid()
    stray.ImagePositionPatient = series[1].ImagePositionPatient
    return stray


def forget(spool: Path, study_uid: str, *options: str) -> int:
    return main(["dicom-node-forget", study_uid, "--spool-dir", str(spool), *options])


def test_a_study_refused_for_a_stray_slice_is_answered_again_once_forgotten(
    make_node: Any, clock: Clock, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Interop review 46 F2: the spool kept the stray instance, so every re-send of the corrected study was refused
    again (another rejection note), and no command said how to make the node forget it."""
    port = free_port()
    store = ResultStore(port, ALL_RESULTS)
    node = make_node(destination_port=port)
    series = mr_series(tumor_channels())
    study_uid, spool = str(series[0].StudyInstanceUID), node.config.spool_dir
    key = study_key(study_uid, str(series[0].PatientID))
    try:
        send_study(node, clock, series, tmp_path / "first")
        (first_sr,) = store.by_modality("SR")
        send_study(node, clock, [stray_slice(series)], tmp_path / "stray")
        assert record(node)["runs"][-1]["reason"].startswith("invalid_dicom_image")

        with hold_spool(spool):  # as `brain-tumor dicom-node` holds it while it runs
            assert forget(spool, study_uid) == 2
        assert "stop it first" in capsys.readouterr().err
        assert len(node.spool.instance_files(key)) == len(series) + 1
        node.stop()
        assert forget(spool, study_uid) == 0
        output = capsys.readouterr().out
        assert key in output and study_uid not in output and str(series[0].PatientID) not in output
        assert list((spool / "studies" / key).iterdir()) != []  # the record stays
        assert not (spool / "studies" / key / "instances").exists()

        node = make_node(destination_port=port)
        send_study(node, clock, series, tmp_path / "corrected")  # every file but the stray one

        runs = record(node)["runs"]
        assert [run["status"] for run in runs] == ["analysed", "failed", "analysed"]
        assert runs[-1]["instances"] == len(series)
        answer = store.by_modality("SR")[-1]
        assert answer.SeriesDescription.endswith(REVISED_SUFFIX)
        assert predecessors(answer) == [first_sr.SOPInstanceUID]
        # The same findings as the first answer, which the refusal's rejection note withdrew: not under its UIDs.
        assert answer.SOPInstanceUID != first_sr.SOPInstanceUID
    finally:
        store.close()


def test_forget_asks_for_the_patient_id_when_two_patients_share_the_study_uid(
    make_node: Any, clock: Clock, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    node = make_node()
    study = Study()
    study_uid = study.study_uid
    first, second = mr_series(tumor_channels(), study), mr_series(tumor_channels(), study)
    for patient_id, series in (("P1", first), ("P2", second)):
        for dataset in series:
            dataset.PatientID = patient_id
    send_study(node, clock, [*first, *second], tmp_path / "in")
    node.stop()
    spool = node.config.spool_dir

    assert forget(spool, study_uid) == 2
    assert "--patient-id" in capsys.readouterr().err
    assert forget(spool, generate_uid()) == 1
    assert forget(spool, study_uid, "--patient-id", "P2") == 0
    assert (spool / "studies" / study_key(study_uid, "P1") / "instances").is_dir()
    assert not (spool / "studies" / study_key(study_uid, "P2") / "instances").exists()
    assert "instances_forgotten" in record_of(spool, study_key(study_uid, "P2"))


def record_of(spool: Path, key: str) -> str:
    return (spool / "studies" / key / "record.json").read_text()
