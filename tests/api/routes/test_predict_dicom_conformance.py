"""Issue 17 defects 3, 4, 7 over HTTP: 200 for sources without Type 2 attributes, 415 (never 400/500) otherwise."""

from __future__ import annotations

from pathlib import Path

import pydicom
from fastapi.testclient import TestClient
from pydicom.data import get_testdata_file
from pydicom.uid import MRImageStorage

from app.dicom.dicom_conformance import TYPE2_PATIENT_STUDY_ATTRIBUTES
from tests.dicom.builders import mr_series, to_bytes, tumor_channels


def test_dicom_seg_of_a_source_without_type2_attributes_is_answered(client: TestClient) -> None:
    dataset = mr_series(tumor_channels()[:1])[0]
    for keyword in TYPE2_PATIENT_STUDY_ATTRIBUTES:
        delattr(dataset, keyword)

    response = client.post(
        "/v1/predict?output=dicom-seg", files={"file": ("IM0001", to_bytes(dataset), "application/dicom")}
    )

    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/dicom"


def test_nm_secondary_capture_is_415_naming_the_modality(client: TestClient) -> None:
    data = Path(get_testdata_file("JPEG-lossy.dcm")).read_bytes()

    response = client.post("/v1/predict", files={"file": ("IM0001", data, "application/dicom")})

    assert response.status_code == 415
    assert response.json()["error"]["code"] == "unsupported_dicom"
    assert response.json()["error"]["message"].endswith("got Modality NM")


def test_12_bit_jpeg_extended_is_415(client: TestClient) -> None:
    dataset = pydicom.dcmread(get_testdata_file("JPEG-lossy.dcm"))
    dataset.SOPClassUID = dataset.file_meta.MediaStorageSOPClassUID = MRImageStorage
    dataset.Modality = "MR"

    response = client.post("/v1/predict", files={"file": ("IM0001", to_bytes(dataset), "application/dicom")})

    assert response.status_code == 415
    assert "(1.2.840.10008.1.2.4.51) with 12 bits stored" in response.json()["error"]["message"]
