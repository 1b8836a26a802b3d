"""The one doubling wait that every retry uses (the node's sends, pacs-sync's studies and Orthanc calls)."""

from __future__ import annotations

import pytest

from app.backoff import doubling_wait


@pytest.mark.parametrize(
    ("doublings", "most", "expected"),
    [(0, None, 2.0), (1, None, 4.0), (4, None, 32.0), (4, 20.0, 20.0), (20, 600.0, 600.0)],
)
def test_the_wait_doubles_up_to_its_ceiling(doublings: int, most: float | None, expected: float) -> None:
    assert doubling_wait(2.0, doublings, most) == expected
