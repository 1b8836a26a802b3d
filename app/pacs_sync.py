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
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from app.dicom_seg import software_version
from app.errors import ServiceError, error_body
from app.inference import Predictor
from app.model_runners import predictor_runner
from app.orthanc_client import SYNC_METADATA, OrthancClient, OrthancError, PacsSyncConfig
from app.prediction import PredictionService
from app.uploads import UploadLimits

__all__ = ["SYNC_METADATA", "OrthancClient", "OrthancError", "PacsSyncConfig", "SyncReport", "run_pacs_sync"]

logger = logging.getLogger(__name__)

STATUS_POSITIVE = "positive"
STATUS_NEGATIVE = "negative"
STATUS_FAILED = "failed"

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
        print(json.dumps(error_body("invalid_configuration", str(error))))
        return 2
    predictor = Predictor.from_model_dir(args.model_dir or settings.model_dir, runtime=settings.inference_runtime)
    predictor.warm_up()
    try:
        report = run_pacs_sync(config, predictor, once=args.once)
    except OrthancError as error:
        print(json.dumps(error_body("orthanc_unavailable", str(error))))
        return 1
    except KeyboardInterrupt:
        return 0
    print(json.dumps(report.as_dict()))
    return 0
