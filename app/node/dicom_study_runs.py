"""The runs in a study's record (``record.json``) that decide whether the DICOM node processes the study again.

Each time `app.node.dicom_study_worker.StudyWorker` processes a study it appends a run to the study's record: the
fingerprint of its instances (and their content), the model versions it ran with, its status, its results. These
functions read that list: whether these very instances were analysed already by the models that run now
(`already_analysed`; only "analysed" is final, `FINAL_STATUSES`), how many "error" runs they had since their last
outcome (`errors_since_last_outcome`, held to `app.node.node_config.NodeConfig.max_attempts`), and which results a new
run supersedes (`delivered_results`, `earlier_reports`, `reports`). An association that sent part of a study and ended
without a release is counted in the record (`count_abort`) and said in the notes of the study's next run
(`ABORTED_NOTE`); once every instance of the study has come again over released associations the count goes
(`sent_whole_again`), and a study whose report already said it is analysed once more (`cut_off_report_made_whole`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from app.dicom.dicom_sr import ResultReference
from app.node.dicom_spool import WAITING_STATUSES, timestamp
from app.study_analysis import AnalysisStatus

# An outcome that a re-send of the same instances does not change. "failed" and "not_analysed" runs are not final:
# they depend on the configuration (memory budget, sequence rules) an operator may have fixed before re-sending, so a
# re-send is processed once more. It cannot loop: a study is looked at only while pending, and only a C-STORE (or an
# "error" run's retry, at most `max_attempts`) marks it pending again.
FINAL_STATUSES = (AnalysisStatus.ANALYSED,)
OUTCOME_STATUSES = tuple(AnalysisStatus)
ABORTED_NOTE = (
    "{count} association(s) sending this study ended without a release (aborted or cut off): instances may be "
    "missing; a later send of them gives a new result"
)


REFUSED_NOTE = (
    "{count} instance(s) sent over the association(s) that sent this study were refused by this node (C-STORE "
    "failed): instances of this study may be missing; a later send of them gives a new result"
)


COUNTED_NOTES = {"aborted_associations": ABORTED_NOTE, "refused_instances": REFUSED_NOTE}
"""What a study's record counts between runs, and the note the next run's report says it with (the report is then
PARTIAL: instances may be missing)."""


def counted_notes(counts: dict[str, int]) -> list[str]:
    """The notes of the `COUNTED_NOTES` counts above 0."""
    return [COUNTED_NOTES[name].format(count=count) for name, count in counts.items() if count]


SENT_WHOLE_AFTER_CUT_OFF = "sent_whole_after_cut_off"
"""A study record's mark: every instance of the study came again over released associations since its last
association cut off (`sent_whole_again`); taken off by the next abort (`count_abort`) and by the next run."""


def count_abort(record: dict[str, Any]) -> None:
    """One more association ended without a release since the study's last run (`ABORTED_NOTE`)."""
    record["aborted_associations"] = int(record.get("aborted_associations", 0)) + 1
    record.pop(SENT_WHOLE_AFTER_CUT_OFF, None)


def sent_whole_again(record: dict[str, Any]) -> None:
    """Every instance the study holds came again over released associations since it was cut off: the next run's
    report does not say instances may be missing, and a report that said it is made again
    (`cut_off_report_made_whole`)."""
    record.pop("aborted_associations", None)
    record[SENT_WHOLE_AFTER_CUT_OFF] = True


def instances_forgotten(record: dict[str, Any]) -> None:
    """The study's received instances were removed (`Spool.forget_instances`): what was counted of the associations
    that sent them says nothing of the next send, and the record says when they went."""
    for name in (*COUNTED_NOTES, SENT_WHOLE_AFTER_CUT_OFF):
        record.pop(name, None)
    record.setdefault("instances_forgotten", []).append(timestamp())


def said_cut_off(run: dict[str, Any]) -> bool:
    """Whether a run's report was PARTIAL for associations cut off alone (`ABORTED_NOTE`), not for instances the
    node refused (`REFUSED_NOTE`: those never came, and a re-send of what it holds does not bring them)."""
    notes = [str(note) for note in run.get("summary", {}).get("notes", [])]
    return any(note.endswith(ABORTED_NOTE.removeprefix("{count}")) for note in notes) and not any(
        note.endswith(REFUSED_NOTE.removeprefix("{count}")) for note in notes
    )


def awaits_whole_resend(record: dict[str, Any]) -> bool:
    """Whether the study was cut off and not yet sent again whole: an abort counted for its next run, or a latest
    report that says instances may be missing. Read by the receiving after a released association, so that a whole
    re-send counts after a restart of the node too."""
    if int(record.get("aborted_associations", 0)):
        return True
    latest = latest_outcome(record["runs"])
    return latest is not None and said_cut_off(latest) and not record.get(SENT_WHOLE_AFTER_CUT_OFF)


def cut_off_report_made_whole(record: dict[str, Any]) -> bool:
    """Whether the study's current report says instances may be missing for an association cut off, and every
    instance has come again since over released associations, none cut off: the same instances are analysed once
    more, and the new report, COMPLETE, supersedes it: otherwise the re-send the note asks for would be "unchanged",
    and the PARTIAL report would stand for good."""
    latest = latest_outcome(record["runs"])
    return (
        bool(record.get(SENT_WHOLE_AFTER_CUT_OFF))
        and not any(int(record.get(name, 0)) for name in COUNTED_NOTES)
        and latest is not None
        and latest["status"] in FINAL_STATUSES
        and said_cut_off(latest)
    )


def count_refused(count: int) -> Callable[[dict[str, Any]], None]:
    """`count` more instances refused by an association that sent the study, since its last run (`REFUSED_NOTE`).

    Why: a study some of whose instances the node refused (a Patient ID it could not file, say) would otherwise be
    reported on the rest as complete, with no word of the others."""

    def add(record: dict[str, Any]) -> None:
        record["refused_instances"] = int(record.get("refused_instances", 0)) + count

    return add


def supersede_undelivered(runs: list[dict[str, Any]], destinations: dict[str, Any]) -> None:
    """Mark "superseded" the earlier runs' results still waiting for one of `destinations` (a new run's): a
    destination that never got them gets the new run's only, not the stale, incomplete run and then the
    new one. Results already delivered stay as
    they are: C-STORE cannot take them back, and the new report names the old one."""
    for run in runs:
        for name, state in run.get("sent", {}).items():
            if name in destinations and state.get("status") in WAITING_STATUSES:
                state.update(status="superseded", at=timestamp())


def reports(results: list[dict[str, Any]]) -> list[ResultReference]:
    """The reports among recorded results (a record older than the series UID in it: none named)."""
    return references([result for result in results if result.get("modality") == "SR"])


def references(results: list[dict[str, Any]]) -> list[ResultReference]:
    """Recorded results by their UIDs (a record older than the series UID in it: none named)."""
    return [
        ResultReference(result["series_instance_uid"], result["sop_class_uid"], result["sop_instance_uid"])
        for result in results
        if "series_instance_uid" in result
    ]


def delivered_results(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The SEGs and SRs of `runs` that a destination stored, each once, oldest first: what a new run's results
    supersede at the destinations.

    Every earlier run counts, not only the latest: a study revised twice while its destination was down would get
    the latest results and a note rejecting the middle run's, which it never had, and the first run's SEG would stay
    current there. A run superseded before any destination got it is left out: nobody holds it."""
    delivered: dict[str, dict[str, Any]] = {}
    for run in runs:
        states = run.get("sent", {}).values()
        for result in run.get("results", []):
            if result.get("modality") not in ("SEG", "SR") or result.get("sop_instance_uid") in delivered:
                continue
            if any(_stored(result["file"], state) for state in states):
                delivered[result["sop_instance_uid"]] = result
    return list(delivered.values())


def _stored(file: str, state: dict[str, Any]) -> bool:
    """Whether a destination's send `state` stored `file`: a run "sent" stored all its results but those the
    destination declined (a SEG it takes no context for: review 71 F1, a rejection note then named it)."""
    if file in state.get("stored", []):
        return True
    return state.get("status") == "sent" and file not in state.get("declined", [])


def earlier_reports(
    runs: list[dict[str, Any]], previous: dict[str, Any], built_report_uid: str | None
) -> list[dict[str, Any]]:
    """The reports a new run's report supersedes, given the study's runs, the latest with results (`previous`) and
    the SOP Instance UID the new report was built with (`result_uids`: the same findings, the same UID).

    Usually every report a destination stored (`delivered_results`): a report that never left the node names none
    (a PACS would get a " - revised" report naming one it never had). But when the new run found what
    `previous` found (the same built UID: a DWI or T2 series arrived, which the models do not read), it supersedes
    what `previous` superseded, and so is made with `previous`'s very UIDs, which a PACS keeps once (otherwise,
    after one real supersede, every later arrival in the study would add another identical SEG and SR)."""
    if built_report_uid is not None and previous.get("built_report_uid") == built_report_uid:
        return list(previous.get("predecessors", []))
    return [result for result in delivered_results(runs) if result["modality"] == "SR"]


def already_analysed(
    runs: list[dict[str, Any]], fingerprint: str, models: Mapping[str, str], bytes_fingerprint: str | None = None
) -> bool:
    """Whether these very instances are what the study's latest outcome was made of (`FINAL_STATUSES`), by the
    `models` that run now (their versions, the predictor's ``model_tags``); a run recorded before fingerprints
    compared content holds `bytes_fingerprint` (`Spool.fingerprints`).

    Only the latest outcome counts: an instance corrected and then sent again as it was goes back to an earlier
    run's instances, and the results now newest at the destination describe the correction (rather than the study
    called "unchanged" and nothing sent). An outcome of other model versions does not count either:
    sent again after a model upgrade, the study is analysed again and the new results revise the old (a re-send is
    the only way to new results). A run recorded before runs kept
    their models counts as made by the current ones, so an upgrade does not re-analyse every old study sent again."""
    latest = latest_outcome(runs)
    matches = {fingerprint, bytes_fingerprint} - {None}
    if latest is None or latest.get("fingerprint") not in matches or latest["status"] not in FINAL_STATUSES:
        return False
    return dict(latest.get("models", models)) == dict(models)


def answered(runs: list[dict[str, Any]]) -> bool:
    """Whether the study's latest outcome is an analysis (`FINAL_STATUSES`), whose results stand at the
    destinations, rather than a refusal."""
    latest = latest_outcome(runs)
    return latest is not None and latest["status"] in FINAL_STATUSES


def latest_outcome(runs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The study's latest run with an outcome (not an "error" run): its results, if any, are the study's current
    ones, which supersede every earlier run's."""
    return next((run for run in reversed(runs) if run.get("status") in OUTCOME_STATUSES), None)


def errors_since_last_outcome(runs: list[dict[str, Any]], fingerprint: str) -> int:
    """The "error" runs of these instances since their last outcome: a re-send after a "failed" run starts a fresh
    count of `max_attempts`."""
    errors = 0
    for run in runs:
        if run.get("fingerprint") != fingerprint:
            continue
        if run.get("status") in OUTCOME_STATUSES:
            errors = 0
        elif run.get("status") == "error":
            errors += 1
    return errors
