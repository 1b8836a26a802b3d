"""Part 10 byte parsing under `app.dicom.dicom_header`: the file meta group read by hand, a deflated data set
inflated in chunks, and the count of pydicom's reads and of the elements in sequences it keeps as bytes, so that a
header too large or too many elements long is refused before it is held (`MAX_HEADER_READS`).

Failures are `app.errors.ServiceError`s; nothing here logs.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable, Iterator
from typing import NoReturn

import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomFileLike
from pydicom.filereader import read_dataset
from pydicom.sequence import Sequence
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian

from app.dicom.dicom_codestream import UNDEFINED_LENGTH
from app.errors import OverMemoryBudgetError, ServiceError, TooManyDicomElementsError, UndecodableDicomError
from app.memory_budget import describe_bytes
from app.settings import MIB

DICOM_PREAMBLE_LENGTH = 128
DICOM_MAGIC = b"DICM"
PIXEL_DATA_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})
DEFLATED_HEADER_BYTES = 4 * MIB
"""Most of an inflated (Deflated Explicit VR Little Endian) data set kept to read its header; the rest is only
counted, so that a deflate bomb is measured without being held."""
_INFLATE_CHUNK = 1 * MIB
_ITEM_TAG_LITTLE, _ITEM_TAG_BIG = b"\xfe\xff\x00\xe0", b"\xff\xfe\xe0\x00"  # (FFFE,E000) as each byte order writes it
MAX_HEADER_READS = 250_000
"""Most reads pydicom may make of a header (the data set before its pixel data, sequences of undefined length
included): one to three per data element, so about 100,000 elements with values. pydicom holds some 700 bytes and
spends 10-35 us on each element, and an element can be 8 bytes on the wire: an 8 MB file of a million empty private
elements takes 11.7 s and +660 MiB to read before any check, and would be kept by the DICOM node; one
of 128 MiB, the node's instance limit, is 16 million elements. The header of a 1,024-frame Enhanced MR has fewer
than 100,000."""
MAX_HEADER_ITEMS = 60_000
"""Most sequence items pydicom may read of a header, besides `MAX_HEADER_READS`: it makes a Dataset of each, about
90 us, against 10-35 us for an element, so 200,000 empty items (1.6 MB, within the reads) took 17.8 s to read and a
worker 31 s over HTTP (attack review 67 F3). A 1,024-frame Enhanced MR as Philips writes it has about 25,000."""
_EXPLICIT_LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)


class BoundedReads(io.BytesIO):
    """The file's bytes, whose reads are counted and stopped past `max_reads` (`MAX_HEADER_READS` unless given:
    `raise_too_many_elements`), noting whether a read ever got fewer bytes than it asked for past the end.

    A complete data set ends on an element boundary: pydicom's one empty read there (looking for the next tag) is
    the clean end. A second empty read (a value after its tag and length) or a partial one means the bytes end
    inside an element.
    """

    def __init__(self, data: bytes, max_reads: int | None = None, max_items: int = MAX_HEADER_ITEMS) -> None:
        super().__init__(data)
        self.max_reads = MAX_HEADER_READS if max_reads is None else max_reads
        self.max_items = max_items
        self.items = 0
        self._partial = False
        self._empty = 0
        self._reads = 0
        self._exceeded = False

    def read(self, size: int | None = -1, /) -> bytes:
        self._reads += 1
        if self._reads > self.max_reads:
            self._exceeded = True
            raise_too_many_elements()
        output = super().read(size)
        if size == 8 and output[:4] in (_ITEM_TAG_LITTLE, _ITEM_TAG_BIG):  # an item's tag and length
            self.items += 1
            if self.items > self.max_items:
                self._exceeded = True
                raise_too_many_elements()
        if size is not None and size > 0 and len(output) < size:
            if output:
                self._partial = True
            else:
                self._empty += 1
        return output

    @property
    def reads(self) -> int:
        """How many reads pydicom has made so far."""
        return self._reads

    def raise_if_exceeded(self) -> None:
        """Raise `raise_too_many_elements`'s error if a read went past `max_reads`, whatever pydicom made of
        it: its read of an item's tag re-raises any exception as ``OSError("No tag to read at file position ...")``,
        which read as a truncated or corrupt file (a valid 2,048-frame Enhanced MR with sequences of undefined
        length)."""
        if self._exceeded:
            raise_too_many_elements()

    @property
    def cut(self) -> bool:
        return self._partial or self._empty > 1


def raise_too_many_elements() -> NoReturn:
    """Stop pydicom reading a header of more than `MAX_HEADER_READS` reads (`BoundedReads`)."""
    raise TooManyDicomElementsError(
        f"DICOM header has too many data elements (over {MAX_HEADER_READS} reads, or {MAX_HEADER_ITEMS} sequence "
        "items, before the pixel data); refused before it was read whole"
    )


def is_pixel_data_sequence(tag: int, vr: str | None, length: int) -> bool:
    """Whether a pixel data element is written as a sequence (SQ, or UN of undefined length, which pydicom reads as
    one): pydicom would parse its items as it reads, millions of them from a few MB (attack review 65 F2)."""
    return tag in PIXEL_DATA_TAGS and (vr == "SQ" or (vr == "UN" and length == UNDEFINED_LENGTH))


def through_pixel_data() -> Callable[[int, str | None, int], bool]:
    """pydicom's `stop_when` for a read through the pixel data: the first top-level element after it ends the read,
    whatever its tag (an element out of order, below 7FE0, after the pixel data was read: attack review 65 F4); pixel
    data written as a sequence is refused before it is read."""
    pixel_data_read = False

    def stop(tag: int, vr: str | None, length: int) -> bool:
        nonlocal pixel_data_read
        if pixel_data_read or tag > max(PIXEL_DATA_TAGS):
            return True
        if is_pixel_data_sequence(tag, vr, length):
            raise UndecodableDicomError("DICOM pixel data must be a value (OB, OW ...), not a sequence of items")
        pixel_data_read = tag in PIXEL_DATA_TAGS
        return False

    return stop


def dcmread_through_pixel_data(data: bytes) -> Dataset:
    """pydicom's read of the Part 10 file `data` up to the end of its pixel data, whose header `read_dicom_header`
    bounded: what follows (Digital Signatures, Data Set Trailing Padding, private groups) is left unread. Read whole,
    a sequence of 2.5 million empty items after the pixel data of a 19 MiB upload cost 98 s and +2.4 GiB (attack
    review 64 F3), past every check of the header's reads and the pixels' memory; the service uses none of it.

    Raises
    ------
    app.errors.UndecodableDicomError
        For pixel data written as a sequence (`is_pixel_data_sequence`); pydicom may raise anything on a damaged file.
    """
    return pydicom.filereader.read_partial(io.BytesIO(data), stop_when=through_pixel_data())


def dcmread_bounded(data: bytes, stop_before_pixels: bool = False) -> tuple[Dataset, BoundedReads]:
    """pydicom's read of the Part 10 file `data` within `MAX_HEADER_READS`, its sequences left raw counted in
    (`check_sequences_left_raw`): the data set, and the stream it was read from (where the read stopped, whether the
    bytes ended inside an element).

    Raises
    ------
    app.errors.TooManyDicomElementsError
        Past `MAX_HEADER_READS`; pydicom may raise anything else on a damaged file.
    """
    stream = BoundedReads(data)
    try:
        dataset = pydicom.dcmread(stream, stop_before_pixels=stop_before_pixels)
    except Exception:
        stream.raise_if_exceeded()  # pydicom turns a failed read of an item's tag into OSError "No tag..."
        raise
    check_sequences_left_raw(dataset, stream.reads, items=stream.items)
    return dataset, stream


def check_sequences_left_raw(
    dataset: Dataset,
    reads: int,
    most_reads: int = MAX_HEADER_READS,
    items: int = 0,
    most_items: int = MAX_HEADER_ITEMS,
) -> None:
    """Refuse a header whose sequences of defined length, which pydicom keeps as bytes and parses on first access
    (out of `BoundedReads`' sight), would take the elements read past `most_reads` (`MAX_HEADER_READS`), or the
    items read past `most_items` (`MAX_HEADER_ITEMS`); `reads` and `items` were read already.

    Counted before any is accessed (the header checks read the functional groups): 500,000 empty elements in one
    item of a Shared Functional Groups Sequence of defined length cost 4.4 s and +113 MiB when first read. An
    element or item is at least 8 bytes: while the sequences' bytes cannot hold more than what is left of either
    bound, nothing is walked.
    """
    budget, item_budget = most_reads - reads, most_items - items
    raw_sequences = list(_sequences_left_raw(dataset))
    if sum(len(raw.value or b"") for raw in raw_sequences) // 8 <= min(budget, item_budget):
        return
    for raw in raw_sequences:
        elements, items_within = _elements_within(raw.value or b"", raw.is_implicit_VR, raw.is_little_endian, budget)
        budget, item_budget = budget - elements, item_budget - items_within
        if budget < 0 or item_budget < 0:
            raise_too_many_elements()


def _sequences_left_raw(dataset: Dataset) -> Iterator[RawDataElement]:
    """The elements of `dataset` (and of the items of its sequences already parsed) that pydicom would parse as a
    sequence on first access, without parsing anything: VR SQ, or a value that starts with an item's tag (implicit
    VR, UN)."""
    for tag in dataset.keys():  # noqa: SIM118 - iterating a Dataset converts each element; its keys do not
        element = dataset.get_item(tag)
        if isinstance(element, RawDataElement):
            value = element.value or b""
            item_tag = _ITEM_TAG_LITTLE if element.is_little_endian else _ITEM_TAG_BIG
            if element.VR == "SQ" or (element.VR in (None, "UN") and value[:4] == item_tag):
                yield element
        elif element is not None and element.VR == "SQ" and isinstance(element.value, Sequence):
            for item in element.value:
                yield from _sequences_left_raw(item)


def _elements_within(value: bytes, implicit: bool, little: bool, most: int) -> tuple[int, int]:
    """Data elements, items and delimiters in a sequence's bytes at every depth (stepping into items and into
    anything that may be a sequence), counting up to just past `most`, and the items among them; a walk of their
    headers only."""
    endian = "<" if little else ">"
    item_tag = _ITEM_TAG_LITTLE if little else _ITEM_TAG_BIG
    position, count, items = 0, 0, 0
    while position + 8 <= len(value) and count <= most:
        count += 1
        group = struct.unpack_from(endian + "H", value, position)[0]
        if group == 0xFFFE:  # an item or a delimiter: its elements follow
            items += value[position : position + 4] == item_tag
            position += 8
            continue
        if implicit:
            header, length = 8, struct.unpack_from(endian + "L", value, position + 4)[0]
            nested = value[position + 8 : position + 12] == item_tag
        else:
            vr = value[position + 4 : position + 6]
            if vr in _EXPLICIT_LONG_VRS:
                if position + 12 > len(value):  # cut inside its last header: pydicom says what is wrong, if read
                    break
                header, length = 12, struct.unpack_from(endian + "L", value, position + 8)[0]
            else:
                header, length = 8, struct.unpack_from(endian + "H", value, position + 6)[0]
            nested = vr == b"SQ" or value[position + header : position + header + 4] == item_tag
        position += header if length == UNDEFINED_LENGTH or nested else header + length
    return count, items


def read_file_meta(data: bytes) -> tuple[int, str]:
    """Where the file meta group ends, and its Transfer Syntax UID ('' if absent).

    Read by hand (Part 10 fixes it: explicit VR little endian, group 0002, right after ``DICM``) because pydicom
    inflates a whole deflated data set as soon as it has read the meta group.
    """
    position, values = _file_meta_values(data)
    return position, values.get(0x0010, "")


def media_storage_sop_class(data: bytes) -> str:
    """The file meta group's Media Storage SOP Class UID ('' if absent, or the group cannot be read): what a file
    whose data set cannot be read says it is."""
    try:
        return _file_meta_values(data)[1].get(0x0002, "")
    except UndecodableDicomError:
        return ""


def _file_meta_values(data: bytes) -> tuple[int, dict[int, str]]:
    """Where the file meta group ends, and its UID values by element number (group 0002)."""
    position = DICOM_PREAMBLE_LENGTH + len(DICOM_MAGIC)
    values: dict[int, str] = {}
    while position + 8 <= len(data) and data[position : position + 2] == b"\x02\x00":
        element = int.from_bytes(data[position + 2 : position + 4], "little")
        if data[position + 4 : position + 6] in _EXPLICIT_LONG_VRS:
            length, start = int.from_bytes(data[position + 8 : position + 12], "little"), position + 12
        else:
            length, start = int.from_bytes(data[position + 6 : position + 8], "little"), position + 8
        if length == UNDEFINED_LENGTH or start + length > len(data):
            raise UndecodableDicomError("DICOM file meta group (0002) is truncated or has an undefined length")
        if element in (0x0002, 0x0010):  # Media Storage SOP Class UID, Transfer Syntax UID
            values[element] = data[start : start + length].rstrip(b"\x00 ").decode("ascii", "replace")
        position = start + length
    if position + 8 > len(data):
        raise UndecodableDicomError(
            f"DICOM file ends in or right after its file meta group (0002), at byte {len(data)} (truncated)"
        )
    return position, values


def inflated_header(data: bytes, meta_end: int, max_bytes: int | None) -> tuple[Dataset, bool, int, int, bool]:
    """The header of a deflated data set, whether pixel data follows it, the inflated size, the reads pydicom
    made of the header, and whether the inflated bytes end inside an element (pydicom keeps what came before).

    The stream is inflated a chunk at a time; the first `DEFLATED_HEADER_BYTES` are kept, the rest only counted.
    What follows the stream's end (PS3.5's pad byte, or more) is ignored, as pydicom and dcmtk's dcmdump ignore it.
    Values over `LONG_VALUE_BYTES` but sequences are dropped from the header (`without_long_values`).
    """
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    kept, inflated = bytearray(), 0
    try:
        for start in range(meta_end, len(data), 64 * 1024):
            output = inflater.decompress(data[start : start + 64 * 1024], _INFLATE_CHUNK)
            while True:
                inflated += len(output)
                if len(kept) < DEFLATED_HEADER_BYTES:
                    kept += output[: DEFLATED_HEADER_BYTES - len(kept)]
                if max_bytes is not None and inflated > max_bytes:
                    raise OverMemoryBudgetError(
                        f"DICOM file's deflated data set inflates to more than {describe_bytes(max_bytes)}, the "
                        "memory budget (DECODE_MEMORY_BYTES); refused before it was held"
                    )
                if inflater.eof or not inflater.unconsumed_tail:  # what follows the end (a pad byte) is not read
                    break
                tail = len(inflater.unconsumed_tail)
                output = inflater.decompress(inflater.unconsumed_tail, _INFLATE_CHUNK)
                if not output and len(inflater.unconsumed_tail) >= tail:  # no progress: never loop on it
                    raise UndecodableDicomError("DICOM deflated data set cannot be inflated (it stops making progress)")
            if inflater.eof:
                break
    except zlib.error as error:
        raise UndecodableDicomError(f"DICOM deflated data set cannot be inflated: {error}") from error
    if not inflater.eof:
        raise UndecodableDicomError("DICOM deflated data set is truncated (the deflate stream does not end)")
    reached_pixels = False

    def at_pixel_data(tag: int, vr: str | None, length: int) -> bool:
        nonlocal reached_pixels
        reached_pixels = reached_pixels or tag in PIXEL_DATA_TAGS
        return reached_pixels

    cut = inflated > len(kept)
    stream = BoundedReads(bytes(kept))
    try:
        dataset = read_dataset(DicomFileLike(stream), False, True, stop_when=at_pixel_data)
        check_sequences_left_raw(dataset, stream.reads, items=stream.items)
    except ServiceError:
        raise
    except Exception:
        stream.raise_if_exceeded()
        if not cut or reached_pixels:
            raise
        dataset = None
    if dataset is None or (cut and not reached_pixels):
        raise OverMemoryBudgetError(
            f"DICOM file's header (the data set before its pixel data) is over {describe_bytes(DEFLATED_HEADER_BYTES)} "
            "once inflated"
        )
    return without_long_values(dataset), reached_pixels, inflated, stream.reads, stream.cut


LONG_VALUE_BYTES = 64 * 1024
"""A value longer than this, but a sequence's, is dropped from a deflated header (`inflated_header`): the header of
a file read from bytes or a path keeps such values where they are (`app.dicom.dicom_header.HEADER_DEFER_BYTES`),
but a deflated one has no such place, and 256 files of a 3.9 MiB private value, 11 KB each as sent, hold 3.1 GB
while a request's headers are chosen. What the service reads of a header is short, or in
sequences (the functional groups), which stay."""


def without_long_values(dataset: Dataset) -> Dataset:
    """`dataset` without its top-level values over `LONG_VALUE_BYTES` but those of sequences (`inflated_header`)."""
    for tag, element in list(dataset._dict.items()):
        length = element.length if isinstance(element, RawDataElement) else 0
        if length > LONG_VALUE_BYTES and length != UNDEFINED_LENGTH and element.VR != "SQ":
            del dataset[tag]
    return dataset


PARSED_ITEM_BYTES, PARSED_ELEMENT_BYTES = 1_300, 450
"""Memory pydicom holds for each item, and each element in it, of a sequence it parsed as it read, whatever the bytes
sent (an empty item is 8 bytes on the wire): measured with tracemalloc on 20,000 items of 0, 1 and 5 elements."""


def held_value_bytes(dataset: Dataset) -> int:
    """The memory a parsed header holds: the bytes of its values (a sequence of defined length included, as pydicom
    keeps it raw until first read; a value left in its file, deferred, holds none), and `PARSED_ITEM_BYTES` and
    `PARSED_ELEMENT_BYTES` for each item and element of the sequences of undefined length pydicom parsed as it read.
    Counted as 0, 80,000 empty items in each of 20 instances of a study took +860 MiB of the DICOM node's memory while
    its series were chosen, before any budget applied (attack review 64 F4)."""
    held, parsed = 0, [dataset]
    while parsed:
        for element in parsed.pop()._dict.values():
            if isinstance(element, RawDataElement):
                held += len(element.value) if isinstance(element.value, bytes) else 0
            elif element.VR == "SQ" and isinstance(element.value, Sequence):
                items = element.value
                held += PARSED_ITEM_BYTES * len(items) + PARSED_ELEMENT_BYTES * sum(len(item._dict) for item in items)
                parsed.extend(items)
    return held


def pixel_data_tag_at(data: bytes, position: int) -> bool:
    """Whether a pixel data element starts at `position` (little endian, or the retired big endian)."""
    tag = data[position : position + 4]
    if len(tag) < 4:
        return False
    little = int.from_bytes(tag[:2], "little") << 16 | int.from_bytes(tag[2:], "little")
    big = int.from_bytes(tag[:2], "big") << 16 | int.from_bytes(tag[2:], "big")
    return little in PIXEL_DATA_TAGS or big in PIXEL_DATA_TAGS


def is_deflated(transfer_syntax: str) -> bool:
    return transfer_syntax == DeflatedExplicitVRLittleEndian


def is_encapsulated(transfer_syntax: str) -> bool:
    try:
        return UID(transfer_syntax).is_encapsulated
    except ValueError:  # not a transfer syntax pydicom knows: it reads the data as native
        return False
