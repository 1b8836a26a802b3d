"""The pacs-sync loop on a stand-in Orthanc (canned answers): what a bad answer or an unwritable state file does."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from app.pacs.orthanc_client import SYNC_METADATA, OrthancClient
from app.pacs.orthanc_errors import OrthancError
from app.pacs.pacs_study import StudySync
from app.pacs.pacs_sync import SyncReport, run_pacs_sync, sync_once
from app.pacs.pacs_sync_config import PacsSyncConfig
from app.pacs.pacs_sync_records import orthanc_series_fingerprint
from app.pacs.pacs_sync_state import SyncState
from app.study_analysis import ModelStudyProcessor
from tests.pacs.pacs_sync_support import (
    HTML_PAGE,
    HTML_SECRET,
    CannedSession,
    NegativePredictor,
    json_answer,
    undeclared_metadata,
)

CONFIG = PacsSyncConfig("http://orthanc.invalid", poll_seconds=7.0, retries=1, backoff_seconds=0.0, retry_seconds=60)
EMPTY_PAGE = {"Changes": [], "Done": True, "Last": 9}


class StopSync(Exception):
    """Raised by the test's sleep to end a sync that runs until interrupted."""


def logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [f"{record.getMessage()} {json.dumps(getattr(record, 'fields', {}))}" for record in caplog.records]


def stable_series(series_id: str, seq: int) -> dict[str, object]:
    return {"ChangeType": "StableSeries", "ResourceType": "Series", "ID": series_id, "Seq": seq}


def test_run_pacs_sync_keeps_running_when_orthanc_answers_an_html_page(caplog: pytest.LogCaptureFixture) -> None:
    session = CannedSession({"GET /changes": [HTML_PAGE, HTML_PAGE, json_answer(EMPTY_PAGE)]})
    polls: list[float] = []

    def sleep(seconds: float) -> None:
        if seconds == CONFIG.poll_seconds:
            polls.append(seconds)
            if len(polls) == 2:
                raise StopSync

    with pytest.raises(StopSync):
        client = OrthancClient(CONFIG, session=session, sleep=sleep)
        run_pacs_sync(CONFIG, NegativePredictor(), client=client, sleep=sleep)  # type: ignore[arg-type]

    assert session.calls == ["GET /changes"] * 3  # a first pass (two tries) that failed, then one that worked
    lines = logged(caplog)
    assert len([line for line in lines if line.startswith("pacs-sync pass failed")]) == 1
    assert any("body that is not JSON (Content-Type text/html)" in line for line in lines)
    assert not any(HTML_SECRET in line for line in lines)


def test_sync_once_goes_on_when_one_study_answers_nonsense(caplog: pytest.LogCaptureFixture) -> None:
    page = {"Changes": [stable_series("s1", 1), stable_series("s2", 2)], "Done": True, "Last": 2}
    answers = {"GET /changes": [json_answer(page)]}
    for index in (1, 2):
        series = {
            "ID": f"s{index}",
            "Instances": ["i"],
            "MainDicomTags": {"Modality": "MR"},
            "ParentStudy": f"st{index}",
        }
        answers[f"GET /series/s{index}"] = [json_answer(series)]
        answers[f"GET /studies/st{index}"] = [json_answer({"ID": f"st{index}"})]
        answers[f"PUT /studies/st{index}/metadata/{SYNC_METADATA}"] = [json_answer({})]
    answers["GET /studies/st1/series"] = [HTML_PAGE]  # the first study's series: a proxy's page, every time
    answers["GET /studies/st2/series"] = [json_answer([])]  # the second: no MR series, so not analysed
    client = OrthancClient(CONFIG, session=CannedSession(answers), sleep=lambda _: None)
    state = SyncState()

    report = sync_once(StudySync(client, ModelStudyProcessor(NegativePredictor()), clock=lambda: 1000.0), state)  # type: ignore[arg-type]

    assert report == SyncReport(not_analysed=1, failed=1)
    assert (state.last_change, state.retries) == (2, {"st1": 1060.0})  # the first study is retried, not lost
    assert not any(HTML_SECRET in line for line in logged(caplog))


def test_sync_once_logs_a_state_it_cannot_save_and_saves_it_at_the_next_pass(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the state's folder should be")
    state = SyncState(blocker / "state.json")
    client = OrthancClient(CONFIG, session=CannedSession({"GET /changes": [json_answer(EMPTY_PAGE)]}))
    studies = StudySync(client, analyser=None)  # type: ignore[arg-type]

    assert sync_once(studies, state) == SyncReport()

    assert state.last_change == 9  # kept in memory
    not_saved = [line for line in logged(caplog) if line.startswith("pacs-sync state not saved")]
    assert len(not_saved) == 1  # once per pass, though the page's save failed too
    assert "blocker/state.json cannot be written (" in not_saved[0]

    blocker.unlink()
    assert sync_once(studies, state) == SyncReport()
    assert SyncState.load(blocker / "state.json").last_change == 9


def test_a_study_whose_record_orthanc_refuses_is_logged_with_what_to_configure(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An Orthanc without the user-defined metadata answers the record's PUT with an error: the log said only
    "OrthancError" (a README walkthrough), and now says what to declare."""
    page = {"Changes": [stable_series("s1", 1)], "Done": True, "Last": 1}
    series = {"ID": "s1", "Instances": ["i"], "MainDicomTags": {"Modality": "MR"}, "ParentStudy": "st1"}
    answers = {
        "GET /changes": [json_answer(page)],
        "GET /series/s1": [json_answer(series)],
        "GET /studies/st1": [json_answer({"ID": "st1"})],
        "GET /studies/st1/series": [json_answer([])],  # nothing to analyse: only the record is written
        f"PUT /studies/st1/metadata/{SYNC_METADATA}": [undeclared_metadata("st1")],
    }
    client = OrthancClient(CONFIG, session=CannedSession(answers), sleep=lambda _: None)

    report = sync_once(StudySync(client, ModelStudyProcessor(NegativePredictor()), clock=lambda: 1000.0), SyncState())  # type: ignore[arg-type]

    assert report == SyncReport(failed=1)
    (line,) = [line for line in logged(caplog) if line.startswith("study not processed")]
    assert f"failed with HTTP 404; Orthanc must declare the user-defined metadata '{SYNC_METADATA}'" in line


def test_an_unreachable_orthanc_is_named_without_the_credentials_of_its_url() -> None:
    config = PacsSyncConfig("http://sync:s3cret@127.0.0.1:9/", retries=0, backoff_seconds=0.0, timeout_seconds=2.0)

    with pytest.raises(OrthancError, match=r"GET /changes at http://127\.0\.0\.1:9 failed after 1 attempts") as raised:
        OrthancClient(config, sleep=lambda _: None).changes(0)

    assert "s3cret" not in str(raised.value) and raised.value.status is None


def studies_on_a_clock(session: CannedSession, now: list[float], config: PacsSyncConfig = CONFIG) -> StudySync:
    """A `StudySync` on the canned Orthanc whose clock reads `now[0]`, which the test moves."""
    return StudySync(
        OrthancClient(config, session=session),
        ModelStudyProcessor(NegativePredictor()),  # type: ignore[arg-type]
        clock=lambda: now[0],
    )


def test_a_series_stable_in_a_study_still_receiving_waits_for_the_study() -> None:
    """Interop review 30: a study sent whole was analysed when its FLAIR series became stable, while its T1 series
    were still arriving: an interim FLAIR-only SEG and SR, replaced minutes later. Now the study is looked at again
    at each pass until Orthanc calls it stable, and analysed once."""
    flair = {"ID": "s1", "Instances": ["i"], "MainDicomTags": {"Modality": "MR"}, "ParentStudy": "st1"}
    page = {"Changes": [stable_series("s1", 1)], "Done": True, "Last": 1}
    receiving, stable = json_answer({"ID": "st1", "IsStable": False}), json_answer({"ID": "st1", "IsStable": True})
    answers = {
        "GET /changes": [json_answer(page), json_answer({"Changes": [], "Done": True, "Last": 1})],
        "GET /series/s1": [json_answer(flair)],
        "GET /studies/st1": [receiving, receiving, stable],
        # an MR series without instances: nothing to analyse, only the record is written
        "GET /studies/st1/series": [json_answer([flair | {"Instances": []}])],
        f"PUT /studies/st1/metadata/{SYNC_METADATA}": [json_answer({})],
    }
    session = CannedSession(answers)
    now = [1000.0]
    studies = studies_on_a_clock(session, now)
    state = SyncState()
    record_writes = f"PUT /studies/st1/metadata/{SYNC_METADATA}"

    assert sync_once(studies, state) == SyncReport(waiting_for_stable=1)  # still receiving: not analysed
    assert (state.last_change, state.receiving, state.retries) == (1, {"st1": 1000.0 + CONFIG.poll_seconds}, {})
    now[0] += CONFIG.poll_seconds
    assert sync_once(studies, state) == SyncReport(waiting_for_stable=1)  # still receiving at the next pass
    now[0] += CONFIG.poll_seconds

    assert sync_once(studies, state) == SyncReport(not_analysed=1)
    assert record_writes not in session.calls[:-1] and session.calls.count(record_writes) == 1
    assert state.retries == state.receiving == {}


def test_a_study_orthanc_calls_stable_right_after_its_restart_waits_for_its_last_instance_to_age() -> None:
    """Operations review 32: Orthanc keeps which studies are still receiving in memory only, and calls such a study
    stable as soon as it restarts: pacs-sync analysed half a study. With PACS_STABLE_SECONDS, the study's last
    instance must also be that old by Orthanc's clock (``LastUpdate`` against ``/tools/now``)."""
    flair = {"ID": "s1", "Instances": ["i"], "MainDicomTags": {"Modality": "MR"}, "ParentStudy": "st1"}
    page = {"Changes": [stable_series("s1", 1)], "Done": True, "Last": 1}
    study = json_answer({"ID": "st1", "IsStable": True, "LastUpdate": "20261204T120000"})  # as after the restart
    answers = {
        "GET /changes": [json_answer(page), json_answer({"Changes": [], "Done": True, "Last": 1})],
        "GET /series/s1": [json_answer(flair)],
        "GET /studies/st1": [study, study],
        "GET /tools/now": [(200, "text/plain", b"20261204T120010"), (200, "text/plain", b"20261204T120100")],
        # an MR series without instances: nothing to analyse, only the record is written
        "GET /studies/st1/series": [json_answer([flair | {"Instances": []}])],
        f"PUT /studies/st1/metadata/{SYNC_METADATA}": [json_answer({})],
    }
    session = CannedSession(answers)
    now = [1000.0]
    studies = studies_on_a_clock(session, now, replace(CONFIG, stable_seconds=60.0))
    state = SyncState()

    assert sync_once(studies, state) == SyncReport(waiting_for_stable=1)  # its last instance came 10 s ago
    assert state.receiving == {"st1": 1000.0 + CONFIG.poll_seconds}
    now[0] += CONFIG.poll_seconds
    assert sync_once(studies, state) == SyncReport(not_analysed=1)  # 60 s old by Orthanc's clock
    assert state.receiving == {}


def test_a_pass_reads_each_study_it_looks_at_once() -> None:
    """Operations review: the stability check read ``/studies/{id}``, and then the study's processing read it again."""
    answers = {
        "GET /changes": [
            json_answer({"Changes": [stable_series("s1", 1), stable_series("s2", 2)], "Done": True, "Last": 2})
        ],
    }
    for index in (1, 2):
        # an MR series without instances: nothing to analyse, only the record is written
        series = {"ID": f"s{index}", "Instances": [], "MainDicomTags": {"Modality": "MR"}, "ParentStudy": f"st{index}"}
        answers[f"GET /series/s{index}"] = [json_answer(series)]
        answers[f"GET /studies/st{index}"] = [json_answer({"ID": f"st{index}", "IsStable": True})]
        answers[f"GET /studies/st{index}/series"] = [json_answer([series])]
        answers[f"PUT /studies/st{index}/metadata/{SYNC_METADATA}"] = [json_answer({})]
    session = CannedSession(answers)

    assert sync_once(studies_on_a_clock(session, [1000.0]), SyncState()) == SyncReport(not_analysed=2)
    assert session.calls.count("GET /studies/st1") == session.calls.count("GET /studies/st2") == 1


def test_a_failed_study_that_receives_something_else_keeps_its_retry_time(tmp_path: Path) -> None:
    """Interop review 31: a failed study brought by a change while Orthanc still called it receiving (another
    modality's instance, a report) was put on the retry schedule for the next pass, and then analysed again as a
    retry, hours before its backoff. Now it is looked at again as the change it came with: its MR instances are
    those of the failure, so it waits for its retry time; the state file keeps the wait over a restart."""
    flair = {"ID": "s1", "Instances": ["i"], "MainDicomTags": {"Modality": "MR"}, "ParentStudy": "st1"}
    failed = {"status": "failed", "attempts": 1, "study_fingerprint": orthanc_series_fingerprint([flair])}
    page = {"Changes": [stable_series("s1", 1)], "Done": True, "Last": 1}
    receiving, stable = json_answer({"ID": "st1", "IsStable": False}), json_answer({"ID": "st1", "IsStable": True})
    answers = {
        "GET /changes": [json_answer(page), json_answer({"Changes": [], "Done": True, "Last": 1})],
        "GET /series/s1": [json_answer(flair)],
        "GET /studies/st1": [receiving, stable],
        "GET /studies/st1/series": [json_answer([flair])],
        f"GET /studies/st1/metadata/{SYNC_METADATA}": [json_answer(failed)],
    }
    session = CannedSession(answers)
    now = [1000.0]
    studies = studies_on_a_clock(session, now)
    backoff_until = 5000.0
    state = SyncState(tmp_path / "state.json", retries={"st1": backoff_until})

    assert sync_once(studies, state) == SyncReport(waiting_for_stable=1)  # still receiving: not looked at
    state = SyncState.load(tmp_path / "state.json")  # a restart in between
    assert (state.receiving, state.retries) == ({"st1": 1000.0 + CONFIG.poll_seconds}, {"st1": backoff_until})
    now[0] += CONFIG.poll_seconds

    assert sync_once(studies, state) == SyncReport(already_done=1)  # the failure's instances: not analysed again
    assert (state.receiving, state.retries) == ({}, {"st1": backoff_until})
    assert not any(call.startswith(("GET /instances", "POST", "PUT")) for call in session.calls)


def test_a_study_orthanc_cannot_say_is_stable_is_processed_and_retried_as_before() -> None:
    """The stability check must not fail the pass (and so hold up every later change) when Orthanc answers that one
    study with an error: the study is processed, which logs the error and schedules a retry."""
    page = {"Changes": [stable_series("s1", 1)], "Done": True, "Last": 1}
    flair = {"ID": "s1", "Instances": ["i"], "MainDicomTags": {"Modality": "MR"}, "ParentStudy": "st1"}
    answers = {
        "GET /changes": [json_answer(page)],
        "GET /series/s1": [json_answer(flair)],
        "GET /studies/st1": [HTML_PAGE],
    }
    studies = StudySync(
        OrthancClient(CONFIG, session=CannedSession(answers), sleep=lambda _: None),
        ModelStudyProcessor(NegativePredictor()),  # type: ignore[arg-type]
        clock=lambda: 1000.0,
    )
    state = SyncState()

    assert sync_once(studies, state) == SyncReport(failed=1)
    assert (state.last_change, state.retries) == (1, {"st1": 1060.0})
