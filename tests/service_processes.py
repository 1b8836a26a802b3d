"""The environment of the service processes the tests start: `python -m app.cli serve`, `dicom-node`, `pacs-sync`."""

from __future__ import annotations

import os
from pathlib import Path

RUNTIME_SITE = Path(__file__).resolve().parent / "runtime_site"


def as_runtime_install(environment: dict[str, str]) -> dict[str, str]:
    """`environment` with `tests/runtime_site` first on PYTHONPATH: the process imports none of the training and test
    extras that TensorFlow would import if installed (see its sitecustomize.py), as the runtime install has none."""
    paths = [str(RUNTIME_SITE), *filter(None, environment.get("PYTHONPATH", "").split(os.pathsep))]
    return {**environment, "PYTHONPATH": os.pathsep.join(paths)}
