"""The parts of deploy/image_test.py that decide pass or fail without building anything.

The image test itself (podman, minutes) runs as `make image-test` in .ci/run; its broken-Dockerfile control shows
there that its checks fail an image without models. These tests pin the pieces it relies on: reading the compose file
as Compose does, the file-system checks, and the comparison of answers.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def _load_image_test() -> ModuleType:
    spec = importlib.util.spec_from_file_location("image_test", REPO_ROOT / "deploy" / "image_test.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is created
    spec.loader.exec_module(module)
    return module


image_test = _load_image_test()


@pytest.mark.parametrize(
    ("text", "variables", "expected"),
    [
        ("${EXTRAS:-}", {}, ""),
        ("${EXTRAS:-}", {"EXTRAS": "onnx"}, "onnx"),
        ("${INFERENCE_RUNTIME:-keras}", {"INFERENCE_RUNTIME": ""}, "keras"),  # `:-` also replaces an empty value
        ("${INFERENCE_RUNTIME-keras}", {"INFERENCE_RUNTIME": ""}, ""),  # `-` replaces an unset one only
        ("127.0.0.1:${API_PORT:-8000}:8000", {}, "127.0.0.1:8000:8000"),
        ("$$HOME and $USER", {"USER": "app"}, "$HOME and app"),
    ],
)
def test_interpolate_follows_compose(text: str, variables: dict[str, str], expected: str) -> None:
    assert image_test.interpolate(text, variables) == expected


def test_interpolate_refuses_a_missing_required_variable() -> None:
    with pytest.raises(ValueError, match="compose variable TOKEN is required: set it"):
        image_test.interpolate("${TOKEN:?set it}", {})


def test_compose_api_service_for_each_image() -> None:
    default = image_test.read_compose_service(image_test.VARIANTS["keras"])
    onnx = image_test.read_compose_service(image_test.VARIANTS["onnx"])

    assert default.build_args == {"EXTRAS": ""}
    assert default.environment["INFERENCE_RUNTIME"] == "keras"
    assert onnx.build_args == {"EXTRAS": "onnx"}
    assert onnx.environment["INFERENCE_RUNTIME"] == "onnxruntime"
    assert default.healthcheck == ["brain-tumor", "health"]
    assert (default.start_period_s, default.healthcheck_timeout_s, default.container_port) == (120.0, 5.0, 8000)
    assert default.read_only and default.tmpfs == ["/tmp"]
    assert default.command is None  # the image's CMD runs, as in `docker compose up`


@pytest.mark.parametrize(("text", "seconds"), [("120s", 120.0), ("1m30s", 90.0), ("500ms", 0.5)])
def test_compose_duration_seconds(text: str, seconds: float) -> None:
    assert image_test.compose_duration_seconds(text) == seconds


def test_compose_duration_rejects_a_bare_number() -> None:
    with pytest.raises(ValueError, match="not a compose duration: '120'"):
        image_test.compose_duration_seconds("120")


def test_healthcheck_argv_forms() -> None:
    assert image_test.healthcheck_argv(["CMD", "python", "-c", "pass"]) == ["python", "-c", "pass"]
    assert image_test.healthcheck_argv(["CMD-SHELL", "curl -f x"]) == ["/bin/sh", "-c", "curl -f x"]
    with pytest.raises(ValueError, match="must start with CMD or CMD-SHELL, found 'NONE'"):
        image_test.healthcheck_argv(["NONE"])


def test_writable_paths_finds_files_the_user_owns(tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    owned = tmp_path / "models" / "model.keras"
    owned.write_bytes(b"weights")
    owned.chmod(0o644)
    (tmp_path / "models").chmod(0o755)
    tmp_path.chmod(0o755)

    found = image_test.writable_paths(tmp_path, os.getuid(), os.getgid())

    assert set(found) == {tmp_path, tmp_path / "models", owned}


def test_writable_paths_by_mode_bits(tmp_path: Path) -> None:
    stranger_uid, stranger_gid = 10001, 10001
    code = tmp_path / "app"
    code.mkdir()
    readable, world_writable, group_writable = code / "main.py", code / "cache", code / "log"
    for path in (readable, world_writable, group_writable):
        path.write_text("x")
    readable.chmod(0o644)
    world_writable.chmod(0o666)
    group_writable.chmod(0o664)
    (code / "link").symlink_to(readable)
    for path in (tmp_path, code):
        path.chmod(0o755)

    found = image_test.writable_paths(tmp_path, stranger_uid, stranger_gid)
    found_as_group = image_test.writable_paths(tmp_path, stranger_uid, os.getgid())

    assert found == [world_writable]
    assert set(found_as_group) == {world_writable, group_writable}


def test_forbidden_paths_finds_build_context_leftovers_at_any_depth(tmp_path: Path) -> None:
    for folder in ("app/api", "tests/api", "models", "runs/segmenter", "app/.git", "training"):
        (tmp_path / folder).mkdir(parents=True)
    (tmp_path / "app" / "runs.py").write_text("")

    assert image_test.forbidden_paths(tmp_path) == [
        tmp_path / "app/.git",
        tmp_path / "runs",
        tmp_path / "tests",
        tmp_path / "training",
    ]


def test_answers_compare_without_request_id() -> None:
    answer = {"tumor_probability": 0.91, "tumor_detected": True, "mask": {"area_pixels": 812}, "request_id": "a"}

    assert image_test.answers_differ(answer, {**answer, "request_id": "b"}) is None
    assert image_test.answers_differ(answer, {**answer, "tumor_probability": 0.91 + 1e-7}) is None
    assert "tumor_probability" in image_test.answers_differ(answer, {**answer, "tumor_probability": 0.90})
    assert "['mask']" in image_test.answers_differ(answer, {**answer, "mask": {"area_pixels": 811}})


def test_broken_control_drops_only_the_models_copy() -> None:
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()

    broken = image_test.without_models_copy(dockerfile)

    removed = set(dockerfile.splitlines()) - set(broken.splitlines())
    assert removed == {"COPY models /app/models"}
    with pytest.raises(ValueError, match="no `COPY models` line"):
        image_test.without_models_copy(broken)


def test_last_log_lines_shortens_json_records_to_message_and_exception() -> None:
    log_text = "\n".join(
        [
            '{"level": "INFO", "message": "loading models"}',
            '{"level": "ERROR", "message": "Traceback", "exception": "Traceback\\nFileNotFoundError: manifest.json"}',
            "plain text from a library",
        ]
    )

    assert image_test.last_log_lines(log_text, count=2) == [
        "ERROR Traceback (FileNotFoundError: manifest.json)",
        "plain text from a library",
    ]


def test_prune_removes_only_untagged_images_older_than_this_run(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def fake_run(argv, **options):
        calls.append(argv)
        return subprocess.CompletedProcess(argv, 0, stdout="aaa\nbbb\n", stderr="")

    monkeypatch.setattr(image_test, "run", fake_run)
    monkeypatch.setattr(image_test, "STARTED_WALL", 1_796_097_600.0)  # 2026-12-01 04:00:00 UTC

    image_test.prune_earlier_build_layers()

    # Not `--all`: tagged images (the base, this run's builds) and their cache layers stay.
    assert calls == [["podman", "image", "prune", "--force", "--filter", "until=2026-12-01T04:00:00Z"]]


def test_the_image_is_asked_a_jpeg_lossless_dicom_which_only_the_decoder_worker_reads():
    """The upload that proves `app.dicom.dicom_pixels`' worker process starts and decodes inside the image."""
    import pydicom
    from pydicom.uid import JPEGLosslessSV1

    from app.dicom import dicom_pixels

    (dicom_upload,) = [path for name, path, kind in image_test.UPLOADS if kind == "application/dicom"]
    dataset = pydicom.dcmread(dicom_upload)
    assert dataset.file_meta.TransferSyntaxUID == JPEGLosslessSV1
    assert JPEGLosslessSV1 in dicom_pixels.ISOLATED_SYNTAXES
