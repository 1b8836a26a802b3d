from __future__ import annotations

import io
import struct
from collections.abc import Sequence

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.filereader import data_element_generator
from pydicom.pixels import get_encoder
from pydicom.uid import (
    MPEG2MPML,
    BasicTextSRStorage,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    EnhancedMRImageStorage,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLossless,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

from app.dicom.dicom_header import is_dicom, read_dicom_header
from app.dicom.dicom_input import check_pixel_data_element, decode_dicom
from app.dicom.dicom_series import prepare_inputs
from app.dicom.part10 import read_file_meta
from app.errors import (
    DicomWithoutPixelDataError,
    ErrorKind,
    ImageTooLargeError,
    InvalidDicomImageError,
    UndecodableDicomError,
    UnsupportedDicomError,
    UnsupportedSopClassError,
)
from tests.conftest import TUMOR_SLICE
from tests.dicom.builders import (
    PIXEL_SPACING_MM,
    SLICE_GAP_MM,
    Study,
    htj2k_lossless,
    legacy_multiframe,
    mr_dataset,
    mr_series,
    to_bytes,
    tumor_channels,
    with_trailing_sequence,
)
from tests.dicom.reading import read_dicom


def single_mr(pixels: np.ndarray, **kwargs: object) -> Dataset:
    return mr_dataset(pixels, Study(), generate_uid(), **kwargs)


def test_is_dicom_needs_preamble_and_marker(flair: np.ndarray) -> None:
    data = to_bytes(single_mr(flair))
    assert is_dicom(data)
    assert not is_dicom(b"DICM" + data[132:])  # marker at the start, no preamble
    assert not is_dicom(TUMOR_SLICE.read_bytes())
    assert not is_dicom(b"")


def test_read_dicom_returns_geometry_and_header_without_pixels(flair: np.ndarray) -> None:
    dataset = single_mr(flair, position_mm=12.5)

    (frame,) = read_dicom(to_bytes(dataset))

    assert frame.values.dtype == np.float32
    np.testing.assert_array_equal(frame.values, flair)
    assert frame.frame_number == 1 and frame.number_of_frames == 1 and not frame.is_multiframe
    assert frame.image_position == (-120.0, -120.0, 12.5)
    assert frame.image_orientation == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    assert frame.pixel_spacing == PIXEL_SPACING_MM
    assert frame.slice_thickness == SLICE_GAP_MM and frame.spacing_between_slices == SLICE_GAP_MM
    assert frame.sop_instance_uid == dataset.SOPInstanceUID
    assert frame.series_instance_uid == dataset.SeriesInstanceUID
    assert "PixelData" not in frame.header


def test_read_dicom_applies_rescale_slope(flair: np.ndarray) -> None:
    stored = flair.astype(np.uint16) * 16 + 1000
    dataset = single_mr(stored, rescale=(0.25, -250.0))

    (frame,) = read_dicom(to_bytes(dataset))

    np.testing.assert_allclose(frame.values, stored * 0.25 - 250.0)


def test_read_dicom_negative_slope_inverts_the_image(flair: np.ndarray) -> None:
    (plain,) = read_dicom(to_bytes(single_mr(flair)))
    (inverted,) = read_dicom(to_bytes(single_mr(flair, rescale=(-1.0, 255.0))))

    (plain_input,) = prepare_inputs([plain])
    (inverted_input,) = prepare_inputs([inverted])

    np.testing.assert_array_equal(inverted_input.image, 255 - plain_input.image)


def test_read_dicom_inverts_monochrome1(flair: np.ndarray) -> None:
    (plain,) = read_dicom(to_bytes(single_mr(flair)))
    (monochrome1,) = read_dicom(to_bytes(single_mr(255 - flair, photometric="MONOCHROME1")))

    np.testing.assert_array_equal(prepare_inputs([monochrome1])[0].image, prepare_inputs([plain])[0].image)


def test_read_dicom_sign_extends_12_bit_signed_pixels(flair: np.ndarray) -> None:
    signed = flair.astype(np.int16) - 128
    # Only the 12 stored bits are written: negative values have zeros above bit 11, as a scanner may leave them.
    raw = (signed.astype(np.uint16) & 0x0FFF).view(np.int16)

    (frame,) = read_dicom(to_bytes(single_mr(raw, bits_stored=12)))

    np.testing.assert_array_equal(frame.values, signed)


def test_read_dicom_ignores_bits_above_bits_stored(flair: np.ndarray) -> None:
    raw = flair.astype(np.uint16) | 0xF000  # overlay-style junk above the 12 stored bits

    (frame,) = read_dicom(to_bytes(single_mr(raw, bits_stored=12)))

    np.testing.assert_array_equal(frame.values, flair)


@pytest.mark.parametrize("signed", [False, True], ids=["unsigned", "signed"])
def test_read_dicom_ignores_bits_above_bits_stored_in_compressed_pixel_data(flair: np.ndarray, signed: bool) -> None:
    """pydicom drops the bits above Bits Stored from native pixel data only; a codestream may carry them (dcmtk's
    JPEG-LS encoder does), and read as image they answered a 12-bit tumor series "no tumor" (attack review 28)."""
    if not get_encoder(JPEGLSLossless).is_available:
        pytest.skip("no JPEG-LS encoder installed")
    values = flair.astype(np.int16) * 8 - (1000 if signed else 0)  # 12-bit values, negative ones when signed
    junk = np.random.default_rng(28).integers(0, 16, flair.shape).astype(np.uint16) << 12
    stored = ((values.astype(np.uint16) & 0x0FFF) | junk).view(np.int16 if signed else np.uint16)
    dataset = single_mr(stored, bits_stored=16)
    dataset.PixelRepresentation = int(signed)
    dataset.compress(
        JPEGLSLossless, stored, generate_instance_uid=False
    )  # pydicom encodes only values within Bits Stored
    dataset.BitsStored, dataset.HighBit = 12, 11  # so the file says 12 once the junk is in the codestream

    (frame,) = read_dicom(to_bytes(dataset))

    np.testing.assert_array_equal(frame.values, values)


def test_read_dicom_takes_pixel_padding_as_background(flair: np.ndarray) -> None:
    """Pixels at Pixel Padding Value (or up to Pixel Padding Range Limit) are not image: a padding of -32768 had set
    the series stretch's floor and answered a tumor series "no tumor" (attack review 28, finding 1)."""
    values = flair.astype(np.int16) * 4 + 10
    padded = np.where(flair < 3, -32768, values).astype(np.int16)
    dataset = single_mr(padded, bits_stored=16)
    dataset.PixelRepresentation = 1
    dataset.PixelPaddingValue = -32768
    reference = single_mr(np.where(flair < 3, values[flair >= 3].min(), values).astype(np.int16), bits_stored=16)
    reference.PixelRepresentation = 1

    (frame,) = read_dicom(to_bytes(dataset))
    (expected,) = read_dicom(to_bytes(reference))
    np.testing.assert_array_equal(frame.values, expected.values)
    assert frame.values.min() == values[flair >= 3].min()

    dataset.PixelPaddingValue, dataset.PixelPaddingRangeLimit = -32768, -30000  # a range of padding values
    dataset.PixelData = np.where(flair < 3, -31000, padded).astype(np.int16).tobytes()
    (ranged,) = read_dicom(to_bytes(dataset))
    np.testing.assert_array_equal(ranged.values, expected.values)


@pytest.mark.parametrize(
    ("bits_stored", "signed", "written", "meant"),
    [
        (16, True, ("US", 32768), ("SS", -32768)),
        (16, False, ("SS", -1), ("US", 65535)),
        (12, True, ("US", 2048), ("SS", -2048)),  # the 12-bit pattern of -2048
        (12, True, ("US", 63488), ("SS", -2048)),  # the same, sign-extended to 16 bits and written unsigned
    ],
    ids=["signed US", "unsigned SS", "12-bit signed", "12-bit signed, 16 bits"],
)
def test_pixel_padding_written_with_the_other_vr_is_read_as_the_pixels_are(
    flair: np.ndarray, bits_stored: int, signed: bool, written: tuple[str, int], meant: tuple[str, int]
) -> None:
    """Interop review 61 F1: Pixel Padding Value is "US or SS", a stored pixel value. Written US 32768 beside signed
    pixels (as some vendors write -32768) it matched no pixel, the padding set the stretch's floor, and a tumor
    series was answered "Absent, 0.0 mL" in Explicit VR and "Present, 56.8 mL" in Implicit VR, where pydicom reads it
    by Pixel Representation. It is read as the pixels are: within Bits Stored, signed as they are."""
    dtype = np.int16 if signed else np.uint16
    values = (flair.astype(dtype) * 4 + 10) if bits_stored == 16 else (flair.astype(dtype) * 2 - 200)
    padded = np.where(flair < 3, meant[1], values).astype(dtype)

    def slice_padded(vr: str, padding: int) -> np.ndarray:
        dataset = single_mr(padded, bits_stored=bits_stored)
        dataset.PixelRepresentation = int(signed)
        dataset.add_new(0x00280120, vr, padding)  # Pixel Padding Value, with the VR the file gives it
        (frame,) = read_dicom(to_bytes(dataset))
        return frame.values

    as_written, as_meant = slice_padded(*written), slice_padded(*meant)

    np.testing.assert_array_equal(as_written, as_meant)
    assert as_written.min() == values[flair >= 3].min()  # the padding is background, not the stretch's floor


def test_a_modality_lut_whose_first_value_is_written_unsigned_beside_signed_pixels_is_applied(
    flair: np.ndarray,
) -> None:
    """Interop review 61 F2: a LUT Descriptor's first input value is "US or SS"; 64536 beside signed pixels is -1000.
    The coverage check read it so, but the LUT was applied with 64536: 400 "cannot be applied (OverflowError)"."""
    stored = flair.astype(np.int16) * 4 - 1000

    def read_with_first(vr: str, first: int) -> np.ndarray:
        dataset = single_mr(stored, bits_stored=16)
        dataset.PixelRepresentation = 1
        item = Dataset()
        item.add_new(0x00283002, vr, [2048, first, 16])  # LUT Descriptor
        item.ModalityLUTType = "US"
        item.add_new(0x00283006, "US", list(range(2048)))  # LUT Data: stored -1000 .. 1047 to 0 .. 2047
        dataset.ModalityLUTSequence = [item]
        (frame,) = read_dicom(to_bytes(dataset))
        return frame.values

    unsigned_form = read_with_first("US", 64536)

    np.testing.assert_array_equal(unsigned_form, read_with_first("SS", -1000))
    np.testing.assert_array_equal(unsigned_form, stored + 1000)


def float_mr(values: np.ndarray) -> bytes:
    """A slice of Float Pixel Data (32-bit floats) holding `values`."""
    dataset = single_mr(np.zeros(values.shape, np.uint16), bits_stored=16)
    del dataset.PixelData
    for keyword in ("BitsStored", "HighBit", "PixelRepresentation"):
        delattr(dataset, keyword)
    dataset.BitsAllocated = 32
    dataset.FloatPixelData = values.astype(np.float32).tobytes()
    return to_bytes(dataset)


def test_read_dicom_takes_non_finite_float_samples_as_padding(flair: np.ndarray) -> None:
    """Attack review 33: one NaN sample of Float Pixel Data refused the whole slice, blaming a RescaleSlope the file
    did not have (a float TIFF's NaN samples were read). They are padding now; a slice of nothing else is refused."""
    values = flair.astype(np.float32) + 10.0
    broken = values.copy()
    broken[:3, :3] = [[np.nan, np.inf, -np.inf]] * 3

    (frame,) = read_dicom(float_mr(broken))
    (expected,) = read_dicom(float_mr(np.where(np.isfinite(broken), broken, values.min())))

    np.testing.assert_array_equal(frame.values, expected.values)
    assert np.isfinite(frame.values).all()
    with pytest.raises(InvalidDicomImageError, match="every pixel .* not a finite number: no image is left"):
        read_dicom(float_mr(np.full(flair.shape, np.nan)))


def test_read_dicom_refuses_a_slice_whose_every_pixel_is_padding(flair: np.ndarray) -> None:
    """Attack review 33: when Pixel Padding Value and Range Limit covered every stored value, the padding was read as
    the image and answered."""
    dataset = single_mr(flair.astype(np.uint16), bits_stored=16)
    dataset.PixelPaddingValue, dataset.PixelPaddingRangeLimit = 0, 65535

    with pytest.raises(InvalidDicomImageError, match="every pixel of the DICOM file is padding"):
        read_dicom(to_bytes(dataset))


def test_read_dicom_reads_every_frame_of_a_multiframe_image() -> None:
    channels = tumor_channels()
    legacy = mr_series([image.astype(np.uint16) * 4 for image in channels])
    for index, dataset in enumerate(legacy):  # a different rescale per frame, written into the functional groups
        dataset.RescaleSlope, dataset.RescaleIntercept = float(index + 1), 0.0
    multiframe = legacy_multiframe(legacy)

    frames = read_dicom(to_bytes(multiframe))

    assert [frame.frame_number for frame in frames] == [1, 2, 3]
    assert all(frame.is_multiframe and frame.number_of_frames == 3 for frame in frames)
    assert {frame.sop_instance_uid for frame in frames} == {multiframe.SOPInstanceUID}
    # highdicom may sort frames; match each back to its source by position.
    by_z = {source.ImagePositionPatient[2]: (index, source) for index, source in enumerate(legacy)}
    for frame in frames:
        index, _ = by_z[frame.image_position[2]]
        np.testing.assert_allclose(frame.values, channels[index].astype(np.float64) * 4 * (index + 1))
        assert frame.pixel_spacing == PIXEL_SPACING_MM


@pytest.mark.parametrize("transfer_syntax", [JPEG2000Lossless, JPEGLSLossless, RLELossless], ids=lambda uid: uid.name)
def test_read_dicom_decodes_compressed_transfer_syntaxes(flair: np.ndarray, transfer_syntax) -> None:
    if not get_encoder(transfer_syntax).is_available:
        pytest.skip(f"no encoder installed for {transfer_syntax.name}")
    dataset = single_mr(flair.astype(np.uint16) * 8)
    dataset.compress(transfer_syntax, generate_instance_uid=False)

    (frame,) = read_dicom(to_bytes(dataset))

    np.testing.assert_array_equal(frame.values, flair.astype(np.float32) * 8)


@pytest.mark.parametrize("shape", [(320, 320), (240, 320), (64, 64)])
def test_rle_of_a_noisy_slice_whose_width_is_no_multiple_of_128_is_read(shape: tuple[int, int]) -> None:
    """Attack review 59 F6: RLE encodes each row apart (PS3.5 G.3.1), so a row of noise ends in a short literal run,
    and a bound counting whole 128-byte runs refused what pydicom (and DCMTK) write for a 320-wide 12-bit slice."""
    noisy = np.random.default_rng(0).normal(600, 150, shape).clip(0, 4095).astype(np.uint16)
    dataset = single_mr(noisy)
    dataset.compress(RLELossless, generate_instance_uid=False)

    (frame,) = read_dicom(to_bytes(dataset))

    np.testing.assert_array_equal(frame.values, noisy.astype(np.float32))


@pytest.mark.parametrize("scale", [1, 8], ids=["8-bit", "16-bit"])
def test_read_dicom_decodes_htj2k_lossless(flair: np.ndarray, scale: int) -> None:
    """High-Throughput JPEG 2000 (DICOM 2023): the node accepts it, so it must decode to the same values."""
    dataset = single_mr(flair.astype(np.uint16) * scale if scale > 1 else flair.astype(np.uint8))
    htj2k_lossless(dataset)

    (frame,) = read_dicom(to_bytes(dataset))

    np.testing.assert_array_equal(frame.values, flair.astype(np.float32) * scale)


def test_read_dicom_rejects_missing_pixel_data(flair: np.ndarray) -> None:
    dataset = single_mr(flair)
    del dataset.PixelData

    with pytest.raises(DicomWithoutPixelDataError, match="must carry Pixel Data") as caught:
        read_dicom(to_bytes(dataset))
    assert caught.value.kind is ErrorKind.INVALID_INPUT


def test_read_dicom_rejects_structured_report() -> None:
    report = Dataset()
    report.file_meta = FileMetaDataset()
    report.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    report.SOPClassUID = report.file_meta.MediaStorageSOPClassUID = BasicTextSRStorage
    report.SOPInstanceUID = report.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    report.Modality = "SR"
    report.ValueType = "CONTAINER"

    with pytest.raises(
        UnsupportedDicomError, match=r"got Basic Text SR Storage \(1\.2\.840\.10008\.5\.1\.4\.1\.1\.88\.11\)"
    ):
        read_dicom(to_bytes(report))
    assert UnsupportedDicomError.kind is ErrorKind.UNSUPPORTED_TYPE


def test_read_dicom_rejects_images_other_than_mr(flair: np.ndarray) -> None:
    dataset = single_mr(flair)
    dataset.SOPClassUID = dataset.file_meta.MediaStorageSOPClassUID = CTImageStorage

    with pytest.raises(UnsupportedDicomError, match=r"got CT Image Storage \(1\.2\.840\.10008\.5\.1\.4\.1\.1\.2\)"):
        read_dicom(to_bytes(dataset))


@pytest.mark.parametrize(("keyword", "value"), [("Columns", 255), ("Columns", 254), ("Rows", 200)])
@pytest.mark.parametrize("deflated", [False, True], ids=["plain", "deflated"])
def test_pixel_data_longer_than_the_image_is_refused(
    flair: np.ndarray, keyword: str, value: int, deflated: bool
) -> None:
    """Attack review 42: pydicom drops the excess with a warning, so a wrong Columns sheared the image and a tumor
    series was answered "no tumor, 0.0 mL". One padding byte to an even length is the standard's and is read."""
    dataset = single_mr(flair)
    setattr(dataset, keyword, value)
    if deflated:
        dataset.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian

    with pytest.raises(InvalidDicomImageError, match=r"pixel data holds 65536 bytes; Rows x Columns x frames"):
        read_dicom(to_bytes(dataset))

    odd = single_mr(np.zeros((255, 255), np.uint8) + flair[:255, :255])
    assert len(odd.PixelData) == 255 * 255
    odd.PixelData += b"\0"  # what pydicom writes anyway
    (frame,) = read_dicom(to_bytes(odd))
    np.testing.assert_array_equal(frame.values, flair[:255, :255])


@pytest.mark.parametrize("high_bit", [15, 10])
def test_a_high_bit_other_than_bits_stored_less_one_is_refused(flair: np.ndarray, high_bit: int) -> None:
    """Attack review 42: a 12-bit series stored in bits 4-15 (High Bit 15) was read from its low bits, "no tumor"."""
    dataset = single_mr((flair.astype(np.uint16) * 16) << 4, bits_stored=16)
    dataset.BitsStored, dataset.HighBit = 12, high_bit

    with pytest.raises(
        InvalidDicomImageError, match=rf"HighBit \(0028,0102\) must be one less than BitsStored \(12\); got {high_bit}"
    ):
        read_dicom(to_bytes(dataset))


def test_read_dicom_rejects_transfer_syntax_without_decoder(flair: np.ndarray) -> None:
    dataset = single_mr(flair)
    dataset.file_meta.TransferSyntaxUID = MPEG2MPML
    dataset.PixelData = encapsulate([b"\x00" * 64])

    with pytest.raises(
        UnsupportedDicomError, match="transfer syntax MPEG2 Main Profile / Main Level .* cannot be decoded"
    ):
        read_dicom(to_bytes(dataset))


@pytest.mark.parametrize("kept_bytes", [300, 420, 1000, -1], ids=["in-meta", "in-header", "in-pixels", "last-byte"])
def test_read_dicom_rejects_truncated_file(flair: np.ndarray, kept_bytes: int) -> None:
    data = to_bytes(single_mr(flair))

    # Cut between two elements, the file cannot be told from one without pixel data: both say "truncated".
    with pytest.raises((UndecodableDicomError, DicomWithoutPixelDataError), match="truncated") as caught:
        read_dicom(data[:kept_bytes])
    assert caught.value.kind is ErrorKind.INVALID_INPUT


def test_read_dicom_rejects_bytes_without_marker() -> None:
    with pytest.raises(UndecodableDicomError, match="must hold DICM at byte 128"):
        read_dicom(b"\x00" * 200)


def test_read_dicom_rejects_colour_images(flair: np.ndarray) -> None:
    dataset = single_mr(flair)
    rgb = np.repeat(flair[:, :, None], 3, axis=2)
    dataset.SamplesPerPixel, dataset.PhotometricInterpretation, dataset.PlanarConfiguration = 3, "RGB", 0
    dataset.PixelData = rgb.tobytes()

    with pytest.raises(InvalidDicomImageError, match="got SamplesPerPixel 3, PhotometricInterpretation RGB"):
        read_dicom(to_bytes(dataset))


def test_read_dicom_checks_pixel_count_before_decoding(flair: np.ndarray) -> None:
    dataset = single_mr(flair)
    dataset.PixelData = b""  # would not decode: the size check must come first

    with pytest.raises(ImageTooLargeError, match="256x256 pixels x 1 frames = 65536 pixels; the limit is 1000"):
        read_dicom(to_bytes(dataset), max_pixels=1000)


def replaced(data: bytes, old: bytes, new: bytes) -> bytes:
    """`data` with the one occurrence of `old` overwritten by `new` of the same length: a malformed value that
    pydicom would refuse to write. Each `old` is a decimal with an exponent ("7.07E0"): the files also hold random
    UIDs ("7.77" once turned up in one) and times of day with fractions of a second ("152437.071234" holds "7.07",
    which failed a clean-clone run), and neither ever holds an "E"."""
    assert len(old) == len(new) and data.count(old) == 1, old
    return data.replace(old, new)


def multiframe_with_slopes(slopes: Sequence[float | str]) -> bytes:
    legacy = mr_series([image.astype(np.uint16) for image in tumor_channels()])
    for dataset, slope in zip(legacy, slopes, strict=True):
        dataset.RescaleSlope, dataset.RescaleIntercept = slope, 0.0
    multiframe = legacy_multiframe(legacy)
    return to_bytes(multiframe)


def with_modality_lut(dataset: Dataset, first: int, entries: int) -> Dataset:
    """`dataset` with a Modality LUT that maps stored values `first` .. `first + entries - 1` to themselves."""
    item = Dataset()
    item.LUTDescriptor = [entries, first, 8]
    item.ModalityLUTType = "US"
    item.add_new(0x00283006, "US", list(range(first, first + entries)))  # LUTData
    dataset.ModalityLUTSequence = [item]
    return dataset


@pytest.mark.parametrize(("first", "entries"), [(0, 16), (200, 56)], ids=["short", "above-the-brain"])
def test_a_modality_lut_that_misses_most_pixels_is_refused(flair: np.ndarray, first: int, entries: int) -> None:
    """Attack review 42: values outside a LUT read as its end entries, so a LUT of 16 entries flattened the brain
    and a tumor series was answered "no tumor, 0.0 mL"."""
    with pytest.raises(InvalidDicomImageError, match=r"% of a frame's pixels lie outside them"):
        read_dicom(to_bytes(with_modality_lut(single_mr(flair), first, entries)))

    (frame,) = read_dicom(to_bytes(with_modality_lut(single_mr(flair), 0, 256)))  # every value: read as stored
    np.testing.assert_array_equal(frame.values, flair)


def malformed_dicom(flair: np.ndarray, case: str) -> bytes:
    """Files that made the service answer 500 (issue 16, item 4)."""
    if case == "slope-not-a-number":
        return replaced(to_bytes(single_mr(flair, rescale=("7.07E0", 0.0))), b"7.07E0", b"ab.cE0")
    if case == "intercept-not-a-number":
        return replaced(to_bytes(single_mr(flair, rescale=(1.0, "5.05E0"))), b"5.05E0", b"ab.cE0")
    if case == "per-frame-slope-not-a-number":
        return replaced(multiframe_with_slopes((1.25, "7.07E0", 3.5)), b"7.07E0", b"ab.cE0")
    if case == "modality-lut-without-descriptor":
        dataset = single_mr(flair)
        item = Dataset()
        item.ModalityLUTType = "US"
        item.add_new(0x00283006, "US", list(range(256)))  # LUTData: the VR would come from the descriptor
        dataset.ModalityLUTSequence = [item]
        return to_bytes(dataset)
    if case == "position-overflows":
        dataset = single_mr(flair)
        dataset.ImagePositionPatient = ["-120.0", "-120.0", "12345.06"]
        return replaced(to_bytes(dataset), b"12345.06", b"1e309   ")
    raise AssertionError(case)


MALFORMED_DICOM_CASES = {
    "slope-not-a-number": "RescaleSlope",
    "intercept-not-a-number": "RescaleIntercept",
    "per-frame-slope-not-a-number": "RescaleSlope",
    "modality-lut-without-descriptor": "LUTDescriptor",
    "position-overflows": "ImagePositionPatient",
}


@pytest.mark.parametrize(("case", "element"), MALFORMED_DICOM_CASES.items(), ids=list(MALFORMED_DICOM_CASES))
def test_read_dicom_names_the_malformed_element(flair: np.ndarray, case: str, element: str) -> None:
    with pytest.raises(InvalidDicomImageError, match=element) as caught:
        prepare_inputs(read_dicom(malformed_dicom(flair, case)))
    assert caught.value.kind is ErrorKind.INVALID_INPUT
    assert "ab.c" not in caught.value.message and "1e309" not in caught.value.message  # the element, not its value


def test_is_dicom_needs_a_file_meta_group_after_the_marker(flair: np.ndarray) -> None:
    png = TUMOR_SLICE.read_bytes() if TUMOR_SLICE.suffix == ".png" else None
    raster = png or b"\x89PNG\r\n\x1a\n" + b"\0" * 200
    assert not is_dicom(raster[:128] + b"DICM" + raster[132:])  # a PNG with DICM at 128 is a PNG
    assert not is_dicom(b"\0" * 128 + b"DICM" + b"tEXtcomment")  # no group 0002 after the marker
    assert not is_dicom(b"\0" * 128 + b"DICM" + b"\x02\x00\x00\x00\x01\x02")  # no explicit VR
    assert is_dicom(b"\0" * 128 + b"DICM" + b"\x02\x00")  # cut short inside the meta group: DICOM, and a 400
    assert is_dicom(to_bytes(single_mr(flair)))


def element_ends(data: bytes) -> tuple[int, set[int]]:
    """Where the pixel data element starts, and the offsets where each element of the data set ends."""
    meta_end, _ = read_file_meta(data)
    stream = io.BytesIO(data)
    stream.seek(meta_end)
    ends: set[int] = set()
    for element in data_element_generator(stream, False, True):
        if element.tag == 0x7FE00010:
            return max(ends), ends
        ends.add(stream.tell())
    raise AssertionError("no pixel data")


def test_read_dicom_header_calls_a_file_cut_inside_its_header_undecodable(flair: np.ndarray) -> None:
    data = to_bytes(single_mr(flair))
    pixel_start, ends = element_ends(data)

    for kept in [132, 200, 400, pixel_start // 2, pixel_start - 1, *range(133, pixel_start)]:
        with pytest.raises((UndecodableDicomError, DicomWithoutPixelDataError), match="truncated") as caught:
            read_dicom_header(data[:kept])
        # Cut between two elements, the file cannot be told from a complete one without pixel data; cut inside an
        # element (a SOP Class UID "1.2.840.1" among them), it is broken: never an unsupported kind of file.
        if kept not in ends:
            assert caught.value.code == "undecodable_dicom", (kept, caught.value)
        assert caught.value.kind is ErrorKind.INVALID_INPUT


def test_read_dicom_refuses_a_slope_beyond_float32_instead_of_a_black_slice(flair: np.ndarray) -> None:
    """Attack finding: RescaleSlope 1e39 overflowed to infinity, then zero, and a tumor slice was answered as
    tumor-free with a 200."""
    with pytest.raises(InvalidDicomImageError, match="RescaleSlope and RescaleIntercept .* 32-bit float"):
        read_dicom(to_bytes(single_mr(flair, rescale=(1e39, 0.0))))

    (frame,) = read_dicom(to_bytes(single_mr(flair, rescale=(1e30, 0.0))))  # large, still representable
    np.testing.assert_allclose(frame.values, flair.astype(np.float64) * 1e30, rtol=1e-6)


@pytest.mark.parametrize("slope", [0.0, 1e-50, 1e-300])
def test_read_dicom_refuses_a_slope_that_leaves_no_image_instead_of_a_black_slice(
    flair: np.ndarray, slope: float
) -> None:
    """Attack finding: RescaleSlope 0 (or one whose products underflow float32) made every pixel one value, and a
    tumor series was answered "no tumor" with a 200."""
    with pytest.raises(InvalidDicomImageError, match="RescaleSlope .*maps every stored pixel value .*to one value"):
        read_dicom(to_bytes(single_mr(flair, rescale=(slope, 0.0))))

    (frame,) = read_dicom(to_bytes(single_mr(flair, rescale=(1e-30, 0.0))))  # small, still distinct in float32
    assert frame.values.max() > frame.values.min()
    (blank,) = read_dicom(to_bytes(single_mr(np.zeros_like(flair), rescale=(1e-50, 0.0))))  # blank already
    assert blank.values.max() == blank.values.min() == 0.0


def test_the_header_refuses_no_frames_and_more_bits_stored_than_allocated(flair: np.ndarray) -> None:
    """Attack findings: NumberOfFrames 0 was read as one frame (absent); BitsStored over BitsAllocated failed only
    when the pixels were decoded (at the DICOM node, long after the instance was acknowledged). In a class without
    frames (MR Image), a stray 0 is one frame, as pydicom reads it (interop review 63 F8: the study was refused)."""
    no_frames = single_mr(flair)
    no_frames.NumberOfFrames = 0
    assert read_dicom_header(to_bytes(no_frames)).frames == 1
    (frame,) = read_dicom(to_bytes(no_frames))
    np.testing.assert_array_equal(frame.values, read_dicom(to_bytes(single_mr(flair)))[0].values)
    no_frames.SOPClassUID = EnhancedMRImageStorage
    with pytest.raises(InvalidDicomImageError, match="at least one row, column and frame; got 256x256 x 0 frames"):
        read_dicom_header(to_bytes(no_frames))
    too_deep = single_mr(flair.astype(np.uint8))  # 8 bits allocated
    too_deep.BitsStored = 12
    with pytest.raises(
        InvalidDicomImageError, match=r"BitsStored \(0028,0101\) must be 1 to BitsAllocated \(8\); got 12"
    ):
        read_dicom_header(to_bytes(too_deep))


def test_a_truncated_compressed_file_is_refused_with_a_reason_not_a_library_slip(flair: np.ndarray) -> None:
    """Attack finding: a truncated JPEG 2000 file got "'...' object has no attribute '...'" as its reason."""
    if not get_encoder(JPEG2000Lossless).is_available:
        pytest.skip("no JPEG 2000 encoder installed")
    dataset = single_mr(flair.astype(np.uint16) * 8)
    dataset.compress(JPEG2000Lossless, generate_instance_uid=False)
    data = to_bytes(dataset)

    with pytest.raises(UndecodableDicomError) as caught:
        read_dicom(data[: len(data) // 2])
    assert "truncated or corrupt" in str(caught.value)
    assert "breaks off or is malformed" in str(caught.value) and "has no attribute" not in str(caught.value)


def test_encapsulated_pixel_data_unlike_its_header_is_refused_with_a_reason(flair: np.ndarray) -> None:
    """Attack findings: two frames declared over one fragment gave "cannot be decoded: " and nothing more; RLE data
    under a JPEG Lossless transfer syntax, the plugin report "gdcm: '...' object has no attribute '...'"."""
    dataset = single_mr(flair)
    dataset.compress(RLELossless, generate_instance_uid=False)
    dataset.NumberOfFrames = 2  # one fragment: one frame's data
    with pytest.raises(UndecodableDicomError, match="cannot be decoded: its data holds fewer frames than its header"):
        read_dicom(to_bytes(dataset))

    mislabelled = single_mr(flair)
    mislabelled.compress(RLELossless, generate_instance_uid=False)
    mislabelled.file_meta.TransferSyntaxUID = JPEGLossless
    with pytest.raises(UndecodableDicomError) as caught:
        read_dicom(to_bytes(mislabelled))
    assert "breaks off or is malformed where the reader expected more" in caught.value.message
    assert "has no attribute" not in caught.value.message


def test_a_dicomdir_is_named_as_one_not_as_a_broken_file() -> None:
    # Interop review 35: a CD export's DICOMDIR uploaded with its images was called "truncated or not a DICOM object".
    directory = Dataset()
    directory.file_meta = FileMetaDataset()
    directory.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.1.3.10"  # Media Storage Directory Storage
    directory.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4"
    directory.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    directory.FileSetID = "EXPORT"
    directory.DirectoryRecordSequence = []
    buffer = io.BytesIO()
    directory.save_as(buffer, enforce_file_format=True)

    with pytest.raises(UnsupportedSopClassError, match="a DICOMDIR .* holds no image; send the image files"):
        read_dicom_header(buffer.getvalue())


def test_what_follows_the_pixel_data_is_not_read(flair: np.ndarray) -> None:
    """Attack review 64 F3: the elements after the pixel data were parsed whole, outside every bound of the header
    (a trailing sequence of 2.5 million empty items: 98 s and +2.4 GiB for one 19 MiB upload). They are left unread:
    a trailing sequence cut short, which the whole read refused, no longer matters either."""
    data = to_bytes(single_mr(flair))
    expected = read_dicom(data)[0].values

    for trailing in (
        with_trailing_sequence(data, 3),
        with_trailing_sequence(data, 200_000, b"\x01\x02"),
        with_trailing_sequence(data, 3, b"\x01\x02", tag=0x00091000),  # out of order (attack review 65 F4)
    ):
        (frame,) = read_dicom(trailing)

        np.testing.assert_array_equal(frame.values, expected)
        assert 0xFFFAFFFA not in frame.header and 0x00091000 not in frame.header


def test_pixel_data_written_as_a_sequence_is_refused_unread(flair: np.ndarray) -> None:
    """Attack review 65 F2: Pixel Data of VR SQ, millions of empty items, was parsed item by item (41 s and +1.2 GiB
    for a 16 MB upload; the DICOM node answered Success first)."""
    data = to_bytes(single_mr(flair))
    at = data.rfind(b"\xe0\x7f\x10\x00OB")
    pixel_data_as_items = struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"SQ", 0, 0xFFFFFFFF)
    data = data[:at] + pixel_data_as_items + struct.pack("<HHI", 0xFFFE, 0xE000, 0) * 1000
    header = read_dicom_header(data)

    for check in (check_pixel_data_element, decode_dicom):
        with pytest.raises(UndecodableDicomError, match="pixel data must be a value"):
            check(header)
