"""The order a raster series was sent in, set against the numbers its file names end with (ML audit 48 F4)."""

from __future__ import annotations

import pytest

from app.raster_series_order import file_name_order_note, slice_numbers


@pytest.mark.parametrize(
    "names",
    [
        ["TCGA_HT_8107_19850707_1.tif", "TCGA_HT_8107_19850707_2.tif", "TCGA_HT_8107_19850707_10.tif"],
        ["slice_12.png", "slice_11.png", "slice_3.png"],  # falling: a volume read from the other end
        ["scan/IM0001.png", "scan/IM0002.png", "scan/IM0003.png"],
        ["a.png", "b.png", "c.png"],  # no numbers
        ["x_3.png", "y_1.png", "z_2.png"],  # numbers of different stems say nothing of one another
        ["slice_2.png", "slice_1.png"],  # two files are in order either way
        ["slice_1.png", None, "slice_2.png"],  # a part without a name
    ],
)
def test_no_note_when_the_names_agree_with_the_order_or_say_nothing(names: list[str | None]) -> None:
    assert file_name_order_note(names) is None


def test_names_sorted_as_text_get_a_note_naming_positions_and_numbers_only() -> None:
    names = [f"TCGA_HT_8107_19850707_{number}.tif" for number in (1, 10, 11, 2, 3)]

    note = file_name_order_note(names)

    assert note is not None
    assert "file 3 is numbered 11 and file 4 2" in note
    assert "TCGA" not in note  # a name may carry a patient's ID


def test_slice_numbers_read_the_last_number_of_the_stem_of_windows_and_posix_paths() -> None:
    assert slice_numbers(["C:\\export\\s_07.png", "export/s_8.png"]) == [7, 8]
    assert slice_numbers(["s_7.png", "t_8.png"]) is None


def test_names_ending_in_long_runs_of_digits_number_nothing() -> None:
    """Attack review 53 F3: the regular expression that split the names backtracked over a long run of digits (64
    names of 4,000 digits held the event loop for 7.5 s), and a run past Python's 4,300 digits made int() raise."""
    assert slice_numbers(["1" * 5000 + ".png", "1" * 5001 + ".png", "1" * 5002 + ".png"]) is None
    assert file_name_order_note(["s_" + "1" * 3990 + "a1.png", "s_" + "1" * 3990 + "a3.png", "x_2.png"]) is None
    assert slice_numbers(["s_1234567890.png"]) is None  # a date or an ID, not a slice number
    assert slice_numbers(["s_123456789.png"]) == [123456789]
