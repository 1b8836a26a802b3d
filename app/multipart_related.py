"""``multipart/related`` bodies (RFC 2387), the way DICOMweb returns several DICOM objects in one answer.

Each part is a whole Part 10 file with its own ``Content-Type``; the body's type names the parts' type
(``multipart/related; type="application/dicom"; boundary=...``), as WADO-RS does.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence


def multipart_related(parts: Sequence[bytes], part_type: str) -> tuple[bytes, str]:
    """The body holding `parts` in order, and its Content-Type.

    The boundary is random and checked against the parts: RFC 2046 requires that it occur in none of them.
    """
    if not parts:
        raise ValueError("a multipart/related body needs at least one part; got none")
    boundary = secrets.token_hex(16)
    while any(boundary.encode("ascii") in part for part in parts):
        boundary = secrets.token_hex(16)
    delimiter = b"--" + boundary.encode("ascii")
    body = bytearray()
    for part in parts:
        body += delimiter + b"\r\nContent-Type: " + part_type.encode("ascii") + b"\r\n\r\n" + part + b"\r\n"
    body += delimiter + b"--\r\n"
    return bytes(body), f'multipart/related; type="{part_type}"; boundary={boundary}'
