"""Fixtures of the DICOM node tests: a results SCP, a destination that never answers, a test clock, and a DICOM node
driven by that clock (`make_node`). Tests elsewhere that need a node import these fixtures from here."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.node.dicom_node import DicomNode
from app.node.dicom_sender import Destination
from app.node.node_config import NodeConfig
from app.study_analysis import ModelStudyProcessor, StudyProcessor
from tests.node.node_support import (
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
        destination_port: int | None = None,
        allowed: tuple[str, ...] = (CALLING_AE,),
        destinations: tuple[Destination, ...] | None = None,
        processor: StudyProcessor | None = None,
        **settings: Any,
    ) -> DicomNode:
        """A started node on the test's spool; its one destination is `results` (at `destination_port` if given),
        unless `destinations` names others (none: ``()``); its processor runs `ThresholdPredictor` unless
        `processor` is given."""
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
            destinations=(Destination(RESULTS_AE, "127.0.0.1", destination_port or results.port),)
            if destinations is None
            else destinations,
            **(defaults | settings),
        )
        processor = processor or ModelStudyProcessor(ThresholdPredictor())
        node = DicomNode(config, processor, clock=clock, sleep=lambda _: None)
        node.start(worker=False)  # the test drives process_ready / send_unsent with its clock
        nodes.append(node)
        return node

    yield make
    for node in nodes:
        node.stop()
