"""The service processes the tests start (`python -m app.cli serve`, `dicom-node`, `pacs-sync`): their environment,
and the probe that tells when a service is ready."""

from __future__ import annotations

import os
from pathlib import Path

import httpx

RUNTIME_SITE = Path(__file__).resolve().parent / "runtime_site"

# One client for every readiness poll. `httpx.get` makes a client per call, and with it a TLS context that loads the
# CA bundle: 48 ms of CPU a call here, so a poll every 50 ms while a server started took a whole core from the
# server's own start (about 150 s of CPU over the suite). It keeps no connection open, so a probe never counts
# against a server's connection limits.
READINESS_PROBE = httpx.Client(limits=httpx.Limits(max_keepalive_connections=0))


def answers_ready(base_url: str, timeout_seconds: float = 5.0) -> bool:
    """Whether the service at `base_url` answers 200 on `/health/ready` now."""
    try:
        return READINESS_PROBE.get(f"{base_url}/health/ready", timeout=timeout_seconds).status_code == 200
    except httpx.TransportError:
        return False


def as_runtime_install(environment: dict[str, str]) -> dict[str, str]:
    """`environment` with `tests/runtime_site` first on PYTHONPATH: the process imports none of the training and test
    extras that TensorFlow would import if installed (see its sitecustomize.py), as the runtime install has none."""
    paths = [str(RUNTIME_SITE), *filter(None, environment.get("PYTHONPATH", "").split(os.pathsep))]
    return {**environment, "PYTHONPATH": os.pathsep.join(paths)}
