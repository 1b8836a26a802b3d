"""The model input of one client slice, whatever file it came in (raster upload or DICOM frame).

One definition of "the client's slice" (`app.dicom.dicom_series` and `app.uploads` both use it). Its own module because
`app.dicom` may not import the request flow (`app.uploads`).
"""

from __future__ import annotations

import numpy as np

from app.core.preprocessing import InvalidImageError, preprocess_slice
from app.errors import InvalidSliceError


def model_input(image: np.ndarray) -> np.ndarray:
    """`preprocess_slice`, with an image it refuses reported as the client's `InvalidSliceError`."""
    try:
        return preprocess_slice(image)
    except InvalidImageError as error:
        raise InvalidSliceError(str(error)) from error
