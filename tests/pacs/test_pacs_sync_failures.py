"""pacs-sync against a real Orthanc: failures, crashes, restarts, the network, the configuration."""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path
from typing import Any

import pytest
import requests
from pydicom.uid import generate_uid

from app import cli
from app.dicom.dicom_sr import REVISED_SUFFIX
from app.dicom.dicom_sr_reader import predecessors
from app.inference import Predictor
from app.pacs import pacs_sync
from app.pacs.orthanc_answers import orthanc_time
from app.pacs.orthanc_client import SYNC_METADATA
from app.pacs.pacs_sync import OrthancClient, OrthancError, PacsSyncConfig, SyncReport, run_pacs_sync
from app.pacs.pacs_sync_metrics import PacsSyncMetrics
from app.pacs.pacs_sync_state import SyncState
from app.series.sequence_rules import SelectionRules
from app.settings import Settings
from tests.dicom.builders import Study, mr_series, tumor_channels
from tests.pacs.orthanc_server import Orthanc, running_orthanc
from tests.pacs.pacs_sync_support import (
    FailingClient,
    cli_settings,
    config_for,
)


def test_pacs_sync_goes_on_after_a_failing_study_and_retries_it(
    orthanc: Orthanc, predictor: Predictor, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    broken = mr_series(tumor_channels())
    healthy = mr_series(tumor_channels())
    config = config_for(orthanc, tmp_path / "state.json")
    broken_id = orthanc.upload(broken)
    healthy_id = orthanc.upload(healthy)
    broken_study, healthy_study = orthanc.study_of(broken_id), orthanc.study_of(healthy_id)
    broken_instances = frozenset(orthanc.get(f"/series/{broken_id}")["Instances"])

    first = run_pacs_sync(config, predictor, once=True, client=FailingClient(config, broken_instances=broken_instances))
    failed = orthanc.record(broken_study)
    second = run_pacs_sync(config, predictor, once=True)

    assert first == SyncReport(positive=1, failed=1)
    assert (failed["status"], failed["attempts"]) == ("failed", 1)
    assert failed["error"].startswith("OrthancError: GET /instances/")
    logged = [f"{record.getMessage()} {json.dumps(getattr(record, 'fields', {}))}" for record in caplog.records]
    assert any(broken_study in line for line in logged)  # logged by Orthanc ID, never by DICOM tags
    for tag_value in (broken[0].PatientID, str(broken[0].PatientName), broken[0].SeriesInstanceUID):
        assert not any(tag_value in line for line in logged)
    assert orthanc.record(healthy_study)["status"] == "positive"
    assert second == SyncReport(positive=1)  # the retry; the healthy study is not looked at again
    assert orthanc.record(broken_study)["status"] == "positive"


def test_pacs_sync_processes_a_study_whose_record_is_malformed_and_goes_on(
    orthanc: Orthanc, predictor: Predictor, tmp_path: Path
) -> None:
    malformed = mr_series(tumor_channels())
    healthy = mr_series(tumor_channels())
    config = config_for(orthanc, tmp_path / "state.json")
    malformed_study = orthanc.study_of(orthanc.upload(malformed))
    healthy_study = orthanc.study_of(orthanc.upload(healthy))
    record = {"attempts": "n/a", "status": "failed", "error": "written by hand"}
    orthanc.session.put(
        f"{orthanc.url}/studies/{malformed_study}/metadata/{SYNC_METADATA}", data=json.dumps(record), timeout=30
    ).raise_for_status()

    report = run_pacs_sync(config, predictor, once=True)

    assert report == SyncReport(positive=2)
    overwritten = orthanc.record(malformed_study)
    assert overwritten["status"] == "positive" and "attempts" not in overwritten
    assert orthanc.record(healthy_study)["status"] == "positive"
    assert SyncState.load(config.state_file).retries == {}


def crash_between_store_and_record(orthanc: Orthanc, predictor: Predictor, tmp_path: Path) -> tuple[Any, ...]:
    """A study uploaded and synced by a pacs-sync that stored its results and failed to write its record: the
    series, the config, the Orthanc study ID and that run's report."""
    series = mr_series(tumor_channels())
    config = config_for(orthanc, tmp_path / "state.json")
    study_id = orthanc.study_of(orthanc.upload(series))
    crashed = run_pacs_sync(config, predictor, once=True, client=FailingClient(config, fail_records=True))
    orthanc.wait_until_stable(f"/studies/{study_id}")  # the results it stored are new instances in the study
    return series, config, study_id, crashed


def test_pacs_sync_after_a_crash_between_store_and_record_keeps_one_result(
    orthanc: Orthanc, predictor: Predictor, tmp_path: Path
) -> None:
    series, config, study_id, crashed = crash_between_store_and_record(orthanc, predictor, tmp_path)

    restarted = run_pacs_sync(config, predictor, once=True)

    assert (crashed, restarted) == (SyncReport(failed=1), SyncReport(positive=1))
    (seg,) = orthanc.results(series[0].StudyInstanceUID, "SEG")
    (sr,) = orthanc.results(series[0].StudyInstanceUID, "SR")
    record = orthanc.record(study_id)
    assert (record["seg_sop_instance_uid"], record["sr_sop_instance_uid"]) == (seg.SOPInstanceUID, sr.SOPInstanceUID)
    assert record["superseded"] == []  # made again from the same instances: the same objects, stored once


def test_pacs_sync_never_withdraws_a_result_it_stored_before_when_a_store_fails(
    orthanc: Orthanc, predictor: Predictor, tmp_path: Path
) -> None:
    """A failed store withdraws the new results; a SEG made again with the UIDs of one stored before is not new."""
    series, config, study_id, crashed = crash_between_store_and_record(orthanc, predictor, tmp_path)
    (seg_before,) = orthanc.results(series[0].StudyInstanceUID, "SEG")

    sr_refused = run_pacs_sync(config, predictor, once=True, client=FailingClient(config, fail_stores_of="SR"))
    (seg_after,) = orthanc.results(series[0].StudyInstanceUID, "SEG")
    orthanc.wait_until_stable(f"/studies/{study_id}")
    retried = run_pacs_sync(config, predictor, once=True)

    assert (crashed, sr_refused, retried) == (SyncReport(failed=1), SyncReport(failed=1), SyncReport(positive=1))
    assert seg_after.SOPInstanceUID == seg_before.SOPInstanceUID
    assert orthanc.record(study_id)["seg_sop_instance_uid"] == seg_before.SOPInstanceUID
    assert len(orthanc.results(series[0].StudyInstanceUID, "SR")) == 1


class PagedClient(OrthancClient):
    """Reads the change log three changes at a time, and counts the studies it looks at."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.studies_read: list[str] = []

    def changes(self, since: int, limit: int = 3) -> dict[str, Any]:
        return super().changes(since, limit=3)

    def study(self, study_id: str) -> dict[str, Any] | None:
        self.studies_read.append(study_id)
        return super().study(study_id)


def test_pacs_sync_resumes_after_the_last_change_it_handled(
    orthanc: Orthanc, predictor: Predictor, tmp_path: Path
) -> None:
    config = config_for(orthanc, tmp_path / "state.json")
    first_study = orthanc.study_of(orthanc.upload(mr_series(tumor_channels())))
    assert run_pacs_sync(config, predictor, once=True, client=PagedClient(config)) == SyncReport(positive=1)
    saved = SyncState.load(config.state_file).last_change
    assert saved >= orthanc.last_change() - 6  # our own SEG and SR arrived after the pass read the log

    second_study = orthanc.study_of(orthanc.upload(mr_series(tumor_channels())))
    restarted = PagedClient(config)
    report = run_pacs_sync(config, predictor, once=True, client=restarted)

    assert report == SyncReport(positive=1)
    assert second_study in restarted.studies_read and first_study not in restarted.studies_read
    assert SyncState.load(config.state_file).last_change > saved


def test_pacs_sync_rejects_wrong_credentials(orthanc: Orthanc, predictor: Predictor, tmp_path: Path) -> None:
    config = config_for(orthanc, tmp_path / "state.json", password="wrong")

    with pytest.raises(OrthancError, match="GET /changes failed with HTTP 401"):
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


def test_orthanc_client_reads_the_latest_change_a_page_does_not_say(orthanc: Orthanc, tmp_path: Path) -> None:
    """A page of Orthanc's log that is not the last ends at its own last change: the lag needs ``/changes?last``."""
    orthanc.upload(mr_series(tumor_channels()))
    client = OrthancClient(config_for(orthanc, tmp_path / "state.json"))

    first = client.changes(0, limit=1)

    assert not first["Done"] and first["Last"] == 1
    assert client.last_change() == orthanc.last_change() > 1


def test_orthanc_client_reads_orthancs_clock_in_the_form_of_last_update(orthanc: Orthanc, tmp_path: Path) -> None:
    """PACS_STABLE_SECONDS compares a study's ``LastUpdate`` with Orthanc's own clock, so both must read alike."""
    orthanc.upload(mr_series(tumor_channels()))
    client = OrthancClient(config_for(orthanc, tmp_path / "state.json"))
    studies = [orthanc.get(f"/studies/{study_id}") for study_id in orthanc.get("/studies")]

    updated = max(orthanc_time(study["LastUpdate"]) for study in studies)  # the one just uploaded
    age = (client.now() - updated).total_seconds()

    assert 0 <= age < 60


def test_orthanc_client_retries_network_errors_with_backoff(orthanc: Orthanc, tmp_path: Path) -> None:
    delays: list[float] = []
    config = config_for(orthanc, tmp_path / "state.json", backoff_seconds=0.5, retries=3)
    client = OrthancClient(config, session=FlakySession(failures=2), sleep=delays.append)

    assert client.changes(orthanc.last_change())["Changes"] == []
    assert delays == [0.5, 1.0]

    client = OrthancClient(config, session=FlakySession(failures=10), sleep=delays.append)
    with pytest.raises(OrthancError, match="failed after 4 attempts: ConnectionError"):
        client.changes(0)


def test_config_from_args_prefers_arguments_over_settings(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    cli.add_pacs_sync_arguments(parser)
    settings = Settings(
        model_dir=tmp_path,
        orthanc_url="http://pacs:8042",
        orthanc_username="env-user",
        orthanc_password="env-secret",
        pacs_state_file=tmp_path / "state.json",
        sequence_flair_patterns="*DARK FLUID*",
        max_dicom_pixels=4096 * 4096,
        pacs_max_instance_bytes=5_000_000,
        decode_memory_bytes=90_000_000,
        inference_batch_size=7,
    )

    from_settings = pacs_sync.config_from_args(parser.parse_args([]), settings)
    overridden = pacs_sync.config_from_args(
        parser.parse_args(["--orthanc", "https://other", "--user", "me", "--state-file", "elsewhere.json"]), settings
    )

    assert from_settings == PacsSyncConfig(
        orthanc_url="http://pacs:8042",
        username="env-user",
        password="env-secret",
        state_file=tmp_path / "state.json",
        poll_seconds=30.0,
        max_attempts=5,
        retry_seconds=60.0,
        max_dicom_pixels=4096 * 4096,
        max_instance_bytes=5_000_000,
        max_study_bytes=90_000_000,
        batch_size=7,
        selection_rules=SelectionRules(flair_patterns=("*DARK FLUID*",)),
    )
    assert (overridden.orthanc_url, overridden.username, overridden.password) == ("https://other", "me", "env-secret")
    assert overridden.state_file == Path("elsewhere.json")
    with pytest.raises(ValueError, match="orthanc_url must start with http:// or https://; got 'pacs:8042'"):
        pacs_sync.config_from_args(parser.parse_args(["--orthanc", "pacs:8042"]), settings)


def test_the_cli_names_refused_credentials_apart_from_an_outage(
    orthanc: Orthanc, tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = argparse.ArgumentParser()
    cli.add_pacs_sync_arguments(parser)
    args = parser.parse_args(
        ["--orthanc", orthanc.url, "--password", "wrong", "--state-file", str(tmp_path / "s.json"), "--once"]
    )

    assert pacs_sync.main(args, settings=cli_settings(tiny_model_dir)) == 1

    error = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["error"]
    assert error["code"] == "orthanc_credentials_refused" and "HTTP 401" in error["message"]


class DeletingClient(OrthancClient):
    """Deletes a study (or one series of it) from Orthanc just before pacs-sync stores its first result: what an
    operator's delete during the analysis does."""

    def __init__(self, *args: Any, delete_path: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.delete_path = delete_path
        self.deleted = False

    def store(self, dataset: Any) -> None:
        if not self.deleted:
            self.deleted = True
            self._request("DELETE", self.delete_path)
        super().store(dataset)


def test_a_study_deleted_during_its_analysis_stays_deleted(
    orthanc: Orthanc, predictor: Predictor, tmp_path: Path
) -> None:
    """Interop review 30, finding 2: STOW-RS made the deleted study again (same Orthanc ID), holding only the SEG, the
    SR and the patient's name, recorded "positive"."""
    series = mr_series(tumor_channels())
    config = config_for(orthanc, tmp_path / "state.json")
    study_id = orthanc.study_of(orthanc.upload(series))

    report = run_pacs_sync(
        config, predictor, once=True, client=DeletingClient(config, delete_path=f"/studies/{study_id}")
    )

    assert report == SyncReport()
    assert orthanc.session.get(f"{orthanc.url}/studies/{study_id}", timeout=30).status_code == 404
    found = orthanc.session.post(
        f"{orthanc.url}/tools/find",
        json={"Level": "Study", "Query": {"StudyInstanceUID": str(series[0].StudyInstanceUID)}},
        timeout=30,
    )
    assert found.json() == []  # not made again as a study holding only the results


def test_results_of_a_series_deleted_during_the_analysis_are_withdrawn(
    orthanc: Orthanc, predictor: Predictor, tmp_path: Path
) -> None:
    study = Study()
    flair = mr_series(tumor_channels(), study=study, series_number=2, series_description="AX FLAIR")
    t1 = mr_series(tumor_channels(), study=study, series_number=3, series_description="AX T1")
    config = config_for(orthanc, tmp_path / "state.json")
    flair_id = orthanc.upload(flair)
    orthanc.upload(t1)
    study_id = orthanc.study_of(flair_id)

    report = run_pacs_sync(
        config, predictor, once=True, client=DeletingClient(config, delete_path=f"/series/{flair_id}")
    )

    assert report == SyncReport(failed=1)
    assert orthanc.record(study_id)["error"].startswith("SourcesGoneError")
    modalities = {
        orthanc.get(f"/series/{series}")["MainDicomTags"]["Modality"]
        for series in orthanc.get(f"/studies/{study_id}")["Series"]
    }
    assert modalities == {"MR"}  # the T1 series alone: no SEG or SR of the deleted FLAIR


REFUSE_THE_SECOND_PATIENTS_SR = """
function ReceivedInstanceFilter(dicom, origin, info)
  return not (dicom.Modality == "SR" and dicom.PatientID == "CORRECTED-ID")
end
"""


def test_a_store_refused_for_one_patient_leaves_anothers_results_of_the_same_images(
    predictor: Predictor, tmp_path: Path
) -> None:
    """Attack review 37: the same study (same UIDs, same pixels) under a second Patient ID, as a PACS keeps it after a
    Patient ID correction, got the first patient's SEG and SR UIDs; its SR refused by an Orthanc filter (STOW-RS
    answers success all the same), pacs-sync took the SR for a result that landed elsewhere and deleted the result
    series by UID everywhere, the first patient's among them, for good. Now the second patient's results have UIDs
    of their own, and only what this pass stored is withdrawn: its SEG too, which would stand without its SR."""
    script = tmp_path / "refuse.lua"
    script.write_text(REFUSE_THE_SECOND_PATIENTS_SR)
    (tmp_path / "orthanc").mkdir()
    with running_orthanc(tmp_path / "orthanc", lua_scripts=[script]) as orthanc:
        config = config_for(orthanc, tmp_path / "state.json")
        first = mr_series(tumor_channels())
        first_study = orthanc.study_of(orthanc.upload(first))
        assert run_pacs_sync(config, predictor, once=True) == SyncReport(positive=1)
        first_results = orthanc.result_series(first_study)
        corrected = [copy.deepcopy(dataset) for dataset in first]
        for dataset in corrected:
            dataset.PatientID = "CORRECTED-ID"
        second_study = orthanc.study_of(orthanc.upload(corrected))

        report = run_pacs_sync(config, predictor, once=True)

        assert report == SyncReport(failed=1)
        assert [len(uids) for uids in first_results.values()] == [1, 1]
        assert orthanc.result_series(first_study) == first_results  # the first patient's SEG and SR survive
        assert orthanc.result_series(second_study) == {"SEG": [], "SR": []}  # its SEG stored, then withdrawn
        assert orthanc.record(second_study)["error"].startswith("MisplacedResultsError")


def test_a_study_stored_with_an_empty_patient_id_on_some_files_is_refused_in_both_parts(
    orthanc: Orthanc, predictor: Predictor, tmp_path: Path
) -> None:
    """Interop review 39 F1: Orthanc keys a study by Patient ID and Study Instance UID, so a series stored with an
    empty Patient ID on its later files is two Orthanc studies; each was analysed alone ("absent" for the patient's
    tumor-free part, the tumor filed under an empty Patient ID). Both are refused, as the API refuses such files."""
    series = mr_series([*tumor_channels(), *tumor_channels()])
    for dataset in series[3:]:
        dataset.PatientID = ""
    config = config_for(orthanc, tmp_path / "state.json")
    studies = [orthanc.study_of(orthanc.upload(series[:3])), orthanc.study_of(orthanc.upload(series[3:]))]
    assert studies[0] != studies[1]

    report = run_pacs_sync(config, predictor, once=True)

    assert report == SyncReport(failed=2)
    for study in studies:
        assert orthanc.record(study)["error"].startswith("mixed_input: files of this study (by Study Instance UID)")
        assert orthanc.result_series(study) == {"SEG": [], "SR": []}


def test_a_series_stored_under_two_study_uids_is_refused_in_both_parts(
    orthanc: Orthanc, predictor: Predictor, tmp_path: Path
) -> None:
    """Interop review 42 F1: one series whose later files carried a second Study Instance UID is two Orthanc
    studies; each was analysed alone, and the tumor-free part got a COMPLETE "absent" SR."""
    series = mr_series([*tumor_channels(), *tumor_channels()])
    second_study = generate_uid()
    for dataset in series[3:]:
        dataset.StudyInstanceUID = second_study
    config = config_for(orthanc, tmp_path / "state.json")
    studies = [orthanc.study_of(orthanc.upload(series[:3])), orthanc.study_of(orthanc.upload(series[3:]))]

    report = run_pacs_sync(config, predictor, once=True)

    assert report == SyncReport(failed=2)
    for study in studies:
        assert orthanc.record(study)["error"].startswith(
            "mixed_input: a series of this study (by Series Instance UID) also came under other Study Instance UIDs"
        )
        assert orthanc.result_series(study) == {"SEG": [], "SR": []}


def test_a_series_part_under_another_study_uid_withdraws_the_result_stored_for_the_first_part(
    orthanc: Orthanc, predictor: Predictor, tmp_path: Path
) -> None:
    """Attack review 43 F5: the second part of a split series came after the first part was analysed; it was
    refused, but the first part's SEG and SR stood in Orthanc as the study's result. Now both parts are refused and
    the first part's results deleted."""
    series = mr_series([*tumor_channels(), *tumor_channels()])
    second_study = generate_uid()
    for dataset in series[3:]:
        dataset.StudyInstanceUID = second_study
    config = config_for(orthanc, tmp_path / "state.json")
    first = orthanc.study_of(orthanc.upload(series[:3]))
    assert run_pacs_sync(config, predictor, once=True) == SyncReport(positive=1)
    assert len(orthanc.result_series(first)["SEG"]) == 1

    second = orthanc.study_of(orthanc.upload(series[3:]))
    report = run_pacs_sync(config, predictor, once=True)

    assert (report.positive, report.negative) == (0, 0) and report.failed >= 1  # retries may count it again
    for study in (first, second):
        assert orthanc.record(study)["error"].startswith("mixed_input: a series of this study")
        assert orthanc.result_series(study) == {"SEG": [], "SR": []}
    again = run_pacs_sync(config, predictor, once=True)  # refused parts do not reopen each other into answers
    assert (again.positive, again.negative) == (0, 0)


def test_a_study_that_can_no_longer_be_analysed_loses_its_earlier_results(
    orthanc: Orthanc, predictor: Predictor, tmp_path: Path
) -> None:
    """Interop review 44 F2: a slice re-sent under a new SOP Instance UID at another's position makes the study
    unreadable (two slices at one position); it was refused, and its earlier SEG and SR stood in Orthanc as the
    study's current result, the failure only in pacs-sync's metadata. They are deleted now."""
    series = mr_series(tumor_channels())
    again = copy.deepcopy(series[0])
    again.SOPInstanceUID, again.InstanceNumber = generate_uid(), len(series) + 1
    again.PixelData = series[1].PixelData  # another image at that place: an identical one would be read once
    config = config_for(orthanc, tmp_path / "state.json")
    study = orthanc.study_of(orthanc.upload(series))
    assert run_pacs_sync(config, predictor, once=True) == SyncReport(positive=1)
    assert len(orthanc.result_series(study)["SR"]) == 1

    orthanc.upload([again])
    report = run_pacs_sync(config, predictor, once=True)

    assert (report.positive, report.negative) == (0, 0) and report.failed >= 1
    assert orthanc.record(study)["error"].startswith("invalid_dicom_image")
    assert orthanc.result_series(study) == {"SEG": [], "SR": []}


def test_a_study_answered_again_after_a_refusal_names_the_report_the_refusal_withdrew(
    orthanc: Orthanc, predictor: Predictor, tmp_path: Path
) -> None:
    """Interop review 46 F4: a report withdrawn when a stray slice made the study unreadable was not named by the
    report made once the stray slice was deleted: an archive it was forwarded to held both, with nothing saying which
    is current, and the new one did not say it was a revision (or, with the same findings, came back under the
    withdrawn one's UIDs)."""
    series = mr_series(tumor_channels())
    study_uid = series[0].StudyInstanceUID
    config = config_for(orthanc, tmp_path / "state.json")
    study = orthanc.study_of(orthanc.upload(series))
    assert run_pacs_sync(config, predictor, once=True) == SyncReport(positive=1)
    (first,) = orthanc.results(study_uid, "SR")
    stray = copy.deepcopy(series[0])
    stray.SOPInstanceUID, stray.InstanceNumber = generate_uid(), len(series) + 1
    stray.PixelData = series[1].PixelData  # another image at that place: an identical one would be read once
    series_id = orthanc.upload([stray])
    assert run_pacs_sync(config, predictor, once=True).failed == 1
    assert orthanc.result_series(study) == {"SEG": [], "SR": []}

    stray_instance = next(
        instance["ID"]
        for instance in orthanc.get(f"/series/{series_id}/instances")
        if instance["MainDicomTags"]["SOPInstanceUID"] == stray.SOPInstanceUID
    )
    orthanc.session.delete(f"{orthanc.url}/instances/{stray_instance}", timeout=30).raise_for_status()
    report = run_pacs_sync(config, predictor, once=True)

    assert report == SyncReport(positive=1)
    (sr,) = orthanc.results(study_uid, "SR")
    assert predecessors(sr) == [first.SOPInstanceUID]
    assert sr.SOPInstanceUID != first.SOPInstanceUID  # the same findings, not under the UIDs withdrawn
    assert sr.SeriesDescription.endswith(REVISED_SUFFIX)


def test_a_series_split_over_two_patient_ids_and_study_uids_is_refused_in_both_parts(
    orthanc: Orthanc, predictor: Predictor, tmp_path: Path
) -> None:
    """Attack review 44 F1: a patient merged in the RIS while the series was stored (a temporary Patient ID and study
    on the first part) gave the tumor-free part a COMPLETE "absent" SR, since only studies of one Patient ID counted
    (attack review 43 F4's fix, against one sender failing another's study, which is now the price)."""
    series = mr_series([*tumor_channels(), *tumor_channels()])
    for dataset in series[:3]:
        dataset.PatientID, dataset.StudyInstanceUID = "TMP-0001", "1.2.826.0.1.3680043.8.498.44"
    config = config_for(orthanc, tmp_path / "state.json")
    studies = [orthanc.study_of(orthanc.upload(series[:3])), orthanc.study_of(orthanc.upload(series[3:]))]

    report = run_pacs_sync(config, predictor, once=True)

    assert (report.positive, report.negative) == (0, 0)
    for study in studies:
        assert orthanc.record(study)["error"].startswith("mixed_input: a series of this study")
        assert orthanc.result_series(study) == {"SEG": [], "SR": []}


def test_a_study_whose_patient_id_differs_only_by_spaces_is_not_answered_in_halves(
    orthanc: Orthanc, predictor: Predictor, tmp_path: Path
) -> None:
    """Attack review 40: leading spaces of a Patient ID are not significant (PS3.5 6.2), and the API reads such files
    as one patient; a store that keys them apart must not give two half-volume answers for one study."""
    series = mr_series([*tumor_channels(), *tumor_channels()])
    for dataset in series[3:]:
        dataset.PatientID = f" {dataset.PatientID}"
    config = config_for(orthanc, tmp_path / "state.json")
    studies = {orthanc.study_of(orthanc.upload(series[:3])), orthanc.study_of(orthanc.upload(series[3:]))}
    assert len(studies) == 2  # Orthanc keys them apart
    metrics = PacsSyncMetrics()

    report = run_pacs_sync(config, predictor, once=True, metrics=metrics)

    assert report == SyncReport(failed=2)
    failed = metrics.registry.get_sample_value("brain_tumor_pacs_sync_studies_failed_total", {"error": "mixed_input"})
    assert failed == 2  # the refusal's code, as the node counts it (interop review 39)
    for study in studies:
        assert orthanc.record(study)["error"].startswith(
            "mixed_input: files of this study (by Study Instance UID) came with an empty Patient ID and with a "
            "Patient ID, or with Patient IDs that differ only by leading or trailing spaces (2 studies"
        )
        assert orthanc.result_series(study) == {"SEG": [], "SR": []}
