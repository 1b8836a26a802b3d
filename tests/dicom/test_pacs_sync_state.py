"""The pacs-sync bookmark: saved atomically, read back, refused when it is not ours."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.pacs_sync_state import SyncState, SyncStateError


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


def test_sync_state_refuses_a_negative_change_number(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_text('{"last_change": -1}')

    with pytest.raises(SyncStateError, match="last_change must be >= 0; got -1"):
        SyncState.load(path)
