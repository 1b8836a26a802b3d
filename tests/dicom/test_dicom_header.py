"""`read_header`: the one way the node, pacs-sync and the CLI look at a file's header before the flow reads it."""

from __future__ import annotations

from pathlib import Path

from app.dicom.dicom_header import read_header
from tests.dicom.builders import Study, mr_dataset, to_bytes, tumor_channels


def test_read_header_reads_the_tags_asked_for_from_bytes_and_from_a_path(tmp_path: Path) -> None:
    data = to_bytes(mr_dataset(tumor_channels()[0], Study(), "1.2.3.4", instance_number=7))
    (tmp_path / "slice.dcm").write_bytes(data)

    header = read_header(data, ["SeriesInstanceUID"])

    assert header is not None and header.SeriesInstanceUID == "1.2.3.4" and "InstanceNumber" not in header
    from_path = read_header(tmp_path / "slice.dcm")
    assert from_path is not None and from_path.InstanceNumber == 7 and "PixelData" not in from_path


def test_read_header_answers_none_for_a_file_pydicom_cannot_read() -> None:
    """Newcomer review 45 F10: one policy, where six `dcmread`s had six (one of them failed a pacs-sync study)."""
    assert read_header(b"no DICOM file") is None


def test_read_header_answers_none_for_a_missing_file(tmp_path: Path) -> None:
    assert read_header(tmp_path / "gone.dcm") is None
