"""A T1 frame is read in FLAIR's layout only when every FLAIR pixel is one of its pixels: no resampling, ever."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom.dataset import Dataset

from app.dicom.dicom_frame import DicomFrame
from app.series import t1_on_flair_grid
from app.series.t1_on_flair_grid import t1_frames_in_flair_layout

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
COS, SIN = float(np.cos(np.radians(2.5))), float(np.sin(np.radians(2.5)))


def frame(
    values: np.ndarray,
    series: str,
    position: tuple[float, float, float] = (-10.0, -10.0, 5.0),
    orientation: tuple[float, ...] = AXIAL,
    spacing: float = 1.0,
) -> DicomFrame:
    header = Dataset()
    header.SeriesInstanceUID, header.FrameOfReferenceUID, header.SOPInstanceUID = series, "1.2.3", f"{series}.1"
    return DicomFrame(values, header, 1, 1, position, orientation, (spacing, spacing), 5.0, None)  # type: ignore[arg-type]


FLAIR_PIXELS = np.arange(20, dtype=np.float32).reshape(4, 5)


def t1_frames_on_flair_grid(frames: list[DicomFrame], flair_uid: str) -> tuple[list[DicomFrame], int]:
    """`frames` with each T1 frame read in FLAIR's layout in its place, as `decode_series` puts them, and how many."""
    result = list(frames)
    turned = 0
    for index, in_flair_layout in t1_frames_in_flair_layout(result, flair_uid):
        result[index] = in_flair_layout
        turned += 1
    return result, turned


def t1_frames_on_flair_grid_counted(
    frames: list[DicomFrame], flair_uid: str
) -> tuple[list[DicomFrame], int, list[tuple[DicomFrame, DicomFrame]]]:
    """`t1_frames_on_flair_grid`, and the (T1, FLAIR) frames it compared, in order."""
    tried: list[tuple[DicomFrame, DicomFrame]] = []
    original = t1_on_flair_grid._on_grid_of

    def counted(t1_frame: DicomFrame, flair_frame: DicomFrame) -> DicomFrame | None:
        tried.append((t1_frame, flair_frame))
        return original(t1_frame, flair_frame)

    t1_on_flair_grid._on_grid_of = counted
    try:
        result, turned = t1_frames_on_flair_grid(frames, flair_uid)
    finally:
        t1_on_flair_grid._on_grid_of = original
    return result, turned, tried


def test_a_t1_frame_stored_flipped_is_read_in_flairs_layout_and_takes_its_geometry() -> None:
    flair = frame(FLAIR_PIXELS, "flair")
    t1 = frame(FLAIR_PIXELS[::-1] + 100, "t1", position=(-10.0, -7.0, 5.0), orientation=(1, 0, 0, 0, -1, 0))

    (_, on_grid), turned = t1_frames_on_flair_grid([flair, t1], "flair")

    assert turned == 1
    np.testing.assert_array_equal(on_grid.values, FLAIR_PIXELS + 100)
    assert (on_grid.image_position, on_grid.image_orientation) == (flair.image_position, flair.image_orientation)
    assert on_grid.header is t1.header  # still the T1 instance: the SEG and SR name it


def test_a_larger_t1_field_of_view_is_cropped_to_flairs() -> None:
    larger = np.pad(FLAIR_PIXELS + 100, 2, constant_values=-1)
    t1 = frame(larger, "t1", position=(-12.0, -12.0, 5.0))

    (_, on_grid), turned = t1_frames_on_flair_grid([frame(FLAIR_PIXELS, "flair"), t1], "flair")

    assert turned == 1
    np.testing.assert_array_equal(on_grid.values, FLAIR_PIXELS + 100)


def test_frames_that_would_need_resampling_or_do_not_cover_flair_are_left_as_they_came() -> None:
    flair = frame(FLAIR_PIXELS, "flair")
    others = [
        frame(FLAIR_PIXELS[::-1], "t1", position=(-10.0, -8.5, 5.0), orientation=(1, 0, 0, 0, -1, 0), spacing=0.5),
        frame(FLAIR_PIXELS[:3], "t1", position=(-10.0, -8.0, 5.0), orientation=(1, 0, 0, 0, -1, 0)),  # a row short
        frame(FLAIR_PIXELS[::-1], "t1", position=(-10.0, -6.5, 5.0), orientation=(1, 0, 0, 0, -1, 0)),  # half a pixel
        frame(FLAIR_PIXELS[::-1], "t1", position=(-10.0, -7.0, 6.0), orientation=(1, 0, 0, 0, -1, 0)),  # another plane
        frame(FLAIR_PIXELS, "t1", orientation=(0.9, 0.1, 0.0, -0.1, 0.9, 0.0)),  # turned obliquely
        # Flipped and tilted 2.5 degrees about FLAIR's first row: through FLAIR's first pixel, but its far rows lie
        # in other slices (interop review 60 F1).
        frame(
            FLAIR_PIXELS[::-1],
            "t1",
            position=(-10.0, -10.0 + 3 * COS, 5.0 - 3 * SIN),
            orientation=(1, 0, 0, 0, -COS, SIN),
        ),
        frame(FLAIR_PIXELS, "t1"),  # stored as FLAIR is: nothing to do
    ]

    result, turned = t1_frames_on_flair_grid([flair, *others], "flair")

    assert turned == 0
    assert all(after is before for after, before in zip(result, [flair, *others], strict=True))


def test_each_t1_frame_is_compared_with_the_flair_frames_of_its_plane_only() -> None:
    """Interop review 60 F2: every T1 frame was tried against every FLAIR frame (400 slices a series: 15 s)."""
    flair = [frame(FLAIR_PIXELS, "flair", position=(-10.0, -10.0, float(z))) for z in range(400)]
    t1 = [
        frame(FLAIR_PIXELS[::-1], "t1", position=(-10.0, -7.0, float(z)), orientation=(1, 0, 0, 0, -1, 0))
        for z in range(400)
    ]
    result, turned, tried = t1_frames_on_flair_grid_counted([*flair, *t1], "flair")

    assert turned == 400 and len(tried) == 400
    assert all(t1_frame.image_position[2] == flair_frame.image_position[2] for t1_frame, flair_frame in tried)
    assert [item.image_position for item in result[400:]] == [item.image_position for item in flair]


def test_a_t1_plane_through_flairs_first_pixel_but_tilted_is_left_as_it_came() -> None:
    """Review 67 F1: FLAIR's first pixel on the x axis, so the tilted T1 plane through it is at FLAIR's place along
    both normals and reaches the pixel check, where only the tilt check refuses it (its far rows lie in other
    slices: 10 mm out of FLAIR's plane at 256 rows of 0.9 mm)."""
    flair = frame(FLAIR_PIXELS, "flair", position=(-10.0, 0.0, 0.0))
    tilted = frame(FLAIR_PIXELS[::-1], "t1", position=(-10.0, 3 * COS, -3 * SIN), orientation=(1, 0, 0, 0, -COS, SIN))
    flipped = frame(FLAIR_PIXELS[::-1], "t1", position=(-10.0, 3.0, 0.0), orientation=(1, 0, 0, 0, -1, 0))

    (_, left), not_turned = t1_frames_on_flair_grid([flair, tilted], "flair")
    (_, on_grid), turned = t1_frames_on_flair_grid([flair, flipped], "flair")

    assert (not_turned, left) == (0, tilted)
    assert turned == 1 and np.array_equal(on_grid.values, FLAIR_PIXELS)


@pytest.mark.parametrize(("ratio", "paired"), [(1.00005, True), (1.0009, False)])
def test_a_t1_of_a_slightly_other_pixel_spacing_is_paired_only_while_every_pixel_is_within_a_twentieth(
    ratio: float, paired: bool
) -> None:
    """Review 67 F2: only FLAIR's first pixel was held to a twentieth of a pixel; 0.09 % more spacing put the far
    corner of a 512 x 512 slice 0.46 pixels from the T1 pixel read for it."""
    pixels = np.arange(512 * 512, dtype=np.float32).reshape(512, 512)
    flair = frame(pixels, "flair", spacing=0.46875)
    spacing = 0.46875 * ratio
    t1 = frame(
        pixels[::-1],
        "t1",
        position=(-10.0, -10.0 + 511 * spacing, 5.0),
        orientation=(1, 0, 0, 0, -1, 0),
        spacing=spacing,
    )

    _, turned = t1_frames_on_flair_grid([flair, t1], "flair")

    assert turned == int(paired)


def test_a_plane_at_45_degrees_pairs_whatever_the_last_digit_of_its_orientation() -> None:
    """Review 67 F3: the normal's sign follows its largest component, which a last-digit difference picks at 45
    degrees: the T1's place along its normal came out with the other sign, and no FLAIR frame was found."""
    half = 0.70710678
    flair = frame(FLAIR_PIXELS, "flair", position=(0.0, 0.0, 10.0), orientation=(1, 0, 0, 0, half, half))
    bottom = np.array([0.0, 0.0, 10.0]) + 3 * np.array([0.0, half, half])
    t1 = frame(FLAIR_PIXELS[::-1], "t1", position=tuple(bottom), orientation=(1, 0, 0, 0, -0.70710679, -half))

    _, turned = t1_frames_on_flair_grid([flair, t1], "flair")

    assert turned == 1


SIGNED_PERMUTATIONS = [
    np.array(matrix)
    for matrix in (
        [[1, 0], [0, 1]],
        [[-1, 0], [0, 1]],
        [[1, 0], [0, -1]],
        [[-1, 0], [0, -1]],
        [[0, 1], [1, 0]],
        [[0, -1], [1, 0]],
        [[0, 1], [-1, 0]],
        [[0, -1], [-1, 0]],
    )
]


@pytest.mark.parametrize("whole", SIGNED_PERMUTATIONS, ids=lambda matrix: str(matrix.tolist()))
def test_reading_in_flairs_layout_gives_each_flair_pixel_the_t1_pixel_of_its_point(whole: np.ndarray) -> None:
    """Attack review 62 F4: the T1 pixels are read through two index vectors, not full index grids (48 bytes a
    FLAIR pixel, outside the decoding budget); each FLAIR pixel (r, c) must get T1 pixel whole @ (r, c) + offset."""
    rng = np.random.default_rng(7)
    t1 = rng.integers(0, 1000, (9, 11)).astype(np.float32)
    rows, columns = 4, 5
    # an offset that keeps every FLAIR pixel within the T1 frame: each corner's image inside it
    corners = np.array([[0, 0, rows - 1, rows - 1], [0, columns - 1, 0, columns - 1]])
    offset = -(whole @ corners).min(axis=1) + np.array([1, 2])

    read = t1_on_flair_grid._read_in_layout(t1, whole, offset, rows, columns)

    expected = np.array(
        [[t1[tuple(whole @ (r, c) + offset)] for c in range(columns)] for r in range(rows)], dtype=np.float32
    )
    np.testing.assert_array_equal(read, expected)
    assert read.flags.c_contiguous


def test_reading_a_large_t1_frame_in_flairs_layout_holds_about_one_more_copy_of_it() -> None:
    """Attack review 62 F4: a flipped 2048 x 2048 T1 frame took 192 MiB (48 bytes a pixel) to read."""
    import tracemalloc

    size = 1024
    flair = frame(np.zeros((size, size), np.float32), "flair", position=(0.0, 0.0, 5.0))
    t1 = frame(
        np.zeros((size, size), np.float32), "t1", position=(0.0, float(size - 1), 5.0), orientation=(1, 0, 0, 0, -1, 0)
    )

    tracemalloc.start()
    try:
        on_grid = t1_on_flair_grid._on_grid_of(t1, flair)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert on_grid is not None
    assert peak < 2.2 * t1.values.nbytes  # the result (4 bytes a pixel), and a transposed copy at most


def test_a_flair_series_with_several_frames_at_one_place_is_not_paired_frame_by_frame() -> None:
    """Attack review 62 F1: 36 FLAIR frames at one position (which the series reading refuses) made each of 220 T1
    frames meet all 36, each meeting building FLAIR-sized grids: 94 s for one request, others 503 meanwhile."""
    flair = [frame(FLAIR_PIXELS + index, "flair", position=(-10.0, -10.0, 5.0)) for index in range(36)]
    flair[0].header.SOPInstanceUID = "flair.0"
    t1 = [
        frame(FLAIR_PIXELS[:2, :2], "t1", position=(-10.0, -7.0, 5.0), orientation=(1, 0, 0, 0, -1, 0))
        for _ in range(220)
    ]
    result, turned, tried = t1_frames_on_flair_grid_counted([*flair, *t1], "flair")

    assert (turned, len(tried)) == (0, 0)
    assert t1_on_flair_grid.stored_otherwise_note([*flair, *t1], "flair") == ""


def test_flair_frames_rounded_either_side_of_45_degrees_lie_on_one_normal_whatever_their_order() -> None:
    """Attack review 62 F3: each FLAIR frame's place was taken along its own normal, whose sign rounding in the 5th
    digit flips at 45 degrees: frames of one series landed on opposite sides, and a T1 frame missed its plane."""
    orientations = [(0.706612, 0.0, 0.707602, 0.0, 1.0, 0.0), (0.706602, 0.0, 0.707612, 0.0, 1.0, 0.0)]
    normal = np.cross(orientations[0][:3], orientations[0][3:])
    normal /= np.linalg.norm(normal)
    start = np.array([30.0, -20.0, 40.0])  # off the origin: the place of a frame there has no sign
    flair = [
        frame(
            FLAIR_PIXELS, "flair", position=tuple(start + 5.0 * step * normal), orientation=orientations[min(step, 1)]
        )
        for step in range(4)
    ]
    flipped = (0.706602, 0.0, 0.707612, 0.0, -1.0, 0.0)
    t1 = [
        frame(FLAIR_PIXELS[::-1], "t1", position=tuple(start + 5.0 * step * normal + (0, 3, 0)), orientation=flipped)
        for step in range(4)
    ]

    for flair_order in (flair, flair[::-1], [flair[1], flair[0], *flair[2:]]):
        planes = t1_on_flair_grid.FlairPlanes(flair_order)
        offsets = planes.by_reference["1.2.3"][0]
        assert np.allclose(np.abs(np.diff(offsets)), 5.0, atol=1e-3)  # one side: 5 mm apart, not mirrored
        _, turned = t1_frames_on_flair_grid([*flair_order, *t1], "flair")
        assert turned == 4
