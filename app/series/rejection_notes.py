"""IHE IOCM rejection notes sent in one request with the images they withdraw: those images are left out.

A modality or PACS withdraws images it no longer stands by with a Key Object Selection titled in CID 7011
(`app.dicom.incoming_rejection`). The DICOM node and pacs-sync leave such images out of a study's analysis; the HTTP
API read a note sent beside its images as an unsupported file and analysed the images it withdraws, the SEG
referencing them (attack review 53 F5). Now, before the series are chosen, each image a note of the request names is
replaced by its refusal (`RejectedInstanceError`), so the choice, the slices and the SEG are made without it, as the
node would have made them. The note itself is reported as applied (`RejectionNoteApplied`).

Only images of the note's own study are withdrawn; a note that withdraws none of the request's images stays what it
was, an unsupported file. Pure functions over headers and bytes: no HTTP, no logs.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from pydicom.dataset import Dataset

from app.dicom.dicom_header import DicomHeader
from app.dicom.incoming_rejection import IncomingRejection, incoming_rejection, read_rejection_note
from app.errors import KeyObjectSelectionError, RejectedInstanceError, RejectionNoteApplied, ServiceError
from app.uploads import request_file, request_files

MOST_NOTES_READ = 4
"""Key Object Selections of a request read as rejection notes; the others stay unsupported files. A note naming
12,000 instances takes 2 s to walk, and 256 of them in one request held a worker for 8 minutes (review 56 F1); an
export that withdraws images carries one note, or a few."""

WITHDRAWAL_CODES = frozenset({RejectedInstanceError.code, RejectionNoteApplied.code})
"""The `file_errors` codes of a note applied and the images it withdrew: files left out as asked, no failure."""


class NotesNotRead(Exception):
    """`apply_rejection_notes` stopped: its caller no longer wants the answer."""


def apply_rejection_notes(
    uploads: Sequence[bytes | ServiceError],
    headers: list[DicomHeader | ServiceError],
    stop: threading.Event | None = None,
) -> list[DicomHeader | ServiceError]:
    """`headers` (each file's header or its error, in request order) with the images that the request's rejection
    notes withdraw replaced by `RejectedInstanceError`, and each note that withdrew any by `RejectionNoteApplied`.

    Only the first `MOST_NOTES_READ` Key Object Selections are read, and of those only the ones of a study the
    request's images are of; reading stops once `stop` is set (`NotesNotRead`)."""
    headers = list(headers)
    studies = {_uid(header.dataset.get("StudyInstanceUID")) for header in headers if isinstance(header, DicomHeader)}
    notes_read = 0
    for note_index, item in enumerate(headers):
        data = uploads[note_index]
        if not isinstance(item, KeyObjectSelectionError) or isinstance(data, ServiceError):
            continue
        if notes_read == MOST_NOTES_READ:
            break
        if stop is not None and stop.is_set():
            raise NotesNotRead(f"stopped after {notes_read} rejection notes")
        notes_read += 1
        rejection = _read_rejection(data, studies)
        if rejection is None:
            continue
        withdrawn = [index for index, header in enumerate(headers) if _withdraws(rejection, header)]
        if not withdrawn:
            continue
        for index in withdrawn:
            headers[index] = RejectedInstanceError(
                f"withdrawn by the IHE IOCM rejection note sent as {request_file(note_index)} ({rejection.reason}): "
                "left out, as an archive that implements IOCM hides it"
            )
        headers[note_index] = RejectionNoteApplied(
            f"an IHE IOCM rejection note ({rejection.reason}), applied: {request_files(withdrawn)} it withdraws "
            "were left out"
        )
    return headers


def _read_rejection(data: bytes, studies: set[str]) -> IncomingRejection | None:
    """The rejection `data` holds when it is a note of one of `studies`; None when it is another Key Object
    Selection, of another study, or cannot be read (it then stays the unsupported file it was). Its content, which
    takes long to walk, is walked only for a note of one of `studies`."""
    try:
        note = read_rejection_note(data)
        return incoming_rejection(note) if _study_of(note) in studies else None
    except Exception:  # pydicom may raise anything on a damaged note: it then withdraws nothing
        return None


def _study_of(note: Dataset) -> str:
    return _uid(note.get("StudyInstanceUID"))


def _withdraws(rejection: IncomingRejection, header: DicomHeader | ServiceError) -> bool:
    """Whether `rejection` withdraws the image of `header`: one it names, of its own study."""
    if not isinstance(header, DicomHeader):
        return False
    dataset = header.dataset
    return (
        _uid(dataset.get("StudyInstanceUID")) == rejection.study_instance_uid
        and _uid(dataset.get("SOPInstanceUID")) in rejection.sop_instance_uids
    )


def _uid(value: object) -> str:
    """A UID as a header holds it, without the padding (NUL or space) it may end with."""
    return str(value or "").rstrip("\0 ")
