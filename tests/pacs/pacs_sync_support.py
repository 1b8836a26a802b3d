"""Helpers of the pacs-sync tests: a config that sees only a test's own changes, stand-ins, and checks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import requests
from pydicom.dataset import Dataset

from app.dicom.dicom_seg_reader import read_segmentation_masks
from app.dicom.dicom_series import prepare_inputs
from app.inference import Predictor, SlicePrediction
from app.pacs.orthanc_client import SYNC_METADATA, OrthancClient
from app.pacs.orthanc_errors import OrthancError
from app.pacs.pacs_sync_config import PacsSyncConfig
from app.pacs.pacs_sync_state import SyncState
from app.settings import Settings
from tests.dicom.builders import to_bytes
from tests.dicom.reading import read_dicom
from tests.pacs.orthanc_server import PASSWORD, USER, Orthanc


class NegativePredictor:
    """Stands in for a classifier that finds nothing (the tiny models call every slice positive)."""

    model_tags = {"classifier": "stub-classifier@0", "segmenter": "stub-segmenter@0"}
    classifier_threshold = 0.5
    series_min_component_voxels = 0
    single_slice_mask_min_probability = 0.0
    single_slice_min_component_pixels = 0

    def predict_preprocessed(self, batch: np.ndarray, sizes: list[tuple[int, int]]) -> list[SlicePrediction]:
        return [SlicePrediction(probability=0.01, detected=False, mask=None) for _ in sizes]


def config_for(orthanc: Orthanc, state_file: Path, **overrides: Any) -> PacsSyncConfig:
    """A config whose state starts at Orthanc's latest change: tests share one Orthanc and see only their studies."""
    if not state_file.exists():
        SyncState(state_file, last_change=orthanc.last_change()).save()
    values: dict[str, Any] = {
        "orthanc_url": orthanc.url,
        "username": USER,
        "password": PASSWORD,
        "state_file": state_file,
        "backoff_seconds": 0.0,
        "retry_seconds": 0.0,
    }
    values.update(overrides)
    return PacsSyncConfig(**values)


def assert_masks_are_the_predictions(seg: Dataset, series: list[Dataset], predictor: Predictor) -> None:
    inputs = prepare_inputs([frame for dataset in series for frame in read_dicom(to_bytes(dataset))])
    predictions = predictor.predict([slice_input.image for slice_input in inputs])
    decoded = read_segmentation_masks(to_bytes(seg))
    assert set(decoded) == {dataset.SOPInstanceUID for dataset in series}
    for slice_input, prediction in zip(inputs, predictions, strict=True):
        assert prediction.detected and prediction.mask is not None
        np.testing.assert_array_equal(decoded[slice_input.reference.sop_instance_uid][0], prediction.mask)


def cli_settings(model_dir: Path) -> Settings:
    """The service's settings for pacs-sync's command-line tests: the test Orthanc's credentials, `model_dir`."""
    return Settings(
        orthanc_url="http://unused.invalid",
        orthanc_username=USER,
        orthanc_password=PASSWORD,
        model_dir=model_dir,
        max_dicom_pixels=4096 * 4096,
        decode_memory_bytes=256 * 1024 * 1024,
    )


class FailingClient(OrthancClient):
    """Fails, as a network would, to fetch chosen instances, to write records, or to store objects of a modality."""

    def __init__(
        self,
        *args: Any,
        broken_instances: frozenset[str] = frozenset(),
        fail_records: bool = False,
        fail_stores_of: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.broken_instances = broken_instances
        self.fail_records = fail_records
        self.fail_stores_of = fail_stores_of

    def store(self, dataset: Any) -> None:
        if dataset.Modality == self.fail_stores_of:
            raise OrthancError("POST /dicom-web/studies failed after 5 attempts: ConnectionError")
        super().store(dataset)

    def instance_file(self, instance_id: str) -> bytes:
        if instance_id in self.broken_instances:
            raise OrthancError(f"GET /instances/{instance_id}/file failed after 5 attempts: ConnectionError")
        return super().instance_file(instance_id)

    def write_sync_record(self, study_id: str, record: dict[str, Any]) -> None:
        if self.fail_records:
            raise OrthancError("PUT metadata failed after 5 attempts: ConnectionError")
        super().write_sync_record(study_id, record)


Answer = tuple[int, str, bytes]  # status, Content-Type, body
HTML_PAGE: Answer = (200, "text/html; charset=utf-8", b"<html><body>Proxy login. Last patient: Doe^Jane</body></html>")
HTML_SECRET = "Doe^Jane"  # in the HTML page: must never reach an error message or a log


def json_answer(value: Any, status: int = 200) -> Answer:
    return status, "application/json", json.dumps(value).encode()


def orthanc_error(status: int, orthanc_status: int, message: str, uri: str) -> Answer:
    """An error answer as Orthanc 1.10 writes it (its error body, without a Content-Type)."""
    body = {
        "HttpError": "Not Found" if status == 404 else "Error",
        "HttpStatus": status,
        "Message": message,
        "Method": "PUT",
        "OrthancError": message,
        "OrthancStatus": orthanc_status,
        "Uri": uri,
    }
    return status, "", json.dumps(body, indent="\t").encode()


def undeclared_metadata(study_id: str) -> Answer:
    """Orthanc's answer to the record's PUT when its configuration does not declare `SYNC_METADATA`."""
    return orthanc_error(404, 7, "Accessing an inexistent item", f"/studies/{study_id}/metadata/{SYNC_METADATA}")


class CannedSession(requests.Session):
    """Answers each ``"METHOD /path"`` with its canned answers in turn (the last one repeated), others with 404;
    Orthanc's latest change is ``"GET /changes?last"``."""

    def __init__(self, answers: dict[str, list[Answer]]) -> None:
        super().__init__()
        self.answers = {path: list(queue) for path, queue in answers.items()}
        self.calls: list[str] = []

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        call = f"{method} {urlsplit(url).path}" + ("?last" if "last" in (kwargs.get("params") or {}) else "")
        self.calls.append(call)
        queue = self.answers.get(call) or [(404, "text/plain", b"Unknown resource")]
        status, content_type, body = queue.pop(0) if len(queue) > 1 else queue[0]
        response = requests.Response()
        response.status_code, response.url, response._content = status, url, body
        response.headers["Content-Type"] = content_type
        return response
