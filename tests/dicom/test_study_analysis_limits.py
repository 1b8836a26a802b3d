"""Attack finding 12: a study the flow refuses for its size is refused from the headers, before its files are read.

The DICOM node's processor (`ModelStudyProcessor.__call__`) read the bytes of every file of the chosen series into
memory (10,000 one-slice instances: 23 s and +360 MiB) before the flow (`PredictionService.predict_dicom`) refused the
series for its memory cost or its slices. Now the same check runs on the headers first; the record is the flow's.
Tiny 32x32 slices (the smallest the flow reads) and small limits keep these tests fast.
"""

from __future__ import annotations

import copy
import re
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import DeflatedExplicitVRLittleEndian, generate_uid

from app.dicom.part10 import LONG_VALUE_BYTES
from app.memory_budget import MODEL_INPUT_BYTES
from app.series.reading import plan_series
from app.settings import MIB
from app.study_analysis import ModelStudyProcessor, StudyAnalysis
from app.uploads import UploadLimits
from tests.dicom.builders import Study, mr_series, tumor_channels, write_files
from tests.node.node_support import ThresholdPredictor

# A 32x32 one-slice file costs one model input and a little more (`DicomHeader.cost_bytes`): a budget of four model
# inputs takes three such files and refuses twelve.
BUDGET_OF_THREE_SLICES = 4 * MODEL_INPUT_BYTES


def small_slices(count: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 255, size=(32, 32), dtype=np.uint8) for _ in range(count)]


@pytest.fixture
def files_read(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The files whose bytes the processor reads whole (`Path.read_bytes`), in order."""
    read: list[Path] = []
    original = Path.read_bytes

    def counted(path: Path) -> bytes:
        read.append(path)
        return original(path)

    monkeypatch.setattr(Path, "read_bytes", counted)
    return read


def flow_record(processor: ModelStudyProcessor, files: list[Path], notes: Sequence[str] = ()) -> StudyAnalysis:
    """What the flow itself records for the files, given their bytes (the path pacs-sync takes): the record the
    processor gave before it checked the headers first."""
    headers = [pydicom.dcmread(path, stop_before_pixels=True) for path in files]
    selection = processor.select(headers)
    by_series: dict[str, list[bytes]] = {uid: [] for uid in selection.channel_series}
    for path, header in sorted(zip(files, headers, strict=True), key=lambda item: int(item[1].InstanceNumber)):
        if header.SeriesInstanceUID in by_series:
            by_series[header.SeriesInstanceUID].append(path.read_bytes())
    return processor.analyse(selection, by_series, files=len(files), notes=notes)


def test_a_series_over_the_memory_budget_is_refused_before_any_file_is_read(
    tmp_path: Path, files_read: list[Path]
) -> None:
    files = write_files(mr_series(small_slices(12)), tmp_path / "in")
    processor = ModelStudyProcessor(ThresholdPredictor(), limits=UploadLimits(max_decode_bytes=BUDGET_OF_THREE_SLICES))

    analysis = processor(files)

    assert files_read == []
    assert analysis.status == "failed"
    assert analysis.reason is not None
    assert analysis.reason.startswith("over_memory_budget: this request's 12 files would take ")
    assert analysis.reason.endswith(
        f"the memory budget (DECODE_MEMORY_BYTES) is {BUDGET_OF_THREE_SLICES} bytes (3.0 MiB)"
    )
    assert analysis.datasets == []
    expected = flow_record(processor, files)  # the flow's own refusal, once it has every file's bytes
    assert (analysis.status, analysis.reason, analysis.summary) == (expected.status, expected.reason, expected.summary)


def test_a_study_whose_inflated_headers_hold_more_than_the_budget_is_refused_as_they_are_read(
    tmp_path: Path, files_read: list[Path]
) -> None:
    """Attack review 55 F2: the node held every file's inflated header while it chose a study's series, up to 4 MiB
    each from a few KB sent; they now count against the budget, as a request's headers do."""
    series = mr_series(small_slices(6))
    for dataset in series:
        block = dataset.private_block(0x7FD1, "PADDING", create=True)
        for element in range(10):
            block.add_new(0x10 + element, "OB", bytes(LONG_VALUE_BYTES))  # 640 KiB held, kept: none is long
        dataset.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    files = write_files(series, tmp_path / "in")
    processor = ModelStudyProcessor(ThresholdPredictor(), limits=UploadLimits(max_decode_bytes=2 * MIB))

    analysis = processor(files)

    assert len(files_read) == 4  # each deflated file is read to inflate its header; the last two never
    assert analysis.status == "failed"
    assert analysis.reason is not None
    # The bytes held vary with the random UIDs' lengths by a few bytes.
    assert re.match(
        r"over_memory_budget: the headers of the study's first 4 files hold 26234\d\d bytes \(2.5 MiB\), over",
        analysis.reason,
    )


def test_a_series_over_the_slice_limit_is_refused_before_any_file_is_read(
    tmp_path: Path, files_read: list[Path]
) -> None:
    files = write_files(mr_series(small_slices(8)), tmp_path / "in")
    processor = ModelStudyProcessor(ThresholdPredictor(), limits=UploadLimits(max_request_slices=5))

    analysis = processor(files, ["an association was aborted"])

    assert files_read == []
    assert analysis.status == "failed"
    assert analysis.reason == (
        "too_many_slices: a request may hold at most 5 slices (INFERENCE_QUEUE_SLICES); got 8 or more, counted from "
        "the DICOM headers"
    )
    assert analysis.summary["notes"] == ["an association was aborted"]
    expected = flow_record(processor, files, ["an association was aborted"])
    assert (analysis.status, analysis.reason, analysis.summary) == (expected.status, expected.reason, expected.summary)


def test_a_study_within_the_limits_is_analysed_as_the_flow_analyses_its_bytes(
    tmp_path: Path, files_read: list[Path]
) -> None:
    files = write_files(mr_series(tumor_channels()), tmp_path / "in")
    processor = ModelStudyProcessor(ThresholdPredictor())

    analysis = processor(files)

    assert sorted(files_read) == sorted(files)  # each file read once
    assert analysis.status == "analysed", analysis.reason
    assert analysis.summary["slices"] == 3
    expected = flow_record(processor, files)
    assert analysis.summary == expected.summary
    assert [item.SOPInstanceUID for item in analysis.datasets] == [item.SOPInstanceUID for item in expected.datasets]


def test_only_the_chosen_series_counts_against_the_limits(tmp_path: Path, files_read: list[Path]) -> None:
    """A localizer of many slices beside a small FLAIR series: the FLAIR series fits and is read; the localizer's
    files are never read, and their size refuses nothing."""
    study = Study()
    flair = write_files(mr_series(small_slices(3), study, series_number=4), tmp_path / "flair")
    localizer = write_files(
        mr_series(small_slices(12, seed=1), study, series_number=1, series_description="localizer"), tmp_path / "loc"
    )
    processor = ModelStudyProcessor(ThresholdPredictor(), limits=UploadLimits(max_decode_bytes=BUDGET_OF_THREE_SLICES))

    analysis = processor([*localizer, *flair])

    assert analysis.status == "analysed", analysis.reason
    assert analysis.summary["slices"] == 3
    assert sorted(files_read) == sorted(flair)


def test_copies_of_one_instance_count_once_as_in_the_flow(tmp_path: Path, files_read: list[Path]) -> None:
    """Files that repeat an instance (its SOP Instance UID) are left out by the flow before it sums the cost: the
    check on the headers leaves them out too, so three slices and three copies of them fit a budget of three."""
    files = write_files(mr_series(small_slices(3)), tmp_path / "in")
    copies = [shutil.copy(path, tmp_path / "in" / f"copy-{path.name}") for path in files]
    processor = ModelStudyProcessor(ThresholdPredictor(), limits=UploadLimits(max_decode_bytes=BUDGET_OF_THREE_SLICES))

    analysis = processor([*files, *map(Path, copies)])

    assert analysis.status == "analysed", analysis.reason
    assert analysis.summary["slices"] == 3
    assert analysis.summary["file_errors"] == {"invalid_dicom_image": 3}


def test_a_series_sent_again_under_new_uids_counts_once_against_the_limits(tmp_path: Path) -> None:
    """Review 61 F1: the repeats were left out only once decoded, after both copies were counted: a series within
    the limits sent twice was refused (and the node withdrew its results). They are found from the headers and the
    pixel data's bytes now, before anything is counted."""
    series = mr_series(small_slices(3))
    again = copy.deepcopy(series)
    for dataset in again:
        dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    files = write_files([*series, *again], tmp_path / "in")
    processor = ModelStudyProcessor(ThresholdPredictor(), limits=UploadLimits(max_request_slices=3))

    analysis = processor(files)

    assert analysis.status == "analysed", analysis.reason
    assert analysis.summary["slices"] == 3
    plan = plan_series([path.read_bytes() for path in files], UploadLimits(max_request_slices=3))
    assert plan.slices == 3 and len(plan.choice.left_out_files) == 3


def test_a_study_whose_headers_hold_parsed_sequence_items_over_the_budget_is_refused_as_they_are_read(
    tmp_path: Path,
) -> None:
    """Attack review 64 F4: a sequence of undefined length is parsed as it is read, an item held at about 1.3 KB for 8
    bytes sent, and the headers' count took it for nothing: 20 instances of 80,000 empty items took +860 MiB of the
    node's memory before the study was refused."""
    series = mr_series(small_slices(6))
    for dataset in series:
        dataset.RequestAttributesSequence = pydicom.Sequence([pydicom.Dataset() for _ in range(500)])
        dataset["RequestAttributesSequence"].is_undefined_length = True
    files = write_files(series, tmp_path / "in")
    processor = ModelStudyProcessor(ThresholdPredictor(), limits=UploadLimits(max_decode_bytes=1 * MIB))

    analysis = processor(files)

    assert analysis.status == "failed"
    assert analysis.reason is not None
    assert analysis.reason.startswith("over_memory_budget: the headers of the study's first 2 files hold")
