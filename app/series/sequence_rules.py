"""The rules `app.series.sequence_roles` chooses series by: the default name wildcards of each role, the
Contrast/Bolus attributes that say a series is post-contrast, and `SelectionRules` (from the ``SEQUENCE_*``
settings). `app.settings` imports the defaults from here, which is why this module names `Settings` for type
checking only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
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
