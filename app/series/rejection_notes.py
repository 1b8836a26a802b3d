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
    MAX_NOTE_BYTES,
    IncomingRejection,
    RejectionNoteTooLargeError,
    incoming_rejection,
    is_rejection_note,
    read_note_title,
    read_rejection_note_within,
    unpadded_uid,
)
from app.errors import (
    KeyObjectSelectionError,
    RejectedInstanceError,
    RejectionNoteApplied,
    ServiceError,
    TooManyRejectionNotesError,
)
from app.settings import MIB
from app.uploads import request_file, request_files

NOTES_READ_BYTES = 4 * MAX_NOTE_BYTES
"""Most bytes of rejection notes of its study a request's notes may take to read, together (inflated, for deflated
ones): a note naming 12,000 instances (about 3 MB) takes 2 s to walk, and 256 of them in one request held a worker
for 8 minutes (review 56 F1). An export that withdraws images carries one note or a few, of a few KB each: a
request's many small notes are all read (review 58 F2: a count of 4 refused a study corrected five times). Past it
the request is refused (`TooManyRejectionNotesError`): a note left unread would leave the images it withdraws
analysed (attack review 57 F1). Notes are read one at a time, each let go once applied (review 58 F1: all of them
were held before they were counted, 2 GB for 250)."""

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

    Every Key Object Selection's title and study are read from its first bytes (`read_note_title`: cheap, deflated
    or not); the rejection notes of the request's study are then read whole and walked, one at a time, within
    `NOTES_READ_BYTES` together. Reading stops once `stop` is set (`NotesNotRead`).

    Raises
    ------
    TooManyRejectionNotesError
        When the rejection notes of the request's study take more than `NOTES_READ_BYTES` to read.
    """
    headers = list(headers)
    studies = {
        unpadded_uid(header.dataset.get("StudyInstanceUID")) for header in headers if isinstance(header, DicomHeader)
    }
    notes: list[int] = []
    for index, item in enumerate(headers):
        data = uploads[index]
        if isinstance(item, KeyObjectSelectionError) and not isinstance(data, ServiceError):
            _stop_if_asked(stop, index)
            if _may_be_note_of(data, studies):
                notes.append(index)
    left = NOTES_READ_BYTES
    for at, note_index in enumerate(notes):
        _stop_if_asked(stop, note_index)
        data = uploads[note_index]
        assert isinstance(data, bytes)  # notes are only files whose bytes are there (above)
        try:
            note, size = read_rejection_note_within(data, left)
        except RejectionNoteTooLargeError:
            if left >= MAX_NOTE_BYTES:
                continue  # over the size a note may have alone: it withdraws nothing, as a damaged one
            raise TooManyRejectionNotesError(
                f"the request's IHE IOCM rejection notes of its study (and Key Object Selections whose title only a "
                f"whole read tells) take more than {NOTES_READ_BYTES // MIB} MiB to read, the most a request reads "
                f"({len(notes)} files, {request_files(notes[at:])} not read): export the study again once the PACS "
                "has applied its notes, or send it to the DICOM node"
            ) from None
        except Exception:  # pydicom may raise anything on a damaged note: it then withdraws nothing
            continue
        left -= size
        if not _is_note_of(note, studies):
            continue  # its top level was too long to tell from its first bytes, and it is no note of the study
        rejection = _walked(note)
        del note  # the next note is read only now: one held at a time
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
            f"{'was' if len(withdrawn) == 1 else 'were'} left out"
        )
    return headers


def _stop_if_asked(stop: threading.Event | None, index: int) -> None:
    if stop is not None and stop.is_set():
        raise NotesNotRead(f"stopped at the request's file {index}")


def _may_be_note_of(data: bytes, studies: set[str]) -> bool:
    """Whether `data` is a rejection note of a study among `studies`, told from its top level (`read_note_title`),
    or may be one: a top level too long to tell from its first bytes is told once the note is read whole, within
    the request's budget. False for another Key Object Selection, a note of another study, or one whose top level
    cannot be read (it then stays the unsupported file it was)."""
    try:
        title = read_note_title(data)
    except Exception:  # pydicom may raise anything on a damaged note: it then withdraws nothing
        return False
    return title is None or _is_note_of(title, studies)


def _is_note_of(dataset: Dataset, studies: set[str]) -> bool:
    """Whether a Key Object Selection (its top level suffices) is a rejection note of a study among `studies`."""
    return is_rejection_note(dataset) and unpadded_uid(dataset.get("StudyInstanceUID")) in studies


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
