"""The volume report: a DICOM Structured Report (TID 1500 Measurement Report, highdicom.sr) a viewer can show.

One report per analysed series, positive or negative, so that a radiologist can tell "analysed, no tumor found" from
"never analysed". It holds one measurement group for the tumor (SNOMED CT "Neoplasm" in the brain):

- positive: a volumetric ROI group (TID 1411) referencing segment 1 of our SEG and the source series, with the tumor
  volume in mL (SNOMED CT 118565006 "Volume", UCUM ``ml``), the slices analysed and the slices with tumor, and the
  qualitative evaluation Presence of property = Present;
- positive, of slices without a Frame of Reference (Secondary Captures, one SEG per positive slice: see
  `app.dicom.dicom_seg`): the same figures in a measurements group (TID 1501), and one planar ROI group (TID 1410) per
  SEG, referencing its frame and its source slice, with Presence = Present; every group has the same Tracking Identifier
  (one finding, seen on several slices);
- negative: a measurements group (TID 1501) with volume 0 mL, the slice counts and Presence = Absent.

The tumor's group also says when the volume may fall short, always with a value: the slices missing between those
analysed (a count, 0 when none) and whether the tumor reaches the first or last slice analysed (Yes/No, SNOMED CT
373066001 / 373067005), so that a radiologist who sees only the PACS knows the volume is then a lower bound.

All name the models (Algorithm Identification, TID 4019: segmenter name and version, the classifier as a parameter)
and list the source images in the Image Library, and the report is a Comprehensive SR (no 3D coordinates: every PACS
takes the class, where many lack Comprehensive 3D SR) in the source study, with the SEGs and the sources in its
evidence. The slice counts and the series-end evaluation use codes of this service's private scheme
(`PRIVATE_SCHEME`): the standard has no concept for them. As PS3.16 asks of a private scheme, its designator begins
with "99" and the report declares it in the Coding Scheme Identification Sequence (dciodvfy still warns that it does
not know the designator, as it does of any private scheme). Reading a report back is `app.dicom.dicom_sr_reader`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from app.core.preprocessing import CHANNEL_ORDER
from app.dicom.dicom_conformance import (
    check_reference_uids,
    check_sources,
    derived_character_set,
    drop_invalid_optional_values,
    image_library_sources,
    invalid_values_not_copied_as_is,
    refuse_invalid_values,
    stamp_creation_times,
    with_type2_attributes,
    without_contradicted_spacing,
)
from app.dicom.dicom_seg import SEGMENT_NUMBER
from app.dicom.result_uids import MANUFACTURER, models_digest, result_uid, segmenter_name_version, source_identity
from app.dicom.slice_order import anatomical_order
from app.dicom.tumor_volume import series_spacing_mm
from app.errors import ReportInputError, builder_reason
from app.release import service_version
from app.series.info import number_said

if TYPE_CHECKING:
    from app.dicom.dicom_frame import DicomFrame
    from app.series.result import SeriesResult

SR_SERIES_NUMBER = 9902  # after the SEG's 9901: viewers list our objects after the scanner's series
SR_SERIES_DESCRIPTION = "Tumor volume report (research use only)"
# The page's disclaimer, in ASCII so that every character set the report may take (the source's) holds it.
RESEARCH_USE_STATEMENT = (
    "Research use only - not for clinical diagnosis. The results come from an automated model and may be wrong."
)
REVISED_SUFFIX = " - revised"  # the Series Description of results that supersede earlier ones
SR = "a DICOM SR"  # what refusals say cannot be made
PRIVATE_SCHEME = "99BRAINTUMOR"
PRIVATE_SCHEME_IDENTIFICATION = hd.coding_schemes.CodingSchemeIdentificationItem(
    designator=PRIVATE_SCHEME,
    name="Brain tumor inference service concepts",
    responsible_organization=MANUFACTURER,
)
SLICES_ANALYSED = hd.sr.CodedConcept("SLICES-ANALYSED", PRIVATE_SCHEME, "Number of slices analysed")
SLICES_WITH_TUMOR = hd.sr.CodedConcept("SLICES-TUMOR", PRIVATE_SCHEME, "Number of slices with tumor")
SLICES_MISSING = hd.sr.CodedConcept("SLICES-MISSING", PRIVATE_SCHEME, "Number of slices missing between those analysed")
# PS3.16 TID 1501 row "Qualitative Evaluations" also takes TEXT; highdicom builds the coded ones only.
QUALITATIVE_EVALUATIONS = hd.sr.CodedConcept("C0034375", "UMLS", "Qualitative Evaluations")
TUMOR_AT_SERIES_END = hd.sr.CodedConcept(
    "TUMOR-AT-END", PRIVATE_SCHEME, "Tumor on first or last slice: volume may be underestimated"
)
MILLILITRE = hd.sr.CodedConcept("ml", "UCUM", "milliliter")
SLICES_UNIT = hd.sr.CodedConcept("{slices}", "UCUM", "slices")
PROCEDURE_REPORTED = codes.LN.BrainMRI
COMMENT = codes.DCM.Comment
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
        See `app.dicom.tumor_volume.tumor_volume_ml`; None when the geometry does not give one (then left out of the
        report).
    slices_analysed, slices_with_tumor
        Slices the models read, and those they called positive.
    slices_missing
        Slices missing between those analysed (`app.dicom.slice_order.missing_slices`): the volume leaves them out;
        None (left out of the report) when the slices have no positions.
    tumor_reaches_series_end
        The first or last slice analysed is positive: the tumor may go on beyond the series, and the volume with it.
    notes
        What sequence selection decided that the figures depend on (`SeriesChoice.notes`: FLAIR read alone and why,
        slice order unknown, ...), for the radiologist who sees only the PACS.
    complete
        False when the series may lack instances its sender meant to send (the DICOM node: an association that sent
        it ended without a release): the report's Completion Flag is then PARTIAL (else a "no tumor"
        report of half a study would go out COMPLETE).
    """

    tumor_detected: bool
    tumor_volume_ml: float | None
    slices_analysed: int
    slices_with_tumor: int
    slices_missing: int | None = 0
    tumor_reaches_series_end: bool = False
    notes: tuple[str, ...] = ()
    complete: bool = True

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
        if self.slices_missing is not None and self.slices_missing < 0:
            raise VolumeReportInputError(f"slices_missing must be >= 0; got {self.slices_missing}")
        if self.tumor_reaches_series_end and not self.tumor_detected:
            raise VolumeReportInputError("tumor_reaches_series_end needs a tumor; got it without one")


def build_volume_report(
    source_images: Sequence[Dataset],
    findings: VolumeFindings,
    model_tags: Mapping[str, str],
    segmentations: Sequence[Dataset] = (),
    result_origin: str = "",
    series_spacing_mm: float | None = None,
    channel_images: Sequence[Dataset] = (),
    without_seg: bool = False,
) -> hd.sr.ComprehensiveSR:
    """Build the TID 1500 report of one analysed series.

    Parameters
    ----------
    source_images
        Headers (pixel data not needed) of the analysed series' instances: the FLAIR series the SEG refers to.
    findings
        What the models found.
    model_tags
        `Predictor.model_tags`: ``{"classifier": "name@version", "segmenter": "name@version"}``.
    segmentations
        Our SEG of the series (`app.dicom.dicom_seg.build_segmentations`: one, or one per positive slice for slices
        without a Frame of Reference); required when `findings.tumor_detected`, ignored otherwise.
    result_origin
        Who the report is made for (`PredictionService.result_origin`): with the sources, findings, SEGs and models,
        it makes the report's UIDs (`app.dicom.result_uids`), the same each time they are the same.
    series_spacing_mm
        The slices' spacing as the tumor volume takes it (`app.dicom.tumor_volume.slice_spacing_mm`), when their
        positions are known: a source's Spacing Between Slices that contradicts it is not copied into the image
        library.
    channel_images
        Headers of the T1 instances the models read beside FLAIR as channels, when they did: evidence of the report
        (PS3.3 C.17.2.3) as they are sources of its SEG, not measured in it (the image library lists FLAIR's).
    without_seg
        A positive finding reported without its SEG, which the sources could not give (the caller says why in a
        note): its measurements and evaluations in a series group, as a negative finding's are.

    Returns
    -------
    highdicom.sr.ComprehensiveSR
        A pydicom Dataset in the sources' study (new series `SR_SERIES_NUMBER`).

    Raises
    ------
    VolumeReportInputError
        If there are no sources, they come from several series, a positive finding comes without a SEG (unless
        `without_seg`), or several SEGs come for sources in a patient coordinate system (one SEG covers them).
    app.errors.ReportInputError
        If the sources lack a UID the report refers to them by, or highdicom refuses one of their attributes.
    """
    if not source_images:
        raise VolumeReportInputError("a volume report needs at least one source image; got none")
    series = {str(image.get("SeriesInstanceUID", "")) for image in source_images}
    if len(series) != 1:
        raise VolumeReportInputError(f"a volume report covers one series; the source images come from {len(series)}")
    segmentations = list(segmentations) if findings.tumor_detected and not without_seg else []
    if findings.tumor_detected and not segmentations and not without_seg:
        raise VolumeReportInputError("a positive finding must come with its SEG; got none")
    if len(segmentations) > 1 and any("FrameOfReferenceUID" in segmentation for segmentation in segmentations):
        raise VolumeReportInputError(
            f"one SEG covers slices placed in the patient's coordinates; got {len(segmentations)}"
        )
    check_sources(source_images, SR, ReportInputError, "source images", lengths=False)  # see image_library_sources
    check_reference_uids(channel_images, SR, ReportInputError, "T1 images")
    try:
        sources = [without_contradicted_spacing(image, series_spacing_mm) for image in source_images]
        report = _volume_report(
            sources, findings, model_tags, segmentations, series.pop(), result_origin, channel_images
        )
    except (ValueError, TypeError, AttributeError) as error:  # highdicom's checks; its text quotes file values
        raise ReportInputError(f"the series cannot be reported in a DICOM SR: {builder_reason(error)}") from error
    drop_invalid_optional_values(report)  # optional ones copied from the source: left out
    refuse_invalid_values(
        invalid_values_not_copied_as_is(report), SR, ReportInputError
    )  # what highdicom copied from the source
    return report


def _volume_report(
    source_images: Sequence[Dataset],
    findings: VolumeFindings,
    model_tags: Mapping[str, str],
    segmentations: Sequence[Dataset],
    series_uid: str,
    result_origin: str,
    channel_images: Sequence[Dataset] = (),
) -> hd.sr.ComprehensiveSR:
    """`build_volume_report`'s work once its inputs are checked: highdicom builds the report here."""
    sources = [with_type2_attributes(image) for image in source_images]
    channels = [with_type2_attributes(image) for image in channel_images]
    algorithm = _algorithm(model_tags)
    # The same sources, findings, SEGs and models give the same UIDs (app.dicom.result_uids): a report made again is the
    # same instance, and the tumor keeps its tracking UID for as long as the models and the series stay the same.
    identity = source_identity(source_images[0])  # one series: one patient and study
    made_of = [
        result_origin,
        identity,
        series_uid,
        *sorted(str(image.SOPInstanceUID) for image in source_images),
        *sorted(str(image.SOPInstanceUID) for image in channel_images),
        repr(findings),
        *(str(segmentation.SOPInstanceUID) for segmentation in segmentations),
    ]
    tracking = hd.sr.TrackingIdentifier(
        uid=result_uid("tracking", model_tags, result_origin, identity, series_uid), identifier="Tumor"
    )
    groups = _measurement_groups(findings, algorithm, tracking, segmentations, series_uid)
    observer = _device_observer(model_tags)
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=PROCEDURE_REPORTED,
        imaging_measurements=groups,
        referenced_images=image_library_sources(sources),
    )
    report[0].ContentSequence.append(_research_use_comment())
    sr = hd.sr.ComprehensiveSR(
        evidence=[*sources, *channels, *segmentations],
        specific_character_set=derived_character_set(sources[0]),
        content=report[0],
        series_instance_uid=result_uid("sr-series", model_tags, *made_of),
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=result_uid("sr", model_tags, *made_of),
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=findings.complete,
        is_final=False,  # unverified machine output: a preliminary report, never final
        coding_schemes=[PRIVATE_SCHEME_IDENTIFICATION],
    )
    sr.SeriesDescription = SR_SERIES_DESCRIPTION
    stamp_creation_times(sr, sources)  # as the SEG's
    sr.SoftwareVersions = service_version()
    return sr


def _measurement_groups(
    findings: VolumeFindings,
    algorithm: hd.sr.AlgorithmIdentification,
    tracking: hd.sr.TrackingIdentifier,
    segmentations: Sequence[Dataset],
    series_uid: str,
) -> list[
    hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations
    | hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations
    | hd.sr.MeasurementsAndQualitativeEvaluations
]:
    """The report's measurement groups: one volumetric ROI group on a series' SEG, or a series group (measurements,
    evaluations, notes) followed by a planar ROI group per one-slice SEG."""
    common = {
        "tracking_identifier": tracking,
        "finding_type": codes.SCT.Neoplasm,
        "algorithm_id": algorithm,
        "finding_sites": [hd.sr.FindingSite(codes.SCT.Brain)],
        "measurements": _measurements(findings, algorithm),
        "qualitative_evaluations": _evaluations(findings),
    }
    groups: list[
        hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations
        | hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations
        | hd.sr.MeasurementsAndQualitativeEvaluations
    ]
    if len(segmentations) == 1 and "FrameOfReferenceUID" in segmentations[0]:
        (segmentation,) = segmentations
        groups = [
            hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
                referenced_segment=hd.sr.ReferencedSegment(
                    sop_class_uid=str(segmentation.SOPClassUID),
                    sop_instance_uid=str(segmentation.SOPInstanceUID),
                    segment_number=SEGMENT_NUMBER,
                    source_series=hd.sr.SourceSeriesForSegmentation(series_uid),
                ),
                **common,
            )
        ]
    else:  # no SEG (negative, or left out), or SEGs of one slice each (no Frame of Reference): a planar ROI group each
        groups = [hd.sr.MeasurementsAndQualitativeEvaluations(**common)]
        groups.extend(_slice_group(segmentation, tracking, algorithm) for segmentation in segmentations)
    groups[0][0].ContentSequence.extend(_notes(findings))
    return groups


def _research_use_comment() -> hd.sr.TextContentItem:
    """The disclaimer as a Comment of the report's root: a viewer shows the content tree, seldom the Series
    Description or the PRELIMINARY/UNVERIFIED flags, and the tree states the finding."""
    return hd.sr.TextContentItem(
        name=COMMENT, value=RESEARCH_USE_STATEMENT, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
    )


def _device_observer(model_tags: Mapping[str, str]) -> hd.sr.ObserverContext:
    """The service as the report's observer: a device named by the models it ran."""
    return hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=_device_uid(model_tags),
            name=MANUFACTURER,
            manufacturer_name=MANUFACTURER,
            model_name=model_tags.get("segmenter", "segmenter@unknown")[:64],
        ),
    )


def _slice_group(
    segmentation: Dataset, tracking: hd.sr.TrackingIdentifier, algorithm: hd.sr.AlgorithmIdentification
) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    """The planar ROI group (TID 1410) of a one-slice SEG: its frame and the slice it masks, tumor present there.
    It shares the series group's Tracking Identifier: one finding, seen on several slices."""
    source = segmentation.SourceImageSequence[0]  # highdicom lists the FLAIR slice before the T1 slices, if any
    reference = hd.sr.ReferencedSegmentationFrame(
        sop_class_uid=str(segmentation.SOPClassUID),
        sop_instance_uid=str(segmentation.SOPInstanceUID),
        frame_number=1,
        segment_number=SEGMENT_NUMBER,
        source_image=hd.sr.SourceImageForSegmentation(
            str(source.ReferencedSOPClassUID),
            str(source.ReferencedSOPInstanceUID),
            # a frame of a multi-frame capture (app.dicom.dicom_seg names it)
            [int(source.ReferencedFrameNumber)] if "ReferencedFrameNumber" in source else None,
        ),
    )
    # A frame of a SEG holds one segment: PS3.3 (Image SOP Instance Reference Macro) allows Referenced Segment
    # Number only without Referenced Frame Number, and dciodvfy reports an error for both.
    del reference[0].ReferencedSOPSequence[0].ReferencedSegmentNumber
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking,
        referenced_segment=reference,
        finding_type=codes.SCT.Neoplasm,
        algorithm_id=algorithm,
        finding_sites=[hd.sr.FindingSite(codes.SCT.Brain)],
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(codes.DCM.PresenceOfProperty, codes.SCT.Present)],
    )


def seg_refused_note(reason: str) -> str:
    """The report's note when no SEG could be made of a series with tumor (`without_seg`), saying why."""
    return f"No DICOM SEG was made of this series: {reason.rstrip('.')}."


def series_volume_report(
    result: SeriesResult,
    model_tags: Mapping[str, str],
    notes: Sequence[str] = (),
    complete: bool = True,
    without_seg: bool = False,
) -> hd.sr.ComprehensiveSR:
    """The report of a series the prediction flow analysed: its findings and selection `notes`, referencing its SEGs
    when there are any; `complete` as `VolumeFindings.complete`, `without_seg` as `build_volume_report`'s."""
    positive = sum(prediction.detected for prediction in result.predictions)
    headers: dict[str, Dataset] = {}
    channel_headers: dict[str, Dataset] = {}
    # In the SEG's order, not the files': the same series sent in another order, or by another path, gets the same
    # report (else one SR UID could name two image lists, by upload order).
    in_order = anatomical_order([slice_input.reference for slice_input in result.inputs])
    for slice_input in (result.inputs[index] for index in in_order):
        headers.setdefault(slice_input.reference.sop_instance_uid, slice_input.reference.header)
        for frame in slice_input.channels:
            if frame is not slice_input.reference:
                channel_headers.setdefault(frame.sop_instance_uid, frame.header)
    if channel_headers:
        notes = (*notes, _channels_note(result.inputs[0].channels))
    findings = VolumeFindings(
        tumor_detected=positive > 0,
        tumor_volume_ml=result.tumor_volume_ml,
        slices_analysed=len(result.inputs),
        slices_with_tumor=positive,
        slices_missing=result.slices_missing,
        tumor_reaches_series_end=result.tumor_reaches_series_end,
        notes=tuple(notes),
        complete=complete,
    )
    return build_volume_report(
        list(headers.values()),
        findings,
        model_tags,
        result.segmentations,
        result_origin=result.result_origin,
        series_spacing_mm=series_spacing_mm([slice_input.reference for slice_input in result.inputs]),
        channel_images=list(channel_headers.values()),
        without_seg=without_seg,
    )


def _channels_note(channels: Sequence[DicomFrame]) -> str:
    """Which series the models read as channels beside FLAIR: they change the result, so the SR says
    which were read."""
    named = {
        role: number_said(frame.header, "SeriesNumber") for role, frame in zip(CHANNEL_ORDER, channels, strict=True)
    }
    return (
        f"The models read FLAIR (series {named['FLAIR']}) with T1 pre-contrast (series {named['pre-contrast']}) and "
        f"T1 post-contrast (series {named['post-contrast']}) as channels; the evidence lists all three."
    )


@dataclass(frozen=True)
class ResultReference:
    """An earlier result (SR or SEG) of the same study, as a record keeps it: enough to name it as a predecessor
    (`supersede_earlier_reports`) or to reject it (`app.dicom.rejection_note`)."""

    series_instance_uid: str
    sop_class_uid: str
    sop_instance_uid: str


def supersede_earlier_reports(
    results: Sequence[Dataset], earlier: Sequence[ResultReference], withdrawn: bool = False
) -> None:
    """Make a run's results (its SEGs, then its report, last) supersede the earlier reports of its study: the report
    names them (Predecessor Documents Sequence, SR Document General Module), so that a PACS or viewer showing both
    can tell which is current, and every result gets UIDs of its own.

    Set after the results are built; an earlier report with the report's own SOP Instance UID (the same findings made
    again) is left out. Results whose report names predecessors get UIDs of their own, derived from the ones they
    were built with and the reports replaced, and the report refers to its SEGs by their new UIDs: the same findings
    as an earlier, already superseded run (an instance corrected, then sent again as it was) make new objects, which
    a PACS that already holds the earlier copies does not ignore, so the newest SEG and report are the current ones.
    Their Series Descriptions end in `REVISED_SUFFIX`: a viewer lists the old and new series side by side under the
    same Series Number, and would tell them apart only by their Series Time.

    `withdrawn`: the earlier reports were rejected since (a refused study's rejection note), so one with the report's
    own SOP Instance UID is named too, and the results get UIDs of their own: sent under the UIDs the note rejected,
    the answer to a study refused and then sent again corrected would be one an IOCM archive withdraws."""
    report = results[-1]
    named = [
        reference for reference in earlier if withdrawn or reference.sop_instance_uid != str(report.SOPInstanceUID)
    ]
    if not named:
        return
    replaced = [reference.sop_instance_uid for reference in named]
    renewed: dict[str, str] = {}
    for dataset in results:
        description = str(dataset.get("SeriesDescription") or "")
        if not description.endswith(REVISED_SUFFIX):
            dataset.SeriesDescription = description + REVISED_SUFFIX
        for keyword in ("SOPInstanceUID", "SeriesInstanceUID"):
            old = str(dataset[keyword].value)
            renewed[old] = generate_uid(entropy_srcs=[old, "replaces", *replaced])
            dataset[keyword].value = renewed[old]
        if "MediaStorageSOPInstanceUID" in getattr(dataset, "file_meta", Dataset()):
            dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID

    def refer_to_renewed(dataset: Dataset, element: Any) -> None:
        if element.VR == "UI" and element.VM == 1 and str(element.value) in renewed:
            element.value = renewed[str(element.value)]

    report.walk(refer_to_renewed)  # its SEG references (content items, evidence) follow the SEGs' new UIDs
    # After the walk: a predecessor with the report's own old UIDs (`withdrawn`) keeps them.
    report.PredecessorDocumentsSequence = [_predecessor_item(report, reference) for reference in named]


def _predecessor_item(report: Dataset, reference: ResultReference) -> Dataset:
    """One Predecessor Documents Sequence item: the earlier report, in the report's own study."""
    instance = Dataset()
    instance.ReferencedSOPClassUID = reference.sop_class_uid
    instance.ReferencedSOPInstanceUID = reference.sop_instance_uid
    series = Dataset()
    series.SeriesInstanceUID = reference.series_instance_uid
    series.ReferencedSOPSequence = [instance]
    item = Dataset()
    item.StudyInstanceUID = report.StudyInstanceUID  # the node's results stay in their source study
    item.ReferencedSeriesSequence = [series]
    return item


def _algorithm(model_tags: Mapping[str, str]) -> hd.sr.AlgorithmIdentification:
    name, version = segmenter_name_version(model_tags)
    parameters = [f"{role}={tag}" for role, tag in sorted(model_tags.items()) if role != "segmenter"]
    return hd.sr.AlgorithmIdentification(name=name, version=version, parameters=parameters or None)


def _measurements(findings: VolumeFindings, algorithm: hd.sr.AlgorithmIdentification) -> list[hd.sr.Measurement]:
    measurements = []
    volume = findings.tumor_volume_ml if findings.tumor_detected else 0.0
    if volume is not None:
        measurements.append(hd.sr.Measurement(codes.SCT.Volume, round(volume, 3), MILLILITRE, algorithm_id=algorithm))
    measurements.append(hd.sr.Measurement(SLICES_ANALYSED, findings.slices_analysed, SLICES_UNIT))
    measurements.append(hd.sr.Measurement(SLICES_WITH_TUMOR, findings.slices_with_tumor, SLICES_UNIT))
    if findings.slices_missing is not None:  # unknown: left out, as the note says why (`unplaced_gaps_note`)
        measurements.append(hd.sr.Measurement(SLICES_MISSING, findings.slices_missing, SLICES_UNIT))
    return measurements


def _evaluations(findings: VolumeFindings) -> list[hd.sr.QualitativeEvaluation]:
    """Presence of the tumor, and whether it reaches the series' end (then the volume may be short of it)."""
    return [
        hd.sr.QualitativeEvaluation(
            codes.DCM.PresenceOfProperty, codes.SCT.Present if findings.tumor_detected else codes.SCT.Absent
        ),
        hd.sr.QualitativeEvaluation(
            TUMOR_AT_SERIES_END, codes.SCT.Yes if findings.tumor_reaches_series_end else codes.SCT.No
        ),
    ]


def _notes(findings: VolumeFindings) -> list[hd.sr.TextContentItem]:
    """The selection notes as text evaluations of the tumor's group (highdicom's maintainers' way to add them)."""
    return [
        hd.sr.TextContentItem(
            name=QUALITATIVE_EVALUATIONS, value=note, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
        )
        for note in findings.notes
    ]


def _device_uid(model_tags: Mapping[str, str]) -> str:
    """The same models give the same Device Observer UID everywhere (it names the model pair, not a machine)."""
    return generate_uid(entropy_srcs=[MANUFACTURER, models_digest(model_tags)])
