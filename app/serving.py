"""The HTTP server's prediction flow, built from the settings once the models have loaded.

Concurrent requests share one `MicroBatcher`, which groups their slices into model calls of up to
INFERENCE_BATCH_SIZE; the `PredictionService` in front of it holds the server's limits (MAX_UPLOAD_BYTES and the
others, a request at most INFERENCE_QUEUE_SLICES slices) and the decoding memory budget. It lives here, not in
`app.main`, which only assembles the application.
"""

from __future__ import annotations

from app.batching import MicroBatcher
from app.inference import Predictor
from app.memory_budget import MemoryBudget
from app.metrics import ServiceMetrics
from app.model_runners import batcher_runner
from app.prediction import PredictionService
from app.series.sequence_rules import SelectionRules
from app.settings import Settings
from app.uploads import UploadLimits


def server_flow(
    settings: Settings, predictor: Predictor, metrics: ServiceMetrics
) -> tuple[MicroBatcher, PredictionService]:
    """The server's micro-batcher (not started yet: the lifespan starts and stops it) and the service that runs every
    request's slices through it, counting each answer in `metrics`."""
    batcher = MicroBatcher(
        predictor,
        max_batch_size=settings.inference_batch_size,
        max_wait_seconds=settings.batch_wait_seconds,
        max_queued_slices=settings.inference_queue_slices,
        on_queue_change=metrics.queue_depth.set,
    )
    service = PredictionService(
        predictor,
        batcher_runner(batcher, settings.request_timeout_seconds),
        UploadLimits.for_service(settings),
        on_predictions=metrics.record_predictions,
        budget=MemoryBudget(settings.decode_memory_bytes, wait_seconds=settings.request_timeout_seconds),
        rules=SelectionRules.from_settings(settings),
    )
    return batcher, service
