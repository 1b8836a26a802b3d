"""Prometheus metrics of the service, kept in a registry of their own so each app instance (and test) starts at 0."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
    start_http_server,
)

from app.core.model_store import Manifest
from app.release import service_version

if TYPE_CHECKING:
    from app.prediction import Tally

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
SERVED_METHODS = frozenset({"GET", "HEAD", "POST", "OPTIONS", "PUT", "DELETE", "PATCH"})


class ServiceMetrics:
    """Request counts and latencies by endpoint and status, model run times, predictions, in-flight work."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        # The process' memory, CPU time, start time and open files (process_*): a restart or a memory climb shows.
        ProcessCollector(registry=self.registry)
        disable_created_metrics()  # no `_created` twin for every series: the start time says it once
        self.requests = Counter(
            "brain_tumor_http_requests",
            "HTTP requests served.",
            ["endpoint", "method", "status"],
            registry=self.registry,
        )
        self.request_latency = Histogram(
            "brain_tumor_http_request_duration_seconds",
            "Time from request to response.",
            ["endpoint", "method", "status"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.inference_latency = Histogram(
            "brain_tumor_model_inference_seconds",
            "Time of one model run on one batch.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.inference_batch_size = Histogram(
            "brain_tumor_model_batch_size",
            "Slices per model run.",
            ["model"],
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.predictions = Counter(
            "brain_tumor_predictions",
            "Slices predicted, by outcome.",
            ["result"],
            registry=self.registry,
        )
        self.connection_refusals = Counter(
            "brain_tumor_http_connection_refusals",
            "Requests and connections refused by the HTTP server before any route ran (too many connections, headers "
            "too large or too slow, bodies too slow, not HTTP/1.1), by status and error code: not in "
            "brain_tumor_http_requests.",
            ["status", "code"],
            registry=self.registry,
        )
        self.positives = Counter(
            "brain_tumor_positive_predictions",
            "Slices the classifier called positive.",
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "brain_tumor_inference_queue_slices",
            "Slices waiting for or running in the models (the micro-batcher's queue).",
            registry=self.registry,
        )
        self.ready = Gauge(
            "brain_tumor_ready",
            "1 while /health/ready answers 200: the models loaded and warm, the audit log writable.",
            registry=self.registry,
        )
        self.model_info = Info("brain_tumor_model", "The models being served.", registry=self.registry)
        build = Info("brain_tumor_build", "The release of the service (app.release).", registry=self.registry)
        build.info({"version": service_version()})

    def observe_request(self, endpoint: str, method: str, status: int, seconds: float) -> None:
        """One request answered. A method the service does not serve is labelled "other": the HTTP parser takes
        some 35 (MKCALENDAR, SOURCE ...), and each would multiply every scrape's series (attack: 19 KB -> 1 MB)."""
        labels = {
            "endpoint": endpoint,
            "method": method if method in SERVED_METHODS else "other",
            "status": str(status),
        }
        self.requests.labels(**labels).inc()
        self.request_latency.labels(**labels).observe(seconds)

    def observe_inference(self, model: str, seconds: float, batch_size: int) -> None:
        """An `app.inference.InferenceObserver`."""
        self.inference_latency.labels(model=model).observe(seconds)
        self.inference_batch_size.labels(model=model).observe(batch_size)

    def record_predictions(self, tally: Tally) -> None:
        """A request's slices (an `app.prediction.TallyObserver`): the final answers by result, and the classifier's
        positives before the series clean-up, which can turn some of them negative."""
        self.predictions.labels(result="positive").inc(tally.positive)
        self.predictions.labels(result="negative").inc(tally.negative)
        self.positives.inc(tally.classifier_positive)

    def set_models(self, manifest: Manifest) -> None:
        self.model_info.info(
            {
                "classifier": manifest.classifier.tag,
                "segmenter": manifest.segmenter.tag,
                "preprocessing": manifest.preprocessing,
                "classifier_threshold": f"{manifest.classifier.threshold:g}",
                "mask_threshold": f"{manifest.segmenter.threshold:g}",
            }
        )

    def follow_readiness(self, is_ready: Callable[[], bool]) -> None:
        """Export `is_ready()` as `brain_tumor_ready` at each scrape: set once after the models loaded, the gauge would
        say 1 while /health/ready answers 503 for an unwritable audit log, and an alert on it never fire)."""
        self.ready.set_function(lambda: float(is_ready()))

    def watch_audit_log(self, *, lost: Callable[[], float], held: Callable[[], float]) -> None:
        """Export the audit log's records lost since the start and those held in memory, waiting for its disk."""
        Gauge(
            "brain_tumor_audit_records_lost",
            "Audit records lost since the start: more were held than the service keeps while its disk takes none.",
            registry=self.registry,
        ).set_function(lost)
        Gauge(
            "brain_tumor_audit_records_held",
            "Audit records held in memory because the audit log cannot be written (a full disk).",
            registry=self.registry,
        ).set_function(held)

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class MetricsServerError(OSError):
    """The metrics port of dicom-node or pacs-sync cannot be listened on; the message names the address."""


def serve_metrics(registry: CollectorRegistry, host: str, port: int) -> Callable[[], None]:
    """Serve `registry` as Prometheus text at http://`host`:`port`/metrics (prometheus_client's server, in a daemon
    thread) for the daemons that have no HTTP server of their own; return what stops it.

    Raises
    ------
    MetricsServerError
        The port is in use or not ours to take, or the host is not an address of this machine.
    """
    try:
        server, thread = start_http_server(port, addr=host, registry=registry)
    except OSError as error:
        raise MetricsServerError(f"cannot serve metrics on {host}:{port}: {error.strerror or error}") from error

    def stop() -> None:
        server.shutdown()
        server.server_close()
        if isinstance(thread, threading.Thread):
            thread.join(timeout=5)

    return stop
