"""The volume report: a DICOM Structured Report (TID 1500 Measurement Report, highdicom.sr) a viewer can show.

One report per analysed series, positive or negative, so that a radiologist can tell "analysed, no tumor found" from
"never analysed". It holds one measurement group for the tumor (SNOMED CT "Neoplasm" in the brain):

- positive: a volumetric ROI group (TID 1411) referencing segment 1 of our SEG and the source series, with the tumor
  volume in mL (SNOMED CT 118565006 "Volume", UCUM ``ml``), the slices analysed and the slices with tumor, and the
  qualitative evaluation Presence of property = Present;
- negative: a measurements group (TID 1501) with volume 0 mL, the slice counts and Presence = Absent.

Both name the models (Algorithm Identification, TID 4019: segmenter name and version, the classifier as a parameter)
and list the source images in the Image Library, and the report is a Comprehensive 3D SR in the source study, with
the SEG and the sources in its evidence. The slice counts use codes of this service's private scheme
(`PRIVATE_SCHEME`): the standard has no concept for them. As PS3.16 asks of a private scheme, its designator begins
with "99" and the report declares it in the Coding Scheme Identification Sequence (dciodvfy still warns that it does
not know the designator, as it does of any private scheme).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

from app.dicom_conformance import (
    TYPE2_PATIENT_STUDY_ATTRIBUTES,
    derived_character_set,
    image_library_sources,
    impossible_lengths,
    impossible_lengths_reason,
    invalid_values,
    invalid_values_reason,
    unusable_reference_uids,
    with_type2_attributes,
)
from app.dicom_seg import MANUFACTURER, SEGMENT_NUMBER, software_version
from app.errors import ReportInputError, builder_reason

if TYPE_CHECKING:
    from app.series_result import SeriesResult

SR_SERIES_NUMBER = 9902  # after the SEG's 9901: viewers list our objects after the scanner's series
SR_SERIES_DESCRIPTION = "Tumor volume report (research use only)"
PRIVATE_SCHEME = "99BRAINTUMOR"
PRIVATE_SCHEME_IDENTIFICATION = hd.coding_schemes.CodingSchemeIdentificationItem(
    designator=PRIVATE_SCHEME,
    name="Brain tumor inference service concepts",
    responsible_organization=MANUFACTURER,
)
SLICES_ANALYSED = hd.sr.CodedConcept("SLICES-ANALYSED", PRIVATE_SCHEME, "Number of slices analysed")
SLICES_WITH_TUMOR = hd.sr.CodedConcept("SLICES-TUMOR", PRIVATE_SCHEME, "Number of slices with tumor")
MILLILITRE = hd.sr.CodedConcept("ml", "UCUM", "milliliter")
SLICES_UNIT = hd.sr.CodedConcept("{slices}", "UCUM", "slices")
PROCEDURE_REPORTED = codes.LN.BrainMRI
ALGORITHM_NAME = codes.DCM.AlgorithmName
ALGORITHM_VERSION = codes.DCM.AlgorithmVersion
REFERENCED_SEGMENT = codes.DCM.ReferencedSegment


class VolumeReportInputError(ValueError):
    """The findings do not fit the sources or the SEG (e.g. a positive finding without a SEG)."""


@dataclass(frozen=True)
class VolumeFindings:
    """What the models found in one series.

    Attributes
    ----------
    tumor_detected
        True if any slice is positive.
    tumor_volume_ml
        See `app.dicom_seg.tumor_volume_ml`; None when the geometry does not give one (then left out of the report).
    slices_analysed, slices_with_tumor
        Slices the models read, and those they called positive.
    """

    tumor_detected: bool
    tumor_volume_ml: float | None
    slices_analysed: int
    slices_with_tumor: int

    def __post_init__(self) -> None:
        if not 0 <= self.slices_with_tumor <= self.slices_analysed:
            raise VolumeReportInputError(
                "slices_with_tumor must be between 0 and slices_analysed; "
                f"got {self.slices_with_tumor} of {self.slices_analysed}"
            )
        if self.tumor_detected != (self.slices_with_tumor > 0):
            raise VolumeReportInputError(
                f"tumor_detected must be True exactly when slices_with_tumor > 0; got {self.tumor_detected} with "
                f"{self.slices_with_tumor}"
            )
        if self.tumor_volume_ml is not None and self.tumor_volume_ml < 0:
            raise VolumeReportInputError(f"tumor_volume_ml must be >= 0; got {self.tumor_volume_ml}")


def build_volume_report(
    source_images: Sequence[Dataset],
    findings: VolumeFindings,
    model_tags: Mapping[str, str],
    segmentation: Dataset | None = None,
) -> hd.sr.Comprehensive3DSR:
    """Build the TID 1500 report of one analysed series.

    Parameters
    ----------
    source_images
        Headers (pixel data not needed) of the analysed series' instances: the FLAIR series the SEG refers to.
    findings
        What the models found.
    model_tags
        `Predictor.model_tags`: ``{"classifier": "name@version", "segmenter": "name@version"}``.
    segmentation
        Our SEG of the series; required when `findings.tumor_detected`, ignored otherwise.

    Returns
    -------
    highdicom.sr.Comprehensive3DSR
        A pydicom Dataset in the sources' study (new series `SR_SERIES_NUMBER`).

    Raises
    ------
    VolumeReportInputError
        If there are no sources, they come from several series, or a positive finding comes without a SEG.
    app.errors.ReportInputError
        If the sources lack a UID the report refers to them by, or highdicom refuses one of their attributes.
    """
    if not source_images:
        raise VolumeReportInputError("a volume report needs at least one source image; got none")
    series = {str(image.get("SeriesInstanceUID", "")) for image in source_images}
    if len(series) != 1:
        raise VolumeReportInputError(f"a volume report covers one series; the source images come from {len(series)}")
    if findings.tumor_detected and segmentation is None:
        raise VolumeReportInputError("a positive finding must come with its SEG; got none")
    missing = unusable_reference_uids(source_images)
    if missing:
        raise ReportInputError(
            f"a DICOM SR refers to its source images by their UIDs; the source images lack {', '.join(missing)} or "
            "hold one that is no UID (digits and dots, at most 64 characters)"
        )
    _refuse_invalid_values(invalid_values(source_images[0], TYPE2_PATIENT_STUDY_ATTRIBUTES))
    impossible = impossible_lengths(source_images)
    if impossible:
        raise ReportInputError(impossible_lengths_reason(impossible, "a DICOM SR"))
    try:
        report = _volume_report(source_images, findings, model_tags, segmentation, series.pop())
    except (ValueError, TypeError, AttributeError) as error:  # highdicom's checks; its text quotes file values
        raise ReportInputError(f"the series cannot be reported in a DICOM SR: {builder_reason(error)}") from error
    _refuse_invalid_values(invalid_values(report))  # what highdicom copied from the source, as it came
    return report


def _refuse_invalid_values(keywords: list[str]) -> None:
    if keywords:
        raise ReportInputError(invalid_values_reason(keywords, "a DICOM SR"))


def _volume_report(
    source_images: Sequence[Dataset],
    findings: VolumeFindings,
    model_tags: Mapping[str, str],
    segmentation: Dataset | None,
    series_uid: str,
) -> hd.sr.Comprehensive3DSR:
    """`build_volume_report`'s work once its inputs are checked: highdicom builds the report here."""
    sources = [with_type2_attributes(image) for image in source_images]
    algorithm = _algorithm(model_tags)
    measurements = _measurements(findings, algorithm)
    evaluation = hd.sr.QualitativeEvaluation(
        codes.DCM.PresenceOfProperty, codes.SCT.Present if findings.tumor_detected else codes.SCT.Absent
    )
    common = {
        "tracking_identifier": hd.sr.TrackingIdentifier(uid=generate_uid(), identifier="Tumor"),
        "finding_type": codes.SCT.Neoplasm,
        "algorithm_id": algorithm,
        "finding_sites": [hd.sr.FindingSite(codes.SCT.Brain)],
        "measurements": measurements,
        "qualitative_evaluations": [evaluation],
    }
    evidence = list(sources)
    if findings.tumor_detected and segmentation is not None:
        group: hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations | hd.sr.MeasurementsAndQualitativeEvaluations
        group = hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            referenced_segment=hd.sr.ReferencedSegment(
                sop_class_uid=str(segmentation.SOPClassUID),
                sop_instance_uid=str(segmentation.SOPInstanceUID),
                segment_number=SEGMENT_NUMBER,
                source_series=hd.sr.SourceSeriesForSegmentation(series_uid),
            ),
            **common,
        )
        evidence.append(segmentation)
    else:
        group = hd.sr.MeasurementsAndQualitativeEvaluations(**common)
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=_device_uid(model_tags),
            name=MANUFACTURER,
            manufacturer_name=MANUFACTURER,
            model_name=model_tags.get("segmenter", "segmenter@unknown")[:64],
        ),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=PROCEDURE_REPORTED,
        imaging_measurements=[group],
        referenced_images=image_library_sources(sources),
    )
    sr = hd.sr.Comprehensive3DSR(
        evidence=evidence,
        specific_character_set=derived_character_set(sources[0]),
        content=report[0],
        series_instance_uid=generate_uid(),
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        is_final=False,  # unverified machine output: a preliminary report, never final
        coding_schemes=[PRIVATE_SCHEME_IDENTIFICATION],
    )
    sr.SeriesDescription = SR_SERIES_DESCRIPTION
    sr.SoftwareVersions = software_version()
    return sr


def series_volume_report(result: SeriesResult, model_tags: Mapping[str, str]) -> hd.sr.Comprehensive3DSR:
    """The report of a series the prediction flow analysed: its findings, referencing its SEG when there is one."""
    positive = sum(prediction.detected for prediction in result.predictions)
    findings = VolumeFindings(
        tumor_detected=positive > 0,
        tumor_volume_ml=result.tumor_volume_ml,
        slices_analysed=len(result.inputs),
        slices_with_tumor=positive,
    )
    headers: dict[str, Dataset] = {}
    for slice_input in result.inputs:
        headers.setdefault(slice_input.reference.sop_instance_uid, slice_input.reference.header)
    return build_volume_report(list(headers.values()), findings, model_tags, result.segmentation)


def read_volume_report(report: Dataset) -> dict[str, object]:
    """The figures of a report written by `build_volume_report`: finding, volume (mL or None), slice counts, the
    algorithm and the referenced SEG (SOP Instance UID or None). For tests and for checking what was sent."""
    parsed = report if isinstance(report, hd.sr.Comprehensive3DSR) else hd.sr.Comprehensive3DSR.from_dataset(report)
    content = parsed.content
    group = _only(content.get_volumetric_roi_measurement_groups() or content.get_image_measurement_groups())
    values = {str(item.name.value): item for item in group.get_measurements()}
    volume = values.get(codes.SCT.Volume.value)
    segment = _item(group, REFERENCED_SEGMENT)
    algorithm_name = _text_value(group, ALGORITHM_NAME)
    (evaluation,) = group.get_qualitative_evaluations()
    return {
        "finding": evaluation.value.meaning,
        "tumor_volume_ml": None if volume is None else float(volume.value),
        "slices_analysed": int(values[SLICES_ANALYSED.value].value),
        "slices_with_tumor": int(values[SLICES_WITH_TUMOR.value].value),
        "algorithm": (algorithm_name, _text_value(group, ALGORITHM_VERSION)),
        "segmentation_sop_instance_uid": (
            None if segment is None else str(segment.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
        ),
    }


def _algorithm(model_tags: Mapping[str, str]) -> hd.sr.AlgorithmIdentification:
    name, _, version = model_tags.get("segmenter", "segmenter@unknown").rpartition("@")
    parameters = [f"{role}={tag}" for role, tag in sorted(model_tags.items()) if role != "segmenter"]
    return hd.sr.AlgorithmIdentification(
        name=name or "segmenter", version=version or "unknown", parameters=parameters or None
    )


def _measurements(findings: VolumeFindings, algorithm: hd.sr.AlgorithmIdentification) -> list[hd.sr.Measurement]:
    measurements = []
    volume = findings.tumor_volume_ml if findings.tumor_detected else 0.0
    if volume is not None:
        measurements.append(hd.sr.Measurement(codes.SCT.Volume, round(volume, 3), MILLILITRE, algorithm_id=algorithm))
    measurements.append(hd.sr.Measurement(SLICES_ANALYSED, findings.slices_analysed, SLICES_UNIT))
    measurements.append(hd.sr.Measurement(SLICES_WITH_TUMOR, findings.slices_with_tumor, SLICES_UNIT))
    return measurements


def _device_uid(model_tags: Mapping[str, str]) -> str:
    """The same models give the same Device Observer UID everywhere (it names the model pair, not a machine)."""
    digest = hashlib.sha256(json.dumps(dict(model_tags), sort_keys=True).encode()).hexdigest()
    return generate_uid(entropy_srcs=[MANUFACTURER, digest])


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


def _only(groups: Sequence[Any]) -> Any:
    if len(groups) != 1:
        raise VolumeReportInputError(f"a volume report holds one measurement group; found {len(groups)}")
    return groups[0]
