"""`brain-tumor pacs-sync`: segment the MR series an Orthanc PACS holds and store DICOM SEGs back into it.

One pass:

1. list MR series (Orthanc REST ``/tools/find``; optionally only those whose Series Description matches a wildcard),
   skipping series Orthanc does not yet call stable (instances may still be arriving) and series already recorded;
2. fetch each remaining series' instances (``/instances/{id}/file``) and predict them as one series through the
   prediction flow the API uses (`app.prediction`; each MR series alone, as FLAIR);
3. when the classifier is positive on at least one slice, that flow builds one SEG for the series, which is stored
   with DICOMweb STOW-RS (Orthanc's DICOMweb plugin, through dicomweb-client);
4. record the outcome on the source series as Orthanc user-defined metadata `SYNC_METADATA` (a JSON object: positive,
   negative or failed, the models, the SEG's SOP Instance UID).

The record lives in Orthanc, so a restart neither repeats nor skips work. It is written after the SEG is stored; if
the process dies between the two, the next pass finds our SEG referencing the series and writes the record instead
of a second SEG. Orthanc must declare the metadata name, e.g. ``"UserMetadata": {"BrainTumorSync": 4600}`` in its
configuration (``ORTHANC__USER_METADATA`` in the orthancteam Docker image).

Network errors and 429/5xx answers are retried with exponential backoff; a series that still fails is logged and
the pass goes on with the next. A series whose DICOM the service refuses (an `app.errors.ServiceError`) is recorded
as failed so it is not fetched again every pass. Logs name series by their Orthanc ID (a hash), never by DICOM tags.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar

import requests
from dicomweb_client import DICOMwebClient
from pydicom.dataset import Dataset

from app.dicom_input import DEFAULT_MAX_DICOM_PIXELS
from app.dicom_seg import MANUFACTURER, software_version
from app.errors import ServiceError
from app.inference import Predictor
from app.prediction import PredictionService, predictor_runner
from app.uploads import UploadLimits

logger = logging.getLogger(__name__)

SYNC_METADATA = "BrainTumorSync"
DICOMWEB_ROOT = "dicom-web"
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
STATUS_POSITIVE = "positive"
STATUS_NEGATIVE = "negative"
STATUS_FAILED = "failed"

T = TypeVar("T")


class OrthancError(RuntimeError):
    """An Orthanc call failed: a non-retryable answer, or a retryable one that outlived every retry."""


class SettingsLike(Protocol):
    """The fields of `app.settings.Settings` that pacs-sync reads."""

    orthanc_url: str
    orthanc_username: str | None
    orthanc_password: Any  # str, pydantic SecretStr or None
    pacs_series_filter: str
    pacs_poll_seconds: float
    max_dicom_pixels: int
    model_dir: Path
    inference_runtime: str


@dataclass(frozen=True)
class PacsSyncConfig:
    """Where the PACS is and how to talk to it.

    Attributes
    ----------
    orthanc_url
        Orthanc's base URL (REST API root), e.g. ``http://127.0.0.1:8042``; DICOMweb is under ``/dicom-web``.
    username, password
        HTTP basic authentication; None for an Orthanc without authentication.
    series_filter
        Orthanc wildcard on Series Description (case-insensitive, ``*`` and ``?``), e.g. ``*FLAIR*``; empty for every
        MR series. Worth setting: the models read FLAIR, and other sequences give meaningless SEGs.
    poll_seconds
        Pause between passes when not running once.
    max_image_pixels
        Largest rows x columns x frames accepted per instance (as for uploads).
    retries, backoff_seconds
        Retries after the first try of each HTTP call, waiting backoff x 2^attempt seconds in between.
    timeout_seconds
        Per HTTP call.
    batch_size
        Slices per model call, to bound memory on long series.
    require_stable
        Process a series only once Orthanc calls it stable (no new instance for its StableAge), so a SEG never
        covers half a series.
    """

    orthanc_url: str
    username: str | None = None
    password: str | None = None
    series_filter: str = ""
    poll_seconds: float = 30.0
    max_image_pixels: int = DEFAULT_MAX_DICOM_PIXELS
    retries: int = 4
    backoff_seconds: float = 0.5
    timeout_seconds: float = 30.0
    batch_size: int = 32
    require_stable: bool = True

    def __post_init__(self) -> None:
        if not self.orthanc_url.startswith(("http://", "https://")):
            raise ValueError(f"orthanc_url must start with http:// or https://; got {self.orthanc_url!r}")
        if self.retries < 0 or self.backoff_seconds < 0 or self.timeout_seconds <= 0 or self.batch_size < 1:
            raise ValueError(
                "retries and backoff_seconds must be >= 0, timeout_seconds > 0 and batch_size >= 1; got "
                f"{self.retries}, {self.backoff_seconds}, {self.timeout_seconds}, {self.batch_size}"
            )

    @property
    def base_url(self) -> str:
        return self.orthanc_url.rstrip("/")

    @property
    def dicomweb_url(self) -> str:
        return f"{self.base_url}/{DICOMWEB_ROOT}"


@dataclass
class SyncReport:
    """Counts of one or more passes, by outcome."""

    positive: int = 0
    negative: int = 0
    failed: int = 0
    already_done: int = 0
    not_stable: int = 0

    def add(self, other: SyncReport) -> None:
        for name, value in asdict(other).items():
            setattr(self, name, getattr(self, name) + value)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


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
        self._dicomweb = DICOMwebClient(url=config.dicomweb_url, session=self.session, timeout=config.timeout_seconds)
        self._dicomweb.set_http_retry_params(retry=False)  # retried here, once, with the same policy as REST calls

    def find_series(self) -> list[dict[str, Any]]:
        """MR series (expanded: ID, IsStable, MainDicomTags, ParentStudy), filtered by Series Description if set."""
        query = {"Modality": "MR"}
        if self.config.series_filter:
            query["SeriesDescription"] = self.config.series_filter
        return self._json("POST", "/tools/find", json={"Level": "Series", "Query": query, "Expand": True})

    def study_instance_uid(self, study_id: str) -> str:
        return str(self._json("GET", f"/studies/{study_id}")["MainDicomTags"]["StudyInstanceUID"])

    def instance_file(self, instance_id: str) -> bytes:
        return self._request("GET", f"/instances/{instance_id}/file").content

    def sync_record(self, series_id: str) -> dict[str, Any] | None:
        """Our record on a series, or None if the series was never processed."""
        response = self._request("GET", f"/series/{series_id}/metadata/{SYNC_METADATA}", allow=(404,))
        if response.status_code == 404:
            return None
        try:
            return json.loads(response.text)
        except json.JSONDecodeError:
            return {"status": "unreadable"}  # written by someone else: still counts as processed, never redone

    def write_sync_record(self, series_id: str, record: dict[str, Any]) -> None:
        try:
            self._request("PUT", f"/series/{series_id}/metadata/{SYNC_METADATA}", data=json.dumps(record))
        except OrthancError as error:
            raise OrthancError(
                f"{error}; Orthanc must declare the user-defined metadata {SYNC_METADATA!r} in its configuration, "
                f'e.g. "UserMetadata": {{"{SYNC_METADATA}": 4600}}'
            ) from error

    def find_our_segmentation(self, study_instance_uid: str, series_instance_uid: str) -> str | None:
        """SOP Instance UID of a SEG made by this service that references the series, if Orthanc holds one."""
        query = {"StudyInstanceUID": study_instance_uid, "Modality": "SEG"}
        for instance_id in self._json("POST", "/tools/find", json={"Level": "Instance", "Query": query}):
            tags = self._json("GET", f"/instances/{instance_id}/simplified-tags")
            referenced = {item.get("SeriesInstanceUID") for item in tags.get("ReferencedSeriesSequence", [])}
            if tags.get("Manufacturer") == MANUFACTURER and series_instance_uid in referenced:
                return str(tags.get("SOPInstanceUID"))
        return None

    def store(self, dataset: Dataset) -> None:
        """STOW-RS one instance to the DICOMweb root."""
        self._retry(lambda: self._dicomweb.store_instances([dataset]), f"STOW-RS to {self.config.dicomweb_url}")

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self._request(method, path, **kwargs).json()

    def _request(self, method: str, path: str, allow: Sequence[int] = (), **kwargs: Any) -> requests.Response:
        url = f"{self.config.base_url}{path}"

        def call() -> requests.Response:
            response = self.session.request(method, url, timeout=self.config.timeout_seconds, **kwargs)
            if response.status_code not in allow:
                response.raise_for_status()
            return response

        return self._retry(call, f"{method} {path}")

    def _retry(self, call: Callable[[], T], what: str) -> T:
        attempts = self.config.retries + 1
        for attempt in range(attempts):
            try:
                return call()
            except requests.HTTPError as error:
                status = error.response.status_code if error.response is not None else None
                if status not in RETRY_STATUSES or attempt == attempts - 1:
                    raise OrthancError(f"{what} failed with HTTP {status}") from error
                reason = f"HTTP {status}"
            except (requests.ConnectionError, requests.Timeout) as error:
                if attempt == attempts - 1:
                    raise OrthancError(f"{what} failed after {attempts} attempts: {type(error).__name__}") from error
                reason = type(error).__name__
            delay = self.config.backoff_seconds * 2**attempt
            logger.warning("orthanc call failed, retrying", extra={"fields": {"call": what, "reason": reason}})
            self._sleep(delay)
        raise AssertionError("unreachable: the last attempt returns or raises")


def run_pacs_sync(
    config: PacsSyncConfig,
    predictor: Predictor,
    once: bool = False,
    client: OrthancClient | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> SyncReport:
    """Run passes until interrupted (or a single one with `once`); return the counts of all passes.

    Raises
    ------
    OrthancError
        With `once`, if the series cannot be listed (Orthanc unreachable, wrong credentials). Without it, such a
        pass is logged and tried again after `config.poll_seconds`.
    """
    client = client or OrthancClient(config, sleep=sleep)
    total = SyncReport()
    while True:
        try:
            total.add(sync_once(client, predictor))
        except OrthancError as error:
            if once:
                raise
            logger.error("pacs-sync pass failed", extra={"fields": {"error": str(error)}})
        if once:
            return total
        sleep(config.poll_seconds)


def sync_once(client: OrthancClient, predictor: Predictor) -> SyncReport:
    """One pass over the MR series; a series that fails is logged and counted, and the pass goes on."""
    report = SyncReport()
    for series in client.find_series():
        series_id = str(series["ID"])
        if client.config.require_stable and not series.get("IsStable", False):
            report.not_stable += 1
            continue
        try:
            if client.sync_record(series_id) is not None:
                report.already_done += 1
                continue
            status = process_series(client, predictor, series)
        except OrthancError as error:  # transient or configuration: not recorded, so the next pass tries again
            report.failed += 1
            logger.error("series not processed", extra={"fields": {"orthanc_series": series_id, "error": str(error)}})
            continue
        except Exception:  # a bug must not stop the other series; logged with its traceback
            report.failed += 1
            logger.exception("series not processed", extra={"fields": {"orthanc_series": series_id}})
            continue
        if status == STATUS_POSITIVE:
            report.positive += 1
        elif status == STATUS_NEGATIVE:
            report.negative += 1
        else:
            report.failed += 1
    return report


def process_series(client: OrthancClient, predictor: Predictor, series: dict[str, Any]) -> str:
    """Segment one series, store its SEG if anything was found, record the outcome; return the status recorded."""
    series_id = str(series["ID"])
    series_uid = str(series["MainDicomTags"]["SeriesInstanceUID"])
    study_uid = client.study_instance_uid(str(series["ParentStudy"]))
    record: dict[str, Any] = {
        "models": predictor.model_tags,
        "service_version": software_version(),
        "processed_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    existing = client.find_our_segmentation(study_uid, series_uid)
    if existing is not None:  # stored by a pass that died before recording it
        record.update(status=STATUS_POSITIVE, seg_sop_instance_uid=existing, recovered=True)
        client.write_sync_record(series_id, record)
        logger.info("series already segmented", extra={"fields": {"orthanc_series": series_id}})
        return STATUS_POSITIVE
    service = PredictionService(
        predictor,
        predictor_runner(predictor, client.config.batch_size),
        UploadLimits(max_dicom_pixels=client.config.max_image_pixels),
        offload=False,
    )
    try:
        files = [client.instance_file(str(instance_id)) for instance_id in series["Instances"]]
        result = asyncio.run(service.predict_dicom(files, build_seg=True, strict=True)).result
    except ServiceError as error:  # the DICOM itself is refused: retrying would fail the same way
        record.update(status=STATUS_FAILED, error=error.to_dict())
        client.write_sync_record(series_id, record)
        logger.warning("series refused", extra={"fields": {"orthanc_series": series_id, "error_code": error.code}})
        return STATUS_FAILED
    positive_slices = sum(prediction.detected for prediction in result.predictions)
    record.update(slices=len(result.inputs), positive_slices=positive_slices)
    if result.segmentation is not None:
        client.store(result.segmentation)
        record.update(
            status=STATUS_POSITIVE,
            seg_sop_instance_uid=str(result.segmentation.SOPInstanceUID),
            tumor_volume_ml=result.tumor_volume_ml,
        )
    else:
        record.update(status=STATUS_NEGATIVE)
    client.write_sync_record(series_id, record)
    logger.info(
        "series processed",
        extra={"fields": {"orthanc_series": series_id, "status": record["status"], "slices": len(result.inputs)}},
    )
    return str(record["status"])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``brain-tumor pacs-sync``; unset ones come from the settings (environment)."""
    parser.add_argument("--orthanc", metavar="URL", help="Orthanc base URL (default: ORTHANC_URL)")
    parser.add_argument("--user", help="HTTP basic-auth user (default: ORTHANC_USERNAME)")
    parser.add_argument(
        "--password", help="HTTP basic-auth password (default: ORTHANC_PASSWORD; prefer it: arguments show in ps)"
    )
    parser.add_argument(
        "--series-filter", help="wildcard on Series Description, e.g. '*FLAIR*' (default: PACS_SERIES_FILTER)"
    )
    parser.add_argument("--poll-seconds", type=float, help="pause between passes (default: PACS_POLL_SECONDS)")
    parser.add_argument("--model-dir", help="folder with the exported models (default: MODEL_DIR)")
    parser.add_argument("--once", action="store_true", help="run one pass and exit")


def config_from_args(args: argparse.Namespace, settings: SettingsLike) -> PacsSyncConfig:
    """Command-line values where given, else the settings'."""
    password = args.password if args.password is not None else settings.orthanc_password
    if password is not None and hasattr(password, "get_secret_value"):
        password = password.get_secret_value()
    return PacsSyncConfig(
        orthanc_url=args.orthanc or settings.orthanc_url,
        username=args.user if args.user is not None else settings.orthanc_username,
        password=password,
        series_filter=args.series_filter if args.series_filter is not None else settings.pacs_series_filter,
        poll_seconds=args.poll_seconds if args.poll_seconds is not None else settings.pacs_poll_seconds,
        max_image_pixels=settings.max_dicom_pixels,
    )


def main(args: argparse.Namespace, settings: SettingsLike | None = None) -> int:
    """Entry point of ``brain-tumor pacs-sync``: load the models once, then sync; prints the counts as JSON.

    Returns 0 on success (also when interrupted), 1 when Orthanc cannot be reached with `--once`, 2 for a bad
    configuration.
    """
    from app.settings import get_settings  # imported here so that tests can pass their own settings

    settings = settings or get_settings()
    try:
        config = config_from_args(args, settings)
    except ValueError as error:
        print(json.dumps({"error": {"code": "invalid_configuration", "message": str(error)}}))
        return 2
    predictor = Predictor.from_model_dir(args.model_dir or settings.model_dir, runtime=settings.inference_runtime)
    predictor.warm_up()
    try:
        report = run_pacs_sync(config, predictor, once=args.once)
    except OrthancError as error:
        print(json.dumps({"error": {"code": "orthanc_unavailable", "message": str(error)}}))
        return 1
    except KeyboardInterrupt:
        return 0
    print(json.dumps(report.as_dict()))
    return 0
