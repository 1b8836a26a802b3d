"""The pacs-sync bookmark: saved atomically and durably, read back, refused when it is not ours."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from app.pacs.pacs_sync_state import SyncState, SyncStateError, SyncStateWriteError


def test_sync_state_round_trips_and_lists_due_retries(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "state.json"
    SyncState(path, last_change=42, retries={"late": 200.0, "early": 100.0, "future": 900.0}).save()

    loaded = SyncState.load(path)

    assert (loaded.last_change, loaded.retries) == (42, {"late": 200.0, "early": 100.0, "future": 900.0})
    assert loaded.due(now=500.0) == ["early", "late"]
    assert list(path.parent.iterdir()) == [path]  # the temporary file was renamed, not left behind


def test_sync_state_starts_fresh_without_a_file(tmp_path: Path) -> None:
    assert SyncState.load(tmp_path / "absent.json") == SyncState(tmp_path / "absent.json")
    assert SyncState.load(None).last_change == 0
    SyncState(None, last_change=5).save()  # in memory only: nothing written, nothing raised


@pytest.mark.parametrize(
    ("text", "reason"),
    [("not json", "JSONDecodeError"), ('{"retries": {}}', "KeyError"), ('{"last_change": "x"}', "ValueError")],
)
def test_sync_state_refuses_a_file_it_did_not_write(tmp_path: Path, text: str, reason: str) -> None:
    path = tmp_path / "state.json"
    path.write_text(text)

    with pytest.raises(SyncStateError, match=rf"state file .*state.json cannot be read \({reason}\); remove it"):
        SyncState.load(path)


def test_a_state_file_that_cannot_be_opened_is_named_without_advice_to_remove_it(tmp_path: Path) -> None:
    """Operations finding: PACS_STATE_FILE=/tmp was told "remove it" as if it held a broken state."""
    with pytest.raises(SyncStateError) as refused:
        SyncState.load(tmp_path)

    assert str(refused.value) == (
        f"pacs-sync state file {tmp_path} is a folder; PACS_STATE_FILE names a file (Is a directory)"
    )


def test_sync_state_refuses_a_negative_change_number(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_text('{"last_change": -1}')

    with pytest.raises(SyncStateError, match="last_change must be >= 0; got -1"):
        SyncState.load(path)


def test_sync_state_save_flushes_the_file_before_the_rename_and_the_directory_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "state.json"
    steps: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(descriptor: int) -> None:
        steps.append("fsync directory" if stat.S_ISDIR(os.fstat(descriptor).st_mode) else "fsync file")
        real_fsync(descriptor)

    def replace(source: Path, target: Path) -> None:
        steps.append("rename")
        real_replace(source, target)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)

    SyncState(path, last_change=3).save()

    assert steps == ["fsync file", "rename", "fsync directory"]
    assert SyncState.load(path).last_change == 3


def test_sync_state_save_on_a_full_disk_raises_and_keeps_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "state.json"
    SyncState(path, last_change=3).save()

    def disk_full(descriptor: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", disk_full)

    with pytest.raises(SyncStateWriteError, match=r"state.json cannot be written \(OSError: No space left on device\)"):
        SyncState(path, last_change=8).save()
    monkeypatch.undo()
    assert SyncState.load(path).last_change == 3
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def test_sync_state_save_into_a_place_that_cannot_hold_it_raises_a_domain_error(tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the state's folder should be")

    with pytest.raises(SyncStateWriteError, match=r"blocker/state.json cannot be written \("):
        SyncState(blocker / "state.json", last_change=1).save()
