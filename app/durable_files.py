"""Files that survive a crash or a power cut whole: the DICOM node's spool and pacs-sync's bookmark both need them."""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path


def write_atomically(path: Path, data: bytes) -> None:
    """Write to a temporary file, flush it to disk, rename it into place, then flush the directory.

    A reader never sees half a file, and a crash leaves the old file or the new one. Raises `OSError` when the
    file cannot be written; the temporary file is removed then.
    """
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(temporary, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except OSError:
        with contextlib.suppress(OSError):
            temporary.unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(directory)  # the rename itself survives a power cut only once its directory does
    finally:
        os.close(directory)
