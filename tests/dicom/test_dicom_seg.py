from __future__ import annotations

import asyncio
import copy
import io
import shutil
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from app.dicom.dicom_frame import DicomFrame
from app.dicom.dicom_seg import MANUFACTURER, build_segmentation, build_segmentations, part10_bytes
from app.dicom.dicom_seg_reader import read_segmentation_masks
from app.dicom.dicom_series import SliceInput, prepare_inputs
from app.dicom.tumor_volume import slice_spacing_mm, tumor_volume_ml
from app.errors import SegmentationInputError
from app.inference import SlicePrediction
from app.model_runners import predictor_runner
from app.prediction import PredictionService
from app.series.reading import SeriesUploads
from app.series.result import SeriesResult, summarise_series
from app.uploads import UploadLimits
from tests.conftest import TUMOR_SERIES, read_truth
from tests.dicom.builders import (
    FLAIR,
    PIXEL_SPACING_MM,
    SLICE_GAP_MM,
    Study,
    legacy_multiframe,
    mr_series,
    multiframe_secondary_capture,
    secondary_capture_series,
    to_bytes,
    tumor_channels,
)
from tests.dicom.reading import read_dicom
from tests.dicom.validation import dciodvfy_errors

MODEL_TAGS = {"classifier": "resnet-classifier@1.2.0", "segmenter": "resunet@3.4.5"}


def series_inputs(datasets: list[Dataset]) -> list[SliceInput]:
    return prepare_inputs([frame for dataset in datasets for frame in read_dicom(to_bytes(dataset))])


@pytest.fixture(scope="module")
def flair_series() -> list[Dataset]:
    return mr_series(tumor_channels())


@pytest.fixture(scope="module")
def truth_masks() -> list[np.ndarray]:
    return [read_truth(path) for path in TUMOR_SERIES]


def test_build_segmentation_round_trips_masks(flair_series: list[Dataset], truth_masks: list[np.ndarray]) -> None:
    inputs = series_inputs(flair_series)
    masks: list[np.ndarray | None] = [truth_masks[0], truth_masks[1], None]  # None: classifier negative

    data = part10_bytes(build_segmentation(inputs, masks, MODEL_TAGS))
    decoded = read_segmentation_masks(data)

    assert set(decoded) == {dataset.SOPInstanceUID for dataset in flair_series}
    for slice_input, mask in zip(inputs, masks, strict=True):
        expected = np.zeros((256, 256), np.uint8) if mask is None else mask
        np.testing.assert_array_equal(decoded[slice_input.reference.sop_instance_uid], expected[None])


def test_the_same_slices_masks_and_models_give_the_same_seg_uids(
    flair_series: list[Dataset], truth_masks: list[np.ndarray]
) -> None:
    inputs = series_inputs(flair_series)
    masks: list[np.ndarray | None] = [truth_masks[0], truth_masks[1], None]
    first, again = build_segmentation(inputs, masks, MODEL_TAGS), build_segmentation(inputs, list(masks), MODEL_TAGS)
    moved = truth_masks[1].copy()
    moved[0, 0] = 1 - moved[0, 0]  # one pixel more or less
    other_mask = build_segmentation(inputs, [truth_masks[0], moved, None], MODEL_TAGS)
    other_models = build_segmentation(inputs, masks, {**MODEL_TAGS, "segmenter": "resunet@3.4.6"})

    uids = [(seg.SeriesInstanceUID, seg.SOPInstanceUID) for seg in (first, again, other_mask, other_models)]
    assert uids[0] == uids[1]
    assert len({uid for pair in uids[1:] for uid in pair}) == 6  # every change gives a new series and instance
    assert first.SOPInstanceUID not in {dataset.SOPInstanceUID for dataset in flair_series}


@pytest.mark.parametrize("keyword", ["PatientID", "IssuerOfPatientID", "StudyInstanceUID"])
def test_the_same_slices_under_another_patient_or_study_get_seg_uids_of_their_own(
    flair_series: list[Dataset], truth_masks: list[np.ndarray], keyword: str
) -> None:
    """Attack review 37: the same images sent again after a Patient ID correction (a PACS keeps both copies) got the
    first patient's SEG UIDs, which a PACS keying by SOP Instance UID dropped or filed over the other's."""
    refiled = [copy.deepcopy(dataset) for dataset in flair_series]
    for dataset in refiled:
        setattr(dataset, keyword, "1.2.3.4" if keyword == "StudyInstanceUID" else "CORRECTED")
    masks: list[np.ndarray | None] = [truth_masks[0], truth_masks[1], None]

    first = build_segmentation(series_inputs(flair_series), masks, MODEL_TAGS)
    other = build_segmentation(series_inputs(refiled), masks, MODEL_TAGS)
    captures = [secondary_capture_series(tumor_channels()), secondary_capture_series(tumor_channels())]
    for dataset in captures[1]:
        setattr(dataset, keyword, "1.2.3.4" if keyword == "StudyInstanceUID" else "CORRECTED")
    per_slice = [build_segmentations(series_inputs(capture), masks, MODEL_TAGS) for capture in captures]

    assert first.SeriesInstanceUID != other.SeriesInstanceUID and first.SOPInstanceUID != other.SOPInstanceUID
    assert per_slice[0][0].SeriesInstanceUID != per_slice[1][0].SeriesInstanceUID
    assert {seg.SOPInstanceUID for seg in per_slice[0]}.isdisjoint(seg.SOPInstanceUID for seg in per_slice[1])


def test_build_segmentation_describes_a_binary_neoplasm_segment(
    flair_series: list[Dataset], truth_masks: list[np.ndarray]
) -> None:
    inputs = series_inputs(flair_series)

    seg = pydicom.dcmread(
        pydicom.filebase.DicomBytesIO(
            part10_bytes(build_segmentation(inputs, [None, None, truth_masks[2]], MODEL_TAGS))
        )
    )

    assert seg.SegmentationType == "BINARY"
    assert seg.Manufacturer == MANUFACTURER
    assert int(seg.NumberOfFrames) == 3  # empty frames kept, one per source frame
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == flair_series[0].SeriesInstanceUID
    assert seg.StudyInstanceUID == flair_series[0].StudyInstanceUID
    assert seg.FrameOfReferenceUID == flair_series[0].FrameOfReferenceUID
    (segment,) = seg.SegmentSequence
    category = segment.SegmentedPropertyCategoryCodeSequence[0]
    property_type = segment.SegmentedPropertyTypeCodeSequence[0]
    assert (category.CodingSchemeDesignator, category.CodeValue) == (
        "SCT",
        codes.SCT.MorphologicallyAbnormalStructure.value,
    )
    assert (property_type.CodingSchemeDesignator, property_type.CodeValue) == ("SCT", "108369006")
    assert segment.SegmentAlgorithmType == "AUTOMATIC"
    algorithm = segment.SegmentationAlgorithmIdentificationSequence[0]
    assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == ("resunet", "3.4.5")
    assert "resnet-classifier@1.2.0" in algorithm.AlgorithmParameters


def test_build_segmentation_of_a_multiframe_source(truth_masks: list[np.ndarray]) -> None:
    multiframe = legacy_multiframe(mr_series(tumor_channels()))
    inputs = series_inputs([multiframe])
    masks = [truth_masks[index] for index in range(3)]

    decoded = read_segmentation_masks(build_segmentation(inputs, masks, MODEL_TAGS))

    stack = decoded[multiframe.SOPInstanceUID]
    assert stack.shape == (3, 256, 256)
    for slice_input, mask in zip(inputs, masks, strict=True):
        np.testing.assert_array_equal(stack[slice_input.reference.frame_number - 1], mask)


def test_a_vendors_private_elements_in_a_sources_functional_groups_are_not_copied(
    truth_masks: list[np.ndarray],
) -> None:
    """Interop review 63 F6: private elements beside the standard ones in an enhanced source's Pixel Measures, Plane
    Orientation and Plane Position items (a private name among them) were copied into the SEG's."""
    multiframe = legacy_multiframe(mr_series(tumor_channels()))
    groups = [multiframe.SharedFunctionalGroupsSequence[0], *multiframe.PerFrameFunctionalGroupsSequence]
    for group in groups:
        for keyword in ("PixelMeasuresSequence", "PlaneOrientationSequence", "PlanePositionSequence"):
            if keyword in group:
                block = group[keyword].value[0].private_block(0x2005, "Philips MR Imaging DD 005", create=True)
                block.add_new(0x10, "LO", "PRIVATE CANARY")
    inputs = series_inputs([multiframe])

    segmentation = build_segmentation(inputs, [truth_masks[index] for index in range(3)], MODEL_TAGS)

    assert b"PRIVATE CANARY" not in part10_bytes(segmentation)
    assert "PixelSpacing" in segmentation.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]


@pytest.mark.parametrize(
    ("keyword", "written"),
    [
        ("SliceThickness", None),
        ("SliceThickness", b"nan   "),
        ("SliceThickness", b"inf   "),
        ("SliceThickness", b"5,000 "),
        ("SpacingBetweenSlices", b"5,000 "),
        ("SpacingBetweenSlices", b"2.5   "),  # slices 5 mm apart: half the volume read back (interop review 64 F2)
    ],
    ids=["thickness-absent", "thickness-nan", "thickness-inf", "thickness-comma", "spacing-comma", "spacing-2.5"],
)
def test_an_enhanced_sources_unusable_pixel_measures_are_not_copied_into_its_seg(
    truth_masks: list[np.ndarray], keyword: str, written: bytes | None
) -> None:
    """Interop review 63 F4: an enhanced image's Pixel Measures were copied as they came: "5,0", "nan" or "inf" (a
    SEG dciodvfy refuses, that highdicom cannot read back), and no Slice Thickness at all (Type 1C in a SEG). The
    thickness is the slices' spacing, as for a classic image's; a spacing that is no number is left out."""
    multiframe = legacy_multiframe(mr_series(tumor_channels()))
    measures = multiframe.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    if written is None:
        del measures[keyword]
        data = to_bytes(multiframe)
    else:
        measures[keyword].value = "9.125"
        data = to_bytes(multiframe).replace(b"9.125 ", written)
    inputs = series_inputs([pydicom.dcmread(io.BytesIO(data))])

    segmentation = build_segmentation(inputs, [truth_masks[index] for index in range(3)], MODEL_TAGS)

    made = part10_bytes(segmentation)
    assert dciodvfy_errors(made, "Segmentation") == []
    built = segmentation.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    assert float(built.SliceThickness) == pytest.approx(slice_spacing_mm([item.reference for item in inputs]))
    assert keyword == "SliceThickness" or "SpacingBetweenSlices" not in built
    hd.seg.segread(io.BytesIO(made))  # highdicom reads it back


def test_an_enhanced_sources_spacing_between_slices_is_kept_where_it_is_the_slices(
    truth_masks: list[np.ndarray],
) -> None:
    multiframe = legacy_multiframe(mr_series(tumor_channels()))
    multiframe.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].SpacingBetweenSlices = SLICE_GAP_MM
    inputs = series_inputs([multiframe])

    segmentation = build_segmentation(inputs, [truth_masks[index] for index in range(3)], MODEL_TAGS)

    built = segmentation.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    assert float(built.SpacingBetweenSlices) == SLICE_GAP_MM


@pytest.mark.parametrize("keyword", ["PixelMeasuresSequence", "PlaneOrientationSequence"])
def test_a_multiframe_source_with_its_plane_per_frame_gets_a_seg(truth_masks: list[np.ndarray], keyword: str) -> None:
    """The standard lets an enhanced image hold Pixel Measures and Plane Orientation per frame; highdicom takes them
    shared only, and the SEG was refused (the DICOM node then sent nothing; attack review 28, finding 3)."""
    multiframe = legacy_multiframe(mr_series(tumor_channels()))
    item = multiframe.SharedFunctionalGroupsSequence[0][keyword].value
    delattr(multiframe.SharedFunctionalGroupsSequence[0], keyword)
    for group in multiframe.PerFrameFunctionalGroupsSequence:
        setattr(group, keyword, [Dataset(item[0])])
    inputs = series_inputs([multiframe])
    masks = [truth_masks[index] for index in range(3)]

    segmentation = build_segmentation(inputs, masks, MODEL_TAGS)

    stack = read_segmentation_masks(segmentation)[multiframe.SOPInstanceUID]
    for slice_input, mask in zip(inputs, masks, strict=True):
        np.testing.assert_array_equal(stack[slice_input.reference.frame_number - 1], mask)
    assert keyword in multiframe.PerFrameFunctionalGroupsSequence[0]  # the source header is left as it came


def test_an_enhanced_sources_slice_thickness_per_frame_stays_per_frame(truth_masks: list[np.ndarray]) -> None:
    """Interop review 64 F4: Pixel Measures per frame of thicknesses 5, 5 and 2 mm became one shared 5 mm."""
    multiframe = legacy_multiframe(mr_series(tumor_channels()))
    item = multiframe.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    del multiframe.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence
    for group, thickness in zip(multiframe.PerFrameFunctionalGroupsSequence, (5.0, 5.0, 2.0), strict=True):
        measures = copy.deepcopy(item)
        measures.SliceThickness = thickness
        group.PixelMeasuresSequence = [measures]
    inputs = series_inputs([pydicom.dcmread(io.BytesIO(to_bytes(multiframe)))])

    segmentation = build_segmentation(inputs, [truth_masks[index] for index in range(3)], MODEL_TAGS)

    thickness_of = {
        int(group.DerivationImageSequence[0].SourceImageSequence[0].ReferencedFrameNumber): float(
            group.PixelMeasuresSequence[0].SliceThickness
        )
        for group in segmentation.PerFrameFunctionalGroupsSequence
    }
    assert thickness_of == {1: 5.0, 2: 5.0, 3: 2.0}
    assert "PixelMeasuresSequence" not in segmentation.SharedFunctionalGroupsSequence[0]
    hd.seg.segread(io.BytesIO(part10_bytes(segmentation)))  # highdicom reads it back


def test_slices_whose_orientations_differ_by_rounding_get_a_seg(truth_masks: list[np.ndarray]) -> None:
    """One slice written with 5 decimals, the next with 6 (1e-5 apart): one plane to the flow, but highdicom wants
    the orientations equal, and the SEG was refused (the DICOM node then sent nothing; attack review 28, finding 4)."""
    series = mr_series(tumor_channels())
    series[1].ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 0.99999999995, 1e-5]
    inputs = series_inputs(series)

    segmentation = build_segmentation(inputs, truth_masks[:3], MODEL_TAGS)

    decoded = read_segmentation_masks(segmentation)
    for dataset, mask in zip(series, truth_masks, strict=False):
        np.testing.assert_array_equal(decoded[dataset.SOPInstanceUID], mask[None])
    assert series[1].ImageOrientationPatient[5] == 1e-5  # the source header is left as it came


def test_a_multi_frame_capture_gets_a_seg_per_positive_frame_that_names_its_frame(
    truth_masks: list[np.ndarray],
) -> None:
    """Before, highdicom refused it (a source without a Frame of Reference may have one frame only): no SEG, no SR."""
    capture = multiframe_secondary_capture(tumor_channels())
    inputs = series_inputs([capture])

    segmentations = build_segmentations(inputs, [truth_masks[0], None, truth_masks[2]], MODEL_TAGS)

    assert len(segmentations) == 2
    assert len({seg.SeriesInstanceUID for seg in segmentations}) == 1
    for seg, frame_number, mask in zip(segmentations, (1, 3), (truth_masks[0], truth_masks[2]), strict=True):
        (source,) = seg.SourceImageSequence
        assert (source.ReferencedSOPClassUID, source.ReferencedFrameNumber) == (capture.SOPClassUID, frame_number)
        (referenced,) = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence  # no frame number: interop 55 F2
        assert referenced.ReferencedSOPClassUID == capture.SOPClassUID and "ReferencedFrameNumber" not in referenced
        data = part10_bytes(seg)
        np.testing.assert_array_equal(read_segmentation_masks(data)[capture.SOPInstanceUID], mask[None])
        assert dciodvfy_errors(data, "Segmentation") == []


def test_single_frame_images_that_say_number_of_frames_1_get_the_seg_of_single_frame_images(
    truth_masks: list[np.ndarray],
) -> None:
    """Interop review 62 F7: some converters write Number of Frames 1 into single-frame MR images and captures. An MR
    series of them was refused its SEG ("a DICOM SEG of a multi-frame source covers one instance"), so the DICOM node
    sent nothing for the study; a capture's SEG named frame 1 of an image with no frames (an error to dciodvfy)."""
    series = mr_series(tumor_channels())
    captures = secondary_capture_series(tumor_channels())
    for dataset in [*series, *captures]:
        dataset.NumberOfFrames = 1
    grouped = mr_series(tumor_channels())  # review 71 F9: nor does a Shared Functional Groups Sequence
    for dataset in grouped:
        measures = Dataset()
        measures.PixelSpacing, measures.SliceThickness = dataset.PixelSpacing, dataset.SliceThickness
        shared = Dataset()
        shared.PixelMeasuresSequence = [measures]
        dataset.SharedFunctionalGroupsSequence = [shared]

    segmentation = part10_bytes(build_segmentation(series_inputs(series), truth_masks[:3], MODEL_TAGS))
    assert build_segmentation(series_inputs(grouped), truth_masks[:3], MODEL_TAGS).NumberOfFrames == 3
    capture_segmentations = build_segmentations(series_inputs(captures), truth_masks[:3], MODEL_TAGS)

    decoded = read_segmentation_masks(segmentation)
    for dataset, mask in zip(series, truth_masks, strict=False):
        np.testing.assert_array_equal(decoded[dataset.SOPInstanceUID], mask[None])
    assert dciodvfy_errors(segmentation, "Segmentation") == []
    assert len(capture_segmentations) == 3
    for made in capture_segmentations:
        assert "ReferencedFrameNumber" not in made.SourceImageSequence[0]
        assert dciodvfy_errors(part10_bytes(made), "Segmentation") == []


def test_a_slice_of_another_pixel_spacing_keeps_its_own_in_the_seg(truth_masks: list[np.ndarray]) -> None:
    """highdicom gives every SEG frame the first source's Pixel Spacing: a viewer placing the frames by geometry drew
    the mask of a 0.9 mm slice at 0.9375 mm (attack review 28, finding 6). A series' slices may differ by rounding
    (1 %; more is refused, `tests/api/routes/test_predict_dicom.py`), and each frame keeps its own."""
    series = mr_series(tumor_channels())
    series[1].PixelSpacing = [0.94, 0.94]
    inputs = series_inputs(series)

    seg = build_segmentation(inputs, truth_masks[:3], MODEL_TAGS)

    assert "PixelMeasuresSequence" not in seg.SharedFunctionalGroupsSequence[0]
    by_source = {
        group.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID: [
            float(value) for value in group.PixelMeasuresSequence[0].PixelSpacing
        ]
        for group in seg.PerFrameFunctionalGroupsSequence
    }
    assert by_source == {dataset.SOPInstanceUID: [float(value) for value in dataset.PixelSpacing] for dataset in series}
    data = part10_bytes(seg)
    assert dciodvfy_errors(data, "Segmentation") == []
    decoded = read_segmentation_masks(data)
    for dataset, mask in zip(series, truth_masks, strict=False):
        np.testing.assert_array_equal(decoded[dataset.SOPInstanceUID], mask[None])


def test_build_segmentation_references_pre_and_post_contrast_series(truth_masks: list[np.ndarray]) -> None:
    study = Study()
    sequences = [mr_series(tumor_channels(channel), study, series_number=channel + 1) for channel in range(3)]
    inputs = series_inputs([dataset for index in range(3) for series in sequences for dataset in [series[index]]])

    seg = build_segmentation(inputs, truth_masks, MODEL_TAGS)

    referenced = {item.SeriesInstanceUID for item in seg.ReferencedSeriesSequence}
    assert referenced == {series[0].SeriesInstanceUID for series in sequences}
    decoded = read_segmentation_masks(part10_bytes(seg))
    for dataset, mask in zip(sequences[FLAIR], truth_masks, strict=True):
        np.testing.assert_array_equal(decoded[dataset.SOPInstanceUID], mask[None])


def test_build_segmentation_rejects_slices_of_two_series(truth_masks: list[np.ndarray]) -> None:
    study = Study()  # one Frame of Reference: the two series are refused by the SEG, not as two coordinate systems
    first, second = mr_series(tumor_channels()[:1], study), mr_series(tumor_channels()[1:2], study)
    second[0].ImagePositionPatient = [*first[0].ImagePositionPatient[:2], first[0].ImagePositionPatient[2] + 5.0]
    inputs = series_inputs(first + second)

    with pytest.raises(SegmentationInputError, match="covers one series; the FLAIR slices come from 2 series"):
        build_segmentation(inputs, truth_masks[:2], MODEL_TAGS)


def test_build_segmentation_rejects_mask_of_wrong_size(flair_series: list[Dataset]) -> None:
    inputs = series_inputs(flair_series)

    with pytest.raises(ValueError, match=r"rows x columns \(256, 256\); got \(128, 128\)"):
        build_segmentation(inputs, [np.zeros((128, 128), np.uint8), None, None], MODEL_TAGS)


def test_segmentation_passes_dciodvfy(
    flair_series: list[Dataset], truth_masks: list[np.ndarray], tmp_path: Path
) -> None:
    dciodvfy = shutil.which("dciodvfy")
    if dciodvfy is None:
        pytest.skip("dciodvfy not found: install the Debian package dicom3tools (.ci/install-system-packages.sh)")
    path = tmp_path / "seg.dcm"
    path.write_bytes(
        part10_bytes(build_segmentation(series_inputs(flair_series), [None, *truth_masks[1:]], MODEL_TAGS))
    )

    result = subprocess.run([dciodvfy, str(path)], capture_output=True, text=True, timeout=60, check=False)

    report = result.stdout + result.stderr
    assert "Segmentation" in report  # dciodvfy recognised the IOD it checked
    assert [line for line in report.splitlines() if line.startswith("Error")] == []


def frame_at(z: float | None, spacing: tuple[float, float] | None = (0.5, 0.5), **geometry: float | None) -> DicomFrame:
    return DicomFrame(
        values=np.zeros((4, 4), np.float32),
        header=Dataset(),
        frame_number=1,
        number_of_frames=1,
        image_position=None if z is None else (0.0, 0.0, z),
        image_orientation=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
        pixel_spacing=spacing,
        slice_thickness=geometry.get("slice_thickness"),
        spacing_between_slices=geometry.get("spacing_between_slices"),
    )


def mask_with(pixels: int) -> np.ndarray:
    mask = np.zeros((4, 4), np.uint8)
    mask.flat[:pixels] = 1
    return mask


def test_tumor_volume_ml_uses_distance_between_positions() -> None:
    # Thickness 3 mm, but the slices are 4 mm apart: the distance is what counts.
    slices = [frame_at(z, slice_thickness=3.0) for z in (8.0, 0.0, 4.0)]  # given out of order

    volume = tumor_volume_ml([mask_with(10), None, mask_with(6)], slices)

    assert volume == pytest.approx(16 * 0.5 * 0.5 * 4.0 / 1000.0)


def test_tumor_volume_ml_of_a_short_series_with_a_slice_missing_takes_the_shortest_gap() -> None:
    """Attack review 38: slices at 0, 5 and 15 mm took the median gap, 7.5 mm, as their spacing: a volume half again
    too large. The 10 mm gap is a slice missing; each slice stands for 5 mm."""
    slices = [frame_at(z) for z in (0.0, 5.0, 15.0)]

    volume = tumor_volume_ml([mask_with(4), mask_with(4), mask_with(4)], slices)

    assert volume == pytest.approx(12 * 0.5 * 0.5 * 5.0 / 1000.0)


@pytest.mark.parametrize("stray_mm", [12.5, 0.5])
def test_a_stray_slice_between_two_others_adds_no_slab_of_its_own(stray_mm: float) -> None:
    """Attack review 39: one slice half-way in a series 5 mm apart halved the spacing (and the volume), and one 0.5 mm
    from another counted a whole 5 mm slab (+23 %). The slices' slabs share the space between neighbours."""
    regular = [frame_at(z) for z in (0.0, 5.0, 10.0, 15.0, 20.0, 25.0, 30.0)]
    with_stray = [*regular, frame_at(stray_mm)]

    volume = tumor_volume_ml([mask_with(4)] * len(regular), regular)

    assert volume == pytest.approx(7 * 4 * 0.25 * 5.0 / 1000.0)
    assert tumor_volume_ml([mask_with(4)] * len(with_stray), with_stray) == pytest.approx(volume)


def test_tumor_volume_ml_of_two_slices_takes_their_declared_spacing_when_a_slice_lies_between() -> None:
    """Attack review 38: the middle of three 5 mm slices missing, the two left took their 10 mm distance as the
    slab each stands for. A declared spacing shorter than the slices' thickness is the gap between slabs, as some
    writers put it there, and is no spacing: 3 mm apart, 2 mm thick, a 1 mm gap is no two slices missing."""
    declared = [frame_at(z, spacing_between_slices=5.0, slice_thickness=5.0) for z in (0.0, 10.0)]
    gap_between_slabs = [frame_at(z, spacing_between_slices=1.0, slice_thickness=2.0) for z in (0.0, 3.0)]

    assert tumor_volume_ml([mask_with(4)] * 2, declared) == pytest.approx(8 * 0.25 * 5.0 / 1000.0)
    assert tumor_volume_ml([mask_with(4)] * 2, gap_between_slabs) == pytest.approx(8 * 0.25 * 3.0 / 1000.0)


def test_tumor_volume_ml_falls_back_to_spacing_between_slices_then_thickness() -> None:
    alone = frame_at(0.0, spacing_between_slices=6.0, slice_thickness=5.0)
    assert tumor_volume_ml([mask_with(4)], [alone]) == pytest.approx(4 * 0.25 * 6.0 / 1000.0)
    thick = frame_at(None, slice_thickness=5.0)
    assert tumor_volume_ml([mask_with(4)], [thick]) == pytest.approx(4 * 0.25 * 5.0 / 1000.0)


def test_tumor_volume_ml_ignores_positions_unless_every_slice_has_one() -> None:
    # Three slices 5 mm apart, the middle one without a position: the gap between the other two (10 mm) is no
    # slice spacing (it counted the unplaced slice's place as empty space and doubled the volume).
    slices = [
        frame_at(0.0, slice_thickness=5.0),
        frame_at(None, slice_thickness=5.0),
        frame_at(10.0, slice_thickness=5.0),
    ]

    volume = tumor_volume_ml([mask_with(4), mask_with(4), mask_with(4)], slices)

    assert volume == pytest.approx(12 * 0.25 * 5.0 / 1000.0)
    assert tumor_volume_ml([mask_with(4)] * 3, [frame_at(0.0), frame_at(None), frame_at(10.0)]) is None


def test_tumor_volume_ml_is_unknown_without_geometry() -> None:
    assert tumor_volume_ml([mask_with(4)], [frame_at(0.0)]) is None  # no spacing between slices at all
    assert tumor_volume_ml([mask_with(4)], [frame_at(0.0, spacing=None, slice_thickness=5.0)]) is None
    assert tumor_volume_ml([None, mask_with(0)], [frame_at(0.0), frame_at(None)]) == 0.0


@pytest.mark.parametrize(
    ("detected", "reaches_end"),
    [([False, True, False], False), ([True, True, False], True), ([False, False, True], True), ([False] * 3, False)],
)
def test_a_series_says_when_its_tumor_reaches_the_first_or_last_slice_sent(
    flair_series: list[Dataset], detected: list[bool], reaches_end: bool
) -> None:
    """A browser review found 52.8 mL shown for the first 4 slices of a tumor of 71.4 mL, with no sign that the
    tumor goes on beyond them."""
    order = [2, 0, 1]  # sent out of order: the ends are anatomical, not the request's
    datasets = [flair_series[index] for index in order]
    predictions = [SlicePrediction(0.9 if detected[index] else 0.1, detected[index], None) for index in order]

    result = summarise_series(series_inputs(datasets), predictions, MODEL_TAGS, build_seg=False)

    assert (result.tumor_reaches_series_end, result.slices_missing) == (reaches_end, 0)


def test_tumor_volume_ml_of_the_committed_series(flair_series: list[Dataset], truth_masks: list[np.ndarray]) -> None:
    inputs = series_inputs(flair_series)

    volume = tumor_volume_ml(truth_masks, [slice_input.reference for slice_input in inputs])

    voxel_ml = PIXEL_SPACING_MM[0] * PIXEL_SPACING_MM[1] * SLICE_GAP_MM / 1000.0
    assert slice_spacing_mm([slice_input.reference for slice_input in inputs]) == SLICE_GAP_MM
    assert volume == pytest.approx(sum(int(mask.sum()) for mask in truth_masks) * voxel_ml)


class TruthPredictor:
    """Answers with given masks: positive where a mask is given, in batches like the real one."""

    model_tags = MODEL_TAGS

    def __init__(self, masks: list[np.ndarray | None]) -> None:
        self.masks = masks
        self.batches: list[int] = []

    classifier_threshold = 0.5
    series_min_component_voxels = 0
    single_slice_mask_min_probability = 0.0
    single_slice_min_component_pixels = 0

    def predict_preprocessed(self, batch: np.ndarray, sizes: list[tuple[int, int]]) -> list[SlicePrediction]:
        start = sum(self.batches)
        self.batches.append(len(sizes))
        return [
            SlicePrediction(probability=0.9 if mask is not None else 0.1, detected=mask is not None, mask=mask)
            for mask in self.masks[start : start + len(sizes)]
        ]


def segment_series(predictor: TruthPredictor, inputs: list[SliceInput], batch_size: int = 32) -> SeriesResult:
    """The series flow pacs-sync runs: the predictor `batch_size` slices at a time, then the SEG and the volume."""
    runner = predictor_runner(predictor, batch_size)  # type: ignore[arg-type]
    service = PredictionService(predictor, runner, UploadLimits(), offload=False)
    return asyncio.run(service.predict_series(SeriesUploads(list(inputs)), build_seg=True)).result


def test_segment_series_builds_a_seg_when_a_slice_is_positive(
    flair_series: list[Dataset], truth_masks: list[np.ndarray]
) -> None:
    inputs = series_inputs(flair_series)
    masks: list[np.ndarray | None] = [None, truth_masks[1], truth_masks[2]]
    predictor = TruthPredictor(masks)

    result = segment_series(predictor, inputs, batch_size=2)  # type: ignore[arg-type]

    assert predictor.batches == [2, 1]
    assert result.tumor_detected
    (segmentation,) = result.segmentations
    assert result.tumor_volume_ml == pytest.approx(tumor_volume_ml(masks, [item.reference for item in inputs]))
    decoded = read_segmentation_masks(segmentation)
    np.testing.assert_array_equal(decoded[inputs[2].reference.sop_instance_uid][0], truth_masks[2])


def test_segment_series_makes_no_seg_when_every_slice_is_negative(flair_series: list[Dataset]) -> None:
    result = segment_series(TruthPredictor([None, None, None]), series_inputs(flair_series))  # type: ignore[arg-type]

    assert not result.tumor_detected
    assert result.segmentations == []
    assert result.tumor_volume_ml == 0.0


def test_a_one_slice_series_under_the_single_slice_minimum_gets_an_empty_seg(
    flair_series: list[Dataset], truth_masks: list[np.ndarray]
) -> None:
    # One DICOM slice is a slice answered on its own: detected (0.9 >= 0.5), but under the minimum (0.95) its mask
    # is withheld, so the SEG (asked for) has the slice's frame, empty, and the volume is 0.
    predictor = TruthPredictor([truth_masks[1]])
    predictor.single_slice_mask_min_probability = 0.95
    inputs = series_inputs(flair_series)[1:2]

    result = segment_series(predictor, inputs)  # type: ignore[arg-type]

    assert result.tumor_detected and result.predictions[0].mask is None
    (segmentation,) = result.segmentations
    assert result.tumor_volume_ml == 0.0
    decoded = read_segmentation_masks(segmentation)
    assert not decoded[inputs[0].reference.sop_instance_uid][0].any()


@pytest.mark.parametrize("keyword", ["ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"])
def test_a_seg_of_slices_placed_without_their_plane_names_what_they_lack(
    truth_masks: list[np.ndarray], keyword: str
) -> None:
    """A review found "'...' object has no attribute '...'" (highdicom's AttributeError, its names redacted)."""
    datasets = mr_series(tumor_channels())
    for dataset in datasets:
        delattr(dataset, keyword)

    with pytest.raises(SegmentationInputError, match=f"the FLAIR slices lack {keyword}$"):
        build_segmentation(series_inputs(datasets), truth_masks, MODEL_TAGS)


def test_a_seg_of_two_slices_with_one_missing_between_them_says_the_spacing_the_volume_takes(
    truth_masks: list[np.ndarray],
) -> None:
    """Interop review 39: two slices 10 mm apart whose files declare 5 mm (one missing between) had a volume of 5 mm
    slabs, while the SEG said 10 mm between its frames: twice the volume for a viewer that counts by the SEG."""
    series = mr_series(tumor_channels())
    inputs = series_inputs([series[0], series[2]])

    seg = build_segmentation(inputs, [truth_masks[0], truth_masks[2]], MODEL_TAGS)

    measures = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    assert float(measures.SpacingBetweenSlices) == slice_spacing_mm([item.reference for item in inputs]) == 5.0
    assert dciodvfy_errors(part10_bytes(seg), "Segmentation") == []


def test_a_seg_over_a_stray_slice_declares_no_spacing_between_slices(truth_masks: list[np.ndarray]) -> None:
    """Interop review 39: a copy of a slice 0.5 mm from it in a series 5 mm apart; the SEG declared a regular 5 mm
    stack beside frames 0.5 mm apart, and a viewer counting voxels x that spacing overstated the volume. No single
    spacing describes these frames, so the SEG declares none (the regular series keeps its 5 mm)."""
    series = mr_series(tumor_channels() * 3)  # long enough that the median gap is the series' 5 mm
    masks = truth_masks * 3
    stray = copy.deepcopy(series[4])
    stray.SOPInstanceUID = stray.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    stray.InstanceNumber = len(series) + 1
    stray.ImagePositionPatient = [*stray.ImagePositionPatient[:2], stray.ImagePositionPatient[2] + 0.5]

    regular = build_segmentation(series_inputs(series), masks, MODEL_TAGS)
    seg = build_segmentation(series_inputs([*series, stray]), [*masks, masks[4]], MODEL_TAGS)

    assert float(regular.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].SpacingBetweenSlices) == 5.0
    assert "SpacingBetweenSlices" not in seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    assert seg.NumberOfFrames == len(series) + 1
    assert dciodvfy_errors(part10_bytes(seg), "Segmentation") == []
