"""The prediction flow without HTTP: uploads in (`app.uploads`), the models, payloads out (`app.payloads`)."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from app import payloads, schemas, uploads
from app.core.preprocessing import preprocess_slice
from app.errors import (
    EmptyFileError,
    InvalidSliceError,
    PayloadTooLargeError,
    ServiceError,
    UnsupportedMediaTypeError,
)
from app.imaging import decode_image
from app.inference import Predictor, SlicePrediction
from app.metrics import ServiceMetrics
from app.model_runners import predictor_runner
from app.prediction import PredictionService, Tally, in_request_order
from app.series.info import where_in_study
from tests.api.service_client import decode_png_mask, decode_rle, png_bytes, resized, tiff_bytes
from tests.conftest import NO_SLICE, TUMOR_SERIES, TUMOR_SLICE, make_tiny_model_dir, read_slice
from tests.dicom.builders import Study, mr_dataset, mr_series, to_bytes

LIMITS = uploads.UploadLimits(max_upload_bytes=1 << 20, max_image_pixels=1024 * 1024)


def predict_uploads(
    predictor: Predictor, files: list[bytes], limits: uploads.UploadLimits
) -> list[SlicePrediction | ServiceError]:
    """The flow the CLI runs: every file through the predictor, errors in place of failed files."""
    service = PredictionService(predictor, predictor_runner(predictor, batch_size=64), limits, offload=False)
    return asyncio.run(service.predict_files(files, schemas.MaskFormat.RLE)).predictions


def distinct_pngs(count: int) -> list[bytes]:
    """`count` PNGs of the tumor slice, each one pixel apart: a series refuses a file repeated byte for byte."""
    images = [read_slice(TUMOR_SLICE).copy() for _ in range(count)]
    for index, image in enumerate(images):
        image[0, 0] = index
    return [png_bytes(image) for image in images]


def test_sha256_hex_is_the_upload_hash() -> None:
    data = TUMOR_SLICE.read_bytes()

    assert uploads.sha256_hex(data) == hashlib.sha256(data).hexdigest()


def test_check_upload_size_names_limit_and_size() -> None:
    limits = uploads.UploadLimits(max_upload_bytes=10, max_image_pixels=100)

    uploads.check_upload_size(10, limits)
    with pytest.raises(PayloadTooLargeError, match=r"^file must be at most 10 bytes; got 11 bytes$"):
        uploads.check_upload_size(11, limits)
    with pytest.raises(PayloadTooLargeError, match=r"^file must be at most 10 bytes; got more than 10 bytes$"):
        uploads.check_upload_size(11, limits, complete=False)


def test_prepare_upload_is_decode_then_preprocess() -> None:
    data = png_bytes(resized(read_slice(TUMOR_SLICE), 200, 300))

    prepared = uploads.prepare_upload(data, LIMITS)

    assert prepared.size == (200, 300)
    assert prepared.image is None
    assert prepared.model_input.shape == (256, 256, 3)
    assert prepared.model_input.dtype == np.float32
    np.testing.assert_array_equal(prepared.model_input, preprocess_slice(decode_image(data)))


def test_prepare_upload_keeps_image_when_asked() -> None:
    image = read_slice(TUMOR_SLICE)

    prepared = uploads.prepare_upload(png_bytes(image), LIMITS, keep_image=True)

    np.testing.assert_array_equal(prepared.image, image)


def test_prepare_upload_reports_five_channel_image_as_invalid_slice() -> None:
    data = tiff_bytes(np.zeros((4, 6, 5), np.uint8), photometric="minisblack", planarconfig="contig")

    with pytest.raises(InvalidSliceError) as raised:
        uploads.prepare_upload(data, LIMITS)

    assert raised.value.code == "invalid_image"
    assert raised.value.message == (
        "image must be grey, grey+alpha, RGB or RGBA (1 to 4 samples per pixel); the TIFF header says 5 samples "
        "per pixel"
    )


def test_prepare_uploads_puts_errors_in_place() -> None:
    good = TUMOR_SLICE.read_bytes()
    unreadable = PayloadTooLargeError("file must be at most 1 bytes; got more than 1 bytes")

    prepared = uploads.prepare_uploads([good, b"", unreadable, b"text", good], LIMITS)

    assert [type(item) for item in prepared] == [
        uploads.PreparedSlice,
        EmptyFileError,
        PayloadTooLargeError,
        UnsupportedMediaTypeError,
        uploads.PreparedSlice,
    ]
    assert prepared[2] is unreadable


def test_in_request_order_interleaves_predictions_and_errors() -> None:
    error = EmptyFileError("empty")
    prepared = [object(), error, object()]
    first = SlicePrediction(0.1, False, None)
    second = SlicePrediction(0.9, True, np.ones((2, 2), np.uint8))

    assert in_request_order(prepared, [first, second]) == [first, error, second]


@pytest.mark.parametrize(
    ("mask_format", "keys"),
    [
        (schemas.MaskFormat.RLE, {"size", "rle", "area_pixels", "bbox"}),
        (schemas.MaskFormat.PNG, {"size", "png", "area_pixels", "bbox"}),
        (schemas.MaskFormat.BOTH, {"size", "rle", "png", "area_pixels", "bbox"}),
    ],
)
def test_mask_payload_includes_requested_encodings(mask_format: schemas.MaskFormat, keys: set[str]) -> None:
    mask = np.zeros((5, 7), np.uint8)
    mask[1:3, 2:6] = 1

    payload = payloads.mask_payload(mask, mask_format).model_dump(mode="json")

    assert set(payload) == keys
    assert payload["size"] == [5, 7]
    assert payload["area_pixels"] == 8
    assert payload["bbox"] == [2, 1, 4, 2]
    if "rle" in payload:
        np.testing.assert_array_equal(decode_rle(payload["rle"]), mask)
    if "png" in payload:
        np.testing.assert_array_equal(decode_png_mask(payload["png"]), mask)


def test_mask_payload_of_empty_mask_has_zero_area_and_null_bbox() -> None:
    payload = payloads.mask_payload(np.zeros((4, 4), np.uint8), schemas.MaskFormat.BOTH).model_dump(mode="json")

    assert payload["area_pixels"] == 0
    assert payload["bbox"] is None
    assert decode_rle(payload["rle"]).sum() == 0


def test_slice_payload_of_negative_has_null_mask() -> None:
    payload = payloads.slice_payload(SlicePrediction(0.2, False, None), 0.5, schemas.MaskFormat.BOTH)

    assert payload.model_dump(mode="json") == {
        "tumor_probability": 0.2,
        "tumor_detected": False,
        "threshold": 0.5,
        "mask": None,
    }


@pytest.mark.parametrize(
    ("mask_shape", "quick"), [(None, True), ((256, 256), True), ((512, 128), True), ((257, 256), False)]
)
def test_encodes_quickly_up_to_a_256x256_mask(mask_shape: tuple[int, int] | None, quick: bool) -> None:
    mask = None if mask_shape is None else np.ones(mask_shape, np.uint8)

    assert payloads.encodes_quickly(SlicePrediction(0.9, mask is not None, mask)) is quick


def test_predict_uploads_matches_predictor_and_keeps_order(predictor: Predictor) -> None:
    series = [path.read_bytes() for path in TUMOR_SERIES]
    uploads = [series[0], b"not an image", series[1], series[2]]

    outcomes = predict_uploads(predictor, uploads, LIMITS)
    expected = predictor.predict([decode_image(data) for data in series])

    assert isinstance(outcomes[1], UnsupportedMediaTypeError)
    for outcome, reference in zip([outcomes[0], *outcomes[2:]], expected, strict=True):
        assert outcome.probability == pytest.approx(reference.probability, abs=1e-6)
        np.testing.assert_array_equal(outcome.mask, reference.mask)


def test_predict_uploads_returns_masks_at_input_size(predictor: Predictor) -> None:
    data = png_bytes(resized(read_slice(TUMOR_SLICE), 120, 90))

    (outcome,) = predict_uploads(predictor, [data], LIMITS)

    assert outcome.detected is True  # classifier threshold 0
    assert outcome.mask.shape == (120, 90)


def test_predict_uploads_of_negative_skips_segmenter(tmp_path: Path) -> None:
    calls: list[tuple[str, int]] = []
    predictor = Predictor.from_model_dir(
        make_tiny_model_dir(tmp_path / "negative", classifier_threshold=NO_SLICE),
        observer=lambda role, seconds, batch_size: calls.append((role, batch_size)),
    )

    outcomes = predict_uploads(predictor, [TUMOR_SLICE.read_bytes()] * 2, LIMITS)

    assert [(outcome.detected, outcome.mask) for outcome in outcomes] == [(False, None), (False, None)]
    assert calls == [("classifier", 2)]


def test_a_flip_averaged_classifier_is_observed_once_per_batch(tmp_path: Path) -> None:
    calls: list[tuple[str, int]] = []
    predictor = Predictor.from_model_dir(
        make_tiny_model_dir(tmp_path / "flip", classifier_threshold=NO_SLICE, flip_average=True),
        observer=lambda role, seconds, batch_size: calls.append((role, batch_size)),
    )

    predict_uploads(predictor, [TUMOR_SLICE.read_bytes()] * 3, LIMITS)

    # It runs twice (slice and mirror), but the metrics count one classifier batch of three slices.
    assert calls == [("classifier", 3)]


def corrupted(data: bytes, rng: np.random.Generator) -> bytes:
    """`data` with a few bytes changed (mostly in the header) and sometimes cut short."""
    damaged = bytearray(data)
    for _ in range(int(rng.integers(1, 20))):
        position = int(rng.integers(0, min(len(damaged), 400)))
        damaged[position] = int(rng.integers(0, 256))
    if rng.random() < 0.3:
        damaged = damaged[: int(rng.integers(8, len(damaged)))]
    return bytes(damaged)


@pytest.mark.parametrize("encoding", ["png8", "png16", "jpeg", "tiff_rgb", "tiff_grey16"])
def test_prepare_upload_raises_only_service_errors_on_corrupt_files(encoding: str) -> None:
    image = read_slice(TUMOR_SLICE)
    data = {
        "png8": lambda: png_bytes(image),
        "png16": lambda: png_bytes(image.astype(np.uint16) * 257),
        "jpeg": TUMOR_SLICE.read_bytes,
        "tiff_rgb": lambda: tiff_bytes(image, photometric="rgb"),
        "tiff_grey16": lambda: tiff_bytes(image[:, :, 1].astype(np.uint16)),
    }[encoding]()
    rng = np.random.default_rng(len(encoding))

    for _ in range(40):
        try:
            prepared = uploads.prepare_upload(corrupted(data, rng), LIMITS)
        except ServiceError as error:  # anything else would be a 500
            assert error.code in {
                "undecodable_image",
                "invalid_image",
                "image_too_large",
                "over_memory_budget",  # a damaged header may claim a huge image: refused before decoding
                "unsupported_media_type",
            }
        else:
            assert prepared.model_input.shape == (256, 256, 3)


class SeriesModels:
    """Thresholds and tags of a model pair whose manifest asks for the series clean-up."""

    classifier_threshold = 0.5
    model_tags = {"classifier": "fake@1", "segmenter": "fake@1"}
    series_min_component_voxels = 100
    single_slice_mask_min_probability = 0.0
    single_slice_min_component_pixels = 0


def blob_runner(blobs: dict[int, tuple[slice, slice]]):
    """A model runner that calls every slice positive and draws the given blob (slice index -> rows, columns)."""

    async def run(batch: np.ndarray, sizes: list[tuple[int, int]]) -> list[SlicePrediction]:
        predictions = []
        for index, size in enumerate(sizes):
            mask = np.zeros(size, np.uint8)
            if index in blobs:
                mask[blobs[index]] = 1
            predictions.append(SlicePrediction(0.9, index in blobs, mask if index in blobs else None))
        return predictions

    return run


def test_series_batch_drops_an_isolated_small_blob_and_keeps_a_blob_across_slices() -> None:
    files = distinct_pngs(4)
    # Slices 0-2 share a 12 x 12 blob (432 voxels); slice 3 has a 3 x 3 blob far away, alone (9 voxels).
    blobs = {0: (slice(100, 112), slice(100, 112)), 1: (slice(100, 112), slice(100, 112))}
    blobs |= {2: (slice(100, 112), slice(100, 112)), 3: (slice(10, 13), slice(10, 13))}
    told: list[Tally] = []
    service = PredictionService(SeriesModels(), blob_runner(blobs), LIMITS, offload=False, on_predictions=told.append)

    as_series = asyncio.run(service.predict_files(files, schemas.MaskFormat.RLE, series=True))
    one_by_one = asyncio.run(service.predict_files(files, schemas.MaskFormat.RLE))

    assert [prediction.detected for prediction in as_series.predictions] == [True, True, True, False]
    # The metrics and the audit log count what the client is told, after the clean-up (they counted 4 positives);
    # the classifier's 4 positives are kept apart.
    assert as_series.tally == told[0] == Tally(positive=3, negative=1, classifier_positive=4)
    assert one_by_one.tally == told[1] == Tally(positive=4, negative=0, classifier_positive=4)
    assert as_series.predictions[3].mask is None and as_series.predictions[3].probability == 0.9
    assert int(as_series.predictions[0].mask.sum()) == 144
    assert as_series.outcomes[3].mask is None and as_series.outcomes[3].tumor_detected is False
    # Without `series` every slice is answered on its own, as a single-slice request is.
    assert [prediction.detected for prediction in one_by_one.predictions] == [True, True, True, True]
    assert int(one_by_one.predictions[3].mask.sum()) == 9


def test_metrics_count_the_classifiers_positives_before_the_series_clean_up() -> None:
    """Newcomer review 45 F1: `brain_tumor_positive_predictions_total` says "Slices the classifier called positive"
    and counted the final answers, so it moved with `brain_tumor_predictions_total{result="positive"}`."""
    blobs = {index: (slice(100, 112), slice(100, 112)) for index in range(3)} | {3: (slice(10, 13), slice(10, 13))}
    metrics = ServiceMetrics()
    service = PredictionService(
        SeriesModels(), blob_runner(blobs), LIMITS, offload=False, on_predictions=metrics.record_predictions
    )

    asyncio.run(service.predict_files(distinct_pngs(4), schemas.MaskFormat.RLE, series=True))

    sample = metrics.registry.get_sample_value
    assert sample("brain_tumor_positive_predictions_total") == 4  # the clean-up dropped slice 3's small blob
    assert sample("brain_tumor_predictions_total", {"result": "positive"}) == 3
    assert sample("brain_tumor_predictions_total", {"result": "negative"}) == 1


@pytest.mark.parametrize(("failed", "kept"), [(1, True), (2, False)], ids=["one-missing", "two-missing"])
def test_a_raster_series_joins_masks_across_one_failed_file_but_not_two(failed: int, kept: bool) -> None:
    """As a DICOM series does across missing slices (attack finding: the slices either side of failed files were
    joined as neighbours however many failed)."""
    first, last = distinct_pngs(2)
    files = [first, *[first[:100]] * failed, last]  # PNGs cut short: slices that failed
    # The same 8 x 8 blob (64 pixels) on both decoded slices: 128 voxels joined, over the minimum of 100.
    blobs = {0: (slice(100, 108), slice(100, 108)), 1: (slice(100, 108), slice(100, 108))}
    service = PredictionService(SeriesModels(), blob_runner(blobs), LIMITS, offload=False)

    answer = asyncio.run(service.predict_files(files, schemas.MaskFormat.RLE, series=True))

    decoded = [answer.predictions[0], answer.predictions[-1]]
    assert [prediction.detected for prediction in decoded] == [kept, kept]
    assert all(error.code != "unsupported_media_type" for error in answer.outcomes[1:-1])


def test_files_that_are_no_image_between_raster_slices_are_no_missing_slices() -> None:
    """Review 36: a note and a desktop.ini between two slices counted as two missing slices, so the clean-up no
    longer joined the slices either side and their tumor masks were dropped."""
    first, last = distinct_pngs(2)
    files = [first, b"slice 12: motion artefact\n", b"[.ShellClassInfo]\r\n", last]
    blobs = {0: (slice(100, 108), slice(100, 108)), 1: (slice(100, 108), slice(100, 108))}
    service = PredictionService(SeriesModels(), blob_runner(blobs), LIMITS, offload=False)

    answer = asyncio.run(service.predict_files(files, schemas.MaskFormat.RLE, series=True))

    assert [prediction.detected for prediction in (answer.predictions[0], answer.predictions[-1])] == [True, True]
    assert [error.code for error in answer.outcomes[1:-1]] == ["unsupported_media_type"] * 2


def test_copies_of_a_raster_slice_are_no_missing_slices() -> None:
    """Attack review 39: two copies of a slice, refused as such, counted as two missing slices, so the clean-up no
    longer joined the slices either side of them and dropped their masks."""
    first, last = distinct_pngs(2)
    files = [first, first, first, last]
    blobs = {0: (slice(100, 108), slice(100, 108)), 1: (slice(100, 108), slice(100, 108))}
    service = PredictionService(SeriesModels(), blob_runner(blobs), LIMITS, offload=False)

    answer = asyncio.run(service.predict_files(files, schemas.MaskFormat.RLE, series=True))

    assert [prediction.detected for prediction in (answer.predictions[0], answer.predictions[-1])] == [True, True]
    assert [error.code for error in answer.outcomes[1:-1]] == ["repeated_slice"] * 2


class UnsureMaskModels(SeriesModels):
    """A model pair whose manifest draws a single slice's mask only from probability 0.5 on (threshold 0.1)."""

    classifier_threshold = 0.1
    single_slice_mask_min_probability = 0.5


def probability_runner(probabilities: list[float]):
    """A model runner that gives slice i probability `probabilities[i]` and, when positive, a 12 x 12 blob."""

    async def run(batch: np.ndarray, sizes: list[tuple[int, int]]) -> list[SlicePrediction]:
        predictions = []
        for probability, size in zip(probabilities, sizes, strict=True):
            mask = None
            if probability >= UnsureMaskModels.classifier_threshold:
                mask = np.zeros(size, np.uint8)
                mask[100:112, 100:112] = 1
            predictions.append(SlicePrediction(probability, mask is not None, mask))
        return predictions

    return run


def test_a_slice_answered_alone_gets_its_mask_only_above_the_single_slice_minimum() -> None:
    image = png_bytes(read_slice(TUMOR_SLICE))
    unsure = PredictionService(UnsureMaskModels(), probability_runner([0.3]), LIMITS, offload=False)
    sure = PredictionService(UnsureMaskModels(), probability_runner([0.7]), LIMITS, offload=False)

    unsure_answer = asyncio.run(unsure.predict_slice(image))
    sure_answer = asyncio.run(sure.predict_slice(image))

    # Still a tumor by the classifier's threshold, but no mask below the minimum; above it, the mask as drawn.
    assert unsure_answer.prediction.detected and unsure_answer.prediction.mask is None
    assert payloads.slice_payload(unsure_answer.prediction, 0.1, schemas.MaskFormat.RLE).tumor_detected is True
    assert sure_answer.prediction.detected and int(sure_answer.prediction.mask.sum()) == 144
    overlay = asyncio.run(unsure.overlay(image))
    assert overlay.prediction.mask is None and overlay.png.startswith(b"\x89PNG")


def test_the_single_slice_minimum_applies_to_a_batch_of_slices_but_not_to_a_series() -> None:
    files = distinct_pngs(3)
    service = PredictionService(UnsureMaskModels(), probability_runner([0.3, 0.7, 0.05]), LIMITS, offload=False)

    one_by_one = asyncio.run(service.predict_files(files, schemas.MaskFormat.RLE))
    as_series = asyncio.run(service.predict_files(files, schemas.MaskFormat.RLE, series=True))

    assert [prediction.detected for prediction in one_by_one.predictions] == [True, True, False]
    assert [prediction.mask is not None for prediction in one_by_one.predictions] == [False, True, False]
    # In a series the 3-D clean-up judges the masks instead: the blob across slices 0 and 1 (288 voxels) stays.
    assert [prediction.mask is not None for prediction in as_series.predictions] == [True, True, False]


class SpeckModels(SeriesModels):
    """A model pair whose manifest drops a lone slice's mask pieces under 100 pixels of the 256 x 256 grid."""

    single_slice_min_component_pixels = 100


def test_a_slice_answered_alone_loses_small_mask_pieces_but_a_series_keeps_what_spans_slices() -> None:
    files = distinct_pngs(3)  # 256 x 256: grid pixels are slice pixels
    # A 12 x 12 blob on slice 0; a 6 x 6 blob (36 pixels) on slices 1 and 2, one component of 72 in a series.
    blobs = {0: (slice(100, 112), slice(100, 112))}
    blobs |= {1: (slice(10, 16), slice(10, 16)), 2: (slice(10, 16), slice(10, 16))}
    service = PredictionService(SpeckModels(), blob_runner(blobs), LIMITS, offload=False)

    one_by_one = asyncio.run(service.predict_files(files, schemas.MaskFormat.RLE))
    speck_alone = PredictionService(SpeckModels(), blob_runner({0: blobs[1]}), LIMITS, offload=False)
    alone = asyncio.run(speck_alone.predict_slice(files[1]))
    as_series = asyncio.run(service.predict_files(files, schemas.MaskFormat.RLE, series=True))

    assert [prediction.detected for prediction in one_by_one.predictions] == [True, True, True]
    assert [prediction.mask is not None for prediction in one_by_one.predictions] == [True, False, False]
    assert int(one_by_one.predictions[0].mask.sum()) == 144
    assert alone.prediction.detected and alone.prediction.mask is None
    # The series clean-up (100 voxels) judges in 3-D instead: 72 voxels across two slices are dropped there too,
    # and the slices are then tumor-free; the single-slice rule does not apply on top of it.
    assert [prediction.mask is not None for prediction in as_series.predictions] == [True, False, False]
    assert [prediction.detected for prediction in as_series.predictions] == [True, False, False]


def bright_square_runner():
    """A model runner positive where the FLAIR channel is bright (slices of 256 x 256, the models' own size)."""

    async def run(batch: np.ndarray, sizes: list[tuple[int, int]]) -> list[SlicePrediction]:
        predictions = []
        for model_input in batch:
            mask = (model_input[..., 1] > 0.6).astype(np.uint8)
            predictions.append(
                SlicePrediction(0.9 if mask.any() else 0.1, bool(mask.any()), mask if mask.any() else None)
            )
        return predictions

    return run


class LargeBlobModels(SeriesModels):
    series_min_component_voxels = 200  # a 12 x 12 blob (144 voxels) survives only joined to its neighbours


@pytest.mark.parametrize("sent", [[0, 1, 2, 3, 4], [4, 3, 2, 1, 0], [1, 0, 2, 4, 3], [3, 4, 0, 2, 1]])
def test_a_dicom_series_is_cleaned_up_in_anatomical_order_whatever_order_its_files_come_in(sent: list[int]) -> None:
    """A walkthrough found the 3-D clean-up joined slices in upload order: a shuffled series lost real tumor slices
    (one patient's volume went from 37.3 to 23.4 mL) and the answer depended on the order of the files."""
    images = [np.full((256, 256), 40, np.uint8) for _ in range(5)]
    for position in (1, 2, 3):  # one 12 x 12 x 3 blob across the middle slices: 432 voxels
        images[position][100:112, 100:112] = 220
    datasets = mr_series(images)
    service = PredictionService(LargeBlobModels(), bright_square_runner(), LIMITS, offload=False)

    answer = asyncio.run(service.predict_files([to_bytes(datasets[index]) for index in sent], schemas.MaskFormat.RLE))

    detected = {
        slice_input.reference.sop_instance_uid: prediction.detected
        for slice_input, prediction in zip(answer.result.inputs, answer.result.predictions, strict=True)
    }
    assert detected == {dataset.SOPInstanceUID: position in (1, 2, 3) for position, dataset in enumerate(datasets)}
    # The answer keeps the files' order.
    assert [item.reference.sop_instance_uid for item in answer.result.inputs] == [
        datasets[index].SOPInstanceUID for index in sent
    ]


@pytest.mark.parametrize(("last_position_mm", "kept"), [(20.0, True), (25.0, False)])
def test_a_dicom_series_is_not_joined_across_two_or_more_missing_slices(last_position_mm: float, kept: bool) -> None:
    """A 12 x 12 blob on a slice after a gap overlaps, in projection, a tumor on the slices before it. One slice
    missing (10 -> 20 mm, slices 5 mm apart): joined to the tumor, kept. Two missing (10 -> 25 mm): no neighbours,
    and alone its 144 voxels are under the minimum of 200."""
    study, series_uid = Study(), generate_uid()
    positions = [0.0, 5.0, 10.0, last_position_mm]
    images = [np.full((256, 256), 40, np.uint8) for _ in positions]
    for image in images:
        image[100:112, 100:112] = 220
    datasets = [
        mr_dataset(image, study, series_uid, instance_number=index + 1, position_mm=position)
        for index, (image, position) in enumerate(zip(images, positions, strict=True))
    ]
    service = PredictionService(LargeBlobModels(), bright_square_runner(), LIMITS, offload=False)

    answer = asyncio.run(service.predict_files([to_bytes(dataset) for dataset in datasets], schemas.MaskFormat.RLE))

    assert [prediction.detected for prediction in answer.result.predictions] == [True, True, True, kept]
    assert answer.tally == Tally(positive=3 + kept, negative=1 - kept, classifier_positive=4)


def test_a_rectangular_slice_is_answered_as_the_same_slice_centred_on_a_square(predictor: Predictor) -> None:
    # Interop review 35: a 256 x 208 matrix was stretched to a square (7.4 % less tumor volume than padded). Now its
    # answer is the padded square's, cut back to the slice: the same probability and the same mask pixels.
    tumor = read_slice(TUMOR_SLICE)
    rectangular = np.ascontiguousarray(tumor[:, 24:232])
    square = np.zeros_like(tumor)
    square[:, 24:232] = rectangular

    alone, padded = predictor.predict([rectangular, square])

    assert alone.probability == pytest.approx(padded.probability, abs=1e-6)
    assert padded.mask is not None and alone.mask is not None  # the tiny models find this tumor
    assert alone.mask.shape == (256, 208)
    np.testing.assert_array_equal(alone.mask, padded.mask[:, 24:232])


def test_a_refusal_names_five_files_then_counts_the_rest() -> None:
    assert uploads.request_files([3]) == "the request's file at index 3 (file 4 as sent)"
    assert uploads.request_files(list(range(2, 9))) == (
        "the request's files at index 2, 3, 4, 5, 6 (files 3, 4, 5, 6, 7 as sent) and 2 more"
    )


def test_dicom_files_are_placed_by_series_and_instance_number() -> None:
    """Interop review 39: on the PACS paths the index is the order files arrived or were fetched in; the series and
    instance numbers are what a PACS user can find (an unreadable or missing number says "unnumbered")."""
    files = [Dataset(), Dataset(), Dataset(), Dataset()]
    files[0].SeriesNumber, files[0].InstanceNumber = 3, 7
    files[1].SeriesNumber, files[1].InstanceNumber = 3, 8
    files[2].SeriesNumber = 5
    files[3].InstanceNumber = 2

    where = where_in_study(files)

    assert where == "series 3: instances 7, 8; series 5: instance unnumbered; series unnumbered: instance 2"
    assert uploads.request_files([0, 1], where_in_study(files[:2])) == (
        "the request's files at index 0, 1 (files 1, 2 as sent; series 3: instances 7, 8)"
    )
