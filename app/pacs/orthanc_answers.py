"""The shapes pacs-sync relies on in Orthanc's JSON answers, checked before an answer is returned: a body that is not
JSON, or not of the shape the call expects, is an `OrthancAnswerError` naming the call and what was wrong, never
quoting the body (it may hold patient data)."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, TypeVar

import requests

from app.pacs.orthanc_errors import OrthancAnswerError

MEDIA_TYPE = re.compile(r"[\w.+-]{1,64}/[\w.+-]{1,64}")

T = TypeVar("T")


def orthanc_status(response: requests.Response | None) -> int | None:
    """The error code of Orthanc's JSON error body (``"OrthancStatus"``), or None for any other body; only that
    number is read, since the body's other fields may quote the request."""
    if response is None or too_many_values(response.content):
        return None
    try:
        code = response.json().get("OrthancStatus")
    except (ValueError, RecursionError, AttributeError):  # not JSON, or JSON that is not an object
        return None
    return code if isinstance(code, int) and not isinstance(code, bool) else None


MAX_JSON_SEPARATORS = 500_000
"""Most commas and colons in a JSON answer, counted before it is parsed: the size cap alone let a 20 MiB answer of
empty items (`[{},{},...]`) take 550 MiB once parsed (attack review 57 F4). Orthanc's densest answer, a list of
instance IDs, has one separator per 47 bytes: 446,000 in 20 MiB."""


def too_many_values(body: bytes) -> int:
    """The count of commas and colons in `body` when over `MAX_JSON_SEPARATORS`, else 0."""
    separators = body.count(b",") + body.count(b":")
    return separators if separators > MAX_JSON_SEPARATORS else 0


def json_body(response: requests.Response, what: str) -> Any:
    """The answer's JSON, or `OrthancAnswerError` naming its status and media type (never its content)."""
    if separators := too_many_values(response.content):
        raise OrthancAnswerError(
            f"{what} answered JSON of {separators} values, over {MAX_JSON_SEPARATORS}; not parsed (it would take "
            "too much memory)"
        )
    try:
        return response.json()
    except (ValueError, RecursionError):  # not JSON, an integer past Python's digit limit, nesting too deep
        media = response.headers.get("Content-Type", "").split(";")[0].strip()
        media = media if MEDIA_TYPE.fullmatch(media) else "unknown"
        raise OrthancAnswerError(
            f"{what} answered HTTP {response.status_code} with a body that is not JSON (Content-Type {media})"
        ) from None  # the decoder's error holds the whole body


def _expect(value: Any, kind: type[T], what: str) -> T:
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise OrthancAnswerError(f"{what} answered {_json_kind(value)} where {_json_kind(kind)} was expected")
    return value


def _require(mapping: dict[str, Any], key: str, kind: type[T], what: str) -> T:
    """`mapping[key]`, present and of type `kind`, else `OrthancAnswerError` naming the key (not the value)."""
    if key not in mapping:
        raise OrthancAnswerError(f"{what} answered an object without {key!r}")
    return _expect(mapping[key], kind, f"{what} {key!r}")


def json_object(body: Any, what: str) -> dict[str, Any]:
    return _expect(body, dict, what)


def with_id(body: Any, what: str) -> dict[str, Any]:
    _require(json_object(body, what), "ID", str, what)
    return body


def changes_page(body: Any, what: str) -> dict[str, Any]:
    page = json_object(body, what)
    _require(page, "Done", bool, what)
    if _require(page, "Last", int, what) < 0:
        raise OrthancAnswerError(f"{what} 'Last' answered a negative change number")
    for change in _require(page, "Changes", list, what):
        json_object(change, f"{what} change")
    return page


def _series(body: Any, what: str) -> dict[str, Any]:
    """An expanded series as pacs-sync reads it: ``ID`` (str), ``Instances`` (list of str), ``MainDicomTags``."""
    series = with_id(body, what)
    for instance in _require(series, "Instances", list, what):
        _expect(instance, str, f"{what} instance")
    _require(series, "MainDicomTags", dict, what)
    return series


def series_in_study(body: Any, what: str) -> dict[str, Any]:
    _require(_series(body, what), "ParentStudy", str, what)
    return body


def instance_in_series(body: Any, what: str) -> dict[str, Any]:
    """An instance as `GET /instances/<id>` answers it: ``ID`` and ``ParentSeries``."""
    _require(with_id(body, what), "ParentSeries", str, what)
    return body


def series_list(body: Any, what: str) -> list[dict[str, Any]]:
    return [_series(item, f"{what} series") for item in _expect(body, list, what)]


def resource_list(body: Any, what: str) -> list[dict[str, Any]]:
    """`POST /tools/lookup`'s answer: resources, each with ``ID`` (and ``Type``, ``Path``)."""
    return [with_id(item, f"{what} resource") for item in _expect(body, list, what)]


def study_answer(body: Any, what: str) -> dict[str, Any]:
    """A study as `GET /studies/<id>` answers it: ``ID`` and ``PatientMainDicomTags``."""
    _require(with_id(body, what), "PatientMainDicomTags", dict, what)
    return body


def _json_kind(value: Any) -> str:
    """The JSON name of a value's type, or of a type: what an error may say about a body without quoting it."""
    kind = value if isinstance(value, type) else type(value)
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "an integer"}
    if kind is type(None):
        return "null"
    return names.get(kind, "a number" if kind is float else kind.__name__)


def orthanc_time(text: str) -> datetime:
    """A time as Orthanc writes it (``LastUpdate``, ``/tools/now``: ``20261204T135351``, UTC); ValueError if not."""
    return datetime.strptime(text.strip(), "%Y%m%dT%H%M%S")
