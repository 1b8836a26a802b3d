"""An IHE IOCM rejection note sent to the API with the images it withdraws (attack review 53 F5): the images are left
out, as the DICOM node and pacs-sync leave them out; before, the note was an unsupported file and the withdrawn images
were analysed, the SEG referencing them."""

from __future__ import annotations

import io

import pydicom
import pytest
from fastapi.testclient import TestClient
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from app.dicom.dicom_seg_reader import read_segmentation_masks
from app.series import rejection_notes
from app.series.rejection_notes import MOST_NOTES_READ
from tests.dicom.builders import key_object_selection, mr_series, referenced, to_bytes, tumor_channels


def dicom_parts(datasets: list[Dataset]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("files", (f"IM{index:04d}", to_bytes(item), "application/dicom")) for index, item in enumerate(datasets)]


def errors_by_index(body: dict) -> dict[int, str]:
    return {item["index"]: item["error"]["code"] for item in body["file_errors"]}


@pytest.fixture
def series() -> list[Dataset]:
    return mr_series(tumor_channels())


def test_images_a_rejection_note_withdraws_are_left_out_of_the_answer(client: TestClient, series) -> None:
    note = key_object_selection(series, series[-1:])

    response = client.post("/v1/predict/batch", files=dicom_parts([*series, note]))

    assert response.status_code == 200, response.text
    body = response.json()
    assert [item["sop_instance_uid"] for item in body["slices"]] == [item.SOPInstanceUID for item in series[:-1]]
    last, note_index = len(series) - 1, len(series)
    assert errors_by_index(body) == {last: "rejected_instance", note_index: "rejection_note"}
    messages = {item["index"]: item["error"]["message"] for item in body["file_errors"]}
    assert f"file {note_index + 1} as sent" in messages[last] and "113001" in messages[last]
    assert f"file {last + 1} as sent" in messages[note_index]
    assert body["series_used"][0]["files"] == list(range(last))


def test_the_seg_names_no_withdrawn_image(client: TestClient, series) -> None:
    withdrawn = series[0].SOPInstanceUID

    response = client.post(
        "/v1/predict/batch?output=dicom-seg", files=dicom_parts([key_object_selection(series, series[:1]), *series])
    )

    assert response.status_code == 200, response.text
    assert (response.headers["X-Files-Skipped"], response.headers["X-Skipped-File-Indices"]) == ("2", "0,1")
    assert sorted(read_segmentation_masks(response.content)) == sorted(item.SOPInstanceUID for item in series[1:])
    assert withdrawn not in referenced(pydicom.dcmread(io.BytesIO(response.content)))


def test_a_request_whose_images_are_all_withdrawn_is_refused(client: TestClient, series) -> None:
    note = key_object_selection(series, series, codes.DCM.IncorrectModalityWorklistEntry)

    response = client.post("/v1/predict/batch", files=dicom_parts([*series, note]))

    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "rejected_instance"
    assert "113038" in error["message"] and f"none of the {len(series) + 1} files" in error["message"]
    # Each file as the other messages name one (browser review 58 F1: "file 0: ..." beside "file 4 as sent").
    assert "(the request's file at index 0 (file 1 as sent): withdrawn by" in error["message"]


def test_a_key_object_selection_that_rejects_nothing_withdraws_nothing(client: TestClient, series) -> None:
    """A key image selection ("Of Interest") is no rejection note: every image is read, the KOS stays unsupported."""
    note = key_object_selection(series, series[-1:], codes.DCM.OfInterest)

    response = client.post("/v1/predict/batch", files=dicom_parts([*series, note]))

    assert response.status_code == 200, response.text
    body = response.json()
    assert len(body["slices"]) == len(series)
    assert errors_by_index(body) == {len(series): "unsupported_dicom"}


def test_a_note_of_another_study_withdraws_nothing(client: TestClient, series) -> None:
    """Only images of the note's own study are withdrawn: the same UIDs under another study are not its images."""
    note = key_object_selection(series, series[-1:])
    other_study = generate_uid()
    for dataset in series:
        dataset.StudyInstanceUID = other_study

    response = client.post("/v1/predict/batch", files=dicom_parts([*series, note]))

    assert response.status_code == 200, response.text
    body = response.json()
    assert len(body["slices"]) == len(series)
    assert errors_by_index(body) == {len(series): "unsupported_dicom"}


def test_key_image_selections_before_a_rejection_note_do_not_hide_it(client: TestClient, series) -> None:
    """Attack review 57 F1: every KOS counted against the notes read, so four key image selections ("Of Interest")
    sent first left the rejection note unread and the image it withdraws analysed."""
    others = [key_object_selection(series, series[:1], codes.DCM.OfInterest) for _ in range(MOST_NOTES_READ)]
    note = key_object_selection(series, series[-1:])

    response = client.post("/v1/predict/batch", files=dicom_parts([*series, *others, note]))

    assert response.status_code == 200, response.text
    body = response.json()
    assert [item["sop_instance_uid"] for item in body["slices"]] == [item.SOPInstanceUID for item in series[:-1]]
    assert errors_by_index(body)[len(series) - 1] == "rejected_instance"


def test_more_rejection_notes_of_the_study_than_are_read_refuse_the_request(client: TestClient, series) -> None:
    """Review 56 F1: each note's content is walked (2 s for one naming 12,000 instances), so their number is bounded;
    a note left unread would leave what it withdraws analysed, so the request is refused whole."""
    notes = [key_object_selection(series, series[-1:]) for _ in range(MOST_NOTES_READ + 1)]

    response = client.post("/v1/predict/batch", files=dicom_parts([*series, *notes]))

    assert response.status_code == 413, response.text
    error = response.json()["error"]
    assert error["code"] == "too_many_rejection_notes"
    assert (
        f"at most {MOST_NOTES_READ} IHE IOCM rejection notes of its study; it holds {MOST_NOTES_READ + 1}"
        in (error["message"])
    )


def test_a_note_of_another_study_is_not_walked(client: TestClient, series, monkeypatch: pytest.MonkeyPatch) -> None:
    walked: list[object] = []
    monkeypatch.setattr(rejection_notes, "incoming_rejection", lambda note: walked.append(note))
    other_study = mr_series(tumor_channels())

    response = client.post(
        "/v1/predict/batch", files=dicom_parts([*series, key_object_selection(other_study, other_study)])
    )

    assert response.status_code == 200, response.text
    assert walked == []
