"""What pacs-sync writes in a study's record (Orthanc metadata `app.pacs.orthanc_client.SYNC_METADATA`) and reads
back: its status, the fingerprints that tell whether the study changed, and the UIDs of the results it stored and of
the reports they supersede.

`app.pacs.pacs_study.StudySync` decides with these; here is only what a record holds and how it is read, so a
record written by an older version (or by hand) is either understood or processed again (`readable_record`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pydicom.dataset import Dataset

from app.dicom.dicom_sr import ResultReference
from app.dicom.instance_content import DEFAULT_MAX_COST_BYTES, content_digest

POSITIVE = "positive"
NEGATIVE = "negative"
NOT_ANALYSED = "not_analysed"
FAILED = "failed"
DONE_STATUSES = frozenset({POSITIVE, NEGATIVE, NOT_ANALYSED})
UNREADABLE = {"status": "unreadable"}  # a record pacs-sync did not write: the study is processed again
RESULT_SERIES_FIELDS = ("seg_series_instance_uid", "sr_series_instance_uid")
REPORT_REFERENCE_FIELDS = ("series_instance_uid", "sop_class_uid", "sop_instance_uid")


def readable_record(record: dict[str, Any] | None) -> dict[str, Any]:
    """The study's record if the fields this module reads have the types it writes them with, else an unreadable one.

    The metadata is writable by anyone with access to Orthanc; a record of the wrong shape (``"attempts": "n/a"``)
    is processed again and overwritten, like one that is not JSON, instead of stopping the sync at every pass.
    """
    if record is None:
        return {}
    if not isinstance(record, dict) or not isinstance(record.get("status"), str):
        return dict(UNREADABLE)
    if any(not isinstance(record.get(key, ""), str) for key in ("study_fingerprint", "input_fingerprint")):
        return dict(UNREADABLE)
    if not isinstance(record.get("models", {}), dict):
        return dict(UNREADABLE)
    attempts = record.get("attempts")
    if record["status"] == FAILED and (not isinstance(attempts, int) or isinstance(attempts, bool) or attempts < 0):
        return dict(UNREADABLE)
    return record


def orthanc_series_fingerprint(series: Iterable[dict[str, Any]]) -> str:
    """A digest of which instances the series hold (Orthanc IDs) and when each series last changed (its
    ``LastUpdate``): changes when an instance is added or deleted, and when one is stored again under its SOP
    Instance UID with other content, which keeps its ID (attack finding: with ``OverwriteInstances`` a corrected
    slice was never read again). Becoming stable, other series and the study's metadata leave ``LastUpdate`` as is."""
    digest = hashlib.sha256()
    for item in sorted(series, key=lambda entry: str(entry["ID"])):
        digest.update(str(item["ID"]).encode())
        digest.update(b"@" + str(item.get("LastUpdate", "")).encode())
        for instance in sorted(str(instance) for instance in item.get("Instances", [])):
            digest.update(b"/" + instance.encode())
        digest.update(b";")
    return digest.hexdigest()


def rejections_digest(rejected: Iterable[str]) -> str:
    """What the input fingerprint adds for the instances rejected (none: nothing, so records made before rejection
    notes were read still match)."""
    if not rejected:
        return ""
    return ":" + hashlib.sha256("\\".join(sorted(rejected)).encode()).hexdigest()[:16]


def content_fingerprint(
    files_by_series: Mapping[str, Sequence[bytes]],
    left_out: Iterable[str] = (),
    max_cost_bytes: int = DEFAULT_MAX_COST_BYTES,
) -> str:
    """A digest of what the series read hold (`content_digest`: attributes and pixel values, in any transfer syntax;
    a file costing more than `max_cost_bytes` to read, as its bytes) and of the series `left_out` for their size (the
    report names them): the same for the same instances stored again, whatever Orthanc's IDs and times say."""
    digest = hashlib.sha256(",".join(sorted(left_out)).encode() + b"\0")
    for series_uid in sorted(files_by_series):
        digest.update(series_uid.encode() + b"\0")
        for item in sorted(content_digest(data, max_cost_bytes) for data in files_by_series[series_uid]):
            digest.update(item)
        digest.update(b";")
    return digest.hexdigest()[:32]


def recorded_results(record: Mapping[str, Any]) -> set[str]:
    """The Series Instance UIDs of the results a study's record names: how results pacs-sync stored before it marked
    them with `SYNC_STATION_NAME` are still known as its own, and superseded."""
    return {value for key in RESULT_SERIES_FIELDS if isinstance(value := record.get(key), str) and value}


def reports_to_supersede(record: Mapping[str, Any], report: Dataset) -> tuple[list[ResultReference], bool]:
    """The reports a new `report` (as built, before `supersede_earlier_reports`) supersedes, and whether they were
    withdrawn: the recorded one, unless the new report was built with the recorded report's own built UID (the same
    findings from the same instances: copies of them arrived, which the analysis leaves out); then what that one
    superseded, as it did (withdrawn or not), so the results come out under its very UIDs and stand, as at the DICOM
    node. Otherwise lossy copies of a revised study's slices would make one more identical revision and delete the
    current one."""
    if "withdrawn_reports" not in record and record.get("built_report_uid") == str(report.SOPInstanceUID):
        # As then: withdrawn ones named again, so the results do not go back under UIDs a note withdrew.
        return _references(record.get("report_predecessors")), record.get("report_predecessors_withdrawn") is True
    # After a refusal withdrew them, the same findings get new UIDs too, as at the node.
    return recorded_report(record), "withdrawn_reports" in record


def _references(items: object) -> list[ResultReference]:
    """`ResultReference`s of the dicts a record holds (those whole)."""
    return [
        ResultReference(**{name: item[name] for name in REPORT_REFERENCE_FIELDS})
        for item in (items if isinstance(items, list) else [])
        if isinstance(item, dict)
        and all(isinstance(item.get(name), str) and item[name] for name in REPORT_REFERENCE_FIELDS)
    ]


def _predecessor_references(report: Dataset) -> list[dict[str, str]]:
    """The reports `report` names in its Predecessor Documents Sequence, as a record keeps them."""
    return [
        {
            "series_instance_uid": str(series.SeriesInstanceUID),
            "sop_class_uid": str(instance.ReferencedSOPClassUID),
            "sop_instance_uid": str(instance.ReferencedSOPInstanceUID),
        }
        for study in report.get("PredecessorDocumentsSequence", [])
        for series in study.get("ReferencedSeriesSequence", [])
        for instance in series.get("ReferencedSOPSequence", [])
    ]


def recorded_report(record: Mapping[str, Any]) -> list[ResultReference]:
    """The reports a study's record names: its current one (none in a record written before it kept the SR's SOP
    Class UID), or, in a failure's record, those the failure withdrew: the next report names them as it would have
    named them without the failure (otherwise it would name none, and not say it is a revision)."""
    named = [{name: record.get(f"sr_{name}") for name in REPORT_REFERENCE_FIELDS}]
    withdrawn = record.get("withdrawn_reports")
    if isinstance(withdrawn, list):
        named += withdrawn
    return _references(named)


def result_record_fields(datasets: list[Dataset], built_report_uid: str | None, withdrawn: bool) -> dict[str, Any]:
    """The fields a success's record holds of its results: their UIDs, the UID its report was built with and the
    reports it superseded, and whether those had been withdrawn (what `reports_to_supersede` reads when the same
    findings come again)."""
    return _result_uids(datasets) | {
        "built_report_uid": built_report_uid,
        "report_predecessors": _predecessor_references(datasets[-1]),
        "report_predecessors_withdrawn": withdrawn,
    }


def _result_uids(datasets: Sequence[Dataset]) -> dict[str, Any]:
    """The results' UIDs for the record: the SEG's and the SR's, and every SEG's when a series without a Frame of
    Reference got one per positive slice (all in one series)."""
    uids: dict[str, Any] = {}
    for dataset in datasets:
        prefix = "seg" if dataset.Modality == "SEG" else "sr"
        uids.setdefault(f"{prefix}_sop_instance_uid", str(dataset.SOPInstanceUID))
        uids[f"{prefix}_series_instance_uid"] = str(dataset.SeriesInstanceUID)
        if prefix == "sr":
            uids["sr_sop_class_uid"] = str(dataset.SOPClassUID)  # to name it as the next report's predecessor
    segmentations = [str(dataset.SOPInstanceUID) for dataset in datasets if dataset.Modality == "SEG"]
    if len(segmentations) > 1:
        uids["seg_sop_instance_uids"] = segmentations
    return uids
