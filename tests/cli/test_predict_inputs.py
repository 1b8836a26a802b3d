"""`brain-tumor predict` inputs: folders expand to their slices, a missing path or an empty folder stops the command
with one line and exit 2 before the models load, masks are `<stem>_predicted_mask.png` (never the
ground truth's `<stem>_mask.png`) and never share a file."""

from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path

import pytest

from app import predict_command
from app.cli import main
from app.errors import FileUnreadableError
from app.predict_command import InputError, collect_inputs, mask_targets
from tests.conftest import TEST_DATA, TUMOR_SERIES, TUMOR_SLICE
from tests.dicom.builders import FLAIR, mr_series, to_bytes, tumor_channels

PATIENT_FOLDER = TEST_DATA / "TCGA_DU_A5TW_19980228"
NO_MODELS = "/nonexistent/models"  # a usage error must be found before the models are looked for


def run(capsys: pytest.CaptureFixture[str], *arguments: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["predict", *arguments])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize(
    ("make_argument", "message"),
    [
        (lambda tmp: tmp / "no_such_slice.png", "no such file or folder: {}"),
        (lambda tmp: f"{tmp}/no_such_folder/", "no such file or folder: {}"),
        (
            lambda tmp: (tmp / "empty").mkdir() or tmp / "empty",
            "no files to predict in the folder {} (hidden and *_mask.* files are skipped)",
        ),
    ],
    ids=["missing-file", "missing-folder", "empty-folder"],
)
def test_predict_stops_on_missing_input_with_one_line_and_exit_2(
    make_argument, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argument = str(make_argument(tmp_path))

    code, out, err = run(capsys, str(TUMOR_SLICE), argument, "--model-dir", NO_MODELS)

    assert code == 2
    assert out == ""
    assert err == f"brain-tumor predict: error: {message.format(argument)}\n"


def test_predict_of_folder_holding_only_masks_and_hidden_files_is_empty(tmp_path: Path) -> None:
    (tmp_path / "slice_1_mask.png").write_bytes(b"x")
    (tmp_path / ".DS_Store").write_bytes(b"x")
    (tmp_path / "sub").mkdir()

    with pytest.raises(InputError, match="no files to predict in the folder"):
        collect_inputs([str(tmp_path)])


def test_folder_expands_to_its_slices_in_natural_order_without_masks(tmp_path: Path) -> None:
    # Ground truth (`slice_2_mask.png`) and an earlier run's mask (`slice_2_predicted_mask.png`) are both left out.
    names = (
        "slice_10.png",
        "slice_2.png",
        "slice_2_mask.png",
        "slice_2_predicted_mask.png",
        "slice_1.dcm",
        ".hidden.png",
    )
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "nested").mkdir()
    (tmp_path / "nested" / "slice_3.png").write_bytes(b"x")

    files = collect_inputs([str(tmp_path), str(TUMOR_SLICE)])

    assert files == [tmp_path / "slice_1.dcm", tmp_path / "slice_2.png", tmp_path / "slice_10.png", TUMOR_SLICE]


def test_predict_of_a_folder_predicts_its_slices(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, str(PATIENT_FOLDER), "--model-dir", str(tiny_model_dir), "--masks-dir", str(tmp_path))

    assert code == 0
    results = json.loads(out)["results"]
    # The ground-truth *_mask.png files beside the slices are not predicted; 8 < 20 in natural order.
    expected = [PATIENT_FOLDER / f"TCGA_DU_A5TW_19980228_{number}.jpg" for number in (8, 20, 21, 22)]
    assert [result["file"] for result in results] == [str(path) for path in expected]
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(
        f"{path.stem}_predicted_mask.png" for path in expected
    )


def test_a_folder_entry_that_is_no_file_gets_an_error_in_its_place_in_a_series(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Attack review 30: a link that leads nowhere (or a pipe) in the folder was left out without a word, exit 0, and
    with --series its neighbours were joined as if no slice were missing."""
    folder = tmp_path / "series"
    folder.mkdir()
    slices = sorted(TUMOR_SERIES, key=lambda path: int(path.stem.rsplit("_", 1)[1]))
    for index, path in enumerate(slices):
        (folder / f"slice_{index + 1}.jpg").symlink_to(path)
    (folder / "slice_2.jpg").unlink()
    (folder / "slice_2.jpg").symlink_to(tmp_path / "gone.jpg")  # leads nowhere
    os.mkfifo(folder / "slice_4.jpg")  # a pipe: never opened

    code, out, _ = run(capsys, str(folder), "--series", "--model-dir", str(tiny_model_dir))

    assert code == 1
    results = json.loads(out)["results"]
    assert [Path(result["file"]).name for result in results] == [f"slice_{number}.jpg" for number in (1, 2, 3, 4)]
    assert [result["ok"] for result in results] == [True, False, True, False]
    assert {results[1]["error"]["code"], results[3]["error"]["code"]} == {"file_unreadable"}


def test_masks_are_named_after_the_stem() -> None:
    assert mask_targets(TUMOR_SERIES, Path("masks")) == [
        Path("masks") / f"{path.stem}_predicted_mask.png" for path in TUMOR_SERIES
    ]


@pytest.mark.parametrize(
    "names",
    [("patient_a/slice.png", "patient_b/slice.png"), ("slice.png", "slice.tif"), ("slice.png", "slice.png")],
    ids=["same-stem-in-two-folders", "same-stem-in-one-folder", "same-file-twice"],
)
def test_predict_refuses_inputs_that_would_share_a_mask(
    names: tuple[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    paths = [tmp_path / name for name in names]
    for path in paths:
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"x")
    masks_dir = tmp_path / "masks"

    code, out, err = run(capsys, *map(str, paths), "--model-dir", NO_MODELS, "--masks-dir", str(masks_dir))

    assert code == 2
    assert out == ""
    assert err == (
        f"brain-tumor predict: error: the masks of {paths[0]} and {paths[1]} would all be written to "
        f"{masks_dir / 'slice_predicted_mask.png'}; predict same-named files in separate runs, each with its own "
        "--masks-dir\n"
    )
    assert not masks_dir.exists()


def test_same_stems_are_fine_without_masks(tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    first, second = tmp_path / "a" / "slice.jpg", tmp_path / "b" / "slice.jpg"
    for path in (first, second):
        path.parent.mkdir()
        shutil.copyfile(TUMOR_SLICE, path)

    code, out, _ = run(capsys, str(first), str(second), "--model-dir", str(tiny_model_dir))

    assert code == 0
    assert [result["file"] for result in json.loads(out)["results"]] == [str(first), str(second)]


def test_predict_refuses_a_mask_that_would_overwrite_an_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An earlier run's mask named as an input (to inspect it) is also where this run's mask of the slice goes."""
    slice_path, earlier_mask = tmp_path / "slice.png", tmp_path / "slice_predicted_mask.png"
    slice_path.write_bytes(b"x")
    earlier_mask.write_bytes(b"earlier run")

    code, _, err = run(
        capsys, str(slice_path), str(earlier_mask), "--model-dir", NO_MODELS, "--masks-dir", str(tmp_path)
    )

    assert code == 2
    assert err == (
        f"brain-tumor predict: error: the mask of {slice_path} would overwrite the input {earlier_mask}; "
        "choose another --masks-dir\n"
    )
    assert earlier_mask.read_bytes() == b"earlier run"


def test_predict_without_models_exits_3_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, str(TUMOR_SLICE), "--model-dir", str(tmp_path / "no_models"))

    assert code == 3
    assert out == ""
    assert err.startswith("brain-tumor predict: cannot load the models: ")
    assert err.count("\n") == 1 and str(tmp_path / "no_models") in err


def test_same_named_dicom_slices_are_refused_when_their_masks_would_meet(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """DICOM names are checked as masks are written (only FLAIR files get one): two slices of one series in two
    folders under one name would share a mask, so the second is refused rather than overwriting the first."""
    paths = [tmp_path / folder / "IM0001.dcm" for folder in ("a", "b", "c")]
    for path, dataset in zip(paths, mr_series(tumor_channels(FLAIR)), strict=True):
        path.parent.mkdir()
        path.write_bytes(to_bytes(dataset))
    masks_dir = tmp_path / "masks"

    without_masks, _, _ = run(capsys, *map(str, paths), "--model-dir", str(tiny_model_dir))
    code, out, err = run(capsys, *map(str, paths), "--model-dir", str(tiny_model_dir), "--masks-dir", str(masks_dir))

    assert without_masks == 0
    assert code == 2
    assert out == ""
    assert err == (
        "brain-tumor predict: error: two slices' masks would both be written to "
        f"{masks_dir / 'IM0001_predicted_mask.png'}; predict same-named files in separate runs, each with its own "
        "--masks-dir\n"
    )


def test_predict_refuses_a_t1_series_as_the_api_does(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    paths = [tmp_path / f"IM{index}.dcm" for index in range(3)]
    for path, dataset in zip(paths, mr_series(tumor_channels(0), series_description="AX T1 MPRAGE"), strict=True):
        path.write_bytes(to_bytes(dataset))

    code, out, err = run(capsys, *map(str, paths), "--model-dir", str(tiny_model_dir))

    assert code == 1
    assert json.loads(out)["error"]["code"] == "no_flair_series"
    assert err == (
        "brain-tumor predict: error: the request's one series (number 1) is T1 pre-contrast (Series Description "
        "matches *T1*; no contrast agent stated); the models read FLAIR, so it is not analysed\n"
    )


def test_a_pipe_named_on_the_command_line_is_refused_not_read(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    """attack23b: `predict` waited forever on a FIFO named directly (one inside a folder was already skipped)."""
    fifo = tmp_path / "slice.png"
    os.mkfifo(fifo)

    code, out, err = run(capsys, str(fifo), "--model-dir", NO_MODELS)

    assert (code, out) == (2, "")
    assert err == f"brain-tumor predict: error: {fifo} is not a regular file (a pipe, a device or a socket)\n"


def test_a_file_name_with_a_newline_or_an_escape_cannot_forge_output(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """attack23b: a newline in a file name forged a table row for a file never analysed; escapes reached the
    terminal. JSON escaped them already."""
    forged = tmp_path / "a.jpg\nslice_9.jpg  no tumor\x1b[2J.jpg"
    shutil.copyfile(TUMOR_SLICE, forged)

    code, table, _ = run(capsys, str(forged), "--model-dir", str(tiny_model_dir), "--format", "table")
    _, csv_out, _ = run(capsys, str(forged), "--model-dir", str(tiny_model_dir), "--format", "csv")
    missing_code, _, err = run(capsys, str(tmp_path / "b\n\x1b[31m.png"), "--model-dir", NO_MODELS)

    assert code == 0
    assert "\x1b" not in table + csv_out + err
    assert "a.jpg\\nslice_9.jpg  no tumor\\x1b[2J.jpg" in table
    assert len(table.splitlines()) == len(
        run(capsys, str(TUMOR_SLICE), "--model-dir", str(tiny_model_dir), "--format", "table")[1].splitlines()
    )
    assert len(csv_out.splitlines()) == 2  # header and one row
    assert missing_code == 2 and err.count("\n") == 1


def test_overwrite_never_writes_through_a_symbolic_link_in_the_masks_folder(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """attack23b: with --overwrite, a link planted at a mask's name sent the mask into another folder."""
    masks, elsewhere = tmp_path / "masks", tmp_path / "elsewhere.png"
    masks.mkdir()
    elsewhere.write_bytes(b"keep me")
    (masks / f"{TUMOR_SLICE.stem}_predicted_mask.png").symlink_to(elsewhere)

    code, _, err = run(
        capsys, str(TUMOR_SLICE), "--model-dir", str(tiny_model_dir), "--masks-dir", str(masks), "--overwrite"
    )

    assert code != 0 and "cannot write the mask file" in err
    assert elsewhere.read_bytes() == b"keep me"


def test_a_file_that_turns_into_a_pipe_after_the_look_is_not_waited_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review 58 F3: the look before opening (`not_regular`) let through a regular file whose read waits (a link to
    /proc/kmsg as root), and a file swapped for a pipe after the look: the open waited for ever. The
    file is now opened without waiting and checked on the open file."""
    fifo = tmp_path / "slice.png"
    os.mkfifo(fifo)
    monkeypatch.setattr(predict_command, "not_regular", lambda path: None)  # as if it were swapped after the look
    answers: list[object] = []

    reader = threading.Thread(target=lambda: answers.append(predict_command.read_file(fifo)), daemon=True)
    reader.start()
    reader.join(10)

    assert not reader.is_alive(), "read_file waited on the pipe"
    (answer,) = answers
    assert isinstance(answer, FileUnreadableError) and "not a regular file" in answer.message
    assert predict_command.holds_dicom([fifo]) is False
