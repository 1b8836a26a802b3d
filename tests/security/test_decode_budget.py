"""Decoding bombs (issue 16, items 1, 2 and 7): small files whose headers promise gigabytes are refused from their
headers, before anything is decoded, and a real server's memory stays within 512 MiB over the whole corpus.

Every bomb is built here in milliseconds (`tests.security.corpus`): deflate and PackBits streams of zeros are
written without ever holding the pixels they inflate to.
"""

from __future__ import annotations

import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest
from fastapi.testclient import TestClient
from pydicom.uid import generate_uid

from app.errors import OverMemoryBudgetError, TooManySlicesError
from app.main import create_app
from app.series import reading as series_reading
from app.series.reading import plan_series
from app.uploads import UploadLimits
from tests.security import corpus
from tests.security.conftest import MIB, ServerProcess, assert_error, security_settings, wait_until_ready

MAX_RSS_GROWTH_BYTES = 512 * MIB
BUDGET_SETTING = "DECODE_MEMORY_BYTES"


@dataclass(frozen=True)
class Bomb:
    """A small file, what it would take decoded, and the answer POST /v1/predict must give it."""

    name: str
    build: Callable[[], bytes]
    status: int
    code: str
    says: tuple[str, ...]  # the numbers the message must name


BOMBS = [
    Bomb(
        "dicom_20000_frames_of_1x1_deflated",  # every frame would become a 768 KiB model input: 15 GB
        lambda: corpus.deflated_dicom(1, 1, frames=20000),
        400,
        "invalid_image",
        ("20000 slices",),
    ),
    Bomb(
        "tiff_64_float64_samples_per_pixel",  # 1024x1024 x 64 x 8 bytes = 512 MiB
        lambda: corpus.crafted_tiff_samples(1024, 1024, samples=64, bits=64, sample_format=3),
        400,
        "invalid_image",
        ("64 samples per pixel",),
    ),
    Bomb(
        "tiff_rgba_float64_4096",  # within 4 samples, but 512 MiB of float64
        lambda: corpus.crafted_tiff_samples(4096, 4096, samples=4, bits=64, sample_format=3),
        413,
        "over_memory_budget",
        ("4096x4096 pixels x 4 samples x 64 bits", BUDGET_SETTING),
    ),
    Bomb(
        "png_16_bit_rgb_4096",
        lambda: corpus.crafted_png(4096, 4096, bit_depth=16, colour_type=2),
        413,
        "over_memory_budget",
        ("4096x4096 pixels x 3 samples x 16 bits", BUDGET_SETTING),
    ),
    Bomb(
        "tiff_float64_rgb_4096",
        lambda: corpus.crafted_tiff_samples(4096, 4096, samples=3, bits=64, sample_format=3),
        413,
        "over_memory_budget",
        ("4096x4096 pixels x 3 samples x 64 bits", BUDGET_SETTING),
    ),
    Bomb(
        "tiff_packbits_16_bit_rgb_4096",
        lambda: corpus.crafted_tiff_samples(4096, 4096, samples=3, bits=16, compression=corpus.TIFF_PACKBITS),
        413,
        "over_memory_budget",
        ("4096x4096 pixels x 3 samples x 16 bits", BUDGET_SETTING),
    ),
    Bomb(
        "dicom_8192x8192_deflated",  # 64 MiB of pixels in 66 KB
        lambda: corpus.deflated_dicom(8192, 8192, bits=8),
        413,
        "over_memory_budget",
        ("8192 rows x 8192 columns x 1 frame x 8 bits", BUDGET_SETTING),
    ),
    Bomb(
        "dicom_jpeg2000_64x64_header_over_16384x16384_codestream",
        lambda: corpus.jpeg2000_dicom_claiming(64, 64, codestream_side=16384),
        400,
        "invalid_dicom_image",
        ("16384x16384 codestream", "Columns 64, Rows 64"),
    ),
]


@pytest.fixture(scope="module")
def budget_client(tiny_model_dir: Path) -> Iterator[TestClient]:
    """The app at a 256 MiB memory budget, with uploads up to 4 MiB (the PackBits bomb is 1.5 MB), 8 files a batch."""
    settings = security_settings(
        tiny_model_dir,
        max_upload_bytes=4 * MIB,
        max_batch_files=8,
        max_batch_upload_bytes=40 * MIB,
        decode_memory_bytes=256 * MIB,
    )
    with TestClient(create_app(settings)) as client:
        wait_until_ready(client)
        yield client


@pytest.fixture
def no_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail any test that lets a DICOM file reach its pixel decoding."""

    def refuse(*_: object) -> None:
        raise AssertionError("pixel data was decoded")

    monkeypatch.setattr(series_reading, "decode_dicom", refuse)


def predict(client: TestClient, data: bytes, path: str = "/v1/predict") -> httpx.Response:
    return client.post(path, files={"file": ("slice", data, "application/octet-stream")})


def predict_batch(client: TestClient, files: list[bytes]) -> httpx.Response:
    return client.post(
        "/v1/predict/batch",
        files=[("files", (f"slice{i}", data, "application/octet-stream")) for i, data in enumerate(files)],
    )


@pytest.mark.parametrize("bomb", BOMBS, ids=lambda bomb: bomb.name)
def test_predict_refuses_bomb_from_its_header(budget_client: TestClient, good_jpeg: bytes, bomb: Bomb):
    data = bomb.build()
    assert len(data) < 2 * MIB, "a bomb is a small file"

    started = time.perf_counter()
    response = predict(budget_client, data)
    elapsed = time.perf_counter() - started

    assert_error(response, bomb.status, bomb.code)
    message = response.json()["error"]["message"]
    for text in bomb.says:
        assert text in message, message
    assert elapsed < 2.0, f"refused after {elapsed:.2f} s: it was decoded"
    assert predict(budget_client, good_jpeg).status_code == 200


def test_frame_bomb_is_refused_quickly_without_a_large_allocation(no_decoding: None):
    data = corpus.deflated_dicom(1, 1, frames=20000)
    assert len(data) < 1024, len(data)

    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(TooManySlicesError) as raised:
            plan_series([data], UploadLimits(max_request_slices=256))
        plan = plan_series([data], UploadLimits())  # no slice limit: the budget refuses it
    finally:
        elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()

    assert "at most 256 slices" in raised.value.message and "got 20000" in raised.value.message
    assert isinstance(plan.headers[0], OverMemoryBudgetError)
    assert "1 rows x 1 columns x 20000 frames x 16 bits" in plan.headers[0].message
    assert elapsed < 3.0, elapsed  # 4-12 ms; what decoding would cost is held off by `no_decoding`
    assert peak < 8 * MIB, f"{peak} bytes allocated to refuse a 691-byte file"


def test_frame_bomb_over_http_is_refused_quickly(budget_client: TestClient, no_decoding: None):
    data = corpus.deflated_dicom(1, 1, frames=20000)

    for path in ("/v1/predict", "/v1/overlay"):
        started = time.perf_counter()
        response = predict(budget_client, data, path)
        assert time.perf_counter() - started < 3.0  # 4-12 ms; a stall of the test process (0.8 s on CI) is not it
        assert_error(response, 400, "invalid_image")
    started = time.perf_counter()
    response = predict_batch(budget_client, [data])
    assert time.perf_counter() - started < 3.0
    assert_error(response, 413, "too_many_slices")


def test_predict_refuses_250_frame_dicom_before_decoding(budget_client: TestClient, no_decoding: None):
    response = predict(budget_client, corpus.multiframe_dicom(250))

    assert_error(response, 400, "invalid_image")
    assert response.json()["error"]["message"].startswith("the DICOM file holds 250 slices")


def test_batch_of_deflated_8192_dicoms_is_refused_with_the_reason(budget_client: TestClient, no_decoding: None):
    response = predict_batch(budget_client, [corpus.deflated_dicom(8192, 8192, bits=8)] * 8)

    # A series none of whose files could be used is an error, never an empty answer that reads as "no tumor".
    assert_error(response, 413, "over_memory_budget")
    message = response.json()["error"]["message"]
    assert message.startswith("none of the 8 files could be used, each for the same reason: DICOM file would take")


def test_batch_over_the_budget_together_is_refused_whole(budget_client: TestClient, no_decoding: None):
    # Each 2048x2048 16-bit file keeps about 25 MiB and works with 92 MiB more while it decodes (the files of a
    # series decode one after another): one fits in 256 MiB, eight together (290 MiB) do not.
    series = generate_uid()
    files = [corpus.deflated_dicom(2048, 2048, bits=16, series_instance_uid=series) for _ in range(8)]

    response = predict_batch(budget_client, files)

    assert_error(response, 413, "over_memory_budget")
    assert response.json()["error"]["message"].startswith("this request's 8 files would take")


# The memory test: a real server, its resident memory watched while the whole corpus arrives.


def peak_rss_bytes(process: psutil.Process) -> int | None:
    """The process's peak resident memory since it was last reset (VmHWM), if the kernel says."""
    for line in Path(f"/proc/{process.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return None


def reset_peak_rss(process: psutil.Process) -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where the kernel does not allow it."""
    try:
        Path(f"/proc/{process.pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


class RssSampler:
    """The highest RSS of a process, sampled every few milliseconds in a thread (for kernels without VmHWM reset)."""

    def __init__(self, process: psutil.Process) -> None:
        self.process = process
        self.highest = process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.highest = max(self.highest, self.process.memory_info().rss)
            time.sleep(0.002)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def test_server_memory_stays_within_512_mib_over_the_bomb_corpus(
    server_factory, tiny_model_dir: Path, good_jpeg: bytes
):
    server: ServerProcess = server_factory(tiny_model_dir, DECODE_MEMORY_BYTES=str(256 * MIB))
    process = psutil.Process(server.pid)
    bombs = [bomb.build() for bomb in BOMBS]
    with httpx.Client(base_url=server.base_url, timeout=60.0) as client:

        def send(data: bytes) -> int:
            return client.post("/v1/predict", files={"file": ("slice", data, "application/octet-stream")}).status_code

        for _ in range(2):  # warm up both decoders and the models, so that the baseline holds what they keep
            assert send(good_jpeg) == 200
            assert send(corpus.dicom_mr()) == 200
        baseline = process.memory_info().rss
        peak_was_reset = reset_peak_rss(process)
        with RssSampler(process) as sampler:
            statuses = [send(data) for data in bombs]
            with ThreadPoolExecutor(max_workers=8) as pool:  # the same bombs, all at once, twice over
                statuses += list(pool.map(send, bombs * 2))
            series = generate_uid()
            big = [corpus.deflated_dicom(8192, 8192, bits=8, series_instance_uid=series) for _ in range(8)]
            batch = [("files", (f"f{i}", data, "application/dicom")) for i, data in enumerate(big)]
            statuses.append(client.post("/v1/predict/batch", files=batch).status_code)
        peak = max(sampler.highest, peak_rss_bytes(process) or 0) if peak_was_reset else sampler.highest
        assert client.get("/health/live").status_code == 200
        assert send(good_jpeg) == 200

    assert all(status in (200, 400, 413) for status in statuses), statuses
    assert statuses.count(413) >= 3 * 5, statuses
    growth = peak - baseline
    assert growth <= MAX_RSS_GROWTH_BYTES, f"the server grew by {growth / MIB:.0f} MiB over the bomb corpus"
