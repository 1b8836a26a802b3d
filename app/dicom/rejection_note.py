"""A rejection note (IHE IOCM): a Key Object Selection document that tells a PACS which earlier results to withdraw.

The DICOM node sends results by C-STORE, which cannot delete what a destination holds. When a study is analysed again
and its new SEG and SR supersede earlier ones, the new SR names the SR it replaces (Predecessor Documents Sequence),
but nothing named the earlier SEG: after a correction turned a study negative, the earlier SEG stayed the only SEG in
the study, with nothing to say it was withdrawn (interop review 37). The note lists every superseded SEG and SR under
the Document Title (113001, DCM, "Rejected for Quality Reasons"), which an archive that implements IHE IOCM hides or
deletes, and a viewer shows as a key object selection otherwise. Its UIDs come from what it rejects
(`app.dicom.result_uids`): the same objects rejected again give the same note.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from app.dicom.result_uids import MANUFACTURER, result_uid, source_identity
from app.errors import ReportInputError, builder_reason

REJECTION_SERIES_NUMBER = 9903
REJECTION_TITLE = codes.DCM.RejectedForQualityReasons
REJECTION_SERIES_DESCRIPTION = "Superseded results rejected (research use only)"


def build_rejection_note(
    rejected: Sequence[Dataset], model_tags: Mapping[str, str], result_origin: str = ""
) -> hd.ko.KeyObjectSelectionDocument:
    """The note that rejects `rejected` (the headers of earlier SEGs and SRs of one study, pixel data not needed).

    Raises
    ------
    ReportInputError
        When `rejected` is empty or highdicom refuses the objects (its reason, without their values).
    """
    if not rejected:
        raise ReportInputError("a rejection note needs at least one object to reject; got none")
    made_of = [source_identity(rejected[0]), *sorted(str(dataset.SOPInstanceUID) for dataset in rejected)]
    try:
        note = hd.ko.KeyObjectSelectionDocument(
            evidence=list(rejected),
            content=hd.ko.KeyObjectSelection(document_title=REJECTION_TITLE, referenced_objects=list(rejected)),
            series_instance_uid=result_uid("rejection-series", model_tags, result_origin, *made_of),
            series_number=REJECTION_SERIES_NUMBER,
            sop_instance_uid=result_uid("rejection", model_tags, result_origin, *made_of),
            instance_number=1,
            manufacturer=MANUFACTURER,
        )
    except (ValueError, TypeError, AttributeError) as error:
        raise ReportInputError(f"the rejection note cannot be made: {builder_reason(error)}") from error
    note.SeriesDescription = REJECTION_SERIES_DESCRIPTION
    return note
