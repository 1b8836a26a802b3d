"""The wait before a retry, doubling each time: one rule for everything that retries (the DICOM node's sends,
pacs-sync's studies, its calls to Orthanc), so none backs off in a way of its own."""

from __future__ import annotations


def doubling_wait(first_seconds: float, doublings: int, most_seconds: float | None = None) -> float:
    """`first_seconds` doubled `doublings` times (0: the first wait), at most `most_seconds` when given."""
    wait = first_seconds * 2**doublings
    return wait if most_seconds is None else min(most_seconds, wait)
