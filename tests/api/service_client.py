"""A running app for the API, service and CLI tests, uploads in every accepted encoding, decoders for replies."""

from __future__ import annotations

import base64
import io
import time
from collections.abc import Iterator
from contextlib import contextmanager

import cv2
import numpy as np
import tifffile
from fastapi.testclient import TestClient
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from pycocotools import mask as coco_mask

from app.main import create_app
from app.settings import Settings

READY_TIMEOUT_SECONDS = 60.0

# The `limited_client` app: small enough to hit every limit with small requests, large enough for one real slice
# (38 KB, 256x256).
LIMITED_UPLOAD_BYTES = 64 * 1024
LIMITED_IMAGE_PIXELS = 300 * 300
LIMITED_BATCH_FILES = 3
LIMITED_QUEUE_SLICES = 2


def wait_until_ready(client: TestClient, timeout: float = READY_TIMEOUT_SECONDS) -> None:
    """Poll GET /health/ready until it answers 200; fail with its last body after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        response = client.get("/health/ready")
        if response.status_code == 200:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"not ready after {timeout} s: {response.status_code} {response.text}")
        time.sleep(0.05)


@contextmanager
def running_client(settings: Settings) -> Iterator[TestClient]:
    """A TestClient whose lifespan has run and whose models are loaded and warm."""
    with TestClient(create_app(settings)) as client:
        wait_until_ready(client)
        yield client


def upload(data: bytes, name: str = "slice.png", content_type: str = "application/octet-stream") -> dict:
    """The `files=` argument of one multipart field `file`."""
    return {"file": (name, data, content_type)}


def batch_upload(items: list[bytes], content_type: str = "application/octet-stream") -> list:
    """The `files=` argument of a /v1/predict/batch request, one `files` part per item."""
    return [("files", (f"slice_{index}.png", data, content_type)) for index, data in enumerate(items)]


def png_bytes(array: np.ndarray) -> bytes:
    """Lossless PNG of a uint8 / uint16 array (HxW, HxWx3 or HxWx4), written by OpenCV, channels in RGB(A) order."""
    if array.ndim == 3:
        code = cv2.COLOR_RGB2BGR if array.shape[2] == 3 else cv2.COLOR_RGBA2BGRA
        array = cv2.cvtColor(array, code)
    ok, encoded = cv2.imencode(".png", array)
    assert ok
    return encoded.tobytes()


def pil_bytes(array: np.ndarray, image_format: str, **options) -> bytes:
    stream = io.BytesIO()
    Image.fromarray(array).save(stream, format=image_format, **options)
    return stream.getvalue()


def tiff_bytes(array: np.ndarray, **options) -> bytes:
    stream = io.BytesIO()
    tifffile.imwrite(stream, array, **options)
    return stream.getvalue()


def resized(image: np.ndarray, height: int, width: int) -> np.ndarray:
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)


def full_range(channel: np.ndarray) -> np.ndarray:
    """A uint8 channel stretched to use all of 0..255, so a 16-bit copy of it stretches back to exactly it."""
    values = channel.astype(np.float64)
    return np.rint((values - values.min()) * 255.0 / (values.max() - values.min())).astype(np.uint8)


def decode_rle(rle: dict) -> np.ndarray:
    """The response's COCO RLE, decoded by pycocotools itself."""
    return coco_mask.decode({"size": rle["size"], "counts": rle["counts"].encode("ascii")})


def decode_png_mask(encoded: str) -> np.ndarray:
    """The response's base64 mask PNG as uint8 0/1; fails unless it holds only 0 and 255."""
    image = np.asarray(Image.open(io.BytesIO(base64.b64decode(encoded))))
    assert image.dtype == np.uint8 and image.ndim == 2, (image.dtype, image.shape)
    assert set(np.unique(image)) <= {0, 255}
    return (image == 255).astype(np.uint8)


def bbox_of(mask: np.ndarray) -> list[int] | None:
    """[x, y, width, height] of the nonzero pixels, computed independently of app.masks."""
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return None
    return [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]


def sample_value(exposition: str, sample: str, **labels: str) -> float:
    """Value of the Prometheus sample named `sample` whose labels include `labels`; 0 when there is none."""
    found = _sample_values(exposition, sample, labels)
    return next(found, 0.0)


def required_sample_value(exposition: str, sample: str, **labels: str) -> float:
    """As `sample_value`, but the sample must be there: a metric that is missing fails the test, not reads 0."""
    found = next(_sample_values(exposition, sample, labels), None)
    assert found is not None, f"{sample} {labels} not in the metrics"
    return found


def _sample_values(exposition: str, sample: str, labels: dict[str, str]) -> Iterator[float]:
    for family in text_string_to_metric_families(exposition):
        for item in family.samples:
            if item.name == sample and all(item.labels.get(key) == value for key, value in labels.items()):
                yield item.value
