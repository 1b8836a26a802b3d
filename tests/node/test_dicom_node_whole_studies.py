"""Interop review 30, finding 1: a study routed whole from a PACS reaches the node whole.

Orthanc's "send to modality" of a Siemens MR study failed as a whole, and the node got nothing, because the node
refused the vendor's CSA Non-Image object at association (no presentation context) and a colour screen save with
C000. Every object of a study is now taken: what the models cannot use is answered Success and not kept, and a
presentation context the node still refuses is logged with its SOP class.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
    SecondaryCaptureImageStorage,
    generate_uid,
)
from pynetdicom import AE
from pynetdicom.sop_class import (
    EnhancedMRImageStorage,
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
)

from tests.dicom.builders import mr_series, tumor_channels
from tests.node.node_support import (
    CALLING_AE,
    NODE_AE,
    QUIET_SECONDS,
    Clock,
    ResultStore,
    associations_ended,
    process_and_send,
    record,
)

SIEMENS_CSA_NON_IMAGE = "1.3.12.2.1107.5.9.1"


def companion(template: Dataset, sop_class: str, modality: str) -> Dataset:
    """Another object of the study of `template` (same patient and study, its own series)."""
    dataset = Dataset()
    for keyword in ("PatientName", "PatientID", "StudyInstanceUID", "StudyDate", "StudyTime"):
        if keyword in template:
            setattr(dataset, keyword, getattr(template, keyword))
    dataset.SOPClassUID = sop_class
    dataset.SOPInstanceUID = generate_uid()
    dataset.SeriesInstanceUID = generate_uid()
    dataset.Modality = modality
    dataset.file_meta = Dataset()
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset.file_meta.MediaStorageSOPClassUID = sop_class
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    return dataset


def colour_screen_save(template: Dataset) -> Dataset:
    dataset = companion(template, SecondaryCaptureImageStorage, "MR")
    dataset.SamplesPerPixel, dataset.PhotometricInterpretation, dataset.PlanarConfiguration = 3, "RGB", 0
    dataset.Rows = dataset.Columns = 16
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit, dataset.PixelRepresentation = 8, 8, 7, 0
    dataset.PixelData = np.full((16, 16, 3), 200, np.uint8).tobytes()
    return dataset


def test_a_study_with_vendor_and_other_modality_objects_is_taken_whole_and_analysed(
    make_node: Any, results: ResultStore, clock: Clock
) -> None:
    node = make_node()
    series = mr_series(tumor_channels())
    others = [
        companion(series[0], SIEMENS_CSA_NON_IMAGE, "MR"),  # the scanner's protocol, in nearly every Siemens study
        companion(series[0], CTImageStorage, "CT"),  # a CT of the same study (no pixels: it is never read)
        colour_screen_save(series[0]),
    ]
    ae = AE(ae_title=CALLING_AE)
    for sop_class in (MRImageStorage, SIEMENS_CSA_NON_IMAGE, CTImageStorage, SecondaryCaptureImageStorage):
        ae.add_requested_context(sop_class, ExplicitVRLittleEndian)
    association = ae.associate("127.0.0.1", node.config.port, ae_title=NODE_AE)
    assert association.is_established and not association.rejected_contexts
    statuses = [int(association.send_c_store(dataset).Status) for dataset in [*others, *series]]
    association.release()

    assert statuses == [0] * 6
    associations_ended(node)  # before the clock moves: an association's end restarts the quiet period at its time
    clock.advance(QUIET_SECONDS)
    assert len(process_and_send(node)) == 1
    (run,) = record(node)["runs"]
    assert run["instances"] == 3  # the MR slices only: nothing else was kept
    assert len(results.by_modality("SEG")) == 1


def test_a_refused_presentation_context_is_logged_with_its_sop_class(
    make_node: Any, caplog: pytest.LogCaptureFixture
) -> None:
    node = make_node()
    ae = AE(ae_title=CALLING_AE)
    ae.add_requested_context(MRImageStorage)
    ae.add_requested_context(PatientRootQueryRetrieveInformationModelFind)  # the node is no query SCP
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    ae.add_requested_context("Smith^John 1970")  # any text a peer puts in place of a UID (attack review 33)
    ae.add_requested_context(EnhancedMRImageStorage, ["1.2.840.10008.1.2.4.51"])  # JPEG Extended: not taken
    with caplog.at_level(logging.INFO, logger="app.node.dicom_node"):
        association = ae.associate("127.0.0.1", node.config.port, ae_title=NODE_AE)
        assert association.is_established
        association.release()

    # One line for the association, not a warning per class (a PACS offers every class it stores).
    (refused,) = [line for line in caplog.records if line.getMessage() == "presentation contexts refused"]
    assert refused.levelno == logging.INFO
    assert refused.fields == {
        "SOP class not supported": sorted(
            [str(PatientRootQueryRetrieveInformationModelFind), str(StudyRootQueryRetrieveInformationModelFind)]
        ),
        "transfer syntaxes not supported": {str(EnhancedMRImageStorage): ["1.2.840.10008.1.2.4.51"]},
        "not a UID (not logged)": 1,
    }
