"""Reading our volume report back into its figures: what tests, and clients checking our output, compare with the
JSON answer (the SR's writer is `app.dicom.dicom_sr`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import Comprehensive3DSRStorage

from app.dicom.dicom_sr import (
    ALGORITHM_NAME,
    ALGORITHM_VERSION,
    COMMENT,
    QUALITATIVE_EVALUATIONS,
    REFERENCED_SEGMENT,
    SLICES_ANALYSED,
    SLICES_MISSING,
    SLICES_WITH_TUMOR,
    TUMOR_AT_SERIES_END,
    VolumeReportInputError,
)


def predecessors(report: Dataset) -> list[str]:
    """The SOP Instance UIDs of the reports `report` names as its predecessors (`supersede_earlier_reports`)."""
    return [
        str(instance.ReferencedSOPInstanceUID)
        for item in report.get("PredecessorDocumentsSequence", [])
        for series in item.ReferencedSeriesSequence
        for instance in series.ReferencedSOPSequence
    ]


def read_volume_report(report: Dataset) -> dict[str, object]:
    """The figures of a report written by `build_volume_report`: finding, volume (mL or None), slice counts, slices
    missing, whether the tumor reaches the series' end, the selection notes, the algorithm and the referenced SEGs
    (the first's SOP Instance UID or None, and all of them). For tests and for checking what was sent.

    Reads the Comprehensive 3D SRs of earlier versions too."""
    report_class = (
        hd.sr.Comprehensive3DSR if str(report.SOPClassUID) == Comprehensive3DSRStorage else hd.sr.ComprehensiveSR
    )
    content = report_class.from_dataset(report).content  # parsed into templates, also for a report just built
    group = _only(content.get_volumetric_roi_measurement_groups() or content.get_image_measurement_groups())
    values = {str(item.name.value): item for item in group.get_measurements()}
    volume = values.get(codes.SCT.Volume.value)
    missing = values.get(SLICES_MISSING.value)
    evaluations = {str(item.name.value): item.value for item in group.get_qualitative_evaluations()}
    at_end = evaluations.get(TUMOR_AT_SERIES_END.value)
    references = [_item(group, REFERENCED_SEGMENT)]  # the volumetric group's SEG, or none
    references += [
        _item(planar, codes.DCM.ReferencedSegmentationFrame) for planar in content.get_planar_roi_measurement_groups()
    ]
    segmentation_uids = [
        str(item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID) for item in references if item is not None
    ]
    return {
        "finding": evaluations[codes.DCM.PresenceOfProperty.value].meaning,
        "tumor_volume_ml": None if volume is None else float(volume.value),
        "slices_analysed": int(values[SLICES_ANALYSED.value].value),
        "slices_with_tumor": int(values[SLICES_WITH_TUMOR.value].value),
        "slices_missing": None if missing is None else int(missing.value),
        "tumor_reaches_series_end": None if at_end is None else at_end == codes.SCT.Yes,
        "notes": _text_values(group[0].ContentSequence, QUALITATIVE_EVALUATIONS),
        "algorithm": (_text_value(group, ALGORITHM_NAME), _text_value(group, ALGORITHM_VERSION)),
        "segmentation_sop_instance_uid": segmentation_uids[0] if segmentation_uids else None,
        "segmentation_sop_instance_uids": segmentation_uids,
    }


def report_comments(report: Dataset) -> list[str]:
    """The Comments at the root of the report's content tree: where `build_volume_report` states research use."""
    return _text_values(report.ContentSequence, COMMENT)


def _item(items: Sequence[Dataset], concept: Code) -> Dataset | None:
    """The first content item named `concept` anywhere under `items` (depth first)."""
    for item in items:
        name = item.get("ConceptNameCodeSequence")
        if name and name[0].CodeValue == concept.value and name[0].CodingSchemeDesignator == concept.scheme_designator:
            return item
        found = _item(item.get("ContentSequence", []), concept)
        if found is not None:
            return found
    return None


def _text_value(items: Sequence[Dataset], concept: Code) -> str | None:
    item = _item(items, concept)
    return None if item is None else str(item.TextValue)


def _text_values(items: Sequence[Dataset], concept: Code) -> list[str]:
    """The text of the TEXT items named `concept` directly under `items`."""
    return [
        str(item.TextValue)
        for item in items
        if item.ValueType == "TEXT"
        and item.ConceptNameCodeSequence[0].CodeValue == concept.value
        and item.ConceptNameCodeSequence[0].CodingSchemeDesignator == concept.scheme_designator
    ]


def _only(groups: Sequence[Any]) -> Any:
    if len(groups) != 1:
        raise VolumeReportInputError(f"a volume report holds one measurement group; found {len(groups)}")
    return groups[0]
