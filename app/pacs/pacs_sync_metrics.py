"""Prometheus metrics of pacs-sync (`brain-tumor pacs-sync`), served on ``PACS_SYNC_METRICS_PORT``.

Counters move at the end of each pass (`app.pacs.pacs_sync.run_pacs_sync`); the gauges read the sync state
(`app.pacs.pacs_sync_state.SyncState`) at each scrape. Labels are a fixed vocabulary (the `SyncReport` outcomes), never
Orthanc IDs or DICOM values. Like `app.metrics.ServiceMetrics`: a registry of its own, the process' own metrics
(``process_*``), the release (``brain_tumor_build_info``), no ``_created`` series.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Info, ProcessCollector, disable_created_metrics

from app.release import service_version

OUTCOMES = ("positive", "negative", "not_analysed", "failed", "already_done", "gave_up")


class PacsSyncMetrics:
    """Passes, their failures, studies by outcome, and how far pacs-sync is in Orthanc's change log."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        ProcessCollector(registry=self.registry)
        disable_created_metrics()
        self.passes = Counter("brain_tumor_pacs_sync_passes", "Passes run (failed ones too).", registry=self.registry)
        self.failed_passes = Counter(
            "brain_tumor_pacs_sync_failed_passes",
            "Passes that failed: Orthanc could not be read (tried again after PACS_POLL_SECONDS).",
            registry=self.registry,
        )
        self.studies = Counter(
            "brain_tumor_pacs_sync_studies",
            "Studies looked at, by outcome (already_done: recorded before; gave_up: failed PACS_MAX_ATTEMPTS times).",
            ["outcome"],
            registry=self.registry,
        )
        self.studies_failed = Counter(
            "brain_tumor_pacs_sync_studies_failed",
            "Studies whose analysis failed, by error code (the reason's code, e.g. mixed_input; internal: it raised, "
            "Orthanc unreachable or answering nonsense, or a bug). The reason itself is in the study's BrainTumorSync "
            "metadata in Orthanc.",
            ["error"],
            registry=self.registry,
        )
        self.last_success = Gauge(
            "brain_tumor_pacs_sync_last_success_timestamp_seconds",
            "When the last pass that read Orthanc's change log to its end finished (Unix time; 0 before the first).",
            registry=self.registry,
        )
        build = Info("brain_tumor_build", "The release of pacs-sync (app.release).", registry=self.registry)
        build.info({"version": service_version()})  # as the API's: which release runs, for each daemon
        for outcome in OUTCOMES:  # every series from the start: a rate needs its 0
            self.studies.labels(outcome=outcome)

    def count_pass(
        self, report: Mapping[str, int] | None, now: float, failures: Mapping[str, int] | None = None
    ) -> None:
        """A pass ended: with its `SyncReport.as_dict()`, or None when it failed; `failures` counts the studies that
        failed in it by error code (`StudySync.take_failures`)."""
        self.passes.inc()
        for code, count in (failures or {}).items():
            self.studies_failed.labels(error=code).inc(count)
        if report is None:
            self.failed_passes.inc()
            return
        for outcome, count in report.items():
            self.studies.labels(outcome=outcome).inc(count)
        self.last_success.set(now)

    def watch_state(
        self,
        retries: Callable[[], float],
        receiving: Callable[[], float],
        last_change: Callable[[], float],
        changes_behind: Callable[[], float],
    ) -> None:
        """Gauges read at each scrape from the sync state."""
        for name, documentation, read in (
            ("brain_tumor_pacs_sync_studies_retry_waiting", "Studies waiting for a retry after a failure.", retries),
            (
                "brain_tumor_pacs_sync_studies_receiving",
                "Studies Orthanc does not call stable yet, looked at again at the next pass.",
                receiving,
            ),
            (
                "brain_tumor_pacs_sync_last_change",
                "The last Orthanc change handled.",
                last_change,
            ),
            (
                "brain_tumor_pacs_sync_changes_behind",
                "Changes in Orthanc's log, as pacs-sync last read it (each pass), not handled yet.",
                changes_behind,
            ),
        ):
            Gauge(name, documentation, registry=self.registry).set_function(read)
