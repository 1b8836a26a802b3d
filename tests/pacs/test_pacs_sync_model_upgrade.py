"""pacs-sync after the models are upgraded (durability review 45 F6): a study analysed by other model versions is
analysed again when Orthanc next reports it changed, also when it holds the same instances, and the new results
supersede the old. Before, the same instances were "already done" whatever models made their result, so a site that
upgraded its models had no way to new results for its studies short of altering the instances."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.dataset import Dataset

from app.dicom.dicom_sr import REVISED_SUFFIX, SR_SERIES_DESCRIPTION
from app.dicom.dicom_sr_reader import predecessors
from app.pacs.orthanc_client import SYNC_METADATA
from app.pacs.pacs_sync import SyncReport, run_pacs_sync
from app.pacs.pacs_sync_config import PacsSyncConfig
from tests.dicom.builders import mr_series, tumor_channels
from tests.pacs.orthanc_server import Orthanc, past_the_next_second, running_orthanc
from tests.pacs.pacs_sync_support import NegativePredictor, config_for


class UpgradedPredictor(NegativePredictor):
    """The same answers from models of a newer version: what pacs-sync runs after a site upgraded its models."""

    model_tags = {"classifier": "stub-classifier@1", "segmenter": "stub-segmenter@1"}


@pytest.fixture(scope="module")
def overwriting_orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    with running_orthanc(tmp_path_factory.mktemp("orthanc"), overwrite_instances=True) as server:
        yield server


def analysed_by_the_old_models(orthanc: Orthanc, tmp_path: Path) -> tuple[list[Dataset], PacsSyncConfig, str]:
    """A study stored and analysed by `NegativePredictor`: its series, the sync's configuration, its Orthanc ID."""
    series = mr_series(tumor_channels())
    config = config_for(orthanc, tmp_path / "state.json")
    study_id = orthanc.study_of(orthanc.upload(series))
    assert run_pacs_sync(config, NegativePredictor(), once=True).negative == 1  # type: ignore[arg-type]
    return series, config, study_id


def test_the_same_instances_stored_again_after_a_model_upgrade_are_analysed_again(
    overwriting_orthanc: Orthanc, tmp_path: Path
) -> None:
    orthanc = overwriting_orthanc
    series, config, study_id = analysed_by_the_old_models(orthanc, tmp_path)
    (first_sr,) = orthanc.results(series[0].StudyInstanceUID, "SR")
    assert orthanc.record(study_id)["models"] == NegativePredictor.model_tags

    past_the_next_second()  # Orthanc's LastUpdate counts seconds
    orthanc.upload(series)  # the operator's way to a new result: the study sent again
    again = run_pacs_sync(config, UpgradedPredictor(), once=True)  # type: ignore[arg-type]

    assert (again.negative, again.already_done) == (1, 0)  # before: (0, 1), the old models' result stood
    (sr,) = orthanc.results(series[0].StudyInstanceUID, "SR")  # the earlier one deleted
    assert predecessors(sr) == [first_sr.SOPInstanceUID]
    assert sr.SeriesDescription == SR_SERIES_DESCRIPTION + REVISED_SUFFIX
    record = orthanc.record(study_id)
    assert record["models"] == UpgradedPredictor.model_tags
    assert record["superseded"] == [first_sr.SeriesInstanceUID]

    past_the_next_second()
    orthanc.upload(series)
    assert run_pacs_sync(config, UpgradedPredictor(), once=True) == SyncReport(already_done=1)  # type: ignore[arg-type]


def test_a_record_without_models_counts_as_made_by_the_current_ones(
    overwriting_orthanc: Orthanc, tmp_path: Path
) -> None:
    """A record written before records kept their models: an upgrade does not analyse every such study again."""
    orthanc = overwriting_orthanc
    series, config, study_id = analysed_by_the_old_models(orthanc, tmp_path)
    older = {key: value for key, value in orthanc.record(study_id).items() if key != "models"}
    metadata = f"{orthanc.url}/studies/{study_id}/metadata/{SYNC_METADATA}"
    orthanc.session.put(metadata, data=json.dumps(older), timeout=30).raise_for_status()

    past_the_next_second()
    orthanc.upload(series)
    assert run_pacs_sync(config, UpgradedPredictor(), once=True) == SyncReport(already_done=1)  # type: ignore[arg-type]


def test_without_overwrite_the_series_deleted_and_sent_again_is_analysed_by_the_upgraded_models(
    orthanc: Orthanc, tmp_path: Path
) -> None:
    """Orthanc's default (OverwriteInstances false) answers an instance it holds "AlreadyStored" and logs no change,
    nor does /studies/{id}/reconstruct: the series deleted and sent again is what makes pacs-sync look (README)."""
    series = mr_series(tumor_channels())
    config = config_for(orthanc, tmp_path / "state.json")
    series_id = orthanc.upload(series)
    study_id = orthanc.study_of(series_id)
    assert run_pacs_sync(config, NegativePredictor(), once=True).negative == 1  # type: ignore[arg-type]
    (first_sr,) = orthanc.results(series[0].StudyInstanceUID, "SR")

    orthanc.upload(series)
    orthanc.session.post(f"{orthanc.url}/studies/{study_id}/reconstruct", json={}, timeout=30).raise_for_status()
    assert run_pacs_sync(config, UpgradedPredictor(), once=True) == SyncReport()  # type: ignore[arg-type]

    orthanc.session.delete(f"{orthanc.url}/series/{series_id}", timeout=30).raise_for_status()
    past_the_next_second()  # Orthanc's LastUpdate counts seconds
    orthanc.upload(series)
    assert run_pacs_sync(config, UpgradedPredictor(), once=True).negative == 1  # type: ignore[arg-type]

    (sr,) = orthanc.results(series[0].StudyInstanceUID, "SR")
    assert predecessors(sr) == [first_sr.SOPInstanceUID]
    assert orthanc.record(study_id)["models"] == UpgradedPredictor.model_tags
