"""What the DICOM node accepts, and why it refuses a received instance.

First the node's tables: the storage classes it reads (`STORAGE_CLASSES`; the MR ones, which must say Modality MR:
`MR_CLASSES`), the classes that travel with MR studies and are answered Success without being kept
(`NOT_KEPT_CLASSES`: `IGNORED_CLASSES`, the vendors' private ones, every other storage class of the standard), the
transfer syntaxes it accepts (`TRANSFER_SYNTAXES`), and the C-STORE statuses of its refusals.
`app.node.dicom_receiver` offers them at association and answers with them, and `app.node.dicom_conformance_statement`
writes them into ``DICOM_CONFORMANCE.md``: one table for both, so the statement cannot drift from what the node does.

Then the check of one instance once it has arrived whole (`checked_instance`): it is kept only if the service can
read it (its header, its pixel data's length, the UIDs that name it, matching the C-STORE request), else refused with
`InstanceRefusedError`, whose status answers the C-STORE and whose message, the Error Comment, never quotes a value
of the instance (`without_found_values`). An instance refused while it still arrives (over the instance limit or the
memory the node may hold in instances being received) goes into a `DiscardedDataSet`, which counts its bytes and
keeps none.
"""

from __future__ import annotations

import io
import re
import sys
from dataclasses import dataclass
from typing import Any

from pydicom.filereader import read_dataset
from pydicom.uid import (
    HTJ2K,
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    EnhancedMRImageStorage,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    LegacyConvertedEnhancedMRImageStorage,
    MRImageStorage,
    MultiFrameGrayscaleByteSecondaryCaptureImageStorage,
    MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
    RLELossless,
    SecondaryCaptureImageStorage,
)
from pynetdicom.presentation import AllStoragePresentationContexts
from pynetdicom.service_class import StorageServiceClass
from pynetdicom.sop_class import (
    BasicTextSRStorage,
    ColorSoftcopyPresentationStateStorage,
    Comprehensive3DSRStorage,
    ComprehensiveSRStorage,
    EncapsulatedPDFStorage,
    EnhancedSRStorage,
    GrayscaleSoftcopyPresentationStateStorage,
    KeyObjectSelectionDocumentStorage,
    MRSpectroscopyStorage,
    RawDataStorage,
    SegmentationStorage,
    register_uid,
)

from app.dicom.dicom_codestream import UNDEFINED_LENGTH
from app.dicom.dicom_conformance import invalid_values_not_copied_as_is, is_uid
from app.dicom.dicom_header import read_dicom_header, unpadded_uid
from app.dicom.dicom_input import check_frame_attributes, check_pixel_data_element, decode_dicom
from app.errors import (
    ColourDicomError,
    DicomWithoutPixelDataError,
    OtherModalityCaptureError,
    OverMemoryBudgetError,
    ServiceError,
    TooManyDicomElementsError,
    UnsupportedSopClassError,
)
from app.series.info import identity_text

STORAGE_CLASSES = (
    MRImageStorage,
    EnhancedMRImageStorage,
    LegacyConvertedEnhancedMRImageStorage,
    SecondaryCaptureImageStorage,
    MultiFrameGrayscaleByteSecondaryCaptureImageStorage,
    MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
)
# What travels with MR images in a study and is not an image the models read: our own results (SEG, SR) among them.
# A router that forwards a whole study offers them too, and Orthanc fails the whole send when any class is refused,
# so they are answered Success and not kept (`app.node.dicom_receiver.Receiver._handle_store`).
IGNORED_CLASSES = (
    SegmentationStorage,
    BasicTextSRStorage,
    EnhancedSRStorage,
    ComprehensiveSRStorage,
    Comprehensive3DSRStorage,
    KeyObjectSelectionDocumentStorage,
    GrayscaleSoftcopyPresentationStateStorage,
    ColorSoftcopyPresentationStateStorage,
    RawDataStorage,
    MRSpectroscopyStorage,
    EncapsulatedPDFStorage,
)
# Vendors' private classes that MR studies carry (Siemens keeps its protocol in a CSA Non-Image object in nearly
# every study): refused, they failed Orthanc's whole send of such a study to the node (interop review 30).
PRIVATE_IGNORED_CLASSES = {
    "1.3.12.2.1107.5.9.1": "Siemens CSA Non-Image Storage",
    "1.3.46.670589.11.0.0.12.1": "Philips Private MR Spectrum Storage",
    "1.3.46.670589.11.0.0.12.2": "Philips Private MR Series Data Storage",
    "1.3.46.670589.11.0.0.12.4": "Philips Private MR Examcard Storage",
}


def register_private_classes() -> None:
    """Make pynetdicom take `PRIVATE_IGNORED_CLASSES` as storage classes: it hands a C-STORE of a class it does not
    know to no handler (the request fails, whatever the node answers). Idempotent."""
    for uid_, name in PRIVATE_IGNORED_CLASSES.items():
        register_uid(uid_, re.sub(r"\W", "", name), StorageServiceClass)


# Every other storage class of the standard (CT, PET, colour images, documents... of a mixed study), for the same
# reason: accepted, answered Success and not kept.
OTHER_STORAGE_CLASSES = tuple(
    str(context.abstract_syntax)
    for context in AllStoragePresentationContexts
    if str(context.abstract_syntax) not in {*STORAGE_CLASSES, *IGNORED_CLASSES}
)
NOT_KEPT_CLASSES = frozenset({*IGNORED_CLASSES, *PRIVATE_IGNORED_CLASSES, *OTHER_STORAGE_CLASSES})
MR_CLASSES = (MRImageStorage, EnhancedMRImageStorage, LegacyConvertedEnhancedMRImageStorage)
# Uncompressed first; compressed ones the service decodes (High-Throughput JPEG 2000 too, through OpenJPEG). JPEG
# Extended is left out on purpose: one UID covers 8 and 12 bits, no decoder here reads 12, and the bits are not known
# at association; without it in the list a sender falls back to an uncompressed syntax instead.
TRANSFER_SYNTAXES = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    JPEGBaseline8Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    HTJ2K,
    RLELossless,
)
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_DOES_NOT_MATCH_SOP_CLASS = 0xA900
STATUS_CANNOT_UNDERSTAND = 0xC000
_FOUND_VALUE = re.compile(r"[;,]\s*(?:got|found)\b")  # where a header check's message quotes what the file holds


class InstanceNotKeptError(Exception):
    """A received instance that is valid and of no use to the models (a colour screen save, a Secondary Capture of
    another modality): answered Success, so that the sender's study goes through, and not kept. The message, for
    the log, never quotes a DICOM value."""


class InstanceRefusedError(Exception):
    """A received instance the node does not keep: `status` answers its C-STORE, the message is the Error Comment.

    The message never quotes a DICOM value: it goes to the sender and to the log.
    """

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


@dataclass(frozen=True)
class ReceivedInstance:
    """The UIDs and Patient ID that place a checked instance in the spool (`checked_instance`)."""

    study_uid: str
    patient_id: str
    sop_instance_uid: str
    series_uid: str


def checked_instance(data: bytes, sop_class_uid: str, sop_instance_uid: str, max_bytes: int) -> ReceivedInstance:
    """Where the instance `data` (Part 10 bytes as received by C-STORE) goes, if the node may keep it.

    Not kept, and answered Success (`InstanceNotKeptError`): a colour image or a Secondary Capture of another
    modality, valid objects of the study the models have no use for, and an object whose header holds more data
    elements than the service reads (`TooManyDicomElementsError`). Refused with `InstanceRefusedError`: what
    `read_dicom_header` refuses besides (a truncated or garbled header, a class other than the MR ones, no pixel
    data...), a deflated data set that inflates past `max_bytes`, pixel data laid out against its transfer syntax
    (native pixels under JPEG Baseline) or native pixel data shorter than its image (`check_pixel_data_element`), a
    malformed geometry or rescale value (`check_frame_attributes`: a position of two numbers, a RescaleSlope of text
    or 0), a SOP Class or Instance UID other than the request's (stored under the
    request's UID, it would replace another instance), and a SOP Instance or Study Instance, Study Instance or
    Series Instance UID that is missing or not a UID. Each would fail only once the study is processed, long after
    its sender was told it was kept (and a re-sent instance refused leaves the copy stored before it as it was). No
    refusal quotes a value of the instance (`without_found_values`). Whatever else pydicom raises on a value the
    checks read (a length no number of values fills) refuses it too, 0xC000 (attack review 60 F5: it escaped, and
    pynetdicom answered 0xC211 with a traceback in the log).
    """
    try:
        return _checked_instance(data, sop_class_uid, sop_instance_uid, max_bytes)
    except (InstanceRefusedError, InstanceNotKeptError):
        raise
    except MemoryError as error:  # the node's, not the instance's: the sender may send it again (review 62 F6)
        raise InstanceRefusedError(STATUS_OUT_OF_RESOURCES, "out of memory while checking it") from error
    except Exception as error:  # noqa: BLE001 - pydicom raises many types on a damaged value; none is quoted
        raise InstanceRefusedError(
            STATUS_CANNOT_UNDERSTAND, f"a value cannot be read ({type(error).__name__}): the instance is corrupt"
        ) from error


def _checked_instance(data: bytes, sop_class_uid: str, sop_instance_uid: str, max_bytes: int) -> ReceivedInstance:
    try:
        header = read_dicom_header(data, max_pixels=sys.maxsize, max_bytes=max_bytes)
        check_pixel_data_element(header)
        check_frame_attributes(header)
    except OverMemoryBudgetError as error:  # only a deflated data set, inflated chunk by chunk, gets here
        raise InstanceRefusedError(STATUS_OUT_OF_RESOURCES, f"over {max_bytes} bytes once inflated") from error
    except (ColourDicomError, OtherModalityCaptureError, TooManyDicomElementsError) as error:
        # A header too large to read may be a valid object of the study (an Enhanced MR of thousands of frames, a
        # diffusion or functional run): refused, it failed a router's whole send of the study, as Orthanc's is.
        raise InstanceNotKeptError(without_found_values(error.message)) from error
    except (UnsupportedSopClassError, DicomWithoutPixelDataError) as error:
        raise InstanceRefusedError(STATUS_DOES_NOT_MATCH_SOP_CLASS, without_found_values(error.message)) from error
    except ServiceError as error:
        raise InstanceRefusedError(STATUS_CANNOT_UNDERSTAND, without_found_values(error.message)) from error
    dataset = header.dataset
    if unpadded_uid(dataset.get("SOPClassUID")) in MR_CLASSES and str(dataset.get("Modality", "")).upper() != "MR":
        # As a Secondary Capture of another modality is refused: kept, it would only be recorded "not analysed".
        raise InstanceRefusedError(STATUS_CANNOT_UNDERSTAND, "an MR storage object must have Modality MR")
    if unpadded_uid(dataset.get("SOPClassUID")) != unpadded_uid(sop_class_uid):
        raise InstanceRefusedError(STATUS_DOES_NOT_MATCH_SOP_CLASS, "SOP Class UID is not the request's")
    if unpadded_uid(dataset.get("SOPInstanceUID")) != unpadded_uid(sop_instance_uid):
        raise InstanceRefusedError(STATUS_DOES_NOT_MATCH_SOP_CLASS, "SOP Instance UID is not the request's")
    study_uid, series_uid = (
        unpadded_uid(dataset.get("StudyInstanceUID")),
        unpadded_uid(dataset.get("SeriesInstanceUID")),
    )
    # Type 1 UIDs that processing needs: the spool files an instance by its study, the series flow groups by series.
    required = (
        ("SOP Instance UID", unpadded_uid(sop_instance_uid)),
        ("Study Instance UID", study_uid),
        ("Series Instance UID", series_uid),
    )
    for name, value in required:
        if not is_uid(value):
            raise InstanceRefusedError(STATUS_DOES_NOT_MATCH_SOP_CLASS, f"{name} missing or not a UID")
    if invalid_values_not_copied_as_is(dataset, ["PatientID"]):
        # The SEG and SR file the results under it: one broken otherwise than by its length refuses both, so the
        # study would fail once processed and nothing be sent (interop reviews 35 and 37).
        raise InstanceRefusedError(
            STATUS_CANNOT_UNDERSTAND, "Patient ID breaks its value type (two values, a control character...)"
        )
    return ReceivedInstance(
        study_uid, identity_text(dataset.get("PatientID")), unpadded_uid(sop_instance_uid), series_uid
    )


def check_replacement_decodes(data: bytes, max_bytes: int) -> None:
    """Refuse an instance sent again under the SOP Instance UID of one kept already unless its pixels decode.

    Interop review 37: a corrupt re-send (damaged HTJ2K code blocks behind intact markers) was answered Success and
    replaced the readable copy; the study was analysed again without that slice, and worse results sent as revised.
    Only a replacement is decoded here: it costs a decoding per re-sent file, not per file.

    Raises
    ------
    InstanceRefusedError
        C000, with the decoder's reason (no value of the instance), the copy kept before left as it was.
    """
    try:
        decode_dicom(read_dicom_header(data, max_pixels=sys.maxsize, max_bytes=max_bytes))
    except ServiceError as error:
        raise InstanceRefusedError(
            STATUS_CANNOT_UNDERSTAND,
            without_found_values(f"{error.message}; the copy received before is kept"),
        ) from error


def without_found_values(message: str) -> str:
    """A header check's message cut before the value it found (``...; got Modality XYZ``, ``...; found b'...'``).

    `InstanceRefusedError` goes to the sender's Error Comment and to the log: what follows ``got``/``found`` is the
    instance's content (a Modality, a SOP Class UID), which may be anything a sender wrote, even patient data. The
    rule before it is the service's own text.
    """
    return _FOUND_VALUE.split(message, maxsplit=1)[0]


class DiscardedDataSet(io.BytesIO):
    """Stands in for the data set of a C-STORE request past the instance limit or the receive memory: counts the bytes
    that still arrive and keeps none (`app.node.dicom_receiver.Receiver._discard_oversized`). `reason`, when set, is the
    Error Comment of the refusal (the instance limit's comes from `app.node.dicom_spool.Spool.check_room`)."""

    def __init__(self, received: int, reason: str | None = None) -> None:
        super().__init__()
        self.received = received
        self.reason = reason

    def write(self, data: Any, /) -> int:
        self.received += len(data)
        return len(data)


# A file meta holds a score of elements at most (PS3.10 7.1): a data set that starts with more is no file passed on.
MAX_FILE_META_ELEMENTS = 64


def without_file_meta_elements(data: bytes, data_set_bytes: int, transfer_syntax: str) -> tuple[bytes, bool]:
    """`data` (a Part 10 file: the presentation context's file meta, then the `data_set_bytes` received) without the
    File Meta Information elements (group 0002) its data set starts with, and whether there were any.

    Why: group 0002 is a file's, never a C-STORE data set's (PS3.10 7.1), but some older senders pass a file's
    content on as it is. Read after the context's file meta, they were taken as part of it: their Transfer Syntax UID
    replaced the context's, and the instance was refused for pixel data it does not hold. A deflated data set is
    left as it is (its elements cannot be seen without inflating it). One that starts with more group 0002 elements
    than a file meta holds is refused (`InstanceRefusedError`, 0xC000) as soon as they are counted: read to their end,
    millions of empty ones cost a minute of CPU (attack review 63 F2); so is one of undefined length (a sequence of
    a million empty items in one element cost 38 s and +1 GiB: attack review 64 F1)."""
    start = len(data) - data_set_bytes
    if not 0 <= start < len(data) or transfer_syntax == DeflatedExplicitVRLittleEndian:
        return data, False
    little_endian = transfer_syntax != ExplicitVRBigEndian
    if int.from_bytes(data[start : start + 2], "little" if little_endian else "big") != 0x0002:
        return data, False
    stream = io.BytesIO(data)
    stream.seek(start)
    seen = 0

    def end_of_group_0002(tag: Any, vr: Any, length: int) -> bool:
        nonlocal seen
        if tag.group != 2:
            return True
        seen += 1
        if seen > MAX_FILE_META_ELEMENTS:
            raise InstanceRefusedError(
                STATUS_CANNOT_UNDERSTAND,
                f"the data set starts with more than {MAX_FILE_META_ELEMENTS} file meta elements (group 0002)",
            )
        if length == UNDEFINED_LENGTH:  # pydicom would read it whole, item by item, past any count here
            raise InstanceRefusedError(
                STATUS_CANNOT_UNDERSTAND,
                "the data set starts with a file meta element (group 0002) of undefined length, which none is "
                "(PS3.10 7.1)",
            )
        return False

    try:
        read_dataset(stream, transfer_syntax == ImplicitVRLittleEndian, little_endian, stop_when=end_of_group_0002)
    except InstanceRefusedError:
        raise
    except Exception:  # noqa: BLE001 - pydicom raises many types on damaged elements: `checked_instance` refuses it
        return data, False
    return data[:start] + data[stream.tell() :], True


def received_bytes(data_set: io.BytesIO) -> int:
    """The bytes of a C-STORE request's data set, those a `DiscardedDataSet` counted and did not keep included."""
    return data_set.received if isinstance(data_set, DiscardedDataSet) else data_set.getbuffer().nbytes
