"""Fixtures of the pacs-sync tests: the real Orthanc and the tiny models, shared with the DICOM tests."""

from tests.dicom.conftest import orthanc  # noqa: F401 (fixtures)
