"""A canvas's pixels, read from the page in one string: shipped as a list, 65,536 numbers took Playwright about a
second each time (a value object each), most of a drawing test's time."""

from __future__ import annotations

import base64

import numpy as np
from playwright.sync_api import Page

CANVAS_RGBA = """(selector) => {
    const canvas = document.querySelector(selector);
    const { data } = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height);
    let text = "";
    for (let at = 0; at < data.length; at += 0x8000) {
        text += String.fromCharCode(...data.subarray(at, at + 0x8000));
    }
    return [canvas.height, canvas.width, btoa(text)];
}"""


def canvas_rgba(page: Page, selector: str = "#slice-canvas") -> np.ndarray:
    """The canvas's pixels as getImageData gives them: height x width x 4 (red, green, blue, alpha), uint8."""
    height, width, text = page.evaluate(CANVAS_RGBA, selector)
    return np.frombuffer(base64.b64decode(text), dtype=np.uint8).reshape(height, width, 4)
