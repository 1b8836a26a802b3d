"""Fixtures of the DICOM tests: a real Orthanc on loopback and the tiny models (one of each per test module). The
pacs-sync tests share them (`tests/pacs/conftest.py`). The DICOM node's fixtures (`make_node` and what it uses) are
in `tests/node/conftest.py`, imported here for the DICOM tests that send to a node."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.node.conftest import clock, make_node, results  # noqa: F401 (fixtures)
from tests.pacs.orthanc_server import Orthanc, running_orthanc


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    with running_orthanc(tmp_path_factory.mktemp("orthanc")) as server:
        yield server
