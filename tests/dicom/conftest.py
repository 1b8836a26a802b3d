"""Fixtures of the DICOM tests: a real Orthanc on loopback and the tiny models (one of each per test module), and a
DICOM node with a results SCP and a test clock (`make_node`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.inference import Predictor
from app.node.dicom_node import DicomNode
from app.node.dicom_sender import Destination
from app.node.node_config import NodeConfig
from app.study_analysis import ModelStudyProcessor
from tests.dicom.node_support import (
    CALLING_AE,
    NODE_AE,
    QUIET_SECONDS,
    RESULTS_AE,
    Clock,
    ResultStore,
    SilentDestination,
    ThresholdPredictor,
    free_port,
)
from tests.dicom.orthanc_server import Orthanc, running_orthanc


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    with running_orthanc(tmp_path_factory.mktemp("orthanc")) as server:
        yield server


@pytest.fixture(scope="module")
def predictor(tiny_model_dir: Path) -> Predictor:
    loaded = Predictor.from_model_dir(tiny_model_dir)
    loaded.warm_up()
    return loaded


@pytest.fixture
def results() -> Iterator[ResultStore]:
    store = ResultStore(free_port())
    yield store
    store.close()


@pytest.fixture
def silent_destination() -> Iterator[SilentDestination]:
    """A destination that accepts the TCP connection and never answers."""
    destination = SilentDestination()
    yield destination
    destination.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def make_node(tmp_path: Path, results: ResultStore, clock: Clock) -> Iterator[Any]:
    nodes: list[DicomNode] = []
    port = free_port()

    def make(
        destination_port: int | None = None, allowed: tuple[str, ...] = (CALLING_AE,), **settings: Any
    ) -> DicomNode:
        defaults: dict[str, Any] = {
            "send_retries": 1,
            "send_backoff_seconds": 1.0,  # never slept: sleep is a no-op here, the clock is the test's
        }
        config = NodeConfig(
            spool_dir=tmp_path / "spool",
            ae_title=NODE_AE,
            port=port,
            quiet_seconds=QUIET_SECONDS,
            allowed_calling_ae_titles=allowed,
            destinations=(Destination(RESULTS_AE, "127.0.0.1", destination_port or results.port),),
            **(defaults | settings),
        )
        node = DicomNode(config, ModelStudyProcessor(ThresholdPredictor()), clock=clock, sleep=lambda _: None)
        node.start(worker=False)  # the test drives process_ready / send_unsent with its clock
        nodes.append(node)
        return node

    yield make
    for node in nodes:
        node.stop()
