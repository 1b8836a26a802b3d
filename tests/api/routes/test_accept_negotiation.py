"""Accept on the predict endpoints: media ranges with q weights choose JSON, a DICOM SEG, or the SEG and SR."""

from __future__ import annotations

import io

import pydicom
import pytest
from fastapi.testclient import TestClient

from app.api.content_negotiation import MediaRange, parse_accept, requested_outputs, servable_output
from app.schemas import OutputFormat
from tests.conftest import TUMOR_SLICE
from tests.dicom.builders import mr_series, to_bytes, tumor_channels

JSON, SEG, SEG_SR = OutputFormat.JSON, OutputFormat.DICOM_SEG, OutputFormat.DICOM_SEG_SR


@pytest.fixture(scope="module")
def dicom_instance() -> bytes:
    """One single-frame MR instance built from a committed tumor slice's FLAIR channel."""
    return to_bytes(mr_series(tumor_channels()[:1])[0])


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        # Found by the attack review: each once gave a SEG (or, the last, the multipart answer).
        ("application/dicom+json", JSON),
        ("application/dicom;q=0", JSON),
        ("application/json, application/dicom;q=0", JSON),
        ("application/json;q=1, application/dicom;q=0.1", JSON),
        ("text/html, application/dicom+xml", JSON),
        ('multipart/related; type="application/dicom+xml"', JSON),
        # Naming DICOM still asks for it.
        ("application/dicom", SEG),
        ('multipart/related; type="application/dicom"', SEG_SR),
        ("multipart/related; type=application/dicom", SEG_SR),
        ("Application/DICOM", SEG),
        ('Multipart/Related; TYPE="Application/Dicom"', SEG_SR),
        ("  application/dicom ;  q=0.5  ", SEG),
        ("application/json , application/dicom", SEG),
        ('multipart/related; type="application/dicom", application/dicom', SEG_SR),
        # Wildcards, no header and nothing acceptable give JSON.
        ("*/*", JSON),
        (None, JSON),
        ("", JSON),
        ("application/*", JSON),
        ("image/png", JSON),
        ("multipart/related", JSON),
        ("application/json;q=0, application/dicom;q=0", JSON),
        # Highest q wins, both ways.
        ("application/dicom;q=0.9, application/json", JSON),
        ("application/json;q=0.5, application/dicom", SEG),
        ('application/json;q=0.2, multipart/related; type="application/dicom";q=0.3', SEG_SR),
        ('multipart/related; type="application/dicom";q=0.4, application/dicom;q=0.6', SEG),
        ("*/*, application/dicom;q=0.5", JSON),
        ("image/png, application/dicom;q=0.1", SEG),
        # JSON takes the q of its most specific range.
        ("application/json;q=0.1, */*, application/dicom;q=0.5", SEG),
        # A malformed range is left out.
        ("application/dicom;q=abc", JSON),
        ("application/dicom;q=1.5, application/json;q=0.1", JSON),
        ("application/dicom;q=nan", JSON),
        ("dicom", JSON),
    ],
)
def test_accept_header_chooses_the_output(accept: str | None, expected: OutputFormat) -> None:
    assert requested_outputs(JSON, accept)[0] is expected
    assert requested_outputs(JSON, accept)[-1] is JSON  # what any input can have


@pytest.mark.parametrize("output", [SEG, OutputFormat.DICOM_SR, SEG_SR])
def test_output_query_wins_over_accept(output: OutputFormat) -> None:
    assert requested_outputs(output, "application/json") == [output]


@pytest.mark.parametrize(
    ("choices", "dicom_input", "series", "expected"),
    [
        ([SEG_SR, SEG, JSON], True, True, SEG_SR),
        ([SEG_SR, SEG, JSON], True, False, SEG),  # SEG and SR report on a series: /v1/predict/batch only
        ([SEG, JSON], False, False, JSON),  # attack review 32: a PNG with Accept preferring a SEG was refused
        ([SEG], False, False, SEG),  # an explicit output= stays, and is refused with its reason
    ],
)
def test_servable_output_is_the_first_choice_the_input_can_have(
    choices: list[OutputFormat], dicom_input: bool, series: bool, expected: OutputFormat
) -> None:
    """Newcomer review 45 F5: the whole output decision is in `app.api.content_negotiation`, not half in the route."""
    assert servable_output(choices, dicom_input, series) is expected


@pytest.mark.parametrize(
    ("accept", "path"),
    [
        ("application/json;q=0.1, application/dicom;q=0.9", "/v1/predict"),
        ("application/dicom, application/json;q=0.5", "/v1/predict/batch"),
        ('multipart/related; type="application/dicom"', "/v1/predict/batch"),
    ],
)
def test_an_accepted_dicom_answer_a_raster_slice_cannot_have_falls_back_to_json(
    client: TestClient, accept: str, path: str
) -> None:
    """Attack review 32: a PNG or JPEG with a DICOM answer preferred but JSON acceptable got 400 "output=dicom-seg
    and output=dicom-sr need DICOM input", naming a query parameter the client never sent."""
    field = "file" if path == "/v1/predict" else "files"
    response = client.post(
        path, files=[(field, ("slice.jpg", TUMOR_SLICE.read_bytes(), "image/jpeg"))], headers={"Accept": accept}
    )

    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"


def test_a_single_dicom_slice_accepting_seg_and_sr_gets_what_a_slice_can_have(
    client: TestClient, dicom_instance: bytes
) -> None:
    """SEG and SR report on a series: asked by Accept on /v1/predict, the SEG (next acceptable) comes, or JSON; it was
    a 422 naming `query.output`, which the client never sent."""
    files = {"file": ("IM0001", dicom_instance, "application/dicom")}
    both = 'multipart/related; type="application/dicom", application/dicom;q=0.5'

    seg = client.post("/v1/predict", files=files, headers={"Accept": both})
    only_both = client.post(
        "/v1/predict", files=files, headers={"Accept": 'multipart/related; type="application/dicom"'}
    )

    assert (seg.status_code, seg.headers["content-type"]) == (200, "application/dicom")
    assert (only_both.status_code, only_both.headers["content-type"]) == (200, "application/json")


def test_parse_accept_reads_quoted_parameters_and_weights() -> None:
    accept = 'Multipart/Related; Type="application/dicom"; note="a, \\"b\\""; q=0.25, text/html, bad, x/y;q=2'

    assert parse_accept(accept) == [
        MediaRange("multipart/related", {"type": "application/dicom", "note": 'a, "b"'}, 0.25),
        MediaRange("text/html", {}, 1.0),
    ]


def test_dicom_upload_accepting_dicom_json_gets_json(client: TestClient, dicom_instance: bytes) -> None:
    response = client.post(
        "/v1/predict",
        files={"file": ("IM0001", dicom_instance, "application/dicom")},
        headers={"Accept": "application/dicom+json"},
    )

    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json()["tumor_detected"] is True  # the tiny models call every slice positive


def test_dicom_upload_accepting_dicom_gets_a_seg(client: TestClient, dicom_instance: bytes) -> None:
    response = client.post(
        "/v1/predict",
        files={"file": ("IM0001", dicom_instance, "application/dicom")},
        headers={"Accept": "application/json;q=0.5, application/dicom"},
    )

    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/dicom"
    assert pydicom.dcmread(io.BytesIO(response.content)).Modality == "SEG"


def test_jpeg_upload_refusing_dicom_gets_json(client: TestClient) -> None:
    response = client.post(
        "/v1/predict",
        files={"file": ("slice.jpg", TUMOR_SLICE.read_bytes(), "image/jpeg")},
        headers={"Accept": "application/json, application/dicom;q=0"},
    )

    assert response.status_code == 200, response.text
    assert response.json()["tumor_detected"] is True


def test_batch_accepting_dicomweb_xml_gets_json(client: TestClient, dicom_instance: bytes) -> None:
    response = client.post(
        "/v1/predict/batch",
        files=[("files", ("IM0001", dicom_instance, "application/dicom"))],
        headers={"Accept": 'multipart/related; type="application/dicom+xml"'},
    )

    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    assert [item["index"] for item in response.json()["slices"]] == [0]
