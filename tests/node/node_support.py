"""What the DICOM node tests share: a model stand-in, a clock, a results SCP, and dcmtk's storescu.

The models are replaced by a threshold on the FLAIR channel (`ThresholdPredictor`), so that the node tests check the
node (spooling, quiet period, once-only processing, sending, retries) and the series flow without loading Keras.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from pydicom.dataset import Dataset
from pydicom.uid import ComprehensiveSRStorage, SegmentationStorage
from pynetdicom import AE, evt
from pynetdicom import _config as pynetdicom_config
from pynetdicom.sop_class import Verification

from app.core.preprocessing import FLAIR_CHANNEL as FLAIR
from app.inference import SlicePrediction
from app.metrics import MetricsServerError, serve_metrics
from app.model_runners import predictor_runner
from app.node.dicom_node import DicomNode
from app.prediction import PredictionService
from app.uploads import UploadLimits
from tests.dicom.builders import to_bytes, write_files


def _keep_responses_for_their_sender() -> None:
    """Work round a race in pynetdicom's association reactor (3.0.4; pydicom/pynetdicom#875, still in its main
    branch): `send_c_store` pauses the reactor by clearing an event and waiting for a flag that the reactor sets just
    before it waits, so a reactor that has passed its wait but not yet polled the queue takes the C-STORE response
    and drops it as "unexpected", and the sender waits out the DIMSE timeout. That failed a node test once in CI
    (30 s, no status) on a loaded 2-core machine. In these tests a requestor's reactor gives a response back to the
    queue, where the sender that waits for it finds it; the node's own sender (production) instead records the send
    as failed and retries it after its backoff."""
    from pynetdicom.association import Association

    serve = Association._serve_request

    def serve_or_give_back(association: Association, message: Any, context_id: int) -> None:
        if association.is_requestor and not message.is_valid_request:
            association.dimse.msg_queue.put((context_id, message))
            return
        serve(association, message, context_id)

    Association._serve_request = serve_or_give_back  # type: ignore[method-assign]


_keep_responses_for_their_sender()

NODE_AE, CALLING_AE, RESULTS_AE = "BRAINTUMOR", "TESTSCU", "RESULTS"
QUIET_SECONDS = 30.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def metrics_served(registry: CollectorRegistry) -> tuple[int, Callable[[], None]]:
    """`serve_metrics` on a free loopback port: its port and what stops it. Tried again on another port if the free
    one was taken before the server bound it (the other test worker's connections take ports too)."""
    for _ in range(2):
        port = free_port()
        with contextlib.suppress(MetricsServerError):
            return port, serve_metrics(registry, "127.0.0.1", port)
    port = free_port()
    return port, serve_metrics(registry, "127.0.0.1", port)


VENV_BIN = Path(sys.prefix) / "bin"


def dcmtk(tool: str) -> str:
    """dcmtk's `tool`, never a virtual environment's namesake (pynetdicom installs a `storescu` of its own): not this
    environment's, nor another's on PATH (a shell with another checkout's environment active)."""
    search = os.pathsep.join(
        directory
        for directory in os.environ.get("PATH", "").split(os.pathsep)
        if directory and not (Path(directory).parent / "pyvenv.cfg").is_file() and Path(directory) != VENV_BIN
    )
    path = shutil.which(tool, path=search)
    if path is None:
        pytest.skip(f"{tool} not found: install the Debian package dcmtk (.ci/install-system-packages.sh)")
    return path


class ThresholdPredictor:
    """Positive where the FLAIR channel of the model input is bright: deterministic masks, no models."""

    model_tags = {"classifier": "threshold-classifier@0.1", "segmenter": "threshold-segmenter@0.1"}
    classifier_threshold = 0.5
    series_min_component_voxels = 0
    single_slice_mask_min_probability = 0.0
    single_slice_min_component_pixels = 0

    def __init__(self) -> None:
        self.calls: list[int] = []

    def predict_preprocessed(self, batch: np.ndarray, sizes: Sequence[tuple[int, int]]) -> list[SlicePrediction]:
        self.calls.append(len(sizes))
        predictions = []
        for model_input, (height, width) in zip(batch, sizes, strict=True):
            bright = (model_input[..., FLAIR] > 150 / 255).astype(np.uint8)
            mask = cv2.resize(bright, (width, height), interpolation=cv2.INTER_NEAREST)
            detected = int(mask.sum()) > 50
            predictions.append(SlicePrediction(0.9 if detected else 0.1, detected, mask if detected else None))
        return predictions


class Clock:
    """A clock the test moves forward, so the quiet period passes without waiting."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class ResultStore:
    """A pynetdicom C-STORE SCP for SEG and SR: where the node's results land. Datasets of a `refused` modality are
    answered `refusal_status` (default 0x0122, SOP class not supported) and not kept, as an archive that accepts the
    context and then refuses."""

    def __init__(
        self,
        port: int,
        sop_classes: Sequence[str] = (SegmentationStorage, ComprehensiveSRStorage),
        refused: Sequence[str] = (),
        refusal_status: int = 0x0122,
        stored_status: int = 0x0000,
        aborted_on: Sequence[str] = (),
    ) -> None:
        self.port = port
        self.refused = tuple(refused)
        self.refusal_status = refusal_status
        self.stored_status = stored_status  # what a kept dataset is answered: a warning stores it too
        self.aborted_on = tuple(aborted_on)  # modalities whose C-STORE the archive answers by aborting
        self.received: list[Dataset] = []
        self._lock = threading.Lock()
        ae = AE(ae_title=RESULTS_AE)
        for sop_class in sop_classes:
            ae.add_supported_context(sop_class)
        self._server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._handle)])

    def _handle(self, event: Any) -> int:
        dataset = event.dataset
        dataset.file_meta = event.file_meta
        if dataset.Modality in self.aborted_on:
            event.assoc.abort()
            return 0xC000
        if dataset.Modality in self.refused:
            return self.refusal_status
        with self._lock:
            self.received.append(dataset)
        return self.stored_status

    def by_modality(self, modality: str) -> list[Dataset]:
        return [dataset for dataset in self.received if dataset.Modality == modality]

    def close(self) -> None:
        self._server.shutdown()


def storescu(
    node: DicomNode, files: list[Path], calling_ae: str = CALLING_AE, options: Sequence[str] = ()
) -> subprocess.CompletedProcess[str]:
    """Send `files` with dcmtk's storescu; return once the node has seen the association end (`associations_ended`)."""
    command = [dcmtk("storescu"), *options, "-aet", calling_ae, "-aec", NODE_AE, "127.0.0.1", str(node.config.port)]
    sent = subprocess.run([*command, *map(str, files)], capture_output=True, text=True, timeout=60, check=False)
    associations_ended(node)
    return sent


def send_study(node: DicomNode, clock: Clock, series: list[Dataset], folder: Path) -> None:
    """Send `series` with storescu (files written to `folder`), wait out the quiet period, process and send."""
    assert storescu(node, write_files(series, folder)).returncode == 0
    clock.advance(QUIET_SECONDS)
    process_and_send(node)


def expected_result(datasets: list[Dataset]) -> Any:
    """What the same series flow gives without the node: the reference for the SEG frames and the SR volume."""
    predictor = ThresholdPredictor()
    service = PredictionService(predictor, predictor_runner(predictor, 16), UploadLimits(), offload=False)
    return asyncio.run(service.predict_dicom([to_bytes(dataset) for dataset in datasets], build_seg=True)).result


def associations_ended(node: DicomNode) -> None:
    """Wait until the node has seen the test's associations end (storescu may exit a moment before the node handles
    the close): a study is not processed while one is open, and its quiet period starts at the end, so a test clock
    moved before it would start it later."""
    assert wait_for(lambda: not node.studies_receiving(), 10), "the node never saw the association end"


def process_ready(node: DicomNode) -> list[str]:
    """`node.process_ready()` once the test's associations have ended (`associations_ended`)."""
    associations_ended(node)
    return node.process_ready()


def process_and_send(node: DicomNode, associations_ended: bool = True) -> list[str]:
    """One pass of each of the node's two threads: process the quiet studies, then send their results; with
    `associations_ended`, once the test's associations have ended (`process_ready`)."""
    processed = process_ready(node) if associations_ended else node.process_ready()
    node.send_unsent()
    return processed


def record(node: DicomNode) -> dict[str, Any]:
    (study,) = (node.spool.root / "studies").iterdir()
    return json.loads((study / "record.json").read_text())


def records(node: DicomNode) -> list[dict[str, Any]]:
    """Every study's record, in key order."""
    return [json.loads(path.read_text()) for path in sorted((node.spool.root / "studies").glob("*/record.json"))]


def echo(port: int) -> bool:
    """True if the node at `port` answers a C-ECHO from an allowed calling AE (False if it refuses to associate)."""
    ae = AE(ae_title=CALLING_AE)
    ae.add_requested_context(Verification)
    ae.acse_timeout = 5
    association = ae.associate("127.0.0.1", port, ae_title=NODE_AE)
    if not association.is_established:
        return False
    status = association.send_c_echo()
    association.release()
    return status is not None and int(status.Status) == 0


def wait_for(condition: Callable[[], object], seconds: float) -> bool:
    """Poll `condition` every 50 ms; True as soon as it holds, False after `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


class SilentDestination:
    """A TCP port that accepts connections and never says a word: a hung PACS, until `close`."""

    def __init__(self) -> None:
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(8)
        self._listener.settimeout(0.2)
        self.port = int(self._listener.getsockname()[1])
        self._held: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def connections(self) -> int:
        return len(self._held)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                self._held.append(self._listener.accept()[0])
            except TimeoutError:
                continue

    def close(self) -> None:
        """Stop listening and drop every connection: a send still waiting fails at once."""
        self._stop.set()
        self._thread.join()
        for connection in self._held:
            connection.close()
        self._listener.close()


def store_file_as_it_is(port: int, path: Path, sop_class: str, transfer_syntax: str) -> Dataset:
    """C-STORE the data set of the Part 10 file at `path` byte for byte (pynetdicom's chunked sending from a file, which
    never decodes it: a damaged deflate stream goes as it is); return the response's status data set."""
    ae = AE(ae_title=CALLING_AE)
    ae.add_requested_context(sop_class, [transfer_syntax])
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    association = ae.associate("127.0.0.1", port, ae_title=NODE_AE)
    assert association.is_established
    chunked = pynetdicom_config.STORE_SEND_CHUNKED_DATASET
    pynetdicom_config.STORE_SEND_CHUNKED_DATASET = True
    try:
        status = association.send_c_store(path)
    finally:
        pynetdicom_config.STORE_SEND_CHUNKED_DATASET = chunked
        association.release()
    assert "Status" in status, "no answer: the association ended"
    return status


def store_dataset(port: int, dataset: Dataset, from_address: str = "127.0.0.1") -> Dataset:
    """C-STORE `dataset` as it is (pynetdicom, no checks by a tool like storescu), from `from_address` (another
    sender: any of 127.0.0.0/8); return the response's status data set (Status, ErrorComment)."""
    ae = AE(ae_title=CALLING_AE)
    ae.add_requested_context(str(dataset.SOPClassUID), [str(dataset.file_meta.TransferSyntaxUID)])
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    association = ae.associate("127.0.0.1", port, ae_title=NODE_AE, bind_address=(from_address, 0))
    assert association.is_established
    try:
        status = association.send_c_store(dataset)
    finally:
        association.release()
    assert "Status" in status, "no answer: the association ended"
    return status
