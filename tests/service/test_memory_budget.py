"""The decoding memory budget: costs from headers (`app.imaging`, `app.dicom.dicom_header`) and the byte-counting
semaphore
(`app.memory_budget.MemoryBudget`) that keeps concurrent requests within it."""

from __future__ import annotations

import asyncio
import io
import threading
import tracemalloc
from unittest.mock import patch

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from app import schemas
from app.api.disconnect import ClientGone, unless_client_gone
from app.dicom.dicom_header import read_dicom_header
from app.dicom.dicom_series import model_inputs
from app.errors import OverloadedError, OverMemoryBudgetError
from app.imaging import read_image_header
from app.inference import SlicePrediction
from app.memory_budget import (
    HEADER_RETRY_AFTER_SECONDS,
    MASK_BYTES_PER_PIXEL,
    MODEL_INPUT_BYTES,
    HeaderMemory,
    MemoryBudget,
    mask_bytes,
)
from app.overlay import OVERLAY_BYTES_PER_PIXEL
from app.prediction import PredictionService
from app.request_client import current_client
from app.series.reading import decode_series, plan_series
from app.uploads import UploadLimits, plan_raster_uploads, prepare_uploads
from tests.api.service_client import png_bytes
from tests.dicom.builders import SLICE_GAP_MM, Study, mr_dataset, to_bytes
from tests.security import corpus

MIB = 1 << 20


def test_png_cost_counts_samples_and_depth_from_ihdr() -> None:
    header = read_image_header(corpus.crafted_png(4096, 4096, bit_depth=16, colour_type=2))

    assert (header.width, header.height, header.samples, header.bytes_per_sample) == (4096, 4096, 3, 2)
    assert header.decoded_bytes == 4096 * 4096 * 3 * 2
    # two copies of the pixels, one float64 channel for the stretch and its range's sample (2**20 values), the uint8
    # image and its copy, the model input
    sample = 8 * (1 << 20)
    assert header.cost_bytes == 2 * header.decoded_bytes + 4096 * 4096 * (8 + 6) + sample + MODEL_INPUT_BYTES


def test_tiff_cost_counts_float64_samples() -> None:
    header = read_image_header(corpus.crafted_tiff_samples(4096, 4096, samples=3, bits=64, sample_format=3))

    assert header.decoded_bytes == 4096 * 4096 * 3 * 8


def test_dicom_cost_counts_one_model_input_per_frame() -> None:
    header = read_dicom_header(corpus.deflated_dicom(1, 1, frames=20000))

    assert (header.rows, header.columns, header.frames, header.bits_allocated) == (1, 1, 20000, 16)
    assert header.cost_bytes > 20000 * MODEL_INPUT_BYTES


def dicom_series_files(slices: int, size: int) -> list[bytes]:
    rng = np.random.default_rng(5)
    study, series = Study(), generate_uid()
    return [
        to_bytes(
            mr_dataset(
                rng.integers(0, 1000, (size, size), dtype=np.uint16), study, series, index + 1, index * SLICE_GAP_MM
            )
        )
        for index in range(slices)
    ]


def test_a_dicom_series_costs_what_each_file_keeps_and_one_files_working_copies() -> None:
    """The files of a series decode one after another; before, each file's working copies were counted as held at
    once, and a 40-slice 512x512 FLAIR (common in clinics) was refused at the default budget (310 MiB)."""
    files = dicom_series_files(40, 512)
    header = read_dicom_header(files[0])

    plan = plan_series(files, UploadLimits())

    assert plan.cost_bytes == (
        40 * (header.kept_bytes + header.header_bytes) + header.working_bytes + mask_bytes([512 * 512] * 40)
    )
    assert plan.cost_bytes < UploadLimits().max_decode_bytes
    with pytest.raises(OverMemoryBudgetError) as raised:
        plan_series(files, UploadLimits(max_decode_bytes=40 * header.kept_bytes))
    assert raised.value.message.startswith("this request's 40 files would take")


def test_masks_of_slices_resampled_to_square_pixels_are_counted_at_the_size_the_models_saw() -> None:
    """Attack review 38: 4096 x 512 slices of pixels 8 times as wide as tall are resampled to 4096 x 4096 for the
    models, and their masks made there, 8 times what the plan counted (15 MB a slice outside the budget)."""
    rng = np.random.default_rng(5)
    study, series = Study(), generate_uid()
    datasets = []
    for index in range(4):
        dataset = mr_dataset(rng.integers(0, 1000, (512, 64), dtype=np.uint16), study, series, index + 1, index * 5.0)
        dataset.PixelSpacing = [0.125, 1.0]  # 64 mm by 64 mm: the models see it 512 x 512
        datasets.append(dataset)
    files = [to_bytes(dataset) for dataset in datasets]
    header = read_dicom_header(files[0])

    plan = plan_series(files, UploadLimits())

    assert plan.cost_bytes >= 4 * header.kept_bytes + mask_bytes([512 * 512] * 4)


def padded_header_files(files: list[bytes], elements: int = 5000) -> list[bytes]:
    """`files` with `elements` empty private elements each: headers that hold far more than an ordinary one."""
    padded = []
    for data in files:
        dataset = pydicom.dcmread(io.BytesIO(data))
        dataset.add_new((0x0009, 0x0010), "LO", "PADDING")
        for element in range(elements):
            dataset.add_new((0x0009, 0x1000 + element), "UN", b"")
        padded.append(to_bytes(dataset))
    return padded


def test_a_request_stops_reading_headers_once_they_hold_more_than_the_budget() -> None:
    """Attack review 32: files of many tiny elements, each under the read limit, were parsed and held outside the
    budget (24 of 99,000 empty private elements: +1.78 GiB in one 22 MB request). Parsed headers count in the
    request's cost, and reading stops once they alone are over the budget."""
    plain = dicom_series_files(4, 64)
    files = [plain[0], *padded_header_files(plain[1:])]  # the first file plain
    padded = read_dicom_header(files[1])
    assert padded.header_reads > 5000

    with pytest.raises(OverMemoryBudgetError, match="the headers of this request's first 3 files would take"):
        plan_series(files, UploadLimits(max_decode_bytes=2 * padded.header_bytes - 1))
    plan = plan_series(files, UploadLimits())
    assert plan.cost_bytes > 3 * padded.header_bytes


def test_decoding_a_dicom_series_holds_no_more_than_its_plan_says() -> None:
    """The plan's cost is the budget's only guard, so it must not undercount what decoding really allocates."""
    files = dicom_series_files(12, 512)
    plan = plan_series(files, UploadLimits())

    tracemalloc.start()
    try:
        series = decode_series(plan)
        batch, _ = model_inputs(series.inputs)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert len(batch) == 12
    assert plan.cost_bytes / 3 < peak < plan.cost_bytes


def three_series_study_files(slices: int, size: int, t1_flipped: bool) -> list[bytes]:
    """FLAIR, pre- and post-contrast T1 of one study (told apart by their names), the T1 series stored with their
    rows flipped against FLAIR when `t1_flipped` (the same points: read in FLAIR's layout)."""
    rng = np.random.default_rng(7)
    study = Study()
    files = []
    for number, name in ((4, "AX T2 FLAIR"), (2, "AX T1 PRE"), (7, "AX T1 POST GAD")):
        series = generate_uid()
        for index in range(slices):
            pixels = rng.integers(0, 1000, (size, size), dtype=np.uint16)
            dataset = mr_dataset(pixels, study, series, index + 1, index * SLICE_GAP_MM, number, name)
            if t1_flipped and number != 4:
                dataset.PixelData = np.ascontiguousarray(pixels[::-1]).tobytes()
                dataset.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, -1.0, 0.0]
                x, y, z = (float(value) for value in dataset.ImagePositionPatient)
                dataset.ImagePositionPatient = [x, y + (size - 1) * float(dataset.PixelSpacing[0]), z]
            files.append(to_bytes(dataset))
    return files


def test_t1_series_read_in_flairs_layout_hold_no_more_than_the_plan_says() -> None:
    """T1 frames stored flipped against FLAIR are read in FLAIR's layout (`app.series.t1_on_flair_grid`): each copy
    replaces its stored frame, which is let go before the next is made, so decoding stays within the plan's cost
    (both at once held every T1 frame twice)."""
    peaks = {}
    for t1_flipped in (False, True):
        plan = plan_series(three_series_study_files(8, 512, t1_flipped), UploadLimits())
        tracemalloc.start()
        try:
            series = decode_series(plan)
            _, peaks[t1_flipped] = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert len(series.inputs) == 8 and len(series.inputs[0].channels) == 3
        del series

    frame_bytes = 512 * 512 * 4
    assert peaks[True] - peaks[False] < 3 * frame_bytes, (peaks, plan.cost_bytes)


def test_deflated_dicom_over_the_budget_is_refused_while_inflating() -> None:
    data = corpus.deflated_dicom(4096, 4096, bits=16)  # inflates to 32 MiB

    with pytest.raises(OverMemoryBudgetError) as raised:
        read_dicom_header(data, max_bytes=16 * MIB)

    assert "inflates to more than 16777216 bytes" in raised.value.message


def test_raster_plan_counts_one_decode_and_every_model_input_and_mask() -> None:
    small = png_bytes(np.zeros((64, 64), np.uint8))
    one = read_image_header(small).cost_bytes

    plan = plan_raster_uploads([small, small, small], UploadLimits())

    assert plan.cost_bytes == one + 2 * MODEL_INPUT_BYTES + mask_bytes([64 * 64] * 3)


def test_a_batch_whose_masks_would_pass_the_budget_is_refused() -> None:
    """Attack review 30: each positive slice's mask is made at the slice's size and held until the answer is
    written; uncounted, 64 tumor slices of 4096 x 4096 (38 MB of JPEG) took 1.2 GiB beside a 512 MiB budget."""
    large = corpus.crafted_png(4096, 4096)  # the plan reads headers only
    decoding = plan_raster_uploads([large], UploadLimits()).cost_bytes - mask_bytes([4096 * 4096])
    files = 8
    limits = UploadLimits(max_decode_bytes=decoding + files * MODEL_INPUT_BYTES + 4096 * 4096 * MASK_BYTES_PER_PIXEL)

    with pytest.raises(OverMemoryBudgetError) as raised:
        plan_raster_uploads([large] * files, limits)  # its decoding and model inputs alone would fit

    assert "its model input and mask" in raised.value.message


def test_raster_plan_refuses_request_over_the_budget_whole() -> None:
    small = png_bytes(np.zeros((64, 64), np.uint8))

    with pytest.raises(OverMemoryBudgetError) as raised:
        plan_raster_uploads([small] * 10, UploadLimits(max_decode_bytes=4 * MIB))

    assert raised.value.message.startswith("this request's 10 files would take")


async def hold(budget: MemoryBudget, order: list[str], name: str, size: int, seconds: float, client: str = "") -> None:
    """Reserve `size` for `seconds` as `client`'s request, noting in `order` when it came in (and the bytes used then)
    and went out."""
    current_client.set(client)  # as the upload middleware sets it for each request's task
    async with budget.reserve(size):
        order.append(f"{name} in ({budget.used})")
        await asyncio.sleep(seconds)
    order.append(f"{name} out")


def test_budget_makes_later_reservations_wait_their_turn() -> None:
    order: list[str] = []

    async def scenario() -> None:
        budget = MemoryBudget(100)
        first = asyncio.create_task(hold(budget, order, "a", 60, 0.05))
        await asyncio.sleep(0)
        second = asyncio.create_task(hold(budget, order, "b", 60, 0.0))
        third = asyncio.create_task(hold(budget, order, "c", 10, 0.0))  # fits now, but waits behind b
        await asyncio.gather(first, second, third)
        assert budget.used == 0

    asyncio.run(scenario())

    # c did not pass b although it fitted beside a; once a left, both fitted and came in, b first
    assert order[:4] == ["a in (60)", "a out", "b in (70)", "c in (70)"]


def test_a_client_that_holds_nothing_passes_the_backlog_of_one_that_holds_much() -> None:
    """Attack review 44 F8: first come, first served let one key's full batches make another client's one-slice
    request wait 17 s. Among waiters, the client holding least goes first; one client's own requests keep their
    order (a, then its second request a2)."""
    order: list[str] = []

    async def scenario() -> None:
        budget = MemoryBudget(100)
        first = asyncio.create_task(hold(budget, order, "a", 60, 0.05, client="hog"))
        await asyncio.sleep(0)
        second = asyncio.create_task(hold(budget, order, "a2", 60, 0.0, client="hog"))
        await asyncio.sleep(0)
        other = asyncio.create_task(hold(budget, order, "b", 10, 0.0, client="other"))  # fits beside a
        await asyncio.gather(first, second, other)
        assert budget.used == 0

    asyncio.run(scenario())

    assert order[:3] == ["a in (60)", "b in (70)", "b out"]
    assert order.index("a2 in (60)") > order.index("a out")


def test_budget_refuses_a_reservation_that_could_never_fit() -> None:
    async def scenario() -> None:
        async with MemoryBudget(100).reserve(101):
            pass

    with pytest.raises(OverMemoryBudgetError):
        asyncio.run(scenario())


def test_budget_wait_ends_in_overloaded_and_gives_the_place_back() -> None:
    async def scenario() -> MemoryBudget:
        budget = MemoryBudget(100, wait_seconds=0.05)
        async with budget.reserve(80):
            with pytest.raises(OverloadedError) as raised:
                async with budget.reserve(80):
                    pass
            message = raised.value.message
            assert message.startswith("decoding's memory budget (DECODE_MEMORY_BYTES: 100 bytes")
            assert "the 80 bytes" in message and message.count("80 bytes") == 1  # not the other request's 80
            # nothing was freed during the wait: the longest Retry-After (a fixed 1 s sent every client refused
            # after its wait back at once, behind the same backlog: attack review 32)
            assert raised.value.retry_after_seconds == 60.0
        async with budget.reserve(100):  # nothing left behind by the request that gave up
            assert budget.used == 100
        return budget

    assert asyncio.run(scenario()).used == 0


def test_the_retry_after_of_a_request_that_waited_follows_how_fast_the_budget_frees_room() -> None:
    async def scenario() -> float:
        budget = MemoryBudget(100, wait_seconds=0.2)

        async def short_job() -> None:
            async with budget.reserve(30):
                await asyncio.sleep(0.02)

        async with budget.reserve(60):
            job = asyncio.create_task(short_job())
            await asyncio.sleep(0)
            with pytest.raises(OverloadedError) as raised:
                async with budget.reserve(80):  # 30 bytes freed in the wait, 40 short still
                    pass
            await job
        return raised.value.retry_after_seconds

    assert 1.0 <= asyncio.run(scenario()) < 60.0  # 40 bytes at ~150 bytes a second: the shortest, 1 s


def test_budget_released_when_a_waiting_request_is_cancelled() -> None:
    async def scenario() -> MemoryBudget:
        budget = MemoryBudget(100)
        async with budget.reserve(80):
            waiter = asyncio.create_task(budget.reserve(80).__aenter__())
            await asyncio.sleep(0.01)
            waiter.cancel()
            await asyncio.gather(waiter, return_exceptions=True)
        async with budget.reserve(100):
            pass
        return budget

    assert asyncio.run(scenario()).used == 0


class SlowModels:
    """Models that take a while and record how much of the budget is held while they run."""

    classifier_threshold = 0.5
    model_tags: dict[str, str] = {}
    series_min_component_voxels = 0
    single_slice_mask_min_probability = 0.0
    single_slice_min_component_pixels = 0

    def __init__(self) -> None:
        self.running = 0
        self.most_running = 0
        self.budget: MemoryBudget | None = None
        self.most_used = 0

    async def run(self, batch: np.ndarray, sizes: list[tuple[int, int]]) -> list[SlicePrediction]:
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        assert self.budget is not None
        self.most_used = max(self.most_used, self.budget.used)
        await asyncio.sleep(0.02)
        self.running -= 1
        return [SlicePrediction(0.1, False, None) for _ in sizes]


def test_concurrent_requests_stay_within_the_budget() -> None:
    # Each request costs about 5 MiB (its mask too); a 6 MiB budget lets one in at a time, however many arrive.
    image = png_bytes(np.zeros((512, 512), np.uint8))
    cost = plan_raster_uploads([image], UploadLimits()).cost_bytes
    budget = MemoryBudget(6 * MIB)
    assert 3 * MIB < cost <= 6 * MIB
    models = SlowModels()
    models.budget = budget
    service = PredictionService(models, models.run, UploadLimits(max_decode_bytes=6 * MIB), budget=budget)

    async def scenario() -> None:
        answers = await asyncio.gather(*(service.predict_files([image], schemas.MaskFormat.RLE) for _ in range(6)))
        assert all(answer.tally.negative == 1 for answer in answers)

    asyncio.run(scenario())

    assert models.most_running == 1
    assert models.most_used <= budget.capacity
    assert budget.used == 0


def test_a_cancelled_request_keeps_its_reservation_until_its_decoding_thread_ends() -> None:
    """A request whose client has gone is cancelled (`app.api.routes.predict.unless_client_gone`); the thread
    decoding its files cannot be stopped, so the memory it holds stays counted until the thread ends."""
    image = png_bytes(np.zeros((512, 512), np.uint8))
    budget = MemoryBudget(6 * MIB)
    models = SlowModels()
    models.budget = budget
    service = PredictionService(models, models.run, UploadLimits(max_decode_bytes=6 * MIB), budget=budget)
    decoding_started, release_decoding = threading.Event(), threading.Event()
    used_when_decoding_ended: list[int] = []

    def slow_prepare(*arguments: object) -> object:
        decoding_started.set()
        release_decoding.wait(5)
        used_when_decoding_ended.append(budget.used)
        return prepare_uploads(*arguments)

    async def scenario() -> None:
        with patch("app.prediction.prepare_uploads", slow_prepare):
            request = asyncio.ensure_future(service.predict_files([image], schemas.MaskFormat.RLE))
            await asyncio.to_thread(decoding_started.wait, 5)
            request.cancel()
            await asyncio.sleep(0.05)
            assert not request.done() and budget.used > 0  # still held: the thread still decodes
            release_decoding.set()
            with pytest.raises(asyncio.CancelledError):
                await request

    asyncio.run(scenario())

    assert used_when_decoding_ended[0] > 0
    assert budget.used == 0 and models.running == 0  # released after, and the models never ran for it


def test_a_request_whose_client_has_gone_stops_waiting_and_is_not_inferred() -> None:
    """attack23b: batches whose clients had given up were still inferred while a live request waited."""

    class GoneRequest:
        async def receive(self) -> dict:
            await asyncio.sleep(0.05)
            return {"type": "http.disconnect"}

    image = png_bytes(np.zeros((512, 512), np.uint8))
    budget = MemoryBudget(6 * MIB)
    models = SlowModels()
    models.budget = budget
    service = PredictionService(models, models.run, UploadLimits(max_decode_bytes=6 * MIB), budget=budget)

    async def scenario() -> None:
        async with budget.reserve(2 * MIB):  # another request holds the budget: this one waits for room
            with pytest.raises(ClientGone):
                await unless_client_gone(GoneRequest(), service.predict_files([image], schemas.MaskFormat.RLE))
        assert budget.used == 0

    asyncio.run(scenario())

    assert models.most_running == 0


@pytest.mark.parametrize("kind", ["png", "dicom"])
def test_an_overlay_is_drawn_and_encoded_inside_its_reservation(kind: str) -> None:
    """attack26 finding 1: the overlay's drawing and PNG (13 bytes a pixel, more than decoding an 8-bit slice) were
    made after the request's reservation had ended: twelve 4096x4096 overlays at once took 1.4 GiB beside a 512 MiB
    budget. They are now counted in the reservation and made before it ends."""
    side = 512
    data = png_bytes(np.zeros((side, side), np.uint8)) if kind == "png" else dicom_series_files(1, side)[0]
    budget = MemoryBudget(64 * MIB)
    models = SlowModels()
    models.budget = budget
    service = PredictionService(models, models.run, UploadLimits(max_decode_bytes=64 * MIB), budget=budget)
    held_while_drawing: list[int] = []

    def drawing(image: np.ndarray, mask: np.ndarray | None) -> bytes:
        held_while_drawing.append(budget.used)
        return b"png"

    with patch("app.prediction.render_overlay_png", drawing):
        answer = asyncio.run(service.overlay(data))

    assert answer.png == b"png"
    assert held_while_drawing[0] >= OVERLAY_BYTES_PER_PIXEL * side * side
    assert budget.used == 0


def test_an_overlay_over_the_budget_is_refused_where_its_prediction_is_not() -> None:
    image = png_bytes(np.zeros((1024, 1024), np.uint8))
    prediction_cost = plan_raster_uploads([image], UploadLimits()).cost_bytes
    budget_bytes = prediction_cost + 1024 * 1024  # room for the prediction, not for 13 bytes a pixel more
    models = SlowModels()
    models.budget = MemoryBudget(budget_bytes)
    service = PredictionService(models, models.run, UploadLimits(max_decode_bytes=budget_bytes), budget=models.budget)

    assert asyncio.run(service.predict_files([image], schemas.MaskFormat.RLE)).tally.negative == 1
    with pytest.raises(OverMemoryBudgetError, match="DECODE_MEMORY_BYTES"):
        asyncio.run(service.overlay(image))


def test_a_cancelled_dicom_request_reads_no_more_headers() -> None:
    """Attack review 32: a request of heavy headers went on using a core for ~27 s after its client had gone; the
    headers not read yet when the request is cancelled are now left unread."""
    files = dicom_series_files(5, 64)
    models = SlowModels()
    service = PredictionService(models, models.run, UploadLimits(), budget=MemoryBudget(512 * MIB))
    reading, go_on = threading.Event(), threading.Event()
    read: list[int] = []

    def slow_read(data: bytes, *arguments: object) -> object:
        read.append(len(data))
        reading.set()
        go_on.wait(5)
        return read_dicom_header(data, *arguments)

    async def scenario() -> None:
        with patch("app.series.reading.read_dicom_header", slow_read):
            request = asyncio.ensure_future(service.predict_files(files, schemas.MaskFormat.RLE))
            await asyncio.to_thread(reading.wait, 5)
            request.cancel()
            await asyncio.sleep(0.05)
            go_on.set()
            with pytest.raises(asyncio.CancelledError):
                await request

    asyncio.run(scenario())
    assert len(read) == 1  # the header being read when the client left; none of the four after it


def test_header_memory_refuses_at_once_what_would_pass_it_and_gives_each_claim_back() -> None:
    memory = HeaderMemory(100)
    with memory.claim() as first:
        first.add(60)
        with memory.claim() as second:
            second.add(40)
            with pytest.raises(OverloadedError, match="no room for this request's 1 bytes") as refused:
                second.add(1)
            assert "100 bytes" in refused.value.message and "60" not in refused.value.message  # not the others' use
            assert refused.value.retry_after_seconds == HEADER_RETRY_AFTER_SECONDS
            assert (first.size, second.size, memory.used) == (60, 40, 100)
        assert memory.used == 60
    assert memory.used == 0
    with HeaderMemory(None).claim() as unlimited:  # no budget: counted, never refused
        unlimited.add(1 << 40)


def test_concurrent_dicom_requests_hold_their_headers_within_one_budget() -> None:
    """Attack review 32: each request's headers counted against the budget on their own, so several requests at once
    could each parse up to the whole budget of headers before reserving any of it. The headers of the requests in
    flight now count together (`HeaderMemory`): a request whose headers would pass it is refused at once (503),
    while one that fits goes on, and every byte is given back at the end."""
    files = padded_header_files(dicom_series_files(4, 64))
    header = read_dicom_header(files[0])
    first, second = files[:2], files[2:]
    models = SlowModels()
    budget = MemoryBudget(64 * MIB)
    models.budget = budget
    header_memory = HeaderMemory(3 * header.header_bytes)  # room for one request's two headers, not for two
    service = PredictionService(models, models.run, UploadLimits(), budget=budget, header_memory=header_memory)

    async def scenario() -> None:
        async with budget.reserve(budget.capacity):  # the first request waits for its decoding with its headers read
            waiting = asyncio.ensure_future(service.predict_files(first, schemas.MaskFormat.RLE))
            while header_memory.used < 2 * header.header_bytes:
                await asyncio.sleep(0.01)
            with pytest.raises(OverloadedError, match="DICOM headers being read have no room"):
                await service.predict_files(second, schemas.MaskFormat.RLE)
            assert not waiting.done()
        answer = await waiting
        assert answer.tally.negative == 2
        again = await service.predict_files(second, schemas.MaskFormat.RLE)  # alone it fits
        assert again.tally.negative == 2

    asyncio.run(scenario())
    assert (header_memory.used, budget.used) == (0, 0)
