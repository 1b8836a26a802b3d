"""What pacs-sync keeps between runs on its own side: the last Orthanc change it handled and the studies it will try
again, and when.

The outcome of each study lives in Orthanc (`app.pacs.orthanc_client.SYNC_METADATA`); this file is only a bookmark, so
losing it costs time (the change log is read again from the start, and the records keep work from being redone),
never results. Written to a temporary file, flushed to disk and renamed (the directory flushed too), so a crash or a
power cut leaves the old state or the new one, never half; a save that fails raises `SyncStateWriteError`, and
`app.pacs.pacs_sync` logs it and goes on from memory.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.core.durable_files import write_atomically


class SyncStateError(ValueError):
    """The state file exists but cannot be used."""


class SyncStateWriteError(RuntimeError):
    """The state file cannot be written (directory unwritable, disk full); the old one, if any, is left as it was."""


@dataclass
class SyncState:
    """The bookmark of pacs-sync.

    Attributes
    ----------
    path
        Where it is saved; None keeps it in memory.
    last_change
        Sequence number of the last Orthanc change handled (0: none yet).
    retries
        Orthanc study ID -> when (Unix time) to look at it again: a failure to retry, or a study that used up its
        attempts and is watched for changed instances.
    unresolved
        Changes whose study could not be looked up although Orthanc answered (``"Series/<id>"`` or
        ``"Instance/<id>"`` -> passes that failed): tried again at each pass, so one broken resource never holds up
        the rest of the change log, nor is it forgotten at once.
    unrecorded_failures
        Orthanc study ID -> [study fingerprint, failed attempts] for failures Orthanc would not let pacs-sync record
        (its metadata write refused): the attempts are counted here instead, so such a study is not analysed and
        stored again at every retry without end.
    receiving
        Orthanc study ID -> when to look at it again, for a study a change brought while Orthanc said it was still
        receiving instances: looked at then as that change would have been, so a failed study keeps its retry time
        (`retries`) when something else arrives in it.
    orthanc_last
        The latest change in Orthanc's log when pacs-sync last read it (0 before): not saved, read again each pass.
    """

    path: Path | None = None
    last_change: int = 0
    retries: dict[str, float] = field(default_factory=dict)
    unresolved: dict[str, int] = field(default_factory=dict)
    unrecorded_failures: dict[str, list[Any]] = field(default_factory=dict)
    receiving: dict[str, float] = field(default_factory=dict)
    orthanc_last: int = 0

    @classmethod
    def load(cls, path: Path | None) -> SyncState:
        """The saved state, or a fresh one when `path` is None or does not exist yet.

        Raises
        ------
        SyncStateError
            If the file is not this module's JSON (refused rather than silently started over).
        """
        if path is None or not path.exists():
            return cls(path)
        try:
            data = json.loads(path.read_text())
            last_change = int(data["last_change"])
            retries = {str(study): float(due) for study, due in data.get("retries", {}).items()}
            unresolved = {str(change): int(failed) for change, failed in data.get("unresolved", {}).items()}
            unrecorded = {
                str(study): [str(print_), int(attempts)]
                for study, (print_, attempts) in data.get("unrecorded_failures", {}).items()
            }
            receiving = {str(study): float(due) for study, due in data.get("receiving", {}).items()}
        except OSError as error:  # a folder, no permission: removing it would be the wrong advice
            what = "is a folder; PACS_STATE_FILE names a file" if path.is_dir() else "cannot be opened"
            raise SyncStateError(
                f"pacs-sync state file {path} {what} ({error.strerror or type(error).__name__})"
            ) from error
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise SyncStateError(
                f"pacs-sync state file {path} cannot be read ({type(error).__name__}); remove it to read Orthanc's "
                "changes from the start (the records in Orthanc keep work from being redone)"
            ) from error
        if last_change < 0:
            raise SyncStateError(f"pacs-sync state file {path}: last_change must be >= 0; got {last_change}")
        return cls(path, last_change, retries, unresolved, unrecorded, receiving)

    def save(self) -> None:
        """Write the state atomically and durably (nothing when `path` is None).

        Raises
        ------
        SyncStateWriteError
            If the file or its directory cannot be written; no temporary file is left behind.
        """
        if self.path is None:
            return
        state = {
            "last_change": self.last_change,
            "retries": self.retries,
            "unresolved": self.unresolved,
            "unrecorded_failures": self.unrecorded_failures,
            "receiving": self.receiving,
        }
        text = json.dumps(state, sort_keys=True)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_atomically(self.path, text.encode())
        except OSError as error:
            reason = f"{type(error).__name__}: {error.strerror}" if error.strerror else type(error).__name__
            raise SyncStateWriteError(f"pacs-sync state file {self.path} cannot be written ({reason})") from error

    def changes_behind(self) -> int:
        """How many changes of Orthanc's log, as last read, are not handled yet (0 after a log that started again
        and before the first read)."""
        return max(0, self.orthanc_last - self.last_change)

    def due(self, now: float) -> list[str]:
        """Studies whose retry time has come, earliest first."""
        return _due(self.retries, now)

    def received(self, now: float) -> list[str]:
        """Studies still receiving at an earlier pass whose time to look again has come (`receiving`), earliest
        first; taken off the list."""
        studies = _due(self.receiving, now)
        for study in studies:
            del self.receiving[study]
        return studies


def _due(schedule: dict[str, float], now: float) -> list[str]:
    return [study for study, when in sorted(schedule.items(), key=lambda item: item[1]) if when <= now]


def _a_folder(path: Path) -> SyncStateWriteError:
    """The error for a state file path that names a folder."""
    return SyncStateWriteError(
        f"pacs-sync state file {path} is a folder; PACS_STATE_FILE must name a file in a writable folder"
    )


def check_state_file_writable(path: Path | None) -> None:
    """Raise `SyncStateWriteError` when no file can be written beside `path` (a read-only volume, a folder that
    cannot be made): said at start, before the models load, where pacs-sync ran on and logged an error at every pass,
    and read Orthanc's change log from the start again after each restart. A probe file is written and removed; the
    state file itself is not touched."""
    if path is None:
        return
    if path.name in ("", ".."):  # "/", ".", "state/..": the state would be written over a folder
        raise _a_folder(path)
    try:
        if path.is_dir():
            raise _a_folder(path)
        # As long as the temporary name every save writes (`write_atomically`): a name that fits and whose
        # temporary one does not passed, then every save failed (review 71 F5).
        probe = path.with_name(f".{path.name}.{uuid.uuid4().hex}.probe")
        path.parent.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        reason = f"{type(error).__name__}: {error.strerror}" if error.strerror else type(error).__name__
        raise SyncStateWriteError(
            f"pacs-sync state file {path} cannot be written ({reason}); PACS_STATE_FILE must name a file in a "
            "writable folder"
        ) from error
