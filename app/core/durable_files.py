"""Files replaced in one step: a reader never sees half a file, and a crash leaves the old file or the new one.

The DICOM node's spool, pacs-sync's bookmark, the model manifest and a training run's state all need this; it lives
in the core so that training can use it too.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable
from pathlib import Path


def write_atomically(path: Path, data: bytes) -> None:
    """Write `data` to a temporary file, flush it to disk, rename it over `path`, then flush the folder.

    The temporary name is unique and ends in `.tmp`, so concurrent writers never share one and a leftover from a
    crash never matches a glob for the real files (the spool's `*.dcm`). Raises `OSError` when the file cannot be
    written; the temporary file is removed then.
    """
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    _replace(path, temporary, lambda staged: staged.write_bytes(data))


def replace_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """`write_atomically` for writers that take a path rather than bytes (Keras's `model.save`, `save_weights`).

    The temporary file keeps `path`'s name behind a hidden `.tmp-` prefix, because Keras checks the suffix
    (`.keras`, `.weights.h5`); the name is fixed, so one writer per path at a time. Whatever `write` raises is
    raised again, after the temporary file is removed.
    """
    _replace(path, path.with_name(f".tmp-{path.name}"), write)


def _replace(path: Path, temporary: Path, write: Callable[[Path], None]) -> None:
    try:
        write(temporary)
        with open(temporary, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(directory)  # the rename itself survives a power cut only once its folder does
    finally:
        os.close(directory)
