"""The one place where errors become HTTP responses, all with the body `{"error": {"code", "message"}}`.

Every code, its status and when it is answered: `app.api.openapi_docs.ERROR_CATALOGUE` (shown in /docs and the
README's Errors table; `tests/api/routes/test_docs.py` checks that every `app.errors.ServiceError` is in it).

A request whose client disconnected before its answer (`app.api.disconnect.ClientGone`) ends with 499 and no body:
nobody receives it, but the logs, audit and metrics record it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from http import HTTPStatus

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from python_multipart.exceptions import FormParserError
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.types import Receive, Scope, Send

from app.api.disconnect import CLIENT_GONE
from app.api.request_fields import shown_name
from app.errors import (
    ErrorKind,
    PayloadTooLargeError,
    RequestValidationFailed,
    ServiceError,
    TooManyFilesError,
    error_body,
)
from app.security import retry_after_header

REQUEST_ID_HEADER = "X-Request-ID"
API_KEY_HEADER = "X-API-Key"
API_KEY_CHALLENGE = f'ApiKey header="{API_KEY_HEADER}"'
"""`WWW-Authenticate` of every 401 (RFC 9110 15.5.2 requires one, and HTTP clients and proxies
key their authentication handling on it): the scheme, and the header that carries the key."""
MULTIPART_MAX_FILES = 1000
"""The file parts Starlette's form parser reads before it gives up (`Request.form`'s default `max_files`)."""

logger = logging.getLogger(__name__)

STATUS_BY_KIND: dict[ErrorKind, int] = {
    ErrorKind.INVALID_INPUT: HTTPStatus.BAD_REQUEST,
    ErrorKind.UNSUPPORTED_TYPE: HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
    ErrorKind.TOO_LARGE: HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
    ErrorKind.INVALID_REQUEST: HTTPStatus.UNPROCESSABLE_ENTITY,
    ErrorKind.UNAVAILABLE: HTTPStatus.SERVICE_UNAVAILABLE,
    ErrorKind.UNAUTHORIZED: HTTPStatus.UNAUTHORIZED,
    ErrorKind.RATE_LIMITED: HTTPStatus.TOO_MANY_REQUESTS,
    ErrorKind.FORBIDDEN: HTTPStatus.FORBIDDEN,
    ErrorKind.HEADERS_TOO_LARGE: HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
}
_SHORT_INPUT = 80
SHOWN_PARTS = 5  # names of misnamed parts a 422 lists: enough for any mistake, not a flood for 1,000 parts
# What a multipart/form-data body must look like, for the parser's refusals; RFC 2046 allows text before the first
# boundary line, but python-multipart (Starlette's parser) does not read such a body.
MULTIPART_LAYOUT = (
    "the body must start with its boundary line (--BOUNDARY, with nothing before it), give each part its headers and "
    "a blank line, and end with --BOUNDARY--"
)


def service_error_response(error: ServiceError, close: bool = False) -> JSONResponse:
    """The error's response; `close` asks the server to close the connection after it."""
    headers = {}
    if error.retry_after_seconds is not None:
        headers["Retry-After"] = retry_after_header(error.retry_after_seconds)
    if error.kind is ErrorKind.UNAUTHORIZED:
        headers["WWW-Authenticate"] = API_KEY_CHALLENGE
    if close:
        headers["Connection"] = "close"
    return JSONResponse(error.body(), status_code=int(STATUS_BY_KIND[error.kind]), headers=headers)


def _remember_error(request: Request, code: str) -> None:
    # For the access log line; the first error wins (a body cut off by the upload limit also fails parsing).
    if getattr(request.state, "error_code", None) is None:
        request.state.error_code = code


async def reject(scope: Scope, receive: Receive, send: Send, error: ServiceError) -> None:
    """Answer `error` from a middleware, before any route: recorded for the access log as a handler's error is."""
    scope.setdefault("state", {}).setdefault("error_code", error.code)
    await service_error_response(error)(scope, receive, send)


async def handle_service_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, ServiceError)
    _remember_error(request, error.code)
    return service_error_response(error)


def describe_validation_errors(errors: list[dict], multipart: bool = False, parts_sent: Sequence[str] = ()) -> str:
    """`body.file: Field required; query.mask_format: Input should be ... (got 'x')`; `multipart` when the body was
    multipart/form-data, where a missing part is a part under another name (`parts_sent`: the names of the body's
    complete parts) or, when the body has no complete part, a body cut short."""
    parts = []
    for error in errors:
        location = ".".join(str(part) for part in error.get("loc", ()))
        text = f"{location}: {_validation_message(error, multipart, parts_sent)}"
        value = error.get("input")
        if isinstance(value, str | int | float) and len(str(value)) <= _SHORT_INPUT:
            text += f" (got {value!r})"
        parts.append(text)
    return "; ".join(parts)


def _validation_message(error: dict, multipart: bool, parts_sent: Sequence[str] = ()) -> str:
    message = str(error.get("msg", "invalid"))
    if "Expected UploadFile" in message:  # FastAPI's words for a form field sent as text where a file belongs
        # A part whose Content-Disposition names its file only as RFC 2231's `filename*=UTF-8''...` is read as text
        # too (the parser, as RFC 7578 advises senders, takes `filename` only): the message names the parameter.
        return (
            "expected a file, got a text field (send the image as a multipart/form-data file part with a "
            'filename="..." parameter; filename* alone is not read)'
        )
    location = error.get("loc", ())
    if multipart and error.get("type") == "missing" and location[:1] == ("body",):
        if parts_sent:
            # The commonest mistake (`files` to /v1/predict): the part's name and the parts sent, not framing advice.
            names = ", ".join(f"`{shown_name(name)}`" for name in parts_sent[:SHOWN_PARTS])
            if len(parts_sent) > SHOWN_PARTS:
                names += f" and {len(parts_sent) - SHOWN_PARTS} more"
            sent = "a part" if len(parts_sent) == 1 else "parts"
            return f"{message}: this endpoint's file part is named `{location[-1]}`; the body has {sent} named {names}"
        # The parser keeps only parts that end in a boundary line: a body cut short loses its last part silently.
        return f"{message} (no complete part of this name in the multipart body; {MULTIPART_LAYOUT})"
    return message


async def handle_validation_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, RequestValidationError)
    multipart = request.headers.get("content-type", "").lower().startswith("multipart/form-data")
    # FastAPI hands the parsed form with the error: the names of the parts that did arrive complete.
    parts_sent = list(dict.fromkeys(error.body.keys())) if isinstance(error.body, FormData) else []
    message = describe_validation_errors(error.errors(), multipart, parts_sent)
    return await handle_service_error(request, RequestValidationFailed(message))


async def handle_client_gone(request: Request, error: Exception) -> Response:
    """A request whose client disconnected before its answer (`app.api.disconnect`): nobody receives this; the logs,
    audit and metrics record the status."""
    return Response(status_code=CLIENT_GONE)


async def handle_http_exception(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, HTTPException)
    if error.status_code == HTTPStatus.REQUEST_ENTITY_TOO_LARGE:
        code = PayloadTooLargeError.code
    else:
        code = HTTPStatus(error.status_code).phrase.lower().replace(" ", "_").replace("-", "_")
    message, headers, status = str(error.detail), error.headers, error.status_code
    if status == HTTPStatus.BAD_REQUEST and message.startswith("Too many files"):
        # Starlette's form parser stops at 1,000 file parts, before the route counts them against MAX_BATCH_FILES:
        # the same refusal as one file past MAX_BATCH_FILES, not a body "the parser cannot read".
        # Its own words ("maximum number of files is 1000") name neither the endpoint's limit nor the count.
        status, code = HTTPStatus.REQUEST_ENTITY_TOO_LARGE, TooManyFilesError.code
        settings = getattr(request.app.state, "settings", None)
        most = f" {settings.max_batch_files}" if settings is not None else ""
        limit = (
            f"a batch may hold at most{most} files (MAX_BATCH_FILES)"
            if request.url.path.endswith("/batch")
            else "this endpoint takes one file, in the field `file`"
        )
        message = f"{limit}; got more than {MULTIPART_MAX_FILES} file parts"
    # Starlette's own words for an unknown path or method say nothing of what would do.
    if error.status_code == HTTPStatus.METHOD_NOT_ALLOWED and headers and "Allow" in headers:
        allowed = headers["Allow"].split(", ")
        if "GET" in allowed and "HEAD" not in allowed:  # app.api.middleware.HeadAsGetMiddleware answers it
            headers = {**headers, "Allow": ", ".join([*allowed, "HEAD"])}
        message = f"{request.method} is not allowed on this path; it takes {headers['Allow']}"
    elif error.status_code == HTTPStatus.NOT_FOUND and message == HTTPStatus.NOT_FOUND.phrase:
        message = "no endpoint at this path (the API is described at /docs; paths take no trailing slash)"
    elif (reason := _multipart_parser_reason(error)) is not None:
        message = f"the multipart/form-data body could not be read ({reason}): {MULTIPART_LAYOUT}"
    _remember_error(request, code)
    return JSONResponse(error_body(code, message), status_code=status, headers=headers)


def _multipart_parser_reason(error: HTTPException) -> str | None:
    """python-multipart's own words when Starlette answered its refusal with a bare "Invalid multipart data."."""
    cause = error.__context__
    while cause is not None and not isinstance(cause, FormParserError):
        cause = cause.__cause__ or cause.__context__
    return None if cause is None else " ".join(str(cause).split())


async def handle_unexpected_error(request: Request, error: Exception) -> JSONResponse:
    # Starlette re-raises after this handler, so the server still sees (and logs) the failure; clients get no trace.
    request_id = _request_id(request)
    logger.error("unhandled error", exc_info=error, extra={"fields": {"request_id": request_id}})
    _remember_error(request, "internal_error")
    # This answer is sent from outside the request-id middleware, so it adds that middleware's headers itself: the
    # id is what an operator looks up in the log, and no cache may keep the answer, as none keeps any other.
    headers = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}
    if request_id:
        headers[REQUEST_ID_HEADER] = request_id
    return JSONResponse(error_body("internal_error", "internal server error"), status_code=500, headers=headers)


def _request_id(request: Request) -> str | None:
    return getattr(request.state, "request_id", None)
