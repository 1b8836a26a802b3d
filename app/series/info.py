"""What sequence selection reads of a series (`SeriesInfo`), and the lenient readers that take it from a header:
a malformed file's attribute (text where a sequence belongs, an unreadable number) reads as absent, never as an
error. Pure functions: no I/O, no logging.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from app.dicom.dicom_codestream import LOSSY_TRANSFER_SYNTAXES
from app.dicom.dicom_frame import element_values, frame_value
from app.dicom.slice_orientation import slice_plane
from app.series.sequence_rules import CONTRAST_ATTRIBUTES

if TYPE_CHECKING:
    from pydicom.dataset import Dataset


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
    lossy: bool = False
    """Lossy Image Compression 01, or pixels in a lossy transfer syntax, of any instance (`is_lossy`): the series was
    compressed lossy (a PACS's archived copy, say; a JPEG Baseline copy that did not say so was read before its
    original: interop review 64 F5)."""

    @classmethod
    def from_dataset(cls, dataset: Dataset) -> SeriesInfo:
        orientation = _plane_of(_sequence_value(dataset, "PlaneOrientationSequence", "ImageOrientationPatient"))
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
            planes=slice_planes(dataset),
            lossy=is_lossy(dataset),
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
        """Series Number order, unnumbered series last (`series_number_order`)."""
        return series_number_order(self.series_number, self.series_instance_uid)


def series_number_order(series_number: int | None, series_instance_uid: str) -> tuple[float, str]:
    """The sort key of a series: Series Number order, unnumbered series last, ties by Series Instance UID."""
    return (series_number if series_number is not None else math.inf, series_instance_uid)


def _plane_of(orientation: object) -> tuple[str, float] | None:
    """`slice_plane` of an Image Orientation (Patient) as a header holds it; None when it is absent or unreadable."""
    try:
        return slice_plane([float(value) for value in element_values(orientation)])  # type: ignore[union-attr]
    except (TypeError, ValueError):
        return None


def slice_planes(dataset: Dataset) -> frozenset[str]:
    """The planes of a dataset's slices: its Image Orientation (Patient), or each frame's in an enhanced object."""
    orientations = [dataset.get("ImageOrientationPatient")]
    groups = [*_items(dataset.get("SharedFunctionalGroupsSequence"))[:1]]
    groups += _items(dataset.get("PerFrameFunctionalGroupsSequence"))
    for group in groups:
        item = _first_item(group.get("PlaneOrientationSequence"))
        if item is not None:
            orientations.append(item.get("ImageOrientationPatient"))
    found = (_plane_of(value) for value in orientations if value is not None)
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
    return tuple(str(item).strip().upper() for item in element_values(value) if str(item).strip())


def _first_number_or_none(value: object) -> float | None:
    items = element_values(value)
    try:
        return float(items[0]) if items else None  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def _integer(value: object) -> int | None:
    number = _first_number_or_none(value)
    return int(number) if number is not None and math.isfinite(number) else None


def identity_text(value: object) -> str:
    """An identity value (Patient ID, its issuer, a Study Instance UID) without the padding the standard lets it carry:
    spaces (PS3.5 6.2) and a UID's NUL, nothing else. The API, the DICOM node and pacs-sync all read a study's
    identity through it: Python's `strip()` also took a no-break space off a Patient ID, and the API read as one
    patient what the node took for two (attack review 41); " P1" and "P1" were two studies at the node (attack
    review 40)."""
    return str(value or "").strip(" \0")


def number_said(dataset: Dataset, keyword: str) -> str:
    """A Series or Instance Number as a message says it: "unnumbered" when missing or unreadable."""
    number = _integer(dataset.get(keyword))
    return "unnumbered" if number is None else str(number)


def where_in_study(datasets: Sequence[Dataset]) -> str:
    """Where a PACS user finds these files: "series 3: instances 7, 8; series 5: instance 2", by Series Number and
    Instance Number ("unnumbered" where a file has none), in the order given.

    Why: on the PACS paths (the DICOM node, pacs-sync) a file's index in the request is the order the files arrived
    or were fetched in, which nobody outside can see (interop review 39, finding 7); numbers name no patient."""
    instances: dict[str, list[str]] = {}
    for dataset in datasets:
        instances.setdefault(number_said(dataset, "SeriesNumber"), []).append(number_said(dataset, "InstanceNumber"))
    return "; ".join(
        f"series {series}: instance{'s' if len(numbers) > 1 else ''} {', '.join(numbers)}"
        for series, numbers in instances.items()
    )


def is_lossy(dataset: Dataset) -> bool:
    """Whether an instance's pixels were lossy compressed: Lossy Image Compression "01" (which the header readers
    set for a codestream coded lossy: `dicom_codestream.mark_lossy`), or a lossy transfer syntax."""
    meta = getattr(dataset, "file_meta", None)
    in_lossy_syntax = meta is not None and str(meta.get("TransferSyntaxUID", "")) in LOSSY_TRANSFER_SYNTAXES
    return str(dataset.get("LossyImageCompression", "") or "").strip() == "01" or in_lossy_syntax
