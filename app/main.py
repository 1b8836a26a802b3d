"""Assembles the FastAPI application: settings, lifespan (models load once), middleware, routers, error handlers.

uvicorn --factory app.main:create_app      # or: brain-tumor serve
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException

from app.api import handlers, openapi_docs
from app.api.disconnect import ClientGone
from app.api.middleware import (
    AccessControlMiddleware,
    BrowserSiteMiddleware,
    ClientAddressMiddleware,
    HeadAsGetMiddleware,
    RequestContextMiddleware,
    UploadFormMiddleware,
    UploadLimitMiddleware,
)
from app.api.routes import docs, health, models, predict, web
from app.audit import AuditLog
from app.core.model_store import ModelStoreError, read_manifest
from app.errors import ServiceError
from app.inference import load_predictor
from app.metrics import ServiceMetrics
from app.release import service_version
from app.security import ApiKeyStore, RateLimiter, warn_if_open
from app.serving import server_flow
from app.settings import Settings, get_settings

logger = logging.getLogger(__name__)

DESCRIPTION = (
    "Brain-tumor detection and segmentation on 2-D MRI slices (LGG FLAIR), for research use only: not a medical "
    "device, not validated for clinical use."
)


async def load_models_in_background(app: FastAPI) -> None:
    """Load and warm up both models off the event loop, then start the micro-batcher and turn readiness on."""
    state = app.state
    # Its own thread, not asyncio's default executor: `asyncio.run` joins that one when the server stops, so SIGTERM
    # during the load (10-50 s) would wait for it. `brain-tumor serve` exits without waiting instead
    # (`model_loader` still running); under plain uvicorn the interpreter still waits for the thread at exit.
    loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="load-models")
    state.model_loader = loader.submit(
        load_predictor,
        state.settings,
        observer=state.metrics.observe_inference,
        manifest=state.manifest,  # verified by the lifespan before serving
    )
    loader.shutdown(wait=False)
    try:
        predictor = await asyncio.wrap_future(state.model_loader)
    except Exception as error:  # whatever it is, readiness must say so rather than wait forever
        state.load_error = str(error) or type(error).__name__
        logger.critical("model loading failed", exc_info=error, extra={"fields": {"error": state.load_error}})
        if state.on_load_failure is not None:  # `brain-tumor serve` stops (exit 3): restarts act on an exit
            state.on_load_failure()
        return
    state.predictor = predictor
    state.batcher, state.prediction_service = server_flow(state.settings, predictor, state.metrics)
    state.batcher.start()
    state.ready = True
    logger.info("models ready", extra={"fields": predictor.model_tags})


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Check the model files before serving (a bad hash stops startup), then load the models in the background.

    Liveness answers at once; readiness turns true after the warm-up, so orchestrators hold traffic until then.
    """
    state = app.state
    warn_if_open(state.settings.host, state.api_keys)
    try:
        state.manifest = read_manifest(state.settings.model_dir)
    except ModelStoreError as error:
        logger.critical("refusing to start", extra={"fields": {"error": str(error)}})
        raise
    state.metrics.set_models(state.manifest)
    loading = asyncio.create_task(load_models_in_background(app), name="load-models")
    try:
        yield
    finally:
        loading.cancel()
        await asyncio.gather(loading, return_exceptions=True)
        if state.batcher is not None:
            await state.batcher.stop()
        state.ready = False
        state.audit.close()


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the application; nothing heavy happens until its lifespan starts."""
    settings = settings or get_settings()
    metrics = ServiceMetrics()
    api_keys = ApiKeyStore.from_settings(settings.api_keys, settings.api_keys_file)
    audit = AuditLog(settings.audit_log_file)
    metrics.watch_audit_log(lost=lambda: audit.records_lost, held=lambda: audit.records_held)
    app = FastAPI(
        title="Brain tumor MRI service",
        description=DESCRIPTION,
        version=service_version(),
        lifespan=lifespan,
        docs_url=None,  # served offline by app.api.routes.docs instead of from a CDN
        redoc_url=None,
        # "." is the folder /openapi.json is served from: /docs' "Try it out" then calls the service where the page was
        # loaded from, also under a proxy's path prefix (FastAPI's default, "/", is the host's root).
        servers=[{"url": "."}],
        # Starlette answers `/health/live/` with a redirect to an absolute URL built from the client's Host header
        # (`Location: http://evil.example/health/live`): a trailing slash is a 404 here instead.
        redirect_slashes=False,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.api_keys = api_keys
    app.state.audit = audit
    app.state.manifest = None
    app.state.predictor = None
    app.state.batcher = None
    app.state.prediction_service = None
    app.state.ready = False
    app.state.load_error = None
    app.state.model_loader = None  # the load's Future, from the lifespan's start
    # Called once loading has failed; None (another ASGI server) keeps serving, readiness 503 with the reason logged.
    app.state.on_load_failure = None
    metrics.follow_readiness(lambda: app.state.ready and audit.writable)  # what /health/ready answers

    app.include_router(predict.router)
    app.include_router(models.router)
    app.include_router(health.router)
    app.include_router(web.router)
    docs.add_docs_pages(app)
    openapi_docs.keep_example_nulls(app)

    app.add_exception_handler(ServiceError, handlers.handle_service_error)
    app.add_exception_handler(ClientGone, handlers.handle_client_gone)
    app.add_exception_handler(RequestValidationError, handlers.handle_validation_error)
    app.add_exception_handler(HTTPException, handlers.handle_http_exception)
    app.add_exception_handler(Exception, handlers.handle_unexpected_error)

    add_middleware_stack(app, settings, metrics, audit, api_keys)
    return app


def add_middleware_stack(
    app: FastAPI, settings: Settings, metrics: ServiceMetrics, audit: AuditLog, api_keys: ApiKeyStore
) -> None:
    """The middleware every request passes through, in the order that matters (the last added is the outermost)."""
    limiter = (
        RateLimiter(settings.rate_limit_per_minute, settings.rate_limit_burst)
        if settings.rate_limit_per_minute
        else None
    )
    # Added last = outermost: the client's address, then the request id and logs wrap everything, then other sites'
    # pages and unknown Host names, then keys and rate limits, then body size, then upload bodies that are no form,
    # then HEAD as GET.
    app.add_middleware(HeadAsGetMiddleware)
    app.add_middleware(UploadFormMiddleware)
    app.add_middleware(
        UploadLimitMiddleware,
        default_limit=settings.upload_body_limit_bytes,
        limits={"/v1/predict/batch": settings.max_batch_upload_bytes},
        sources={
            "": "MAX_UPLOAD_BYTES and 64 KiB for the form around the file",
            "/v1/predict/batch": "MAX_BATCH_UPLOAD_BYTES",
        },
        max_held_bytes=settings.max_uploads_held_bytes,
    )
    app.add_middleware(
        AccessControlMiddleware,
        keys=api_keys,
        limiter=limiter,
        failed_keys=RateLimiter(settings.auth_failures_per_minute),
    )
    app.add_middleware(BrowserSiteMiddleware, allowed_hosts=settings.allowed_hosts, metrics_keyed=api_keys.enabled)
    app.add_middleware(
        RequestContextMiddleware, metrics=metrics, audit=audit, max_header_count=settings.max_header_count
    )
    app.add_middleware(ClientAddressMiddleware, trusted_proxies=settings.trusted_proxies)
