"""The DICOM node's configuration (`NodeConfig`): what it listens on, where it keeps its data, where it sends
results, and its limits, checked when it is made so a bad value fails at start-up (as `app.pacs.pacs_sync_config`
is for pacs-sync). `app.node.dicom_node` runs the node with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.node.dicom_sender import Destination
from app.node.dicom_spool import SpoolLimits
from app.settings import AE_TITLE_RULE, Settings, is_ae_title


def _setting_default(name: str) -> Any:
    """The default of the setting DICOM_NODE_`name`."""
    return Settings.model_fields[f"dicom_node_{name}"].default


@dataclass(frozen=True)
class NodeConfig:
    """What the node listens on, where it keeps its data, and where it sends results (see `app.node.dicom_node`'s
    docstring)."""

    # The defaults are the DICOM_NODE_* settings' (`from_settings` builds it from them; tests build it directly).
    spool_dir: Path
    ae_title: str = _setting_default("ae_title")
    host: str = _setting_default("host")
    port: int = _setting_default("port")
    quiet_seconds: float = _setting_default("quiet_seconds")
    allowed_calling_ae_titles: tuple[str, ...] = ()
    destinations: tuple[Destination, ...] = ()
    send_retries: int = _setting_default("send_retries")
    send_backoff_seconds: float = _setting_default("send_backoff_seconds")
    send_timeout_seconds: float = _setting_default("send_timeout_seconds")
    poll_seconds: float = 1.0  # at most; `from_settings` polls four times a quiet period when that is shorter
    stop_seconds: float = 5.0
    max_attempts: int = 3
    max_associations: int = _setting_default("max_associations")
    max_associations_per_peer: int = _setting_default("max_associations_per_peer")
    association_timeout_seconds: float = _setting_default("association_timeout_seconds")
    spool_limits: SpoolLimits = SpoolLimits()
    receive_memory_bytes: int = _setting_default("receive_memory_bytes")

    def __post_init__(self) -> None:
        # The DICOM_NODE_* values are checked by `Settings` (its field constraints) before `from_settings` passes
        # them on, so they are not checked again here. Checked here: the AE title, with Settings' own rule, since
        # `from_settings` takes it from an override (`dicom_node_command.main`'s arguments) and tests build a
        # NodeConfig directly; the fields that have no setting; and how two settings relate, which only matters
        # when the node starts.
        if not is_ae_title(self.ae_title):
            raise ValueError(f"the node's AE title: {AE_TITLE_RULE}; got {self.ae_title!r}")
        if self.poll_seconds <= 0 or self.stop_seconds < 0 or self.max_attempts < 1:
            raise ValueError(
                "poll_seconds must be > 0, stop_seconds >= 0 and max_attempts >= 1; got "
                f"{self.poll_seconds}, {self.stop_seconds} and {self.max_attempts}"
            )
        if self.receive_memory_bytes < self.spool_limits.max_instance_bytes:
            raise ValueError(
                "receive_memory_bytes (DICOM_NODE_RECEIVE_MEMORY_BYTES) must be at least max_instance_bytes "
                f"(DICOM_NODE_MAX_INSTANCE_BYTES), or no instance that large could arrive; got "
                f"{self.receive_memory_bytes} < {self.spool_limits.max_instance_bytes}"
            )

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> NodeConfig:
        """The ``DICOM_NODE_*`` settings, with `overrides` (e.g. from the command line) where given."""
        values: dict[str, Any] = {
            "spool_dir": Path(settings.dicom_node_spool_dir),
            "ae_title": settings.dicom_node_ae_title,
            "host": settings.dicom_node_host,
            "port": settings.dicom_node_port,
            "quiet_seconds": settings.dicom_node_quiet_seconds,
            "allowed_calling_ae_titles": tuple(settings.dicom_node_allowed_calling_ae_titles),
            "destinations": tuple(Destination.parse(item) for item in settings.dicom_node_destinations),
            "send_retries": settings.dicom_node_send_retries,
            "send_backoff_seconds": settings.dicom_node_send_backoff_seconds,
            "send_timeout_seconds": settings.dicom_node_send_timeout_seconds,
            "max_associations": settings.dicom_node_max_associations,
            "max_associations_per_peer": settings.dicom_node_max_associations_per_peer,
            "association_timeout_seconds": settings.dicom_node_association_timeout_seconds,
            "spool_limits": SpoolLimits.from_settings(settings),
            "receive_memory_bytes": settings.dicom_node_receive_memory_bytes,
        }
        values.update({key: value for key, value in overrides.items() if value is not None})
        values["poll_seconds"] = min(cls.poll_seconds, values["quiet_seconds"] / 4)
        return cls(**values)
