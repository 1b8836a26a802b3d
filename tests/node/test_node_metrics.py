"""The DICOM node's Prometheus metrics, served as `brain-tumor dicom-node` serves them (DICOM_NODE_METRICS_PORT),
scraped over HTTP while a study is received, analysed and sent (or not sent)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.node.dicom_spool import SpoolLimits
from app.release import service_version
from tests.api.service_client import required_sample_value
from tests.dicom.builders import mr_series, tumor_channels, write_files
from tests.node.node_support import (
    QUIET_SECONDS,
    RESULTS_AE,
    Clock,
    ResultStore,
    free_port,
    metrics_served,
    process_and_send,
    storescu,
)


@pytest.fixture
def scrape() -> Iterator[Any]:
    """Serve a node's metrics on a free port; the function it yields returns the exposition text."""
    stops: list[Any] = []

    def start(node: Any) -> Any:
        port, stop = metrics_served(node.metrics.registry)
        stops.append(stop)
        return lambda: httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text

    yield start
    for stop in stops:
        stop()


def assert_no_study_values(text: str, series: list[Any]) -> None:
    for dataset in series:
        for uid in (dataset.StudyInstanceUID, dataset.SeriesInstanceUID, dataset.SOPInstanceUID):
            assert str(uid) not in text
    assert str(series[0].PatientID) not in text
    assert str(series[0].PatientName) not in text


def test_metrics_follow_a_study_from_receiving_to_sending(
    make_node: Any, results: ResultStore, clock: Clock, tmp_path: Path, scrape: Any
) -> None:
    node = make_node()
    metrics = scrape(node)
    destination = f"{RESULTS_AE}@127.0.0.1:{results.port}"
    before = metrics()
    assert required_sample_value(before, "brain_tumor_node_instances_received_total") == 0
    assert required_sample_value(before, "brain_tumor_node_last_pass_timestamp_seconds") == 0
    assert required_sample_value(before, "brain_tumor_node_results_sent_total", destination=destination) == 0
    assert "process_start_time_seconds" in before
    assert required_sample_value(before, "brain_tumor_build_info", version=service_version()) == 1  # which release runs
    assert "_created" not in before

    series = mr_series(tumor_channels())
    assert storescu(node, write_files(series, tmp_path / "in")).returncode == 0
    received = metrics()
    assert required_sample_value(received, "brain_tumor_node_instances_received_total") == 3
    assert required_sample_value(received, "brain_tumor_node_studies_pending") == 1
    assert required_sample_value(received, "brain_tumor_node_spool_bytes") > 0

    clock.advance(QUIET_SECONDS)
    assert len(process_and_send(node)) == 1
    done = metrics()
    assert required_sample_value(done, "brain_tumor_node_studies_analysed_total", outcome="positive") == 1
    assert required_sample_value(done, "brain_tumor_node_studies_analysed_total", outcome="failed") == 0
    assert required_sample_value(done, "brain_tumor_node_studies_pending") == 0
    assert required_sample_value(done, "brain_tumor_node_studies_unsent") == 0
    assert required_sample_value(done, "brain_tumor_node_results_sent_total", destination=destination) == 1
    assert required_sample_value(done, "brain_tumor_node_send_failures_total", destination=destination) == 0
    assert required_sample_value(done, "brain_tumor_node_last_pass_timestamp_seconds") == clock.now
    assert required_sample_value(done, "brain_tumor_node_instances_refused_total", reason="invalid_instance") == 0
    assert_no_study_values(done, series)
    assert_no_study_values(done, results.received)


def test_metrics_show_results_that_cannot_be_sent(make_node: Any, clock: Clock, tmp_path: Path, scrape: Any) -> None:
    port = free_port()
    node = make_node(destination_port=port)  # nothing listens there
    metrics = scrape(node)
    series = mr_series(tumor_channels())
    assert storescu(node, write_files(series, tmp_path / "in")).returncode == 0
    clock.advance(QUIET_SECONDS)
    process_and_send(node)

    text = metrics()
    destination = f"{RESULTS_AE}@127.0.0.1:{port}"
    assert required_sample_value(text, "brain_tumor_node_send_failures_total", destination=destination) == 1
    assert required_sample_value(text, "brain_tumor_node_results_sent_total", destination=destination) == 0
    assert required_sample_value(text, "brain_tumor_node_studies_unsent") == 1
    assert_no_study_values(text, series)


def test_metrics_count_a_refused_study_by_its_error_code(
    make_node: Any, results: ResultStore, clock: Clock, tmp_path: Path, scrape: Any
) -> None:
    """Interop review 39: a refused study (C-STORE answered Success, nothing sent back) showed only outcome="failed";
    the code says why without the record (slices at two pixel spacings are refused as invalid_dicom_image)."""
    node = make_node()
    metrics = scrape(node)
    series = mr_series(tumor_channels())
    series[1].PixelSpacing = [0.5, 0.5]
    assert storescu(node, write_files(series, tmp_path / "in")).returncode == 0
    clock.advance(QUIET_SECONDS)

    process_and_send(node)

    text = metrics()
    assert required_sample_value(text, "brain_tumor_node_studies_analysed_total", outcome="failed") == 1
    assert required_sample_value(text, "brain_tumor_node_studies_failed_total", error="invalid_dicom_image") == 1
    assert_no_study_values(text, series)


def test_the_age_of_results_not_delivered_grows_until_they_are(
    make_node: Any, clock: Clock, tmp_path: Path, scrape: Any
) -> None:
    port = free_port()
    node = make_node(destination_port=port)  # nothing listens there yet
    metrics = scrape(node)
    series = mr_series(tumor_channels())
    assert storescu(node, write_files(series, tmp_path / "in")).returncode == 0
    clock.advance(QUIET_SECONDS)
    assert (
        required_sample_value(metrics(), "brain_tumor_node_oldest_unsent_result_age_seconds") == 0
    )  # received, nothing made yet

    process_and_send(node)  # analysed; the destination refuses the connection
    clock.advance(600)
    text = metrics()
    assert required_sample_value(text, "brain_tumor_node_oldest_unsent_result_age_seconds") == pytest.approx(600)
    assert_no_study_values(text, series)

    destination = ResultStore(port)  # the destination comes back
    try:
        clock.advance(3600)  # past the sender's backoff
        node.send_unsent()
        text = metrics()
        assert len(destination.received) == 2  # the SEG and the SR
    finally:
        destination.close()
    assert required_sample_value(text, "brain_tumor_node_oldest_unsent_result_age_seconds") == 0
    assert required_sample_value(text, "brain_tumor_node_studies_unsent") == 0


@pytest.mark.parametrize(
    ("limits", "reason", "kept"),
    [
        (SpoolLimits(max_spool_bytes=150_000), "spool_full", 2),  # room for 2 slices of about 66 kB
        (SpoolLimits(max_instance_bytes=10_000), "too_large", 0),
    ],
)
def test_a_refused_instance_is_counted_by_a_fixed_reason(
    limits: SpoolLimits, reason: str, kept: int, make_node: Any, tmp_path: Path, scrape: Any
) -> None:
    node = make_node(spool_limits=limits)
    metrics = scrape(node)
    series = mr_series(tumor_channels())
    storescu(node, write_files(series, tmp_path / "in"))

    text = metrics()
    assert required_sample_value(text, "brain_tumor_node_instances_received_total") == kept
    assert (
        required_sample_value(text, "brain_tumor_node_instances_refused_total", reason=reason) == 1
    )  # storescu stops there
    refused = [line for line in text.splitlines() if line.startswith("brain_tumor_node_instances_refused_total{")]
    assert len(refused) == 6  # the fixed vocabulary, never the Error Comment's free text
    assert_no_study_values(text, series)


def test_results_dropped_at_a_restart_are_counted_for_their_destination(
    make_node: Any, clock: Clock, tmp_path: Path, scrape: Any
) -> None:
    gone = free_port()  # nothing listens there
    node = make_node(destination_port=gone)
    assert storescu(node, write_files(mr_series(tumor_channels()), tmp_path / "in")).returncode == 0
    clock.advance(QUIET_SECONDS)
    process_and_send(node)
    node.stop()

    restarted = make_node(destinations=())  # `gone` taken out of DICOM_NODE_DESTINATIONS: its results are dropped
    text = scrape(restarted)()

    assert (
        required_sample_value(
            text, "brain_tumor_node_results_dropped_total", destination=f"{RESULTS_AE}@127.0.0.1:{gone}"
        )
        == 1
    )
    assert required_sample_value(text, "brain_tumor_node_studies_unsent") == 0
