"""Which of a request's DICOM files the models read: the one place the prediction flow applies sequence selection.

Every caller of the flow (`/v1/predict`, `/v1/predict/batch`, `brain-tumor predict`, pacs-sync, the DICOM node)
comes through `choose_series`, so channel order never comes from the order files were sent in:

- files of **one series** keep the behaviour the models were built for: the series is read as FLAIR, unless the
  rules (`app.series.sequence_roles`) positively classify it as T1, as a localizer, or as another contrast (DWI, SWI,
  T2*, ...) by name or sequence attributes; then the request is refused (`NoFlairSeriesError`): such a series is
  never segmented as if it were FLAIR. A series that says nothing of its contrast is read as FLAIR with a note
  (`only_series_note`), as pacs-sync and the DICOM node read a study of that one series;
- files of **several series** go through `select_sequences`: the FLAIR series, with the pre- and post-contrast T1
  series when exactly one of each is found (mapped by their attributes), else FLAIR alone; no FLAIR refuses the
  request with the selection's reason. Files of the series not used are left out and reported
  (`SeriesChoice.left_out`), not counted as errors.

When the T1 slices then do not pair with FLAIR's, the flow reads FLAIR alone (`SeriesChoice.flair_alone`). A FLAIR
series that is not axial (sagittal, coronal, steeply oblique) is read with a note, on either path
(`app.series.sequence_roles.orientation_note`). Pure functions over headers: nothing here decodes pixels or logs.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import partial

from app.dicom.dicom_header import DicomHeader
from app.errors import MixedInputError, NoFlairSeriesError, ServiceError
from app.series.info import SeriesInfo, identity_text, series_number_order, where_in_study
from app.series.rejection_notes import withdrawn_by_series
from app.series.sequence_roles import (
    SequenceRole,
    SeriesClassification,
    classify_series,
    only_series_note,
    orientation_note,
    select_sequences,
)
from app.series.sequence_rules import SelectionRules
from app.uploads import MOST_FILES_NAMED, files_that_differ, request_files

T1_ROLES = (SequenceRole.T1_PRE, SequenceRole.T1_POST)


@dataclass(frozen=True)
class SeriesUse:
    """One series of a request, the role the flow gave it and why (no patient data: numbers, names of sequences)."""

    series_instance_uid: str
    role: str
    series_number: int | None
    series_description: str
    evidence: str
    files: tuple[int, ...]
    """Positions of the series' files in the request."""


@dataclass(frozen=True)
class SeriesChoice:
    """The series the models read, in channel order, and those left out.

    Attributes
    ----------
    used
        FLAIR alone, or pre-contrast T1, FLAIR, post-contrast T1 (the model's channel order).
    left_out
        The request's other series, with the role the rules gave them.
    notes
        What else was decided (T1 series left out and why, several FLAIR candidates, FLAIR slices not axial).
    """

    used: tuple[SeriesUse, ...] = ()
    left_out: tuple[SeriesUse, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def channel_series(self) -> tuple[str, ...]:
        """Series Instance UIDs in channel order."""
        return tuple(item.series_instance_uid for item in self.used)

    @property
    def used_files(self) -> frozenset[int]:
        return frozenset(index for item in self.used for index in item.files)

    @property
    def left_out_files(self) -> tuple[int, ...]:
        return tuple(sorted(index for item in self.left_out for index in item.files))

    @property
    def flair(self) -> SeriesUse | None:
        return next((item for item in self.used if item.role == SequenceRole.FLAIR), None)

    def flair_alone(self, why: str) -> SeriesChoice:
        """The same choice with the T1 series moved to `left_out`: FLAIR is read alone, as the models accept."""
        flair = self.flair
        if flair is None or len(self.used) == 1:
            return self
        t1 = tuple(item for item in self.used if item is not flair)
        left_out = sorted(
            (*self.left_out, *t1), key=lambda item: series_number_order(item.series_number, item.series_instance_uid)
        )
        return replace(
            self,
            used=(flair,),
            left_out=tuple(left_out),
            notes=(*self.notes, f"T1 series left out: {why}; FLAIR analysed alone"),
        )

    def without_copies(self, originals: Mapping[int, int]) -> SeriesChoice:
        """The same choice with the files `originals` names (copy -> the file it copies,
        `app.series.reading.copies_of_read_files`) moved out of the series in use, into `left_out` under the same
        series and role: they are left out, not unreadable (interop review 37: counted as files not read, a study
        whose lossy copies came after it was analysed again with a note that its slices were missing)."""
        return self._moved_out(
            originals,
            lambda count: (
                f"{count} {'copy' if count == 1 else 'copies'} of files read: each names its original in its Source "
                "Image Sequence and lies where it lies (a slice sent again after lossy compression); the originals are "
                "read"
            ),
        )

    def without_repeats(self, kept: Mapping[int, int]) -> SeriesChoice:
        """The same choice with the files `kept` names (repeat -> the file read in its place: found from the headers,
        `app.series.reading.resent_files_by_header`, or from the decoded pixels, `resent_files_by_pixels`) moved into
        `left_out`, as `without_copies` does: a series sent again
        under new SOP Instance UIDs (a re-import, a migration) gives two identical images at each slice position,
        and the study was refused and its results withdrawn (interop review 58 F1)."""
        return self._moved_out(
            kept,
            lambda count: (
                f"{count} {'file repeats' if count == 1 else 'files repeat'} files read pixel for pixel at the same "
                "place under other SOP Instance UIDs (a series sent twice); each slice is read once"
            ),
        )

    def _moved_out(self, files: Collection[int], evidence: Callable[[int], str]) -> SeriesChoice:
        """The same choice with `files` moved out of the series in use into `left_out`, under the same series and
        role, with `evidence(count)` as the reason."""
        if not files:
            return self
        used, moved = [], []
        for item in self.used:
            out = tuple(index for index in item.files if index in files)
            if not out:
                used.append(item)
                continue
            used.append(replace(item, files=tuple(index for index in item.files if index not in files)))
            moved.append(replace(item, evidence=evidence(len(out)), files=out))
        return replace(self, used=tuple(used), left_out=(*self.left_out, *moved))

    def describe_used(self) -> str:
        """ASCII, no descriptions: ``FLAIR=5; T1 pre-contrast=3; T1 post-contrast=7`` (for a response header)."""
        order = [SequenceRole.FLAIR.value, SequenceRole.T1_PRE.value, SequenceRole.T1_POST.value]
        used = sorted(self.used, key=lambda item: order.index(item.role))
        return "; ".join(f"{item.role}={_number_or_unnumbered(item.series_number)}" for item in used)


def choose_series(headers: Sequence[DicomHeader | ServiceError], rules: SelectionRules | None = None) -> SeriesChoice:
    """The series of a request's readable files that the models read (see the module docstring).

    Parameters
    ----------
    headers
        Each file's header, or its error, in request order (`app.series.reading.read_headers`).
    rules
        Default: `SelectionRules()`.

    Raises
    ------
    MixedInputError
        If the files come from several studies or patients: one answer, SEG or SR would mix them.
    NoFlairSeriesError
        If the files span several series and none is FLAIR, or their one series is T1-weighted.
    """
    dicom_headers = [header for header in headers if isinstance(header, DicomHeader)]
    _refuse_several_studies(headers)
    try:
        choice = _choose(headers, rules or SelectionRules())
    except NoFlairSeriesError as error:
        withdrawn = _withdrawn_series(headers)
        if not withdrawn:
            raise
        # First: the page cuts a long message (a study of many series) at its end (review 72 F8).
        raise NoFlairSeriesError(f"{withdrawn}; {error.message}") from None
    _refuse_identity_that_differs_where_read(headers, choice)
    note = _disagreeing_patient_note(dicom_headers)
    return replace(choice, notes=(*choice.notes, note)) if note else choice


def _withdrawn_series(headers: Sequence[DicomHeader | ServiceError]) -> str:
    """What the request's rejection notes withdrew, by series: a FLAIR series withdrawn whole, its T1 series left, was
    refused as "the study has no FLAIR series", the withdrawal unsaid (browser review 61 F5). "" when nothing was."""
    counts = withdrawn_by_series(headers)
    if not counts:
        return ""
    withdrawn = ", ".join(f"{count} of series {series}" for (_, series), count in counts.items())
    return f"the request's rejection notes withdrew {counts.total()} of its images ({withdrawn}), not read"


def _choose(headers: Sequence[DicomHeader | ServiceError], rules: SelectionRules) -> SeriesChoice:
    """`choose_series` once the files are known to be of one study and patient."""
    files: dict[str, list[int]] = {}
    first: dict[str, DicomHeader] = {}
    for index, header in enumerate(headers):
        if isinstance(header, DicomHeader):
            uid = str(header.dataset.get("SeriesInstanceUID", ""))
            files.setdefault(uid, []).append(index)
            first.setdefault(uid, header)
    if not files:
        return SeriesChoice()
    if len(files) == 1:
        ((uid, header),) = first.items()
        return _only_series(header, tuple(files[uid]), rules)
    # Every header, not one per series: a series whose slices lie in several planes (a 3-plane scout) is never T1.
    selection = select_sequences((header.dataset for header in headers if isinstance(header, DicomHeader)), rules)
    if not selection.analysed:
        raise NoFlairSeriesError(f"the request's files span {len(files)} series and none is FLAIR: {selection.reason}")
    by_uid = {item.series.series_instance_uid: item for item in selection.classifications}
    channels = selection.channel_series
    used = tuple(
        _use(by_uid[uid], tuple(files[uid]), role)
        for uid, role in zip(channels, _channel_roles(len(channels)), strict=True)
    )
    left_out = tuple(
        _use(item, tuple(files[item.series.series_instance_uid]), item.role)
        for item in selection.classifications
        if item.series.series_instance_uid not in channels
    )
    return SeriesChoice(used, left_out, selection.notes)


STUDY_KEYWORDS = ("StudyInstanceUID", "PatientID")
"""The study and patient every DICOM file of a request must share, read or left out."""


def _refuse_several_studies(headers: Sequence[DicomHeader | ServiceError]) -> None:
    """Refuse files of several studies or patients (attack finding: a tumor series and another study's tumor-free
    FLAIR series were answered from the second, "no tumor", the first only listed as left out), naming the files
    that differ from the most (browser review 39)."""
    for keyword in STUDY_KEYWORDS:
        files: dict[str, list[int]] = {}
        for index, header in enumerate(headers):
            if isinstance(header, DicomHeader) and (value := _identity_value(header, keyword)):
                files.setdefault(value, []).append(index)
        if len(files) > 1:
            raise MixedInputError(
                f"the request's DICOM files come from {len(files)} "
                f"{'studies' if keyword == 'StudyInstanceUID' else 'patients'} (by {keyword}): "
                f"{files_that_differ(files, partial(_where, headers=headers))}; send one study per request: the series "
                "the models read are chosen within it"
            )


def _refuse_identity_that_differs_where_read(
    headers: Sequence[DicomHeader | ServiceError], choice: SeriesChoice
) -> None:
    """Refuse files of the series read whose identity is not one: a Study Instance UID or Patient ID left empty on
    some of them, or an Issuer of Patient ID left empty or another on some FLAIR files.

    Why: such a file is not known to be the others' patient, and the SEG and SR were filed under whichever file came
    first, an empty Patient ID included (attack review 38). Only the files read: a series left out puts nothing in
    the results (attack review 39: a localizer from another device without the issuer, or with its own, refused the
    study through the API while the node, which reads the chosen series only, analysed it). The issuer (optional,
    and written by some devices and not others) only among FLAIR's files, whose identity the SEG and SR carry: T1
    series that have it beside a FLAIR series that does not refused the study, even when FLAIR was then read alone.
    """
    read = [
        (index, header)
        for index, header in enumerate(headers)
        if index in choice.used_files and isinstance(header, DicomHeader)
    ]
    flair = set(choice.flair.files) if choice.flair is not None else set()
    flair_files = [(index, header) for index, header in read if index in flair]
    for keyword, files in (("StudyInstanceUID", read), ("PatientID", read), ("IssuerOfPatientID", flair_files)):
        values: dict[str, list[int]] = {}
        for index, header in files:
            values.setdefault(_identity_value(header, keyword), []).append(index)
        empty = values.pop("", [])
        if empty and values:
            raise MixedInputError(
                f"{len(empty)} of the {len(files)} {'FLAIR' if keyword == 'IssuerOfPatientID' else 'DICOM'} files "
                f"read have no {keyword} and the others one "
                f"({_dicom_files(empty, headers)}): they are not known to be of one "
                f"{'study' if keyword == 'StudyInstanceUID' else 'patient'}, and a SEG or SR would be filed under one "
                "of them; send files whose identity agrees"
            )
        if len(values) > 1:  # only the issuer can differ here: two studies or Patient IDs are refused before
            raise MixedInputError(
                f"the FLAIR files read come from {len(values)} patients (by {keyword}): "
                f"{files_that_differ(values, partial(_where, headers=headers))}; send files whose identity agrees"
            )


def _dicom_files(indices: Sequence[int], headers: Sequence[DicomHeader | ServiceError]) -> str:
    """`request_files` with where the files named lie (`_where`)."""
    return request_files(indices, _where(indices[:MOST_FILES_NAMED], headers))


def _where(indices: Sequence[int], headers: Sequence[DicomHeader | ServiceError]) -> str:
    """The series and instance numbers of the files at `indices` (`where_in_study`), by which the DICOM node's and
    pacs-sync's users find them."""
    return where_in_study([header.dataset for index in indices if isinstance(header := headers[index], DicomHeader)])


def _identity_value(header: DicomHeader, keyword: str) -> str:
    return identity_text(header.dataset.get(keyword))


def _disagreeing_patient_note(headers: Sequence[DicomHeader]) -> str | None:
    """A note when files of one Patient ID disagree on the patient's name or birth date (attack finding: three names
    and birth dates were analysed without a word, and the SEG and SR carried the first's). Not refused: a name
    corrected between two series, or written with other separators, is common; the note names no value."""
    names = {_comparable_name(header.dataset.get("PatientName")) for header in headers} - {""}
    birth_dates = {str(header.dataset.get("PatientBirthDate") or "").strip() for header in headers} - {""}
    disagree = [what for what, values in (("name", names), ("birth date", birth_dates)) if len(values) > 1]
    if not disagree:
        return None
    return (
        f"the files disagree on the patient's {' and '.join(disagree)} under one Patient ID (a SEG or SR carries "
        "one file's): check the study's identity"
    )


def _comparable_name(value: object) -> str:
    """Patient's Name without the empty components and case that differ between writers (``DOE^JOHN^^^``)."""
    return "^".join(part.strip() for part in str(value or "").upper().split("^")).rstrip("^ ")


def _only_series(header: DicomHeader, files: tuple[int, ...], rules: SelectionRules) -> SeriesChoice:
    """The one series of a request: FLAIR unless the rules say T1, localizer or another contrast."""
    info = SeriesInfo.from_dataset(header.dataset)
    classification = classify_series(info, rules)
    orientation = orientation_note(info, rules)
    if classification.localizer:
        raise NoFlairSeriesError(
            f"the request's one series ({classification.series.number_text}) is not analysed "
            f"({classification.evidence}); the models read FLAIR"
        )
    if classification.role in T1_ROLES:
        raise NoFlairSeriesError(
            f"the request's one series ({classification.series.number_text}) is "
            f"{classification.role.value} ({classification.evidence}); the models read FLAIR, so it is not analysed"
        )
    if classification.role == SequenceRole.FLAIR:
        flair = _use(classification, files, SequenceRole.FLAIR)
        return SeriesChoice(used=(flair,), notes=(orientation,) if orientation else ())
    if not classification.undetermined:  # named as another contrast (DWI, SWI, ...), or its attributes say so
        raise NoFlairSeriesError(
            f"the request's one series ({classification.series.number_text}) is another "
            f"contrast ({classification.evidence}); the models read FLAIR, so it is not analysed"
        )
    evidence = f"the request's only series, taken as FLAIR ({classification.evidence})"
    flair = replace(_use(classification, files, SequenceRole.FLAIR), evidence=evidence)
    notes = (only_series_note(info), orientation) if orientation else (only_series_note(info),)
    return SeriesChoice(used=(flair,), notes=notes)


def _channel_roles(channels: int) -> tuple[SequenceRole, ...]:
    if channels == 3:
        return (SequenceRole.T1_PRE, SequenceRole.FLAIR, SequenceRole.T1_POST)
    return (SequenceRole.FLAIR,)


def _use(item: SeriesClassification, files: tuple[int, ...], role: SequenceRole) -> SeriesUse:
    series = item.series
    return SeriesUse(
        series.series_instance_uid, role.value, series.series_number, series.description, item.evidence, files
    )


def _number_or_unnumbered(series_number: int | None) -> str:
    return "unnumbered" if series_number is None else str(series_number)
