"""Prometheus metrics of the DICOM node (`brain-tumor dicom-node`), served on ``DICOM_NODE_METRICS_PORT``.

Counters are counted where the events happen (`app.node.dicom_receiver`, `app.node.dicom_study_worker`,
`app.node.dicom_sender`); the gauges are read from the spool at each scrape (its marker folders and its byte count:
cheap). Labels are a fixed vocabulary and the configured destinations (``AE@host:port``), never UIDs or patient data.
Like `app.metrics.ServiceMetrics`: a registry of its own, the process' own metrics (``process_*``), the release
(``brain_tumor_build_info``), no ``_created`` series.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Info, ProcessCollector, disable_created_metrics

from app.release import service_version

# Why an instance was refused (the `reason` label): a fixed vocabulary, the Error Comment being free text.
REFUSAL_REASONS = (
    "too_large",
    "spool_full",
    "receive_memory",
    "invalid_instance",
    "sop_class_mismatch",
    "spool_error",
)
OUTCOMES = ("positive", "negative", "not_analysed", "failed")


class NodeMetrics:
    """What a monitoring system needs of the node: what comes in, what is analysed, what goes out or waits."""

    def __init__(self, destinations: Iterable[str] = (), registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        ProcessCollector(registry=self.registry)
        disable_created_metrics()
        self.instances_received = Counter(
            "brain_tumor_node_instances_received",
            "Instances stored in the spool (answered Success).",
            registry=self.registry,
        )
        self.instances_refused = Counter(
            "brain_tumor_node_instances_refused",
            "Instances refused by C-STORE, by reason.",
            ["reason"],
            registry=self.registry,
        )
        self.studies_analysed = Counter(
            "brain_tumor_node_studies_analysed",
            "Studies analysed, by outcome (failed: an error, tried again after another quiet period).",
            ["outcome"],
            registry=self.registry,
        )
        self.studies_failed = Counter(
            "brain_tumor_node_studies_failed",
            "Studies whose analysis failed, by error code (the reason's code, e.g. mixed_input; internal: an "
            "unexpected error). The reason itself is in the study's spool record.",
            ["error"],
            registry=self.registry,
        )
        self.results_sent = Counter(
            "brain_tumor_node_results_sent",
            "Runs' results (SEG and SR) delivered, by destination.",
            ["destination"],
            registry=self.registry,
        )
        self.send_failures = Counter(
            "brain_tumor_node_send_failures",
            "Sends of a run's results that failed after their retries (tried again later), by destination.",
            ["destination"],
            registry=self.registry,
        )
        self.results_dropped = Counter(
            "brain_tumor_node_results_dropped",
            "Runs' results dropped at start because their destination is no longer configured, by destination.",
            ["destination"],
            registry=self.registry,
        )
        self.last_pass = Gauge(
            "brain_tumor_node_last_pass_timestamp_seconds",
            "When the worker last completed a pass over the pending studies (Unix time; 0 before the first).",
            registry=self.registry,
        )
        build = Info("brain_tumor_build", "The release of the node (app.release).", registry=self.registry)
        build.info({"version": service_version()})  # as the API's: which release runs, for each daemon
        for reason in REFUSAL_REASONS:  # every series from the start: a rate needs its 0
            self.instances_refused.labels(reason=reason)
        for outcome in OUTCOMES:
            self.studies_analysed.labels(outcome=outcome)
        for destination in destinations:
            for counter in (self.results_sent, self.send_failures, self.results_dropped):
                counter.labels(destination=destination)

    def watch_spool(
        self,
        pending: Callable[[], float],
        unsent: Callable[[], float],
        spool_bytes: Callable[[], float],
        oldest_unsent_age: Callable[[], float],
    ) -> None:
        """Gauges read at each scrape: studies pending analysis, studies with results not yet delivered, spool bytes,
        and how long the results waiting longest have waited (a count of unsent studies that stays above 0 may be a
        new study every minute, each delivered; an age that grows is results stuck)."""
        for name, documentation, read in (
            ("brain_tumor_node_studies_pending", "Studies received and waiting for analysis.", pending),
            (
                "brain_tumor_node_studies_unsent",
                "Studies with results not yet delivered to every destination.",
                unsent,
            ),
            (
                "brain_tumor_node_oldest_unsent_result_age_seconds",
                "Seconds since the oldest results not yet delivered to every destination were made (0 when none).",
                oldest_unsent_age,
            ),
            (
                "brain_tumor_node_spool_bytes",
                "Bytes the spool's instances, results and series index take on disk, in whole blocks (against "
                "DICOM_NODE_MAX_SPOOL_BYTES).",
                spool_bytes,
            ),
        ):
            Gauge(name, documentation, registry=self.registry).set_function(read)
