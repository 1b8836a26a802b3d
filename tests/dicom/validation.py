"""dciodvfy (Debian package dicom3tools) as a test helper: every SEG and SR the tests make must pass with no error."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from pydicom.dataset import Dataset

from tests.dicom.builders import to_bytes


def dciodvfy_errors(dataset: Dataset | bytes, expected_iod: str) -> list[str]:
    """dciodvfy's error lines for the object (skips the test when dciodvfy is not installed).

    `expected_iod` must appear in the report, so that a report on some other IOD cannot pass for a clean one.
    """
    dciodvfy = shutil.which("dciodvfy")
    if dciodvfy is None:
        pytest.skip("dciodvfy not found: install the Debian package dicom3tools (.ci/install-system-packages.sh)")
    data = dataset if isinstance(dataset, bytes) else to_bytes(dataset)
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "object.dcm"
        path.write_bytes(data)
        result = subprocess.run([dciodvfy, str(path)], capture_output=True, text=True, timeout=60, check=False)
    report = result.stdout + result.stderr
    assert expected_iod in report, f"dciodvfy did not check a {expected_iod}: {report[:500]}"
    return [line for line in report.splitlines() if line.startswith("Error")]
