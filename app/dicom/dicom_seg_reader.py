"""Reading a DICOM SEG back into masks: what tests, and clients checking our output, compare with the predictions."""

from __future__ import annotations

import io
from collections.abc import Sequence

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset

from app.dicom.dicom_seg import SEGMENT_NUMBER


def read_segmentation_masks(segmentation: Dataset | bytes) -> dict[str, np.ndarray]:
    """Decode a binary SEG into masks per referenced source instance.

    Parameters
    ----------
    segmentation
        The SEG as a dataset or as Part 10 bytes.

    Returns
    -------
    dict
        Referenced SOP Instance UID -> uint8 0/1 array (frames, rows, columns): one frame for a single-frame source,
        the referenced frames in frame-number order for a multi-frame one.
    """
    if isinstance(segmentation, bytes | bytearray):
        seg = hd.seg.segread(io.BytesIO(segmentation))
    else:
        seg = hd.seg.Segmentation.from_dataset(segmentation, copy=True)
    referenced: dict[str, set[int]] = {}
    for frame_group in seg.PerFrameFunctionalGroupsSequence:
        for derivation in frame_group.get("DerivationImageSequence", []):
            for source in derivation.get("SourceImageSequence", []):
                frames = referenced.setdefault(str(source.ReferencedSOPInstanceUID), set())
                if "ReferencedFrameNumber" in source:
                    value = source.ReferencedFrameNumber
                    frames.update(int(number) for number in (value if isinstance(value, Sequence) else [value]))
    masks = {}
    for sop_instance_uid, frame_numbers in referenced.items():
        if frame_numbers:
            pixels = seg.get_pixels_by_source_frame(
                sop_instance_uid, source_frame_numbers=sorted(frame_numbers), segment_numbers=[SEGMENT_NUMBER]
            )
        else:
            pixels = seg.get_pixels_by_source_instance([sop_instance_uid], segment_numbers=[SEGMENT_NUMBER])
        masks[sop_instance_uid] = (np.asarray(pixels)[..., 0] > 0).astype(np.uint8)
    return masks
