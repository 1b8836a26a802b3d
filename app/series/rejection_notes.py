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
from app.dicom.incoming_rejection import (
    IncomingRejection,
    incoming_rejection,
    is_rejection_note,
    read_rejection_note,
    unpadded_uid,
)
from app.errors import (
    KeyObjectSelectionError,
    RejectedInstanceError,
    RejectionNoteApplied,
    ServiceError,
    TooManyRejectionNotesError,
)
from app.uploads import request_file, request_files

MOST_NOTES_READ = 4
"""Rejection notes of its study a request may carry: a note naming 12,000 instances takes 2 s to walk, and 256 of
them in one request held a worker for 8 minutes (review 56 F1); an export that withdraws images carries one note, or
a few. A request of more is refused (`TooManyRejectionNotesError`): a note left unread would leave the images it
withdraws analysed (attack review 57 F1: four key image selections before a rejection note hid it)."""

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

    Every Key Object Selection is read, its title and study only (cheap); the content of the rejection notes of the
    request's study is then walked. Reading stops once `stop` is set (`NotesNotRead`).

    Raises
    ------
    TooManyRejectionNotesError
        For more than `MOST_NOTES_READ` rejection notes of the request's study.
    """
    headers = list(headers)
    studies = {
        unpadded_uid(header.dataset.get("StudyInstanceUID")) for header in headers if isinstance(header, DicomHeader)
    }
    notes: dict[int, Dataset] = {}
    for index, item in enumerate(headers):
        data = uploads[index]
        if isinstance(item, KeyObjectSelectionError) and not isinstance(data, ServiceError):
            _stop_if_asked(stop, index)
            if (note := _rejection_note(data, studies)) is not None:
                notes[index] = note
    if len(notes) > MOST_NOTES_READ:
        raise TooManyRejectionNotesError(
            f"a request may carry at most {MOST_NOTES_READ} IHE IOCM rejection notes of its study; it holds "
            f"{len(notes)} ({request_files(list(notes))}): send the images with fewer notes"
        )
    for note_index, note in notes.items():
        _stop_if_asked(stop, note_index)
        rejection = _walked(note)
        withdrawn = [index for index, header in enumerate(headers) if rejection and _withdraws(rejection, header)]
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


def _stop_if_asked(stop: threading.Event | None, index: int) -> None:
    if stop is not None and stop.is_set():
        raise NotesNotRead(f"stopped at the request's file {index}")


def _rejection_note(data: bytes, studies: set[str]) -> Dataset | None:
    """The rejection note `data` holds when it is one of a study among `studies`, read without its content walked;
    None for another Key Object Selection, a note of another study, or one that cannot be read (it then stays the
    unsupported file it was)."""
    try:
        note = read_rejection_note(data)
        return note if is_rejection_note(note) and unpadded_uid(note.get("StudyInstanceUID")) in studies else None
    except Exception:  # pydicom may raise anything on a damaged note: it then withdraws nothing
        return None


def _walked(note: Dataset) -> IncomingRejection | None:
    """What the note withdraws (`incoming_rejection`: its content, the long part to read)."""
    try:
        return incoming_rejection(note)
    except Exception:  # a content pydicom cannot parse withdraws nothing
        return None


def _withdraws(rejection: IncomingRejection, header: DicomHeader | ServiceError) -> bool:
    """Whether `rejection` withdraws the image of `header`: one it names, of its own study."""
    if not isinstance(header, DicomHeader):
        return False
    dataset = header.dataset
    return (
        unpadded_uid(dataset.get("StudyInstanceUID")) == rejection.study_instance_uid
        and unpadded_uid(dataset.get("SOPInstanceUID")) in rejection.sop_instance_uids
    )
