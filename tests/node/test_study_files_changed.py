"""A study whose files are removed or replaced while it is read (review 54 F4): its headers leave long values in the
files (`read_header`'s `defer_size`), read when first used, so a file an incoming rejection note removed meanwhile
failed the analysis with pydicom's `OSError`, logged as a bug. Now it is `StudyFilesChangedError`, and the node
analyses the study again from the files then there."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from app import study_analysis
from app.dicom.dicom_header import HEADER_DEFER_BYTES
from app.study_analysis import ModelStudyProcessor, StudyFilesChangedError
from tests.dicom.builders import mr_series, tumor_channels, write_files
from tests.node.node_support import QUIET_SECONDS, Clock, ThresholdPredictor, process_and_send, records, storescu


def files_with_a_deferred_value(folder: Path) -> list[Path]:
    """A FLAIR series whose first file's Series Description is longer than `read_header` reads at once."""
    series = mr_series(tumor_channels())
    series[0].SeriesDescription = "AX FLAIR " + "x" * HEADER_DEFER_BYTES
    return write_files(series, folder)


def removing_after_the_last_header(files: list[Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """`read_header` as the processor calls it, but the first file is removed once every header was read: as an
    incoming rejection note removes an instance while the study's series are chosen."""
    read_header = study_analysis.read_header
    read: list[Path] = []

    def read_then_remove(path: Path, *arguments: Any) -> Any:
        header = read_header(path, *arguments)
        read.append(path)
        if len(read) == len(files):
            files[0].unlink()
        return header

    monkeypatch.setattr(study_analysis, "read_header", read_then_remove)


def test_the_headers_read_suffice_while_the_files_stay(tmp_path: Path) -> None:
    analysis = ModelStudyProcessor(ThresholdPredictor())(files_with_a_deferred_value(tmp_path))

    assert analysis.status == "analysed", analysis.reason


def test_a_file_removed_while_the_study_is_read_is_a_changed_study(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = files_with_a_deferred_value(tmp_path)
    removing_after_the_last_header(files, monkeypatch)

    with pytest.raises(StudyFilesChangedError):
        ModelStudyProcessor(ThresholdPredictor())(files)


def test_the_node_analyses_a_changed_study_again_and_logs_no_failure(
    make_node: Any, clock: Clock, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[int] = []

    class ChangedTheFirstTime(ModelStudyProcessor):
        def __call__(self, *arguments: Any, **keywords: Any) -> Any:
            calls.append(1)
            if len(calls) == 1:
                raise StudyFilesChangedError("files of the study were removed or replaced while it was read")
            return super().__call__(*arguments, **keywords)

    node = make_node(processor=ChangedTheFirstTime(ThresholdPredictor()))
    assert storescu(node, write_files(mr_series(tumor_channels()), tmp_path / "in")).returncode == 0
    clock.advance(QUIET_SECONDS)
    with caplog.at_level(logging.INFO):
        process_and_send(node)

    assert len(calls) == 1
    assert not any(record.get("runs") for record in records(node))  # nothing of the run kept
    assert not [entry for entry in caplog.records if entry.levelno >= logging.ERROR]
    assert "study changed while it was read; analysed again" in caplog.text

    clock.advance(QUIET_SECONDS)
    process_and_send(node)

    assert len(calls) == 2
    ((run,),) = [record["runs"] for record in records(node)]
    assert run["status"] == "analysed"
