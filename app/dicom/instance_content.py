"""What a DICOM instance says, apart from how it was encoded: a digest that a change of transfer syntax leaves alone.

A PACS may archive a study compressed (JPEG-LS or JPEG 2000 lossless) or in Implicit VR and forward it later: the
same instances, other bytes. The DICOM node recognises a study it already analysed by its instances' content, so that
such a re-send is not analysed, and its results sent, a second time. `content_digest` hashes the data set re-encoded
one way (Explicit VR Little Endian, without the file meta group and the private elements, whose encoding depends on
the transfer syntax) and the decoded stored pixel values. A lossy re-compression changes the pixels, and a corrected
attribute (a patient's name, a slice position) changes the data set: both give another digest.
"""

from __future__ import annotations

import hashlib
import io
import threading
import zlib
from collections.abc import Iterator
from contextlib import contextmanager, suppress

import numpy as np
import pydicom
from pydicom import config
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filereader import read_dataset
from pydicom.tag import BaseTag

from app.dicom.dicom_header import DicomHeader, read_dicom_header
from app.dicom.dicom_pixels import stored_pixels
from app.dicom.part10 import (
    PIXEL_DATA_TAGS,
    BoundedReads,
    check_sequences_left_raw,
    read_file_meta,
    through_pixel_data,
)
from app.settings import Settings

DEFAULT_MAX_COST_BYTES: int = Settings.model_fields["decode_memory_bytes"].default


def content_digest(data: bytes, max_cost_bytes: int = DEFAULT_MAX_COST_BYTES) -> bytes:
    """SHA-256 of the instance's attributes and stored pixel values, the same for every transfer syntax.

    A file whose header or pixels cannot be read (the analysis reports it) is hashed as its bytes: the digest is
    then as strict as before, never looser. So is a file whose reading would cost more than `max_cost_bytes` (the
    decoding budget, DECODE_MEMORY_BYTES, which the analysis refuses it by): a small deflated file can hold a huge
    image, and decoding it only to hash it took half a gigabyte. Pixels are decoded only after `read_dicom_header`
    checked their size, and by `stored_pixels`, where a decoder that crashes cannot take the node with it.
    """
    digest = hashlib.sha256()
    try:
        with values_unvalidated():  # every element is read here, however many are malformed
            # Inflating past the budget is not counted to its end (a 4 GB deflate bomb: 19 s, attack review 66).
            header = read_dicom_header(data, max_bytes=max_cost_bytes)
            if header.cost_bytes > max_cost_bytes:
                return _bytes_digest(data)
            dataset = _whole_dataset(header)
            pixels = np.ascontiguousarray(stored_pixels(dataset, dataset.file_meta.get("TransferSyntaxUID")))
            if pixels.dtype.byteorder == ">":  # Big Endian: the values hashed as every other syntax holds them
                pixels = pixels.astype(pixels.dtype.newbyteorder("<"))
            digest.update(attributes_bytes(dataset))
    except Exception:  # noqa: BLE001 - any reason it cannot be read: fall back to the bytes as received
        return _bytes_digest(data)
    digest.update(f"{pixels.dtype.str}{pixels.shape}{header.frames}".encode())
    digest.update(pixels.data)  # the array's own buffer: a copy of it would take another pixel array
    return digest.digest()


def _dictionary_vr(tag: int) -> str | None:
    """The dictionary's value type of `tag`; None for a tag it does not know."""
    try:
        return dictionary_VR(tag)
    except KeyError:
        return None


def _bytes_digest(data: bytes) -> bytes:
    """The digest of a file hashed as received: another transfer syntax of it is another digest."""
    return hashlib.sha256(b"bytes\0" + data).digest()


_validation_lock = threading.Lock()
_unvalidated_depth = 0
_validation_modes_before = (config.settings.reading_validation_mode, config.settings.writing_validation_mode)


@contextmanager
def values_unvalidated() -> Iterator[None]:
    """pydicom does not check the values it converts or writes while the block runs: the digest reads every element
    and writes it again (`attributes_bytes`, only to hash it), and pydicom warns (twice: its logger and Python's
    warnings) of each malformed one: an instance of 60,000 malformed values writes 37.7 MB of log and holds the
    node's analysis for about 50 s. The values are the same either way. The settings are the process's:
    nested and concurrent blocks count, and the last to leave puts them back (another thread reading meanwhile only
    warns less)."""
    global _unvalidated_depth, _validation_modes_before
    settings = config.settings
    with _validation_lock:
        if _unvalidated_depth == 0:
            _validation_modes_before = (settings.reading_validation_mode, settings.writing_validation_mode)
            settings.reading_validation_mode = settings.writing_validation_mode = config.IGNORE
        _unvalidated_depth += 1
    try:
        yield
    finally:
        with _validation_lock:
            _unvalidated_depth -= 1
            if _unvalidated_depth == 0:
                settings.reading_validation_mode, settings.writing_validation_mode = _validation_modes_before


MAX_TRAILING_READS = 10_000
"""Most reads pydicom may make of what follows the pixel data (Data Set Trailing Padding, Digital Signatures: a few
elements) for the digest; past them the file is hashed as its bytes. Unbounded, a trailing sequence of a million
empty items cost 75 s and +660 MiB (attack review 64 F3)."""


def _whole_dataset(header: DicomHeader) -> Dataset:
    """The file's whole data set: the header `read_dicom_header` parsed, with the elements from the pixel data to the
    end of the file read from where it stopped, so the header is parsed once (it was parsed twice: the header, then
    the whole file again). The same data set as reading the whole file: the elements are added unconverted, and
    converted as they are read, with the header's character set. A deflated data set is read whole again, from its
    inflated bytes: its pixel data lies inside the deflate stream, which `read_dicom_header` inflated only as far as
    the header (and dropped the header's long values from).

    `header.dataset` is completed in place, but a deflated one's.
    """
    if header.pixel_position < 0:  # deflated: always Explicit VR Little Endian
        meta_end, transfer_syntax = read_file_meta(header.data)
        dataset = Dataset()
        dataset.set_original_encoding(False, True, None)
        dataset.file_meta = FileMetaDataset()
        dataset.file_meta.TransferSyntaxUID = transfer_syntax
        # Inflated whole, within the budget: `read_dicom_header` counted its whole size (`DicomHeader.cost_bytes`).
        inflated = zlib.decompressobj(-zlib.MAX_WBITS).decompress(header.data[meta_end:])
        _add_elements_from(dataset, inflated, 0, (False, True))
        return dataset
    dataset = header.dataset
    is_implicit_vr, is_little_endian = dataset.original_encoding
    _add_elements_from(dataset, header.data, header.pixel_position, (bool(is_implicit_vr), bool(is_little_endian)))
    return dataset


def _add_elements_from(dataset: Dataset, data: bytes, position: int, encoding: tuple[bool, bool]) -> None:
    """Add to `dataset` the elements of `data` from `position` through the pixel data, then those that follow it."""
    pixels = io.BytesIO(data)  # shares the bytes: nothing copied
    pixels.seek(position)
    # The pixel data, whose size and codestreams `read_dicom_header` checked (fragments read one by one); then what
    # follows it within its own bound (a count over both hashed 6,000-fragment RLE files as bytes: review 72 F5).
    rest = read_dataset(pixels, *encoding, stop_when=through_pixel_data())
    trailing = BoundedReads(data, max_reads=MAX_TRAILING_READS, max_items=MAX_TRAILING_READS)
    trailing.seek(pixels.tell())  # where pydicom stopped: the first element after the pixel data
    try:
        after = read_dataset(trailing, *encoding)
    finally:
        trailing.raise_if_exceeded()  # whatever pydicom made of the refusal: the file is then hashed as its bytes
    # A sequence of defined length is one read, parsed when hashed: a million empty items in one cost 86 s and
    # +665 MiB at the node, answered Success (attack review 66 F1).
    check_sequences_left_raw(after, trailing.reads, MAX_TRAILING_READS, trailing.items, MAX_TRAILING_READS)
    for element in rest.elements():  # as read: converted on access, as the whole file's would be
        dataset[element.tag] = element
    for element in after.elements():
        # Never in place of an element read before: the analysis reads the first Pixel Data and header, and a decoy
        # after them made two versions of an instance one digest, the corrected re-send unanalysed (review 66 F2).
        if element.tag not in dataset:
            dataset[element.tag] = element


# Value types whose values are text: an element a file wrote under another of them than the dictionary's (Patient's
# Sex as LO) is the same value, which Implicit VR reads under the dictionary's.
TEXT_VRS = frozenset(
    {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI", "UR", "UT"}
)


def attributes_bytes(dataset: Dataset) -> bytes:
    """The data set without its pixel data, file meta group and private elements, written Explicit VR Little
    Endian: one form whatever the encoding it arrived in (`_as_hashed`)."""
    buffer = io.BytesIO()
    hashed = _as_hashed(dataset, ValuesToConvert(MAX_CONVERTED_VALUES), top_level=True)
    pydicom.dcmwrite(buffer, hashed, implicit_vr=False, little_endian=True)
    return buffer.getvalue()


MAX_CONVERTED_VALUES = 200_000
"""Most values the digest reads one by one (pydicom makes each a Python object: about 400 bytes and 9 us), all
elements together; past them the file is hashed as its bytes. Each value bounded alone (`LONG_VALUE_BYTES`), 5,000
short elements of 512 DS values each (5 MB) took 22 s and +1 GiB at the node (attack review 67 F1)."""


class TooManyValuesError(Exception):
    """More values to convert than `MAX_CONVERTED_VALUES`: `content_digest` hashes the file as its bytes."""


class ValuesToConvert:
    """The values the digest may still convert, counted before each element is read."""

    def __init__(self, most: int) -> None:
        self.left = most

    def spend(self, raw: object) -> None:
        """Count the values of `raw`, an element not read yet (nothing to count for one read already)."""
        if isinstance(raw, RawDataElement) and raw.value:
            value_types = (_dictionary_vr(raw.tag) or raw.VR or "").split(" or ")
            size = NUMBER_SIZES.get(value_types[0])
            if any(value_type in BYTES_VRS for value_type in value_types):
                self.left -= 1  # one bytes value (a sequence's items are counted as they are read)
            else:  # numbers by their size, text by its separators
                self.left -= len(raw.value) // size if size else raw.value.count(b"\\") + 1
            if self.left < 0:
                raise TooManyValuesError(f"more than {MAX_CONVERTED_VALUES} values to read for the digest")


def _as_hashed(dataset: Dataset, budget: ValuesToConvert, top_level: bool = False) -> Dataset:
    """`dataset`'s elements as the digest writes them, at every depth: private ones (and the top level's pixel
    data) left out, a long value of a type read value by value as its bytes (`_unconverted`), and a text element
    under another text VR than the dictionary's under the dictionary's, as Implicit VR reads it. The values read
    are counted against `budget`."""
    hashed = Dataset()
    for tag in dataset.keys():  # noqa: SIM118 - iterating a Dataset converts each element; its keys do not
        if tag.is_private or (top_level and tag in PIXEL_DATA_TAGS):
            continue
        element = _unconverted(dataset, tag)
        if element is None:
            budget.spend(dataset.get_item(tag))
            element = dataset[tag]
        if element.VR == "SQ":
            element = DataElement(tag, "SQ", [_as_hashed(item, budget) for item in element.value])
        else:
            element = _in_dictionary_text_vr(element)
        hashed.add(element)
    return hashed


def _in_dictionary_text_vr(element: DataElement) -> DataElement:
    standard = _dictionary_vr(element.tag)
    if standard in TEXT_VRS and element.VR in TEXT_VRS and standard != element.VR:
        with suppress(ValueError, TypeError, OverflowError):  # a value the dictionary's VR cannot hold: as it is
            return DataElement(element.tag, standard, element.value)
    return element


LONG_VALUE_BYTES = 1024
"""A value longer than this, of a value type pydicom reads as one Python object per value (text, numbers as text or
binary: DS, IS, US, FL...), is hashed as its bytes: converted, a million DS values (2 MB) took 3.6 s and +385 MiB,
and the 300 of a 20 MB upload took gigabytes (attack review 66 F3). Its bytes are the same in every little-endian
transfer syntax, so the digest still is."""

BYTES_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN", "SQ"})


def _unconverted(dataset: Dataset, tag: BaseTag) -> DataElement | None:
    """`dataset`'s element `tag` as its bytes (VR OB) when it is still unread, long (`LONG_VALUE_BYTES`) and of a
    value type read value by value; None otherwise (read it)."""
    raw = dataset.get_item(tag)
    if not isinstance(raw, RawDataElement) or raw.value is None or len(raw.value) <= LONG_VALUE_BYTES:
        return None
    # By the dictionary's value type, which every encoding shares (Implicit VR says none; "OB or OW" is bytes either
    # way, and a DS written as UN is read as DS: review 73 F1, F2).
    value_type = _dictionary_vr(tag) or raw.VR
    if value_type is None or any(part in BYTES_VRS for part in value_type.split(" or ")):
        return None
    value = bytes(raw.value)
    sizes = {NUMBER_SIZES.get(part) for part in value_type.split(" or ")}  # "US or SS": 2 either way
    size = sizes.pop() if len(sizes) == 1 else None
    if not raw.is_little_endian and size and len(value) % size == 0:  # Big Endian numbers: as little endian holds them
        value = np.frombuffer(value, dtype=f">u{size}").astype(f"<u{size}").tobytes()
    return DataElement(tag, "OB", value)  # UN would be read again under the dictionary's VR


NUMBER_SIZES = {"AT": 2, "FD": 8, "FL": 4, "SL": 4, "SS": 2, "SV": 8, "UL": 4, "US": 2, "UV": 8}
"""Bytes of each value of the binary number types: what a Big Endian value is swapped by."""
