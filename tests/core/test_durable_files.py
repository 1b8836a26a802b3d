"""`app.core.durable_files`: a file is replaced whole or not at all, and no temporary file is left behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.core.durable_files import replace_atomically, write_atomically


def test_write_atomically_replaces_the_file(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_bytes(b"old")
    write_atomically(path, b"new")
    assert path.read_bytes() == b"new"
    assert [item.name for item in tmp_path.iterdir()] == ["state.json"]


def test_replace_atomically_gives_the_writer_a_path_with_the_same_suffix(tmp_path: Path) -> None:
    seen: list[Path] = []

    def write(temporary: Path) -> None:
        seen.append(temporary)
        temporary.write_text("weights")

    replace_atomically(tmp_path / "best.weights.h5", write)
    assert seen[0].name.endswith("best.weights.h5") and seen[0].name.startswith(".")
    assert (tmp_path / "best.weights.h5").read_text() == "weights"
    assert [item.name for item in tmp_path.iterdir()] == ["best.weights.h5"]


def test_replace_atomically_keeps_the_old_file_when_the_writer_fails(tmp_path: Path) -> None:
    path = tmp_path / "last.keras"
    path.write_text("epoch 3")

    def write(temporary: Path) -> None:
        temporary.write_text("half")
        raise ValueError("the model cannot be saved")

    with pytest.raises(ValueError, match="cannot be saved"):
        replace_atomically(path, write)
    assert path.read_text() == "epoch 3"
    assert [item.name for item in tmp_path.iterdir()] == ["last.keras"]
