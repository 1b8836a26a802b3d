"""The sender's error names what went wrong with real sockets (review 24, finding 5): a destination that is down was
reported as "association aborted: does the destination accept SEG, SR?", since pynetdicom sets `is_aborted` for a
refused TCP connection too. The SOP-class hint belongs only to an association accepted with no usable context."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    ComprehensiveSRStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
    SegmentationStorage,
    generate_uid,
)
from pynetdicom import AE, evt

from app.node.dicom_sender import Destination, ResultSender
from tests.node.node_support import RESULTS_AE, SilentDestination, free_port

HOST = "127.0.0.1"
RESULT_CLASSES = (SegmentationStorage, ComprehensiveSRStorage)


def result_file(directory: Path, sop_class: str, modality: str) -> Path:
    """A minimal result object of `sop_class`: the sender reads only its class and Modality."""
    dataset = Dataset()
    dataset.SOPClassUID, dataset.SOPInstanceUID, dataset.Modality = sop_class, generate_uid(), modality
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.MediaStorageSOPClassUID = sop_class
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    path = directory / f"{modality}.dcm"
    dataset.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture
def results_files(tmp_path: Path) -> list[Path]:
    return [
        result_file(tmp_path, SegmentationStorage, "SEG"),
        result_file(tmp_path, ComprehensiveSRStorage, "SR"),
    ]


def send(port: int, paths: list[Path], timeout_seconds: float = 5.0, ae_title: str = RESULTS_AE) -> str:
    """One send without retries; its failure text."""
    sender = ResultSender("BRAINTUMOR", retries=0, backoff_seconds=0.0, timeout_seconds=timeout_seconds)
    outcome = sender.send(Destination(ae_title, HOST, port), paths)
    assert outcome.stored == ()
    return outcome.failure


@pytest.fixture
def start_store() -> Iterator[Callable[..., int]]:
    """Starts pynetdicom C-STORE SCPs (AE `RESULTS_AE`) on free ports; returns each one's port."""
    servers: list[Any] = []

    def start(sop_classes: tuple[str, ...], on_store: Callable[[Any], int], require_called_aet: bool = False) -> int:
        ae = AE(ae_title=RESULTS_AE)
        ae.require_called_aet = require_called_aet
        for sop_class in sop_classes:
            ae.add_supported_context(sop_class)
        port = free_port()
        servers.append(ae.start_server((HOST, port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)]))
        return port

    yield start
    for server in servers:
        server.shutdown()


def store(event: Any) -> int:
    return 0x0000


def abort(event: Any) -> int:
    event.assoc.abort()
    return 0x0000


def test_a_port_with_nothing_listening_is_named_unreachable(results_files: list[Path]) -> None:
    port = free_port()

    failure = send(port, results_files)

    assert failure == f"destination unreachable: could not connect to {HOST}:{port}"


def test_a_rejected_association_says_so_with_the_reason(
    start_store: Callable[..., int], results_files: list[Path]
) -> None:
    port = start_store(RESULT_CLASSES, store, require_called_aet=True)

    failure = send(port, results_files, ae_title="NOTRESULTS")  # the usual PACS mistake: a wrong AE title for it

    assert failure == "association rejected by the destination (permanent: Called AE title not recognised)"


def test_an_association_without_a_context_for_seg_or_sr_asks_about_the_sop_classes(
    start_store: Callable[..., int], results_files: list[Path], caplog: pytest.LogCaptureFixture
) -> None:
    port = start_store((MRImageStorage,), store)

    failure = send(port, results_files)

    assert failure == (
        "association accepted with no presentation context for the results' SOP classes: does the destination "
        "accept SEG, SR?"
    )
    assert "accepts no SEG" not in caplog.text  # nothing goes: no SR goes without the SEG either


def test_a_seg_sent_alone_to_a_destination_without_its_context_is_declined_not_failed(
    start_store: Callable[..., int], results_files: list[Path]
) -> None:
    """Interop review 62 F3: a SEG left to send after its SR was stored went alone in each new association, which
    the destination accepted with no context: a failure, retried for ever. It is that destination's lasting answer."""
    port = start_store((ComprehensiveSRStorage,), store)
    sender = ResultSender("BRAINTUMOR", retries=0, backoff_seconds=0.0, timeout_seconds=5.0)

    outcome = sender.send(Destination(RESULTS_AE, HOST, port), results_files[:1])

    assert (outcome.stored, outcome.declined, outcome.failure) == ((), (results_files[0],), "")


def test_an_association_aborted_after_it_was_established_is_told_apart(
    start_store: Callable[..., int], results_files: list[Path]
) -> None:
    port = start_store(RESULT_CLASSES, abort)

    failure = send(port, results_files)

    assert "association aborted after it was established" in failure
    assert "does the destination accept" not in failure


def test_an_abort_before_anything_was_stored_names_the_node_s_ae_title_as_the_likely_cause(
    start_store: Callable[..., int], results_files: list[Path]
) -> None:
    """Interop review 48 F4: Orthanc accepts an association from a calling AE title it does not know, then aborts on
    the first C-STORE; the error said only "aborted", with nothing to point the admin at the AE titles."""
    port = start_store(RESULT_CLASSES, abort)

    failure = send(port, results_files)

    assert failure.endswith(
        "association aborted after it was established, before the destination stored anything: it may not accept "
        f"stores from this node's AE title BRAINTUMOR (DICOM_NODE_AE_TITLE): declare that title, with this node's "
        f"host, as allowed to store at {RESULTS_AE}"
    )


def test_an_abort_after_a_result_was_stored_does_not_blame_the_ae_title(
    start_store: Callable[..., int], results_files: list[Path]
) -> None:
    """The destination took the node's stores, so its AE title is not what it refuses."""
    stores: list[str] = []

    def store_then_abort(event: Any) -> int:
        stores.append(event.request.AffectedSOPClassUID)
        return 0x0000 if len(stores) == 1 else abort(event)

    port = start_store(RESULT_CLASSES, store_then_abort)
    sender = ResultSender("BRAINTUMOR", retries=0, backoff_seconds=0.0, timeout_seconds=5.0)

    outcome = sender.send(Destination(RESULTS_AE, HOST, port), results_files)

    assert len(outcome.stored) == 1  # the first sent: the SR (interop review 63 F5)
    assert outcome.failure.endswith("association aborted after it was established")


def test_a_destination_that_accepts_the_connection_but_never_answers_is_not_unreachable(
    results_files: list[Path],
) -> None:
    silent = SilentDestination()
    try:
        failure = send(silent.port, results_files, timeout_seconds=1.0)
    finally:
        silent.close()

    assert failure == "no answer from the destination within 1 s"
