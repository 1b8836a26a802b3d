"""An incoming rejection note (IHE IOCM): which instances of a study a Key Object Selection withdraws, and why.

A modality or PACS withdraws images it no longer stands by (another patient's, unsafe, badly acquired, expired) by
sending a Key Object Selection whose Document Title is one of CID 7011; an archive that implements IOCM then hides
them. This module reads notes; three users apply them: the DICOM node (`app.node.dicom_spool.Spool.reject_instances`),
pacs-sync (`app.pacs.pacs_study`) and the HTTP API (`app.series.rejection_notes`).

Only the instances the note's content names are rejected (its evidence lists every instance it was made from, often
the whole series), and only those of the note's own study: a note of another study rejects nothing here.

Entry points: `read_note_title` (a Key Object Selection's top level up to its Document Title, cheaply: is it a
note, of which study?), `read_rejection_note` and `read_rejection_note_within` (a note whole, held to
`MAX_NOTE_BYTES`, or less, as sent and once inflated), `incoming_rejection` (what a note read whole withdraws), and
`may_be_rejection_note` (how a KOS that cannot be read whole is decided: as what may be a note, unless its title
says otherwise).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.uid import UID, KeyObjectSelectionDocumentStorage

from app.dicom.dicom_header import unpadded_uid
from app.dicom.part10 import (
    DEFLATED_HEADER_BYTES,
    BoundedReads,
    dcmread_bounded,
    inflated_header,
    is_deflated,
    read_file_meta,
)
from app.errors import OverMemoryBudgetError, UndecodableDicomError
from app.settings import MIB

# CID 7011 "Rejected for Quality Reasons" and the other IOCM Document Titles, (value, DCM) -> meaning. Our own
# outgoing note (`app.dicom.rejection_note`) uses the first.
REJECTION_TITLES = {
    "113001": "Rejected for Quality Reasons",
    "113037": "Rejected for Patient Safety Reasons",
    "113038": "Incorrect Modality Worklist Entry",
    "113039": "Data Retention Policy Expired",
}


MAX_NOTE_BYTES = 4 * MIB
"""Most bytes a Key Object Selection may take, as sent and once inflated, for the node to read it. A rejection note
is a few KB; one naming 10,000 instances (`dicom_node_max_study_instances`' default) about 2.6 MB. Decoded whole
without a bound, a 1 MB deflated one inflating to 1 GiB takes +2 GiB and 29 s. No more than
`part10.DEFLATED_HEADER_BYTES`, which `inflated_header` keeps whole."""
assert MAX_NOTE_BYTES <= DEFLATED_HEADER_BYTES


TITLE_BYTES = 64 * 1024
"""Most bytes of a deflated Key Object Selection inflated to tell whether it is a rejection note and of which study
(`read_note_title`): its SOP Class, Study Instance UID and Document Title (0040,A043) come before its evidence and
content, which may name thousands of instances (250 deflated notes of 105 KB, each inflated and parsed whole to read
its title, take 22 s and 2 GB)."""
TITLE_READS = 4_000
"""Most reads made of a Key Object Selection's top level to find its title; values over `TITLE_DEFER_BYTES` are
skipped, not read: otherwise a 70 KB private value before the title takes it past the bytes read, and the selection
is read whole."""
TITLE_DEFER_BYTES = 1024


_DOCUMENT_TITLE_TAG = 0x0040A043


class RejectionNoteTooLargeError(OverMemoryBudgetError):
    """A Key Object Selection over `MAX_NOTE_BYTES`, as sent or once inflated: refused before it is decoded."""


class NotesBudgetSpentError(RejectionNoteTooLargeError):
    """A Key Object Selection over the bytes a caller had left for notes (`read_rejection_note_within`), though
    within `MAX_NOTE_BYTES`: the caller's budget is spent, not the note too large."""


@dataclass(frozen=True)
class IncomingRejection:
    """What a rejection note withdraws: instances (SOP Instance UIDs) of one study, for a reason (a CID 7011 code)."""

    study_instance_uid: str
    sop_instance_uids: frozenset[str]
    reason_code: str

    @property
    def reason(self) -> str:
        """The reason as the standard words it (the code's meaning, no value of the note)."""
        return f"{self.reason_code} {REJECTION_TITLES[self.reason_code]}"


_TOO_LARGE = f"a key object selection over {MAX_NOTE_BYTES // MIB} MiB is not read"


def check_note_size(size: int) -> None:
    """Raise `RejectionNoteTooLargeError` for a Key Object Selection of `size` bytes as sent over `MAX_NOTE_BYTES`."""
    if size > MAX_NOTE_BYTES:
        raise RejectionNoteTooLargeError(_TOO_LARGE)


def read_rejection_note(data: bytes) -> Dataset:
    """The data set of a Key Object Selection received as `data` (Part 10 bytes), read within bounds: over
    `MAX_NOTE_BYTES` as sent or once inflated (a deflate bomb), or of more elements than `part10.MAX_HEADER_READS`,
    it is refused before it is held whole (pydicom's own reading would inflate 1 GiB).

    Raises
    ------
    RejectionNoteTooLargeError
        Over `MAX_NOTE_BYTES`.
    app.errors.ServiceError
        Unreadable (truncated, garbled, too many elements); pydicom may raise anything besides.
    """
    return read_rejection_note_within(data, MAX_NOTE_BYTES)[0]


def read_rejection_note_within(data: bytes, max_bytes: int) -> tuple[Dataset, int]:
    """`read_rejection_note` held to `max_bytes` (at most `MAX_NOTE_BYTES`) as sent and once inflated, and the
    bytes its data set took (inflated, for a deflated one): what a request's notes spend of their budget.

    Raises `NotesBudgetSpentError` for a note within `MAX_NOTE_BYTES` but over `max_bytes`, else as
    `read_rejection_note`."""

    def too_large(how: str) -> RejectionNoteTooLargeError:
        if max_bytes < MAX_NOTE_BYTES:
            return NotesBudgetSpentError(f"over the {max_bytes} bytes left to read{how}")
        return RejectionNoteTooLargeError(_TOO_LARGE + how)

    max_bytes = min(max_bytes, MAX_NOTE_BYTES)
    if len(data) > max_bytes:
        raise too_large("")
    meta_end, transfer_syntax = read_file_meta(data)
    if is_deflated(transfer_syntax):
        try:
            dataset, _, inflated, _, cut = inflated_header(data, meta_end, max_bytes)
        except OverMemoryBudgetError as error:
            raise too_large(" (once inflated)") from error
        size = inflated
    else:
        dataset, stream = dcmread_bounded(data)
        cut, size = stream.cut, len(data) - meta_end
    if cut and may_be_rejection_note(data):  # pydicom keeps what came before the cut, as if whole
        raise UndecodableDicomError("a Key Object Selection cut short (its bytes end inside an element)")
    return dataset, size


def read_note_title(data: bytes) -> Dataset | None:
    """The top level of a Key Object Selection up to its Document Title, within `TITLE_READS` reads, long values
    skipped (a deflated one inflated `TITLE_BYTES` at most): enough for `is_rejection_note` and its study, at a
    bounded cost. None when the title is not found so (an unusual top level, a transfer syntax pydicom does not know:
    read the note whole, `read_rejection_note`).

    Raises
    ------
    app.errors.ServiceError
        The file meta group is unreadable; pydicom may raise anything on a damaged top level.
    """
    meta_end, transfer_syntax = read_file_meta(data)
    if is_deflated(transfer_syntax):
        implicit, little = False, True
        head = zlib.decompressobj(-zlib.MAX_WBITS).decompress(data[meta_end : meta_end + 2 * TITLE_BYTES], TITLE_BYTES)
        whole = len(head) < TITLE_BYTES  # the data set ends within the bytes inflated
    else:
        syntax = UID(transfer_syntax)
        try:
            implicit, little = syntax.is_implicit_VR, syntax.is_little_endian
        except ValueError:  # a private transfer syntax: pydicom works it out reading the whole note
            return None
        head, whole = data[meta_end:], True
    past_title = False

    def after_title(tag: int, vr: str | None, length: int) -> bool:
        nonlocal past_title
        past_title = past_title or tag > _DOCUMENT_TITLE_TAG
        return past_title

    stream = BoundedReads(head, max_reads=TITLE_READS)
    try:
        dataset = read_dataset(stream, implicit, little, stop_when=after_title, defer_size=TITLE_DEFER_BYTES)
    except Exception:
        if whole and stream.reads <= TITLE_READS:
            raise
        return None  # cut inside an element before the title, or too many elements before it
    if stream.reads > TITLE_READS or stream.cut:  # pydicom may take the cap, or a cut, for the data set's end
        return None
    return dataset if past_title or whole else None


def incoming_rejection(dataset: Dataset) -> IncomingRejection | None:
    """The instances `dataset` rejects, when it is an IOCM rejection note (a Key Object Selection whose Document
    Title is one of CID 7011) that names instances of its own study; None for anything else (an ordinary key image
    selection, a note of another study).

    Raises `app.errors.UndecodableDicomError` for a Key Object Selection without a Document Title, and for a
    rejection note whose Patient ID cannot be read (the DICOM node files a note under it), whose content names no
    instance, has an image item without its reference, or whose evidence lists none: a file cut short or damaged
    (pydicom keeps what came before a cut), as a note always names what it withdraws, which is then unknown."""
    sop_class = unpadded_uid(dataset.get("SOPClassUID"))
    if sop_class and sop_class != KeyObjectSelectionDocumentStorage:
        return None
    if not sop_class or title_unknown(dataset):
        raise UndecodableDicomError("a Key Object Selection without its Document Title (0040,A043): cut short?")
    reason_code = _rejection_title(dataset)
    study_uid = unpadded_uid(dataset.get("StudyInstanceUID"))
    if reason_code is None or not study_uid:
        return None
    try:
        str(dataset.get("PatientID", ""))  # a value pydicom cannot convert raises here, as at the node
    except Exception as error:  # noqa: BLE001 - pydicom raises many types on a damaged value
        raise UndecodableDicomError("an IOCM rejection note whose Patient ID cannot be read") from error
    of_this_study = _evidence_of_study(dataset, study_uid)
    references = [
        [unpadded_uid(reference.get("ReferencedSOPInstanceUID")) for reference in item.get("ReferencedSOPSequence", [])]
        for item in dataset.get("ContentSequence", [])
        if str(item.get("ValueType", "")).strip() in ("IMAGE", "COMPOSITE")
    ]
    named = {uid for uids in references for uid in uids} - {""}
    if not named or not all(any(uids) for uids in references) or not _evidence_of_any_study(dataset):
        raise UndecodableDicomError("an IOCM rejection note that names no instance, or an image without its reference")
    rejected = frozenset(named & of_this_study)
    return IncomingRejection(study_uid, rejected, reason_code) if rejected else None


def is_rejection_note(dataset: Dataset) -> bool:
    """Whether `dataset` is a Key Object Selection titled in CID 7011, told from its top level alone (cheap: its
    content, which may name thousands of instances, is not read)."""
    return unpadded_uid(dataset.get("SOPClassUID")) in (KeyObjectSelectionDocumentStorage, "") and (
        _rejection_title(dataset) is not None
    )  # a SOP Class UID missing (a damaged file the caller took for a KOS) lets the title decide


def _rejection_title(dataset: Dataset) -> str | None:
    """The CID 7011 code of the Document Title, or None when it is another title (or none)."""
    titles = dataset.get("ConceptNameCodeSequence", [])
    if len(titles) != 1:
        return None
    title = titles[0]
    value, scheme = str(title.get("CodeValue", "")).strip(), str(title.get("CodingSchemeDesignator", "")).strip()
    return value if scheme == "DCM" and value in REJECTION_TITLES else None


def _evidence_of_any_study(dataset: Dataset) -> bool:
    return any(
        instance.get("ReferencedSOPInstanceUID")
        for study in dataset.get("CurrentRequestedProcedureEvidenceSequence", [])
        for series in study.get("ReferencedSeriesSequence", [])
        for instance in series.get("ReferencedSOPSequence", [])
    )


def _evidence_of_study(dataset: Dataset, study_uid: str) -> set[str]:
    """The SOP Instance UIDs the note's evidence (Current Requested Procedure Evidence) lists under `study_uid`."""
    return {
        unpadded_uid(instance.get("ReferencedSOPInstanceUID"))
        for study in dataset.get("CurrentRequestedProcedureEvidenceSequence", [])
        if unpadded_uid(study.get("StudyInstanceUID")) == study_uid
        for series in study.get("ReferencedSeriesSequence", [])
        for instance in series.get("ReferencedSOPSequence", [])
    } - {""}


def may_be_rejection_note(data: bytes) -> bool:
    """Whether a Key Object Selection that cannot be read whole is titled as an IOCM rejection note, or has a top
    level too damaged to tell: the DICOM node refuses such a one (never Success: the note would
    be lost), and pacs-sync fails its study, since which images it withdraws is unknown."""
    try:
        title = read_note_title(data)
        return title_unknown(title) or is_rejection_note(title)  # type: ignore[arg-type]
    except Exception:  # noqa: BLE001 - a top level pydicom cannot read, or parse, either: it may be a note
        return True


def title_unknown(top_level: Dataset | None) -> bool:
    """Whether the Document Title is untold: `read_note_title` gave up (None), or the data set holds no whole title
    (a file cut before or inside it: every Key Object Selection has one, a Code Value, Long Code Value or URN Code
    Value; a cut inside it is found by the read, `BoundedReads.cut`)."""
    if top_level is None:
        return True
    try:
        titles = top_level.get("ConceptNameCodeSequence")
        if not titles:
            return True
        title = titles[0]
        return not (title.get("CodeValue") or title.get("LongCodeValue") or title.get("URNCodeValue"))
    except Exception:  # noqa: BLE001 - a title pydicom cannot parse is no title told
        return True
