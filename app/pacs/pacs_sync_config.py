"""Where the PACS is and how pacs-sync talks to it (`PacsSyncConfig`): addresses, retries, limits and pacing, checked
when the configuration is made so a bad value fails at start-up, not in the sync loop."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from app.dicom.dicom_header import DEFAULT_MAX_DICOM_PIXELS
from app.pacs.orthanc_http import origin
from app.series.sequence_rules import SelectionRules
from app.settings import DAY_SECONDS, MIB, Settings, http_url_problem, without_credentials

DICOMWEB_ROOT = "dicom-web"
DEFAULT_MAX_ANSWER_BYTES = 20 * MIB  # Orthanc's JSON answers; instance files have their own limit
DEFAULT_MAX_INSTANCE_BYTES: int = Settings.model_fields["pacs_max_instance_bytes"].default
DEFAULT_MAX_STUDY_BYTES: int = Settings.model_fields["decode_memory_bytes"].default


@dataclass(frozen=True)
class PacsSyncConfig:
    """Where the PACS is and how to talk to it.

    Attributes
    ----------
    orthanc_url
        Orthanc's base URL (REST API root), e.g. ``http://127.0.0.1:8042``; DICOMweb is under ``/dicom-web``.
    username, password
        HTTP basic authentication; None for an Orthanc without authentication.
    state_file
        Where the number of the last Orthanc change handled and the studies waiting for a retry are kept (JSON), so a
        restart resumes there; None keeps them in memory only (a restart then reads the changes from the start, and
        the records in Orthanc keep it from redoing work).
    poll_seconds
        Pause between passes when not running once.
    max_attempts, retry_seconds
        A study that fails is tried again up to `max_attempts` times in all, `retry_seconds` x 2^(attempt-1) after
        each failure; then it is only watched (its instances re-checked every `retry_seconds` x 2^(max_attempts-1))
        and processed again once they change.
    max_dicom_pixels
        Largest rows x columns x frames accepted per instance (MAX_DICOM_PIXELS, as for DICOM uploads).
    retries, backoff_seconds
        Retries after the first try of each HTTP call, waiting backoff x 2^attempt seconds in between.
    timeout_seconds
        Per read of an HTTP call (connecting, each wait for bytes).
    answer_seconds
        The most one HTTP call may take, from sending the request to the answer's last byte.
    max_instance_bytes
        Largest instance file read from Orthanc (PACS_MAX_INSTANCE_BYTES, 128 MiB by default, as the DICOM node's:
        a 3D FLAIR stored as one Enhanced MR object is often past 20 MiB); a longer one is cut off, never held whole.
    max_answer_bytes
        Largest other answer (JSON) read from Orthanc, cut off likewise.
    max_study_bytes
        Most bytes of instance files fetched for one study, and the prediction flow's memory budget for decoding them
        (default `DECODE_MEMORY_BYTES`' default: an uncompressed file costs more to decode than its size, so a study
        past it could not pass that budget).
    batch_size
        Slices per model call, to bound memory on long series.
    require_stable
        Process a study only on Orthanc's ``StableSeries`` changes (no new instance for its StableAge), so a SEG never
        covers half a series, and only once Orthanc calls the whole study stable, so a study sent whole is not
        analysed on its FLAIR before its T1 series arrive; without it, also on each ``NewInstance``.
    stable_seconds
        With `require_stable`, how old by Orthanc's clock (``/tools/now``) a study's last instance (``LastUpdate``)
        must be as well (PACS_STABLE_SECONDS; 0: ``IsStable`` alone). Orthanc keeps which studies are still receiving
        in memory only: right after its restart it calls one that was stable, and pacs-sync analysed half a study.
    selection_rules
        Which series are FLAIR and T1 (`app.series.sequence_roles`).
    """

    orthanc_url: str
    username: str | None = None
    password: str | None = None
    state_file: Path | None = None
    poll_seconds: float = Settings.model_fields["pacs_poll_seconds"].default
    max_attempts: int = Settings.model_fields["pacs_max_attempts"].default
    retry_seconds: float = Settings.model_fields["pacs_retry_seconds"].default
    max_dicom_pixels: int = DEFAULT_MAX_DICOM_PIXELS
    retries: int = 4
    backoff_seconds: float = 0.5
    timeout_seconds: float = 30.0
    answer_seconds: float = 120.0
    max_instance_bytes: int = DEFAULT_MAX_INSTANCE_BYTES
    max_answer_bytes: int = DEFAULT_MAX_ANSWER_BYTES
    max_study_bytes: int = DEFAULT_MAX_STUDY_BYTES
    batch_size: int = Settings.model_fields["inference_batch_size"].default
    require_stable: bool = True
    stable_seconds: float = Settings.model_fields["pacs_stable_seconds"].default
    selection_rules: SelectionRules = field(default_factory=SelectionRules)

    def __post_init__(self) -> None:
        url_problem = http_url_problem(self.orthanc_url)
        if url_problem:
            raise ValueError(f"orthanc_url {url_problem}; got {without_credentials(self.orthanc_url)!r}")
        if self.retries < 0 or self.backoff_seconds < 0 or self.timeout_seconds <= 0 or self.batch_size < 1:
            raise ValueError(
                "retries and backoff_seconds must be >= 0, timeout_seconds > 0 and batch_size >= 1; got "
                f"{self.retries}, {self.backoff_seconds}, {self.timeout_seconds}, {self.batch_size}"
            )
        if not 0 < self.answer_seconds < math.inf or min(self.max_instance_bytes, self.max_answer_bytes) < 1:
            raise ValueError(
                "answer_seconds must be a positive number of seconds and max_instance_bytes, max_answer_bytes >= 1; "
                f"got {self.answer_seconds}, {self.max_instance_bytes}, {self.max_answer_bytes}"
            )
        if self.max_study_bytes < 1:
            raise ValueError(f"max_study_bytes must be >= 1; got {self.max_study_bytes}")
        # time.sleep refuses a negative, NaN or infinite pause, and overflows long before 1e300 (PACS_POLL_SECONDS).
        if not 0 < self.poll_seconds <= DAY_SECONDS:
            raise ValueError(
                f"poll_seconds must be a positive number of seconds, at most a day ({DAY_SECONDS:g}); "
                f"got {self.poll_seconds}"
            )
        if not 0 <= self.stable_seconds <= DAY_SECONDS:
            raise ValueError(f"stable_seconds must be 0 to a day ({DAY_SECONDS:g}); got {self.stable_seconds}")
        if self.max_attempts < 1 or self.retry_seconds < 0:
            raise ValueError(
                f"max_attempts must be >= 1 and retry_seconds >= 0; got {self.max_attempts}, {self.retry_seconds}"
            )

    @property
    def base_url(self) -> str:
        return self.orthanc_url.rstrip("/")

    @property
    def server(self) -> str:
        """Scheme, host and port of Orthanc, for messages: never the user information a URL may carry."""
        return origin(self.orthanc_url)

    @property
    def dicomweb_url(self) -> str:
        return f"{self.base_url}/{DICOMWEB_ROOT}"
