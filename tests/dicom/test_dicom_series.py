"""`app.dicom.dicom_series`: frames of one request grouped into model inputs, intensities normalised per series."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import EnhancedMRImageStorage, generate_uid

from app.dicom.dicom_series import SlicePlaces, model_inputs, normalise_volume, prepare_inputs
from app.dicom.slice_order import anatomical_order, missing_slices, series_breaks
from app.errors import FileUnreadableError, InvalidDicomImageError, UndecodableDicomError
from app.imaging import stretch_to_uint8
from app.model_input import model_input
from tests.dicom.builders import FLAIR, Study, legacy_multiframe, mr_dataset, mr_series, to_bytes, tumor_channels
from tests.dicom.reading import read_dicom, read_series


def single_mr(pixels: np.ndarray, **kwargs: object) -> Dataset:
    return mr_dataset(pixels, Study(), generate_uid(), **kwargs)


def test_read_series_reports_unreadable_files_in_place_and_keeps_the_others() -> None:
    series = mr_series(tumor_channels(FLAIR))
    unreadable = FileUnreadableError("cannot read the file: No such file or directory")
    uploads = [to_bytes(series[0]), b"\0" * 128 + b"DICM" + b"\xff" * 10, unreadable, to_bytes(series[2])]

    read = read_series(uploads, max_pixels=1 << 20)

    kept = [series[0].SOPInstanceUID, series[2].SOPInstanceUID]
    assert [item.reference.sop_instance_uid for item in read.inputs] == kept
    assert sorted(read.file_errors) == [1, 2]
    assert isinstance(read.file_errors[1], UndecodableDicomError)
    assert read.file_errors[2] is unreadable


def test_read_series_normalises_over_the_files_that_were_read() -> None:
    images = tumor_channels(FLAIR)
    read = read_series([to_bytes(dataset) for dataset in mr_series(images)], max_pixels=1 << 20)

    expected = normalise_volume([image.astype(np.float32) for image in images])
    for slice_input, image in zip(read.inputs, expected, strict=True):
        np.testing.assert_array_equal(slice_input.image, image)


def test_model_inputs_preprocess_each_slice_and_keep_its_size(flair: np.ndarray) -> None:
    small = flair[:200, :120]
    # Two series of one slice each: the slices of one series share a size (`prepare_inputs` refuses others).
    inputs = prepare_inputs(read_dicom(to_bytes(single_mr(flair)))) + prepare_inputs(
        read_dicom(to_bytes(single_mr(small)))
    )

    batch, sizes = model_inputs(inputs)

    assert sizes == [(256, 256), (200, 120)]
    assert batch.shape == (2, 256, 256, 3) and batch.dtype == np.float32
    for row, slice_input in zip(batch, inputs, strict=True):
        np.testing.assert_array_equal(row, model_input(slice_input.image))


def test_dicom_and_raster_slices_become_model_inputs_through_one_function() -> None:
    """Newcomer review 45 F16: `model_inputs` re-implemented `app.uploads.model_input` (the client's slice error)."""
    from app import uploads
    from app.dicom import dicom_series

    assert dicom_series.model_input is uploads.model_input is model_input


def test_normalise_volume_stretches_over_the_whole_series() -> None:
    bright = np.array([[0.0, 1000.0]])
    dim = np.array([[0.0, 500.0]])

    assert [image.tolist() for image in normalise_volume([bright, dim])] == [[[0, 255]], [[0, 128]]]
    assert normalise_volume([np.full((2, 2), 7.0)])[0].tolist() == [[0, 0], [0, 0]]


def test_normalise_volume_lets_a_few_extreme_pixels_saturate_rather_than_darken_the_series() -> None:
    """attack23: one pixel at 65535 in a 16-bit series (the rest under 1,200) turned three positive slices into "no
    tumor": the min/max stretch squeezed the brain into a few grey levels."""
    images = [image.astype(np.float32) * 4.0 for image in tumor_channels(FLAIR)]
    spiked = [image.copy() for image in images]
    spiked[0][10, 10] = 65535.0

    clean, guarded = normalise_volume(images), normalise_volume(spiked)

    assert guarded[0][10, 10] == 255
    guarded[0][10, 10] = clean[0][10, 10]
    for expected, image in zip(clean, guarded, strict=True):
        np.testing.assert_array_equal(image, expected)


def test_prepare_inputs_takes_a_single_instance_as_flair(flair: np.ndarray) -> None:
    frames = read_dicom(to_bytes(single_mr(flair)))

    (slice_input,) = prepare_inputs(frames)

    assert slice_input.image.shape == flair.shape and slice_input.image.dtype == np.uint8
    assert slice_input.reference is frames[0]
    np.testing.assert_array_equal(slice_input.image, normalise_volume([flair.astype(np.float32)])[0])


def test_prepare_inputs_stacks_three_series_in_request_order() -> None:
    study = Study()
    sequences = [mr_series(tumor_channels(channel), study, series_number=channel + 1) for channel in range(3)]
    # Request order: pre-contrast, FLAIR, post-contrast per slice, slices interleaved.
    frames = [frame for index in range(3) for series in sequences for frame in read_dicom(to_bytes(series[index]))]

    inputs = prepare_inputs(frames)

    assert len(inputs) == 3
    for index, slice_input in enumerate(inputs):
        assert slice_input.image.shape == (256, 256, 3)
        assert slice_input.reference.sop_instance_uid == sequences[FLAIR][index].SOPInstanceUID
        for channel in range(3):
            series_values = [image.astype(np.float32) for image in tumor_channels(channel)]
            expected = normalise_volume(series_values)[index]
            np.testing.assert_array_equal(slice_input.image[:, :, channel], expected)


def test_prepare_inputs_rejects_two_frames_at_one_position(flair: np.ndarray) -> None:
    study = Study()
    frames = [
        frame
        for series in (mr_series([flair], study), mr_series([flair], study))
        for frame in read_dicom(to_bytes(series[0]))
    ]

    with pytest.raises(InvalidDicomImageError, match="must be 1 \\(FLAIR\\) or 3 .*got 2 at position"):
        prepare_inputs(frames)


def test_prepare_inputs_rejects_three_frames_of_one_series(flair: np.ndarray) -> None:
    study, series_uid = Study(), generate_uid()
    frames = [read_dicom(to_bytes(mr_dataset(flair, study, series_uid, instance_number=n)))[0] for n in (1, 2, 3)]

    with pytest.raises(
        InvalidDicomImageError, match=r"3 frames lie at one slice position .* from 3 files of one series"
    ):
        prepare_inputs(frames)


def test_prepare_inputs_says_a_slice_came_again_as_a_lossy_copy(flair: np.ndarray) -> None:
    # Interop review 35: a series sent again after lossy compression has new SOP Instance UIDs (as the standard
    # requires), and its files name their originals; "send one file per slice" did not describe that.
    study, series_uid = Study(), generate_uid()
    original = mr_dataset(flair, study, series_uid, instance_number=1)
    copy = mr_dataset(flair, study, series_uid, instance_number=1)
    copy.LossyImageCompression = "01"
    source = Dataset()
    source.ReferencedSOPClassUID, source.ReferencedSOPInstanceUID = original.SOPClassUID, original.SOPInstanceUID
    copy.SourceImageSequence = [source]
    frames = [read_dicom(to_bytes(dataset))[0] for dataset in (original, copy)]

    with pytest.raises(InvalidDicomImageError, match="the same slice arrived more than once .* lossy compression"):
        prepare_inputs(frames)


def test_a_single_frame_copy_of_a_multi_frame_slice_is_named_as_a_copy_not_an_echo() -> None:
    """Review 36b: a multi-frame original keeps its Echo Time per frame, its single-frame copy at the top level, so
    the two seemed told apart by Echo Time and the message spoke of several echoes."""
    series = mr_series(tumor_channels())
    for dataset in series:
        dataset.EchoTime = 95.0
    original = legacy_multiframe(series)
    copy = mr_series(tumor_channels())[0]
    for keyword in ("StudyInstanceUID", "FrameOfReferenceUID", "PatientID", "PatientName"):
        setattr(copy, keyword, getattr(original, keyword))
    copy.SeriesInstanceUID, copy.EchoTime, copy.ImagePositionPatient = (
        original.SeriesInstanceUID,
        95.0,
        series[0].ImagePositionPatient,
    )
    source = Dataset()
    source.ReferencedSOPClassUID, source.ReferencedSOPInstanceUID = original.SOPClassUID, original.SOPInstanceUID
    copy.SourceImageSequence = [source]
    frames = [*read_dicom(to_bytes(original)), *read_dicom(to_bytes(copy))]

    with pytest.raises(InvalidDicomImageError, match="the same slice arrived more than once"):
        prepare_inputs(frames)


def test_prepare_inputs_names_the_echoes_of_a_multi_echo_series(flair: np.ndarray) -> None:
    # A dual-echo (PD/T2) series is one file per image, two at each position: the advice to send one file per slice
    # would not fit, so the message names what tells the files apart (names only, never their values).
    study, series_uid = Study(), generate_uid()
    datasets = []
    for echo, echo_time in ((1, 12.5), (2, 95.0)):
        dataset = mr_dataset(flair, study, series_uid, instance_number=echo)
        dataset.EchoNumbers, dataset.EchoTime = echo, echo_time
        datasets.append(dataset)
    frames = [read_dicom(to_bytes(dataset))[0] for dataset in datasets]

    with pytest.raises(InvalidDicomImageError) as refused:
        prepare_inputs(frames)

    message = refused.value.message
    assert "told apart by EchoNumbers and EchoTime" in message
    assert "send the files of one echo and one acquisition (the FLAIR ones) only" in message
    assert "12.5" not in message and "send one file per slice" not in message


def test_prepare_inputs_names_the_echoes_of_a_multi_echo_enhanced_mr_file() -> None:
    """Interop review 48 F3: an Enhanced MR file of two echoes per position, each frame with its own position and
    MR Echo Sequence, was told it "gives no position per frame" and to send "a position per frame", which it did."""
    study, series_uid = Study(), generate_uid()
    echoes = [
        mr_dataset(image, study, series_uid, instance_number=2 * index + echo, position_mm=index * 5.0)
        for index, image in enumerate(tumor_channels())
        for echo in (1, 2)
    ]
    enhanced = legacy_multiframe(echoes)
    enhanced.SOPClassUID = enhanced.file_meta.MediaStorageSOPClassUID = EnhancedMRImageStorage
    for frame, group in enumerate(enhanced.PerFrameFunctionalGroupsSequence):
        echo = Dataset()
        echo.EffectiveEchoTime = (81.0, 120.0)[frame % 2]
        group.MREchoSequence = [echo]

    with pytest.raises(InvalidDicomImageError) as refused:
        prepare_inputs(read_dicom(to_bytes(enhanced)))

    message = refused.value.message
    assert "2 frames of one multi-frame file lie at each slice position" in message
    assert "told apart by EffectiveEchoTime" in message
    assert "send the frames of one echo and one acquisition (the FLAIR ones) only" in message
    assert "gives no position per frame" not in message and "81" not in message


@pytest.mark.parametrize("frame_count", [2, 3])
def test_prepare_inputs_names_a_multiframe_file_without_a_position_per_frame(
    flair: np.ndarray, frame_count: int
) -> None:
    """A cine or a legacy multi-frame file: one ImagePositionPatient for all its frames (a review found this answered
    "three frames at one slice position must come from three series", which says nothing of the file's fault)."""
    dataset = mr_dataset(flair, Study(), generate_uid())
    dataset.NumberOfFrames = frame_count
    dataset.PixelData = np.ascontiguousarray(np.stack([flair] * frame_count)).tobytes()

    with pytest.raises(InvalidDicomImageError, match="from one multi-frame file that gives no position per frame"):
        prepare_inputs(read_dicom(to_bytes(dataset)))


def test_prepare_inputs_names_an_instance_sent_twice(flair: np.ndarray) -> None:
    data = to_bytes(mr_dataset(flair, Study(), generate_uid()))

    with pytest.raises(
        InvalidDicomImageError, match=r"from the same instance \(SOP Instance UID\) sent more than once"
    ):
        prepare_inputs(read_dicom(data) + read_dicom(data))


def test_prepare_inputs_still_asks_three_series_of_three_frames_from_two(flair: np.ndarray) -> None:
    study, series_uid = Study(), generate_uid()
    frames = [
        read_dicom(to_bytes(mr_dataset(flair, study, uid, instance_number=n)))[0]
        for n, uid in ((1, series_uid), (2, series_uid), (3, generate_uid()))
    ]

    with pytest.raises(InvalidDicomImageError, match="must come from three series .* from 2 series"):
        prepare_inputs(frames)


def test_anatomical_order_follows_positions_then_instance_numbers_then_the_files(flair: np.ndarray) -> None:
    datasets = mr_series([flair] * 4)  # positions 0, 5, 10, 15 mm along the normal, instance numbers 1-4
    sent = [2, 0, 3, 1]

    def order_of(kept: list) -> list[int]:
        return anatomical_order([read_dicom(to_bytes(kept[index]))[0] for index in sent])

    assert [sent[index] for index in order_of(datasets)] == [0, 1, 2, 3]
    for dataset in datasets:  # no positions: Instance Number
        del dataset.ImagePositionPatient
    assert [sent[index] for index in order_of(datasets)] == [0, 1, 2, 3]
    for dataset in datasets:  # neither: as sent
        del dataset.InstanceNumber
    assert order_of(datasets) == [0, 1, 2, 3]


@pytest.mark.parametrize(
    ("positions_mm", "breaks", "missing"),
    [
        ([0, 5, 10, 15, 20], set(), 0),  # every slice there
        ([0, 5, 15, 20, 25], set(), 1),  # one slice missing: a tumor goes on through it, the clean-up joins across
        ([0, 5, 10, 25, 30], {2}, 2),  # two missing between 10 and 25 mm: no neighbours
        ([30, 0, 5, 10, 25], {2}, 2),  # the same, sent in another order
        # Short series (attack review 38): the median of 5 and 10 mm was 7.5 mm, so no slice was missing and the
        # volume half again too large; with half the gaps the shortest, gaps two or three times it are slices missing.
        ([0, 5, 15], set(), 1),
        ([0, 5, 20], {1}, 2),
        ([0, 5, 10, 20], set(), 1),
        ([0, 4.99, 15.0], set(), 1),  # rounding in the positions
        # Only a third of the gaps at 5 mm, but the files declare 5 mm (interop review 39: 5 of 11 slices took the
        # median of their 10 and 15 mm gaps, "no slice missing")
        ([0, 5, 15, 25], set(), 2),
        ([0, 10, 25, 35, 50], {1, 3}, 6),  # two missing in each 15 mm gap: no neighbours there
        ([0, 0.5, 5, 10], set(), 0),  # a stray slice 0.5 mm from another: the spacing stays the median (4.5 mm)
        ([0, 5, 10, 15, 35], {3}, 3),  # four spacings apart: the median (5 mm) as before
        # A stray slice half-way between two of a long series (attack review 39: 23 slices' spacing halved).
        ([*range(0, 60, 5), 57.5, *range(60, 115, 5)], set(), 0),
        # Two slices: their distance is their spacing, unless their files declare a spacing (5 mm here) two or
        # three times shorter (attack review 38: the middle FLAIR slice of three missing).
        ([0, 5], set(), 0),
        ([0, 10], set(), 1),
        ([0, 15], {0}, 2),
        ([0, 20], set(), 0),
    ],
)
def test_series_breaks_are_where_two_or_more_slices_are_missing(
    flair: np.ndarray, positions_mm: list[float], breaks: set[int], missing: int
) -> None:
    study, series_uid = Study(), generate_uid()
    frames = [
        read_dicom(to_bytes(mr_dataset(flair, study, series_uid, instance_number=index + 1, position_mm=position)))[0]
        for index, position in enumerate(positions_mm)
    ]

    assert series_breaks(frames, anatomical_order(frames)) == breaks
    assert missing_slices(frames) == missing  # what the answer reports as slices_missing


def test_series_without_positions_has_no_breaks(flair: np.ndarray) -> None:
    datasets = mr_series([flair] * 4)
    for dataset in datasets:
        del dataset.ImagePositionPatient
    frames = [read_dicom(to_bytes(dataset))[0] for dataset in datasets]

    assert series_breaks(frames, anatomical_order(frames)) == set()
    assert missing_slices(frames) is None  # not known: interop review 42 (it said 0)


def test_frames_closer_than_the_tolerance_are_one_slice_even_across_a_grid_line() -> None:
    """Positions were rounded to a 0.01 mm grid: 0.0002 mm apart on either side of a grid line were two slices,
    0.0098 mm apart one (newcomer review 28, finding 3)."""
    orientation = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    places = SlicePlaces()

    first = places.place("1.2", (0.0, 0.0, 10.0049), orientation)
    assert places.place("1.2", (0.0, 0.0, 10.0051), orientation) == first  # 0.0002 mm apart, across 10.005
    assert places.place("1.2", (0.0, 0.0, 10.0300), orientation) != first  # 0.025 mm apart
    assert places.place("1.3", (0.0, 0.0, 10.0049), orientation) != first  # another frame of reference
    assert places.place("1.2", (0.0, 0.0, 10.0049), (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)) != first  # another plane
    assert places.place("1.2", None, orientation) != places.place("1.2", None, orientation)  # no position
    assert places.count == 6


def test_three_series_with_rounding_noise_across_a_grid_line_are_stacked() -> None:
    study = Study()
    sequences = [mr_series(tumor_channels(channel), study, series_number=channel + 1) for channel in range(3)]
    for channel, series in enumerate(sequences):
        for dataset in series:
            x, y, z = dataset.ImagePositionPatient
            dataset.ImagePositionPatient = [x, y, float(z) + 0.0049 + 0.0001 * channel]  # 10.0049, 10.005, 10.0051
    frames = [frame for series in sequences for dataset in series for frame in read_dicom(to_bytes(dataset))]

    inputs = prepare_inputs(frames)

    assert len(inputs) == 3 and all(item.image.shape == (256, 256, 3) for item in inputs)


def test_a_series_and_an_upload_are_stretched_by_one_rule() -> None:
    """The DICOM copy of the stretch gave a blank series for a span near float64's limits, where the upload's did
    not (newcomer review 28, finding 6)."""
    extreme = np.array([[-1e308, 0.0], [1e308, 5e307]])
    ordinary = np.array([[0.0, 100.0], [200.0, 300.0]])

    for values in (extreme, ordinary):
        np.testing.assert_array_equal(normalise_volume([values])[0], stretch_to_uint8(values))
    np.testing.assert_array_equal(normalise_volume([extreme])[0], [[0, 128], [255, 191]])
