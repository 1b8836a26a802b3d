"""`brain-tumor pacs-sync`: follow an Orthanc PACS's change log, analyse each MR study, store the SEG and the volume
report (SR) back into it.

One pass:

1. read Orthanc's ``/changes`` after the last change handled (`app.pacs.pacs_sync_state.SyncState`, saved after each
   page, so a restart resumes there; a save that fails is logged, and the next one tries again); a ``StableSeries``
   change of an MR series (and, without `PacsSyncConfig.require_stable`, each ``NewInstance``) names a study to
   look at. With `require_stable`, a study that Orthanc does not call stable yet (an instance of another of its
   series arrived within Orthanc's StableAge: the T1 series of a study sent whole, after its FLAIR) is looked at
   again at each pass until it is: analysed on its stable FLAIR alone, it got an interim FLAIR-only SEG and SR that
   the three-series ones replaced minutes later. A ``NewSeries`` or ``NewInstance`` change of an MR series schedules
   such a look too, since an Orthanc restarted (or killed) before the series was stable never logs its
   ``StableSeries`` (`TRIGGERS_RECEIVING`);
2. look at each such study (`app.pacs.pacs_study.StudySync`): choose FLAIR (and the T1 series when they pair) with
   `app.series.sequence_roles`, run `app.study_analysis.ModelStudyProcessor`, store the results, supersede the earlier
   ones, record the outcome in Orthanc (metadata `SYNC_METADATA` on the study); a study without FLAIR is recorded
   as not analysed; whatever goes wrong with one study is logged and retried, and the others go on;
3. look again at the studies whose retry time has come: failures, tried up to `max_attempts` times with backoff,
   then watched, and processed again once their instances change. Orthanc (1.10) logs no change when an instance
   is deleted, so deleting a bad instance is noticed through this schedule for a failed study, and at the study's
   next change for one that succeeded.

Orthanc must declare the metadata name, e.g. ``"UserMetadata": {"BrainTumorSync": 4600}`` in its configuration
(``ORTHANC__USER_METADATA`` in the orthancteam Docker image). Network errors, 429/5xx answers and answers that are
not the JSON expected are retried with exponential backoff (`app.pacs.orthanc_client`). Logs name studies by their
Orthanc ID (a hash), never by DICOM tags.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from app.errors import error_body
from app.exit_codes import EXIT_FAILED, EXIT_OK, EXIT_USAGE, fail
from app.heartbeat import STARTING, HeartbeatFile
from app.inference import Predictor, load_predictor
from app.metrics import MetricsServerError, serve_metrics
from app.pacs.orthanc_answers import orthanc_time
from app.pacs.orthanc_client import SYNC_METADATA, OrthancClient
from app.pacs.orthanc_errors import OrthancError
from app.pacs.pacs_study import StudySync
from app.pacs.pacs_sync_config import PacsSyncConfig
from app.pacs.pacs_sync_metrics import PacsSyncMetrics
from app.pacs.pacs_sync_state import SyncState, SyncStateError, SyncStateWriteError, check_state_file_writable
from app.series.sequence_rules import SelectionRules
from app.settings import Settings, get_settings
from app.stop_signals import signals_interrupt
from app.study_analysis import ModelStudyProcessor
from app.uploads import UploadLimits

__all__ = ["SYNC_METADATA", "OrthancClient", "OrthancError", "PacsSyncConfig", "SyncReport", "run_pacs_sync"]

logger = logging.getLogger(__name__)

TRIGGERS_STABLE = frozenset({"StableSeries"})
TRIGGERS_UNSTABLE = frozenset({"StableSeries", "NewInstance"})
TRIGGERS_RECEIVING = frozenset({"NewSeries", "NewInstance"})
"""With `require_stable`, changes whose study is looked at again after `poll_seconds` and then at each pass until
Orthanc calls it stable: Orthanc keeps its stability timers in memory, so a series still receiving when it
restarts is stable after it without a ``StableSeries`` change, and would wait for one that never comes. That
includes late instances of a series already analysed, whose only changes are ``NewInstance`` (durability review 45
F1: Orthanc killed within StableAge left the result without them current). A study is scheduled once however many
of its instances a page names (`SyncState.receiving`), so it costs one look a pass, not one per instance; and its
series is asked for once a pass (`SeriesStudies`), not once per instance."""
MAX_CHANGE_PAGES_PER_PASS = 1000
"""Pages of the change log one pass reads (100 changes each): a busy Orthanc's backlog takes a few passes, and one
whose log never says Done cannot keep the due retries from their turn."""


WAITING = "waiting_for_stable"
"""The one `SyncReport` field that is not an outcome."""


@dataclass
class SyncReport:
    """Counts of studies looked at in one or more passes, by outcome; and `waiting_for_stable`, not an outcome: the
    studies found that wait, at the end of the latest pass, for Orthanc to call them stable (`SyncState.receiving`).
    Without it, ``--once`` printed all zeros for a study stored within StableAge, which read as "nothing to do"
    (interop review 48 F5)."""

    positive: int = 0
    negative: int = 0
    not_analysed: int = 0
    failed: int = 0
    already_done: int = 0
    gave_up: int = 0
    waiting_for_stable: int = 0

    def add(self, other: SyncReport) -> None:
        """Sum the outcomes; the waiting studies are the latest pass's (the same study waits in several)."""
        for name, value in asdict(other).items():
            setattr(self, name, value if name == WAITING else getattr(self, name) + value)

    def count(self, outcome: str | None) -> None:
        if outcome is not None:
            setattr(self, outcome, getattr(self, outcome) + 1)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    def outcomes(self) -> dict[str, int]:
        """The counts by outcome, for the metrics' counter (`as_dict` without `waiting_for_stable`)."""
        return {name: value for name, value in asdict(self).items() if name != WAITING}


def run_pacs_sync(
    config: PacsSyncConfig,
    predictor: Predictor,
    once: bool = False,
    client: OrthancClient | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.time,
    metrics: PacsSyncMetrics | None = None,
) -> SyncReport:
    """Run passes until interrupted (or a single one with `once`); return the counts of all passes. Each pass is
    counted in `metrics`, whose gauges read the sync state.

    The models run in a `ModelStudyProcessor` with `config.selection_rules`, as in the DICOM node.

    Raises
    ------
    OrthancError
        With `once`, if the change log cannot be read (Orthanc unreachable, wrong credentials). Without it, such a
        pass is logged and tried again after `config.poll_seconds`.
    SyncStateError
        If `config.state_file` exists but cannot be read.
    """
    client = client or OrthancClient(config, sleep=sleep)
    studies = StudySync(client, _processor(config, predictor), clock=clock)
    state = SyncState.load(config.state_file)
    if metrics is not None:
        metrics.watch_state(
            retries=lambda: len(state.retries),
            receiving=lambda: len(state.receiving),
            last_change=lambda: state.last_change,
            changes_behind=state.changes_behind,
        )
    total = SyncReport()
    if not once:
        logger.info(
            "pacs-sync started",
            extra={
                "fields": {
                    "orthanc": config.server,
                    "poll_seconds": config.poll_seconds,
                    "state_file": str(config.state_file) if config.state_file else None,
                    "last_change": state.last_change,
                }
            },
        )
    while True:
        try:
            report = sync_once(studies, state)
        except OrthancError as error:
            if metrics is not None:
                metrics.count_pass(None, clock(), studies.take_failures())
            if once:
                raise
            logger.error("pacs-sync pass failed", extra={"fields": {"error": str(error)}})
        else:
            total.add(report)
            if metrics is not None:
                metrics.count_pass(report.outcomes(), clock(), studies.take_failures())
        if once:
            return total
        sleep(config.poll_seconds)


def sync_once(studies: StudySync, state: SyncState) -> SyncReport:
    """One pass: the new changes, page by page, then the changes an earlier pass could not resolve, then the studies
    due for a retry; each study once a pass."""
    report = SyncReport()
    looked_at: set[str] = set()
    series_studies = SeriesStudies(studies.client)
    unresolved = list(state.unresolved)  # those of earlier passes: a change that failed now waits for the next
    _read_changes(studies, state, report, looked_at, series_studies)
    for resource in unresolved:
        resource_type, _, resource_id = resource.partition("/")
        study_id = _study_of(series_studies, {"ResourceType": resource_type, "ID": resource_id}, state)
        if study_id is not None and study_id not in looked_at:
            _process_once_stable(studies, study_id, state, report)
            looked_at.add(study_id)
    for study_id in state.received(studies.clock()):
        if study_id not in looked_at:
            _process_once_stable(studies, study_id, state, report)
            looked_at.add(study_id)
    for study_id in state.due(studies.clock()):
        if study_id in looked_at:
            continue  # a retry waits for the next pass, however short the backoff
        _process_once_stable(studies, study_id, state, report, retry=True)
    report.waiting_for_stable = len(state.receiving)
    if state.receiving:
        logger.info(
            "studies waiting until Orthanc calls them stable (StableAge, PACS_STABLE_SECONDS)",
            extra={
                "fields": {
                    WAITING: len(state.receiving),
                    "orthanc_studies": sorted(state.receiving)[:10],
                    "next_look_in_seconds": round(max(0.0, min(state.receiving.values()) - studies.clock()), 1),
                }
            },
        )
    _save(state)
    return report


def _process_once_stable(
    studies: StudySync, study_id: str, state: SyncState, report: SyncReport, retry: bool = False
) -> None:
    """`StudySync.process`, unless `require_stable` and Orthanc says an instance of the study arrived within its
    StableAge (``IsStable`` false): then the study is looked at again at the next pass, as it came (a change, through
    `SyncState.receiving`, or a retry), which the state file keeps over a restart. An Orthanc that does not say, or a
    study deleted meanwhile, counts as stable (`process` handles the latter). The study read here is handed to
    `process`, which does not read it again. With `PacsSyncConfig.stable_seconds`, a study whose last instance is
    younger than that by Orthanc's clock waits the same way, whatever ``IsStable`` says (`_updated_lately`)."""
    client = studies.client
    study = None
    if client.config.require_stable:
        try:
            study = client.study(study_id)
        except Exception:  # noqa: BLE001 - Orthanc down or answering nonsense: `process` meets it, logs and retries
            study = None
        if study is not None and (study.get("IsStable") is False or _updated_lately(client, study)):
            schedule = state.retries if retry else state.receiving
            schedule[study_id] = studies.clock() + client.config.poll_seconds
            return
    state.receiving.pop(study_id, None)  # looked at now: a look scheduled by its `TRIGGERS_RECEIVING` is not needed
    report.count(studies.process(study_id, state, retry=retry, study=study))


def _updated_lately(client: OrthancClient, study: dict[str, Any]) -> bool:
    """Whether the study's last instance came within `PacsSyncConfig.stable_seconds` by Orthanc's clock. A study
    without a ``LastUpdate`` in Orthanc's form, `stable_seconds` 0, or an Orthanc that does not tell its time: not
    (``IsStable`` decides alone, as before)."""
    seconds = client.config.stable_seconds
    if not seconds:
        return False
    try:
        updated = orthanc_time(str(study.get("LastUpdate", "")))
        now = client.now()
    except Exception:  # noqa: BLE001 - no time to compare: `process` meets an Orthanc that is down, and logs it
        return False
    return (now - updated).total_seconds() < seconds


def _read_changes(
    studies: StudySync, state: SyncState, report: SyncReport, looked_at: set[str], series_studies: SeriesStudies
) -> None:
    """Process the studies of Orthanc's new changes, page by page, moving the bookmark after each page.

    Orthanc's ``Last`` below the bookmark on an empty page means its change log started again (a new database, a
    restore): the log is then read from the start, once per pass, rather than waiting, blind, for the old number.
    A page that is not the last but does not move past the bookmark ends the reading, and so do
    `MAX_CHANGE_PAGES_PER_PASS` pages (a log that advances but never says Done), so the pass always ends.

    `SyncState.orthanc_last` follows the log's end, for the lag (`SyncState.changes_behind`): a page that is the
    last ends there; one that is not says only where it ends itself, so Orthanc is asked for its latest change, once a
    pass, before the studies of such a page are looked at.
    """
    client = studies.client
    triggers = TRIGGERS_STABLE if client.config.require_stable else TRIGGERS_UNSTABLE
    restarted = asked_last = False
    pages = 0
    while True:
        since = state.last_change
        page = client.changes(since)
        if page["Last"] < since and not page["Changes"] and not restarted:
            logger.warning(
                "orthanc change log started again; reading it from the start",
                extra={"fields": {"bookmark": since, "orthanc_last": page["Last"]}},
            )
            state.last_change, restarted = 0, True
            continue
        if page["Done"]:
            state.orthanc_last = page["Last"]
        elif not asked_last:
            state.orthanc_last, asked_last = max(page["Last"], client.last_change()), True
        else:
            state.orthanc_last = max(page["Last"], state.orthanc_last)
        study_ids: dict[str, None] = {}  # in order, once each
        receiving: dict[str, None] = {}
        for change in page["Changes"]:
            change_type = change.get("ChangeType")
            if change_type in triggers:
                study_id = _study_of(series_studies, change, state)
                if study_id is not None:
                    study_ids.setdefault(study_id)
            elif client.config.require_stable and change_type in TRIGGERS_RECEIVING:
                study_id = _study_of(series_studies, change, state)
                if study_id is not None:
                    receiving.setdefault(study_id)
        for study_id in study_ids:
            _process_once_stable(studies, study_id, state, report)
            looked_at.add(study_id)
        for study_id in receiving:  # a look at a study on an earlier page may have come before these instances
            if study_id not in study_ids:
                state.receiving.setdefault(study_id, studies.clock() + client.config.poll_seconds)
        state.last_change = max(page["Last"], state.last_change)
        # Only now: a crash above replays this page, and the records keep work from being redone. A failure here is
        # logged by the save that ends the pass, if that one fails too (one line per pass, not one per page).
        with suppress(SyncStateWriteError):
            state.save()
        if page["Done"] or not page["Changes"]:
            return
        pages += 1
        if pages >= MAX_CHANGE_PAGES_PER_PASS:  # a log that never says Done: the retries due must get their turn
            logger.warning(
                "orthanc change log not done after the pages one pass reads; the rest is read at the next pass",
                extra={"fields": {"pages": pages, "bookmark": state.last_change}},
            )
            return
        if page["Last"] <= since:
            logger.error(
                "orthanc change log does not advance; the rest is read at the next pass",
                extra={"fields": {"since": since, "orthanc_last": page["Last"]}},
            )
            return


def _save(state: SyncState) -> None:
    """Save the bookmark; if it cannot be, log it and go on from memory (the next pass tries again).

    A restart before a save succeeds reads the change log from the last saved point: time lost, not results.
    """
    try:
        state.save()
    except SyncStateWriteError as error:
        logger.error("pacs-sync state not saved", extra={"fields": {"error": str(error)}})


class SeriesStudies:
    """The study of each series the changes of one pass name, asked of Orthanc once a pass per series (attack review
    46 F4: each ``NewInstance`` was resolved by ``/instances/<id>/series``, whose answer lists every instance of the
    series, so the N instances of a series arriving cost N requests and N^2 bytes at each read of the log).

    An instance names its series by its own small answer (`OrthancClient.series_id_of_instance`); its series is then
    asked once. Kept for one pass only, and only for series that exist: a series deleted and sent again keeps its ID.
    A lookup that failed is kept for the pass too, so that the other changes of its series wait for the next pass
    (`_study_of`) without asking again for an answer that may be too large.
    """

    def __init__(self, client: OrthancClient) -> None:
        self.client = client
        # Series ID -> its study's ID; None: neither MR nor KO (our SEG and SR among them).
        self._studies: dict[str, str | None] = {}
        self._failures: dict[str, OrthancError] = {}

    def of_change(self, change: dict[str, Any]) -> str | None:
        """The study a series' or an instance's change belongs to; None for other modalities and deleted
        resources. A KO series counts: an incoming IHE IOCM rejection note has its study analysed again without the
        instances it rejects (interop review 48 F1)."""
        resource_id = str(change.get("ID", ""))
        if change.get("ResourceType") != "Instance":
            return self.of_series(resource_id)
        series_id = self.client.series_id_of_instance(resource_id)
        return None if series_id is None else self.of_series(series_id)

    def of_series(self, series_id: str) -> str | None:
        """The study of an MR or KO series; None for other modalities and a deleted series."""
        if series_id in self._studies:
            return self._studies[series_id]
        if series_id in self._failures:
            failure = self._failures[series_id]  # a new error: one raised again would grow its traceback each time
            raise OrthancError(str(failure), failure.status, failure.orthanc_status)
        try:
            series = self.client.series(series_id)
        except OrthancError as error:
            self._failures[series_id] = error
            raise
        if series is None:
            return None
        modality = series.get("MainDicomTags", {}).get("Modality")
        self._studies[series_id] = str(series["ParentStudy"]) if modality in ("MR", "KO") else None
        return self._studies[series_id]


def _study_of(series_studies: SeriesStudies, change: dict[str, Any], state: SyncState) -> str | None:
    """`SeriesStudies.of_change`, kept in `state.unresolved` when Orthanc answers but not with the resource (a 500, a
    page that is not JSON, an answer too large): the rest of the log goes on, and the change is tried again at the
    next passes, up to `PacsSyncConfig.max_attempts`. When Orthanc itself does not answer, the pass fails (replayed).
    """
    client = series_studies.client
    resource = f"{change.get('ResourceType')}/{change.get('ID')}"
    try:
        study_id = series_studies.of_change(change)
    except OrthancError as error:
        client.changes(state.last_change, limit=1)  # raises if Orthanc is unreachable: the pass fails, replayed
        failures = state.unresolved.pop(resource, 0) + 1
        given_up = failures >= client.config.max_attempts
        if not given_up:
            state.unresolved[resource] = failures
        logger.error(
            "change given up: its study cannot be looked up" if given_up else "change not resolved; tried again",
            extra={"fields": {"resource": resource, "failures": failures, "error": str(error)}},
        )
        return None
    state.unresolved.pop(resource, None)
    return study_id


def _processor(config: PacsSyncConfig, predictor: Predictor) -> ModelStudyProcessor:
    return ModelStudyProcessor(
        predictor,
        config.selection_rules,
        UploadLimits.for_pacs(config),
        batch_size=config.batch_size,
        result_origin="pacs-sync",
    )


def config_from_args(args: argparse.Namespace, settings: Settings) -> PacsSyncConfig:
    """Command-line values where given, else the settings'."""
    secret = settings.orthanc_password
    password = args.password if args.password is not None else secret.get_secret_value() if secret else None
    return PacsSyncConfig(
        orthanc_url=args.orthanc or settings.orthanc_url,
        username=args.user if args.user is not None else settings.orthanc_username,
        password=password,
        state_file=Path(args.state_file) if args.state_file is not None else settings.pacs_state_file,
        poll_seconds=args.poll_seconds if args.poll_seconds is not None else settings.pacs_poll_seconds,
        max_attempts=settings.pacs_max_attempts,
        retry_seconds=settings.pacs_retry_seconds,
        stable_seconds=settings.pacs_stable_seconds,
        max_dicom_pixels=settings.max_dicom_pixels,
        # A study the service could not decode is not fetched; each file has its own limit, as in the DICOM node.
        max_instance_bytes=settings.pacs_max_instance_bytes,
        max_study_bytes=settings.decode_memory_bytes,
        batch_size=settings.inference_batch_size,
        selection_rules=SelectionRules.from_settings(settings),
    )


def main(
    args: argparse.Namespace, settings: Settings | None = None, before_models: Callable[[], None] | None = None
) -> int:
    """Entry point of ``brain-tumor pacs-sync``: ask Orthanc once, load the models once (after `before_models`, which
    the command line uses to import TensorFlow quietly), then sync; prints the counts as JSON.

    Orthanc is asked before the models, which take 10-50 s to load: with `--once`, an Orthanc that does not answer
    or refuses the credentials is said in seconds (it was after the models: 59 s); without it, that is logged and
    the passes try again, as for an Orthanc that goes away later.

    With ``PACS_SYNC_METRICS_PORT``, the metrics are served (`app.metrics.serve_metrics`) from before Orthanc is
    asked: a port in use is one line on stderr and exit 2.

    Returns 0 on success (also when interrupted), 1 when Orthanc cannot be reached with `--once`, 2 for a bad
    configuration.
    """
    settings = settings or get_settings()
    try:
        config = config_from_args(args, settings)
    except ValueError as error:  # as an invalid option or variable: one line on stderr, found before anything runs
        return fail(f"brain-tumor pacs-sync: error: {error}", EXIT_USAGE)
    metrics = PacsSyncMetrics()
    stop_metrics = None
    if settings.pacs_sync_metrics_port:
        try:
            stop_metrics = serve_metrics(metrics.registry, settings.metrics_host, settings.pacs_sync_metrics_port)
        except MetricsServerError as error:
            return fail(f"brain-tumor pacs-sync: cannot start: {error}", EXIT_USAGE)
    try:
        # SIGTERM and SIGINT abandon the step in progress (a study's results are stored once either way, and the
        # state file is replaced whole), from the first call to Orthanc on: while the models load (10 s to a minute)
        # too, where pacs-sync died by the signal, exit 143 (ops review 44 F6).
        with signals_interrupt():
            return _sync(args, settings, config, metrics, before_models)
    except KeyboardInterrupt:
        logger.info("pacs-sync stopped")
        return EXIT_OK
    finally:
        if stop_metrics is not None:
            stop_metrics()


def _sync(
    args: argparse.Namespace,
    settings: Settings,
    config: PacsSyncConfig,
    metrics: PacsSyncMetrics,
    before_models: Callable[[], None] | None,
) -> int:
    """Check the state file's folder, ask Orthanc, load the models, sync (`main`)."""
    heartbeat = HeartbeatFile(None if args.once else settings.heartbeat_file, "pacs-sync")
    heartbeat.write(STARTING)
    try:
        check_state_file_writable(config.state_file)
    except SyncStateWriteError as error:
        print(json.dumps(error_body("invalid_configuration", str(error))))
        return EXIT_USAGE
    client = OrthancClient(config)
    try:
        client.system()
    except OrthancError as error:
        if args.once:
            return _orthanc_failed(error)
        logger.error(
            "orthanc does not answer as it should; tried again each pass",
            extra={"fields": {"code": _error_code(error), "error": str(error)}},
        )
    if before_models is not None:
        before_models()
    predictor = load_predictor(settings, args.model_dir)
    try:
        with heartbeat.beating(lambda: None):  # its passes run in this thread: a beat says the process runs
            report = run_pacs_sync(config, predictor, once=args.once, client=client, metrics=metrics)
    except SyncStateError as error:
        print(json.dumps(error_body("invalid_configuration", str(error))))
        return EXIT_USAGE
    except OrthancError as error:
        return _orthanc_failed(error)
    print(json.dumps(report.as_dict()))
    return EXIT_OK


def _error_code(error: OrthancError) -> str:
    """The error code of an Orthanc failure: its credentials refused, or Orthanc unavailable."""
    return "orthanc_credentials_refused" if error.status in (401, 403) else "orthanc_unavailable"


def _orthanc_failed(error: OrthancError) -> int:
    """Print an Orthanc failure as the JSON error `--once` answers; return its exit code, `EXIT_FAILED`."""
    print(json.dumps(error_body(_error_code(error), str(error))))
    return EXIT_FAILED
