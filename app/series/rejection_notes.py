"""IHE IOCM rejection notes sent in one request with the images they withdraw: those images are left out.

A modality or PACS withdraws images it no longer stands by with a Key Object Selection titled in CID 7011
(`app.dicom.incoming_rejection`). The DICOM node and pacs-sync leave such images out of a study's analysis; the HTTP
API read a note sent beside its images as an unsupported file and analysed the images it withdraws, the SEG
referencing them (attack review 53 F5). Now, before the series are chosen, each image a note of the request names is
replaced by its refusal (`RejectedInstanceError`), so the choice, the slices and the SEG are made without it, as the
node would have made them. The note itself is reported as applied (`RejectionNoteApplied`).

Only images of the note's own study are withdrawn; a rejection note of the request's study that withdraws none of
its images is reported as applied too, and a Key Object Selection that is no rejection note (or one of another
study) stays what it was, an unsupported file. A note (or what may be one) that cannot be read refuses the request,
as the DICOM node refuses it: which images it withdraws is unknown. Pure functions over headers and bytes: no HTTP, no
logs.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable, Sequence

from pydicom.dataset import Dataset
from pydicom.uid import KeyObjectSelectionDocumentStorage

from app.dicom.dicom_header import DicomHeader, unpadded_uid
from app.dicom.incoming_rejection import (
    MAX_NOTE_BYTES,
    IncomingRejection,
    NotesBudgetSpentError,
    RejectionNoteTooLargeError,
    incoming_rejection,
    is_rejection_note,
    read_note_title,
    read_rejection_note_within,
    title_unknown,
)
from app.dicom.part10 import media_storage_sop_class
from app.errors import (
    KeyObjectSelectionError,
    RejectedInstanceError,
    RejectionNoteApplied,
    ServiceError,
    TooManyRejectionNotesError,
    UndecodableDicomError,
    UnreadableRejectionNoteError,
)
from app.series.info import SeriesInfo
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


def withdrawn_by_series(items: Iterable[object]) -> Counter[tuple[str, str]]:
    """How many images the request's rejection notes withdrew, by series: (Series Instance UID, the series as errors
    name it) -> count. A refusal says which series lost images; the series reading asks whether a chosen one did."""
    return Counter((item.series_uid, item.series) for item in items if isinstance(item, RejectedInstanceError))


class NotesNotRead(Exception):
    """`apply_rejection_notes` stopped: its caller no longer wants the answer."""


def apply_rejection_notes(
    uploads: Sequence[bytes | ServiceError],
    headers: list[DicomHeader | ServiceError],
    stop: threading.Event | None = None,
) -> list[DicomHeader | ServiceError]:
    """`headers` (each file's header or its error, in request order) with the images that the request's rejection
    notes withdraw replaced by `RejectedInstanceError`, and each rejection note of the study by `RejectionNoteApplied`
    (one that withdraws none of them too: it was read and applied).

    Every Key Object Selection's title and study are read from its first bytes (`read_note_title`: cheap, deflated
    or not); the rejection notes of the request's study are then read whole and walked, one at a time, within
    `NOTES_READ_BYTES` together. Reading stops once `stop` is set (`NotesNotRead`).

    Raises
    ------
    TooManyRejectionNotesError
        When the rejection notes of the request's study take more than `NOTES_READ_BYTES` to read.
    UnreadableRejectionNoteError
        When a Key Object Selection that is, or may be, a rejection note of the study cannot be read.
    """
    headers = list(headers)
    studies = {
        unpadded_uid(header.dataset.get("StudyInstanceUID")) for header in headers if isinstance(header, DicomHeader)
    }
    notes: list[int] = []
    for index, item in enumerate(headers):
        data = uploads[index]
        if _is_key_object_selection(item, data):
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
        except NotesBudgetSpentError:
            raise TooManyRejectionNotesError(
                f"the request's IHE IOCM rejection notes of its study (and Key Object Selections whose title only a "
                f"whole read tells) take more than {NOTES_READ_BYTES // MIB} MiB to read, the most a request reads "
                f"({len(notes)} files, {request_files(notes[at:])} not read): export the study again once the PACS "
                "has applied its notes, or send it to the DICOM node"
            ) from None
        except RejectionNoteTooLargeError:
            raise _unreadable(note_index, f"over the {MAX_NOTE_BYTES // MIB} MiB a note may take") from None
        except Exception as error:  # noqa: BLE001 - pydicom may raise anything on a damaged note
            raise _unreadable(note_index, "damaged") from error
        left -= size
        if not title_unknown(note) and not _is_note_of(note, studies):
            continue  # its top level was too long to tell from its first bytes, and it is no note of the study
        try:
            rejection = incoming_rejection(note)
        except Exception as error:  # noqa: BLE001 - a content pydicom cannot parse
            raise _unreadable(note_index, "its content is damaged") from error
        del note  # the next note is read only now: one held at a time
        withdrawn = [index for index, header in enumerate(headers) if rejection and _withdraws(rejection, header)]
        if rejection and not withdrawn:  # read, and applies to none: no unsupported file (browser review 61 F3)
            headers[note_index] = RejectionNoteApplied(
                f"an IHE IOCM rejection note of the request's study ({rejection.reason}), applied: it withdraws none "
                "of the request's images"
            )
            continue
        if not withdrawn:
            continue
        for index in withdrawn:
            header = headers[index]
            assert isinstance(header, DicomHeader)  # `_withdraws` names images read only
            headers[index] = RejectedInstanceError(
                f"withdrawn by the IHE IOCM rejection note sent as {request_file(note_index)} ({rejection.reason}): "
                "left out, as an archive that implements IOCM hides it",
                series=SeriesInfo.from_dataset(header.dataset).number_text,
                series_uid=unpadded_uid(header.dataset.get("SeriesInstanceUID")),
            )
        headers[note_index] = RejectionNoteApplied(
            f"an IHE IOCM rejection note ({rejection.reason}), applied: {request_files(withdrawn)} it withdraws "
            f"{'was' if len(withdrawn) == 1 else 'were'} left out"
        )
    return headers


def _stop_if_asked(stop: threading.Event | None, index: int) -> None:
    if stop is not None and stop.is_set():
        raise NotesNotRead(f"stopped at the request's file {index}")


def _is_key_object_selection(item: DicomHeader | ServiceError, data: bytes | ServiceError) -> bool:
    """Whether the file is a Key Object Selection by its header, or by its file meta group when its header cannot
    be read (a note cut short is still a note)."""
    if isinstance(data, ServiceError):
        return False
    if isinstance(item, KeyObjectSelectionError):
        return True
    return (
        isinstance(item, UndecodableDicomError) and media_storage_sop_class(data) == KeyObjectSelectionDocumentStorage
    )


def _may_be_note_of(data: bytes, studies: set[str]) -> bool:
    """Whether `data` is a rejection note of a study among `studies`, told from its top level (`read_note_title`),
    or may be one: a top level too long to tell from its first bytes, or too damaged, is told once the note is read
    whole (a damaged one then refuses the request, as the DICOM node refuses it: `may_be_rejection_note`). False
    for another Key Object Selection or a note of another study: it stays the unsupported file it was."""
    try:
        title = read_note_title(data)
        return title_unknown(title) or _is_note_of(title, studies)  # type: ignore[arg-type]
    except Exception:  # noqa: BLE001 - pydicom may raise anything on a damaged top level, its title's parse too
        return True


def _unreadable(index: int, why: str) -> UnreadableRejectionNoteError:
    return UnreadableRejectionNoteError(
        f"{request_file(index)} is, or may be, an IHE IOCM rejection note and cannot be read ({why}): the images it "
        "withdraws are unknown, so none is analysed; leave it out, or export the study again once the PACS has "
        "applied it"
    )


def _is_note_of(dataset: Dataset, studies: set[str]) -> bool:
    """Whether a Key Object Selection (its top level suffices) is a rejection note of a study among `studies`."""
    return is_rejection_note(dataset) and unpadded_uid(dataset.get("StudyInstanceUID")) in studies


def _withdraws(rejection: IncomingRejection, header: DicomHeader | ServiceError) -> bool:
    """Whether `rejection` withdraws the image of `header`: one it names, of its own study."""
    if not isinstance(header, DicomHeader):
        return False
    dataset = header.dataset
    return (
        unpadded_uid(dataset.get("StudyInstanceUID")) == rejection.study_instance_uid
        and unpadded_uid(dataset.get("SOPInstanceUID")) in rejection.sop_instance_uids
    )
