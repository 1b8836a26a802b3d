"""UIDs of the objects made from a series (SEG, SR): the same sources, models and answer always get the same UIDs.

Why not a new random UID each time: `output=dicom-sr` alone refers to a SEG it does not return, and asking for
`output=dicom-seg` afterwards must give that very SEG; a PACS that receives a result twice (a retried send, pacs-sync
or the DICOM node run again on the same series) then keeps one copy instead of two series of the same objects.
Whatever changes the answer (another mask, other findings, other models, another service version) changes the UIDs,
and so does the patient and study the sources are filed under (`source_identity`): the same images sent again after a
Patient ID correction, as a PACS keeps them beside the first copy, get results of their own, not the first patient's
UIDs, which a PACS keying by SOP Instance UID drops or files over the other; so do the other
patient and study values a result copies (a corrected Patient's Name). The UID is pydicom's
`generate_uid` with these as its entropy sources (a SHA-512 hash under pydicom's UID root).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from app.dicom.dicom_frame import DicomFrame
from app.release import PACKAGE, service_version

MANUFACTURER = PACKAGE


def result_uid(kind: str, model_tags: Mapping[str, str], *parts: str) -> str:
    """The UID of one made object (`kind`: what it is, e.g. "seg-series") from the models and what it was made of."""
    models = json.dumps(dict(model_tags), sort_keys=True)
    return generate_uid(entropy_srcs=[MANUFACTURER, service_version(), models, kind, *parts])


IDENTITY_KEYWORDS = ("PatientID", "IssuerOfPatientID", "StudyInstanceUID")
"""What files a source under a patient and a study in a PACS (Orthanc keys a study by Patient ID and Study Instance
UID)."""


COPIED_KEYWORDS = (
    "SpecificCharacterSet",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "PatientAge",
    "PatientWeight",
    "PatientComments",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
    "StudyDescription",
)
"""The patient's and study's other values a SEG, SR or KO copies from its source (highdicom's Patient, General Study
and Patient Study modules)."""


def source_identity(header: Dataset) -> str:
    """The patient and study a source is filed under, and the values of theirs a result copies, as one of
    `result_uid`'s parts (the values as the file holds them; only their hash reaches the UID).

    Why the copied values: a study sent again with a corrected Patient's Name or Accession Number would make results
    of other content under the UIDs already delivered, which a PACS that keeps the first copy of a UID ignores; one UID
    stands for one content (PS3.5 9)."""
    return json.dumps([str(header.get(keyword, "") or "") for keyword in (*IDENTITY_KEYWORDS, *COPIED_KEYWORDS)])


def models_digest(model_tags: Mapping[str, str]) -> str:
    """A hex digest of the model pair: the SEG's Device Serial Number and the SR's device UID come from it, so the same
    models give the same device everywhere."""
    return hashlib.sha256(json.dumps(dict(model_tags), sort_keys=True).encode()).hexdigest()


def segmenter_name_version(model_tags: Mapping[str, str]) -> tuple[str, str]:
    """(name, version) of the segmenter from its tag ("name@version"), as the SEG and the SR name the algorithm; a
    tag without a version gives "unknown"."""
    name, _, version = model_tags.get("segmenter", "segmenter@unknown").rpartition("@")
    return (name, version or "unknown") if name else (model_tags.get("segmenter") or "segmenter", "unknown")


def masks_digest(references: Sequence[DicomFrame], masks: Sequence[np.ndarray | None]) -> str:
    """A digest of which source frame got which mask (None: nothing found), for `result_uid`'s parts; in the frames'
    UID order, not the request's (else the same files in another order make another SEG, which the SR
    made of the first order does not name)."""
    digest = hashlib.sha256()
    pairs = sorted(
        zip(references, masks, strict=True), key=lambda pair: (pair[0].sop_instance_uid, pair[0].frame_number)
    )
    for frame, mask in pairs:
        digest.update(f"{frame.sop_instance_uid}/{frame.frame_number}:".encode())
        if mask is None:
            digest.update(b"none;")
        else:
            digest.update(f"{mask.shape}".encode())
            digest.update(np.packbits(np.asarray(mask) > 0).tobytes())
            digest.update(b";")
    return digest.hexdigest()
