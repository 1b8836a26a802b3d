"""Which series of a study the models read: FLAIR, and the pre- and post-contrast T1 series when both are there.

The models learned FLAIR (with pre- and post-contrast T1 as the other two channels). Scanners and PACS send series
in no useful order, so the roles come from each series' own attributes, never from its position in a request:

0. **Localizers** (Image Type ``LOCALIZER``, or a localizer's name: ``localizer``, ``AAHead_Scout``, ``3-pl loc``,
   ``Survey``) are never a channel: their short-TR, short-TE gradient echo looks T1-weighted, and one of them beside
   the study's T1 series turned the three-channel mode off.
1. **Text**: Series Description, else Protocol Name, matched case-insensitively against wildcards
   (`SelectionRules`). The Series Description decides when it matches a localizer, FLAIR, T1 or other-contrast
   wildcard: Protocol Name is often the whole examination's protocol (``MR BRAIN W WO T1 T2 FLAIR``), naming every
   sequence of it. A name that matches a T1 wildcard is T1 even when it also says FLAIR (``T1 FLAIR`` is
   T1-weighted); one that names another contrast (``AX T2* GRE``, ``SWI_Images``, ``Ax DWI``) and neither T1 nor
   FLAIR is neither.
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
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from app.dicom.dicom_frame import frame_value
from app.dicom.slice_orientation import slice_plane

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

    from app.settings import Settings  # which imports this module's defaults

DEFAULT_FLAIR_PATTERNS = ("*FLAIR*", "*DARK*FLUID*", "*DARKFLUID*", "*T2*FLAIR*", "*T2*IR*FS*")
DEFAULT_T1_PATTERNS = ("*T1*", "*MPRAGE*", "*MP-RAGE*", "*SPGR*", "*BRAVO*", "*TFE*T1*")
DEFAULT_POST_CONTRAST_PATTERNS = ("*POST*", "*+C*", "*+ C*", "*GAD*", "*GD*", "*CONTRAST*", "* C+*", "*CE*T1*")
DEFAULT_LOCALIZER_PATTERNS = ("*LOC*", "*SCOUT*", "*SURVEY*", "*PILOT*", "*CALIBRAT*")
# Contrasts the models do not read that a name can say: T2* and susceptibility, diffusion, angiography, balanced
# steady state. ``[*]`` is a literal asterisk (``AX T2* GRE``).
DEFAULT_OTHER_PATTERNS = (
    "*T2[*]*",
    "*T2STAR*",
    "*T2?STAR*",
    "*SWI*",
    "*SWAN*",
    "*SUSCEPT*",
    "*HEMO*",
    "*MIP*",
    "*DWI*",
    "*DIFF*",
    "*ADC*",
    "*DTI*",
    "*TOF*",
    "*MRA*",
    "*ANGIO*",
    "*FIESTA*",
    "*CISS*",
    "*TRUFI*",
    "*BFFE*",
    "*B?FFE*",
)
CONTRAST_ATTRIBUTES = ("ContrastBolusAgent", "ContrastBolusIngredient", "ContrastBolusRoute", "ContrastBolusVolume")


class SequenceRole(StrEnum):
    FLAIR = "FLAIR"
    T1_PRE = "T1 pre-contrast"
    T1_POST = "T1 post-contrast"
    OTHER = "other"


@dataclass(frozen=True)
class SelectionRules:
    """The rules of `select_sequences` (from the settings: `from_settings`).

    Attributes
    ----------
    flair_patterns, t1_patterns, post_contrast_patterns
        Case-insensitive wildcards (``*``, ``?``, ``[*]`` for an asterisk) on Series Description and Protocol Name.
    localizer_patterns
        Names of localizers (planning scans): never a channel, not even alone. Checked first.
    other_patterns
        Names of contrasts the models do not read (T2*, SWI, diffusion, ...): neither FLAIR nor T1. Checked after
        the T1 and FLAIR wildcards.
    flair_min_inversion_ms
        Inversion Time at or above which an IR sequence is FLAIR.
    t1_inversion_ms
        Inversion Time range (low, high) of a T1-weighted IR (MPRAGE, T1 FLAIR).
    t1_max_repetition_ms, t1_max_echo_ms
        Repetition and Echo Time at or below which an unnamed spin- or gradient-echo series is T1-weighted.
    t1_gradient_echo_max_echo_ms
        Echo Time at or above which a gradient echo is T2*-weighted, not T1 (T1 spoiled gradient echoes: 2-5 ms; T2*
        GRE and SWI: 15-40 ms).
    axial_max_tilt_degrees
        Largest angle between the slice normal and the head-foot axis that still counts as axial with no note
        (angulated axials along the AC-PC line are tilted 10-25 degrees; at 45 a plane is as coronal or sagittal as
        axial).
    """

    flair_patterns: tuple[str, ...] = DEFAULT_FLAIR_PATTERNS
    t1_patterns: tuple[str, ...] = DEFAULT_T1_PATTERNS
    post_contrast_patterns: tuple[str, ...] = DEFAULT_POST_CONTRAST_PATTERNS
    flair_min_inversion_ms: float = 1500.0
    t1_inversion_ms: tuple[float, float] = (300.0, 1300.0)
    t1_max_repetition_ms: float = 1000.0
    t1_max_echo_ms: float = 30.0
    localizer_patterns: tuple[str, ...] = DEFAULT_LOCALIZER_PATTERNS
    other_patterns: tuple[str, ...] = DEFAULT_OTHER_PATTERNS
    t1_gradient_echo_max_echo_ms: float = 10.0
    axial_max_tilt_degrees: float = 30.0

    def __post_init__(self) -> None:
        if not self.flair_patterns:
            raise ValueError("flair_patterns must hold at least one wildcard; got none")
        if not 0 <= self.axial_max_tilt_degrees < 90:
            raise ValueError(f"axial_max_tilt_degrees must be in [0, 90); got {self.axial_max_tilt_degrees}")
        low, high = self.t1_inversion_ms
        if not 0 <= low < high <= self.flair_min_inversion_ms:
            raise ValueError(
                "t1_inversion_ms must be a range (low, high) with 0 <= low < high <= flair_min_inversion_ms; "
                f"got {self.t1_inversion_ms} with flair_min_inversion_ms {self.flair_min_inversion_ms}"
            )

    @classmethod
    def from_settings(cls, settings: Settings) -> SelectionRules:
        """The rules named in `app.settings.Settings` (``SEQUENCE_*``)."""
        return cls(
            flair_patterns=tuple(settings.sequence_flair_patterns),
            t1_patterns=tuple(settings.sequence_t1_patterns),
            post_contrast_patterns=tuple(settings.sequence_post_contrast_patterns),
            flair_min_inversion_ms=settings.sequence_flair_min_inversion_ms,
            localizer_patterns=tuple(settings.sequence_localizer_patterns),
            other_patterns=tuple(settings.sequence_other_patterns),
        )


@dataclass(frozen=True)
class SeriesInfo:
    """What the selection reads of a series: from any one of its instances (they share these attributes)."""

    series_instance_uid: str
    series_number: int | None
    modality: str
    description: str
    protocol_name: str
    scanning_sequence: tuple[str, ...]
    inversion_time_ms: float | None
    repetition_time_ms: float | None
    echo_time_ms: float | None
    contrast_agent: str
    plane: str | None = None
    """The plane the slice normal is nearest (axial, coronal, sagittal); None without a readable orientation."""
    tilt_degrees: float | None = None
    """Angle between the slice normal and the head-foot axis (0 for axial, 90 for sagittal and coronal)."""
    image_type: tuple[str, ...] = ()
    sequence_variant: tuple[str, ...] = ()
    planes: frozenset[str] = frozenset()
    """The planes of every slice seen (`select_sequences` joins the instances'): more than one in a 3-plane scout."""

    @classmethod
    def from_dataset(cls, dataset: Dataset) -> SeriesInfo:
        orientation = _orientation(_sequence_value(dataset, "PlaneOrientationSequence", "ImageOrientationPatient"))
        echo_time = dataset.get("EchoTime")
        if echo_time is None:  # enhanced MR: per frame group
            echo_time = _sequence_value(dataset, "MREchoSequence", "EffectiveEchoTime")
        return cls(
            series_instance_uid=str(dataset.get("SeriesInstanceUID", "")),
            series_number=_integer(dataset.get("SeriesNumber")),
            modality=str(dataset.get("Modality", "") or ""),
            description=str(dataset.get("SeriesDescription", "") or ""),
            protocol_name=str(dataset.get("ProtocolName", "") or ""),
            scanning_sequence=_scanning_sequence(dataset),
            inversion_time_ms=_first_number_or_none(
                _sequence_value(dataset, "MRTimingAndRelatedParametersSequence", "InversionTime")
            ),
            repetition_time_ms=_first_number_or_none(
                _sequence_value(dataset, "MRTimingAndRelatedParametersSequence", "RepetitionTime")
            ),
            echo_time_ms=_first_number_or_none(echo_time),
            contrast_agent=" ".join(
                str(dataset.get(keyword) or "").strip() for keyword in CONTRAST_ATTRIBUTES if dataset.get(keyword)
            ).strip(),
            plane=orientation[0] if orientation else None,
            tilt_degrees=orientation[1] if orientation else None,
            image_type=_upper_values(dataset.get("ImageType")),
            sequence_variant=_sequence_variant(dataset),
            planes=_planes(dataset),
        )

    @property
    def axial(self) -> bool | None:
        """Whether the slice normal is nearest the head-foot axis; None when the orientation is not given."""
        return None if self.plane is None else self.plane == "axial"

    @property
    def names(self) -> tuple[tuple[str, str], ...]:
        """(attribute, value) of the names given, Series Description first."""
        named = (("Series Description", self.description), ("Protocol Name", self.protocol_name))
        return tuple((attribute, value) for attribute, value in named if value)

    @property
    def number_text(self) -> str:
        """ "number 5", or "unnumbered": how notes and errors name the series (never by its description)."""
        return "unnumbered" if self.series_number is None else f"number {self.series_number}"

    def sort_key(self) -> tuple[float, str]:
        """Series Number order, unnumbered series last."""
        return (self.series_number if self.series_number is not None else math.inf, self.series_instance_uid)


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
        return SeriesClassification(series, SequenceRole.OTHER, f"Modality is {series.modality}, not MR")
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
        stated = "\\".join(series.scanning_sequence)
        return SeriesClassification(
            series, SequenceRole.OTHER, f"Scanning Sequence {stated}, no inversion recovery: neither FLAIR nor T1"
        )
    return SeriesClassification(
        series, SequenceRole.OTHER, "neither name nor sequence attributes say FLAIR or T1", undetermined=True
    )


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
    for dataset in datasets:
        uid = str(dataset.get("SeriesInstanceUID", ""))
        first_of_series.setdefault(uid, dataset)
        planes[uid] = planes.get(uid, frozenset()) | _planes(dataset)
    infos = sorted(
        (replace(SeriesInfo.from_dataset(dataset), planes=planes[uid]) for uid, dataset in first_of_series.items()),
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
    # learned from), tilted no more than the axial limit before steeper ones; ties by Series Number and UID.
    ranked = sorted(
        flairs,
        key=lambda item: (
            -(int(item.named) + int(item.by_attributes)),
            item.contrast,
            item.series.axial is not True,
            orientation_note(item.series, rules) is not None,
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
        f"{tie}; ranked by evidence for FLAIR, then no contrast, then axial slices, then Series Number"
    )


def _orientation(orientation: object) -> tuple[str, float] | None:
    """`slice_plane` of an Image Orientation (Patient) as a header holds it; None when it is absent or unreadable."""
    try:
        return slice_plane([float(value) for value in _values(orientation)])  # type: ignore[union-attr]
    except (TypeError, ValueError):
        return None


def _planes(dataset: Dataset) -> frozenset[str]:
    """The planes of a dataset's slices: its Image Orientation (Patient), or each frame's in an enhanced object."""
    orientations = [dataset.get("ImageOrientationPatient")]
    groups = [*_items(dataset.get("SharedFunctionalGroupsSequence"))[:1]]
    groups += _items(dataset.get("PerFrameFunctionalGroupsSequence"))
    for group in groups:
        item = _first_item(group.get("PlaneOrientationSequence"))
        if item is not None:
            orientations.append(item.get("ImageOrientationPatient"))
    found = (_orientation(value) for value in orientations if value is not None)
    return frozenset(plane for plane, _ in filter(None, found))


def _scanning_sequence(dataset: Dataset) -> tuple[str, ...]:
    """Scanning Sequence (``SE``, ``GR``, ``IR``, ``EP``), or its terms from an enhanced MR object's attributes."""
    terms = _upper_values(dataset.get("ScanningSequence"))
    if terms:
        return terms
    enhanced = {
        "SE": str(dataset.get("EchoPulseSequence", "")).upper() in ("SPIN", "BOTH"),
        "GR": str(dataset.get("EchoPulseSequence", "")).upper() in ("GRADIENT", "BOTH"),
        "IR": str(dataset.get("InversionRecovery", "")).upper() == "YES",
        "EP": str(dataset.get("EchoPlanarPulseSequence", "")).upper() == "YES",
    }
    return tuple(term for term, present in enhanced.items() if present)


def _sequence_variant(dataset: Dataset) -> tuple[str, ...]:
    """Sequence Variant (``SP``, ``SS``, ``TRSS``, ...), or ``TRSS`` from an enhanced object's steady state."""
    terms = _upper_values(dataset.get("SequenceVariant"))
    if not terms and str(dataset.get("SteadyStatePulseSequence", "")).upper() == "TIME_REVERSED":
        return ("TRSS",)
    return terms


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


def _sequence_value(dataset: Dataset, sequence: str, keyword: str) -> object | None:
    """An attribute as the first frame has it (`app.dicom.dicom_frame.frame_value`: its per-frame functional group,
    then the shared one, then the top level): the same precedence the flow reads the frames' geometry with."""
    return frame_value(dataset, 0, sequence, keyword)


def _first_item(value: object) -> Any | None:
    """The first item of a sequence element's value; None when it is empty or not a sequence of items at all (a
    malformed file can carry text or bytes where the standard puts a sequence)."""
    if isinstance(value, str | bytes) or not isinstance(value, Sequence) or not value:
        return None
    item = value[0]
    return item if hasattr(item, "get") and hasattr(item, "__contains__") else None


def _items(value: object) -> list[Any]:
    """The items of a sequence element's value that are datasets; [] for anything else (text, bytes, None)."""
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        return []
    return [item for item in value if hasattr(item, "get") and hasattr(item, "__contains__")]


def _upper_values(value: object) -> tuple[str, ...]:
    return tuple(str(item).strip().upper() for item in _values(value) if str(item).strip())


def _values(value: object) -> list[object]:
    if value is None or value == "":
        return []
    if isinstance(value, str | bytes):
        return [value]
    try:
        return list(value)  # type: ignore[call-overload]
    except TypeError:
        return [value]


def _first_number_or_none(value: object) -> float | None:
    items = _values(value)
    try:
        return float(items[0]) if items else None  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def _integer(value: object) -> int | None:
    number = _first_number_or_none(value)
    return int(number) if number is not None else None
