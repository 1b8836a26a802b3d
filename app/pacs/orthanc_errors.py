"""What an Orthanc call raises: `OrthancError`, and the kinds of it pacs-sync tells apart (an answer not of the
expected shape, one too large, a redirect to another server); `AnswerTooSlowError` is a `requests.Timeout`, so it is
retried as one."""

from __future__ import annotations

import requests


class OrthancError(RuntimeError):
    """An Orthanc call failed: a non-retryable answer, or a retryable one that outlived every retry.

    `status` is the HTTP status Orthanc answered, if it answered (401 and 403: the credentials were refused);
    `orthanc_status` the error code Orthanc's own error body names (``"OrthancStatus"``), if it has one.
    """

    def __init__(self, message: str, status: int | None = None, orthanc_status: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.orthanc_status = orthanc_status


class OrthancAnswerError(OrthancError):
    """Orthanc, or a proxy in front of it, answered with a body that is not the JSON the call expects.

    The message names the call and what was wrong with the body, never the body: it may hold patient data.
    """


class StoreRefusedError(OrthancError):
    """A STOW-RS answer of 2xx that lists the instance in its Failed SOP Sequence (an Orthanc filter, a full disk):
    not stored. The message names the Failure Reason codes, never the instance's values."""


class AnswerTooLargeError(OrthancError):
    """An answer longer than its limit (`PacsSyncConfig.max_instance_bytes` or `max_answer_bytes`): cut off before
    it is held whole, and not retried (the same call would answer the same)."""


class AnswerTooSlowError(requests.Timeout):
    """An answer whose body did not end within `PacsSyncConfig.answer_seconds` (a server that trickles bytes beats
    any per-read timeout); retried as a timeout."""


class ForeignRedirectError(OrthancError):
    """Orthanc's address redirected to another server: not followed, since requests would send it the request's
    body (a SEG with patient data on a 307) and the answer would be trusted as Orthanc's."""
