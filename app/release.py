"""Which release of the service this is: pyproject.toml's `version` is the one source, bumped for every release and
described in CHANGELOG.md.

It is written into every SEG and SR (Software Versions) and mixed into their UIDs (`app.dicom.result_uids`), and shown
by `GET /v1/models`, `/metrics` (`brain_tumor_build_info`), the OpenAPI document and `brain-tumor --version`, so that
an operator can tell which release answered.
"""

from __future__ import annotations

from functools import cache
from importlib import metadata

PACKAGE = "brain-tumor-service"
"""The distribution's name (pyproject.toml), also the Manufacturer of the SEGs and SRs made."""


@cache  # read from the installed package's metadata once: every SEG and SR asks
def service_version() -> str:
    """The installed release, e.g. "1.1.0"; "unknown" for a source tree that was never installed."""
    try:
        return metadata.version(PACKAGE)
    except metadata.PackageNotFoundError:
        return "unknown"
