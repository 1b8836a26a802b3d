"""Fetching one Orthanc study's files for pacs-sync: within the study's byte budget, each header read once, files
that cannot be read counted, and the instances its rejection notes withdraw left out.

`app.pacs.pacs_study.StudySync` chooses the series from `first_files` and analyses what `series_files` fetches.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset

from app.dicom.dicom_header import garbled_values_refused, read_header, unpadded_uid
from app.dicom.dicom_input import undecodable_transfer_syntax
from app.dicom.incoming_rejection import (
    IncomingRejection,
    incoming_rejection,
    may_be_rejection_note,
    read_rejection_note,
)
from app.errors import UndecodableDicomError, UnreadableRejectionNoteError
from app.pacs.orthanc_client import OrthancClient
from app.pacs.orthanc_errors import AnswerTooLargeError
from app.series.info import identity_text

logger = logging.getLogger(__name__)


class StudyTooLargeError(RuntimeError):
    """The files of a study's series add up to more than `PacsSyncConfig.max_study_bytes`, or it has more than
    `app.pacs.pacs_study.MAX_MR_SERIES` MR series."""


class MixedStudyError(RuntimeError):
    """A study's instances name different patients or studies (never the values: they are patient data)."""


@dataclass(frozen=True)
class FirstFile:
    """A series' first instance whose header can be read: its place in the series, its file and its header."""

    position: int
    data: bytes
    header: Dataset


def series_files(series: dict[str, Any], first: FirstFile, fetch: StudyFileFetcher) -> list[bytes]:
    """The series' files from its first readable one on, less those whose header cannot be read (`fetch` counts
    them), as the DICOM node reads a study (`app.study_analysis.ModelStudyProcessor.choose_files`)."""
    files = [first.data]
    for instance in series["Instances"][first.position + 1 :]:
        data, header = fetch(str(instance))
        if header is not None and not fetch.left_out(header):
            files.append(data)
    return files


CHECKED_TAGS = ("PatientID", "StudyInstanceUID", "SOPInstanceUID", "BitsStored", "BitsAllocated")
"""What `StudyFileFetcher` reads of a file it does not choose a series by: its patient and study, its UID (rejected
or not), and its bits."""


class StudyFileFetcher:
    """Fetches one study's instance files within `PacsSyncConfig.max_study_bytes`, reads each header once
    (`read_header`), counts the files whose header cannot be read (`unreadable`), and checks that they belong to one
    patient and one study, as an Orthanc study's instances must (a PACS that mixes them would get a SEG and a volume
    made of two patients' slices)."""

    def __init__(self, client: OrthancClient) -> None:
        self.client = client
        self.fetched = 0
        self.unreadable = 0
        self.identity: tuple[str, str] | None = None
        self.rejected: frozenset[str] = frozenset()  # SOP Instance UIDs an incoming rejection note rejected
        self._left_out: set[str] = set()  # those of `rejected` met among the files fetched

    @property
    def left_out_rejected(self) -> int:
        """How many files fetched an incoming rejection note rejected, each counted once however often fetched."""
        return len(self._left_out)

    def left_out(self, header: Dataset) -> bool:
        """Whether the file is one an incoming rejection note rejected (counted): it is not analysed."""
        sop_instance_uid = unpadded_uid(header.get("SOPInstanceUID"))
        if sop_instance_uid not in self.rejected:
            return False
        self._left_out.add(sop_instance_uid)
        return True

    def __call__(
        self, instance_id: str, whole_header: bool = False, note: bool = False
    ) -> tuple[bytes, Dataset | None]:
        """The instance's file (Orthanc's uncompressed copy when no decoder here reads it) and its header, whole for
        choosing a series by it, else only what this checks (`CHECKED_TAGS`: the flow reads every file again); None
        for a file whose header cannot be read, counted in `unreadable` unless it is a `note` (a Key Object
        Selection: no image left out, `_rejection` decides what it means)."""
        data = self.client.instance_file(instance_id)
        header = read_header(data, None if whole_header else CHECKED_TAGS)
        identity, transcoded = ("", ""), False
        if header is not None:
            try:
                with garbled_values_refused():  # a value pydicom cannot read: the file is counted, as the node does
                    identity = identity_text(header.get("PatientID")), str(header.get("StudyInstanceUID", ""))
                    transcoded = _needs_transcoding(header)
            except UndecodableDicomError:
                header = None
        if header is None:
            self.unreadable += 0 if note else 1
        elif transcoded:  # Orthanc decodes more transfer syntaxes than we do
            data = self.client.uncompressed_instance_file(instance_id)  # its UIDs and patient kept
        self.fetched += len(data)
        limit = self.client.config.max_study_bytes
        if self.fetched > limit:
            raise StudyTooLargeError(f"the study's files take more than {limit} bytes (max_study_bytes); not analysed")
        if header is not None:
            self.identity = self.identity or identity
            if identity != self.identity:
                raise MixedStudyError("the study's instances disagree on Patient ID or Study Instance UID")
        return data, header


def _rejection(data: bytes) -> IncomingRejection | None:
    """What a KOS of the study rejects; None for one that rejects nothing. It is read whole, within
    `incoming_rejection.MAX_NOTE_BYTES` (`read_rejection_note`), and one that cannot be read (damaged, cut short,
    too large) is decided as the DICOM node decides: a damaged key image selection withdraws nothing, a note (or
    what may be one) fails the study."""
    try:
        return incoming_rejection(read_rejection_note(data))
    except Exception as error:  # noqa: BLE001 - pydicom raises many types on a damaged note
        if may_be_rejection_note(data):
            raise UnreadableRejectionNoteError(
                f"a rejection note of the study cannot be read ({type(error).__name__}): the images it withdraws are "
                "unknown; repair or delete it in Orthanc"
            ) from None
        return None


def _needs_transcoding(header: Dataset) -> bool:
    """Whether the file's pixel data is in a transfer syntax no decoder here reads (`undecodable_transfer_syntax`)."""
    transfer_syntax = getattr(header, "file_meta", Dataset()).get("TransferSyntaxUID")
    bits_stored = int(header.get("BitsStored") or header.get("BitsAllocated") or 0)
    return transfer_syntax is not None and undecodable_transfer_syntax(transfer_syntax, bits_stored) is not None


def rejected_instances(ko_series: list[dict[str, Any]], fetch: StudyFileFetcher) -> frozenset[str]:
    """The SOP Instance UIDs the study's IHE IOCM rejection notes reject (`incoming_rejection`: a KOS titled in
    CID 7011, naming instances of its own study), to be left out of its analysis. Why: otherwise a SEG and SR
    made of images the PACS no longer stands by would stand."""
    rejected: set[str] = set()
    for series in ko_series:
        for instance in series["Instances"]:
            rejection = _rejection(fetch(str(instance), note=True)[0])
            if rejection is not None:
                rejected |= rejection.sop_instance_uids
    return frozenset(rejected)


def first_files(
    study_id: str, mr_series: list[dict[str, Any]], fetch: StudyFileFetcher
) -> tuple[dict[str, FirstFile], list[str]]:
    """Orthanc series ID -> its first instance whose header can be read, for choosing the series; and the IDs of
    the series left out for size.

    Files before it whose header cannot be read are counted (`StudyFileFetcher.unreadable`) and skipped, as the DICOM
    node skips them (an unreadable first file must not fail the whole study); a series with none readable is not in
    the choice. A series whose first file is over `PacsSyncConfig.max_instance_bytes` (a large
    multi-frame object, e.g. diffusion) is left out of the choice, as the upload API leaves out a file over its
    limit: the FLAIR series next to it is still analysed. `StudySync` records what was left out, and fails the
    study when nothing else has a FLAIR."""
    found: dict[str, FirstFile] = {}
    too_large: list[str] = []
    for series in mr_series:
        try:
            for position, instance in enumerate(series["Instances"]):
                data, header = fetch(str(instance), whole_header=True)
                if header is not None and not fetch.left_out(header):
                    found[str(series["ID"])] = FirstFile(position, data, header)
                    break
        except AnswerTooLargeError:
            too_large.append(str(series["ID"]))
            logger.warning(
                "series left out: its first file is over the instance limit",
                extra={"fields": {"orthanc_study": study_id, "orthanc_series": str(series["ID"])}},
            )
    return found, too_large
