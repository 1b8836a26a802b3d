"""pacs-sync against a real Orthanc (Debian packages orthanc, orthanc-dicomweb) started by the tests on 127.0.0.1."""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pydicom
import pytest
import requests
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.uid import generate_uid

from app import pacs_sync
from app.dicom_input import read_dicom
from app.dicom_seg_reader import read_segmentation_masks
from app.dicom_series import prepare_inputs
from app.inference import Predictor, SlicePrediction
from app.pacs_sync import (
    SYNC_METADATA,
    OrthancClient,
    OrthancError,
    PacsSyncConfig,
    SyncReport,
    run_pacs_sync,
)
from tests.dicom.builders import mr_series, to_bytes, tumor_channels

USER, PASSWORD = "sync-test", "not-a-secret"
PLUGIN_CANDIDATES = (
    Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so"),
    Path("/usr/lib/orthanc/libOrthancDicomWeb.so"),
)


@dataclass(frozen=True)
class Orthanc:
    url: str
    session: requests.Session

    def upload(self, datasets: list[Dataset]) -> str:
        """Store the instances; return the Orthanc ID of their series once Orthanc calls it stable."""
        series_ids = set()
        for dataset in datasets:
            response = self.session.post(f"{self.url}/instances", data=to_bytes(dataset), timeout=30)
            response.raise_for_status()
            series_ids.add(response.json()["ParentSeries"])
        (series_id,) = series_ids
        deadline = time.monotonic() + 30
        while not self.session.get(f"{self.url}/series/{series_id}", timeout=30).json()["IsStable"]:
            if time.monotonic() > deadline:
                pytest.fail(f"Orthanc did not call series {series_id} stable within 30 s")
            time.sleep(0.2)
        return series_id

    def segmentations(self, study_uid: str) -> list[bytes]:
        query = {"Level": "Instance", "Query": {"StudyInstanceUID": study_uid, "Modality": "SEG"}}
        ids = self.session.post(f"{self.url}/tools/find", json=query, timeout=30).json()
        return [self.session.get(f"{self.url}/instances/{i}/file", timeout=30).content for i in ids]

    def record(self, series_id: str) -> dict[str, Any]:
        response = self.session.get(f"{self.url}/series/{series_id}/metadata/{SYNC_METADATA}", timeout=30)
        response.raise_for_status()
        return json.loads(response.text)


def orthanc_binary() -> str | None:
    return shutil.which("Orthanc") or next((p for p in ("/usr/sbin/Orthanc",) if Path(p).is_file()), None)


def dicomweb_plugin() -> Path | None:
    """The DICOMweb plugin as the Debian package installed it (`dpkg -L`), else the usual places."""
    try:
        listing = subprocess.run(["dpkg", "-L", "orthanc-dicomweb"], capture_output=True, text=True, check=False).stdout
    except FileNotFoundError:  # not a Debian system
        listing = ""
    listed = [Path(line) for line in listing.splitlines() if "libOrthancDicomWeb.so" in line]
    return next((path for path in (*listed, *PLUGIN_CANDIDATES) if path.is_file()), None)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    binary = orthanc_binary()
    if binary is None:
        pytest.skip("Orthanc not found: install the Debian packages orthanc and orthanc-dicomweb")
    plugin = dicomweb_plugin()
    if plugin is None:
        pytest.fail("Orthanc is installed but its DICOMweb plugin is not: install the Debian package orthanc-dicomweb")
    directory = tmp_path_factory.mktemp("orthanc")
    port = free_port()
    config = {
        "Name": "pacs-sync-test",
        "StorageDirectory": str(directory / "storage"),
        "IndexDirectory": str(directory / "storage"),
        "HttpPort": port,
        "RemoteAccessAllowed": False,  # localhost only
        "AuthenticationEnabled": True,
        "RegisteredUsers": {USER: PASSWORD},
        "DicomServerEnabled": False,
        "Plugins": [str(plugin)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        "UserMetadata": {SYNC_METADATA: 4600},
        "StableAge": 1,
        "SaveJobs": False,
    }
    config_path = directory / "orthanc.json"
    config_path.write_text(json.dumps(config))
    log_path = directory / "orthanc.log"
    with log_path.open("w") as log:
        process = subprocess.Popen([binary, str(config_path)], stdout=log, stderr=subprocess.STDOUT, cwd=directory)
    session = requests.Session()
    session.auth = (USER, PASSWORD)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                pytest.fail(f"Orthanc exited with {process.returncode}: {log_path.read_text()[-2000:]}")
            try:
                if session.get(f"{url}/system", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"Orthanc did not answer within 60 s: {log_path.read_text()[-2000:]}")
            time.sleep(0.2)
        yield Orthanc(url=url, session=session)
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@pytest.fixture(scope="module")
def predictor(tiny_model_dir: Path) -> Predictor:
    loaded = Predictor.from_model_dir(tiny_model_dir)
    loaded.warm_up()
    return loaded


class NegativePredictor:
    """Stands in for a classifier that finds nothing (the tiny models call every slice positive)."""

    model_tags = {"classifier": "stub-classifier@0", "segmenter": "stub-segmenter@0"}
    classifier_threshold = 0.5
    series_min_component_voxels = 0

    def predict_preprocessed(self, batch: np.ndarray, sizes: list[tuple[int, int]]) -> list[SlicePrediction]:
        return [SlicePrediction(probability=0.01, detected=False, mask=None) for _ in sizes]


def config_for(orthanc: Orthanc, description: str, **overrides: Any) -> PacsSyncConfig:
    """A config that only sees series whose description is `description`: tests share one Orthanc."""
    values: dict[str, Any] = {
        "orthanc_url": orthanc.url,
        "username": USER,
        "password": PASSWORD,
        "series_filter": description,
        "backoff_seconds": 0.0,
    }
    values.update(overrides)
    return PacsSyncConfig(**values)


def unique_description() -> str:
    return f"AX FLAIR {generate_uid()[-12:]}"


def test_pacs_sync_stores_one_seg_per_series_and_never_a_second(
    orthanc: Orthanc, predictor: Predictor, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    description = unique_description()
    series = mr_series(tumor_channels(), series_description=description)
    series_id = orthanc.upload(series)

    report = run_pacs_sync(config_for(orthanc, description), predictor, once=True)

    assert report == SyncReport(positive=1)
    (seg_bytes,) = orthanc.segmentations(series[0].StudyInstanceUID)
    seg = pydicom.dcmread(DicomBytesIO(seg_bytes))
    assert seg.Modality == "SEG"
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == series[0].SeriesInstanceUID
    # The SEG's masks are exactly the service's own prediction for the same DICOM slices.
    inputs = prepare_inputs([frame for dataset in series for frame in read_dicom(to_bytes(dataset))])
    predictions = predictor.predict([slice_input.image for slice_input in inputs])
    decoded = read_segmentation_masks(seg_bytes)
    assert set(decoded) == {dataset.SOPInstanceUID for dataset in series}
    for slice_input, prediction in zip(inputs, predictions, strict=True):
        assert prediction.detected and prediction.mask is not None
        np.testing.assert_array_equal(decoded[slice_input.reference.sop_instance_uid][0], prediction.mask)
    record = orthanc.record(series_id)
    assert record["status"] == "positive"
    assert record["seg_sop_instance_uid"] == seg.SOPInstanceUID
    assert record["models"] == predictor.model_tags
    assert record["slices"] == 3 and record["positive_slices"] == 3

    # A second run, as the CLI makes it after a restart: the series is recorded, so no second SEG.
    parser = argparse.ArgumentParser()
    pacs_sync.add_arguments(parser)
    args = parser.parse_args(["--orthanc", orthanc.url, "--series-filter", description, "--once"])
    settings = SimpleNamespace(
        orthanc_url="http://unused.invalid",
        orthanc_username=USER,
        orthanc_password=PASSWORD,
        pacs_series_filter="",
        pacs_poll_seconds=30.0,
        max_dicom_pixels=4096 * 4096,
        model_dir=tiny_model_dir,
        inference_runtime="keras",
    )
    assert pacs_sync.main(args, settings=settings) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == SyncReport(already_done=1).as_dict()
    assert len(orthanc.segmentations(series[0].StudyInstanceUID)) == 1


def test_pacs_sync_records_a_negative_series_without_seg(orthanc: Orthanc) -> None:
    description = unique_description()
    series = mr_series(tumor_channels(), series_description=description)
    series_id = orthanc.upload(series)
    config = config_for(orthanc, description)

    first = run_pacs_sync(config, NegativePredictor(), once=True)  # type: ignore[arg-type]
    second = run_pacs_sync(config, NegativePredictor(), once=True)  # type: ignore[arg-type]

    assert (first, second) == (SyncReport(negative=1), SyncReport(already_done=1))
    assert orthanc.segmentations(series[0].StudyInstanceUID) == []
    assert orthanc.record(series_id)["status"] == "negative"


def test_pacs_sync_records_a_refused_series_and_does_not_fetch_it_again(orthanc: Orthanc, predictor: Predictor) -> None:
    description = unique_description()
    series = mr_series(tumor_channels(), series_description=description)
    series[1].ImagePositionPatient = series[0].ImagePositionPatient  # two slices at one position: not a volume
    series_id = orthanc.upload(series)
    config = config_for(orthanc, description)

    first = run_pacs_sync(config, predictor, once=True)
    second = run_pacs_sync(config, predictor, once=True)

    assert (first, second) == (SyncReport(failed=1), SyncReport(already_done=1))
    record = orthanc.record(series_id)
    assert record["status"] == "failed"
    assert record["error"]["code"] == "invalid_dicom_image"
    assert "got 2 at position" in record["error"]["message"]
    assert orthanc.segmentations(series[0].StudyInstanceUID) == []


class FailingClient(OrthancClient):
    """Fails, as a network would, to fetch the instances of chosen series, or to write records."""

    def __init__(
        self, *args: Any, broken_instances: frozenset[str] = frozenset(), fail_records: bool = False, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.broken_instances = broken_instances
        self.fail_records = fail_records

    def instance_file(self, instance_id: str) -> bytes:
        if instance_id in self.broken_instances:
            raise OrthancError(f"GET /instances/{instance_id}/file failed after 5 attempts: ConnectionError")
        return super().instance_file(instance_id)

    def write_sync_record(self, series_id: str, record: dict[str, Any]) -> None:
        if self.fail_records:
            raise OrthancError("PUT metadata failed after 5 attempts: ConnectionError")
        super().write_sync_record(series_id, record)


def test_pacs_sync_goes_on_after_a_failing_series_and_retries_it_next_pass(
    orthanc: Orthanc, predictor: Predictor, caplog: pytest.LogCaptureFixture
) -> None:
    description = unique_description()
    broken = mr_series(tumor_channels(), series_description=description)
    healthy = mr_series(tumor_channels(), series_description=description)
    broken_id = orthanc.upload(broken)
    healthy_id = orthanc.upload(healthy)
    broken_instances = set(orthanc.session.get(f"{orthanc.url}/series/{broken_id}", timeout=30).json()["Instances"])
    config = config_for(orthanc, description)

    first = run_pacs_sync(
        config, predictor, once=True, client=FailingClient(config, broken_instances=frozenset(broken_instances))
    )
    second = run_pacs_sync(config, predictor, once=True)

    assert first == SyncReport(positive=1, failed=1)
    logged = [f"{record.getMessage()} {json.dumps(getattr(record, 'fields', {}))}" for record in caplog.records]
    assert any(broken_id in line for line in logged)  # the failure is logged by Orthanc ID, never by DICOM tags
    for tag_value in (broken[0].PatientID, str(broken[0].PatientName), broken[0].SeriesInstanceUID):
        assert not any(tag_value in line for line in logged)
    assert orthanc.record(healthy_id)["status"] == "positive"
    assert second == SyncReport(positive=1, already_done=1)
    assert orthanc.record(broken_id)["status"] == "positive"


def test_pacs_sync_after_a_crash_between_store_and_record_makes_no_second_seg(
    orthanc: Orthanc, predictor: Predictor
) -> None:
    description = unique_description()
    series = mr_series(tumor_channels(), series_description=description)
    series_id = orthanc.upload(series)
    config = config_for(orthanc, description)

    crashed = run_pacs_sync(config, predictor, once=True, client=FailingClient(config, fail_records=True))
    restarted = run_pacs_sync(config, predictor, once=True)

    assert crashed == SyncReport(failed=1)
    assert restarted == SyncReport(positive=1)
    (seg_bytes,) = orthanc.segmentations(series[0].StudyInstanceUID)
    record = orthanc.record(series_id)
    assert record["recovered"] is True
    assert record["seg_sop_instance_uid"] == pydicom.dcmread(DicomBytesIO(seg_bytes)).SOPInstanceUID


def test_pacs_sync_rejects_wrong_credentials(orthanc: Orthanc, predictor: Predictor) -> None:
    config = config_for(orthanc, unique_description(), password="wrong")

    with pytest.raises(OrthancError, match="POST /tools/find failed with HTTP 401"):
        run_pacs_sync(config, predictor, once=True)


class FlakySession(requests.Session):
    """Drops the first `failures` connections, then behaves."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures
        self.calls = 0

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        self.calls += 1
        if self.calls <= self.failures:
            raise requests.ConnectionError("connection refused")
        return super().request(method, url, *args, **kwargs)


def test_orthanc_client_retries_network_errors_with_backoff(orthanc: Orthanc) -> None:
    delays: list[float] = []
    config = config_for(orthanc, unique_description(), backoff_seconds=0.5, retries=3)
    client = OrthancClient(config, session=FlakySession(failures=2), sleep=delays.append)

    assert client.find_series() == []
    assert delays == [0.5, 1.0]

    client = OrthancClient(config, session=FlakySession(failures=10), sleep=delays.append)
    with pytest.raises(OrthancError, match="failed after 4 attempts: ConnectionError"):
        client.find_series()


def test_config_from_args_prefers_arguments_over_settings() -> None:
    parser = argparse.ArgumentParser()
    pacs_sync.add_arguments(parser)
    settings = SimpleNamespace(
        orthanc_url="http://pacs:8042",
        orthanc_username="env-user",
        orthanc_password=SimpleNamespace(get_secret_value=lambda: "env-secret"),
        pacs_series_filter="*FLAIR*",
        pacs_poll_seconds=60.0,
        max_dicom_pixels=1000,
    )

    from_settings = pacs_sync.config_from_args(parser.parse_args([]), settings)
    overridden = pacs_sync.config_from_args(parser.parse_args(["--orthanc", "https://other", "--user", "me"]), settings)

    assert from_settings == PacsSyncConfig(
        orthanc_url="http://pacs:8042",
        username="env-user",
        password="env-secret",
        series_filter="*FLAIR*",
        poll_seconds=60.0,
        max_image_pixels=1000,
    )
    assert (overridden.orthanc_url, overridden.username, overridden.password) == ("https://other", "me", "env-secret")
    with pytest.raises(ValueError, match="orthanc_url must start with http:// or https://; got 'pacs:8042'"):
        pacs_sync.config_from_args(parser.parse_args(["--orthanc", "pacs:8042"]), settings)
