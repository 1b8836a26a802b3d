"""Service configuration: the one place that reads environment variables.

Every field is read from the environment variable of the same name in upper case (MODEL_DIR, HOST, PORT, ...;
INFERENCE_RUNTIME also from BACKEND); anything else in the environment is ignored, unless it nearly spells a
setting's name (`misspelt_variables`): a typo is refused rather than left to the default. The README's configuration
table lists them all. `get_settings` turns a value that breaks a rule into one `SettingsError` naming each variable,
so the commands can report it in one line.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from app.series.sequence_rules import (
    DEFAULT_FLAIR_PATTERNS,
    DEFAULT_LOCALIZER_PATTERNS,
    DEFAULT_OTHER_PATTERNS,
    DEFAULT_POST_CONTRAST_PATTERNS,
    DEFAULT_T1_PATTERNS,
    SelectionRules,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL_DIR = REPO_ROOT / "models"
MIB = 1 << 20
# The longest wait or timeout a setting may ask for: time.sleep and socket timeouts fail far beyond it (at 1e300 s,
# "timestamp out of range for platform time_t", once the models had loaded), and a wait of over a day is a slip.
DAY_SECONDS = 24 * 3600.0

# How alike (difflib's ratio) a variable's name must be to a setting's of the same first word to be taken for a
# misspelling of it: one letter more, less or swapped in a name of 10 or more.
MISSPELLING_CUTOFF = 0.9
# A host name (letters, digits, hyphens, dots) or an IPv4 / IPv6 address: what ALLOWED_HOSTS may list.
HOST_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?\.?|[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*")
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
# Never echoed in an error message: their values are credentials.
SECRET_SETTINGS = frozenset({"api_keys", "orthanc_password"})
SHOWN_VALUE_CHARACTERS = 80
AE_TITLE_RULE = "an AE title is 1 to 16 printable ASCII characters, not all spaces, without a backslash"
HTTP_URL_RULE = "must start with http:// or https://"
# Settings whose value is a URL that may carry user:password: shown without them (`without_credentials`).
URL_SETTINGS = frozenset({"orthanc_url"})
# FLAIR's inversion time must stay above the range that marks an inversion-recovery series as T1.
T1_MAX_INVERSION_MS = SelectionRules.t1_inversion_ms[1]


UPLOAD_FORM_BYTES = 64 * 1024
"""What a one-file upload's multipart form may add around the file: boundaries and part headers."""


class SettingsError(ValueError):
    """The environment holds a setting that cannot be used; the message names each variable, the rule and the value
    (never the value of a secret)."""


class Settings(BaseSettings):
    """Validated settings of the HTTP service and the CLI."""

    # allow_inf_nan=False: PACS_POLL_SECONDS=inf would crash time.sleep, and nan passes no comparison.
    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore", frozen=True, allow_inf_nan=False)

    model_dir: Path = Field(
        default=DEFAULT_MODEL_DIR,
        description="folder with manifest.json and the exported models (default: the repository's models/)",
    )
    host: str = Field(
        default="127.0.0.1",
        description="address to listen on: an IP address, or a name (its IPv4 address); 0.0.0.0 in the container",
    )
    port: int = Field(default=8000, ge=1, le=65535, description="port to listen on")
    log_level: LogLevel = Field(default="INFO", description="level of the JSON debug log on standard error")
    max_upload_bytes: int = Field(default=20 * MIB, gt=0, description="largest accepted file, in bytes")
    max_image_pixels: int = Field(
        default=4096 * 4096, gt=0, description="largest accepted image (width x height), checked before decoding"
    )
    max_batch_files: int = Field(
        default=256,
        gt=0,
        description="most files in one /v1/predict/batch request (a 176-slice 3D FLAIR series, or three series of 64 "
        "slices, in one request)",
    )
    max_batch_upload_bytes: int = Field(
        default=128 * MIB, gt=0, description="largest /v1/predict/batch request body, in bytes"
    )
    max_uploads_held_bytes: int = Field(
        # 512 MiB: four batches of MAX_BATCH_UPLOAD_BYTES at once; the process holds about 1.3 times the bytes
        default=512 * MIB,
        gt=0,
        description="most request-body bytes all requests in flight hold together (each is held until its answer); "
        "a request that would pass it is answered 503 overloaded with Retry-After, before or while its body arrives; "
        "at least the largest request body, MAX_BATCH_UPLOAD_BYTES or MAX_UPLOAD_BYTES and 64 KiB (checked when serve "
        "starts)",
    )

    inference_runtime: Literal["keras", "onnxruntime"] = Field(
        default="keras",
        # BACKEND: the name the performance issue gave this setting; INFERENCE_RUNTIME wins if both are set.
        validation_alias=AliasChoices("inference_runtime", "backend"),
        description="keras runs the models on the Keras backend (TensorFlow, or JAX with KERAS_BACKEND=jax); "
        "onnxruntime runs the ONNX files that python -m training.export_onnx listed in the manifest with ONNX Runtime "
        "(faster on CPU, never loads TensorFlow; without those files the models are converted at every start, "
        'which needs the train extra, and TensorFlow stays in memory; needs pip install -e ".[onnx]"); also read '
        "from BACKEND",
    )
    inference_batch_size: int = Field(
        default=16,
        gt=0,
        description="most slices run through each model at once: the micro-batcher's batches, the DICOM node's and "
        "pacs-sync's",
    )
    inference_batch_wait_ms: float = Field(
        default=0.0,
        ge=0.0,
        le=DAY_SECONDS * 1000,
        description="how long the micro-batcher waits for more requests before running a batch; 0 batches only what "
        "queued up while the previous batch ran, so a lone request never waits (at most a day)",
    )
    inference_queue_slices: int = Field(
        default=256, gt=0, description="most slices waiting for inference; more are refused with 503 and Retry-After"
    )

    # 512 MiB: a 176-slice 512x512 3D FLAIR (491.25 MiB with its masks, README) fits, and the 4 GiB of a Compose
    # container hold it beside the models and the DICOM node's associations.
    decode_memory_bytes: int = Field(
        default=512 * MIB,
        ge=16 * MIB,
        description="memory budget for decoding uploads, in bytes: the cost of each file is computed from its "
        "header (decoded pixels and their working copies, a 256x256x3 float32 model input per slice, each slice's "
        "mask); a file or a "
        "request costing more is refused with 413 before decoding, and requests decode (and wait for the models) "
        "only while the costs of all of them together fit in it, the others wait their turn",
    )
    max_dicom_pixels: int = Field(
        default=64 * 1024 * 1024,
        gt=0,
        description="largest accepted DICOM file in pixels (rows x columns x frames), checked before decoding",
    )
    orthanc_url: str = Field(
        default="http://127.0.0.1:8042", description="Orthanc (PACS) base URL for pacs-sync (http:// or https://)"
    )
    orthanc_username: str | None = Field(default=None, description="Orthanc HTTP basic-auth user")
    orthanc_password: SecretStr | None = Field(default=None, description="Orthanc HTTP basic-auth password")
    pacs_poll_seconds: float = Field(
        default=30.0, gt=0, le=DAY_SECONDS, description="pacs-sync: pause between passes (at most a day)"
    )
    pacs_stable_seconds: float = Field(
        default=0.0,
        ge=0,
        le=DAY_SECONDS,
        description="pacs-sync: a study is analysed only once its last instance is this old by Orthanc's clock, as "
        "well as stable by Orthanc (0: Orthanc's word alone); set it to Orthanc's StableAge: Orthanc forgets at a "
        "restart which studies were still receiving",
    )
    pacs_state_file: Path | None = Field(
        default=Path("pacs-sync-state.json"),
        description="pacs-sync: where the last Orthanc change handled is kept, so a restart resumes there (empty: in "
        "memory only; the change log is then read from the start, and the records in Orthanc keep work from being "
        "redone)",
    )
    pacs_max_instance_bytes: int = Field(
        default=128 * MIB,
        gt=0,
        description="pacs-sync: largest instance file fetched from Orthanc; a series whose first file is larger is "
        "left out (a study left without FLAIR is recorded failed, naming this limit)",
    )
    pacs_max_attempts: int = Field(
        default=5, ge=1, description="pacs-sync: tries of a study that fails, before it is only watched for changes"
    )
    pacs_retry_seconds: float = Field(
        default=60.0,
        ge=0,
        le=DAY_SECONDS,
        description="pacs-sync: wait before the first retry of a failed study; doubles each time (at most a day)",
    )
    pacs_sync_metrics_port: int = Field(
        default=0,
        ge=0,
        le=65535,
        description="pacs-sync: port of its Prometheus metrics at http://METRICS_HOST:port/metrics (0 = off)",
    )
    metrics_host: str = Field(
        default="127.0.0.1",
        description="address the Prometheus metrics of dicom-node and pacs-sync listen on (0.0.0.0 in a container)",
    )
    heartbeat_file: Path | None = Field(
        default=None,
        description="dicom-node and pacs-sync: a JSON file they rewrite every 10 s while they run with their models "
        "loaded, which `brain-tumor health` (the image's HEALTHCHECK) reads (empty: none; the image sets "
        "/tmp/brain-tumor-heartbeat.json)",
    )
    request_timeout_seconds: float = Field(
        default=60.0,
        gt=0,
        le=DAY_SECONDS,
        description="longest a request waits for the models before a 503 inference_timeout (at most a day)",
    )
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="comma-separated id:key pairs; with any key set (here or in API_KEYS_FILE) every endpoint but "
        "/health/* and the web page's files needs a valid X-API-Key header; a key with spaces at its ends or a "
        "non-printable character (which no header can carry) stops the service at start",
    )
    api_keys_file: Path | None = Field(
        default=None, description="file of id:sha256hex lines (brain-tumor hash-key prints the hash of a key)"
    )
    rate_limit_per_minute: int = Field(
        default=0,
        ge=0,
        description="requests a minute per API key (per client address without keys, and for requests refused for "
        "a missing or wrong key); 0 = off",
    )
    rate_limit_burst: int | None = Field(
        default=None, gt=0, description="requests allowed at once before the rate applies (default: the rate)"
    )
    audit_log_file: Path | None = Field(
        default=None, description="where the audit log's JSON lines go (default: standard output)"
    )
    auth_failures_per_minute: int = Field(
        default=30,
        gt=0,
        description="wrong API keys a minute per client address (a request without a key is not counted); past it "
        "every request from that address gets 429 until the rate allows again, a right key included (so guessing "
        "gains nothing)",
    )
    trusted_proxies: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="comma-separated addresses or networks (10.0.0.5, 172.16.0.0/12) whose X-Forwarded-For is "
        "believed; from any other peer the header is ignored (default: none)",
    )

    allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="comma-separated host names the API answers to in the Host header (localhost, 127.0.0.1; no port, "
        "scheme or wildcard); other names get 403, which stops DNS rebinding; health probes and the page are exempt, "
        "and GET /metrics when API keys are set (it needs one then) (default: any name)",
    )

    max_header_bytes: int = Field(
        default=32 * 1024,
        ge=1024,
        description="largest request line plus headers, in bytes; more is refused with 431 before it is parsed",
    )
    max_header_count: int = Field(default=100, gt=0, description="most request headers; more are refused with 431")
    header_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        le=DAY_SECONDS,
        description="longest a client may take to send a request's line and headers, from its first byte (or from "
        "connecting); then the connection is closed (408) (at most a day)",
    )
    body_timeout_seconds: float = Field(
        default=30.0,
        gt=0,
        le=DAY_SECONDS,
        description="longest a client may pause while sending a request body (then the request ends with 408), or "
        "take none of an answer the server holds for it (then the connection is cut off); at most a day",
    )
    min_answer_bytes_per_second: int = Field(
        default=32 * 1024,
        ge=0,
        description="slowest a client may take an answer the server holds for it, measured over each "
        "BODY_TIMEOUT_SECONDS (slower, the connection is cut off: an answer is held in memory until taken); 0 cuts "
        "off only a client that takes none",
    )
    min_upload_bytes_per_second: int = Field(
        default=32 * 1024,
        ge=0,
        description="slowest a client may send a request body, measured over each BODY_TIMEOUT_SECONDS (all that is "
        "left of the body, if less; time the server leaves the body unread does not count): slower, the request ends "
        "with 408 and the connection is closed, as a body held open would hold its share of MAX_UPLOADS_HELD_BYTES; 0 "
        "ends only a body that pauses past BODY_TIMEOUT_SECONDS",
    )
    keep_alive_timeout_seconds: float = Field(
        default=5.0,
        gt=0,
        le=DAY_SECONDS,
        description="how long an idle keep-alive connection stays open between requests (at most a day)",
    )
    max_connections: int = Field(
        default=512,
        gt=0,
        description="most open connections; more are answered 503 and closed at once",
    )
    max_connections_per_client: int = Field(
        default=64,
        gt=0,
        description="most open connections from one client address (a peer in TRUSTED_PROXIES is not held to it); "
        "more are answered 503 and closed at once, so that one client cannot take every connection",
    )
    shutdown_timeout_seconds: float = Field(
        default=30.0,
        gt=0,
        le=DAY_SECONDS,
        description="on SIGTERM, longest wait for requests in flight before they are cancelled (at most a day)",
    )
    shutdown_idle_upload_seconds: float = Field(
        default=2.0,
        gt=0,
        le=DAY_SECONDS,
        description="on SIGTERM, an upload that sends nothing for this long is dropped (408) instead of holding the "
        "shutdown (at most a day)",
    )

    # Sequence selection (app.series.sequence_roles): which series of a study is FLAIR, which T1 pre/post contrast.
    sequence_flair_patterns: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_FLAIR_PATTERNS),
        description="comma-separated wildcards on Series Description / Protocol Name that name a FLAIR series",
    )
    sequence_t1_patterns: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_T1_PATTERNS),
        description="comma-separated wildcards that name a T1 series (checked first: T1 FLAIR is T1)",
    )
    sequence_post_contrast_patterns: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_POST_CONTRAST_PATTERNS),
        description="comma-separated wildcards that name a post-contrast series (besides Contrast/Bolus attributes)",
    )
    sequence_flair_min_inversion_ms: float = Field(
        default=1500.0,
        ge=T1_MAX_INVERSION_MS,
        description="Inversion Time (ms) at or above which an inversion-recovery series is FLAIR (at least "
        f"{T1_MAX_INVERSION_MS:g}, the top of the T1 inversion range)",
    )
    sequence_localizer_patterns: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_LOCALIZER_PATTERNS),
        description="comma-separated wildcards that name a localizer (planning scan): never analysed, not even "
        "alone (checked first; Image Type LOCALIZER says so too)",
    )
    sequence_other_patterns: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_OTHER_PATTERNS),
        description="comma-separated wildcards that name another contrast (T2*, SWI, diffusion, angiography): neither "
        "FLAIR nor T1 (checked after the FLAIR and T1 wildcards; [*] is a literal asterisk)",
    )

    # The DICOM node (brain-tumor dicom-node, app.node.dicom_node): C-STORE in, SEG and SR out by C-STORE.
    dicom_node_ae_title: str = Field(
        default="BRAINTUMOR", min_length=1, max_length=16, description="AE title the node answers to"
    )
    dicom_node_host: str = Field(
        default="127.0.0.1", description="address the node listens on (0.0.0.0 in a container)"
    )
    dicom_node_port: int = Field(default=11112, ge=1, le=65535, description="DICOM port the node listens on")
    dicom_node_spool_dir: Path = Field(
        default=Path("dicom-node-spool"),
        description="where received instances, results and the record of what was sent are kept (survives restarts)",
    )
    dicom_node_quiet_seconds: float = Field(
        default=30.0,
        gt=0,
        le=DAY_SECONDS,
        description="a study is processed once no instance of it arrived for this long (at most a day)",
    )
    dicom_node_allowed_calling_ae_titles: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="comma-separated calling AE titles allowed to associate; empty = any (a warning is logged)",
    )
    dicom_node_destinations: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="comma-separated AE@host:port the results (SEG, SR) are sent to by C-STORE "
        "(e.g. PACS@10.0.0.5:104, PACS@[2001:db8::5]:104)",
    )
    dicom_node_send_retries: int = Field(default=4, ge=0, description="retries of a failed C-STORE of a result")
    dicom_node_send_backoff_seconds: float = Field(
        default=2.0,
        ge=0,
        le=DAY_SECONDS,
        description="wait before the first retry of a result, doubled for each further one (at most a day)",
    )
    dicom_node_send_timeout_seconds: float = Field(
        default=30.0,
        gt=0,
        le=DAY_SECONDS,
        description="a destination silent this long (connecting, associating, storing) has failed (at most a day)",
    )
    dicom_node_max_associations: int = Field(
        default=32, ge=1, description="associations the node serves at once; more are refused (Local Limit Exceeded)"
    )
    dicom_node_max_associations_per_peer: int = Field(
        default=8,
        ge=1,
        description="associations one sender address may hold at once; more are refused (Local Limit Exceeded)",
    )
    dicom_node_association_timeout_seconds: float = Field(
        default=30.0,
        gt=0,
        le=DAY_SECONDS,
        description="a connection silent this long (no association request, half a message, idle) is closed (at most "
        "a day)",
    )
    dicom_node_max_instance_bytes: int = Field(
        default=128 * MIB, gt=0, description="largest instance the node keeps; larger are refused (Out of Resources)"
    )
    dicom_node_max_spool_bytes: int = Field(
        default=20 * 1024 * MIB,
        gt=0,
        description="most the spool may take on disk (whole blocks); instances beyond are refused",
    )
    dicom_node_min_free_bytes: int = Field(
        default=1024 * MIB, ge=0, description="disk space the spool leaves free; instances that would not are refused"
    )
    dicom_node_max_pending_studies: int = Field(
        default=1000,
        ge=1,
        description="studies waiting for analysis at most, three quarters of them from one sender address; an "
        "instance of a further study is refused (Out of Resources), one of a study already waiting is kept",
    )
    dicom_node_max_study_instances: int = Field(
        default=10_000,
        ge=1,
        description="instances one study may hold; a further one is refused (Out of Resources): choosing a study's "
        "series reads every header into memory (about 256 MiB and 8 s for 10,000)",
    )
    dicom_node_receive_memory_bytes: int = Field(
        default=1024 * MIB,
        gt=0,
        description="memory all associations together may hold in instances being received; an instance that "
        "would pass it is refused (Out of Resources); at least DICOM_NODE_MAX_INSTANCE_BYTES (checked when "
        "dicom-node starts)",
    )
    dicom_node_retention_hours: float = Field(
        default=168.0,
        gt=0,
        description="instances, results and incoming rejection notes of a study whose results were all delivered are "
        "removed this long after",
    )
    dicom_node_record_retention_days: float = Field(
        default=365.0,
        gt=0,
        description="the record of such a study (which recognises the same instances sent again) is removed this "
        "long after its last run or delivery, and never before its instances",
    )
    dicom_node_metrics_port: int = Field(
        default=0,
        ge=0,
        le=65535,
        description="port of the node's Prometheus metrics at http://METRICS_HOST:port/metrics (0 = off)",
    )

    @field_validator(
        "api_keys",
        "trusted_proxies",
        "allowed_hosts",
        "sequence_flair_patterns",
        "sequence_t1_patterns",
        "sequence_post_contrast_patterns",
        "sequence_localizer_patterns",
        "sequence_other_patterns",
        "dicom_node_allowed_calling_ae_titles",
        "dicom_node_destinations",
        mode="before",
    )
    @classmethod
    def _split_comma_separated(cls, value: object) -> object:
        """An environment variable holds a list as `a, b, c` (`NoDecode` keeps pydantic-settings from wanting JSON);
        blank items are dropped, so a trailing comma is harmless."""
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("trusted_proxies", mode="after")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for item in value:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError as error:
                raise ValueError(f"{item!r} is not an IP address or network") from error
        return value

    @field_validator("allowed_hosts", mode="after")
    @classmethod
    def _host_names(cls, value: list[str]) -> list[str]:
        """Host names or IP addresses as the Host header carries them, without port: "*" (any host, elsewhere),
        "*.example.org", "https://host" or "host:8000" were taken literally, and every API call answered 403 while the
        health checks stayed green (operations review)."""
        for item in value:
            if not HOST_NAME.fullmatch(item.strip("[]")):
                raise ValueError(
                    f"{item!r} is not a host name or IP address (no port, scheme or wildcard; unset it for any host)"
                )
        return value

    @field_validator("pacs_state_file", "api_keys_file", "audit_log_file", "heartbeat_file", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("model_dir", "host", "dicom_node_host", "dicom_node_spool_dir", "metrics_host", mode="before")
    @classmethod
    def _not_empty(cls, value: object) -> object:
        # An empty HOST would listen on every interface, an empty MODEL_DIR or spool folder be the working directory.
        if isinstance(value, str) and not value.strip():
            raise ValueError("must not be empty; unset it for the default")
        return value

    @field_validator("dicom_node_ae_title", mode="after")
    @classmethod
    def _ae_title(cls, value: str) -> str:
        if not is_ae_title(value):
            raise ValueError(AE_TITLE_RULE)
        return value

    @field_validator("dicom_node_allowed_calling_ae_titles", mode="after")
    @classmethod
    def _ae_titles(cls, value: list[str]) -> list[str]:
        # Checked here, not when the node starts: pynetdicom's refusal names its own `require_calling_aet`.
        for item in value:
            if not is_ae_title(item):
                raise ValueError(f"{AE_TITLE_RULE}; got {item!r}")
        return value

    @field_validator("dicom_node_destinations", mode="after")
    @classmethod
    def _destinations(cls, value: list[str]) -> list[str]:
        if not value:  # the settings validate their defaults too: none given, nothing to import
            return value
        from app.node.dicom_sender import Destination  # pydicom and pynetdicom: 1.5 s, only when destinations are set

        for item in value:
            Destination.parse(item)
        return value

    @field_validator("orthanc_url", mode="after")
    @classmethod
    def _http_url(cls, value: str) -> str:
        problem = http_url_problem(value)
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("sequence_flair_patterns", mode="after")
    @classmethod
    def _some_pattern(cls, value: list[str]) -> list[str]:
        if not value:  # SelectionRules refuses it too, but only once a command runs (predict: with a traceback)
            raise ValueError("must hold at least one wildcard; unset it for the default")
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_case_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("model_dir", mode="after")
    @classmethod
    def _absolute_model_dir(cls, value: Path) -> Path:
        # Relative paths from the environment are taken from the working directory, once, here.
        try:
            return value.expanduser().resolve()
        except RuntimeError as error:  # ~user of no user, or a symlink loop
            raise ValueError(f"cannot resolve the path: {error}") from error

    # Derived values: computed here once, not at each place that needs them.

    @property
    def upload_body_limit_bytes(self) -> int:
        """The largest request body a one-file route reads: MAX_UPLOAD_BYTES and 64 KiB for the multipart form
        around the file (its boundaries and part headers)."""
        return self.max_upload_bytes + UPLOAD_FORM_BYTES

    @property
    def batch_wait_seconds(self) -> float:
        """INFERENCE_BATCH_WAIT_MS in the seconds the micro-batcher takes."""
        return self.inference_batch_wait_ms / 1000.0


def is_ae_title(value: str) -> bool:
    """DICOM's rule for an AE title as pynetdicom applies it, and not all spaces (a peer could never match it)."""
    return (
        1 <= len(value) <= 16 and bool(value.strip()) and value.isascii() and value.isprintable() and "\\" not in value
    )


def http_url_problem(value: str) -> str | None:
    """The rule `value` breaks as an http(s) URL of a server, or None when it is one.

    A prefix check alone lets `http://`, a port of 99999 or `https://[::1` through, and pacs-sync then stops with a
    traceback that prints the URL, password included. The rule never quotes the value: the
    caller shows it `without_credentials`.
    """
    if not value.startswith(("http://", "https://")):
        return HTTP_URL_RULE
    if any(character.isspace() or not character.isprintable() for character in value):
        return "must not hold spaces or control characters"
    try:
        parts = urlsplit(value)
    except ValueError:
        return "is not a URL: a bracketed IPv6 address must be closed"
    port_rule = "its port must be a number from 1 to 65535"
    try:
        port = parts.port
    except ValueError:  # out of range, or no number; its text may quote a password (http://user:password)
        return port_rule
    if not parts.hostname:
        return "must name a host after the scheme (and after user:password@, if any)"
    if port == 0:
        return port_rule
    return None


def without_credentials(url: str) -> str:
    """`url` with what comes before the last @ after the scheme (user:password) shown as ***: fit for a message,
    also where the URL is too malformed to parse.

    Without an @, a "port" that is not a number is shown as *** too: `http://user:password` (the @ and host
    forgotten) parses as host `user`, port `password`.
    """
    scheme, separator, rest = url.partition("://")
    if not separator:
        return url
    if "@" in rest:
        return f"{scheme}://***@{rest.rpartition('@')[2]}"
    authority_end = min((rest.find(mark) for mark in "/?#" if mark in rest), default=len(rest))
    authority, tail = rest[:authority_end], rest[authority_end:]
    host_and_port = authority.rpartition("]")[2]  # an IPv6 address's own colons are inside its brackets
    port = host_and_port.rpartition(":")[2].strip()
    if ":" not in host_and_port or port == "" or port.isdigit():
        return url
    return f"{scheme}://{authority.rpartition(':')[0]}:***{tail}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings from the environment, read once per process.

    Raises
    ------
    SettingsError
        Naming every variable whose value breaks its rule.
    """
    try:
        settings = Settings()
    except ValidationError as error:
        raise SettingsError(describe_invalid_settings(error)) from None
    misspelt = misspelt_variables(os.environ)
    if misspelt:
        raise SettingsError("invalid environment variable: " + "; ".join(misspelt))
    return settings


def setting_variables() -> frozenset[str]:
    """Every environment variable a setting is read from."""
    return frozenset({*(name.upper() for name in Settings.model_fields), "BACKEND"})


def misspelt_variables(environment: Mapping[str, str]) -> list[str]:
    """What to say of each variable in `environment` that is no setting but nearly spells one of the same first word
    (DICOM_NODE_DESTINATION for DICOM_NODE_DESTINATIONS): ignored as any other variable, it would leave its setting at
    the default without a word (a node restarted so had no destination, and dropped the results waiting to be sent).

    A name of two words or more that begins one setting's name and no other's is such a slip too, however far
    difflib puts it (`unique_completion`): DICOM_NODE_SPOOL (0.89) would open a fresh spool in the working directory,
    and ORTHANC_PASS (0.86) leave pacs-sync without a password.
    """
    known = setting_variables()
    problems = []
    for variable in sorted(environment):
        name = variable.upper()
        if name in known:
            continue
        kin = [setting for setting in known if setting.split("_")[0] == name.split("_")[0]]
        close = difflib.get_close_matches(name, kin, n=1, cutoff=MISSPELLING_CUTOFF) or unique_completion(name, kin)
        if close:
            problems.append(f"{variable} is not a setting: did you mean {close[0]}? (unset or rename it)")
    return problems


def unique_completion(name: str, settings: list[str]) -> list[str]:
    """The one setting whose name `name` begins, for a `name` of two words or more; none when it begins several
    (DICOM_NODE, SEQUENCE_FLAIR: too general to take for one) or is a single word (MODEL, LOG: other programs')."""
    if "_" not in name.strip("_"):
        return []
    completions = [setting for setting in settings if setting.startswith(name)]
    return completions if len(completions) == 1 else []


def describe_invalid_settings(error: ValidationError) -> str:
    """`PORT: Input should be a valid integer (got 'abc'); ...`: each variable, its rule and the value found."""
    problems = []
    for item in error.errors():
        name = str(item["loc"][0]) if item["loc"] else "settings"
        variable = "INFERENCE_RUNTIME (or BACKEND)" if name == "inference_runtime" else name.upper()
        problem = f"{variable}: {item['msg'].removeprefix('Value error, ')}"
        value = item.get("input")
        # A list's item names the value it found itself ("...; got 'X@h:70000'"): the whole list is not repeated.
        already_shown = repr(value) in problem or "; got " in problem
        if isinstance(value, str) and name in URL_SETTINGS:
            value = without_credentials(value)
        if isinstance(value, str) and name not in SECRET_SETTINGS and not already_shown:
            shown = value if len(value) <= SHOWN_VALUE_CHARACTERS else value[:SHOWN_VALUE_CHARACTERS] + "..."
            problem += f" (got {shown!r})"
        problems.append(problem)
    return "invalid environment variable: " + "; ".join(problems)
