"""The DICOM node end to end, as a PACS sees it: the node in its own process on the committed models, a real Orthanc.

dcmtk's `storescu` sends a multi-slice MR series (real FLAIR slices) to the node; the node sends its SEG and volume
report (SR) by C-STORE to Orthanc's DICOM port, and Orthanc accepts C-STORE only from the node's AE title. The SEG's
frames are compared with the masks the HTTP API gives for the same files on the same models, the SR's volume with its
JSON volume. One node process (models load once, tens of seconds) serves the module; the restart test, last, kills it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from pydicom.dataset import Dataset

from app.dicom.dicom_seg_reader import read_segmentation_masks
from app.dicom.dicom_sr_reader import read_volume_report
from app.node.dicom_spool import study_key
from app.settings import Settings
from tests.api.service_client import decode_rle, running_client
from tests.conftest import REPO_ROOT, TUMOR_FREE_SLICE, read_slice
from tests.dicom.builders import FLAIR, PATIENT_ID, mr_series, tumor_channels, write_files
from tests.dicom.validation import dciodvfy_errors
from tests.pacs.orthanc_server import ORTHANC_AE, Orthanc, free_port, running_orthanc
from tests.service_processes import as_runtime_install

NODE_AE, CALLING_AE, UNKNOWN_AE = "BRAINTUMOR", "SCANNER", "STRANGER"
QUIET_SECONDS = 3.0
RESTART_QUIET_SECONDS = 12.0
STARTUP_SECONDS = 300.0  # model loading on a busy CI machine
RESULT_SECONDS = 180.0


def dcmtk(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} not found: install the Debian package dcmtk (.ci/install-system-packages.sh)")
    return path


class NodePortTaken(Exception):
    """The node's port was taken between choosing it free and the node binding it."""


def wait_for(condition: Callable[[], Any], seconds: float, what: str, poll: float = 0.1) -> Any:
    """Poll `condition` until it returns something truthy; fail naming `what` after `seconds`."""
    deadline = time.monotonic() + seconds
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {seconds:.0f} s")
        time.sleep(poll)


@dataclass
class NodeProcess:
    """`python -m app.cli dicom-node` configured by environment variables, as a deployment runs it."""

    port: int
    spool_dir: Path
    log_path: Path
    environment: dict[str, str]
    process: subprocess.Popen[bytes] | None = None
    _log_start: int = 0

    def start(self) -> None:
        self._log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("a") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "app.cli", "dicom-node"],
                cwd=REPO_ROOT,
                env=self.environment,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_for(self._answers_echo, STARTUP_SECONDS, "the DICOM node answering C-ECHO", poll=0.25)

    def _answers_echo(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            log = self.log_path.read_text()[self._log_start :]
            if "Address already in use" in log:
                raise NodePortTaken(log[-500:])
            pytest.fail(f"the node exited with {self.process.returncode}: {log[-3000:]}")
        return echoscu(self.port).returncode == 0

    def kill(self) -> None:
        """SIGKILL: no clean-up of any kind, as a power cut or the OOM killer would stop it."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.kill()

    def study_dir(self, study_uid: str) -> Path:
        return self.spool_dir / "studies" / study_key(study_uid, PATIENT_ID)

    def sent(self, study_uid: str) -> list[dict[str, Any]]:
        """The node's record of what it sent for the study (``sent.jsonl``), one entry per result and attempt."""
        log = self.spool_dir / "sent.jsonl"
        lines = log.read_text().splitlines() if log.exists() else []
        return [entry for entry in map(json.loads, lines) if entry["study_key"] == study_key(study_uid, PATIENT_ID)]


def echoscu(port: int, calling_ae: str = CALLING_AE) -> subprocess.CompletedProcess[str]:
    command = [dcmtk("echoscu"), "-aet", calling_ae, "-aec", NODE_AE, "127.0.0.1", str(port)]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


def storescu(port: int, files: list[Path], calling_ae: str = CALLING_AE) -> subprocess.CompletedProcess[str]:
    command = [dcmtk("storescu"), "-aet", calling_ae, "-aec", NODE_AE, "127.0.0.1", str(port), *map(str, files)]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


@dataclass(frozen=True)
class PacsWithNode:
    orthanc: Orthanc
    node: NodeProcess


@pytest.fixture(scope="module")
def pacs_with_node(tmp_path_factory: pytest.TempPathFactory, committed_model_dir: Path) -> Iterator[PacsWithNode]:
    """Orthanc, which knows the node as a modality allowed to store, and the node, which sends its results there."""
    dcmtk("storescu")
    directory = tmp_path_factory.mktemp("pacs_with_node")
    node_port = free_port()
    with running_orthanc(directory, dicom_modalities={"braintumor": (NODE_AE, "127.0.0.1", node_port)}) as orthanc:
        environment = as_runtime_install(
            {
                **os.environ,
                "MODEL_DIR": str(committed_model_dir),
                "INFERENCE_RUNTIME": "keras",
                "LOG_LEVEL": "INFO",
                "DICOM_NODE_AE_TITLE": NODE_AE,
                "DICOM_NODE_HOST": "127.0.0.1",
                "DICOM_NODE_PORT": str(node_port),
                "DICOM_NODE_SPOOL_DIR": str(directory / "spool"),
                "DICOM_NODE_QUIET_SECONDS": str(QUIET_SECONDS),
                "DICOM_NODE_ALLOWED_CALLING_AE_TITLES": CALLING_AE,
                "DICOM_NODE_DESTINATIONS": f"{ORTHANC_AE}@127.0.0.1:{orthanc.dicom_port}",
                "DICOM_NODE_SEND_RETRIES": "2",
                "DICOM_NODE_SEND_BACKOFF_SECONDS": "1",
            }
        )
        for attempt in range(3):
            node = NodeProcess(node_port, directory / "spool", directory / "node.log", environment)
            try:
                node.start()
                break
            except NodePortTaken:
                # Taken since it was chosen (the other test worker's connections take ports too): another, and
                # Orthanc told where the node now is. Orthanc never calls the node in these tests, but its record
                # should be true.
                if attempt == 2:
                    raise
                node_port = free_port()
                environment["DICOM_NODE_PORT"] = str(node_port)
                modality = {"AET": NODE_AE, "Host": "127.0.0.1", "Port": node_port, "AllowStore": True}
                orthanc.session.put(
                    f"{orthanc.url}/modalities/braintumor", json=modality, timeout=30
                ).raise_for_status()
        try:
            yield PacsWithNode(orthanc, node)
        finally:
            node.stop()


@pytest.fixture(scope="module")
def http_client(committed_model_dir: Path) -> Iterator[TestClient]:
    """The HTTP API in process, on the same committed models: the reference for the node's results."""
    with running_client(Settings(model_dir=committed_model_dir)) as client:
        yield client


def real_series() -> list[Dataset]:
    """Seven axial FLAIR slices of one real patient: tumor-free, the tumor growing and shrinking, tumor-free."""
    tumor = tumor_channels()
    free = read_slice(TUMOR_FREE_SLICE)[:, :, FLAIR]
    return mr_series([free, *tumor, *reversed(tumor[:-1]), free])


def results_in_pacs(pacs: PacsWithNode, study_uid: str) -> tuple[Dataset, Dataset]:
    """The study's one SEG and one SR in Orthanc, once both are there and the node has recorded them as sent."""

    def both() -> tuple[list[Dataset], list[Dataset]] | None:
        segs, reports = pacs.orthanc.results(study_uid, "SEG"), pacs.orthanc.results(study_uid, "SR")
        return (segs, reports) if segs and reports else None

    segs, reports = wait_for(both, RESULT_SECONDS, "a SEG and an SR from the node in Orthanc")
    assert (len(segs), len(reports)) == (1, 1)
    wait_for(
        lambda: (
            {(entry["modality"], entry["status"]) for entry in pacs.node.sent(study_uid)}
            == {
                ("SEG", "sent"),
                ("SR", "sent"),
            }
        ),
        30,
        "the node recording the SEG and SR as sent",
    )
    return segs[0], reports[0]


@dataclass(frozen=True)
class DeliveredStudy:
    series: list[Dataset]
    files: list[Path]
    seg: Dataset
    sr: Dataset


@pytest.fixture(scope="module")
def delivered(pacs_with_node: PacsWithNode, tmp_path_factory: pytest.TempPathFactory) -> DeliveredStudy:
    """One series sent to the node with storescu, and the SEG and SR the node stored in Orthanc for it."""
    series = real_series()
    files = write_files(series, tmp_path_factory.mktemp("series"))
    sent = storescu(pacs_with_node.node.port, files)
    assert sent.returncode == 0, sent.stderr
    seg, sr = results_in_pacs(pacs_with_node, series[0].StudyInstanceUID)
    return DeliveredStudy(series, files, seg, sr)


def test_node_results_reach_orthanc_over_dicom_from_the_node(
    pacs_with_node: PacsWithNode, delivered: DeliveredStudy
) -> None:
    study_uid = delivered.series[0].StudyInstanceUID

    for modality in ("SEG", "SR"):
        (origin,) = pacs_with_node.orthanc.result_origins(study_uid, modality)
        assert origin["Origin"] == "DicomProtocol"
        assert (origin["RemoteAET"], origin["CalledAET"]) == (NODE_AE, ORTHANC_AE)
    assert delivered.seg.StudyInstanceUID == delivered.sr.StudyInstanceUID == study_uid


def test_node_seg_frames_equal_the_http_api_masks(delivered: DeliveredStudy, http_client: TestClient) -> None:
    parts = [("files", (path.name, path.read_bytes(), "application/dicom")) for path in delivered.files]
    response = http_client.post("/v1/predict/batch?mask_format=rle", files=parts)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["tumor_detected"] is True and body["file_errors"] == []

    masks = read_segmentation_masks(delivered.seg)
    assert sorted(masks) == sorted(dataset.SOPInstanceUID for dataset in delivered.series)
    positive = 0
    for item in body["slices"]:
        mask = item["prediction"]["mask"]
        expected = np.zeros((256, 256), np.uint8) if mask is None else decode_rle(mask["rle"])
        np.testing.assert_array_equal(masks[item["sop_instance_uid"]][0], expected)
        positive += int(expected.any())
    assert 0 < positive < len(delivered.series)  # the classifier tells tumor slices from tumor-free ones

    report = read_volume_report(delivered.sr)
    assert report["tumor_volume_ml"] == pytest.approx(body["tumor_volume_ml"], abs=1e-3)
    assert report["slices_analysed"] == len(delivered.series)
    assert report["slices_with_tumor"] == positive
    assert report["segmentation_sop_instance_uid"] == delivered.seg.SOPInstanceUID


def test_node_seg_and_sr_pass_dciodvfy(delivered: DeliveredStudy) -> None:
    assert dciodvfy_errors(delivered.seg, "Segmentation") == []
    assert dciodvfy_errors(delivered.sr, "ComprehensiveSR") == []


def test_second_send_of_the_same_series_adds_nothing_to_orthanc(
    pacs_with_node: PacsWithNode, delivered: DeliveredStudy
) -> None:
    node, orthanc = pacs_with_node.node, pacs_with_node.orthanc
    study_uid = delivered.series[0].StudyInstanceUID
    sent_before = node.sent(study_uid)

    again = storescu(node.port, delivered.files)
    assert again.returncode == 0, again.stderr
    pending = node.spool_dir / "pending" / node.study_dir(study_uid).name
    wait_for(lambda: not pending.exists(), QUIET_SECONDS + 60, "the node done with the second send")
    time.sleep(1.0)  # anything it were to send would be under way by now

    assert len(orthanc.results(study_uid, "SEG")) == 1
    assert len(orthanc.results(study_uid, "SR")) == 1
    assert node.sent(study_uid) == sent_before


def test_unknown_calling_ae_is_refused(pacs_with_node: PacsWithNode, tmp_path: Path) -> None:
    node = pacs_with_node.node
    series = real_series()[:2]

    echo = echoscu(node.port, calling_ae=UNKNOWN_AE)
    store = storescu(node.port, write_files(series, tmp_path / "in"), calling_ae=UNKNOWN_AE)

    assert echo.returncode != 0 and "Association Rejected" in echo.stdout + echo.stderr
    assert store.returncode != 0 and "Association Rejected" in store.stdout + store.stderr
    assert not node.study_dir(series[0].StudyInstanceUID).exists()
    assert echoscu(node.port).returncode == 0  # the allowed caller still gets through


def test_node_killed_mid_series_loses_no_instance(pacs_with_node: PacsWithNode, tmp_path: Path) -> None:
    """Last in the module: it kills the shared node (SIGKILL, inside the quiet period) and starts it again."""
    node, orthanc = pacs_with_node.node, pacs_with_node.orthanc
    series = real_series()
    files = write_files(series, tmp_path / "in")
    half = len(files) // 2

    first = storescu(node.port, files[:half])
    assert first.returncode == 0, first.stderr
    node.kill()  # well inside the quiet period: storescu returned a moment ago
    study_dir = node.study_dir(series[0].StudyInstanceUID)
    assert len(list((study_dir / "instances").glob("*.dcm"))) == half  # acknowledged means on disk
    assert not (study_dir / "record.json").exists()  # and not processed

    # The rest must arrive within the quiet period the restart gives the pending study: a longer one than the
    # module's, so that a busy machine's slow start of storescu does not let the node analyse half a series first.
    node.environment["DICOM_NODE_QUIET_SECONDS"] = str(RESTART_QUIET_SECONDS)
    node.start()
    rest = storescu(node.port, files[half:])
    assert rest.returncode == 0, rest.stderr
    seg, sr = results_in_pacs(pacs_with_node, series[0].StudyInstanceUID)

    assert int(seg.NumberOfFrames) == len(series)
    assert set(read_segmentation_masks(seg)) == {dataset.SOPInstanceUID for dataset in series}
    assert read_volume_report(sr)["slices_analysed"] == len(series)
    time.sleep(RESTART_QUIET_SECONDS)  # nothing partial follows
    assert len(orthanc.results(series[0].StudyInstanceUID, "SEG")) == 1
