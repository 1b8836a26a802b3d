"""One series whose contrast nothing states, and one of another contrast, answered alike on every path.

Review finding (README walkthrough 27): the same single series named ``MR BRAIN`` was segmented as FLAIR by the API
and the command line but "not analysed" by pacs-sync and the DICOM node; one named ``Ax DWI`` came back from the API
with a tumor volume, read as FLAIR. Now a series that says nothing of its contrast (no name the rules know, no
Scanning Sequence) is read as FLAIR with one note on every path, localizers aside, and one whose name or sequence
attributes say another contrast is refused on every path.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.dataset import Dataset

from app.dicom.dicom_header import read_dicom_header
from app.errors import NoFlairSeriesError
from app.series.choice import choose_series
from app.series.info import SeriesInfo
from app.series.sequence_roles import only_series_note, select_sequences
from app.study_analysis import ModelStudyProcessor
from tests.dicom.builders import Study, mr_series, to_bytes, tumor_channels, write_files
from tests.node.node_support import ThresholdPredictor


def unstated_series(study: Study, series_number: int = 5, description: str = "MR BRAIN") -> list[Dataset]:
    """The tumor slices' FLAIR channel as one series whose name matches no rule and whose sequence is not stated."""
    datasets = mr_series(tumor_channels(), study, series_number=series_number, series_description=description)
    for dataset in datasets:
        del dataset.ScanningSequence
    return datasets


def localizer(study: Study) -> list[Dataset]:
    datasets = mr_series(tumor_channels()[:1], study, series_number=1, series_description="3-pl loc")
    datasets[0].ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    return datasets


def test_a_study_of_one_unstated_series_is_read_as_flair_with_a_note() -> None:
    series = unstated_series(Study())

    selection = select_sequences(series)

    assert selection.analysed
    assert selection.channel_series == (series[0].SeriesInstanceUID,)
    assert selection.notes == (only_series_note(SeriesInfo.from_dataset(series[0])),)
    assert selection.notes[0] == (
        "the only series (number 5, localizers aside) says neither FLAIR nor another contrast by its name or sequence "
        "attributes: read as FLAIR, the contrast the models read; check that it is FLAIR"
    )


def test_a_localizer_beside_it_does_not_change_that() -> None:
    study = Study()
    series = unstated_series(study)

    selection = select_sequences([*localizer(study), *series])

    assert selection.channel_series == (series[0].SeriesInstanceUID,)


def test_two_unstated_series_are_not_guessed_between() -> None:
    study = Study()

    selection = select_sequences([*unstated_series(study, 5), *unstated_series(study, 6, "MR BRAIN 2")])

    assert not selection.analysed
    assert selection.reason is not None and selection.reason.startswith("the study has no FLAIR series")


def test_the_request_path_reads_it_with_the_same_note() -> None:
    series = unstated_series(Study())

    choice = choose_series([read_dicom_header(to_bytes(dataset)) for dataset in series])

    assert [use.role for use in choice.used] == ["FLAIR"]
    assert choice.notes == (only_series_note(SeriesInfo.from_dataset(series[0])),)


def test_the_node_and_pacs_sync_processor_analyse_it_with_the_note_once(tmp_path: Path) -> None:
    series = unstated_series(Study())
    files = write_files(series, tmp_path / "in")

    analysis = ModelStudyProcessor(ThresholdPredictor())(files)

    assert analysis.status == "analysed", analysis.reason
    assert analysis.summary["slices"] == 3
    assert analysis.summary["notes"].count(only_series_note(SeriesInfo.from_dataset(series[0]))) == 1


@pytest.mark.parametrize(
    ("description", "scanning_sequence"), [("Ax DWI", None), ("SWI_Images", None), ("MR BRAIN", "SE")]
)
def test_one_series_of_another_contrast_is_refused_on_every_path(
    tmp_path: Path, description: str, scanning_sequence: str | None
) -> None:
    series = unstated_series(Study(), description=description)
    for dataset in series:
        if scanning_sequence is not None:
            dataset.ScanningSequence = scanning_sequence

    with pytest.raises(NoFlairSeriesError, match=r"^the request's one series \(number 5\) is another contrast"):
        choose_series([read_dicom_header(to_bytes(dataset)) for dataset in series])
    analysis = ModelStudyProcessor(ThresholdPredictor())(write_files(series, tmp_path / "in"))
    assert analysis.status == "not_analysed"
    assert analysis.reason is not None and analysis.reason.startswith("the study has no FLAIR series")
