"""What the OpenAPI document says beyond the routes: every error code with its meaning and a real body, real
answers of the committed models to the committed test slices (app/api/openapi_examples.json, written by
`python -m tests.api.openapi_examples`), and `X-API-Key` as a security scheme.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass
from functools import cache
from http import HTTPStatus
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, Security
from fastapi.security import APIKeyHeader

from app import schemas

EXAMPLES_FILE = Path(__file__).with_name("openapi_examples.json")
NULL_IN_EXAMPLE = "\u0000null"  # stands for null in the examples until FastAPI has built the document


@dataclass(frozen=True)
class ErrorCode:
    code: str
    status: int
    meaning: str


# Every `code` a client can meet in `{"error": {"code", "message"}}`, by HTTP status.
ERROR_CATALOGUE: tuple[ErrorCode, ...] = (
    ErrorCode("empty_file", 400, "the file has 0 bytes"),
    ErrorCode("undecodable_image", 400, "PNG, JPEG or TIFF magic bytes, but the data is truncated or corrupt"),
    ErrorCode(
        "invalid_image",
        400,
        "the image decodes but is no slice (e.g. two channels, a multi-page TIFF, under 32 pixels a side)",
    ),
    ErrorCode(
        "repeated_slice",
        400,
        "a PNG/JPEG/TIFF file of a series holds the same pixels as an earlier one: read once, and no slice is missing",
    ),
    ErrorCode("undecodable_dicom", 400, "a DICOM file that is truncated or unreadable"),
    ErrorCode("dicom_without_pixel_data", 400, "a DICOM file with no image in it"),
    ErrorCode("invalid_dicom_image", 400, "a colour DICOM, or frames that do not group into slices"),
    ErrorCode(
        "invalid_segmentation_input",
        400,
        "the DICOM series cannot be referenced by a DICOM SEG, or output=dicom-seg was asked for a PNG/JPEG/TIFF",
    ),
    ErrorCode(
        "invalid_report_input", 400, "the DICOM series cannot be described by a DICOM SR (no StudyInstanceUID...)"
    ),
    ErrorCode(
        "no_flair_series",
        422,
        "the DICOM files hold no series read as FLAIR (one series classified T1, a localizer or another contrast, or "
        "several series and none FLAIR); the message gives each series' role and evidence",
    ),
    ErrorCode(
        "rejected_instance",
        422,
        "in a batch's file_errors: a DICOM image withdrawn by an IHE IOCM rejection note (a Key Object Selection "
        "titled in CID 7011) sent in the same request; left out, as the DICOM node leaves it out",
    ),
    ErrorCode(
        "rejection_note",
        422,
        "in a batch's file_errors: the IHE IOCM rejection note that withdrew images of the request, applied (it holds "
        "no image); a batch of nothing but withdrawn images and their note is refused with one of these two codes",
    ),
    ErrorCode("mixed_input", 400, "DICOM and PNG/JPEG/TIFF files in one batch"),
    ErrorCode(
        "bad_request",
        400,
        "a body the multipart parser cannot read (no boundary, text before the first boundary, huge part names)",
    ),
    ErrorCode("unauthorized", 401, "API keys are configured and X-API-Key is missing, wrong or sent twice"),
    ErrorCode(
        "cross_site_request",
        403,
        "a browser sent it for another site's page (Sec-Fetch-Site: cross-site) and it is not a GET, HEAD or OPTIONS",
    ),
    ErrorCode(
        "host_not_allowed",
        403,
        "ALLOWED_HOSTS is set and the Host header, or the host of an absolute-form request target, names none of its "
        "hosts (two Host headers are a 400 invalid_http_request at brain-tumor serve)",
    ),
    ErrorCode("not_found", 404, "no such path"),
    ErrorCode("method_not_allowed", 405, "the path exists, but not with this method"),
    ErrorCode("payload_too_large", 413, "a file over MAX_UPLOAD_BYTES, or a request body over its limit"),
    ErrorCode("image_too_large", 413, "width x height (x frames) over MAX_IMAGE_PIXELS, or a side over 65535"),
    ErrorCode("too_many_files", 413, "a batch with more than MAX_BATCH_FILES files"),
    ErrorCode(
        "over_memory_budget",
        413,
        "decoding a file, or a request's files together, would take more than DECODE_MEMORY_BYTES (from the headers)",
    ),
    ErrorCode("too_many_slices", 413, "one request with more slices than INFERENCE_QUEUE_SLICES could ever hold"),
    ErrorCode(
        "too_many_rejection_notes",
        413,
        "a batch whose IHE IOCM rejection notes of its study take more than 16 MiB to read together (one left unread "
        "would leave the images it withdraws analysed)",
    ),
    ErrorCode(
        "unreadable_rejection_note",
        400,
        "a Key Object Selection that is, or may be, an IHE IOCM rejection note of the batch's study (its title says "
        "so, or cannot be read) and cannot be read (damaged, cut short, over 4 MiB): the images it withdraws are "
        "unknown, so none is analysed, as the DICOM node refuses such a note",
    ),
    ErrorCode(
        "unsupported_media_type",
        415,
        "the first bytes are not PNG, JPEG, TIFF or DICOM (file names and a part's Content-Type are ignored), or the "
        "request body is not multipart/form-data",
    ),
    ErrorCode(
        "unsupported_dicom",
        415,
        "a DICOM that is not an MR image (SR, CT, SEG ...), or whose transfer syntax has no decoder",
    ),
    ErrorCode(
        "invalid_http_request",
        400,
        "a request line or header that is not valid HTTP/1.1 (two Host headers too); the connection is closed",
    ),
    ErrorCode(
        "method_not_implemented",
        501,
        "a method the server does not know at all (`FOO`; a known one a path does not take is 405); the connection is "
        "closed",
    ),
    ErrorCode(
        "request_timeout",
        408,
        "headers or body not sent within HEADER_TIMEOUT_SECONDS / BODY_TIMEOUT_SECONDS, or a body sent slower than "
        "MIN_UPLOAD_BYTES_PER_SECOND",
    ),
    ErrorCode("headers_too_large", 431, "request headers over MAX_HEADER_BYTES or more than MAX_HEADER_COUNT of them"),
    ErrorCode(
        "validation_error",
        422,
        "a missing or malformed field (no `file`, several `file` parts, a part under another name, a bad or unknown "
        "query parameter)",
    ),
    ErrorCode(
        "rate_limited", 429, "over RATE_LIMIT_PER_MINUTE for this key (or address); Retry-After says when to retry"
    ),
    ErrorCode("internal_error", 500, "a bug; logged with its traceback, never with the image"),
    ErrorCode(
        "model_unavailable",
        503,
        "the models are not loaded and warm yet; retry after the Retry-After header's seconds",
    ),
    ErrorCode(
        "audit_unavailable",
        503,
        "the audit log cannot be written (a full disk): GET /health/ready and the inference endpoints answer it, so "
        "that no upload is analysed unaudited; a load balancer should send elsewhere; Retry-After: 30 seconds",
    ),
    ErrorCode(
        "overloaded",
        503,
        "the inference queue, the decoding memory budget or the uploads held (MAX_UPLOADS_HELD_BYTES) is full; "
        "Retry-After says when to retry",
    ),
    ErrorCode("inference_timeout", 503, "no answer from the models within REQUEST_TIMEOUT_SECONDS"),
    ErrorCode(
        "too_many_connections",
        503,
        "more than MAX_CONNECTIONS open connections, or MAX_CONNECTIONS_PER_CLIENT from one address; the connection "
        "is closed",
    ),
)
STATUS_SUMMARIES = {
    400: "the request, or its file as a slice, cannot be used",
    401: "X-API-Key missing or wrong (only when API keys are configured)",
    403: "sent by a browser for another site's page, or to a Host name not in ALLOWED_HOSTS",
    404: "no such path",
    405: "the path does not take this method; Allow names those it takes",
    408: "the request came too slowly",
    413: "file, image, batch or request too large",
    415: "not PNG, JPEG, TIFF or an MR DICOM image (judged by the magic bytes)",
    422: "missing or malformed field",
    429: "too many requests for this key; see Retry-After",
    431: "request headers too large",
    500: "a bug in the service",
    501: "unknown method",
    503: "the service cannot take it now (models not ready, full, too slow, too many connections); see Retry-After",
}
# What each operation can answer, listed on it: a generated client returns None for an undocumented status (422 on
# the read routes, 401 on /metrics, 500).
PREDICTION_STATUSES = (400, 401, 403, 413, 415, 422, 429, 500, 503)
READ_STATUSES = (401, 403, 429, 500)  # GET routes behind the API key: /v1/models and /metrics
# Answered on any path, before an operation runs, by the HTTP layer (400 invalid_http_request, 408, 431, 501, 503
# too_many_connections) or the router (404, 405): listed on every operation (`SERVER_RESPONSES`). Not as a `default`
# response: openapi-python-client parses any status it has no schema for by `default`, so it json-decoded the
# overlay's PNG.
PROTOCOL_CODES = (
    "invalid_http_request",
    "not_found",
    "method_not_allowed",
    "request_timeout",
    "headers_too_large",
    "method_not_implemented",
    "too_many_connections",
)
# Binary bodies as OpenAPI tools recognise them: FastAPI describes an upload part by
# `contentMediaType` alone, which openapi-python-client types as a text field (it sends the file's repr), and a media
# type without a schema makes a generated client json-decode the DICOM or PNG bytes.
BINARY_UPLOAD = {"format": "binary"}
BINARY_CONTENT = {"schema": {"type": "string", "format": "binary"}}

# Response headers, declared with their types: a client built from the document learns that the DICOM and overlay
# answers carry their decision in headers, and about X-Request-ID.
BOOLEAN_HEADER = {"type": "boolean"}  # sent as `true` / `false`
COUNT_HEADER = {"type": "integer", "minimum": 0}
REQUEST_ID_HEADERS = {
    "X-Request-ID": {
        "description": "the server's id of this request (also `request_id` in a JSON answer, and in its logs); on "
        "every answer but the refusals of the HTTP layer (400 `invalid_http_request`, 408, 431, 501, 503 "
        "`too_many_connections`)",
        "schema": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
    }
}
RETRY_AFTER_HEADERS = {
    "Retry-After": {
        "description": "whole seconds to wait before retrying (sent with the codes that say so)",
        "schema": {"type": "integer", "minimum": 1},
    }
}
ALLOW_HEADERS = {"Allow": {"description": "with 405: the methods the path takes", "schema": {"type": "string"}}}
RETRY_STATUSES = (429, 503)


@cache
def recorded_examples() -> dict:
    """The recorded answers; empty when the file is missing, so the service still starts (with fewer examples)."""
    try:
        return json.loads(EXAMPLES_FILE.read_text())
    except FileNotFoundError:
        return {"responses": {}, "errors": {}}


def error_example(entry: ErrorCode) -> dict:
    recorded = recorded_examples()["errors"].get(entry.code)
    body = recorded["body"] if recorded else {"error": {"code": entry.code, "message": entry.meaning}}
    return {"summary": f"{entry.code}: {entry.meaning}", "value": with_null_markers(body)}


def error_responses(*statuses: int, only: Collection[str] = ()) -> dict[int | str, dict]:
    """OpenAPI `responses` for these statuses: each lists its codes with their meanings, and one example per code;
    with `only`, just those codes (a read route's 422 is never `no_flair_series`)."""
    responses: dict[int | str, dict] = {}
    for status in statuses:
        entries = [entry for entry in ERROR_CATALOGUE if entry.status == status and (not only or entry.code in only)]
        codes = "; ".join(f"`{entry.code}`: {entry.meaning}" for entry in entries)
        responses[status] = {
            "model": schemas.ErrorResponse,
            "description": f"{STATUS_SUMMARIES[status]}. Codes: {codes}.",
            "headers": REQUEST_ID_HEADERS
            | (RETRY_AFTER_HEADERS if status in RETRY_STATUSES else {})
            | (ALLOW_HEADERS if status == HTTPStatus.METHOD_NOT_ALLOWED else {}),
            "content": {"application/json": {"examples": {entry.code: error_example(entry) for entry in entries}}},
        }
    return responses


def response_examples(**named: str) -> dict[str, dict]:
    """`{"application/json": {"examples": ...}}` of recorded answers, by the name they were recorded under."""
    recorded = recorded_examples()["responses"]
    examples = {
        name: {"summary": summary, "value": with_null_markers(recorded[name])}
        for name, summary in named.items()
        if name in recorded
    }
    return {"application/json": {"examples": examples}} if examples else {}


def keep_example_nulls(app: FastAPI) -> None:
    """Make `app.openapi()` keep the nulls of the examples.

    FastAPI encodes the whole document with `exclude_none`, so the tumor-free answer's `"mask": null` would be lost
    and the example fail its own schema (`mask` is required). The examples reach FastAPI with `NULL_IN_EXAMPLE` for
    each null (`with_null_markers`), put back as null in the document FastAPI built (and caches).
    """
    build_document = app.openapi

    def openapi() -> dict:
        document = build_document()
        document["paths"] = _with_nulls(document["paths"])
        return document

    app.openapi = openapi  # type: ignore[method-assign]


def with_null_markers(value: Any) -> Any:
    """`value` with every None as `NULL_IN_EXAMPLE`, which FastAPI's encoding keeps."""
    if value is None:
        return NULL_IN_EXAMPLE
    if isinstance(value, dict):
        return {key: with_null_markers(item) for key, item in value.items()}
    if isinstance(value, list):
        return [with_null_markers(item) for item in value]
    return value


def _with_nulls(value: Any) -> Any:
    if value == NULL_IN_EXAMPLE:
        return None
    if isinstance(value, dict):
        return {key: _with_nulls(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_with_nulls(item) for item in value]
    return value


# Every operation's: a bug (500), and what the server refuses before any operation runs (`PROTOCOL_CODES`); the
# prediction routes' own 400 and 503 list these codes among theirs.
SERVER_RESPONSES = error_responses(400, 404, 405, 408, 431, 500, 501, 503, only={*PROTOCOL_CODES, "internal_error"})
UNKNOWN_QUERY_RESPONSE = error_responses(422, only={"validation_error"})  # routes that take no query parameters

api_key_header = APIKeyHeader(
    name="X-API-Key",
    auto_error=False,
    scheme_name="ApiKey",
    description="Needed when the server has API keys (API_KEYS or API_KEYS_FILE); checked before the request body "
    "is read. Missing or wrong: 401 `unauthorized`.",
)


# The empty requirement makes the key optional in the document, as it is in the service: needed only when keys are
# configured. FastAPI appends this to the requirement its `Security` dependency declares.
OPTIONAL_API_KEY: dict = {"security": [{}]}


async def document_api_key(key: Annotated[str | None, Security(api_key_header)]) -> None:
    """Declares the header in the OpenAPI document; `AccessControlMiddleware` has checked it already."""
