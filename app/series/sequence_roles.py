"""Which series of a study the models read: FLAIR, and the pre- and post-contrast T1 series when both are there.

The models learned FLAIR (with pre- and post-contrast T1 as the other two channels). Scanners and PACS send series
in no useful order, so the roles come from each series' own attributes, never from its position in a request:

0. **Localizers** (Image Type ``LOCALIZER``, or a localizer's name: ``localizer``, ``AAHead_Scout``, ``3-pl loc``,
   ``Survey``) are never a channel: their short-TR, short-TE gradient echo looks T1-weighted, and one of them beside
   the study's T1 series turned the three-channel mode off.
1. **Text**: Series Description, else Protocol Name, matched case-insensitively against wildcards
   (`app.series.sequence_rules.SelectionRules`). The Series Description decides when it matches a localizer, FLAIR,
   T1 or other-contrast wildcard: Protocol Name is often the whole examination's protocol
   (``MR BRAIN W WO T1 T2 FLAIR``), naming every sequence of it. A name that matches a T1 wildcard is T1 even when
   it also says FLAIR (``T1 FLAIR`` is T1-weighted); one that names another contrast (``AX T2* GRE``,
   ``SWI_Images``, ``Ax DWI``) and neither T1 nor FLAIR is neither.
2. **Sequence attributes**, which confirm or replace the text: an inversion-recovery sequence (Scanning Sequence
   ``IR``) with Inversion Time at or above `flair_min_inversion_ms` is FLAIR (fluid suppression needs TI about
   1500-2800 ms; STIR and T1-weighted IR use far shorter TIs); a named FLAIR whose stated TI is below that is not
   FLAIR. Without a name, an IR with a TI between `t1_inversion_ms` is T1, and so are short TR and TE
   (`t1_max_repetition_ms`, `t1_max_echo_ms`), except for a gradient echo with Echo Time at or above
   `t1_gradient_echo_max_echo_ms` (T2*-weighted: T2* GRE, SWI; T1 spoiled gradient echoes such as MPRAGE, VIBE or
   SPGR use TE of 2-5 ms), an echo-planar sequence (diffusion, perfusion, BOLD) or a time-reversed steady state
   (T2-weighted). Flip Angle is not used: a 3-plane scout (TR 8.6 ms, 20-40 degrees) and a T1 SPGR share it, as do
   a T2* GRE and a 3D T1 FLASH. A series whose slices lie in several planes (a 3-plane scout) is never T1.
3. **Contrast**: a T1 (or FLAIR) series is post-contrast when its Contrast/Bolus Agent (or Ingredient, Route,
   Volume) is filled in, or its name matches a post-contrast wildcard (``*POST*``, ``*+C*``, ``*GAD*``): the name
   that said the role when one did, so a ``W WO CONTRAST`` examination protocol does not make every series post.

A study is analysed when it has a FLAIR series, or when its one series besides localizers says nothing of its
contrast (neither name nor sequence attributes): that series is read as FLAIR, with a note (`only_series_note`), on
every path alike (a request of one series, pacs-sync, the DICOM node). The pre- and post-contrast T1 series are used
only when exactly one of each is found, else FLAIR goes alone (as the models were trained to accept) and the
selection says why. Several FLAIR candidates are ranked by evidence (name and attributes over either alone; no
contrast over contrast), then axial before other orientations (the models learned axial slices: a sagittal 3D FLAIR
beside an axial one is not read), then by Series Number and UID, so any order of the same series gives the same
answer. A FLAIR series read whose slices are tilted more than `axial_max_tilt_degrees` from axial (sagittal, coronal,
steeply oblique) is still analysed, with a note (`orientation_note`): a real sagittal reslice scored Dice 0.80 against
0.89 for the same patient's axial series. A study with no FLAIR otherwise is not analysed, with the reason. Pure
functions: no I/O, no logging.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import TYPE_CHECKING

from app.dicom.dicom_header import modality_named
from app.series.info import SeriesInfo, is_lossy, slice_planes
from app.series.sequence_rules import SelectionRules

if TYPE_CHECKING:
    from pydicom.dataset import Dataset


class SequenceRole(StrEnum):
    FLAIR = "FLAIR"
    T1_PRE = "T1 pre-contrast"
    T1_POST = "T1 post-contrast"
    OTHER = "other"


@dataclass(frozen=True)
class SeriesClassification:
    """A series' role and the evidence for it (a short sentence, free of patient data)."""

    series: SeriesInfo
    role: SequenceRole
    evidence: str
    named: bool = False
    by_attributes: bool = False
    contrast: bool = False
    localizer: bool = False
    undetermined: bool = False  # nothing says FLAIR, T1 or another contrast


@dataclass(frozen=True)
class StudySelection:
    """The series the models read, or why none.

    Attributes
    ----------
    flair, pre_contrast, post_contrast
        The chosen series (T1s only when both are found, once each); None where absent.
    reason
        Why the study is not analysed; None when it is.
    notes
        What else the selection decided (a T1 left out, several FLAIR candidates).
    classifications
        Every series of the study with its role and evidence, by Series Number.
    """

    flair: SeriesInfo | None
    pre_contrast: SeriesInfo | None
    post_contrast: SeriesInfo | None
    reason: str | None
    notes: tuple[str, ...] = ()
    classifications: tuple[SeriesClassification, ...] = field(default_factory=tuple)

    @property
    def analysed(self) -> bool:
        return self.flair is not None

    @property
    def channel_series(self) -> tuple[str, ...]:
        """Series Instance UIDs in model channel order: (pre, FLAIR, post), or (FLAIR,) alone; () if not analysed."""
        if self.flair is None:
            return ()
        if self.pre_contrast is not None and self.post_contrast is not None:
            return (
                self.pre_contrast.series_instance_uid,
                self.flair.series_instance_uid,
                self.post_contrast.series_instance_uid,
            )
        return (self.flair.series_instance_uid,)


def classify_series(series: SeriesInfo, rules: SelectionRules | None = None) -> SeriesClassification:
    """The role of one series by the module's rules (localizer, text, then sequence attributes, then contrast)."""
    rules = rules or SelectionRules()
    classification = _classify(series, rules)
    if classification.role in (SequenceRole.T1_PRE, SequenceRole.T1_POST) and len(series.planes) > 1:
        # A 3-plane scout is a short-TR, short-TE gradient echo: never a T1 channel, whatever else it looks like.
        planes = ", ".join(sorted(series.planes))
        return SeriesClassification(
            series,
            SequenceRole.OTHER,
            f"slices in {len(series.planes)} planes ({planes}), as in a localizer: not a T1 channel "
            f"({classification.evidence})",
        )
    return classification


def orientation_note(flair: SeriesInfo, rules: SelectionRules | None = None) -> str | None:
    """The note for a FLAIR series read whose slices are not axial (tilted over `axial_max_tilt_degrees`); None for
    axial (and slightly oblique) slices or an unknown orientation. The same words on every path, so a study's
    record holds it once."""
    rules = rules or SelectionRules()
    if flair.tilt_degrees is None or flair.plane is None or flair.tilt_degrees <= rules.axial_max_tilt_degrees:
        return None
    plane = "oblique axial" if flair.plane == "axial" else flair.plane
    return (
        f"the FLAIR series ({flair.number_text}) has {plane} slices ({flair.tilt_degrees:.0f} degrees from axial by "
        "Image Orientation (Patient)): the models learned axial slices, so accuracy may be lower"
    )


def _classify(series: SeriesInfo, rules: SelectionRules) -> SeriesClassification:
    if series.modality and series.modality.upper() != "MR":
        return SeriesClassification(series, SequenceRole.OTHER, f"{modality_named(series.modality)}, not MR")
    if "LOCALIZER" in series.image_type:
        return _localizer(series, "Image Type says LOCALIZER")
    role_name = _role_name(series, rules)
    names = (role_name,) if role_name else series.names
    contrast_evidence = _contrast_evidence(series, names, rules)
    named_localizer = _name_match((role_name,), rules.localizer_patterns) if role_name else None
    named_t1 = _name_match((role_name,), rules.t1_patterns) if role_name else None
    named_flair = _name_match((role_name,), rules.flair_patterns) if role_name else None
    named_other = _name_match((role_name,), rules.other_patterns) if role_name else None
    inversion = series.inversion_time_ms
    is_ir = "IR" in series.scanning_sequence
    if named_localizer is not None:
        return _localizer(series, named_localizer)
    if named_t1 is not None:
        return _t1(series, named_t1, contrast_evidence, named=True)
    if named_flair is None and named_other is not None:
        return SeriesClassification(
            series, SequenceRole.OTHER, f"{named_other}: another contrast, neither FLAIR nor T1", named=True
        )
    if named_flair is not None:
        if inversion is not None and inversion < rules.flair_min_inversion_ms:
            return SeriesClassification(
                series,
                SequenceRole.OTHER,
                f"{named_flair} but Inversion Time {inversion:g} ms is below the FLAIR minimum "
                f"{rules.flair_min_inversion_ms:g} ms",
            )
        confirmed = inversion is not None
        evidence = named_flair + (f", Inversion Time {inversion:g} ms" if confirmed else "")
        return SeriesClassification(
            series, SequenceRole.FLAIR, evidence, named=True, by_attributes=confirmed, contrast=bool(contrast_evidence)
        )
    if is_ir and inversion is not None and inversion >= rules.flair_min_inversion_ms:
        return SeriesClassification(
            series,
            SequenceRole.FLAIR,
            f"inversion recovery with Inversion Time {inversion:g} ms",
            by_attributes=True,
            contrast=bool(contrast_evidence),
        )
    low, high = rules.t1_inversion_ms
    if is_ir and inversion is not None and low <= inversion <= high:
        return _t1(series, f"inversion recovery with Inversion Time {inversion:g} ms", contrast_evidence)
    repetition, echo = series.repetition_time_ms, series.echo_time_ms
    if (
        not is_ir
        and repetition is not None
        and echo is not None
        and repetition <= rules.t1_max_repetition_ms
        and echo <= rules.t1_max_echo_ms
    ):
        timing = f"Repetition Time {repetition:g} ms and Echo Time {echo:g} ms"
        not_t1 = _not_t1_weighted(series, echo, rules)
        if not_t1 is not None:
            return SeriesClassification(series, SequenceRole.OTHER, f"{timing}, but {not_t1}")
        return _t1(series, timing, contrast_evidence)
    if series.scanning_sequence and not is_ir:
        # FLAIR is an inversion recovery: a stated sequence without one (a T2-weighted spin echo, say) is not FLAIR.
        stated = _scanning_sequence_named(series.scanning_sequence)
        return SeriesClassification(
            series, SequenceRole.OTHER, f"Scanning Sequence {stated}, no inversion recovery: neither FLAIR nor T1"
        )
    return SeriesClassification(
        series, SequenceRole.OTHER, "neither name nor sequence attributes say FLAIR or T1", undetermined=True
    )


SCANNING_SEQUENCE_TERMS = ("SE", "IR", "GR", "EP", "RM")
"""Scanning Sequence's defined terms (PS3.3 C.8.3.1): the only values a message names."""


def _scanning_sequence_named(terms: tuple[str, ...]) -> str:
    """The defined terms among `terms`, joined as DICOM writes them, the others counted, never echoed."""
    named = [term for term in terms if term in SCANNING_SEQUENCE_TERMS]
    others = len(terms) - len(named)
    if others:
        named.append(f"{others} other value" + ("s" if others != 1 else ""))
    return "\\".join(named)


def only_series_note(series: SeriesInfo) -> str:
    """The note for a series read as FLAIR because it is the only one and nothing says what it is."""
    return (
        f"the only series ({series.number_text}, localizers aside) says neither FLAIR nor another contrast by its name "
        "or sequence attributes: read as FLAIR, the contrast the models read; check that it is FLAIR"
    )


def _not_t1_weighted(series: SeriesInfo, echo_ms: float, rules: SelectionRules) -> str | None:
    """Why a short-TR, short-TE series is still not T1-weighted, or None when nothing says so."""
    if "EP" in series.scanning_sequence:
        return "echo planar (diffusion, perfusion or functional imaging), not T1-weighted"
    if "TRSS" in series.sequence_variant:
        return "a time-reversed steady state (T2-weighted), not T1-weighted"
    if "GR" in series.scanning_sequence and echo_ms >= rules.t1_gradient_echo_max_echo_ms:
        return (
            f"a gradient echo with that Echo Time is T2*-weighted (a T1 gradient echo has Echo Time below "
            f"{rules.t1_gradient_echo_max_echo_ms:g} ms)"
        )
    return None


def _localizer(series: SeriesInfo, evidence: str) -> SeriesClassification:
    return SeriesClassification(
        series, SequenceRole.OTHER, f"{evidence}: a localizer (planning scan), never a channel", localizer=True
    )


def select_sequences(datasets: Iterable[Dataset], rules: SelectionRules | None = None) -> StudySelection:
    """Choose the FLAIR series of a study and, when there is one of each, its pre- and post-contrast T1 series.

    Parameters
    ----------
    datasets
        One dataset (headers suffice) per series of the study, or every instance: series are told apart by
        Series Instance UID and the first dataset of each is read.
    rules
        Default: `SelectionRules()`.

    Returns
    -------
    StudySelection
        The same for any order of `datasets`.
    """
    rules = rules or SelectionRules()
    first_of_series: dict[str, Dataset] = {}
    planes: dict[str, frozenset[str]] = {}
    lossy: dict[str, bool] = {}
    for dataset in datasets:
        uid = str(dataset.get("SeriesInstanceUID", ""))
        first_of_series.setdefault(uid, dataset)
        planes[uid] = planes.get(uid, frozenset()) | slice_planes(dataset)
        # Any lossy instance makes the series a lossy copy: judged by its first, a copy whose first slice was
        # lossless beat the original, or not, by the order of the files (interop review 65 F2).
        lossy[uid] = lossy.get(uid, False) or is_lossy(dataset)
    infos = sorted(
        (
            replace(SeriesInfo.from_dataset(dataset), planes=planes[uid], lossy=lossy[uid])
            for uid, dataset in first_of_series.items()
        ),
        key=SeriesInfo.sort_key,
    )
    classifications = tuple(classify_series(info, rules) for info in infos)
    return _select(classifications, rules)


def _select(classifications: tuple[SeriesClassification, ...], rules: SelectionRules) -> StudySelection:
    by_role: dict[SequenceRole, list[SeriesClassification]] = {}
    for item in classifications:
        by_role.setdefault(item.role, []).append(item)
    flairs = by_role.get(SequenceRole.FLAIR, [])
    candidates = [item for item in classifications if not item.localizer]
    if not flairs and len(candidates) == 1 and candidates[0].undetermined:
        only = candidates[0].series
        notes = [only_series_note(only), orientation_note(only, rules)]
        return StudySelection(
            only, None, None, None, tuple(note for note in notes if note), classifications=classifications
        )
    if not flairs:
        found = ", ".join(f"{item.role.value} ({item.evidence})" for item in classifications) or "no series"
        return StudySelection(
            None,
            None,
            None,
            reason=f"the study has no FLAIR series (the models read FLAIR); found: {found}",
            classifications=classifications,
        )
    # More evidence first, then no contrast (the models learned pre-contrast FLAIR), then axial slices (what they
    # learned from), tilted no more than the axial limit before steeper ones, an original before a lossy-compressed
    # copy (review 36b: a PACS's lossy copy under the same Series Number won by its lower UID); ties by Series Number
    # and UID.
    ranked = sorted(
        flairs,
        key=lambda item: (
            -(int(item.named) + int(item.by_attributes)),
            item.contrast,
            item.series.axial is not True,
            orientation_note(item.series, rules) is not None,
            item.series.lossy,
            item.series.sort_key(),
        ),
    )
    notes = []
    if len(ranked) > 1:
        notes.append(_flair_choice_note(ranked))
    orientation = orientation_note(ranked[0].series, rules)
    if orientation is not None:
        notes.append(orientation)
    pre = by_role.get(SequenceRole.T1_PRE, [])
    post = by_role.get(SequenceRole.T1_POST, [])
    if len(pre) == 1 and len(post) == 1:
        return StudySelection(
            ranked[0].series, pre[0].series, post[0].series, None, tuple(notes), classifications=classifications
        )
    if pre or post:
        notes.append(
            f"T1 series left out (found {len(pre)} pre-contrast and {len(post)} post-contrast; one of each is needed): "
            "FLAIR analysed alone"
        )
    return StudySelection(ranked[0].series, None, None, None, tuple(notes), classifications=classifications)


def _flair_choice_note(ranked: Sequence[SeriesClassification]) -> str:
    """Which of several FLAIR series was used, and by what: its Series Number alone does not say which when
    another series has the same one."""
    chosen = ranked[0].series
    orientation = {True: "axial", False: "not axial", None: "orientation not given"}[chosen.axial]
    shared_number = sum(item.series.series_number == chosen.series_number for item in ranked) > 1
    tie = " (another FLAIR series has that number: the lowest Series Instance UID decided)" if shared_number else ""
    return (
        f"{len(ranked)} FLAIR series found; used the one with series number {chosen.series_number}, {orientation}"
        f"{tie}; ranked by evidence for FLAIR, then no contrast, then axial slices, then not lossy-compressed, then "
        "Series Number"
    )


def _t1(series: SeriesInfo, evidence: str, contrast_evidence: str | None, named: bool = False) -> SeriesClassification:
    if contrast_evidence:
        return SeriesClassification(
            series, SequenceRole.T1_POST, f"{evidence}; {contrast_evidence}", named=named, contrast=True
        )
    return SeriesClassification(series, SequenceRole.T1_PRE, f"{evidence}; no contrast agent stated", named=named)


def _role_name(series: SeriesInfo, rules: SelectionRules) -> tuple[str, str] | None:
    """The (attribute, value) of the name that says the series' role: the first, Series Description before Protocol
    Name, that matches a localizer, FLAIR, T1 or other-contrast wildcard; None when none does."""
    patterns = (*rules.localizer_patterns, *rules.t1_patterns, *rules.flair_patterns, *rules.other_patterns)
    for name in series.names:
        if _name_match((name,), patterns):
            return name
    return None


def _contrast_evidence(series: SeriesInfo, names: Sequence[tuple[str, str]], rules: SelectionRules) -> str | None:
    """Contrast by the Contrast/Bolus attributes, else by `names` (the name that says the role, when one does)."""
    if series.contrast_agent:
        return "Contrast/Bolus attributes filled in"
    return _name_match(names, rules.post_contrast_patterns)


def _name_match(names: Sequence[tuple[str, str]], patterns: Sequence[str]) -> str | None:
    """ "<attribute> matches <wildcard>" for the first wildcard that one of the (attribute, value) `names` matches."""
    for pattern in patterns:
        for attribute, value in names:
            if fnmatch.fnmatchcase(value.upper(), pattern.upper()):
                return f"{attribute} matches {pattern}"
    return None
