"""Making source headers and derived objects meet what highdicom and the DICOM standard require.

De-identified or hand-made instances often lack Type 2 attributes (Patient's Birth Date, Study ID, Accession
Number, Slice Thickness ...): the standard lets them be empty but not absent, and highdicom reads them without a
default when it copies the patient and study modules into a SEG or an SR, so it fails with an AttributeError.
`with_type2_attributes` hands highdicom a copy with the missing ones present and empty, never touching the caller's
dataset. A SEG's frames need a Slice Thickness all the same: `with_slice_thickness` gives them the slices' spacing.
An SR's image library needs more of each image (its plane, a non-empty Slice Thickness): `image_library_sources`
leaves the library out when a source cannot fill it.

A SEG of a source without a patient coordinate system (a Secondary Capture without Image Orientation) must carry
Patient Orientation (Type 2C in the General Image module), which highdicom leaves out: `complete_segmentation` adds
it, empty or copied from the source.

A SEG or an SR refers to its sources by their UIDs (Type 1: present, not empty, and UIDs); `unusable_reference_uids`
names the ones a source lacks or holds in another form, so the caller can refuse it with a reason instead of failing
inside highdicom or making an object that refers to nothing a PACS can find.

A SEG or an SR copies the patient's and study's names and descriptions, so it needs a Specific Character Set that
holds them: `derived_character_set` keeps the source's, unless highdicom would refuse it (ISO 2022 code extensions
in the forms Japanese and Korean sites send), and then writes UTF-8.

A SEG or an SR copies the study's dates and times, which are in the sources' time zone when they declare one
(Timezone Offset From UTC), while highdicom writes its own in the clock of the process (UTC in a container):
`stamp_creation_times` writes the result's own in the sources' zone and copies the offset, so that one object holds
one time zone.
"""

from __future__ import annotations

import functools
import logging
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta, timezone

import highdicom as hd
from pydicom import valuerep
from pydicom.charset import convert_encodings
from pydicom.config import RAISE
from pydicom.datadict import dictionary_VM, dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag, Tag

from app.dicom.dicom_frame import MULTI_FRAME_CLASSES, DicomFrame, frame_value
from app.dicom.dicom_header import unpadded_uid
from app.errors import ServiceError

logger = logging.getLogger(__name__)

# Patient and General Study module attributes of Type 2 that highdicom copies from the first source.
TYPE2_PATIENT_STUDY_ATTRIBUTES = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)
# Of those, the identifiers a PACS or RIS matches a result to its study by: one that breaks its value type by its
# length alone (a 20-character Accession Number) is copied as it came, since a shortened or empty one would match
# nothing; any other broken Type 2 value is left empty in the SEG and SR, which Type 2 allows ("unknown").
MATCHED_TYPE2_ATTRIBUTES = ("PatientID", "StudyID", "AccessionNumber")
# ... and the one never left empty: a PACS files a result by it (Orthanc hashes it into the study's identifier), so
# an empty one would file the SEG and SR as another patient's study. One that breaks its type otherwise is refused.
PATIENT_KEY = "PatientID"
# Image Plane module attributes of Type 2 that highdicom's SEG reads from a single-frame source (an enhanced
# multi-frame image keeps them in its functional groups instead).
TYPE2_IMAGE_PLANE_ATTRIBUTES = ("SliceThickness",)


# What a SEG or an SR needs of every source to refer to it (Type 1 in the referencing macros and modules).
REFERENCE_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")
UID_FORM = re.compile(r"[0-9.]{1,64}")  # the characters and length a UI value allows (leading zeros are tolerated)


def is_uid(value: str) -> bool:
    """Whether `value` has a UID's form (digits and dots, at most 64 characters)."""
    return UID_FORM.fullmatch(value) is not None


# One character set without ISO 2022 code extensions, which highdicom writes as it is (ISO_IR 100, ISO_IR 192, GBK ...).
SINGLE_CHARACTER_SETS = frozenset(
    value.value for value in hd.enum.SpecificCharacterSetValues if not value.value.startswith("ISO 2022")
)
UTF8 = "ISO_IR 192"


_UTC_OFFSET = re.compile(r"([+-])(\d\d)(\d\d)")


HIGHDICOM_MODEL_NAME = "highdicom"
"""The Manufacturer's Model Name of the Contributing Equipment item highdicom adds for itself."""


def stamp_creation_times(derived: Dataset, sources: Sequence[Dataset]) -> None:
    """Write `derived`'s Instance Creation, Content and Series Date and Time, and the Contribution DateTime of
    highdicom's Contributing Equipment item, as now: in the sources' time zone, with their Timezone Offset From UTC,
    when the first source declares a well-formed one (``+HHMM``, ``-HHMM``), else in the process's clock as highdicom
    does. The Series Date and Time are the Content's: where a later result supersedes this one (same Series Number),
    a viewer orders the versions by them."""
    offset = str(sources[0].get("TimezoneOffsetFromUTC", "") or "").strip() if sources else ""
    difference = utc_offset(offset)
    if difference is not None:
        now = datetime.now(timezone(difference))
        derived.TimezoneOffsetFromUTC = offset
    else:
        now = datetime.now()
    for prefix in ("InstanceCreation", "Content", "Series"):
        setattr(derived, f"{prefix}Date", now.strftime("%Y%m%d"))
        setattr(derived, f"{prefix}Time", now.strftime("%H%M%S.%f"))
    for equipment in derived.get("ContributingEquipmentSequence", []):
        # highdicom dates its own contribution in the process's clock, without an offset: an hour before the object's
        # own times in a +0100 zone. The other items (the scanner's) keep their dates.
        if equipment.get("ManufacturerModelName") == HIGHDICOM_MODEL_NAME and "ContributionDateTime" in equipment:
            equipment.ContributionDateTime = now.strftime("%Y%m%d%H%M%S.%f") + (
                offset if difference is not None else ""
            )


def utc_offset(value: str) -> timedelta | None:
    """A Timezone Offset From UTC (``+HHMM``, ``-HHMM``) as a time difference, or None unless it is a real one:
    minutes 00-59, from -12:00 to +14:00 (PS3.3 C.12.1.1.8). ``+9900`` matched the form and made every SEG and SR
    of its study fail (Python's time zones stop short of 24 hours); ``+0099`` dated them 1 h 39 min from UTC."""
    matched = _UTC_OFFSET.fullmatch(value)
    if not matched or int(matched.group(3)) > 59:
        return None
    difference = (-1 if matched.group(1) == "-" else 1) * timedelta(
        hours=int(matched.group(2)), minutes=int(matched.group(3))
    )
    return difference if timedelta(hours=-12) <= difference <= timedelta(hours=14) else None


def derived_character_set(source: Dataset) -> str | None:
    """The Specific Character Set of a SEG or SR made from `source`: the source's own when it is one character set
    without code extensions, or absent with ASCII values only (the default repertoire), else UTF-8, which holds every
    character the source's values decode to.

    Why: highdicom refuses ISO 2022 code extensions in the forms the standard and scanners use (`\\ISO 2022 IR 87`
    with its empty first value, Korean `ISO 2022 IR 149`, a lone `ISO 2022 IR 100`), so a Japanese or Korean series
    got no SEG. Converting is lossless: pydicom decodes the copied values to text and encodes them again on writing.
    """
    value = source.get("SpecificCharacterSet")
    if value is None or value == "":
        # Attack finding: Latin-1 names in a file that declares no character set were copied into objects that
        # declared none either (characters outside the default repertoire); pydicom read them as Latin-1.
        return UTF8 if _has_text_beyond_ascii(source) else None
    if isinstance(value, str) and value in SINGLE_CHARACTER_SETS:
        return value
    return UTF8


# Value types whose bytes are text in the Specific Character Set (the others are ASCII by definition).
CHARACTER_SET_VRS = frozenset({"SH", "LO", "ST", "PN", "LT", "UC", "UT"})


def read_undeclared_utf8(dataset: Dataset) -> None:
    """Read the text of a file that declares no Specific Character Set as UTF-8 when every value beyond ASCII is
    valid UTF-8; call it right after `dcmread`, before a text value is read.

    Why: pydicom reads such bytes as Latin-1, so a name a modality wrote in UTF-8 without declaring it (common, and
    what Orthanc's "DefaultEncoding": "Utf8" assumes) would reach the SEG and SR as "MÃ¼ller" under the images'
    Patient ID. Latin-1 names beyond ASCII almost never form valid UTF-8, so they are still read as Latin-1.
    """
    if "SpecificCharacterSet" in dataset:
        return
    beyond_ascii = [
        element.value
        for element in dataset.elements()
        if isinstance(element.value, bytes) and not element.value.isascii() and _vr_of(element) in CHARACTER_SET_VRS
    ]
    if not beyond_ascii:
        return
    try:
        for value in beyond_ascii:
            value.decode("utf-8")
    except UnicodeDecodeError:
        return
    implicit_vr, little_endian = dataset.original_encoding
    dataset.set_original_encoding(implicit_vr, little_endian, convert_encodings(UTF8))


def keep_undeclared_escapes(dataset: Dataset) -> None:
    """Keep the ESC of a text value whose Specific Character Set declares no code extensions (no "ISO 2022" term),
    so that `invalid_values` finds it; call it right after `dcmread`, before a text value is read.

    Why: an escape sequence is only allowed under code extensions, yet pydicom follows one wherever it is, so a
    Patient ID of bytes ``AB ESC ( B CD`` without a Specific Character Set is read as "ABCD" and the SEG would be
    filed under a Patient ID that is not the source's. Kept, the ESC makes the value broken, like a value
    that does not decode: left empty where the SEG and SR may, refused for the identifiers a PACS files by.
    """
    declared = dataset.get("SpecificCharacterSet") or ""
    terms = [declared] if isinstance(declared, str) else list(declared)
    if any(str(term).strip().startswith("ISO 2022") for term in terms):
        return
    for element in list(dataset.elements()):
        value, vr = element.value, _vr_of(element)
        if isinstance(value, bytes) and b"\x1b" in value and vr in CHARACTER_SET_VRS:
            # Latin-1 maps every byte to one character: the text is never copied, only found broken.
            dataset[element.tag] = DataElement(element.tag, vr, value.decode("latin-1").rstrip(" \0"))


def _vr_of(element: DataElement | RawDataElement) -> str | None:
    """An element's VR, from the data dictionary where the file does not say (implicit VR)."""
    if element.VR:
        return str(element.VR)
    try:
        return dictionary_VR(element.tag)
    except KeyError:
        return None


def _has_text_beyond_ascii(dataset: Dataset) -> bool:
    """Whether a top-level text value holds a character beyond ASCII; an element still unread is judged by its
    bytes (read, 300 long DS values took 4 GB and a minute: attack review 66 F3)."""
    for tag in dataset.keys():  # noqa: SIM118 - iterating a Dataset reads each element; its keys do not
        if not _may_be_checked_text(dataset, tag):
            continue
        raw = dataset.get_item(tag)
        if isinstance(raw, RawDataElement):
            beyond = raw.value is not None and not bytes(raw.value).isascii()
        else:
            beyond = raw.VR in CHECKED_TEXT_VRS and raw.VM > 0 and not str(raw.value).isascii()
        if beyond:
            return True
    return False


# The plane of a frame in a patient coordinate system: (functional group sequence, attribute) as `frame_value` reads
# them, per frame or shared in an enhanced object, else at the top level.
PLANE_ATTRIBUTES = (
    ("PlanePositionSequence", "ImagePositionPatient"),
    ("PlaneOrientationSequence", "ImageOrientationPatient"),
    ("PixelMeasuresSequence", "PixelSpacing"),
)


def missing_plane_attributes(frames: Sequence[DicomFrame]) -> list[str]:
    """The plane attributes that any of `frames` with a Frame of Reference UID lacks altogether (Type 1 in MR),
    in `PLANE_ATTRIBUTES` order: highdicom fails on them with an AttributeError that names nothing. A value that
    is present but impossible (a spacing of 0) is the volume's concern, not this check's."""
    placed = [frame for frame in frames if frame.frame_of_reference_uid]
    return [
        keyword
        for sequence, keyword in PLANE_ATTRIBUTES
        if any(frame_value(frame.header, frame.frame_number - 1, sequence, keyword) is None for frame in placed)
    ]


# How far a stated Spacing Between Slices may lie from the one the positions give (a fraction of it) and still be
# copied: positions are written rounded, a wrong value is off by far more (half or twice the spacing).
SPACING_TOLERANCE = 0.01

# Lengths a SEG's Pixel Measures and an SR's image library copy from the sources, each with whether the standard
# allows it to be 0 (none may be negative).
COPIED_LENGTHS = (("PixelSpacing", False), ("SliceThickness", False), ("SpacingBetweenSlices", True))


def impossible_lengths(sources: Sequence[Dataset]) -> list[str]:
    """The `COPIED_LENGTHS` that any of `sources` (top level or shared functional groups) gives a value the standard
    does not allow. A SEG would copy them (attack finding:
    a SEG with Pixel Spacing 0, an SR image library with 0 in it, a negative Spacing Between Slices). A negative
    Spacing Between Slices or Slice Thickness of a source that is no enhanced image is not one: the copies leave the
    spacing out (`without_contradicted_spacing`) and give the SEG the slices' spacing for the thickness
    (`with_slice_thickness`), as the volume and the SEG go by the positions (interop reviews 61 F9, 62 F1)."""
    return [
        keyword
        for keyword, zero_allowed in COPIED_LENGTHS
        if any(
            length < 0 or (length == 0 and not zero_allowed)
            for source in sources
            if keyword == "PixelSpacing" or _copies_functional_groups(source)
            for length in _lengths_in(source, keyword)
        )
    ]


def _copies_functional_groups(source: Dataset) -> bool:
    """Whether a SEG of `source` copies its functional groups: an enhanced (multi-frame) image's. A classic image's
    stray Shared Functional Groups (a converter's) are not copied, its top level is: their Slice Thickness of 0
    refused its SEG for a value the SEG would never hold (attack review 64 F6)."""
    if "SharedFunctionalGroupsSequence" not in source:
        return False
    try:
        frames = int(source.get("NumberOfFrames") or 1)
    except (TypeError, ValueError):  # refused where the frames are read
        frames = 1
    return str(source.get("SOPClassUID", "")) in MULTI_FRAME_CLASSES or frames > 1


def _stated_thickness(source: Dataset) -> bool:
    """Whether the source's Slice Thickness is a thickness: numbers, each above 0. Software that does not know one
    writes 0 (or, rarely, a negative value) in the Type 2 attribute; a SEG's frames and an SR's image library may not
    repeat it (dciodvfy: "Value is zero")."""
    lengths = _lengths_in(source, "SliceThickness")
    return len(lengths) == 1 and lengths[0] > 0  # one value: "5\\5" failed highdicom's copy (interop review 63 F3)


def _lengths_in(source: Dataset, keyword: str) -> list[float]:
    """The numbers of a length attribute; none when it is absent, empty, unreadable or not finite ("inf", "1e400":
    a SEG cannot write them, interop review 63 F3; an unreadable one is refused where the frame is read,
    `app.dicom.dicom_frame`)."""
    return finite_lengths(frame_value(source, 0, "PixelMeasuresSequence", keyword))


def finite_lengths(value: object) -> list[float]:
    """The numbers of a length attribute's value (one or several); none when it is absent, empty, unreadable or not
    finite."""
    items = value if isinstance(value, Sequence) and not isinstance(value, str | bytes) else [value]
    try:
        lengths = [float(item) for item in items if item is not None and str(item).strip() != ""]
    except (TypeError, ValueError):
        return []
    return lengths if all(math.isfinite(length) for length in lengths) else []


def impossible_lengths_reason(keywords: Sequence[str], derived: str) -> str:
    """Why sources with `impossible_lengths` cannot give `derived` (e.g. "a DICOM SEG"), naming the keywords only."""
    return (
        f"the source's {', '.join(keywords)} must be above 0 (SpacingBetweenSlices: not negative), and {derived} "
        "copies them"
    )


# What highdicom's image library (TID 1604, in every SR that lists its images) reads of a cross-sectional image,
# without a default: absent or empty, it fails.
IMAGE_LIBRARY_ATTRIBUTES = (
    "Modality",
    "PixelSpacing",
    "ImageOrientationPatient",
    "ImagePositionPatient",
    "SliceThickness",
)


def image_library_sources(sources: Sequence[Dataset]) -> list[Dataset] | None:
    """The sources for an SR's image library, or None to leave the library out (the SR still lists them as its
    evidence) when one lacks what it describes: an empty Slice Thickness (Type 2, so legal), an enhanced multi-frame
    image (its geometry is per frame), a missing position. An empty Spacing Between Slices, which highdicom also
    reads when present, is left out of a shallow copy.
    """
    if (
        any(not _has_value(source, keyword) for source in sources for keyword in IMAGE_LIBRARY_ATTRIBUTES)
        or not all(_stated_thickness(source) for source in sources)  # "5,0" or 0 is as good as none
        or impossible_lengths(sources)  # a Pixel Spacing of 0, which the library would repeat
    ):
        return None
    return [_without_empty(source, "SpacingBetweenSlices") for source in sources]


def _has_value(dataset: Dataset, keyword: str) -> bool:
    return keyword in dataset and dataset[keyword].value not in (None, "", [])


def _without_value(dataset: Dataset, keyword: str) -> Dataset:
    """`dataset` itself, or a shallow copy without `keyword` when it holds a value."""
    return _shallow_copy(dataset, leave_out=keyword) if _has_value(dataset, keyword) else dataset


def _without_empty(dataset: Dataset, keyword: str) -> Dataset:
    """`dataset` itself, or a shallow copy without `keyword` when it is present and empty."""
    if keyword not in dataset or _has_value(dataset, keyword):
        return dataset
    return _shallow_copy(dataset, leave_out=keyword)


def _shallow_copy(dataset: Dataset, leave_out: str = "") -> Dataset:
    """A new dataset holding `dataset`'s elements (shared, not copied) but `leave_out`, and its file meta."""
    copy = Dataset()
    if hasattr(dataset, "file_meta"):
        copy.file_meta = dataset.file_meta
    for element in dataset:
        if element.keyword != leave_out:
            copy.add(element)
    return copy


# Value types whose text pydicom can check (length, characters, form), and those of them that may hold line breaks.
CHECKED_TEXT_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UI", "UT"})
MULTILINE_VRS = frozenset({"LT", "ST", "UT"})
ALLOWED_CONTROLS: frozenset[str] = frozenset()
ALLOWED_MULTILINE_CONTROLS = ALLOWED_CONTROLS | {"\r", "\n", "\t", "\x0c"}
# What a value decoded from the source holds where its bytes did not decode in its declared character set (a Latin-1
# "Müller" under ISO_IR 192: "M\ufffdller"), or where an ISO 2022 escape sequence was not one pydicom knows (the ESC
# left in the text: values are compared decoded, so a valid escape never is). Either is a broken value, emptied or
# refused as others, not copied into the SEG and SR.
UNDECODED_TEXT = frozenset({"\ufffd", "\x1b"})


def invalid_values(dataset: Dataset, keywords: Iterable[str] | None = None) -> list[str]:
    """The keywords (all top-level elements, or only `keywords`) whose values break their value type: too long
    (a 3,000-character Study Description in an LO of 64), a form it does not have (a Study Time of 25:99:99),
    control characters (a NUL or a line break in a Patient's Name), or several values where the dictionary allows
    one (two Patient IDs).

    Why: a SEG and an SR copy the patient's and study's values as they come, so a source that breaks them makes an
    object that a PACS may refuse or show garbled, or highdicom fails on it with a message that names nothing. The
    caller refuses such a source with the keywords; the values are never quoted (they may identify the patient).
    """
    # By tag, each element read only when it may be checked: read, the 300 long DS values of a 20 MB header took
    # 4 GB to check a Patient ID (attack review 66 F3).
    wanted = None if keywords is None else {Tag(keyword) for keyword in keywords}
    return [
        dataset[tag].keyword or str(tag)
        for tag in dataset.keys()  # noqa: SIM118 - iterating a Dataset reads each element; its keys do not
        if (wanted is None or tag in wanted) and _may_be_checked_text(dataset, tag) and breaks_value_type(dataset[tag])
    ]


def _may_be_checked_text(dataset: Dataset, tag: BaseTag) -> bool:
    """Whether `dataset`'s element `tag` may be of a `CHECKED_TEXT_VRS` value type, told without reading its value."""
    element = dataset.get_item(tag)
    if isinstance(element, RawDataElement) and element.VR == "UN":  # read as the dictionary's, as pydicom does
        element = element._replace(VR=None)
    return _vr_of(element) in CHECKED_TEXT_VRS


def breaks_value_type(element: DataElement) -> bool:
    """Whether a text element's value breaks its value type (`invalid_values`); other value types: no."""
    if element.VR not in CHECKED_TEXT_VRS or element.VM == 0:
        return False
    values = element.value if element.VM > 1 else [element.value]
    return (element.VM > 1 and _single_valued(element.tag)) or not all(
        _valid_value(element.VR, value) for value in values
    )


# How far past its value type's length an identifier is still copied as it came: a 20-character Accession Number is
# a RIS's, a 3,000-character one is no identifier.
AS_IS_LENGTH_FACTOR = 4


def only_too_long(element: DataElement) -> bool:
    """Whether `element` breaks its value type by its length alone (one value, every character allowed), and by at
    most `AS_IS_LENGTH_FACTOR` times that length."""
    limit = valuerep.MAX_VALUE_LEN.get(element.VR)
    text = str(element.value or "")
    return (
        limit is not None
        and element.VM == 1
        and limit < len(text) <= AS_IS_LENGTH_FACTOR * limit
        and all(_valid_value(element.VR, text[start : start + limit]) for start in range(0, len(text), limit))
    )


def in_standard_vr(element: DataElement) -> DataElement:
    """`element` under its dictionary value type: a file may write Patient's Sex as LO or a Patient ID as UT, which
    the checks would judge by the wrong rules and a SEG or SR would copy under the wrong VR. Bytes
    (an unknown VR's) are read as ASCII, their other bytes replaced; a non-text value is written as text."""
    try:
        dictionary_vr = dictionary_VR(element.tag)
    except KeyError:
        return element
    if dictionary_vr == element.VR:
        return element
    value = element.value
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    elif value is not None and not isinstance(value, str):
        value = str(value)
    return DataElement(element.tag, dictionary_vr, value)


def copied_as_is(dataset: Dataset) -> list[str]:
    """The `MATCHED_TYPE2_ATTRIBUTES` of `dataset` that are only too long: a SEG and an SR copy them as they came."""
    return [
        keyword
        for keyword in MATCHED_TYPE2_ATTRIBUTES
        if keyword in dataset and only_too_long(in_standard_vr(dataset[keyword]))
    ]


def invalid_values_not_copied_as_is(dataset: Dataset, keywords: Iterable[str] | None = None) -> list[str]:
    """`invalid_values` (of `keywords`), but for the identifiers a SEG and an SR copy as they came (`copied_as_is`)."""
    as_is = set(copied_as_is(dataset))
    return [keyword for keyword in invalid_values(dataset, keywords) if keyword not in as_is]


def _single_valued(tag: BaseTag) -> bool:
    """Whether the data dictionary allows `tag` one value only (private and unknown tags: not known, so no)."""
    try:
        return dictionary_VM(tag) == "1"
    except KeyError:
        return False


def check_sources(
    sources: Sequence[Dataset], derived: str, error: type[ServiceError], sources_named: str, lengths: bool = True
) -> None:
    """What a SEG and an SR both need of the source headers they refer to and copy from: UIDs to name them by, Type 2
    patient and study attributes in a form the standard allows, and, with `lengths`, lengths their value type can
    hold (an SR copies them only into its image library, which `image_library_sources` leaves out for them).

    Raises
    ------
    ServiceError
        Of the caller's kind (`error`), its reason naming `derived` ("a DICOM SEG") and the sources (`sources_named`),
        never their values.
    """
    check_reference_uids(sources, derived, error, sources_named)
    # As the SEG and SR will copy them (`with_type2_attributes`): a legacy date or time form in the standard's,
    # broken values left empty, but for the identifiers a PACS files them by.
    copied = with_type2_attributes(sources[0])
    refuse_invalid_values(invalid_values_not_copied_as_is(copied, TYPE2_PATIENT_STUDY_ATTRIBUTES), derived, error)
    as_is = copied_as_is(copied)
    emptied = emptied_type2_attributes(sources[0])
    if emptied or as_is:
        logger.info(
            "%s: source values that break their value type, left empty: %s; copied as they came (only too long): %s",
            derived,
            ", ".join(emptied) or "none",
            ", ".join(as_is) or "none",
        )
    impossible = impossible_lengths(sources) if lengths else []
    if impossible:
        raise error(impossible_lengths_reason(impossible, derived))


# The modules whose root attributes highdicom copies from the first source into a SEG or an SR
# (`copy_patient_and_study_information`).
COPIED_MODULES = ("patient", "general-study", "patient-study", "clinical-trial-subject", "clinical-trial-study")


@functools.cache
def optional_copied_attributes() -> frozenset[str]:
    """The Type 3 (optional) attributes of `COPIED_MODULES`, by the standard's tables that highdicom carries.

    The tables come from a private highdicom module, so pyproject.toml pins highdicom exactly, and
    `test_optional_copied_attributes_are_read_from_highdicom` fails first if an upgrade moves them.
    """
    from highdicom._standard_utils import get_module_attribute_map  # the tables highdicom copies by

    tables = get_module_attribute_map()
    return frozenset(
        str(item["keyword"])
        for module in COPIED_MODULES
        for item in tables[module]
        if not item["path"] and item["type"] == "3"
    )


def drop_invalid_optional_values(derived: Dataset) -> list[str]:
    """Delete from `derived` the optional patient and study attributes copied from the source whose values break
    their value type (a Patient's Age of "54", a 17-character Patient's Weight, a 3,000-character Study
    Description), and their sequences of no item (a Type 3 sequence, when present, holds one or more: PS3.5 7.5.3;
    some RIS exports write an empty Other Patient IDs Sequence); return their keywords.

    Why: a SEG or an SR may leave a Type 3 attribute out, so refusing the whole result for one (as for the Type 2
    attributes a PACS files the result by) would cost the study its SEG and SR for nothing."""
    optional = optional_copied_attributes()
    empty_sequences = [
        element.keyword
        for element in derived
        if element.VR == "SQ" and not element.value and element.keyword in optional
    ]
    dropped = invalid_values(derived, optional) + empty_sequences
    for keyword in dropped:
        del derived[keyword]
    return dropped


def refuse_invalid_values(keywords: Sequence[str], derived: str, error: type[ServiceError]) -> None:
    """Raise `error` when a source (or what was made of it) holds `invalid_values`."""
    if keywords:
        raise error(invalid_values_reason(keywords, derived))


def invalid_values_reason(keywords: Sequence[str], derived: str) -> str:
    """Why a source with `invalid_values` cannot give `derived` (e.g. "a DICOM SEG"), naming the keywords only."""
    return (
        f"the source's {', '.join(keywords)} break their DICOM value type (too long, or a form or characters it does "
        f"not allow), and {derived} copies them"
    )


def _valid_value(vr: str, value: object) -> bool:
    text = str(value)
    allowed = ALLOWED_MULTILINE_CONTROLS if vr in MULTILINE_VRS else ALLOWED_CONTROLS
    if any(
        (not character.isprintable() and character not in allowed) or character in UNDECODED_TEXT for character in text
    ):
        return False
    if vr == "UI":
        # pydicom refuses components with leading zeros (1.2.840.0123), which legacy scanners wrote for years: a
        # SEG or SR must refer to the UIDs that exist, so `UID_FORM` tolerates them.
        return is_uid(unpadded_uid(text))
    try:
        valuerep.validate_value(vr, text, RAISE)
    except (ValueError, TypeError):
        return False
    return True


def check_reference_uids(
    sources: Sequence[Dataset], derived: str, error: type[ServiceError], sources_named: str
) -> None:
    """Refuse sources a SEG or SR cannot refer to by their UIDs (`unusable_reference_uids`): also the T1 series the
    models read beside FLAIR, which both name (a T1 UID of 72 characters would be copied into them)."""
    missing = unusable_reference_uids(sources)
    if missing:
        raise error(
            f"{derived} refers to its source images by their UIDs; the {sources_named} lack {', '.join(missing)} or "
            "hold one that is no UID (digits and dots, at most 64 characters)"
        )


def unusable_reference_uids(sources: Sequence[Dataset]) -> list[str]:
    """The `REFERENCE_UIDS` that any of `sources` lacks, leaves empty or holds in a form no UID has (`1.2.abc`), in
    that order."""
    return [
        keyword
        for keyword in REFERENCE_UIDS
        if any(not is_uid(unpadded_uid(source.get(keyword))) for source in sources)
    ]


def with_type2_attributes(dataset: Dataset) -> Dataset:
    """`dataset` itself when it has every `TYPE2_PATIENT_STUDY_ATTRIBUTES` (and, single-frame, every
    `TYPE2_IMAGE_PLANE_ATTRIBUTES`) in the standard's form, else a shallow copy with the missing ones present and
    empty, dates and times in the ACR-NEMA form written in the standard's (`standard_date_time`), and values that
    break their value type empty (`emptied_type2_attributes`); the dataset is not modified."""
    expected = TYPE2_PATIENT_STUDY_ATTRIBUTES
    if "SharedFunctionalGroupsSequence" not in dataset:
        expected += TYPE2_IMAGE_PLANE_ATTRIBUTES
    missing = [keyword for keyword in expected if keyword not in dataset]
    rewritten = _standard_dates_times(dataset)
    emptied = _emptied(dataset, rewritten)
    revalued = [
        keyword
        for keyword in TYPE2_PATIENT_STUDY_ATTRIBUTES
        if keyword in dataset
        and keyword not in rewritten
        and keyword not in emptied
        and in_standard_vr(dataset[keyword]) is not dataset[keyword]
    ]
    if not missing and not rewritten and not emptied and not revalued:
        return dataset
    completed = _shallow_copy(dataset)
    for keyword in missing:
        setattr(completed, keyword, None)  # an empty value: what Type 2 means by "unknown"
    # New elements: the source's, shared by the copy, are left as they were.
    for keyword, value in rewritten.items():
        completed.add(DataElement(dataset[keyword].tag, dictionary_VR(dataset[keyword].tag), value))
    for keyword in emptied:
        completed.add(DataElement(dataset[keyword].tag, dictionary_VR(dataset[keyword].tag), None))
    for keyword in revalued:  # under the standard's VR, as a SEG and an SR must write it
        completed.add(in_standard_vr(dataset[keyword]))
    return completed


def _standard_dates_times(dataset: Dataset) -> dict[str, str]:
    """The Type 2 dates and times of `dataset` in an ACR-NEMA form, by keyword, written in the standard's."""
    elements = [in_standard_vr(dataset[keyword]) for keyword in TYPE2_PATIENT_STUDY_ATTRIBUTES if keyword in dataset]
    return {
        element.keyword: standard
        for element in elements
        if element.VR in ("DA", "TM")
        and (standard := standard_date_time(element.VR, str(element.value or ""))) is not None
    }


def emptied_type2_attributes(dataset: Dataset) -> list[str]:
    """The Type 2 patient and study attributes of `dataset` that a SEG and an SR leave empty: those whose values
    break their value type once legacy dates and times are in the standard's form (Patient's Sex "m", a Study Time
    of 25:99:99, a line break in a name), but for `PATIENT_KEY` and identifiers that are only too long.

    Why: refusing them would cost the study its SEG and SR, and the node send nothing; Type 2 lets a
    value be empty when it is unknown, and a PACS files a result by its UIDs and `PATIENT_KEY`, which stay."""
    return _emptied(dataset, _standard_dates_times(dataset))


def _emptied(dataset: Dataset, rewritten: Mapping[str, str]) -> list[str]:
    """`emptied_type2_attributes`, the dates and times in the standard's form given (`_standard_dates_times`)."""
    emptied = []
    for keyword in TYPE2_PATIENT_STUDY_ATTRIBUTES:
        if keyword == PATIENT_KEY or keyword not in dataset:
            continue
        element = in_standard_vr(dataset[keyword])
        if keyword in rewritten:
            element = DataElement(element.tag, element.VR, rewritten[keyword])
        if breaks_value_type(element) and not (keyword in MATCHED_TYPE2_ATTRIBUTES and only_too_long(element)):
            emptied.append(keyword)
    return emptied


_ACR_NEMA_DATE = re.compile(r"(\d{4})[./-](\d{2})[./-](\d{2})")
_ACR_NEMA_TIME = re.compile(r"(\d{2}):(\d{2})(?::(\d{2})(\.\d{1,6})?)?")


def standard_date_time(vr: str, text: str) -> str | None:
    """A DA or TM value written as ACR-NEMA and DICOM before 1998 allowed ("2024.01.01", "12:30:00"; archives write
    "/" and "-" too) in the standard's form ("20240101", "123000"), or None when `text` is not in such a form.

    Real archives hold them, and refusing them leaves a study dated "2024/01/01" without any SEG or SR. Only the
    form changes; a value that is still no date or time is still refused."""
    pattern = _ACR_NEMA_DATE if vr == "DA" else _ACR_NEMA_TIME if vr == "TM" else None
    match = pattern.fullmatch(text.strip()) if pattern is not None else None
    if match is None:
        return None
    return "".join(part for part in match.groups() if part)


def with_slice_thickness(dataset: Dataset, thickness_mm: float | None) -> Dataset:
    """`dataset` itself when its Slice Thickness is a thickness (`_stated_thickness`), else a shallow copy with Slice
    Thickness `thickness_mm` (without one when that is None and the source's is not empty), for highdicom to copy
    into a SEG.

    Why: a SEG's Pixel Measures need a Slice Thickness (Type 1C: its frames are a volume), while a single-frame
    source may leave it empty (Type 2). The caller passes the slices' spacing: each mask frame stands for a slab one
    spacing thick, the slab the tumor volume counts (`app.dicom.tumor_volume.slice_spacing_mm`).
    """
    if "SharedFunctionalGroupsSequence" in dataset or _stated_thickness(dataset):
        return dataset  # an enhanced image's impossible lengths are refused by `check_sources`
    if thickness_mm is None:  # none to give: an empty value kept (Type 2), one that is no thickness ("5mm", 0) not
        return _without_value(dataset, "SliceThickness")
    completed = _shallow_copy(dataset, leave_out="SliceThickness")
    completed.SliceThickness = round(thickness_mm, 6)  # a DS holds at most 16 characters
    return completed


def without_contradicted_spacing(dataset: Dataset, series_spacing_mm: float | None) -> Dataset:
    """`dataset` itself, or a shallow copy without Spacing Between Slices when that value is negative or contradicts
    `series_spacing_mm`, the slices' spacing as the tumor volume takes it from their Image Positions
    (`app.dicom.tumor_volume.series_spacing_mm`).

    Why: a SEG's Pixel Measures and an SR's image library copy it from the source, so a wrong source value (2.5 mm
    for slices 5 mm apart, or -5 mm, which some software writes) would be repeated in our objects beside frames that
    lie elsewhere. It is optional in both, and the positions are what the tumor volume and the SEG's frames go by.
    """
    if "SharedFunctionalGroupsSequence" in dataset:
        return dataset
    stated = _lengths_in(dataset, "SpacingBetweenSlices")
    if len(stated) != 1:  # absent, empty, reading as no number ("5mm", "inf"), or two ("5\\5"): not copied either
        return _without_value(dataset, "SpacingBetweenSlices")
    contradicted = contradicts_spacing(stated[0], series_spacing_mm)
    return _shallow_copy(dataset, leave_out="SpacingBetweenSlices") if stated[0] < 0 or contradicted else dataset


def contradicts_spacing(stated: float, series_spacing_mm: float | None) -> bool:
    """Whether a Spacing Between Slices of `stated` mm is not the slices' spacing as their positions give it (beyond
    `SPACING_TOLERANCE`); never when that spacing is unknown."""
    return series_spacing_mm is not None and not math.isclose(
        stated, series_spacing_mm, rel_tol=SPACING_TOLERANCE, abs_tol=0.01
    )


def without_spacing_between_slices(dataset: Dataset) -> Dataset:
    """`dataset` itself, or a shallow copy without Spacing Between Slices: for sources of a SEG whose slices no single
    spacing describes (`app.dicom.tumor_volume.slices_closer_than_spacing`), so that its Pixel Measures declare none."""
    if "SpacingBetweenSlices" not in dataset or "SharedFunctionalGroupsSequence" in dataset:
        return dataset
    return _shallow_copy(dataset, leave_out="SpacingBetweenSlices")


def complete_segmentation(segmentation: Dataset, source_images: Sequence[Dataset]) -> Dataset:
    """Add Patient Orientation to a SEG whose sources have no Image Orientation (Patient) (Type 2C), in place."""
    if "PatientOrientation" in segmentation or "FrameOfReferenceUID" in segmentation:
        return segmentation
    orientations = {tuple(source.get("PatientOrientation") or ()) for source in source_images}
    segmentation.PatientOrientation = list(orientations.pop()) if len(orientations) == 1 else None
    return segmentation
