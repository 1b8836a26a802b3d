"""The few REST and DICOMweb calls pacs-sync makes to Orthanc (`OrthancClient`), each retried with exponential backoff
on network errors, 429/5xx answers and answers whose body is not the JSON the call expects (a proxy's HTML page, say).
Where Orthanc is and how often to retry: `app.pacs.pacs_sync_config.PacsSyncConfig`; how an answer's body is read within
its limits: `app.pacs.orthanc_http`; the shapes answers must have: `app.pacs.orthanc_answers`.

Every answer is checked against the shape the caller relies on before it is returned, so a wrong one is an
`OrthancError` (`app.pacs.orthanc_errors`) here, never a `KeyError` or a `JSONDecodeError` deep in the sync loop.

What to do with the series is `app.pacs.pacs_sync`'s job; nothing here predicts.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Collection, Sequence
from datetime import datetime
from typing import Any, TypeVar
from urllib.parse import urljoin, urlsplit

import requests
from dicomweb_client import DICOMwebClient
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from app.backoff import doubling_wait
from app.dicom.result_uids import MANUFACTURER
from app.pacs.answer_deadline import AnswerDeadlineAdapter
from app.pacs.orthanc_answers import (
    changes_page,
    instance_in_series,
    json_body,
    json_object,
    orthanc_status,
    orthanc_time,
    resource_list,
    series_in_study,
    series_list,
    study_answer,
)
from app.pacs.orthanc_errors import ForeignRedirectError, OrthancAnswerError, OrthancError, StoreRefusedError
from app.pacs.orthanc_http import endpoint, origin, read_body, request_line
from app.pacs.pacs_sync_config import PacsSyncConfig

logger = logging.getLogger(__name__)

SYNC_METADATA = "BrainTumorSync"
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
CHANGES_PAGE = 100
RESULT_MODALITIES = frozenset({"SEG", "SR"})
# StationName of the SEG and SR pacs-sync stores: the DICOM node's results carry the same Manufacturer but not this,
# so pacs-sync supersedes (deletes) only its own. At most 16 characters (VR SH).
SYNC_STATION_NAME = "BT-PACS-SYNC"
INEXISTENT_ITEM = 7  # Orthanc's error code ("OrthancStatus") for a metadata name it does not declare, among others

T = TypeVar("T")


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

    def system(self) -> dict[str, Any]:
        """Orthanc's ``/system`` (its name and version): a cheap call that tells whether Orthanc answers at the URL
        given and takes the credentials."""
        return self._json("GET", "/system", json_object)

    def changes(self, since: int, limit: int = CHANGES_PAGE) -> dict[str, Any]:
        """Orthanc's change log after `since`: ``{"Changes": [{...}, ...], "Done": bool, "Last": int}``."""
        return self._json("GET", "/changes", changes_page, params={"since": since, "limit": limit})

    def last_change(self) -> int:
        """The number of the latest change in Orthanc's log (``/changes?last``): a page of `changes` that is not the
        last says only where it ends."""
        return int(self._json("GET", "/changes", changes_page, params={"last": ""})["Last"])

    def now(self) -> datetime:
        """Orthanc's clock (``/tools/now``, UTC, the form of its ``LastUpdate``), so that an age is measured on one
        clock whatever this machine's says."""
        text = self._request("GET", "/tools/now").text.strip()
        try:
            return orthanc_time(text)
        except ValueError as error:
            raise OrthancAnswerError("GET /tools/now answered no time in Orthanc's form (YYYYMMDDTHHMMSS)") from error

    def series(self, series_id: str) -> dict[str, Any] | None:
        """A series (ID, Instances, MainDicomTags, ParentStudy), or None once it is deleted."""
        return self._json_or_none(f"/series/{_path_id(series_id)}", series_in_study)

    def study(self, study_id: str) -> dict[str, Any] | None:
        return self._json_or_none(f"/studies/{_path_id(study_id)}", json_object)

    def series_id_of_instance(self, instance_id: str) -> str | None:
        """The Orthanc ID of an instance's series (its ``ParentSeries``), or None once the instance is deleted.

        Read from the instance's own small answer: ``/instances/<id>/series`` lists every instance of the series,
        so asking it for each instance of a series of N cost N^2 bytes (attack review 46 F4). Tried once: a change
        whose lookup fails waits for the next pass (`app.pacs.pacs_sync`), where the retries' backoff, 7.5 s each,
        held a pass for 7.5 s per instance of a study while Orthanc failed such lookups (attack review 57 F3)."""
        instance = self._json_or_none(f"/instances/{_path_id(instance_id)}", instance_in_series, retried=False)
        return None if instance is None else str(instance["ParentSeries"])

    def study_series(self, study_id: str) -> list[dict[str, Any]]:
        """Every series of a study, expanded (ID, Instances, MainDicomTags)."""
        return self._json("GET", f"/studies/{_path_id(study_id)}/series", series_list)

    def instance_file(self, instance_id: str) -> bytes:
        """The instance's DICOM file; `AnswerTooLargeError` past `PacsSyncConfig.max_instance_bytes`."""
        return self._request("GET", f"/instances/{_path_id(instance_id)}/file").content

    def uncompressed_instance_file(self, instance_id: str) -> bytes:
        """The instance's DICOM file transcoded by Orthanc to Explicit VR Little Endian, its UIDs kept, without storing
        anything (``/modify`` of one instance answers the file): for a transfer syntax Orthanc decodes and this
        service does not (12-bit JPEG Extended, JPEG progressive). Same size limit as `instance_file`."""
        body = {"Transcode": ExplicitVRLittleEndian, "Keep": ["SOPInstanceUID"], "Force": True}
        return self._request("POST", f"/instances/{_path_id(instance_id)}/modify", json=body).content

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

    def other_studies_of_uid(self, study_id: str, study_instance_uid: str) -> list[dict[str, Any]]:
        """The Orthanc studies other than `study_id` with its Study Instance UID (each as `GET /studies/<id>`
        answers it): Orthanc keys a study by Patient ID and Study Instance UID, so the files of one study with two
        Patient IDs (one left empty) are two of them. One lookup, and nothing more when there is no other."""
        found = self._json("POST", "/tools/lookup", resource_list, data=study_instance_uid)
        others = [item["ID"] for item in found if item.get("Type") == "Study" and item["ID"] != study_id]
        return [study for other in others if (study := self._json_or_none(f"/studies/{_path_id(other)}", study_answer))]

    def studies_of_series_uid(self, series_instance_uid: str) -> set[str]:
        """The Orthanc studies holding a series of this Series Instance UID (one, unless the series came with two
        Patient IDs or two Study Instance UIDs)."""
        query = {"Level": "Series", "Query": {"SeriesInstanceUID": series_instance_uid}, "Expand": True}
        return {str(series["ParentStudy"]) for series in self._json("POST", "/tools/find", series_list, json=query)}

    def delete_our_series_by_uid(self, series_instance_uid: str) -> int:
        """Delete the series this service made with a Series Instance UID, in whichever study they landed.

        Only for a UID pacs-sync made (`app.dicom.result_uids`, origin "pacs-sync": nobody else's series can carry it,
        so the UID, not the StationName, says they are its own); returns how many.
        """
        query = {"Level": "Series", "Query": {"SeriesInstanceUID": series_instance_uid}, "Expand": True}
        deleted = 0
        for series in self._json("POST", "/tools/find", series_list, json=query):
            if series["MainDicomTags"].get("Manufacturer") == MANUFACTURER:
                self.delete_series(series["ID"])
                deleted += 1
        return deleted

    def delete_series(self, series_id: str) -> None:
        self._request("DELETE", f"/series/{_path_id(series_id)}", allow=(404,))  # already gone is as good

    def store(self, dataset: Dataset) -> None:
        """STOW-RS one instance to the DICOMweb root.

        Raises
        ------
        StoreRefusedError
            When the answer, though 2xx, lists the instance as failed (PS3.18 10.5.3: Failed SOP Sequence): a Lua
            filter of Orthanc's refused it, and counted as stored it was later taken for a result that landed elsewhere
            (attack review 37).
        """
        what = f"STOW-RS to {self.config.dicomweb_url}"
        answer = self._retry(lambda: self._dicomweb.store_instances([dataset]), what)
        failed = answer.get("FailedSOPSequence") if answer is not None else None
        if failed:
            reasons = sorted({f"0x{int(item.FailureReason):04X}" for item in failed if item.get("FailureReason")})
            raise StoreRefusedError(
                f"{what} refused the instance (Failure Reason {', '.join(reasons) or 'not given'}); not stored"
            )

    def _json(self, method: str, path: str, shape: Callable[[Any, str], T], **kwargs: Any) -> T:
        """The answer's JSON body as `shape` checks it; a body that is not is retried like a 5xx answer."""
        what = f"{method} {path}"
        return self._retry(lambda: shape(json_body(self._send(method, path, (), **kwargs), what), what), what)

    def _json_or_none(self, path: str, shape: Callable[[Any, str], T], retried: bool = True) -> T | None:
        """As `_json` for a GET, or None when the resource is gone (404); tried once unless `retried`."""
        what = f"GET {path}"

        def call() -> T | None:
            response = self._send("GET", path, (404,))
            return None if response.status_code == 404 else shape(json_body(response, what), what)

        return self._retry(call, what, attempts=None if retried else 1)

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

    def _retry(self, call: Callable[[], T], what: str, attempts: int | None = None) -> T:
        """`call` until it answers, tried `attempts` times (default: `PacsSyncConfig.retries` + 1) with backoff."""
        attempts = attempts or self.config.retries + 1
        for attempt in range(attempts):
            try:
                return call()
            except requests.HTTPError as error:
                status = error.response.status_code if error.response is not None else None
                if status not in RETRY_STATUSES or attempt == attempts - 1:
                    code = orthanc_status(error.response)
                    raise OrthancError(f"{what} failed with HTTP {status}", status, code) from error
                reason = f"HTTP {status}"
            except (requests.ConnectionError, requests.Timeout) as error:
                reason = network_failure(error)
                if attempt == attempts - 1:
                    raise OrthancError(
                        f"{what} at {self.config.server} failed after {attempts} attempts: {reason}"
                    ) from error
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
            target = origin(location)
            if endpoint(location) != endpoint(self.config.orthanc_url):
                response.close()
                raise ForeignRedirectError(
                    f"{request_line(response)} was redirected to {target}; pacs-sync follows redirects only within "
                    f"{self.config.server}: set ORTHANC_URL to the address Orthanc answers at",
                    response.status_code,
                )
        seconds_left = self.config.answer_seconds - response.elapsed.total_seconds()
        response._content = read_body(response, _answer_limit(response, self.config), seconds_left)
        response._content_consumed = True
        return response


def network_failure(error: requests.RequestException) -> str:
    """What failed, by the error's class; for a TLS certificate that is not trusted, also how to trust it: a hospital's
    https:// Orthanc usually has a certificate of a private CA, and a bare "SSLError" said neither (docs review 45
    F1). Only the class and this fixed text: the error's own text holds the URL."""
    if isinstance(error, requests.exceptions.SSLError) and "CERTIFICATE_VERIFY_FAILED" in str(error):
        return "SSLError (certificate verify failed; trust a private CA with REQUESTS_CA_BUNDLE=<its PEM file>)"
    return type(error).__name__


CHANGES_ANSWER_BYTES = 1024 * 1024
"""Most bytes read of a page of the change log: `CHANGES_PAGE` changes of a few short fields each need far less, and
a 20 MiB page of empty items took 550 MiB of memory once parsed (attack review 57 F4)."""


def _answer_limit(response: requests.Response, config: PacsSyncConfig) -> int:
    """The most bytes read of an answer: an instance's DICOM file (`OrthancClient.instance_file`) may be a large
    multi-frame object, a JSON answer never needs as much, and a page of the change log far less."""
    path = urlsplit(response.url).path
    if path.endswith("/file"):
        return config.max_instance_bytes
    return min(config.max_answer_bytes, CHANGES_ANSWER_BYTES) if path.endswith("/changes") else config.max_answer_bytes


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


def stored_by_sync(tags: dict[str, Any], recorded: Collection[str] = ()) -> bool:
    """Whether a series' main DICOM tags are those of a result pacs-sync stored: the service's SEG or SR with
    `SYNC_STATION_NAME`, or one whose Series Instance UID is in `recorded` (a study's record names the results stored
    before pacs-sync marked them). The DICOM node's results, delivered to the same Orthanc, are neither."""
    if tags.get("Modality") not in RESULT_MODALITIES or tags.get("Manufacturer") != MANUFACTURER:
        return False
    return tags.get("StationName") == SYNC_STATION_NAME or str(tags.get("SeriesInstanceUID", "")) in recorded
