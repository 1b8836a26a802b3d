"""Outline drawing, shared by the overlay endpoint and evaluation's plots."""

from __future__ import annotations

import numpy as np

from app.core.outline import draw_outline


def test_draw_outline_draws_the_border_of_the_mask_only() -> None:
    canvas = np.zeros((10, 10, 3), np.uint8)
    mask = np.zeros((10, 10), np.uint8)
    mask[2:8, 3:7] = 1

    draw_outline(canvas, mask, (0, 255, 0))

    outlined = canvas[:, :, 1] == 255
    expected = np.zeros((10, 10), bool)
    expected[2:8, 3:7] = True
    expected[3:7, 4:6] = False  # the inside stays untouched
    np.testing.assert_array_equal(outlined, expected)
    assert not canvas[:, :, [0, 2]].any()


def test_draw_outline_of_an_empty_mask_draws_nothing() -> None:
    canvas = np.zeros((5, 5, 3), np.uint8)
    draw_outline(canvas, np.zeros((5, 5), np.uint8), (255, 0, 0))
    assert not canvas.any()
