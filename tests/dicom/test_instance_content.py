"""The same instances in another transfer syntax are the same content (interop review 30, finding 4).

The node fingerprinted the bytes as received: the instances a scanner sent, forwarded again by a PACS that archived
them JPEG-LS lossless or Implicit VR, were analysed a second time and their results sent again under the same UIDs.
"""

from __future__ import annotations

import copy
import hashlib
import io
import logging
import struct
import tracemalloc
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)

from app.dicom import instance_content
from app.dicom.dicom_header import read_dicom_header
from app.dicom.dicom_pixels import stored_pixels
from app.dicom.instance_content import attributes_bytes, content_digest
from app.dicom.part10 import read_file_meta
from tests.dicom.builders import (
    FLAIR,
    mr_series,
    multiframe_secondary_capture,
    to_bytes,
    tumor_channels,
    with_trailing_sequence,
    write_files,
)
from tests.node.node_support import (
    QUIET_SECONDS,
    Clock,
    ResultStore,
    associations_ended,
    process_and_send,
    record,
    store_dataset,
    storescu,
)

COMPRESSED = (RLELossless, JPEGLSLossless, JPEG2000Lossless)


def encoded(dataset: Dataset, transfer_syntax: UID) -> bytes:
    """`dataset` as a Part 10 file in `transfer_syntax`, its UIDs kept (as dcmtk's lossless converters keep them)."""
    copy = pydicom.dcmread(io.BytesIO(to_bytes(dataset)))
    if transfer_syntax in COMPRESSED:
        copy.compress(transfer_syntax, generate_instance_uid=False)
    else:
        copy.file_meta.TransferSyntaxUID = transfer_syntax
    buffer = io.BytesIO()
    copy.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.fixture
def instance() -> Dataset:
    dataset = mr_series(tumor_channels(FLAIR))[1]
    dataset.add_new((0x0029, 0x0010), "LO", "SIEMENS CSA HEADER")  # private: its VR is lost in Implicit VR
    dataset.add_new((0x0029, 0x1010), "OB", b"\x01\x02\x03\x04")
    dataset.add_new(0x00181164, "DS", "\\".join(["0.5"] * 2000))  # hashed as its bytes (attack review 66 F3)
    dataset.add_new(0x60003000, "OW", bytes(range(256)) * 32)  # Overlay Data: "OB or OW" in Implicit VR (review 73 F1)
    item = Dataset()
    item.add_new(0x00080104, "SH", "Brain")  # Code Meaning (LO) written as SH, inside an item (review 73 F9)
    dataset.add_new(0x00082218, "SQ", [item])  # Anatomic Region Sequence
    return dataset


def test_what_follows_the_pixel_data_is_read_within_a_bound_for_the_digest(
    instance: Dataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attack review 64 F3: the node's study fingerprint read what follows the pixel data whole, unbounded (a trailing
    sequence of a million empty items: 75 s and +660 MiB). Past `MAX_TRAILING_READS` the file is hashed as its bytes,
    as a file that cannot be read is; a few trailing elements are still part of the digest, as before."""
    reads: list[int] = []
    read_dataset = instance_content.read_dataset

    def counted(stream: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return read_dataset(stream, *args, **kwargs)
        finally:
            reads.append(getattr(stream, "reads", 0))  # the bounded read of what follows the pixel data

    monkeypatch.setattr(instance_content, "read_dataset", counted)
    original = to_bytes(instance)
    many = with_trailing_sequence(original, 100_000, b"\xfe\xff\xdd\xe0\x00\x00\x00\x00")

    assert content_digest(many) == hashlib.sha256(b"bytes\0" + many).digest()
    assert max(reads) < 2 * instance_content.MAX_TRAILING_READS  # unbounded: 200,000
    assert content_digest(with_trailing_sequence(original, 3, b"\xfe\xff\xdd\xe0\x00\x00\x00\x00")) != (
        content_digest(original)
    )


def digest_and_peak_memory(data: bytes) -> tuple[bytes, int]:
    """`content_digest(data)` and the most memory (bytes, traced) it held at once."""
    tracemalloc.start()
    try:
        return content_digest(data), tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_trailing_sequence_of_defined_length_is_counted_before_it_is_parsed(instance: Dataset) -> None:
    """Attack review 66 F1: a sequence of defined length is one read, parsed whole when hashed (a million empty items
    after the pixel data: 86 s and +665 MiB at the node). Its elements count against `MAX_TRAILING_READS`."""
    original = to_bytes(instance)
    body = struct.pack("<HHI", 0xFFFE, 0xE000, 0) * 20_000
    many = original + struct.pack("<HH2sHI", 0xFFFA, 0xFFFA, b"SQ", 0, len(body)) + body
    few = original + struct.pack("<HH2sHI", 0xFFFA, 0xFFFA, b"SQ", 0, 24) + body[:24]

    digest, peak = digest_and_peak_memory(many)

    assert digest == hashlib.sha256(b"bytes\0" + many).digest()
    assert peak < 20 * 2**20  # parsed: 20,000 items are about 26 MiB of Python objects
    assert content_digest(few) not in (content_digest(original), hashlib.sha256(b"bytes\0" + few).digest())


def test_long_values_of_numbers_are_hashed_as_their_bytes(instance: Dataset) -> None:
    """Attack review 66 F3: each DS value read is a Python object of hundreds of bytes, and every element was read:
    300 elements of 32,767 values in a 20 MB instance took gigabytes, and the node takes instances of 128 MiB. A long
    value is hashed as its bytes, by the dictionary's value type: written as UN, it was read as DS (review 73 F2),
    and its digest is that of the DS (as in every encoding: `test_another_lossless_encoding_has_the_same_digest`)."""
    times = "\\".join(["0.5"] * 16_000)  # in Explicit VR, a DS holds at most 65,534 bytes
    items = []
    for _ in range(12):
        item = Dataset()
        item.add_new(0x00181065, "DS", times)  # Frame Time Vector, in a sequence item
        items.append(item)
    instance.RequestAttributesSequence = items
    data = to_bytes(instance)
    length = len(times) + 1  # padded to an even length
    ds_header = struct.pack("<HH2sH", 0x0018, 0x1065, b"DS", length)
    written_un = bytearray(data.replace(ds_header, struct.pack("<HH2sHI", 0x0018, 0x1065, b"UN", 0, length), 1))
    sequence = written_un.index(struct.pack("<HH2sH", 0x0040, 0x0275, b"SQ", 0))
    for at in (sequence + 8, sequence + 16):  # the sequence's and its first item's lengths: 4 bytes more
        written_un[at : at + 4] = struct.pack("<I", struct.unpack("<I", written_un[at : at + 4])[0] + 4)
    written_un = bytes(written_un)

    digest, peak = digest_and_peak_memory(data)

    assert digest != hashlib.sha256(b"bytes\0" + data).digest()
    assert peak < 20 * 2**20  # read value by value: 192,000 DS objects, about 90 MiB
    assert written_un != data and content_digest(written_un) == digest
    assert content_digest(data.replace(b"0.5\\0.5", b"0.6\\0.5", 1)) != digest


def test_past_a_bound_on_the_values_read_one_by_one_the_file_is_hashed_as_its_bytes(
    instance: Dataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attack review 67 F1: each value bounded alone, 5,000 elements of 512 short DS values each (1,024 bytes, under
    `LONG_VALUE_BYTES`; 5 MB) were read one by one, 22 s and +1 GiB at the node. Past `MAX_CONVERTED_VALUES` values
    (all elements, items and what follows the pixel data together) the file is hashed as its bytes."""
    monkeypatch.setattr(instance_content, "MAX_CONVERTED_VALUES", 20_000, raising=False)
    for index in range(30):  # 15,360 values of unknown public elements, in the header and after the pixel data
        instance.add_new((0x0030, 0x1000 + index), "DS", ["0"] * 512)
    within = to_bytes(instance)
    trailing = [
        struct.pack("<HH2sH", 0x0030, 0x2000 + index, b"DS", 1024) + b"0\\" * 511 + b"00" for index in range(10)
    ]
    past = within + b"".join(trailing)  # 5,120 values more

    assert content_digest(within) != hashlib.sha256(b"bytes\0" + within).digest()
    assert content_digest(past) == hashlib.sha256(b"bytes\0" + past).digest()


def test_elements_after_the_pixel_data_never_stand_for_those_read_before_it(instance: Dataset) -> None:
    """Attack review 66 F2: a second Pixel Data (or Patient ID) after the first took the first's place in the digest,
    so two versions of an instance with other pixels, each followed by the same decoy, were one digest, and the
    corrected one was never analysed. The analysis reads the first; so does the digest."""
    size = len(instance.PixelData)
    decoy = struct.pack("<HH2sH", 0x0010, 0x0020, b"LO", 6) + b"DECOY "  # explicit VR little endian, as the instance
    decoy += struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, size) + b"\0" * size
    corrected = copy.deepcopy(instance)
    corrected.PixelData = bytes(255 - byte for byte in instance.PixelData)

    digests = {content_digest(to_bytes(version) + decoy) for version in (instance, corrected)}

    assert len(digests) == 2


@pytest.mark.parametrize(
    "transfer_syntax", [ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian, *COMPRESSED], ids=lambda uid: uid.name
)
def test_another_lossless_encoding_has_the_same_digest(instance: Dataset, transfer_syntax: UID) -> None:
    original = to_bytes(instance)
    other = encoded(instance, transfer_syntax)

    assert other != original
    assert content_digest(other) == content_digest(original)


@pytest.mark.parametrize("bits", [8, 16])
def test_a_big_endian_instance_has_the_digest_of_its_little_endian_twin(bits: int) -> None:
    """Review 73 F7: the node takes Explicit VR Big Endian, whose pixels were hashed as big-endian numbers (and, since
    1.3.3, its long binary values as big-endian bytes): a PACS re-sending a study so had it analysed again."""
    image = tumor_channels(FLAIR)[0]
    stored = image if bits == 8 else image.astype(np.uint16) * 200 + 300
    (dataset,) = mr_series([stored])
    dataset.add_new(0x00189089, "FD", [0.25, 0.5] * 150)  # Diffusion Gradient Orientation: 2,400 bytes
    big = copy.deepcopy(dataset)
    big.file_meta.TransferSyntaxUID = ExplicitVRBigEndian
    if bits == 16:  # pydicom writes Pixel Data's bytes as they are
        big.PixelData = stored.astype(">u2").tobytes()
    written = to_bytes(big)
    assert np.array_equal(pydicom.dcmread(io.BytesIO(written)).pixel_array, stored)

    assert content_digest(written) == content_digest(to_bytes(dataset))


def test_text_written_under_another_text_vr_has_the_same_digest_in_implicit_vr(instance: Dataset) -> None:
    """Interop review 61 F3: Patient's Sex written LO (as files do) entered the digest under LO, and under CS once
    forwarded in Implicit VR, which reads the dictionary's VR: the same instances were analysed, and their results
    sent, a second time."""
    instance.add_new(0x00100040, "LO", "M")  # Patient's Sex: CS in the dictionary
    instance.add_new(0x00081030, "UT", "MRI BRAIN")  # Study Description: LO

    original = to_bytes(instance)

    assert content_digest(encoded(instance, ImplicitVRLittleEndian)) == content_digest(original)


def test_a_value_the_dictionary_vr_cannot_hold_keeps_the_content_digest(instance: Dataset) -> None:
    """Review 70 F1: an Acquisition Number written LO "first" (IS in the dictionary) failed the conversion, and the
    whole instance fell back to its bytes digest: a JPEG-LS lossless copy of it no longer matched."""
    instance.add_new(0x00200012, "LO", "first")

    assert content_digest(encoded(instance, JPEGLSLossless)) == content_digest(to_bytes(instance))


def test_another_pixel_value_or_attribute_has_another_digest(instance: Dataset) -> None:
    reference = content_digest(to_bytes(instance))
    pixels = instance.pixel_array.copy()
    pixels[0, 0] += 1
    changed_pixel = pydicom.dcmread(io.BytesIO(to_bytes(instance)))
    changed_pixel.PixelData = pixels.tobytes()
    renamed = pydicom.dcmread(io.BytesIO(to_bytes(instance)))
    renamed.PatientName = "Corrected^Name"

    assert content_digest(to_bytes(changed_pixel)) != reference
    assert content_digest(to_bytes(renamed)) != reference


def digest_reading_the_whole_file(data: bytes) -> bytes:
    """`content_digest` as it was before the header was parsed once (the whole file read again after it): the digest
    spools hold in their records, which the node must still recognise."""
    header = read_dicom_header(data)
    dataset = pydicom.dcmread(io.BytesIO(data))
    pixels = np.ascontiguousarray(stored_pixels(dataset, dataset.file_meta.get("TransferSyntaxUID")))
    digest = hashlib.sha256(attributes_bytes(dataset))
    digest.update(f"{pixels.dtype.str}{pixels.shape}{header.frames}".encode())
    digest.update(pixels.tobytes())
    return digest.digest()


@pytest.mark.parametrize(
    "transfer_syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, *COMPRESSED], ids=lambda uid: uid.name
)
def test_the_digest_is_the_one_recorded_when_the_file_was_read_twice(instance: Dataset, transfer_syntax: UID) -> None:
    instance.add_new((0xFFFC, 0xFFFC), "OB", b"\0" * 8)  # Data Set Trailing Padding: an element after the pixels
    data = encoded(instance, transfer_syntax)

    assert content_digest(data) == digest_reading_the_whole_file(data)


def test_an_instance_of_many_fragments_is_digested_by_its_pixels_not_its_bytes() -> None:
    """Review 72 F5: the bound on what follows the pixel data counted the pixel data's fragments too (two reads each):
    an RLE multi-frame instance of 6,000 frames was hashed as its bytes, its recorded digest lost."""
    images = [np.full((8, 8), index % 7, np.uint8) for index in range(6_000)]
    compressed = pydicom.dcmread(io.BytesIO(to_bytes(multiframe_secondary_capture(images))))
    compressed.compress(RLELossless)
    data = to_bytes(compressed)

    assert content_digest(data, max_cost_bytes=1 << 40) != hashlib.sha256(b"bytes\0" + data).digest()


def test_a_deflated_instance_has_the_digest_of_its_explicit_twin_trailing_elements_included(
    instance: Dataset,
) -> None:
    """Review 73 F8: a deflated instance's elements after its pixel data (inside the deflate stream) were left out of
    its digest, an Explicit VR one's were not: a study forwarded deflated once and not the next time was analysed,
    and its results sent, twice. They are read as an explicit one's, within `MAX_TRAILING_READS`."""
    instance.add_new((0xFFFC, 0xFFFC), "OB", b"\0" * 8)  # Data Set Trailing Padding
    explicit = to_bytes(instance)
    deflated = encoded(instance, DeflatedExplicitVRLittleEndian)
    instance[0xFFFCFFFC].value = b"\1" * 8
    other_padding = encoded(instance, DeflatedExplicitVRLittleEndian)

    assert content_digest(deflated) == content_digest(explicit) == digest_reading_the_whole_file(deflated)
    assert content_digest(other_padding) != content_digest(deflated)


def with_deflated_trailing_bytes(deflated: bytes, trailing: bytes) -> bytes:
    """The deflated Part 10 file `deflated` with `trailing` appended to its data set, inside the deflate stream."""
    meta_end, _ = read_file_meta(deflated)
    data_set = zlib.decompressobj(-zlib.MAX_WBITS).decompress(deflated[meta_end:]) + trailing
    compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return deflated[:meta_end] + compressor.compress(data_set) + compressor.flush()


def test_a_deflated_instance_s_trailing_elements_are_read_within_the_bound(instance: Dataset) -> None:
    """The deflate stream hides no more than an explicit file does: past `MAX_TRAILING_READS` elements after the
    pixel data (100,000 empty items of a Digital Signatures Sequence), the file is hashed as its bytes."""
    deflated = encoded(instance, DeflatedExplicitVRLittleEndian)
    items = struct.pack("<HHI", 0xFFFE, 0xE000, 0) * 100_000
    many = with_deflated_trailing_bytes(deflated, struct.pack("<HH2sHI", 0xFFFA, 0xFFFA, b"SQ", 0, len(items)) + items)
    few = with_deflated_trailing_bytes(deflated, struct.pack("<HH2sHI", 0xFFFA, 0xFFFA, b"SQ", 0, 24) + items[:24])

    digest, peak = digest_and_peak_memory(many)

    assert digest == hashlib.sha256(b"bytes\0" + many).digest()
    assert peak < 40 * 2**20  # parsed: 100,000 items are over 100 MiB of Python objects
    assert content_digest(few) not in (content_digest(deflated), hashlib.sha256(b"bytes\0" + few).digest())


def test_an_instance_is_parsed_once(instance: Dataset, monkeypatch: pytest.MonkeyPatch) -> None:
    reads: list[bool] = []
    dcmread = pydicom.dcmread

    def counted(*args: Any, **kwargs: Any) -> Any:
        reads.append(kwargs.get("stop_before_pixels", False))
        return dcmread(*args, **kwargs)

    monkeypatch.setattr(pydicom, "dcmread", counted)
    content_digest(to_bytes(instance))

    assert reads == [True]  # the header's read; the pixel data is read from where it stopped


def test_malformed_values_are_read_without_a_warning_each(
    instance: Dataset, caplog: pytest.LogCaptureFixture, recwarn: pytest.WarningsRecorder
) -> None:
    """Attack review 33: the digest reads every element, and pydicom warned of each malformed value twice (its
    logger and Python's warnings): 60,000 of them in one instance wrote 37.7 MB of log. Read unvalidated, the values
    are the same and nothing is said; pydicom's own setting is as it was afterwards."""
    items = []
    for index in range(200):
        item = Dataset()  # raw, as read from a file: pydicom converts (and checks) them when they are read
        item[0x00081155] = RawDataElement(Tag(0x00081155), "UI", 6, b"x%05d" % index, 0, False, True)  # not a UID
        item[0x00180050] = RawDataElement(Tag(0x00180050), "DS", 4, b"ab%02d" % (index % 100), 0, False, True)
        items.append(item)
    instance.ReferencedImageSequence = pydicom.Sequence(items)
    data = to_bytes(instance)
    before = pydicom.config.settings.reading_validation_mode
    caplog.clear()
    recwarn.clear()  # writing the test file warned

    with caplog.at_level(logging.WARNING):
        digest = content_digest(data)

    assert [record for record in caplog.records if record.name.startswith("pydicom")] == []
    assert [warning for warning in recwarn if "Invalid value" in str(warning.message)] == []
    assert pydicom.config.settings.reading_validation_mode == before
    assert digest == digest_reading_the_whole_file(data) != hashlib.sha256(b"bytes\0" + data).digest()


def test_a_file_that_cannot_be_read_is_hashed_as_its_bytes(instance: Dataset) -> None:
    data = to_bytes(instance)
    cut = data[: len(data) // 2]

    assert content_digest(cut) != content_digest(cut[:-1])
    assert content_digest(cut) != content_digest(data)


def test_a_file_over_the_decoding_budget_is_hashed_as_its_bytes_without_decoding(instance: Dataset) -> None:
    """Attack review 60 F4: a 122 KiB deflated instance of 8000x8000 pixels took half a gigabyte to fingerprint,
    although the analysis refuses it for the decoding budget. Over the budget the digest is its bytes', as strict:
    the same file in another encoding is another digest."""
    instance.Rows, instance.Columns = 2048, 4096
    instance.PixelData = bytes(2048 * 4096 * 2)  # 16 MiB of zeros: a few KiB deflated
    deflated = encoded(instance, DeflatedExplicitVRLittleEndian)
    explicit = encoded(instance, ExplicitVRLittleEndian)
    cost = read_dicom_header(deflated).cost_bytes

    tracemalloc.start()
    try:
        over_budget = content_digest(deflated, max_cost_bytes=cost - 1)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert len(deflated) < 64 * 1024 and peak < 2048 * 4096 * 2  # neither inflated whole nor decoded
    assert over_budget == hashlib.sha256(b"bytes\0" + deflated).digest()
    assert content_digest(explicit, max_cost_bytes=cost - 1) != over_budget
    assert content_digest(deflated, max_cost_bytes=cost) == content_digest(explicit, max_cost_bytes=cost)


def test_the_node_does_not_analyse_a_study_again_when_it_comes_back_in_other_encodings(
    make_node: Any, results: ResultStore, clock: Clock, tmp_path: Path
) -> None:
    node = make_node()
    series = mr_series(tumor_channels())
    assert storescu(node, write_files(series, tmp_path / "scanner")).returncode == 0
    clock.advance(QUIET_SECONDS)
    assert len(process_and_send(node)) == 1
    forwarded = [
        encoded(dataset, transfer_syntax)
        for dataset, transfer_syntax in zip(series, [ImplicitVRLittleEndian, JPEGLSLossless, RLELossless], strict=True)
    ]
    for data in forwarded:  # each proposed in its own transfer syntax alone, as a PACS that archived it may send it
        assert int(store_dataset(node.config.port, pydicom.dcmread(io.BytesIO(data))).Status) == 0
    associations_ended(node)
    stored = sorted(
        str(pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)
        for path in (node.spool.root / "studies").glob("*/instances/*.dcm")
    )
    clock.advance(QUIET_SECONDS)

    assert process_and_send(node) == []
    assert [run["status"] for run in record(node)["runs"]] == ["analysed"]
    assert len(results.received) == 2  # the first run's SEG and SR, nothing more
    assert stored == sorted([ImplicitVRLittleEndian, JPEGLSLossless, RLELossless])  # the forwarded copies kept


def test_a_study_recorded_before_content_fingerprints_is_recognised_when_the_same_files_come_again(
    make_node: Any, results: ResultStore, clock: Clock, tmp_path: Path
) -> None:
    """Operations review: runs recorded by a node that fingerprinted the files' bytes were not recognised after the
    upgrade, and a study a PACS sent again unchanged got a second SEG and SR at the destination."""
    node = make_node()
    files = write_files(mr_series(tumor_channels()), tmp_path / "scanner")
    assert storescu(node, files).returncode == 0
    clock.advance(QUIET_SECONDS)
    assert len(process_and_send(node)) == 1
    (study,) = (node.spool.root / "studies").iterdir()
    _, bytes_fingerprint = node.spool.fingerprints(sorted((study / "instances").glob("*.dcm")))

    def as_an_older_node_wrote_it(stored: dict[str, Any]) -> None:
        stored["runs"][-1]["fingerprint"] = bytes_fingerprint

    node.spool.update_record(study.name, as_an_older_node_wrote_it)
    assert storescu(node, files).returncode == 0
    clock.advance(QUIET_SECONDS)

    assert process_and_send(node) == []
    assert [run["status"] for run in record(node)["runs"]] == ["analysed"]
    assert len(results.received) == 2  # the first run's SEG and SR, nothing more
