"""The series endpoint chooses the series by sequence selection, never by upload order, and says which it used."""

from __future__ import annotations

import copy
import io
import itertools
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient
from pydicom.dataset import Dataset

from app.dicom.dicom_series import model_inputs, prepare_inputs
from app.dicom.dicom_sr_reader import read_volume_report
from app.inference import Predictor, SlicePrediction
from app.series.t1_on_flair_grid import turned_note
from tests.api.service_client import decode_rle
from tests.dicom.builders import Study, mr_dataset, mr_series, to_bytes, tumor_channels
from tests.dicom.reading import read_dicom
from tests.dicom.validation import dciodvfy_errors
from tests.node.node_support import dcmtk


def dicom_parts(datasets: list[Dataset]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("files", (f"IM{index:04d}", to_bytes(item), "application/dicom")) for index, item in enumerate(datasets)]


def named_study() -> dict[str, list[Dataset]]:
    """FLAIR, pre- and post-contrast T1 of one study, told apart by their names (series 4, 2, 7)."""
    study = Study()
    return {
        "flair": mr_series(tumor_channels(1), study, series_number=4, series_description="AX T2 FLAIR"),
        "pre": mr_series(tumor_channels(0), study, series_number=2, series_description="AX T1 PRE"),
        "post": mr_series(tumor_channels(2), study, series_number=7, series_description="AX T1 POST GAD"),
    }


def unnamed_study() -> dict[str, list[Dataset]]:
    """The same pixels, no names: only the sequence attributes (IR with long TI; short TR/TE; contrast agent)."""
    series = named_study()
    for role, datasets in series.items():
        for dataset in datasets:
            dataset.SeriesDescription = ""
            if role == "flair":
                dataset.ScanningSequence, dataset.InversionTime = "IR", 2500.0
                dataset.RepetitionTime, dataset.EchoTime = 9000.0, 120.0
            else:
                dataset.ScanningSequence, dataset.RepetitionTime, dataset.EchoTime = "GR", 25.0, 4.0
            if role == "post":
                dataset.ContrastBolusAgent = "GADOTERATE"
    return series


def three_channel_reference(predictor: Predictor, series: dict[str, list[Dataset]]) -> list[SlicePrediction]:
    """What the predictor says of pre, FLAIR, post stacked in that order (the model's channels)."""
    frames = [
        frame for role in ("pre", "flair", "post") for item in series[role] for frame in read_dicom(to_bytes(item))
    ]
    channels = tuple(series[role][0].SeriesInstanceUID for role in ("pre", "flair", "post"))
    return predictor.predict_preprocessed(*model_inputs(prepare_inputs(frames, channels)))


def assert_same_as(body: dict, reference: list[SlicePrediction]) -> None:
    assert len(body["slices"]) == len(reference)
    for item, expected in zip(body["slices"], reference, strict=True):
        assert item["prediction"]["tumor_probability"] == pytest.approx(expected.probability, abs=1e-6)
        np.testing.assert_array_equal(decode_rle(item["prediction"]["mask"]["rle"]), expected.mask)


def roles(body: dict) -> dict[int, str]:
    return {item["series_number"]: item["role"] for item in body["series_used"]}


def test_three_series_in_all_six_orders_give_the_same_answer(client: TestClient, predictor: Predictor) -> None:
    series = named_study()
    reference = three_channel_reference(predictor, series)
    swapped = three_channel_reference(
        predictor, {"pre": series["flair"], "flair": series["pre"], "post": series["post"]}
    )
    assert any(abs(a.probability - b.probability) > 1e-4 for a, b in zip(reference, swapped, strict=True))

    bodies = []
    for order in itertools.permutations(("flair", "pre", "post")):
        response = client.post(
            "/v1/predict/batch", files=dicom_parts([item for role in order for item in series[role]])
        )
        assert response.status_code == 200, response.text
        bodies.append(response.json())

    for body in bodies:
        assert_same_as(body, reference)
        assert [item["sop_instance_uid"] for item in body["slices"]] == [
            item.SOPInstanceUID for item in series["flair"]
        ]
        assert body["tumor_volume_ml"] == bodies[0]["tumor_volume_ml"]
        assert [item["role"] for item in body["series_used"]] == ["T1 pre-contrast", "FLAIR", "T1 post-contrast"]
        assert roles(body) == {2: "T1 pre-contrast", 4: "FLAIR", 7: "T1 post-contrast"}
        assert body["series_left_out"] == [] and body["file_errors"] == []
    flair_evidence = next(item for item in bodies[0]["series_used"] if item["role"] == "FLAIR")
    assert flair_evidence["series_description"] == "AX T2 FLAIR"
    assert flair_evidence["evidence"] == "Series Description matches *FLAIR*"


def test_the_report_of_three_series_lists_the_t1_series_in_its_evidence_and_says_they_were_read(
    client: TestClient,
) -> None:
    """Interop review 40: with the T1 series read as channels, the SEG named all three series, while the SR's evidence
    named FLAIR alone and nothing in it said T1 was read, though the T1 channels change the result."""
    series = named_study()

    response = client.post(
        "/v1/predict/batch?output=dicom-sr", files=dicom_parts([item for role in series.values() for item in role])
    )

    assert response.status_code == 200, response.text
    report = pydicom.dcmread(io.BytesIO(response.content))
    evidence = {
        sop.ReferencedSOPInstanceUID
        for study in report.CurrentRequestedProcedureEvidenceSequence
        for referenced in study.ReferencedSeriesSequence
        for sop in referenced.ReferencedSOPSequence
    }
    assert {item.SOPInstanceUID for role in series.values() for item in role} <= evidence
    assert (
        "The models read FLAIR (series 4) with T1 pre-contrast (series 2) and T1 post-contrast (series 7) as "
        "channels; the evidence lists all three."
    ) in read_volume_report(report)["notes"]
    assert dciodvfy_errors(report, "ComprehensiveSR") == []


def test_a_patient_id_that_differs_by_a_no_break_space_is_another_patient(client: TestClient) -> None:
    """Attack review 41: the API stripped a trailing no-break space (a character of ISO_IR 100, not padding) off a
    Patient ID and read one patient, where the DICOM node took the files for another; only spaces are padding."""
    series = mr_series([*tumor_channels(1), *tumor_channels(1)], Study(), series_description="AX FLAIR")
    for dataset in series:
        dataset.SpecificCharacterSet = "ISO_IR 100"
    for dataset in series[3:]:
        dataset.PatientID = f"{dataset.PatientID}\u00a0"
    padded = copy.deepcopy(series[:3])
    for dataset in padded:
        dataset.PatientID = f" {dataset.PatientID} "

    response = client.post("/v1/predict/batch", files=dicom_parts(series))
    agreeing = client.post("/v1/predict/batch", files=dicom_parts([*padded, *series[:3]]))

    assert response.status_code == 400 and response.json()["error"]["code"] == "mixed_input"
    assert "come from 2 patients (by PatientID)" in response.json()["error"]["message"]
    assert agreeing.status_code == 200, agreeing.text


@pytest.mark.parametrize("output", ["dicom-seg", "dicom-sr"])
def test_a_t1_instance_whose_uid_is_no_uid_is_refused_for_a_seg_or_sr(client: TestClient, output: str) -> None:
    """Attack review 41: a T1 instance's SOP Instance UID of 72 characters was copied into the SEG's references and the
    SR's evidence (the same UID on a FLAIR instance was refused)."""
    series = named_study()
    uid = "1.2." + "3" * 68
    series["pre"][0].SOPInstanceUID = series["pre"][0].file_meta.MediaStorageSOPInstanceUID = uid

    response = client.post(
        f"/v1/predict/batch?output={output}", files=dicom_parts([item for role in series.values() for item in role])
    )

    assert response.status_code == 400, response.text
    assert response.json()["error"]["message"] == (
        f"a DICOM {output[6:].upper()} refers to its source images by their UIDs; the T1 "
        f"{'slices' if output == 'dicom-seg' else 'images'} lack SOPInstanceUID or hold one that is no UID (digits "
        "and dots, at most 64 characters)"
    )
    assert uid not in response.text


def test_series_without_names_are_mapped_by_their_sequence_attributes(client: TestClient, predictor: Predictor) -> None:
    series = unnamed_study()
    wrong_order = [*series["post"], *series["flair"], *series["pre"]]

    response = client.post("/v1/predict/batch", files=dicom_parts(wrong_order))

    assert response.status_code == 200, response.text
    body = response.json()
    assert roles(body) == {2: "T1 pre-contrast", 4: "FLAIR", 7: "T1 post-contrast"}
    assert_same_as(body, three_channel_reference(predictor, series))
    evidence = {item["role"]: item["evidence"] for item in body["series_used"]}
    assert evidence["FLAIR"] == "inversion recovery with Inversion Time 2500 ms"
    assert "Contrast/Bolus attributes filled in" in evidence["T1 post-contrast"]


def test_seg_answer_names_the_series_used(client: TestClient) -> None:
    series = named_study()

    response = client.post(
        "/v1/predict/batch?output=dicom-seg", files=dicom_parts([*series["post"], *series["flair"], *series["pre"]])
    )

    assert response.status_code == 200
    assert response.headers["X-Series-Used"] == "FLAIR=4; T1 pre-contrast=2; T1 post-contrast=7"
    assert response.headers["X-Files-Left-Out"] == "0"
    response.headers["X-Series-Used"].encode("ascii")


@pytest.mark.parametrize("output", ["json", "dicom-seg"])
def test_one_t1_series_is_not_analysed(client: TestClient, output: str) -> None:
    t1 = mr_series(tumor_channels(0), series_number=3, series_description="AX T1 SE")

    response = client.post(f"/v1/predict/batch?output={output}", files=dicom_parts(t1))

    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "no_flair_series"
    assert error["message"] == (
        "the request's one series (number 3) is T1 pre-contrast (Series Description matches *T1*; no contrast agent "
        "stated); the models read FLAIR, so it is not analysed"
    )


def test_one_t1_instance_is_not_analysed_on_the_slice_endpoint(client: TestClient) -> None:
    (t1,) = mr_series(tumor_channels(0)[:1], series_description="AX T1 POST GAD")

    response = client.post("/v1/predict", files={"file": ("IM0001", to_bytes(t1), "application/dicom")})

    assert response.status_code == 422
    assert response.json()["error"]["code"] == "no_flair_series"


def test_t1_pair_without_flair_is_not_analysed(client: TestClient) -> None:
    series = named_study()

    response = client.post("/v1/predict/batch", files=dicom_parts([*series["post"], *series["pre"]]))

    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "no_flair_series"
    assert error["message"].startswith(
        "the request's files span 2 series and none is FLAIR: the study has no FLAIR series (the models read FLAIR); "
        "found: T1 pre-contrast (Series Description matches *T1*; no contrast agent stated), T1 post-contrast "
        "(Series Description matches *T1*;"
    )


def series_that_says_nothing(series_number: int = 5) -> list[Dataset]:
    """The tumor slices as one series with neither a name nor a Scanning Sequence: nothing says its contrast."""
    datasets = mr_series(tumor_channels(), series_number=series_number, series_description="")
    for dataset in datasets:
        del dataset.ScanningSequence
    return datasets


def test_one_unnamed_series_is_still_read_as_flair(client: TestClient, predictor: Predictor) -> None:
    datasets = series_that_says_nothing()
    files = [to_bytes(item) for item in datasets]

    response = client.post("/v1/predict/batch", files=dicom_parts(datasets))

    assert response.status_code == 200, response.text
    body = response.json()
    frames = [frame for data in files for frame in read_dicom(data)]
    assert_same_as(body, predictor.predict_preprocessed(*model_inputs(prepare_inputs(frames))))
    (used,) = body["series_used"]
    assert (used["role"], used["series_number"], used["files"]) == ("FLAIR", 5, [0, 1, 2])
    assert used["evidence"] == (
        "the request's only series, taken as FLAIR (neither name nor sequence attributes say FLAIR or T1)"
    )
    assert body["selection_notes"] == [
        "the only series (number 5, localizers aside) says neither FLAIR nor another contrast by its name or sequence "
        "attributes: read as FLAIR, the contrast the models read; check that it is FLAIR"
    ]


@pytest.mark.parametrize(
    ("description", "scanning_sequence", "evidence"),
    [
        ("Ax DWI", "SE", "Series Description matches *DWI*: another contrast, neither FLAIR nor T1"),
        ("SWI_Images", "GR", "Series Description matches *SWI*: another contrast, neither FLAIR nor T1"),
        ("AX T2 FSE", "SE", "Scanning Sequence SE, no inversion recovery: neither FLAIR nor T1"),
    ],
)
def test_one_series_of_another_contrast_is_not_analysed(
    client: TestClient, description: str, scanning_sequence: str, evidence: str
) -> None:
    """Read as FLAIR, a diffusion or T2 series came back with a tumor volume; pacs-sync and the node refused the
    same series (review finding: the paths disagreed)."""
    datasets = mr_series(tumor_channels(), series_number=6, series_description=description)
    for dataset in datasets:
        dataset.ScanningSequence = scanning_sequence

    response = client.post("/v1/predict/batch", files=dicom_parts(datasets))

    assert response.status_code == 422
    assert response.json()["error"] == {
        "code": "no_flair_series",
        "message": f"the request's one series (number 6) is another contrast ({evidence}); the models read FLAIR, "
        "so it is not analysed",
    }


def test_files_of_other_series_are_left_out_and_reported(client: TestClient) -> None:
    study = Study()
    flair = mr_series(tumor_channels(1), study, series_number=4, series_description="AX T2 FLAIR")
    other = mr_series(tumor_channels(0)[:2], study, series_number=9, series_description="DWI B1000")

    response = client.post("/v1/predict/batch", files=dicom_parts([*other, *flair]))

    assert response.status_code == 200, response.text
    body = response.json()
    assert [item["sop_instance_uid"] for item in body["slices"]] == [item.SOPInstanceUID for item in flair]
    assert body["file_errors"] == []
    (left_out,) = body["series_left_out"]
    assert (left_out["role"], left_out["series_number"], left_out["files"]) == ("other", 9, [0, 1])
    seg = client.post("/v1/predict/batch?output=dicom-seg", files=dicom_parts([*other, *flair]))
    assert seg.headers["X-Files-Left-Out"] == "2" and seg.headers["X-Files-Skipped"] == "0"
    assert seg.headers["X-Series-Used"] == "FLAIR=4"


def test_t1_slices_of_another_pixel_spacing_leave_flair_alone(client: TestClient) -> None:
    """T1 slices of 0.75 mm pixels were stacked pixel for pixel onto 0.9375 mm FLAIR slices, without a note (attack
    review 28, finding 8)."""
    series = named_study()
    for dataset in (*series["pre"], *series["post"]):
        dataset.PixelSpacing = [0.75, 0.75]

    response = client.post("/v1/predict/batch", files=dicom_parts([*series["pre"], *series["flair"], *series["post"]]))

    assert response.status_code == 200, response.text
    body = response.json()
    assert roles(body) == {4: "FLAIR"}
    (note,) = body["selection_notes"]
    assert note == (
        "T1 series left out: the pre-contrast (series 2) has a pixel spacing of 0.75 mm; the post-contrast (series 7) "
        "has a pixel spacing of 0.75 mm, FLAIR 0.9375 mm: the T1 slices must share FLAIR's pixel grid; FLAIR analysed "
        "alone"
    )  # browser review 60 F8: the check's tuples and a coordinate named no series; review 65 F2: not "stored turned"


def test_the_one_t1_series_at_another_pixel_spacing_is_the_one_named(client: TestClient) -> None:
    """Browser review 60 F8: T1 post-contrast at its own resolution (common) had both T1 series blamed alike."""
    series = named_study()
    for dataset in series["post"]:
        dataset.PixelSpacing = [0.9, 0.9]

    response = client.post("/v1/predict/batch", files=dicom_parts([*series["pre"], *series["flair"], *series["post"]]))

    (note,) = response.json()["selection_notes"]
    assert note == (
        "T1 series left out: the post-contrast (series 7) has a pixel spacing of 0.9 mm, FLAIR 0.9375 mm: the T1 "
        "slices must share FLAIR's pixel grid; FLAIR analysed alone"
    )


def test_orientations_the_pairing_takes_for_one_are_not_said_to_be_stored_turned(client: TestClient) -> None:
    """Review 66 F3: 0.0005 of rounding in a T1 series' orientation, which slice pairing takes for the same plane,
    was said to be a series stored turned."""
    series = named_study()
    for dataset in (*series["pre"], *series["post"]):
        dataset.PixelSpacing = [0.75, 0.75]
        dataset.ImageOrientationPatient = [1.0, 0.0005, 0.0, 0.0, 1.0, 0.0]

    response = client.post("/v1/predict/batch", files=dicom_parts([*series["pre"], *series["flair"], *series["post"]]))

    (note,) = response.json()["selection_notes"]
    assert "must share FLAIR's pixel grid" in note and "stored turned" not in note


def store_otherwise(dataset: Dataset, layout: str, margin: int = 0) -> None:
    """Store an axial slice in another `layout` of the same points (turned, flipped, transposed), over a field of view
    `margin` pixels larger on every side (filled with 0), its orientation and first-pixel position told to match."""
    pixels = dataset.pixel_array
    spacing = float(dataset.PixelSpacing[0])  # square pixels in these series
    x0, y0, z = (float(value) for value in dataset.ImagePositionPatient)
    if margin:
        pixels = np.pad(pixels, margin)
        x0, y0 = x0 - margin * spacing, y0 - margin * spacing
    rows, columns = pixels.shape
    x_end, y_end = x0 + (columns - 1) * spacing, y0 + (rows - 1) * spacing
    stored, orientation, first = {
        "as stored": (pixels, [1, 0, 0, 0, 1, 0], (x0, y0)),
        "rows flipped": (pixels[::-1], [1, 0, 0, 0, -1, 0], (x0, y_end)),
        "columns flipped": (pixels[:, ::-1], [-1, 0, 0, 0, 1, 0], (x_end, y0)),
        "turned 180": (pixels[::-1, ::-1], [-1, 0, 0, 0, -1, 0], (x_end, y_end)),
        "transposed": (pixels.T, [0, 1, 0, 1, 0, 0], (x0, y0)),
        "turned 90": (np.rot90(pixels), [0, 1, 0, -1, 0, 0], (x_end, y0)),
    }[layout]
    dataset.PixelData = np.ascontiguousarray(stored).tobytes()
    dataset.Rows, dataset.Columns = stored.shape
    dataset.ImageOrientationPatient = [float(value) for value in orientation]
    dataset.ImagePositionPatient = [first[0], first[1], z]


@pytest.mark.parametrize(
    ("layout", "margin"),
    [
        ("rows flipped", 0),
        ("columns flipped", 0),
        ("turned 180", 0),
        ("transposed", 0),
        ("turned 90", 0),
        ("as stored", 3),
        ("turned 90", 2),
    ],
)
def test_t1_series_stored_otherwise_in_flairs_planes_are_read_in_flairs_layout(
    client: TestClient, predictor: Predictor, layout: str, margin: int
) -> None:
    """Interop review 59 F1: T1 series in FLAIR's very planes, stored flipped, turned or over a larger field of view,
    were left out (FLAIR read alone). Their pixels are the same points: read in FLAIR's layout, the answer is the
    one for T1 series stored as FLAIR is, and the selection says so."""
    series = named_study()
    reference = three_channel_reference(predictor, series)
    for dataset in (*series["pre"], *series["post"]):
        store_otherwise(dataset, layout, margin)

    response = client.post("/v1/predict/batch", files=dicom_parts([*series["pre"], *series["flair"], *series["post"]]))

    assert response.status_code == 200, response.text
    body = response.json()
    assert roles(body) == {2: "T1 pre-contrast", 4: "FLAIR", 7: "T1 post-contrast"}
    assert body["selection_notes"] == [turned_note(["pre-contrast (series 2)", "post-contrast (series 7)"])]
    assert_same_as(body, reference)
    assert [item["sop_instance_uid"] for item in body["slices"]] == [item.SOPInstanceUID for item in series["flair"]]


def test_the_note_names_the_t1_series_read_in_flairs_layout(client: TestClient, predictor: Predictor) -> None:
    """Browser review 59 F2: with only the pre-contrast series stored flipped, the note said "the T1 series"."""
    series = named_study()
    reference = three_channel_reference(predictor, series)
    for dataset in series["pre"]:
        store_otherwise(dataset, "columns flipped")

    response = client.post("/v1/predict/batch", files=dicom_parts([*series["pre"], *series["flair"], *series["post"]]))

    body = response.json()
    assert body["selection_notes"] == [turned_note(["pre-contrast (series 2)"])]
    assert body["selection_notes"][0].startswith("T1 pre-contrast (series 2) is stored turned, flipped or over")
    assert_same_as(body, reference)


def test_t1_series_stored_turned_at_another_pixel_spacing_are_said_to_be(client: TestClient) -> None:
    """T1 series in FLAIR's planes, stored flipped and at another pixel spacing, cannot be read in FLAIR's layout
    without resampling: FLAIR is read alone, and the note says why in terms a PACS user can act on."""
    series = named_study()
    for dataset in (*series["pre"], *series["post"]):
        store_otherwise(dataset, "rows flipped")
        dataset.PixelSpacing = [0.75, 0.75]
        x, _, z = (float(value) for value in dataset.ImagePositionPatient)
        dataset.ImagePositionPatient = [x, -120.0 + (int(dataset.Rows) - 1) * 0.75, z]

    response = client.post("/v1/predict/batch", files=dicom_parts([*series["pre"], *series["flair"], *series["post"]]))

    assert response.status_code == 200, response.text
    body = response.json()
    assert roles(body) == {4: "FLAIR"}
    (note,) = body["selection_notes"]
    assert "the T1 series lie in FLAIR's planes but are stored turned, flipped or over another field of view" in note


@pytest.mark.parametrize("layout", ["as stored", "turned 90"])
def test_t1_series_in_another_frame_of_reference_are_said_to_be(client: TestClient, layout: str) -> None:
    """Interop review 60 F3: T1 series in another Frame of Reference, stored turned, were said to be at another pixel
    spacing or not to cover FLAIR's field of view; stored like FLAIR, the note named no cause."""
    series = named_study()
    for dataset in (*series["pre"], *series["post"]):
        store_otherwise(dataset, layout)
        dataset.FrameOfReferenceUID = "1.2.826.0.1.3680043.8.498.60"

    response = client.post("/v1/predict/batch", files=dicom_parts([*series["pre"], *series["flair"], *series["post"]]))

    assert response.status_code == 200, response.text
    body = response.json()
    assert roles(body) == {4: "FLAIR"}
    (note,) = body["selection_notes"]
    assert note == (
        "T1 series left out: the T1 series are in another Frame of Reference than FLAIR (Frame of Reference UID): "
        "their positions cannot be compared with FLAIR's; FLAIR analysed alone"
    )  # browser review 59 F2: not after a frame count at a corner that was not true either


def test_t1_slices_that_do_not_pair_leave_flair_alone(client: TestClient, predictor: Predictor) -> None:
    series = named_study()
    series["post"] = series["post"][:2]  # the post-contrast series misses a slice position

    response = client.post("/v1/predict/batch", files=dicom_parts([*series["pre"], *series["flair"], *series["post"]]))

    assert response.status_code == 200, response.text
    body = response.json()
    assert roles(body) == {4: "FLAIR"}
    assert {item["series_number"] for item in body["series_left_out"]} == {2, 7}
    (note,) = body["selection_notes"]
    assert note.startswith("T1 series left out: their slices do not pair with FLAIR's")
    assert "stored turned" not in note  # review 65 F2: a slice is missing, none is stored otherwise
    assert "the post-contrast series has none at position" in note  # browser review 59 F2: which series
    frames = [frame for item in series["flair"] for frame in read_dicom(to_bytes(item))]
    assert_same_as(body, predictor.predict_preprocessed(*model_inputs(prepare_inputs(frames))))


@pytest.mark.parametrize("missing", [0, 1, 2])
def test_a_flair_slice_missing_leaves_out_only_the_t1_frames_beside_it(
    client: TestClient, predictor: Predictor, missing: int
) -> None:
    """Interop review 37: one FLAIR file missing (or unreadable) left its two T1 frames unpaired, and every slice
    was read FLAIR alone, with a note blaming the slices' geometry. Attack review 38: the middle one missing, the two
    left (10 mm apart) counted no slice missing and took 10 mm as their spacing; their files declare 5 mm."""
    series = named_study()
    flair = [item for index, item in enumerate(series["flair"]) if index != missing]

    response = client.post("/v1/predict/batch", files=dicom_parts([*series["pre"], *flair, *series["post"]]))

    assert response.status_code == 200, response.text
    body = response.json()
    assert roles(body) == {2: "T1 pre-contrast", 4: "FLAIR", 7: "T1 post-contrast"}
    (note,) = body["selection_notes"]
    if missing == 1:
        assert note.startswith("2 T1 frames between FLAIR slices, where no FLAIR slice was read, left out (a FLAIR")
    else:  # the first or last FLAIR slice: nothing says it is missing rather than the T1 series reaching further
        assert note == "2 T1 frames beyond the FLAIR slices' ends left out (the T1 series reach further)"
    assert body["slices_missing"] == (1 if missing == 1 else 0)
    kept = {
        "flair": flair,
        **{role: [item for i, item in enumerate(series[role]) if i != missing] for role in ("pre", "post")},
    }
    assert_same_as(body, three_channel_reference(predictor, kept))


def test_t1_series_that_reach_further_or_are_sliced_finer_are_not_said_to_miss_a_flair_slice(
    client: TestClient,
) -> None:
    """Attack review 38: T1 series reaching further than FLAIR (a slice at 15 mm) or sliced at 2.5 mm against FLAIR's
    5 mm got a note saying a FLAIR file might be missing where none was."""
    series = named_study()
    study = Study(series["flair"][0].StudyInstanceUID, series["flair"][0].FrameOfReferenceUID)

    def with_t1_slice_at(position_mm: float) -> list[Dataset]:
        files = [*series["flair"]]
        for role in ("pre", "post"):
            first = series[role][0]
            extra = mr_dataset(
                tumor_channels(0)[0],
                study,
                first.SeriesInstanceUID,
                4,
                position_mm,
                first.SeriesNumber,
                first.SeriesDescription,
            )
            files += [*series[role], extra]
        return files

    reach = client.post("/v1/predict/batch", files=dicom_parts(with_t1_slice_at(15.0)))
    fine = client.post("/v1/predict/batch", files=dicom_parts(with_t1_slice_at(2.5)))

    assert reach.status_code == 200 and fine.status_code == 200, (reach.text, fine.text)
    assert reach.json()["selection_notes"] == [
        "2 T1 frames beyond the FLAIR slices' ends left out (the T1 series reach further)"
    ]
    assert fine.json()["selection_notes"] == [
        "2 T1 frames between FLAIR slices, where no FLAIR slice was read, left out (a FLAIR file missing or "
        "unreadable there, or T1 sliced more finely)"
    ]
    assert reach.json()["slices_missing"] == fine.json()["slices_missing"] == 0


def test_t1_series_that_cannot_be_decoded_leave_flair_alone_with_the_files_reason(
    client: TestClient, tmp_path: Path
) -> None:
    """Interop review 35: T1 series in 12-bit JPEG Extended (no decoder here) were left out with a note blaming
    their slices' geometry."""
    series = named_study()
    t1_files = []
    for dataset in (*series["pre"], *series["post"]):
        dataset.PixelData = (dataset.pixel_array.astype(np.uint16) * 16).tobytes()
        dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit = 16, 12, 11
        plain, compressed = tmp_path / "plain.dcm", tmp_path / f"{dataset.SOPInstanceUID}.dcm"
        plain.write_bytes(to_bytes(dataset))
        subprocess.run([dcmtk("dcmcjpeg"), "+ee", str(plain), str(compressed)], check=True, capture_output=True)
        t1_files.append(("files", (compressed.name, compressed.read_bytes(), "application/dicom")))

    response = client.post("/v1/predict/batch", files=[*t1_files, *dicom_parts(series["flair"])])

    assert response.status_code == 200, response.text
    body = response.json()
    assert roles(body) == {4: "FLAIR"}
    assert len(body["file_errors"]) == len(t1_files)
    (note,) = body["selection_notes"]
    assert note.startswith("T1 series left out: none of a T1 series' files could be read (DICOM transfer syntax JPEG")


def test_a_blank_t1_series_leaves_flair_alone_and_a_blank_flair_series_is_refused(
    client: TestClient, predictor: Predictor
) -> None:
    """attack23: a series with one value in every pixel was answered "no tumor", and the node sent an Absent SR."""
    series = named_study()
    for dataset in series["post"]:
        dataset.PixelData = bytes(len(dataset.PixelData))  # every pixel 0

    response = client.post("/v1/predict/batch", files=dicom_parts([*series["pre"], *series["flair"], *series["post"]]))

    assert response.status_code == 200, response.text
    body = response.json()
    assert roles(body) == {4: "FLAIR"}
    (note,) = body["selection_notes"]
    assert note.startswith("T1 series left out: a T1 series holds one value in every pixel")
    frames = [frame for item in series["flair"] for frame in read_dicom(to_bytes(item))]
    assert_same_as(body, predictor.predict_preprocessed(*model_inputs(prepare_inputs(frames))))

    for dataset in series["flair"]:
        dataset.PixelData = b"\x09" * len(dataset.PixelData)  # every pixel one value
    refused = client.post("/v1/predict/batch", files=dicom_parts(series["flair"]))
    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "invalid_dicom_image"
    assert "the FLAIR series holds one value in every pixel" in refused.json()["error"]["message"]
    single = client.post("/v1/predict", files={"file": ("a.dcm", to_bytes(series["flair"][0]), "application/dicom")})
    assert single.status_code == 200  # one black slice alone (above the head) is still answered


@pytest.mark.parametrize("output", ["json", "dicom-seg"])
def test_files_of_two_studies_or_patients_are_refused_not_mixed(client: TestClient, output: str) -> None:
    """Attack finding: a tumor FLAIR series and another study's tumor-free FLAIR series were answered from the
    second ("no tumor"), the first only listed as left out."""
    first = mr_series(tumor_channels(1), Study(), series_number=1, series_description="AX FLAIR")
    second = mr_series(tumor_channels(1), Study(), series_number=1, series_description="AX FLAIR")
    other_patient = mr_series(tumor_channels(1), Study(), series_number=2, series_description="AX FLAIR")
    for dataset in other_patient:
        dataset.StudyInstanceUID, dataset.PatientID = first[0].StudyInstanceUID, "OTHER-PATIENT"

    studies = client.post(f"/v1/predict/batch?output={output}", files=dicom_parts(first + second))
    patients = client.post(f"/v1/predict/batch?output={output}", files=dicom_parts(first + other_patient))

    assert studies.status_code == 400 and studies.json()["error"]["code"] == "mixed_input"
    assert studies.json()["error"]["message"] == (
        "the request's DICOM files come from 2 studies (by StudyInstanceUID): the request's files at index 3, 4, 5 "
        "(files 4, 5, 6 as sent; series 1: instances 1, 2, 3) differ from the other 3; send one study per request: "
        "the series the models read are chosen within it"
    )
    # The files that differ from the most are named (browser review 39: one odd file of 150 could not be found).
    many = client.post(f"/v1/predict/batch?output={output}", files=dicom_parts(first + first + other_patient[:1]))
    assert (
        "come from 2 patients (by PatientID): the request's file at index 6 (file 7 as sent; series 2: instance 1) "
        "differs" in many.text
    )
    assert patients.status_code == 400 and "come from 2 patients (by PatientID)" in patients.json()["error"]["message"]
    assert "OTHER-PATIENT" not in patients.text


@pytest.mark.parametrize(
    ("keyword", "value", "message"),
    [
        (
            "PatientID",
            "",
            "1 of the 3 DICOM files read have no PatientID and the others one (the request's file at index",
        ),
        (
            "IssuerOfPatientID",
            "HOSP-B",
            "the FLAIR files read come from 2 patients (by IssuerOfPatientID): the request's file at index",
        ),
        ("IssuerOfPatientID", "", "1 of the 3 FLAIR files read have no IssuerOfPatientID and the others one"),
    ],
)
@pytest.mark.parametrize("output", ["json", "dicom-seg"])
def test_files_whose_patient_identity_is_partly_missing_or_of_another_issuer_are_refused(
    client: TestClient, output: str, keyword: str, value: str, message: str
) -> None:
    """Attack review 38: a file with an empty Patient ID, or another Issuer of Patient ID, among a series passed
    without a word, and the SEG and SR were filed under whichever file came first (an empty Patient ID, or
    HOSP-A or HOSP-B), with UIDs that depended on the order the files were sent in."""
    series = mr_series(tumor_channels(1), Study(), series_description="AX FLAIR")
    for dataset in series:
        dataset.IssuerOfPatientID = "HOSP-A"
    setattr(series[0], keyword, value)

    for order in (series, series[::-1]):
        response = client.post(f"/v1/predict/batch?output={output}", files=dicom_parts(order))

        assert response.status_code == 400, response.text
        assert response.json()["error"]["code"] == "mixed_input"
        assert response.json()["error"]["message"].startswith(message)
        assert "HOSP" not in response.text
    for dataset in series:
        setattr(dataset, keyword, value)
    agreeing = client.post(f"/v1/predict/batch?output={output}", files=dicom_parts(series))
    assert agreeing.status_code == 200, agreeing.text


def test_a_series_left_out_without_an_issuer_of_patient_id_does_not_refuse_the_study(client: TestClient) -> None:
    """Attack review 39: a FLAIR series with an Issuer of Patient ID was refused beside a T2 series of the same Patient
    ID without one (Type 3: another device's series often leave it out), which would only have been left out."""
    study = Study()
    flair = mr_series(tumor_channels(1), study, series_number=4, series_description="AX FLAIR")
    t2 = mr_series(tumor_channels(1), study, series_number=5, series_description="AX T2 TSE")
    for dataset in flair:
        dataset.IssuerOfPatientID = "HOSP-A"

    response = client.post("/v1/predict/batch", files=dicom_parts([*flair, *t2]))

    assert response.status_code == 200, response.text
    assert [use["series_number"] for use in response.json()["series_used"]] == [4]
    assert [use["series_number"] for use in response.json()["series_left_out"]] == [5]


@pytest.mark.parametrize("localizer_issuer", ["SCANNER2", ""])
def test_a_series_left_out_with_another_issuer_or_none_does_not_refuse_the_study(
    client: TestClient, localizer_issuer: str
) -> None:
    """Interop review 39 F3: a one-slice localizer from another device, with its own Issuer of Patient ID, refused
    the study through the API ("2 patients") while the node and pacs-sync, which read the chosen series only,
    analysed it."""
    study = Study()
    flair = mr_series(tumor_channels(1), study, series_number=4, series_description="AX FLAIR")
    localizer = mr_series(tumor_channels(1)[:1], study, series_number=1, series_description="LOCALIZER")
    for dataset in flair:
        dataset.IssuerOfPatientID = "HOSP"
    localizer[0].IssuerOfPatientID = localizer_issuer

    response = client.post("/v1/predict/batch", files=dicom_parts([*flair, *localizer]))

    assert response.status_code == 200, response.text
    assert [use["series_number"] for use in response.json()["series_used"]] == [4]


def test_t1_series_with_an_issuer_beside_a_flair_series_without_one_are_read(
    client: TestClient, predictor: Predictor
) -> None:
    """Interop review 39 F4: FLAIR without an Issuer of Patient ID beside T1 series with one refused the study; the SEG
    and SR carry FLAIR's identity, which is one."""
    series = named_study()
    for role in ("pre", "post"):
        for dataset in series[role]:
            dataset.IssuerOfPatientID = "HOSP"

    response = client.post("/v1/predict/batch", files=dicom_parts([*series["pre"], *series["flair"], *series["post"]]))

    assert response.status_code == 200, response.text
    assert roles(response.json()) == {2: "T1 pre-contrast", 4: "FLAIR", 7: "T1 post-contrast"}
    assert_same_as(response.json(), three_channel_reference(predictor, series))


def test_files_of_one_patient_id_that_disagree_on_name_or_birth_date_are_answered_with_a_note(
    client: TestClient,
) -> None:
    """attack25: three slices of one Patient ID with three names and birth dates were analysed without a word, and the
    SEG and SR carried one of them. Not refused (a corrected name is common), noted, without the values; a name
    written with other empty components or case is the same name."""
    series = mr_series(tumor_channels(1), Study(), series_description="AX FLAIR")
    same = copy.deepcopy(series)  # Dataset.copy shares its elements: setting a value would change both
    for index, dataset in enumerate(series):
        dataset.PatientName, dataset.PatientBirthDate = f"MIXED^NAME{index}", f"197{index}0101"
    for dataset, name in zip(same, ["DOE^JOHN", "doe^john^^", "DOE^JOHN^^^"], strict=True):
        dataset.PatientName, dataset.PatientBirthDate = name, "19700101"

    mixed = client.post("/v1/predict/batch", files=dicom_parts(series))
    consistent = client.post("/v1/predict/batch", files=dicom_parts(same))

    assert mixed.status_code == 200, mixed.text
    assert mixed.json()["selection_notes"] == [
        "the files disagree on the patient's name and birth date under one Patient ID (a SEG or SR carries one "
        "file's): check the study's identity"
    ]
    # the whole values: "1971" alone turned up by chance in a random SOP Instance UID of the answer
    assert "MIXED" not in mixed.text and not any(f"197{index}0101" in mixed.text for index in range(3))
    assert consistent.status_code == 200 and consistent.json()["selection_notes"] == []


def test_a_localizer_beside_the_three_series_is_left_out_with_its_reason(client: TestClient) -> None:
    """dicom22 finding 4: a 3-plane localizer (GR, TR 8.6 / TE 4) counted as a second pre-contrast T1, and the
    three-channel mode went off ("found 2 pre-contrast and 1 post-contrast")."""
    series = named_study()
    study = Study(series["flair"][0].StudyInstanceUID, series["flair"][0].FrameOfReferenceUID)
    localizer = mr_series(tumor_channels(1), study, series_number=1, series_description="localizer")
    planes = ([1, 0, 0, 0, 1, 0], [0, 1, 0, 0, 0, -1], [1, 0, 0, 0, 0, -1])
    for dataset, orientation in zip(localizer, planes, strict=True):
        dataset.ImageOrientationPatient = [float(value) for value in orientation]
        dataset.ScanningSequence, dataset.RepetitionTime, dataset.EchoTime = "GR", 8.6, 4.0

    response = client.post(
        "/v1/predict/batch", files=dicom_parts([*localizer, *series["flair"], *series["pre"], *series["post"]])
    )

    assert response.status_code == 200, response.text
    body = response.json()
    assert roles(body) == {2: "T1 pre-contrast", 4: "FLAIR", 7: "T1 post-contrast"}
    assert body["selection_notes"] == []
    (left_out,) = body["series_left_out"]
    assert (left_out["role"], left_out["series_number"], left_out["files"]) == ("other", 1, [0, 1, 2])
    assert left_out["evidence"] == "Series Description matches *LOC*: a localizer (planning scan), never a channel"


def test_a_sagittal_flair_series_alone_is_answered_with_a_note(client: TestClient) -> None:
    """dicom22 finding 7: a sagittal reslice scored Dice 0.80 against 0.89 for the same patient's axial series, and
    the answer said nothing."""
    datasets = mr_series(tumor_channels(), series_number=5, series_description="SAG FLAIR")
    for index, dataset in enumerate(datasets):
        dataset.ImageOrientationPatient = [0.0, 1.0, 0.0, 0.0, 0.0, -1.0]
        dataset.ImagePositionPatient = [-5.0 * index, -120.0, 120.0]

    response = client.post("/v1/predict/batch", files=dicom_parts(datasets))

    assert response.status_code == 200, response.text
    body = response.json()
    assert len(body["slices"]) == 3
    assert body["selection_notes"] == [
        "the FLAIR series (number 5) has sagittal slices (90 degrees from axial by Image Orientation (Patient)): the "
        "models learned axial slices, so accuracy may be lower"
    ]


def test_a_flair_file_without_orientation_beside_t1_that_does_not_pair_is_answered_not_a_500(
    client: TestClient,
) -> None:
    """Review 70 F3: a FLAIR frame without Image Orientation (Patient) was placed along the series' normal, and the
    note on why the T1 series do not pair then met its missing normal: 500."""
    series = named_study()
    for dataset in (*series["pre"], *series["post"]):
        dataset.PixelSpacing = [0.75, 0.75]  # the pairing fails: the note is asked why
    del series["flair"][1].ImageOrientationPatient

    response = client.post("/v1/predict/batch", files=dicom_parts([*series["pre"], *series["flair"], *series["post"]]))

    assert response.status_code < 500, response.text


def test_t1_stored_flipped_pairs_beside_a_flair_with_two_fields_of_view_in_one_plane(client: TestClient) -> None:
    """Review 70 F8: two FLAIR frames in one plane at different in-plane positions are two slices, not a refused
    series, yet the pairing of T1 stored flipped was skipped for them (FLAIR analysed alone)."""
    rng = np.random.default_rng(7)
    study, size, files = Study(), 64, []
    for number, name in ((4, "AX T2 FLAIR"), (2, "AX T1 PRE"), (7, "AX T1 POST GAD")):
        series_uid = pydicom.uid.generate_uid()
        # three slices 5 mm apart, and a fourth in the first one's plane, 20 mm to the right (another field of view)
        for index, (z, shift) in enumerate(((0.0, 0.0), (5.0, 0.0), (10.0, 0.0), (0.0, 20.0))):
            pixels = rng.integers(0, 1000, (size, size), dtype=np.uint16)
            dataset = mr_dataset(pixels, study, series_uid, index + 1, z, number, name)
            x, y, z_mm = (float(value) for value in dataset.ImagePositionPatient)
            dataset.ImagePositionPatient = [x + shift, y, z_mm]
            if number != 4:  # T1 stored flipped against FLAIR: the same points, read in FLAIR's layout
                dataset.PixelData = np.ascontiguousarray(pixels[::-1]).tobytes()
                dataset.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, -1.0, 0.0]
                dataset.ImagePositionPatient = [x + shift, y + (size - 1) * float(dataset.PixelSpacing[0]), z_mm]
            files.append(dataset)

    response = client.post("/v1/predict/batch", files=dicom_parts(files))

    assert response.status_code == 200, response.text
    notes = response.json()["selection_notes"]
    assert not any("FLAIR analysed alone" in note for note in notes), notes
    assert any("read in FLAIR's layout" in note for note in notes), notes
