"""pacs-sync's Prometheus metrics, served as `brain-tumor pacs-sync` serves them (PACS_SYNC_METRICS_PORT) and scraped
over HTTP between the passes of a sync on a stand-in Orthanc (canned answers)."""

from __future__ import annotations

import httpx
import pytest

from app.pacs.orthanc_client import SYNC_METADATA, OrthancClient
from app.pacs.pacs_sync import run_pacs_sync
from app.pacs.pacs_sync_config import PacsSyncConfig
from app.pacs.pacs_sync_metrics import PacsSyncMetrics
from app.release import service_version
from tests.api.service_client import required_sample_value
from tests.node.node_support import metrics_served
from tests.pacs.pacs_sync_support import HTML_PAGE, CannedSession, NegativePredictor, json_answer

CONFIG = PacsSyncConfig("http://orthanc.invalid", poll_seconds=7.0, retries=1, backoff_seconds=0.0, retry_seconds=60)
# Orthanc-like IDs: none may appear in the metrics.
STUDIES = ("5c1a7d0e-94b1c2d3-7e8f9a0b-1c2d3e4f-5a6b7c8d", "6d2b8e1f-a5c2d3e4-8f9a0b1c-2d3e4f5a-6b7c8d9e")


class StopSync(Exception):
    """Raised by the test's sleep to end a sync that runs until interrupted."""


def scrapes_between_two_passes(session: CannedSession) -> list[str]:
    """Run pacs-sync on the canned Orthanc answers with its metrics served, and scrape them after each of the first
    two passes (when it sleeps until the next)."""
    metrics = PacsSyncMetrics()
    port, stop = metrics_served(metrics.registry)
    scrapes: list[str] = []

    def sleep(seconds: float) -> None:
        if seconds == CONFIG.poll_seconds:  # between passes: what a scrape sees then
            scrapes.append(httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text)
            if len(scrapes) == 2:
                raise StopSync

    try:
        client = OrthancClient(CONFIG, session=session, sleep=sleep)
        with pytest.raises(StopSync):
            run_pacs_sync(
                CONFIG, NegativePredictor(), client=client, sleep=sleep, clock=lambda: 1000.0, metrics=metrics
            )  # type: ignore[arg-type]
    finally:
        stop()
    return scrapes


def test_metrics_count_passes_their_failures_and_studies_by_outcome() -> None:
    changes = [
        {"ChangeType": "StableSeries", "ResourceType": "Series", "ID": f"series-{index}", "Seq": index + 1}
        for index in range(2)
    ]
    answers = {
        # The first pass fails (an HTML page, twice), the second reads two studies, the third nothing new.
        "GET /changes": [
            HTML_PAGE,
            HTML_PAGE,
            json_answer({"Changes": changes, "Done": True, "Last": 2}),
            json_answer({"Changes": [], "Done": True, "Last": 2}),
        ],
    }
    for index, study in enumerate(STUDIES):
        series = {
            "ID": f"series-{index}",
            "Instances": ["i"],
            "MainDicomTags": {"Modality": "MR"},
            "ParentStudy": study,
        }
        answers[f"GET /series/series-{index}"] = [json_answer(series)]
        answers[f"GET /studies/{study}"] = [json_answer({"ID": study})]
        answers[f"PUT /studies/{study}/metadata/{SYNC_METADATA}"] = [json_answer({})]
    answers[f"GET /studies/{STUDIES[0]}/series"] = [HTML_PAGE]  # fails, retried later
    answers[f"GET /studies/{STUDIES[1]}/series"] = [json_answer([])]  # no MR series: not analysed
    scrapes = scrapes_between_two_passes(CannedSession(answers))

    failed, second = scrapes
    assert required_sample_value(failed, "brain_tumor_pacs_sync_passes_total") == 1
    assert required_sample_value(failed, "brain_tumor_pacs_sync_failed_passes_total") == 1
    assert required_sample_value(failed, "brain_tumor_pacs_sync_last_success_timestamp_seconds") == 0
    assert required_sample_value(failed, "brain_tumor_pacs_sync_last_change") == 0

    assert required_sample_value(second, "brain_tumor_pacs_sync_passes_total") == 2
    assert required_sample_value(second, "brain_tumor_pacs_sync_failed_passes_total") == 1
    assert required_sample_value(second, "brain_tumor_pacs_sync_studies_total", outcome="failed") == 1
    # Why it failed, by code (Orthanc answered an HTML page: the analysis raised).
    assert required_sample_value(second, "brain_tumor_pacs_sync_studies_failed_total", error="internal") == 1
    assert required_sample_value(second, "brain_tumor_pacs_sync_studies_total", outcome="not_analysed") == 1
    assert required_sample_value(second, "brain_tumor_pacs_sync_studies_total", outcome="positive") == 0
    assert required_sample_value(second, "brain_tumor_pacs_sync_studies_retry_waiting") == 1
    assert required_sample_value(second, "brain_tumor_pacs_sync_studies_receiving") == 0
    assert required_sample_value(second, "brain_tumor_pacs_sync_last_change") == 2
    assert required_sample_value(second, "brain_tumor_pacs_sync_last_success_timestamp_seconds") == 1000
    assert "process_start_time_seconds" in second
    assert required_sample_value(second, "brain_tumor_build_info", version=service_version()) == 1  # which release runs
    assert "_created" not in second
    for study in STUDIES:
        assert study not in second
    assert "series-" not in second


def test_metrics_show_how_many_changes_pacs_sync_is_behind() -> None:
    """A backlog read page by page: the lag is Orthanc's latest change (asked for when a page is not the last) less
    the last change handled; a pass cut off by Orthanc leaves it there, the pass that reads the rest brings it to 0."""

    def page(first: int, last: int, done: bool) -> tuple[int, str, bytes]:
        changes = [
            {"ChangeType": "NewPatient", "ResourceType": "Patient", "Seq": seq} for seq in range(first, last + 1)
        ]
        return json_answer({"Changes": changes, "Done": done, "Last": last})

    answers = {
        # First pass: a page of the backlog, then Orthanc fails (twice: retried once). Second: the rest.
        "GET /changes": [page(1, 100, False), HTML_PAGE, HTML_PAGE, page(101, 250, True)],
        "GET /changes?last": [json_answer({"Changes": [], "Done": True, "Last": 250})],
    }
    session = CannedSession(answers)
    scrapes = scrapes_between_two_passes(session)

    cut_off, caught_up = scrapes
    assert required_sample_value(cut_off, "brain_tumor_pacs_sync_failed_passes_total") == 1
    assert required_sample_value(cut_off, "brain_tumor_pacs_sync_last_change") == 100
    assert required_sample_value(cut_off, "brain_tumor_pacs_sync_changes_behind") == 150
    assert required_sample_value(caught_up, "brain_tumor_pacs_sync_last_change") == 250
    assert required_sample_value(caught_up, "brain_tumor_pacs_sync_changes_behind") == 0
    assert session.calls.count("GET /changes?last") == 1  # the second pass's page is the last: no need to ask
