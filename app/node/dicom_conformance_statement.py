"""The DICOM node's conformance statement (after PS3.2's outline), written from the node's own tables.

A PACS administrator reads it before declaring the node: what it accepts, in which transfer syntaxes, what it
answers, and what it sends back. It is made from the tables the node runs on (`app.node.dicom_received_instance`) and
the settings' defaults, so it cannot drift from the code; `DICOM_CONFORMANCE.md` at the repository's root is its output,
and a test checks both that the file is current and that a running node accepts and refuses what it says.

Run ``python -m app.node.dicom_conformance_statement > DICOM_CONFORMANCE.md`` after changing the node's classes,
syntaxes or settings.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterable, Sequence
from typing import Any

from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import (
    ComprehensiveSRStorage,
    KeyObjectSelectionDocumentStorage,
    SegmentationStorage,
    Verification,
)

from app.dicom.dicom_seg import SEG_SERIES_DESCRIPTION, SEG_SERIES_NUMBER, SEGMENT_LABEL
from app.dicom.dicom_sr import RESEARCH_USE_STATEMENT, REVISED_SUFFIX, SR_SERIES_DESCRIPTION, SR_SERIES_NUMBER
from app.dicom.incoming_rejection import MAX_NOTE_BYTES, REJECTION_TITLES
from app.dicom.rejection_note import (
    REJECTION_SERIES_DESCRIPTION,
    REJECTION_SERIES_NUMBER,
    WITHDRAWAL_SERIES_DESCRIPTION,
)
from app.dicom.result_uids import MANUFACTURER
from app.node.dicom_association import CONNECTIONS_PER_ASSOCIATION, REFUSAL_SECONDS, REFUSING_PER_PEER
from app.node.dicom_received_instance import (
    IGNORED_CLASSES,
    MR_CLASSES,
    OTHER_STORAGE_CLASSES,
    PRIVATE_IGNORED_CLASSES,
    STATUS_CANNOT_UNDERSTAND,
    STATUS_DOES_NOT_MATCH_SOP_CLASS,
    STATUS_OUT_OF_RESOURCES,
    STORAGE_CLASSES,
    TRANSFER_SYNTAXES,
)
from app.node.dicom_receiver import MAX_PDU_BYTES
from app.node.dicom_spool import MAX_REJECTION_NOTES, MIN_FREE_INODES
from app.settings import MIB, Settings

RESULT_CLASSES = (SegmentationStorage, ComprehensiveSRStorage, KeyObjectSelectionDocumentStorage)
RESULT_TRANSFER_SYNTAXES = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)  # as `app.node.dicom_sender` proposes them


def _default(name: str) -> Any:
    """A setting's default, as the README's settings table shows it."""
    field = Settings.model_fields[name]
    return field.default_factory() if field.default_factory is not None else field.default  # type: ignore[call-arg]


def _uid_rows(uids: Iterable[str]) -> list[str]:
    return [f"| {UID(uid).name} | `{uid}` |" for uid in uids]


def _reflowed(lines: Sequence[str], width: int = 116) -> list[str]:
    """Paragraphs and list items (split over source lines as the code writes them) wrapped again at `width`;
    headings and table rows left as they are."""
    out: list[str] = []
    paragraph: list[str] = []

    def flush() -> None:
        if paragraph:
            text = " ".join(paragraph)
            indent = "  " if text.startswith("- ") else ""
            out.extend(textwrap.wrap(text, width, subsequent_indent=indent, break_on_hyphens=False))
            paragraph.clear()

    for line in lines:
        if not line or line.startswith(("#", "|")) or line.startswith("- "):
            flush()
        if line and not line.startswith(("#", "|")):
            paragraph.append(line.strip())
        else:
            out.append(line)
    flush()
    return out


def _table(header: str, rows: Sequence[str]) -> list[str]:
    columns = header.count("|") - 1
    return [header, "|" + " --- |" * columns, *rows]


def conformance_statement() -> str:
    """The statement as Markdown."""
    ae = AE()  # pynetdicom's defaults, which the node keeps
    lines = [
        *_title(),
        *_implementation(ae),
        *_network_services(),
        *_association_acceptance(ae),
        *_presentation_contexts_accepted(),
        *_c_store_scp(),
        *_association_initiation(),
        *_objects_created(),
        *_security(),
    ]
    return "\n".join(_reflowed(lines)) + "\n"


def _title() -> list[str]:
    """The title and what the statement is."""
    return [
        "# DICOM conformance statement: `brain-tumor dicom-node`",
        "",
        "Written by `python -m app.node.dicom_conformance_statement` from the node's tables",
        "(`app/node/dicom_received_instance.py`) and the settings' defaults;",
        "`tests/node/test_conformance_statement.py` checks that this file is current and that a running node accepts",
        "and refuses what it says. Research use only: the results are unverified machine output and no clinical",
        "device.",
        "",
    ]


def _implementation(ae: AE) -> list[str]:
    """Section 1: the toolkit and the one Application Entity."""
    return [
        "## 1. Implementation",
        "",
        f"- Manufacturer (in the results): `{MANUFACTURER}`; DICOM toolkit: pynetdicom (Implementation Class UID",
        f"  `{ae.implementation_class_uid}`, Implementation Version Name `{ae.implementation_version_name}`).",
        f"- One Application Entity, AE title `DICOM_NODE_AE_TITLE` (default `{_default('dicom_node_ae_title')}`), port",
        f"  `DICOM_NODE_PORT` (default {_default('dicom_node_port')}), on `DICOM_NODE_HOST` (default",
        f"  `{_default('dicom_node_host')}`). It stores MR studies sent to it, analyses each once it is complete, and",
        "  sends a segmentation (SEG) and a volume report (SR) to the configured destinations.",
        "",
    ]


def _network_services() -> list[str]:
    """Section 2: the SOP classes and the role the node takes in each."""
    return [
        "## 2. Network services",
        "",
        *_table(
            "| SOP class | role |",
            [
                "| Verification | SCP |",
                *(f"| {UID(uid).name} | SCP (analysed) |" for uid in STORAGE_CLASSES),
                *(f"| {UID(uid).name} | {_ignored_class_role(uid)} |" for uid in IGNORED_CLASSES),
                *(f"| {name} (private) | SCP (accepted, not kept) |" for name in PRIVATE_IGNORED_CLASSES.values()),
                f"| every other storage class of the standard ({len(OTHER_STORAGE_CLASSES)}) | SCP (accepted, not "
                "kept) |",
                *(f"| {UID(uid).name} | SCU (the results) |" for uid in RESULT_CLASSES),
            ],
        ),
        "",
    ]


def _association_acceptance(ae: AE) -> list[str]:
    """Section 3: which associations the node accepts, and its limits."""
    return [
        "## 3. Association acceptance (SCP)",
        "",
        "- The called AE title must be the node's; when `DICOM_NODE_ALLOWED_CALLING_AE_TITLES` is set, the calling AE",
        "  title must be one of them (else any is accepted, and a warning is logged at start). Rejected associations",
        "  get A-ASSOCIATE-RJ (permanent; called or calling AE title not recognized).",
        f"- At most `DICOM_NODE_MAX_ASSOCIATIONS` ({_default('dicom_node_max_associations')}) associations at once and",
        f"  `DICOM_NODE_MAX_ASSOCIATIONS_PER_PEER` ({_default('dicom_node_max_associations_per_peer')}) from one",
        "  address; more are rejected (transient, local limit exceeded). At most",
        f"  {CONNECTIONS_PER_ASSOCIATION} x `DICOM_NODE_MAX_ASSOCIATIONS` connections are served at once (those being",
        "  rejected and those yet to send their request included); past that a new connection is closed unread. A",
        f"  connection past its address's share must send its request within {REFUSAL_SECONDS:g} s, and at most",
        f"  {REFUSING_PER_PEER} of one address wait so; past that a new connection of that address is closed unread.",
        f"- Maximum PDU length received: {ae.maximum_pdu_size} bytes (announced). A PDU of any type longer than",
        f"  {MAX_PDU_BYTES // 1024} KiB is a protocol error and closes the connection. A connection silent for",
        f"  `DICOM_NODE_ASSOCIATION_TIMEOUT_SECONDS` ({_default('dicom_node_association_timeout_seconds')} s: no",
        "  association request, an idle association, a PDU that does not arrive whole) is closed.",
        "- Asynchronous operations and extended negotiation: not supported. Role selection: SCP only.",
        "",
    ]


def _presentation_contexts_accepted() -> list[str]:
    """Section 3: the classes and transfer syntaxes accepted, and what is accepted but not kept."""
    return [
        "### Presentation contexts accepted",
        "",
        "Storage classes the node reads, in these transfer syntaxes (the first, uncompressed ones preferred):",
        "",
        *_table("| abstract syntax | UID |", [*_uid_rows([Verification]), *_uid_rows(STORAGE_CLASSES)]),
        "",
        *_table("| transfer syntax | UID |", _uid_rows(TRANSFER_SYNTAXES)),
        "",
        "Verification is accepted in the uncompressed syntaxes (Implicit and Explicit VR Little Endian, Deflated",
        "Explicit VR Little Endian, Explicit VR Big Endian). The classes below travel with MR studies and are no",
        "image the models read; they are accepted in every transfer syntax pynetdicom knows (not Encapsulated",
        "Uncompressed Explicit VR Little Endian, `1.2.840.10008.1.2.1.98`, nor a private transfer syntax), answered",
        "Success and not kept, so that a router can forward a whole study that already holds results, and so is",
        "every other storage class of the",
        f"standard ({len(OTHER_STORAGE_CLASSES)} classes: CT, PET, colour images, documents... of a mixed study;",
        "pynetdicom's list of storage classes): a PACS fails the whole send of a study when one class is refused.",
        "",
        *_table(
            "| abstract syntax | UID |",
            [*_uid_rows(IGNORED_CLASSES), *(f"| {name} | `{uid}` |" for uid, name in PRIVATE_IGNORED_CLASSES.items())],
        ),
        "",
        "Any other class (a non-storage service, another vendor's private class) is refused at association",
        "(abstract syntax not supported), and the node logs the refused classes' UIDs, one line per association",
        "(`presentation contexts refused`). A colour image or a Secondary Capture of another modality than MR, in a",
        "class the node reads, is answered Success and not kept too, and so is an instance whose header holds more",
        "data elements than the",
        "node reads (over 250,000 reads of its header, about 100,000 elements: an Enhanced MR of thousands of",
        "frames), so that a whole study's send does not fail for it.",
        "",
        "Key Object Selection is the exception: an IHE IOCM rejection note for a study the node holds is kept and",
        'honoured (below, "Incoming rejection notes"); any other key object selection is not kept.',
        "",
    ]


def _c_store_scp() -> list[str]:
    """Section 3: what the node does with an instance, and the statuses it answers."""
    return [
        "### C-STORE SCP",
        "",
        "Each instance is written to the spool (`DICOM_NODE_SPOOL_DIR`) and flushed to disk before Success is",
        "answered. A study is analysed once no instance of it arrived for `DICOM_NODE_QUIET_SECONDS`",
        f"({_default('dicom_node_quiet_seconds')} s) and the associations that sent it have ended. Statuses:",
        "",
        *_table(
            "| status | when | Error Comment |",
            [
                "| `0000` Success | kept for analysis, or one of the classes not kept | |",
                f"| `{STATUS_OUT_OF_RESOURCES:04X}` Out of Resources | over `DICOM_NODE_MAX_INSTANCE_BYTES` "
                f"({_default('dicom_node_max_instance_bytes') // MIB} MiB, once inflated), or the spool "
                f"(`DICOM_NODE_MAX_SPOOL_BYTES`, {_default('dicom_node_max_spool_bytes') // MIB} MiB) or the disk "
                f"(`DICOM_NODE_MIN_FREE_BYTES` left free, {_default('dicom_node_min_free_bytes') // MIB} MiB) would "
                f"be overfilled, or the disk has fewer than {MIN_FREE_INODES} inodes free; a new study while "
                "`DICOM_NODE_MAX_PENDING_STUDIES` "
                f"({_default('dicom_node_max_pending_studies')}) wait for analysis, or while three quarters of them "
                "are from the sender's address (the rest is kept for the other senders); a new instance of a study "
                f"that holds `DICOM_NODE_MAX_STUDY_INSTANCES` ({_default('dicom_node_max_study_instances')}); the "
                "instances being received at "
                f"once past `DICOM_NODE_RECEIVE_MEMORY_BYTES` ({_default('dicom_node_receive_memory_bytes') // MIB} "
                "MiB) | the limit |",
                f"| `{STATUS_DOES_NOT_MATCH_SOP_CLASS:04X}` Data Set Does Not Match SOP Class | the data set's SOP "
                "Class or Instance UID is not the request's, the request's class is not its presentation context's, "
                "a UID is missing or malformed | what is wrong |",
                f"| `{STATUS_CANNOT_UNDERSTAND:04X}` Cannot Understand | a header or pixel data the service cannot "
                "read (pixel data not laid out as its transfer syntax says: native pixels on a compressed context), "
                "a Patient ID that breaks its value type otherwise than by its length (the results could not carry "
                "it), an instance sent again under the UID of one kept whose pixel data does not decode (the copy kept "
                "stays; a first copy's pixels are decoded only at analysis), "
                f"or an object of an MR class ({', '.join(UID(uid).name for uid in MR_CLASSES)}) whose "
                "Modality is not MR | what is wrong, without the file's values |",
            ],
        ),
        "",
        "File Meta Information elements (group 0002) that a sender leaves at the head of a data set (a file's",
        "content passed on as it is) are left out: the data set is read in the presentation context's transfer",
        "syntax, never in one they name.",
        "",
        "An instance sent again replaces the stored copy (same SOP Instance UID); the same instances sent again give",
        "no new result, in any transfer syntax (their attributes and decoded pixel values are compared, not their",
        "bytes: a study archived JPEG-LS lossless or Implicit VR and forwarded again is not analysed twice; one",
        "exception: an element the files wrote under another VR than the dictionary's, binary for text (an",
        "Acquisition Number as US) or inside a sequence, reads as other bytes in Implicit VR, which take the",
        "dictionary's VR, so such a",
        "study forwarded in Implicit VR is analysed once more and its results, the same, sent again), and a",
        "study whose instances changed after its analysis (another pixel value, a corrected attribute; a lossy",
        "re-compression that keeps the SOP Instance UIDs changes pixel values) is analysed again, its new results",
        "superseding the earlier ones (below). A lossy copy under new SOP Instance UIDs, as the standard requires,",
        "names its original in its Source Image Sequence: where the original is there too (single- or multi-frame,",
        "lying where it lies), the copy is left out and the original analysed; copies that come after their",
        "originals were analysed give the same results again (same UIDs), not a revision. Instances that repeat",
        "others of their series pixel for pixel at the same place under new SOP Instance UIDs (a series sent again",
        "after a re-import) are read once (the SOP Instance UID that sorts first as text), the rest left out and not",
        "counted against the limits: the study stays",
        "analysed with the same figures (a revision when the slices read are other instances). The same instances sent",
        "again after the node was restarted with other model versions are analysed again, the new results",
        "superseding the earlier ones as for a changed study (a result recorded before the node kept model versions",
        "counts as made by the current ones).",
        "",
        *_incoming_rejection_notes(),
    ]


def _ignored_class_role(sop_class: str) -> str:
    if sop_class == KeyObjectSelectionDocumentStorage:
        return "SCP (an IHE IOCM rejection note is honoured; others accepted, not kept)"
    return "SCP (accepted, not kept)"


def _incoming_rejection_notes() -> list[str]:
    """Section 3: what the node does with an IHE IOCM rejection note it receives (interop review 48 F1)."""
    titles = ", ".join(f'({code}, DCM, "{meaning}")' for code, meaning in REJECTION_TITLES.items())
    return [
        "### Incoming rejection notes (IHE IOCM)",
        "",
        "A Key Object Selection whose Document Title is one of CID 7011,",
        f"{titles}, rejects the instances its content names that its",
        "evidence lists under its own study (a note of another study, or an ordinary key image selection, rejects",
        "nothing and is not kept). The study is the note's Patient ID and Study Instance UID, as for its",
        "instances. The note is answered Success once it and the rejected SOP Instance UIDs are kept in the",
        "study's spool (flushed to disk, the note first: a note refused takes no effect), and the rejected instances",
        "the node holds are removed. The study is then analysed again without them: its new results revise the",
        "earlier ones and the node's own rejection note withdraws those (section 5); when every FLAIR instance was",
        "rejected the study is recorded not analysed, no new result is made, and the note withdraws the earlier",
        "results. A rejected instance sent again later is answered Success and not kept (logged by study key,",
        "without patient data). A note for a study the node does not hold yet (its KO series sent before its",
        "images, in the same association or an earlier one) is kept the same way and counts as one of the studies",
        "waiting for analysis (`DICOM_NODE_MAX_PENDING_STUDIES`, three quarters for one address); the images that",
        "follow are left out as rejected. The notes kept are removed with the study's instances and results (after",
        "`DICOM_NODE_RETENTION_HOURS`), the UIDs they rejected stay with the study's record (after",
        "`DICOM_NODE_RECORD_RETENTION_DAYS`); a study of notes alone, whose instances never came, goes whole after",
        "`DICOM_NODE_RETENTION_HOURS`, and instances its notes named that come later are taken. A note that rejects",
        "instances the node no longer holds (purged after",
        "`DICOM_NODE_RETENTION_HOURS`) is recorded and analyses nothing again: send the study again to have it",
        "analysed without them. A note that rejects nothing new (the same note again) is answered Success and not",
        "kept again.",
        "",
        "Refused with Out of Resources (`A700`) and an Error Comment, taking no effect: a Key Object Selection over",
        f"{MAX_NOTE_BYTES // MIB} MiB as sent or once inflated (Deflated Explicit VR Little Endian; a note is a few",
        "KB, one naming 10,000 instances about 2.6 MB), a note that would make more instances of the study rejected",
        "than `DICOM_NODE_MAX_STUDY_INSTANCES`, the note beyond the",
        f"{MAX_REJECTION_NOTES} a study keeps (one sent again replaces its copy), and any note or instance of a",
        "study whose `rejected.json` cannot be read (logged once by study key; the study is not processed until the",
        "file is repaired); and, as an instance is, when the spool or its disk is full or too many studies wait.",
        f"Refused with Cannot Understand (`{STATUS_CANNOT_UNDERSTAND:04X}`): a Key Object Selection whose bytes cannot",
        "be read as a data set (a deflate stream that is damaged or cut short, more data elements than the node",
        "reads), one cut short anywhere before its Document Title, one without a Document Title or SOP Class UID, and",
        "a rejection note cut short anywhere (a byte or a few after its last element too: they cannot be told from a",
        "cut), whose content cannot be walked, names no instance or has an image item without its reference, whose",
        "evidence lists none, or whose Patient ID cannot be read: it may be a rejection note, or is a damaged one, and",
        "answering it Success would tell its sender it was honoured. A key image selection (another title) cut or",
        "damaged after its title is accepted and not kept, as any other.",
        "",
    ]


def _association_initiation() -> list[str]:
    """Section 4: how the results are sent to the destinations."""
    return [
        "## 4. Association initiation (SCU)",
        "",
        "The results go to each destination in `DICOM_NODE_DESTINATIONS` (`AE@host:port`; an IPv6 address in",
        "brackets, `AE@[2001:db8::5]:104`), the calling AE title",
        "being the node's, one association per study and destination, proposing the classes of the results it sends",
        "(a study without a tumor has no SEG, a first analysis no rejection note) among:",
        "",
        *_table("| abstract syntax | UID |", _uid_rows(RESULT_CLASSES)),
        "",
        *_table("| transfer syntax | UID |", _uid_rows(RESULT_TRANSFER_SYNTAXES)),
        "",
        "A C-STORE answered Success or a Warning (`0001`, `0107`, `0116`, `Bxxx`) is delivered; a failure status, no",
        f"answer within `DICOM_NODE_SEND_TIMEOUT_SECONDS` ({_default('dicom_node_send_timeout_seconds')} s), or an",
        "unreachable",
        f"destination is retried `DICOM_NODE_SEND_RETRIES` ({_default('dicom_node_send_retries')}) times with",
        "exponential backoff, then again on later passes. Every attempt is recorded in the spool's `sent.jsonl`.",
        "Each association sends the SR first, then the SEG, then a rejection note: a destination that drops the",
        "association on a SEG it cannot take still has the report.",
        "Results a destination has not yet received when a later analysis of the study supersedes them are not",
        "sent to it: it gets the later results only. A destination that does not accept Key Object Selection, or",
        "refuses the rejection note's C-STORE, gets the SEG and SR without the note (below); the results count as",
        'delivered and the note is recorded "declined" (not retried). A destination that accepts the association',
        "but no presentation context for Segmentation Storage (a report archive that takes SR only) gets the SR",
        'alone: the SEG is recorded "declined", a warning is logged, and the study counts as delivered (it was',
        "retried on every pass and never purged); so does one that answers the SEG's C-STORE with a lasting",
        "refusal: 0x0122 (SOP Class not supported), 0xA9xx (Data Set does not match SOP Class) or 0xCxxx (Cannot",
        "understand). A SEG whose C-STORE a destination answers with another failure status (0xA7xx Out of",
        "Resources) is retried as any failure. The SR is the same for every destination: one that declined the",
        "SEG holds an SR that names it (its Referenced Segment and evidence), as sent to the others. Likewise a",
        "destination that takes SEG and not Comprehensive SR (no context, or a lasting refusal) gets the SEG alone:",
        'the SR is recorded "declined" with a warning, and the study counts as delivered. One that takes neither',
        "the SR nor the SEG takes nothing the node makes: a failure, retried and alerted on as any other.",
        "",
    ]


def _objects_created() -> list[str]:
    """Section 5: the SEG and the SR the node makes."""
    return [
        "## 5. Objects created",
        "",
        "Both are in the source study (its patient and study attributes copied, Specific Character Set derived from",
        "the sources'), with their own series, and name the models (Algorithm Identification). A Type 2 patient or",
        "study value that breaks its value type is left empty in both, but an Accession Number, Study ID or Patient",
        "ID that is only too long is copied as it came (the study is matched by them); a Patient ID broken otherwise",
        "fails the study (an empty one would file the results as another patient's). Optional (Type 3) values that",
        "break their type, and optional sequences of no item, are left out.",
        "",
        f"- **Segmentation** (SEG), series number {SEG_SERIES_NUMBER}, Series Description",
        f'  "{SEG_SERIES_DESCRIPTION}": BINARY, one segment "{SEGMENT_LABEL}" (SNOMED CT Morphologically abnormal',
        "  structure / Neoplasm, in the brain), one frame per source frame (empty frames kept). Sent only when a",
        "  slice is positive; slices without a Frame of Reference (Secondary Captures) get one SEG each. Sources",
        "  a SEG cannot be made of (MR slices without Frame of Reference UID, a series split over several",
        "  multi-frame instances, an enhanced image's negative Slice Thickness) get the SR alone, with a note saying",
        "  why no SEG was made (the record's `segmentation_refused`).",
        f"- **Comprehensive SR**, series number {SR_SERIES_NUMBER}, Series Description",
        f'  "{SR_SERIES_DESCRIPTION}": TID 1500 Measurement Report, PRELIMINARY and UNVERIFIED, always sent (a',
        "  negative study too): the tumor's presence, its volume in mL, slices analysed / with tumor / missing,",
        "  whether the tumor reaches the series' end, notes on how the series were chosen, the source images (the",
        "  T1 series too when the models read them as channels, with a note saying so) and SEGs as evidence. Its",
        "  content tree ends with a Comment (121106, DCM) that a viewer shows beside the finding:",
        f'  "{RESEARCH_USE_STATEMENT}"',
        "  Completion Flag COMPLETE, or PARTIAL when an association that sent the study ended without a release or",
        "  had instances refused (instances may be missing: a note says how many; the rest sent later gives a new",
        "  result), unless every instance held came again over released associations before the analysis (the",
        "  study sent again whole). A report that supersedes an earlier",
        "  one names it in its Predecessor Documents Sequence, and it and its SEG have UIDs of their own (the same",
        "  findings as an older run make new objects; so does a study sent again with a corrected Patient's Name,",
        f'  Accession Number ...) and Series Descriptions ending in "{REVISED_SUFFIX}" (same Series Numbers); both',
        "  carry Series Date and Time. A study sent again under another Patient ID (a temporary ID corrected) is",
        "  another study to the node, which keys a study by Patient ID and Study Instance UID: it gets results of its",
        "  own, and the first ID's results are neither revised nor withdrawn; remove them in the archive, as the",
        "  images filed under the temporary ID are.",
        f"- **Key Object Selection** (rejection note, IHE IOCM), series number {REJECTION_SERIES_NUMBER}, Series",
        f'  Description "{REJECTION_SERIES_DESCRIPTION}", Document Title (113001, DCM, "Rejected for Quality',
        '  Reasons"): sent with results that supersede earlier ones, listing the earlier SEGs and SRs that a',
        "  destination stored, from any earlier run, and that the new results do not send again (C-STORE cannot",
        "  delete them: a revision that turned a study negative left the earlier SEG standing). Made from the study's",
        "  record, it names them after the retention purge too. Its patient and study attributes are the new results'.",
        "  It is also sent alone, without new results, when a study that was answered can no longer be analysed (a",
        "  slice re-sent under a new UID at another's position, a series of it that came later under another Study",
        "  Instance UID, the study with an empty Patient ID on some files) or is left without FLAIR (every FLAIR",
        "  instance rejected by an incoming rejection note, section 3): the study is refused or not analysed then,",
        "  results of it still waiting are not sent, and the note's patient and study attributes are those of its",
        "  instances (of the incoming note, when none is left), and its Series Description",
        f'  "{WITHDRAWAL_SERIES_DESCRIPTION}" (nothing supersedes what it rejects).',
        "  An archive that implements IOCM withdraws them; others keep it as a key object note.",
        "",
    ]


def _security() -> list[str]:
    """Section 6: what the node does not protect against."""
    return [
        "## 6. Security",
        "",
        "No TLS and no user identity negotiation: make the node reachable only from the senders it serves (a firewall",
        "rule for the PACS and the scanners). The calling AE title check is access control, not authentication, and",
        "any sender that reaches the node can take its association slots ("
        f"{-(-_default('dicom_node_max_associations') // _default('dicom_node_max_associations_per_peer'))} "
        "addresses at the defaults, 2 in docker-compose.yml's node) or fill its",
        "queue of studies up to the limits above. Logs name studies by a hash, never by patient attributes.",
        "",
    ]


if __name__ == "__main__":
    print(conformance_statement(), end="")
