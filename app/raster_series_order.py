"""The slice numbers in a raster series' file names, set against the order the files were sent in.

A series of PNG/JPEG/TIFF slices is read in the order sent (nothing else in the files says where a slice lies). A
client that lists its files sorted as text sends `slice_1, slice_10, slice_11, ..., slice_2`: a scrambled volume
whose answer looks like any other (two tumor slices were lost on one patient). The order stays the
client's, as names may number something else, but the answer says when the names disagree with it.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import PurePosixPath

ASCII_DIGITS = "0123456789"
MOST_DIGITS = 9  # a slice number, not a date or an ID; and int() of a few thousand digits is slow, or refused
FEWEST_FILES = 3  # two files are in order either way


def numbered_stem(name: str) -> tuple[str, int] | None:
    """A name's stem (no folder, no extension) as a common part and the slice number it ends with
    (`TCGA_HT_8107_19850707_12` -> ("TCGA_HT_8107_19850707_", 12)), or None. Split by hand: a regular expression
    backtracks over a long run of digits, and 64 names of 4,000 digits held the event loop, and every other client,
    for 7.5 s."""
    stem = PurePosixPath(name.replace("\\", "/")).stem
    common = stem.rstrip(ASCII_DIGITS)
    digits = stem[len(common) :]
    if not digits or len(digits) > MOST_DIGITS:
        return None
    return common, int(digits)


def slice_numbers(names: Sequence[str | None]) -> list[int] | None:
    """The number each name ends with, when every name is one common stem followed by a number; else None."""
    common: set[str] = set()
    numbers: list[int] = []
    for name in names:
        numbered = numbered_stem(name or "")
        if numbered is None:
            return None
        common.add(numbered[0])
        numbers.append(numbered[1])
    return numbers if len(common) == 1 else None


def file_name_order_note(names: Sequence[str | None]) -> str | None:
    """A note when the files' names number them in another order than they were sent in: their numbers neither rise
    nor fall all along. It names positions and numbers only, never the names (they may carry a patient's ID)."""
    numbers = slice_numbers(names) if len(names) >= FEWEST_FILES else None
    if numbers is None:
        return None
    steps = list(itertools.pairwise(numbers))
    if all(before < after for before, after in steps) or all(before > after for before, after in steps):
        return None
    place = next(
        index
        for index, (before, after) in enumerate(steps)
        if (before < after) != (numbers[0] < numbers[-1]) or before == after
    )
    return (
        "the file names number the slices in another order than they were sent in (file "
        f"{place + 1} is numbered {numbers[place]} and file {place + 2} {numbers[place + 1]}): the series was read in "
        "the order sent; if that is not the volume's order, send the files sorted by that number (slice_2 before "
        "slice_10)"
    )
