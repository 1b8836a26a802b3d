"""An IHE IOCM rejection note sent to the API with the images it withdraws (attack review 53 F5): the images are left
out, as the DICOM node and pacs-sync leave them out; before, the note was an unsupported file and the withdrawn images
were analysed, the SEG referencing them."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import UID, generate_uid

from app.dicom import incoming_rejection
from app.dicom.dicom_seg_reader import read_segmentation_masks
from app.series import rejection_notes
from tests.dicom.builders import (
    Study,
    deflated_and_padded,
    key_object_selection,
    mr_dataset,
    mr_series,
    referenced,
    to_bytes,
    tumor_channels,
)


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
    others = [key_object_selection(series, series[:1], codes.DCM.OfInterest) for _ in range(4)]
    note = key_object_selection(series, series[-1:])

    response = client.post("/v1/predict/batch", files=dicom_parts([*series, *others, note]))

    assert response.status_code == 200, response.text
    body = response.json()
    assert [item["sop_instance_uid"] for item in body["slices"]] == [item.SOPInstanceUID for item in series[:-1]]
    assert errors_by_index(body)[len(series) - 1] == "rejected_instance"


def other_images(series: list[Dataset], count: int, first_mm: float) -> list[Dataset]:
    """Other images of the series' study, tiny: ones a PACS removed after rejecting them, named by notes, never
    sent."""
    study = Study(series[0].StudyInstanceUID, series[0].FrameOfReferenceUID)
    return [
        mr_dataset(np.zeros((8, 8), np.uint8), study, series[0].SeriesInstanceUID, position_mm=first_mm + at)
        for at in range(count)
    ]


def test_a_study_corrected_many_times_has_all_its_small_notes_read(client: TestClient, series) -> None:
    """Review 58 F2: a count of 4 notes refused a study export with five notes for images the PACS had removed, and
    advised leaving notes out, which would leave a withdrawn image analysed. Small notes are all read now."""
    removed = other_images(series, 6, first_mm=100.0)
    notes = [key_object_selection([*series, image], [image]) for image in removed]
    notes.append(key_object_selection(series, series[-1:]))

    response = client.post("/v1/predict/batch", files=dicom_parts([*series, *notes]))

    assert response.status_code == 200, response.text
    body = response.json()
    assert [item["sop_instance_uid"] for item in body["slices"]] == [item.SOPInstanceUID for item in series[:-1]]
    assert errors_by_index(body)[len(series) - 1] == "rejected_instance"
    assert errors_by_index(body)[len(series) + len(notes) - 1] == "rejection_note"


def test_notes_past_the_bytes_a_request_reads_refuse_it(
    client: TestClient, series, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A note left unread would leave what it withdraws analysed, so the request is refused whole, without advice to
    leave notes out."""
    notes = [key_object_selection(series, series[-1:]) for _ in range(3)]
    sizes = [len(to_bytes(note)) for note in notes]
    monkeypatch.setattr(rejection_notes, "NOTES_READ_BYTES", sum(sizes[:2]))  # two notes' worth

    response = client.post("/v1/predict/batch", files=dicom_parts([*series, *notes]))

    assert response.status_code == 413, response.text
    error = response.json()["error"]
    assert error["code"] == "too_many_rejection_notes"
    assert "(3 files, the request's file at index 5 (file 6 as sent) not read)" in error["message"]
    assert "fewer notes" not in error["message"]


def test_key_object_selections_are_told_apart_from_their_first_bytes_only(
    client: TestClient, series, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review 58 F1: every KOS was inflated and parsed whole to read its title (250 deflated ones naming 18,000
    instances each: 22 s and 2 GB), and every note was held until they were counted. Now only the notes of the
    request's study are read whole, one at a time."""
    many = other_images(series, 3000, first_mm=200.0)
    selection = key_object_selection(many, many, codes.DCM.OfInterest)
    selections = []
    for _ in range(8):
        selection.SOPInstanceUID = selection.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        selections.append(deflated_and_padded(selection))
    note = deflated_and_padded(key_object_selection(series, series[-1:]))
    read_whole: list[int] = []
    reader = rejection_notes.read_rejection_note_within

    def counted(data: bytes, max_bytes: int):
        read_whole.append(len(data))
        return reader(data, max_bytes)

    monkeypatch.setattr(rejection_notes, "read_rejection_note_within", counted)
    files = [("files", (f"IM{at:04d}", data, "application/dicom")) for at, data in enumerate([*selections, note])]

    response = client.post("/v1/predict/batch", files=dicom_parts(series) + files)

    assert response.status_code == 200, response.text
    assert read_whole == [len(note)]
    assert errors_by_index(response.json())[len(series) - 1] == "rejected_instance"


def test_a_note_whose_title_is_past_the_first_bytes_is_still_applied(client: TestClient, series) -> None:
    """A top level too long to tell the title from the first bytes is read whole (within the budget), not skipped:
    skipped, the note would leave the image it withdraws analysed."""
    note = key_object_selection(series, series[-1:])
    note.StudyDescription = "x" * (2 * incoming_rejection.TITLE_BYTES)

    response = client.post("/v1/predict/batch", files=dicom_parts([*series, note]))

    assert response.status_code == 200, response.text
    assert errors_by_index(response.json()) == {len(series) - 1: "rejected_instance", len(series): "rejection_note"}


def test_a_note_of_another_study_is_not_walked(client: TestClient, series, monkeypatch: pytest.MonkeyPatch) -> None:
    walked: list[object] = []
    monkeypatch.setattr(rejection_notes, "incoming_rejection", lambda note: walked.append(note))
    other_study = mr_series(tumor_channels())

    response = client.post(
        "/v1/predict/batch", files=dicom_parts([*series, key_object_selection(other_study, other_study)])
    )

    assert response.status_code == 200, response.text
    assert walked == []


def test_a_note_under_a_private_transfer_syntax_is_applied(client: TestClient, series) -> None:
    """Review 61 F2: the title read asked pydicom for the transfer syntax's encoding, which it does not know for a
    private one, and the note was taken for no note: the image it withdraws was analysed."""
    note = key_object_selection(series, series[-1:])
    note.file_meta.TransferSyntaxUID = UID("1.3.6.1.4.1.99999.1")
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, note, implicit_vr=False, little_endian=True, force_encoding=True)
    files = dicom_parts(series) + [("files", ("NOTE", buffer.getvalue(), "application/dicom"))]

    response = client.post("/v1/predict/batch", files=files)

    assert response.status_code == 200, response.text
    assert errors_by_index(response.json()) == {len(series) - 1: "rejected_instance", len(series): "rejection_note"}


def test_key_image_selections_with_a_long_value_before_their_title_cost_no_budget(
    client: TestClient, series, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review 61 F3: a 70 KB private value before the title put it past the bytes read; each such selection was read
    whole and charged, and five refused a request that held no rejection note. Long values are skipped now."""
    selection = key_object_selection(series, series, codes.DCM.OfInterest)
    selection.add_new(0x00290010, "LO", "ACME")
    selection.add_new(0x00291001, "OB", bytes(70_000))  # a private block before the Document Title
    read_whole: list[int] = []
    reader = rejection_notes.read_rejection_note_within
    monkeypatch.setattr(
        rejection_notes, "read_rejection_note_within", lambda *args: read_whole.append(1) or reader(*args)
    )
    files = dicom_parts(series) + [("files", (f"KOS{at}", to_bytes(selection), "application/dicom")) for at in range(5)]

    response = client.post("/v1/predict/batch", files=files)

    assert response.status_code == 200, response.text
    assert read_whole == []
    assert set(errors_by_index(response.json()).values()) == {"unsupported_dicom"}


def test_a_note_whose_title_comes_after_many_elements_is_read_whole_and_applied(client: TestClient, series) -> None:
    """Past `TITLE_READS` the title read gives up and the note is read whole, within the budget: a note padded with
    thousands of tiny elements before its title still withdraws its image."""
    note = key_object_selection(series, series[-1:])
    block = note.private_block(0x0029, "PADDING", create=True)
    for element in range(0x10, 0x100):
        block.add_new(element, "SH", "x")
    more = note.private_block(0x0031, "PADDING", create=True)
    for element in range(0x10, 0x100):
        more.add_new(element, "SH", "x")
    for group in range(0x0033, 0x0041, 2):  # some 4,000 elements before (0040,A043)
        extra = note.private_block(group, "PADDING", create=True)
        for element in range(0x10, 0x100):
            extra.add_new(element, "SH", "x")

    response = client.post("/v1/predict/batch", files=dicom_parts([*series, note]))

    assert response.status_code == 200, response.text
    assert errors_by_index(response.json()) == {len(series) - 1: "rejected_instance", len(series): "rejection_note"}


def test_a_request_of_a_withdrawn_image_and_a_broken_file_is_refused_for_the_broken_file(
    client: TestClient, series
) -> None:
    """Review 61 F6: the whole request took the first file's code, a withdrawal, and the page told the user that
    every image was withdrawn, though one file was unreadable."""
    images = series[:2]
    note = key_object_selection(images, images[:1])
    files = dicom_parts([*images, note])
    files[1] = ("files", ("IM0001", b"DICM-not-really" * 10, "application/dicom"))

    response = client.post("/v1/predict/batch", files=files)

    assert response.status_code == 415, response.text
    error = response.json()["error"]
    assert error["code"] == "unsupported_media_type"
    assert "(the request's file at index 0 (file 1 as sent): withdrawn by" in error["message"]


DAMAGES = (
    "content-as-ob",
    "cut-before-its-title",
    "cut-16-into-its-title",
    "cut-24-into-its-title",
    "cut-300-into-its-title",
)


def damaged(note: Dataset, damage: str) -> bytes:
    data = bytearray(to_bytes(note))
    if damage == "cut-before-its-title":  # cut inside the Patient ID, after the SOP class: a KOS, title unknown
        return bytes(data[: data.rindex(b"\x10\x00\x20\x00LO") + 9])
    if damage.startswith("cut-"):  # review 64 F3, F4: a 500 at 16 bytes into the title, a 200 at 24 and 300
        return bytes(data[: data.index(b"\x40\x00\x43\xa0") + int(damage.split("-")[1])])
    at = data.rindex(b"\x08\x00\x99\x11SQ")  # the content's Referenced SOP Sequence, after the evidence's
    data[at + 4 : at + 6] = b"OB"
    return bytes(data)


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_rejection_note_that_cannot_be_read_refuses_the_request(client: TestClient, series, damage: str) -> None:
    """Style review 63 F1: the DICOM node refuses such a note and pacs-sync fails its study, as which images it
    withdraws is unknown; the API analysed every image, the one it withdraws with them, and answered 200."""
    files = dicom_parts(series)
    files.append(("files", ("NOTE", damaged(key_object_selection(series, series[-1:]), damage), "application/dicom")))

    response = client.post("/v1/predict/batch", files=files)

    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "unreadable_rejection_note"
    assert f"file {len(series) + 1} as sent" in error["message"]


def test_a_damaged_key_image_selection_withdraws_nothing(client: TestClient, series) -> None:
    """Its title says it is no rejection note: its damaged content is never read, as at the DICOM node."""
    files = dicom_parts(series)
    note = key_object_selection(series, series[-1:], codes.DCM.OfInterest)
    files.append(("files", ("KOS", damaged(note, "content-as-ob"), "application/dicom")))

    response = client.post("/v1/predict/batch", files=files)

    assert response.status_code == 200, response.text
    assert errors_by_index(response.json()) == {len(series): "unsupported_dicom"}


def test_a_rejection_note_over_the_size_a_note_may_take_refuses_the_request(
    client: TestClient, series, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It withdrew nothing, and the image it withdraws was analysed; the DICOM node refuses such a note."""
    note = to_bytes(key_object_selection(series, series[-1:]))
    monkeypatch.setattr(incoming_rejection, "MAX_NOTE_BYTES", len(note) - 1)
    files = [*dicom_parts(series), ("files", ("NOTE", note, "application/dicom"))]

    response = client.post("/v1/predict/batch", files=files)

    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "unreadable_rejection_note"
    assert "over the" in response.json()["error"]["message"]


def test_a_flair_series_withdrawn_whole_is_named_when_its_t1_series_are_refused(client: TestClient) -> None:
    """Browser review 61 F5: a FLAIR series a note withdrew whole, its T1 series left, was refused as "the study has
    no FLAIR series", the withdrawal unsaid: the user looked for a fault in the FLAIR's description."""
    study = Study()
    flair = mr_series(tumor_channels(1), study, series_number=4, series_description="AX T2 FLAIR")
    pre = mr_series(tumor_channels(0), study, series_number=2, series_description="AX T1 PRE")
    post = mr_series(tumor_channels(2), study, series_number=7, series_description="AX T1 POST GAD")
    note = key_object_selection(flair, flair)

    for t1 in ([*pre, *post], pre):
        response = client.post("/v1/predict/batch", files=dicom_parts([*flair, *t1, note]))

        assert response.status_code == 422, response.text
        error = response.json()["error"]
        assert error["code"] == "no_flair_series"
        assert error["message"].startswith(
            f"the request's rejection notes withdrew {len(flair)} of its images ({len(flair)} of series number 4), "
            "not read; the request's"
        )


def test_a_rejection_note_of_the_study_that_withdraws_none_of_the_images_is_applied_not_unsupported(
    client: TestClient, series
) -> None:
    """Browser review 61 F3: a note of the study naming images of another series, not sent, stayed an unsupported file,
    and the page said a file of the series could not be analysed."""
    study = Study(series[0].StudyInstanceUID, series[0].FrameOfReferenceUID)
    elsewhere = mr_series(tumor_channels(0)[:2], study, series_number=9)
    note = key_object_selection(elsewhere, elsewhere)

    response = client.post("/v1/predict/batch", files=dicom_parts([*series, note]))

    assert response.status_code == 200, response.text
    body = response.json()
    assert len(body["slices"]) == len(series)
    assert errors_by_index(body) == {len(series): "rejection_note"}
    assert body["file_errors"][0]["error"]["message"].endswith("it withdraws none of the request's images")


def test_t1_images_withdrawn_are_named_as_why_flair_is_read_alone(client: TestClient) -> None:
    """Browser review 61 F6: a note withdrawing T1 images dropped both T1 series with a pairing error's coordinate
    triple ("has none at position (...)"), the withdrawal unsaid."""
    study = Study()
    flair = mr_series(tumor_channels(1), study, series_number=4, series_description="AX T2 FLAIR")
    pre = mr_series(tumor_channels(0), study, series_number=2, series_description="AX T1 PRE")
    post = mr_series(tumor_channels(2), study, series_number=7, series_description="AX T1 POST GAD")
    note = key_object_selection(post, post[1:2])

    response = client.post("/v1/predict/batch", files=dicom_parts([*flair, *pre, *post, note]))

    assert response.status_code == 200, response.text
    body = response.json()
    assert [item["role"] for item in body["series_used"]] == ["FLAIR"]
    assert (
        "T1 series left out: the request's rejection notes withdrew T1 images (1 of the post-contrast (series 7)), so "
        "the T1 series no longer hold a slice for every FLAIR slice; FLAIR analysed alone"
    ) in body["selection_notes"]
