"""pacs-sync against an Orthanc that replaces an instance sent again under its SOP Instance UID (attack review 27,
finding 6): ``OverwriteInstances``, common where corrected images are re-sent. The replaced instance keeps its Orthanc
ID, so a fingerprint of IDs alone called the study unchanged and its result stayed that of the old pixels; the DICOM
node, whose fingerprint covers the bytes, analysed the same change again."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from app.dicom.dicom_sr_reader import predecessors
from app.inference import Predictor
from app.pacs.pacs_sync import SyncReport, run_pacs_sync
from tests.dicom.builders import mr_series, tumor_channels
from tests.pacs.orthanc_server import Orthanc, past_the_next_second, running_orthanc
from tests.pacs.pacs_sync_support import config_for


@pytest.fixture(scope="module")
def overwriting_orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    with running_orthanc(tmp_path_factory.mktemp("orthanc"), overwrite_instances=True) as server:
        yield server


def test_an_instance_replaced_in_orthanc_is_analysed_again(
    overwriting_orthanc: Orthanc, predictor: Predictor, tmp_path: Path
) -> None:
    orthanc = overwriting_orthanc
    series = mr_series(tumor_channels())
    config = config_for(orthanc, tmp_path / "state.json")
    study_id = orthanc.study_of(orthanc.upload(series))
    first = run_pacs_sync(config, predictor, once=True)
    assert first.positive + first.negative == 1
    first_record = orthanc.record(study_id)
    (first_sr,) = orthanc.results(series[0].StudyInstanceUID, "SR")
    assert run_pacs_sync(config, predictor, once=True) == SyncReport()  # nothing changed: nothing looked at

    past_the_next_second()  # Orthanc's LastUpdate counts seconds; a correction comes later than the study's analysis
    series[1].PixelData = np.zeros((256, 256), np.uint8).tobytes()  # corrected, same SOP Instance UID
    orthanc.upload(series[1:2])
    again = run_pacs_sync(config, predictor, once=True)

    assert again.positive + again.negative == 1 and again.already_done == 0  # before: already_done=1
    record = orthanc.record(study_id)
    assert record["input_fingerprint"] != first_record["input_fingerprint"]
    (sr,) = orthanc.results(series[0].StudyInstanceUID, "SR")  # the earlier one deleted
    assert predecessors(sr) == [first_sr.SOPInstanceUID]


def test_the_same_instances_stored_again_leave_the_result_as_it_is(
    overwriting_orthanc: Orthanc, predictor: Predictor, tmp_path: Path
) -> None:
    """Interop review 44 F3: Orthanc moves a series' LastUpdate when it overwrites an instance with the same bytes;
    pacs-sync analysed the study again and stored the same SEG and SR UIDs with new times (the node calls such a
    re-send unchanged)."""
    orthanc = overwriting_orthanc
    series = mr_series(tumor_channels())
    config = config_for(orthanc, tmp_path / "state.json")
    study_id = orthanc.study_of(orthanc.upload(series))
    assert run_pacs_sync(config, predictor, once=True).positive == 1
    (first_sr,) = orthanc.results(series[0].StudyInstanceUID, "SR")

    past_the_next_second()  # Orthanc's LastUpdate counts seconds
    orthanc.upload(series)
    again = run_pacs_sync(config, predictor, once=True)

    assert (again.positive, again.already_done) == (0, 1)
    (sr,) = orthanc.results(series[0].StudyInstanceUID, "SR")
    assert (sr.SOPInstanceUID, sr.ContentTime) == (first_sr.SOPInstanceUID, first_sr.ContentTime)
    assert "error" not in orthanc.record(study_id)
