"""pacs-sync against a real Orthanc, on what an attack review found: the configured decode budget is the one applied,
and the DICOM node's results in the same Orthanc are never superseded as pacs-sync's own."""

from __future__ import annotations

import json
from pathlib import Path

from pydicom.dataset import Dataset

from app.inference import Predictor
from app.pacs.orthanc_client import SYNC_METADATA, SYNC_STATION_NAME
from app.pacs.pacs_sync import SyncReport, run_pacs_sync
from app.study_analysis import ModelStudyProcessor
from app.uploads import UploadLimits
from tests.dicom.builders import mr_series, to_bytes, tumor_channels
from tests.pacs.orthanc_server import Orthanc
from tests.pacs.pacs_sync_support import config_for

MIB = 1024 * 1024


def node_results(
    predictor: Predictor, series: list[Dataset], directory: Path, origin: str = "dicom-node"
) -> list[Dataset]:
    """The SEG and SR the DICOM node makes of a series (the same processor, without pacs-sync's StationName); another
    `origin` gives them other UIDs (`app.dicom.result_uids`)."""
    directory.mkdir()
    paths = [directory / f"{index}.dcm" for index in range(len(series))]
    for path, dataset in zip(paths, series, strict=True):
        path.write_bytes(to_bytes(dataset))
    datasets = ModelStudyProcessor(predictor, result_origin=origin)(paths).datasets
    assert [dataset.Modality for dataset in datasets] == ["SEG", "SR"]
    return datasets


def upload_each(orthanc: Orthanc, datasets: list[Dataset]) -> list[str]:
    """Store each result as its own series; return their Series Instance UIDs."""
    for dataset in datasets:
        orthanc.upload([dataset])
    return sorted(str(dataset.SeriesInstanceUID) for dataset in datasets)


def all_results(orthanc: Orthanc, study_id: str) -> list[str]:
    found = orthanc.result_series(study_id)
    return sorted(found["SEG"] + found["SR"])


def test_pacs_sync_decodes_within_the_configured_budget_not_the_default(
    orthanc: Orthanc, predictor: Predictor, tmp_path: Path
) -> None:
    """DECODE_MEMORY_BYTES (`max_study_bytes`) bounded only the fetch: the flow ran on the built-in 256 MiB budget, so
    a study it was raised for failed 5 times. 3 slices of 200 KB fetch within 4 MiB but take 7.5 MB to decode."""
    series = mr_series(tumor_channels())
    config = config_for(orthanc, tmp_path / "state.json", max_study_bytes=4 * MIB)
    study_id = orthanc.study_of(orthanc.upload(series))

    report = run_pacs_sync(config, predictor, once=True)

    assert report == SyncReport(failed=1)
    error = orthanc.record(study_id)["error"]
    assert error.startswith("over_memory_budget: this request's 3 files would take")
    assert error.endswith("the memory budget (DECODE_MEMORY_BYTES) is 4194304 bytes (4.0 MiB)"), error
    assert orthanc.results(series[0].StudyInstanceUID, "SEG") == []


def test_upload_limits_are_the_configured_ones(orthanc: Orthanc, tmp_path: Path) -> None:
    config = config_for(
        orthanc, tmp_path / "state.json", max_study_bytes=2048 * MIB, max_instance_bytes=3 * MIB, max_dicom_pixels=99
    )

    limits = UploadLimits.for_pacs(config)

    assert (limits.max_decode_bytes, limits.max_upload_bytes, limits.max_dicom_pixels) == (2048 * MIB, 3 * MIB, 99)


def test_pacs_sync_supersedes_only_its_own_results_not_the_dicom_nodes(
    orthanc: Orthanc, predictor: Predictor, tmp_path: Path
) -> None:
    """The node delivers its SEG and SR into the same Orthanc, with the same Manufacturer: pacs-sync deleted them
    as superseded. Now it supersedes only what it stored itself (`SYNC_STATION_NAME`)."""
    series = mr_series(tumor_channels())
    config = config_for(orthanc, tmp_path / "state.json")
    study_id = orthanc.study_of(orthanc.upload(series[:2]))
    from_node = upload_each(orthanc, node_results(predictor, series[:2], tmp_path / "node"))

    assert run_pacs_sync(config, predictor, once=True) == SyncReport(positive=1)
    first = orthanc.record(study_id)
    assert first["superseded"] == []
    first_own = sorted([first["seg_series_instance_uid"], first["sr_series_instance_uid"]])
    assert all_results(orthanc, study_id) == sorted(from_node + first_own)
    stored = [orthanc.get(f"/series/{series_id}") for series_id in orthanc.series_with_uid(first_own[0])]
    assert [item["MainDicomTags"].get("StationName") for item in stored] == [SYNC_STATION_NAME]

    orthanc.upload(series[2:])  # a late instance: processed again, its own earlier results superseded
    assert run_pacs_sync(config, predictor, once=True) == SyncReport(positive=1)

    second = orthanc.record(study_id)
    assert sorted(second["superseded"]) == first_own
    second_own = sorted([second["seg_series_instance_uid"], second["sr_series_instance_uid"]])
    assert all_results(orthanc, study_id) == sorted(from_node + second_own)  # the node's SEG and SR survive


def test_pacs_sync_supersedes_the_unmarked_results_its_record_names(
    orthanc: Orthanc, predictor: Predictor, tmp_path: Path
) -> None:
    """Results pacs-sync stored before it set its StationName are known by the record that names them."""
    series = mr_series(tumor_channels())
    config = config_for(orthanc, tmp_path / "state.json")
    study_id = orthanc.study_of(orthanc.upload(series))
    legacy = node_results(predictor, series, tmp_path / "legacy", origin="pacs-sync of an earlier version")
    legacy_uids = upload_each(orthanc, legacy)
    from_node = upload_each(orthanc, node_results(predictor, series, tmp_path / "node"))
    old_record = {"status": "positive", "study_fingerprint": "from an earlier version"}
    old_record.update(seg_series_instance_uid=str(legacy[0].SeriesInstanceUID))
    old_record.update(sr_series_instance_uid=str(legacy[1].SeriesInstanceUID))
    url = f"{orthanc.url}/studies/{study_id}/metadata/{SYNC_METADATA}"
    orthanc.session.put(url, data=json.dumps(old_record), timeout=30).raise_for_status()

    assert run_pacs_sync(config, predictor, once=True) == SyncReport(positive=1)

    record = orthanc.record(study_id)
    assert sorted(record["superseded"]) == legacy_uids
    own = sorted([record["seg_series_instance_uid"], record["sr_series_instance_uid"]])
    assert all_results(orthanc, study_id) == sorted(from_node + own)
