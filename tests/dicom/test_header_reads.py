"""A header past `MAX_HEADER_READS` is refused as such, whatever pydicom is reading when the limit falls (interop
review 31): a valid 2,048-frame Enhanced MR whose functional groups are sequences of undefined length (as dcmtk and
Orthanc store them) was recorded by pacs-sync as "DICOM file cannot be read (truncated or corrupt): No tag to read at
file position ...", because pydicom re-raises any exception of its read of an item's tag as that OSError."""

from __future__ import annotations

import io
import struct

import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian

from app.dicom import part10
from app.dicom.dicom_header import read_dicom_header
from app.dicom.part10 import DICOM_PREAMBLE_LENGTH
from app.errors import UndecodableDicomError
from tests.dicom.builders import Study, mr_dataset, to_bytes, tumor_channels


def _with_items_of_undefined_length(transfer_syntax: str) -> bytes:
    """One MR instance with a sequence of undefined length of 300 items of undefined length before its pixels."""
    dataset = mr_dataset(tumor_channels()[0], Study(), "1.2.3.4")
    items = []
    for index in range(300):
        item = Dataset()
        item.ReferencedSOPClassUID = dataset.SOPClassUID
        item.ReferencedSOPInstanceUID = f"1.2.3.{index + 1}"
        item.is_undefined_length_sequence_item = True
        items.append(item)
    dataset.ReferencedImageSequence = Sequence(items)
    dataset["ReferencedImageSequence"].is_undefined_length = True
    dataset.file_meta.TransferSyntaxUID = transfer_syntax
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.mark.parametrize("transfer_syntax", [ExplicitVRLittleEndian, DeflatedExplicitVRLittleEndian])
def test_the_read_limit_is_named_wherever_it_falls_in_a_sequence(
    transfer_syntax: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _with_items_of_undefined_length(transfer_syntax)
    for limit in range(400, 412):  # inside the sequence: each read of it in turn, an item's tag among them
        monkeypatch.setattr(part10, "MAX_HEADER_READS", limit)
        with pytest.raises(UndecodableDicomError, match="too many data elements"):
            read_dicom_header(data)


def test_the_same_instance_within_the_limit_is_read() -> None:
    for transfer_syntax in (ExplicitVRLittleEndian, DeflatedExplicitVRLittleEndian):
        header = read_dicom_header(_with_items_of_undefined_length(transfer_syntax))
        assert len(header.dataset.ReferencedImageSequence) == 300


def _nested_sequences(depth: int) -> bytes:
    """A Referenced Image Sequence of undefined length holding one item that holds the next, `depth` deep."""
    tag = struct.pack("<HH", 0x0008, 0x1140) + b"SQ\0\0" + b"\xff\xff\xff\xff"
    item, item_end = b"\xfe\xff\x00\xe0\xff\xff\xff\xff", b"\xfe\xff\x0d\xe0\0\0\0\0"
    sequence_end = b"\xfe\xff\xdd\xe0\0\0\0\0"
    nested = b""
    for _ in range(depth):
        nested = tag + item + nested + item_end + sequence_end
    return nested


def test_sequences_nested_past_what_can_be_read_are_named_as_such() -> None:
    """Attack review 32: a header of sequences nested hundreds deep was refused as "cannot be read (truncated or
    corrupt): maximum recursion depth exceeded while calling a Python object", a Python internal as its reason."""
    data = to_bytes(mr_dataset(tumor_channels()[0], Study(), "1.2.3.4"))
    start = DICOM_PREAMBLE_LENGTH + 4
    meta_end = start + 12 + int.from_bytes(data[start + 8 : start + 12], "little")  # after (0002,0000)'s group
    for depth in (5, 1000):
        nested = data[:meta_end] + _nested_sequences(depth) + data[meta_end:]
        if depth == 5:
            assert len(read_dicom_header(nested).dataset.ReferencedImageSequence) == 1
            continue
        with pytest.raises(UndecodableDicomError, match="nests sequences deeper than can be read") as refused:
            read_dicom_header(nested)
        assert "recursion" not in str(refused.value) and "truncated" not in str(refused.value)
