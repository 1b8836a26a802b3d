"""A rejection note (IHE IOCM): a Key Object Selection document that tells a PACS which earlier results to withdraw.

The DICOM node sends results by C-STORE, which cannot delete what a destination holds. When a study is analysed again
and its new SEG and SR supersede earlier ones, the new SR names the SR it replaces (Predecessor Documents Sequence),
but nothing names the earlier SEG: after a correction turns a study negative, the earlier SEG would stay the only SEG
in the study, with nothing to say it was withdrawn. The note lists every superseded SEG and SR under
the Document Title (113001, DCM, "Rejected for Quality Reasons"), which an archive that implements IHE IOCM hides or
deletes, and a viewer shows as a key object selection otherwise. Its UIDs come from what it rejects
(`app.dicom.result_uids`): the same objects rejected again give the same note.

It is made from the UIDs a record keeps of the rejected objects (`ResultReference`), not from their files: a
correction sent after the node purged its earlier results still rejects them. Its patient and study
attributes are copied from the new results (`study`), as theirs were from the source images: the note is filed
with them, under the same Patient ID and Issuer of Patient ID. It is written in the character set the SEG and SR
are (`derived_character_set`): a study refused after it was answered gives the note a source header, whose Japanese or
Korean ISO 2022 code extensions highdicom refuses (no note could be made for those studies).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from app.dicom.dicom_conformance import (
    TYPE2_PATIENT_STUDY_ATTRIBUTES,
    derived_character_set,
    stamp_creation_times,
)
from app.dicom.dicom_sr import ResultReference
from app.dicom.result_uids import MANUFACTURER, result_uid, source_identity
from app.errors import ReportInputError, builder_reason
from app.release import service_version

REJECTION_SERIES_NUMBER = 9903
REJECTION_TITLE = codes.DCM.RejectedForQualityReasons
REJECTION_SERIES_DESCRIPTION = "Superseded results rejected (research use only)"
WITHDRAWAL_SERIES_DESCRIPTION = "Results withdrawn: study no longer analysed (research use only)"
"""The description of a note sent alone, when a study once answered is refused or not analysed: nothing supersedes
what it rejects, and "superseded" would send a PACS user looking for newer results."""


def build_rejection_note(
    rejected: Sequence[ResultReference],
    study: Dataset,
    model_tags: Mapping[str, str],
    result_origin: str = "",
    withdrawn: bool = False,
) -> hd.ko.KeyObjectSelectionDocument:
    """The note that rejects `rejected` (earlier SEGs and SRs of the study of `study`, a result made now): superseded
    by results sent with it, or `withdrawn` with none (`WITHDRAWAL_SERIES_DESCRIPTION`, and UIDs of its own).

    Raises
    ------
    ReportInputError
        When `rejected` is empty or highdicom refuses the objects (its reason, without their values).
    """
    if not rejected:
        raise ReportInputError("a rejection note needs at least one object to reject; got none")
    objects = [_rejected_object(study, reference) for reference in rejected]
    made_of = [source_identity(study), *sorted(reference.sop_instance_uid for reference in rejected)]
    made_of += ["withdrawn"] if withdrawn else []
    try:
        note = hd.ko.KeyObjectSelectionDocument(
            evidence=objects,
            content=hd.ko.KeyObjectSelection(document_title=REJECTION_TITLE, referenced_objects=objects),
            series_instance_uid=result_uid("rejection-series", model_tags, result_origin, *made_of),
            series_number=REJECTION_SERIES_NUMBER,
            sop_instance_uid=result_uid("rejection", model_tags, result_origin, *made_of),
            instance_number=1,
            manufacturer=MANUFACTURER,
            specific_character_set=derived_character_set(study),
        )
        note.copy_patient_and_study_information(study)
    except (ValueError, TypeError, AttributeError) as error:
        raise ReportInputError(f"the rejection note cannot be made: {builder_reason(error)}") from error
    note.SeriesDescription = WITHDRAWAL_SERIES_DESCRIPTION if withdrawn else REJECTION_SERIES_DESCRIPTION
    # As the SEG's and SR's: in the study's time zone, with the Series Date and Time and the software that made it
    # (not in UTC without an offset, which dates it an hour before the results it comes with).
    stamp_creation_times(note, [study])
    note.SoftwareVersions = service_version()
    return note


def _rejected_object(study: Dataset, reference: ResultReference) -> Dataset:
    """What highdicom needs of an object to reject: its UIDs, in the study of `study` (whose patient and study
    attributes it copies to the note)."""
    dataset = Dataset()
    for keyword in ("StudyInstanceUID", *TYPE2_PATIENT_STUDY_ATTRIBUTES):
        if keyword in study:
            dataset[keyword] = study[keyword]
    dataset.SeriesInstanceUID = reference.series_instance_uid
    dataset.SOPClassUID = reference.sop_class_uid
    dataset.SOPInstanceUID = reference.sop_instance_uid
    return dataset
