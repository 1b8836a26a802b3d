"""Talking to Orthanc for pacs-sync: where it is and how often to retry (`PacsSyncConfig`), and the few REST and
DICOMweb calls made to it (`OrthancClient`), each retried with exponential backoff on network errors, 429/5xx
answers and answers whose body is not the JSON the call expects (a proxy's HTML page, say).

Every answer is checked against the shape the caller relies on before it is returned, so a wrong one is an
`OrthancError` here, never a `KeyError` or a `JSONDecodeError` deep in the sync loop.

What to do with the series is `app.pacs_sync`'s job; nothing here predicts.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urljoin, urlsplit

import requests
import urllib3
from dicomweb_client import DICOMwebClient
from pydicom.dataset import Dataset

from app.answer_deadline import AnswerDeadlineAdapter
from app.core.backoff import doubling_wait
from app.dicom_header import DEFAULT_MAX_DICOM_PIXELS
from app.result_uids import MANUFACTURER
from app.sequence_selection import SelectionRules
from app.settings import HTTP_URL_RULE, MIB, Settings, is_http_url

logger = logging.getLogger(__name__)

SYNC_METADATA = "BrainTumorSync"
DICOMWEB_ROOT = "dicom-web"
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
CHANGES_PAGE = 100
RESULT_MODALITIES = frozenset({"SEG", "SR"})
# StationName of the SEG and SR pacs-sync stores: the DICOM node's results carry the same Manufacturer but not this,
# so pacs-sync supersedes (deletes) only its own. At most 16 characters (VR SH).
SYNC_STATION_NAME = "BT-PACS-SYNC"
INEXISTENT_ITEM = 7  # Orthanc's error code ("OrthancStatus") for a metadata name it does not declare, among others
MEDIA_TYPE = re.compile(r"[\w.+-]{1,64}/[\w.+-]{1,64}")
READ_CHUNK = 64 * 1024
DEFAULT_MAX_ANSWER_BYTES = 20 * MIB  # Orthanc's JSON answers; instance files have their own limit
DEFAULT_MAX_INSTANCE_BYTES: int = Settings.model_fields["pacs_max_instance_bytes"].default
DEFAULT_MAX_STUDY_BYTES: int = Settings.model_fields["decode_memory_bytes"].default

T = TypeVar("T")


class OrthancError(RuntimeError):
    """An Orthanc call failed: a non-retryable answer, or a retryable one that outlived every retry.

    `status` is the HTTP status Orthanc answered, if it answered (401 and 403: the credentials were refused);
    `orthanc_status` the error code Orthanc's own error body names (``"OrthancStatus"``), if it has one.
    """

    def __init__(self, message: str, status: int | None = None, orthanc_status: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.orthanc_status = orthanc_status


class OrthancAnswerError(OrthancError):
    """Orthanc, or a proxy in front of it, answered with a body that is not the JSON the call expects.

    The message names the call and what was wrong with the body, never the body: it may hold patient data.
    """


class AnswerTooLargeError(OrthancError):
    """An answer longer than its limit (`PacsSyncConfig.max_instance_bytes` or `max_answer_bytes`): cut off before
    it is held whole, and not retried (the same call would answer the same)."""


class AnswerTooSlowError(requests.Timeout):
    """An answer whose body did not end within `PacsSyncConfig.answer_seconds` (a server that trickles bytes beats
    any per-read timeout); retried as a timeout."""


class ForeignRedirectError(OrthancError):
    """Orthanc's address redirected to another server: not followed, since requests would send it the request's
    body (a SEG with patient data on a 307) and the answer would be trusted as Orthanc's."""


@dataclass(frozen=True)
class PacsSyncConfig:
    """Where the PACS is and how to talk to it.

    Attributes
    ----------
    orthanc_url
        Orthanc's base URL (REST API root), e.g. ``http://127.0.0.1:8042``; DICOMweb is under ``/dicom-web``.
    username, password
        HTTP basic authentication; None for an Orthanc without authentication.
    state_file
        Where the number of the last Orthanc change handled and the studies waiting for a retry are kept (JSON), so a
        restart resumes there; None keeps them in memory only (a restart then reads the changes from the start, and
        the records in Orthanc keep it from redoing work).
    poll_seconds
        Pause between passes when not running once.
    max_attempts, retry_seconds
        A study that fails is tried again up to `max_attempts` times in all, `retry_seconds` x 2^(attempt-1) after
        each failure; then it is only watched (its instances re-checked every `retry_seconds` x 2^(max_attempts-1))
        and processed again once they change.
    max_image_pixels
        Largest rows x columns x frames accepted per instance (as for uploads).
    retries, backoff_seconds
        Retries after the first try of each HTTP call, waiting backoff x 2^attempt seconds in between.
    timeout_seconds
        Per read of an HTTP call (connecting, each wait for bytes).
    answer_seconds
        The most one HTTP call may take, from sending the request to the answer's last byte.
    max_instance_bytes
        Largest instance file read from Orthanc (PACS_MAX_INSTANCE_BYTES, 128 MiB by default, as the DICOM node's:
        a 3D FLAIR stored as one Enhanced MR object is often past 20 MiB); a longer one is cut off, never held whole.
    max_answer_bytes
        Largest other answer (JSON) read from Orthanc, cut off likewise.
    max_study_bytes
        Most bytes of instance files fetched for one study, and the prediction flow's memory budget for decoding them
        (default `DECODE_MEMORY_BYTES`' default: an uncompressed file costs more to decode than its size, so a study
        past it could not pass that budget).
    batch_size
        Slices per model call, to bound memory on long series.
    require_stable
        Process a study only on Orthanc's ``StableSeries`` changes (no new instance for its StableAge), so a SEG never
        covers half a series; without it, also on each ``NewInstance``.
    selection_rules
        Which series are FLAIR and T1 (`app.sequence_selection`).
    """

    orthanc_url: str
    username: str | None = None
    password: str | None = None
    state_file: Path | None = None
    poll_seconds: float = 30.0
    max_attempts: int = 5
    retry_seconds: float = 60.0
    max_image_pixels: int = DEFAULT_MAX_DICOM_PIXELS
    retries: int = 4
    backoff_seconds: float = 0.5
    timeout_seconds: float = 30.0
    answer_seconds: float = 120.0
    max_instance_bytes: int = DEFAULT_MAX_INSTANCE_BYTES
    max_answer_bytes: int = DEFAULT_MAX_ANSWER_BYTES
    max_study_bytes: int = DEFAULT_MAX_STUDY_BYTES
    batch_size: int = 32
    require_stable: bool = True
    selection_rules: SelectionRules = field(default_factory=SelectionRules)

    def __post_init__(self) -> None:
        if not is_http_url(self.orthanc_url):
            raise ValueError(f"orthanc_url {HTTP_URL_RULE}; got {self.orthanc_url!r}")
        if self.retries < 0 or self.backoff_seconds < 0 or self.timeout_seconds <= 0 or self.batch_size < 1:
            raise ValueError(
                "retries and backoff_seconds must be >= 0, timeout_seconds > 0 and batch_size >= 1; got "
                f"{self.retries}, {self.backoff_seconds}, {self.timeout_seconds}, {self.batch_size}"
            )
        if not 0 < self.answer_seconds < math.inf or min(self.max_instance_bytes, self.max_answer_bytes) < 1:
            raise ValueError(
                "answer_seconds must be a positive number of seconds and max_instance_bytes, max_answer_bytes >= 1; "
                f"got {self.answer_seconds}, {self.max_instance_bytes}, {self.max_answer_bytes}"
            )
        if self.max_study_bytes < 1:
            raise ValueError(f"max_study_bytes must be >= 1; got {self.max_study_bytes}")
        if not 0 < self.poll_seconds < math.inf:  # time.sleep refuses a negative, NaN or infinite pause
            raise ValueError(f"poll_seconds must be a positive number of seconds; got {self.poll_seconds}")
        if self.max_attempts < 1 or self.retry_seconds < 0:
            raise ValueError(
                f"max_attempts must be >= 1 and retry_seconds >= 0; got {self.max_attempts}, {self.retry_seconds}"
            )

    @property
    def base_url(self) -> str:
        return self.orthanc_url.rstrip("/")

    @property
    def server(self) -> str:
        """Scheme, host and port of Orthanc, for messages: never the user information a URL may carry."""
        return _origin(self.orthanc_url)

    @property
    def dicomweb_url(self) -> str:
        return f"{self.base_url}/{DICOMWEB_ROOT}"


class OrthancClient:
    """The few Orthanc REST and DICOMweb calls pacs-sync makes, each retried on network errors and 429/5xx."""

    def __init__(
        self,
        config: PacsSyncConfig,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.config = config
        self._sleep = sleep
        self.session = session or requests.Session()
        if config.username is not None:
            self.session.auth = (config.username, config.password or "")
        for scheme in ("http://", "https://"):  # headers due within answer_seconds, REST and DICOMweb calls alike
            self.session.mount(scheme, AnswerDeadlineAdapter(config.answer_seconds))
        self.session.hooks["response"].append(self._check_answer)  # and the body within what is left of it
        self._dicomweb = DICOMwebClient(url=config.dicomweb_url, session=self.session, timeout=config.timeout_seconds)
        self._dicomweb.set_http_retry_params(retry=False)  # retried here, once, with the same policy as REST calls

    def changes(self, since: int, limit: int = CHANGES_PAGE) -> dict[str, Any]:
        """Orthanc's change log after `since`: ``{"Changes": [{...}, ...], "Done": bool, "Last": int}``."""
        return self._json("GET", "/changes", _changes_page, params={"since": since, "limit": limit})

    def series(self, series_id: str) -> dict[str, Any] | None:
        """A series (ID, Instances, MainDicomTags, ParentStudy), or None once it is deleted."""
        return self._json_or_none(f"/series/{_path_id(series_id)}", _series_in_study)

    def study(self, study_id: str) -> dict[str, Any] | None:
        return self._json_or_none(f"/studies/{_path_id(study_id)}", _object)

    def study_of_instance(self, instance_id: str) -> str | None:
        """The Orthanc ID of an instance's study, or None once the instance is deleted."""
        study = self._json_or_none(f"/instances/{_path_id(instance_id)}/study", _with_id)
        return None if study is None else study["ID"]

    def study_series(self, study_id: str) -> list[dict[str, Any]]:
        """Every series of a study, expanded (ID, Instances, MainDicomTags)."""
        return self._json("GET", f"/studies/{_path_id(study_id)}/series", _series_list)

    def instance_file(self, instance_id: str) -> bytes:
        """The instance's DICOM file; `AnswerTooLargeError` past `PacsSyncConfig.max_instance_bytes`."""
        return self._request("GET", f"/instances/{_path_id(instance_id)}/file").content

    def sync_record(self, study_id: str) -> dict[str, Any] | None:
        """Our record on a study, or None if the study was never processed."""
        response = self._request("GET", f"/studies/{_path_id(study_id)}/metadata/{SYNC_METADATA}", allow=(404,))
        if response.status_code == 404:
            return None
        try:
            record = json.loads(response.text)
        except (ValueError, RecursionError):  # not JSON, an integer past Python's digit limit, nesting too deep
            return {"status": "unreadable"}  # written by someone else: processed again, and overwritten
        return record if isinstance(record, dict) else {"status": "unreadable"}

    def write_sync_record(self, study_id: str, record: dict[str, Any]) -> None:
        """Write our record on a study; when Orthanc says the metadata name is unknown, the error says what to declare.

        Only then: a network error or a deleted study (404 "Unknown resource") is not a configuration problem.
        """
        try:
            self._request("PUT", f"/studies/{_path_id(study_id)}/metadata/{SYNC_METADATA}", data=json.dumps(record))
        except OrthancError as error:
            if error.status != 404 or error.orthanc_status != INEXISTENT_ITEM:
                raise
            raise OrthancError(
                f"{error}; Orthanc must declare the user-defined metadata {SYNC_METADATA!r} in its configuration, "
                f'e.g. "UserMetadata": {{"{SYNC_METADATA}": 4600}}',
                error.status,
                error.orthanc_status,
            ) from error

    def our_result_series(self, study_id: str, recorded: Collection[str] = ()) -> dict[str, str]:
        """The SEG and SR series pacs-sync stored in one Orthanc study (`stored_by_sync`, `recorded` being the Series
        Instance UIDs the study's record names): Orthanc ID -> Series Instance UID.

        Listed from that study, never searched by Study Instance UID: Orthanc keys a study by Patient ID and Study
        Instance UID, so two patients' studies may share the UID, and the other patient's results are not ours.
        """
        found: dict[str, str] = {}
        for series in self.study_series(study_id):
            tags = series["MainDicomTags"]
            if stored_by_sync(tags, recorded):
                found[series["ID"]] = str(tags.get("SeriesInstanceUID", ""))
        return found

    def delete_our_series_by_uid(self, series_instance_uid: str) -> int:
        """Delete the series this service made with a Series Instance UID, in whichever study they landed.

        Only for a UID pacs-sync made (`app.result_uids`, origin "pacs-sync": nobody else's series can carry it, so
        the UID, not the StationName, says they are its own); returns how many.
        """
        query = {"Level": "Series", "Query": {"SeriesInstanceUID": series_instance_uid}, "Expand": True}
        deleted = 0
        for series in self._json("POST", "/tools/find", _series_list, json=query):
            if series["MainDicomTags"].get("Manufacturer") == MANUFACTURER:
                self.delete_series(series["ID"])
                deleted += 1
        return deleted

    def delete_series(self, series_id: str) -> None:
        self._request("DELETE", f"/series/{_path_id(series_id)}", allow=(404,))  # already gone is as good

    def store(self, dataset: Dataset) -> None:
        """STOW-RS one instance to the DICOMweb root."""
        self._retry(lambda: self._dicomweb.store_instances([dataset]), f"STOW-RS to {self.config.dicomweb_url}")

    def _json(self, method: str, path: str, shape: Callable[[Any, str], T], **kwargs: Any) -> T:
        """The answer's JSON body as `shape` checks it; a body that is not is retried like a 5xx answer."""
        what = f"{method} {path}"
        return self._retry(lambda: shape(_json_body(self._send(method, path, (), **kwargs), what), what), what)

    def _json_or_none(self, path: str, shape: Callable[[Any, str], T]) -> T | None:
        """As `_json` for a GET, or None when the resource is gone (404)."""
        what = f"GET {path}"

        def call() -> T | None:
            response = self._send("GET", path, (404,))
            return None if response.status_code == 404 else shape(_json_body(response, what), what)

        return self._retry(call, what)

    def _request(self, method: str, path: str, allow: Sequence[int] = (), **kwargs: Any) -> requests.Response:
        return self._retry(lambda: self._send(method, path, allow, **kwargs), f"{method} {path}")

    def _send(self, method: str, path: str, allow: Sequence[int], **kwargs: Any) -> requests.Response:
        """One try: the answer, or `requests.HTTPError` for a status that is neither 2xx nor in `allow`."""
        response = self.session.request(
            method, f"{self.config.base_url}{path}", timeout=self.config.timeout_seconds, **kwargs
        )
        if response.status_code not in allow:
            response.raise_for_status()
        return response

    def _retry(self, call: Callable[[], T], what: str) -> T:
        attempts = self.config.retries + 1
        for attempt in range(attempts):
            try:
                return call()
            except requests.HTTPError as error:
                status = error.response.status_code if error.response is not None else None
                if status not in RETRY_STATUSES or attempt == attempts - 1:
                    code = _orthanc_status(error.response)
                    raise OrthancError(f"{what} failed with HTTP {status}", status, code) from error
                reason = f"HTTP {status}"
            except (requests.ConnectionError, requests.Timeout) as error:
                if attempt == attempts - 1:
                    raise OrthancError(
                        f"{what} at {self.config.server} failed after {attempts} attempts: {type(error).__name__}"
                    ) from error
                reason = type(error).__name__
            except OrthancAnswerError as error:
                if attempt == attempts - 1:
                    raise OrthancAnswerError(f"{error} ({attempts} attempts)") from error
                reason = "unexpected answer body"
            except requests.JSONDecodeError:  # dicomweb_client's: a JSON media type on a body that is not JSON
                if attempt == attempts - 1:
                    # from None: the decoder's error holds the whole body
                    raise OrthancAnswerError(f"{what} answered a body that is not JSON ({attempts} attempts)") from None
                reason = "unexpected answer body"
            except requests.RequestException as error:  # a redirect loop, a bad header: the loop must not die of it
                raise OrthancError(f"{what} at {self.config.server} failed: {type(error).__name__}") from None
            delay = doubling_wait(self.config.backoff_seconds, attempt)
            logger.warning("orthanc call failed, retrying", extra={"fields": {"call": what, "reason": reason}})
            self._sleep(delay)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _check_answer(self, response: requests.Response, *args: Any, **kwargs: Any) -> requests.Response:
        """Session hook, run on each answer before requests reads its body or follows a redirect.

        A redirect to another server is refused (`ForeignRedirectError`): requests would strip the credentials but
        send a 307's body, and trust the other server's answer. The body is read here within its limit
        (`_answer_limit`) and what is left of `PacsSyncConfig.answer_seconds`, so neither a huge
        answer nor one that trickles in forever can hold the sync.
        """
        if response.is_redirect:
            location = urljoin(response.url, response.headers["Location"])
            target = _origin(location)
            if _endpoint(location) != _endpoint(self.config.orthanc_url):
                response.close()
                raise ForeignRedirectError(
                    f"{_call(response)} was redirected to {target}; pacs-sync follows redirects only within "
                    f"{self.config.server}: set ORTHANC_URL to the address Orthanc answers at",
                    response.status_code,
                )
        seconds_left = self.config.answer_seconds - response.elapsed.total_seconds()
        response._content = _read_body(response, _answer_limit(response, self.config), seconds_left)
        response._content_consumed = True
        return response


def _answer_limit(response: requests.Response, config: PacsSyncConfig) -> int:
    """The most bytes read of an answer: an instance's DICOM file (`OrthancClient.instance_file`) may be a large
    multi-frame object, a JSON answer never needs as much."""
    is_file = urlsplit(response.url).path.endswith("/file")
    return config.max_instance_bytes if is_file else config.max_answer_bytes


_ORTHANC_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")


def _path_id(value: str) -> str:
    """An Orthanc resource ID for a URL path. Orthanc's are hex and dashes; one with other characters (``../``,
    ``?``, ``#``, ``%2F``) would steer the request elsewhere (``DELETE /series/../studies/x``): a hostile or broken
    answer, refused."""
    if not _ORTHANC_ID.fullmatch(value):
        raise OrthancAnswerError(
            "Orthanc named a resource by an ID that is not one (characters other than letters, digits, dashes)"
        )
    return value


def _read_body(response: requests.Response, max_bytes: int, seconds: float) -> bytes:
    """The answer's body, read as it arrives; `AnswerTooLargeError` past `max_bytes`, `AnswerTooSlowError` past
    `seconds`. Network errors mid-body become `requests.ConnectionError`, retried like the others."""
    declared = response.headers.get("Content-Length", "")
    body = bytearray()
    deadline = time.monotonic() + seconds
    try:
        if declared.isdigit() and int(declared) > max_bytes:
            raise AnswerTooLargeError(
                f"{_call(response)} answered {declared} bytes; at most {max_bytes} are read", response.status_code
            )
        while chunk := response.raw.read1(READ_CHUNK, decode_content=True):
            body += chunk
            if len(body) > max_bytes:
                raise AnswerTooLargeError(
                    f"{_call(response)} answered more than {max_bytes} bytes; cut off there", response.status_code
                )
            if time.monotonic() > deadline:
                raise AnswerTooSlowError(f"{_call(response)}: answer not complete within {seconds:.0f} s")
    except urllib3.exceptions.HTTPError as error:  # cut mid-body, a read timeout, a bad compressed stream
        response.close()
        raise requests.ConnectionError(f"{_call(response)}: {type(error).__name__} while reading the answer") from None
    except BaseException:
        response.close()  # drops the connection: the rest of the body is never read
        raise
    response.raw.release_conn()
    return bytes(body)


def stored_by_sync(tags: dict[str, Any], recorded: Collection[str] = ()) -> bool:
    """Whether a series' main DICOM tags are those of a result pacs-sync stored: the service's SEG or SR with
    `SYNC_STATION_NAME`, or one whose Series Instance UID is in `recorded` (a study's record names the results stored
    before pacs-sync marked them). The DICOM node's results, delivered to the same Orthanc, are neither."""
    if tags.get("Modality") not in RESULT_MODALITIES or tags.get("Manufacturer") != MANUFACTURER:
        return False
    return tags.get("StationName") == SYNC_STATION_NAME or str(tags.get("SeriesInstanceUID", "")) in recorded


def _orthanc_status(response: requests.Response | None) -> int | None:
    """The error code of Orthanc's JSON error body (``"OrthancStatus"``), or None for any other body; only that
    number is read, since the body's other fields may quote the request."""
    try:
        code = response.json().get("OrthancStatus") if response is not None else None
    except (ValueError, RecursionError, AttributeError):  # not JSON, or JSON that is not an object
        return None
    return code if isinstance(code, int) and not isinstance(code, bool) else None


def _call(response: requests.Response) -> str:
    """``METHOD /path`` of an answer's request, for messages (never the host's user information or the body)."""
    request = response.request
    return f"{request.method} {urlsplit(request.url or '').path}"


def _endpoint(url: str) -> tuple[str, str | None, int | None]:
    """Scheme, host and port of a URL, the port filled in when it is the scheme's default: what is one server."""
    parts = urlsplit(url)
    return parts.scheme, parts.hostname, parts.port or {"http": 80, "https": 443}.get(parts.scheme)


def _origin(url: str) -> str:
    """Scheme, host and port of a URL (the port only when it says one): what may see the credentials."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")


def _json_body(response: requests.Response, what: str) -> Any:
    """The answer's JSON, or `OrthancAnswerError` naming its status and media type (never its content)."""
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


def _object(body: Any, what: str) -> dict[str, Any]:
    return _expect(body, dict, what)


def _with_id(body: Any, what: str) -> dict[str, Any]:
    _require(_object(body, what), "ID", str, what)
    return body


def _changes_page(body: Any, what: str) -> dict[str, Any]:
    page = _object(body, what)
    _require(page, "Done", bool, what)
    if _require(page, "Last", int, what) < 0:
        raise OrthancAnswerError(f"{what} 'Last' answered a negative change number")
    for change in _require(page, "Changes", list, what):
        _object(change, f"{what} change")
    return page


def _series(body: Any, what: str) -> dict[str, Any]:
    """An expanded series as pacs-sync reads it: ``ID`` (str), ``Instances`` (list of str), ``MainDicomTags``."""
    series = _with_id(body, what)
    for instance in _require(series, "Instances", list, what):
        _expect(instance, str, f"{what} instance")
    _require(series, "MainDicomTags", dict, what)
    return series


def _series_in_study(body: Any, what: str) -> dict[str, Any]:
    _require(_series(body, what), "ParentStudy", str, what)
    return body


def _series_list(body: Any, what: str) -> list[dict[str, Any]]:
    return [_series(item, f"{what} series") for item in _expect(body, list, what)]


def _json_kind(value: Any) -> str:
    """The JSON name of a value's type, or of a type: what an error may say about a body without quoting it."""
    kind = value if isinstance(value, type) else type(value)
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "an integer"}
    if kind is type(None):
        return "null"
    return names.get(kind, "a number" if kind is float else kind.__name__)
