"""`brain-tumor predict`: the API's JSON for each file (or DICOM slice), offline; masks written as
`<stem>_predicted_mask.png`; exit 1 when a file fails, 3 when the models cannot be loaded."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.cli import main
from app.errors import FileUnreadableError
from app.predict_command import read_file
from tests.api.service_client import decode_png_mask, decode_rle, upload
from tests.conftest import NO_SLICE, TUMOR_SERIES, TUMOR_SLICE, make_tiny_model_dir
from tests.dicom.builders import (
    FLAIR,
    key_object_selection,
    legacy_multiframe,
    mr_series,
    to_bytes,
    tumor_channels,
)

PREDICTION_KEYS = {"tumor_probability", "tumor_detected", "threshold", "mask"}


def run_predict(capsys: pytest.CaptureFixture[str], *arguments: str) -> tuple[int, dict]:
    capsys.readouterr()
    code = main(["predict", *arguments])
    return code, json.loads(capsys.readouterr().out)


def test_predict_prints_api_json_and_writes_mask(
    client: TestClient, tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    masks_dir = tmp_path / "masks"

    code, output = run_predict(
        capsys, str(TUMOR_SLICE), "--model-dir", str(tiny_model_dir), "--masks-dir", str(masks_dir)
    )

    assert code == 0
    api = client.post("/v1/predict", files=upload(TUMOR_SLICE.read_bytes(), "slice.jpg")).json()
    assert output["models"] == api["models"]
    (result,) = output["results"]
    mask_file = masks_dir / f"{TUMOR_SLICE.stem}_predicted_mask.png"
    assert result == {
        "index": 0,
        "file": str(TUMOR_SLICE),
        "ok": True,
        "prediction": {key: api[key] for key in PREDICTION_KEYS},
        "mask_file": str(mask_file),
    }
    written = np.asarray(Image.open(mask_file))
    assert written.dtype == np.uint8 and written.shape == (256, 256)
    assert set(np.unique(written)) <= {0, 255}
    np.testing.assert_array_equal((written == 255).astype(np.uint8), decode_rle(api["mask"]["rle"]))


def test_predict_reports_bad_file_in_place_and_exits_1(
    client: TestClient, tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    masks_dir = tmp_path / "masks"

    code, output = run_predict(
        capsys,
        str(TUMOR_SERIES[0]),
        str(bad),
        str(TUMOR_SERIES[1]),
        "--model-dir",
        str(tiny_model_dir),
        "--masks-dir",
        str(masks_dir),
        "--mask-format",
        "both",
    )
    api = client.post(
        "/v1/predict/batch",
        params={"mask_format": "both"},
        files=[("files", (path.name, path.read_bytes(), "image/jpeg")) for path in TUMOR_SERIES[:2]],
    ).json()

    assert code == 1
    results = output["results"]
    assert [(item["index"], item["file"], item["ok"]) for item in results] == [
        (0, str(TUMOR_SERIES[0]), True),
        (1, str(bad), False),
        (2, str(TUMOR_SERIES[1]), True),
    ]
    assert results[1]["error"] == {
        "code": "unsupported_media_type",
        "message": "unsupported file type: the file must start with the PNG, JPEG or TIFF magic bytes, "
        "or be DICOM (DICM at byte 128); it looks like text",
    }
    # The good files get exactly what the batch endpoint gives them.
    assert [results[0]["prediction"], results[2]["prediction"]] == [item["prediction"] for item in api["results"]]
    mask = results[0]["prediction"]["mask"]
    assert set(mask) == {"size", "rle", "png", "area_pixels", "bbox"}
    np.testing.assert_array_equal(decode_rle(mask["rle"]), decode_png_mask(mask["png"]))
    assert sorted(path.name for path in masks_dir.iterdir()) == [
        f"{TUMOR_SERIES[0].stem}_predicted_mask.png",
        f"{TUMOR_SERIES[1].stem}_predicted_mask.png",
    ]


def test_predict_names_the_masks_of_a_multiframe_file_per_frame(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One file, three slices: each frame's mask is `<stem>_frame<N>_predicted_mask.png`, never the ground truth's
    `_mask.png` name."""
    volume = tmp_path / "volume.dcm"
    volume.write_bytes(to_bytes(legacy_multiframe(mr_series(tumor_channels(FLAIR)))))
    masks_dir = tmp_path / "masks"

    code, output = run_predict(capsys, str(volume), "--model-dir", str(tiny_model_dir), "--masks-dir", str(masks_dir))

    assert code == 0
    names = [f"volume_frame{item['frame_number']}_predicted_mask.png" for item in output["results"]]
    assert sorted(names) == [f"volume_frame{number}_predicted_mask.png" for number in (1, 2, 3)]
    assert [item["mask_file"] for item in output["results"]] == [str(masks_dir / name) for name in names]
    assert sorted(path.name for path in masks_dir.iterdir()) == sorted(names)


def test_predict_of_negative_writes_no_mask(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    negative = make_tiny_model_dir(tmp_path / "negative_models", classifier_threshold=NO_SLICE)
    masks_dir = tmp_path / "masks"

    code, output = run_predict(capsys, str(TUMOR_SLICE), "--model-dir", str(negative), "--masks-dir", str(masks_dir))

    assert code == 0
    (result,) = output["results"]
    assert result["prediction"]["tumor_detected"] is False
    assert result["prediction"]["mask"] is None
    assert result["prediction"]["threshold"] == NO_SLICE
    assert "mask_file" not in result
    assert not masks_dir.exists() or not any(masks_dir.iterdir())


def test_predict_rejects_unknown_mask_format(tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as raised:
        main(["predict", str(TUMOR_SLICE), "--model-dir", str(tiny_model_dir), "--mask-format", "svg"])

    assert raised.value.code == 2
    assert "--mask-format" in capsys.readouterr().err


def test_predict_refuses_tampered_models_with_exit_3(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    models = Path(shutil.copytree(tiny_model_dir, tmp_path / "models"))
    with (models / "tumor_segmenter.weights.h5").open("ab") as stream:
        stream.write(b"\0")

    code = main(["predict", str(TUMOR_SLICE), "--model-dir", str(models)])

    captured = capsys.readouterr()
    assert code == 3
    assert captured.out == ""
    assert re.fullmatch(
        r"brain-tumor predict: cannot load the models: sha256 mismatch for \S*tumor_segmenter\.weights\.h5[^\n]*\n",
        captured.err,
    )


def test_read_file_reports_unreadable_path_as_file_error(tmp_path: Path) -> None:
    """What `predict` reports in place for a file that exists but cannot be read (here a folder, as root can read
    any file)."""
    error = read_file(tmp_path)

    assert isinstance(error, FileUnreadableError)
    assert error.to_dict() == {"code": "file_unreadable", "message": "cannot read the file: Is a directory"}


def test_images_a_rejection_note_withdraws_are_left_out_and_no_failure(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Review 56 F5: an exported folder holding an IHE IOCM note exited 1, as if a file had failed."""
    series = mr_series(tumor_channels(FLAIR))
    for index, dataset in enumerate([*series, key_object_selection(series, series[-1:])]):
        (tmp_path / f"file_{index}.dcm").write_bytes(to_bytes(dataset))

    code, output = run_predict(capsys, str(tmp_path), "--model-dir", str(tiny_model_dir))

    assert code == 0
    assert [item["sop_instance_uid"] for item in output["results"]] == [item.SOPInstanceUID for item in series[:-1]]
    assert [item["error"]["code"] for item in output["file_errors"]] == ["rejected_instance", "rejection_note"]


def test_predict_reads_a_dicom_series_as_the_batch_endpoint_does(
    client: TestClient, tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    series = mr_series(tumor_channels(FLAIR))
    paths = []
    for index, dataset in enumerate(series):
        paths.append(tmp_path / f"slice_{index}.dcm")
        paths[-1].write_bytes(to_bytes(dataset))
    broken = tmp_path / "broken.dcm"
    (extra,) = mr_series(tumor_channels(FLAIR)[:1])  # an instance of its own (the same UID twice is refused)
    extra.SeriesInstanceUID, extra.StudyInstanceUID = series[0].SeriesInstanceUID, series[0].StudyInstanceUID
    extra.ImagePositionPatient = [-120.0, -120.0, 99.0]
    whole = to_bytes(extra)
    broken.write_bytes(whole[: len(whole) // 2])  # a DICOM file cut off in its pixel data
    masks_dir = tmp_path / "masks"

    code, output = run_predict(
        capsys, *map(str, [*paths, broken]), "--model-dir", str(tiny_model_dir), "--masks-dir", str(masks_dir)
    )
    api = client.post(
        "/v1/predict/batch", files=[("files", (path.name, path.read_bytes(), "application/dicom")) for path in paths]
    ).json()

    assert code == 1  # the broken file
    assert output["models"] == api["models"]
    assert output["series"] == {
        "tumor_detected": api["tumor_detected"],
        "tumor_volume_ml": api["tumor_volume_ml"],
        "slices_missing": api["slices_missing"],
        "tumor_reaches_series_end": api["tumor_reaches_series_end"],
        "series_used": [{**api["series_used"][0], "files": [0, 1, 2, 3]}],  # the broken file's header is whole
        "series_left_out": [],
        "selection_notes": [],
    }
    assert [
        {key: item[key] for key in (*api["slices"][0], "prediction")}  # every field of the API's slices
        for item in output["results"]
    ] == api["slices"]
    assert [item["file"] for item in output["results"]] == [str(path) for path in paths]
    assert [item["sop_instance_uid"] for item in output["results"]] == [str(item.SOPInstanceUID) for item in series]
    assert all(item["ok"] for item in output["results"])
    (failure,) = output["file_errors"]
    assert (failure["index"], failure["file"], failure["ok"], failure["error"]["code"]) == (
        3,
        str(broken),
        False,
        "undecodable_dicom",
    )
    # Each slice's mask is named after the file it came from.
    assert [item["mask_file"] for item in output["results"]] == [
        str(masks_dir / f"slice_{index}_predicted_mask.png") for index in range(3)
    ]
    assert sorted(path.name for path in masks_dir.iterdir()) == [
        f"slice_{index}_predicted_mask.png" for index in range(3)
    ]
