"""Every command the README shows is run here against a live server, or named below with the test or CI step that
covers it. A new README command fails `test_every_readme_command_is_run_or_accounted_for` until it is placed."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import textwrap
import tomllib
from importlib.metadata import PackageNotFoundError, distribution, packages_distributions
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from tests.conftest import REPO_ROOT, TUMOR_SERIES, TUMOR_SLICE, read_slice
from tests.dicom.builders import mr_series, to_bytes, tumor_channels
from tests.security.conftest import start_server

README_URL = "http://127.0.0.1:8000"
# Commands not run here, and why (what runs them instead).
NOT_RUN_HERE = {
    "make serve": "builds .venv and serves on a fixed port; the same `brain-tumor serve` is started by this test",
    "make test": "what .ci/run runs",
    "make image-test": "what .ci/run runs after make test (podman, minutes); tests/deploy/test_image_test.py",
    ".venv/bin/brain-tumor serve": "started by this test (python -m app.cli serve) and by tests/security",
    ".venv/bin/brain-tumor train": "tests/training/test_train_evaluate_export.py trains through main() on tiny data",
    ".venv/bin/brain-tumor evaluate": "tests/training/test_train_evaluate_export.py evaluates through the same main()",
    ".venv/bin/python -m training.train": "tests/training/test_train_evaluate_export.py",
    ".venv/bin/python -m training.evaluate": "tests/training/test_train_evaluate_export.py",
    ".venv/bin/python -m training.export_onnx": "tests/inference/test_onnx_runtime.py, through the same main()",
    ".venv/bin/python -m training.export": "tests/training/test_train_evaluate_export.py",
    ".venv/bin/python -m training.cross_validation": "tests/training/test_cross_validation.py, through the same main()",
    ".venv/bin/python -m training.compare_classifiers": "tests/training/test_train_evaluate_export.py, same main()",
    "for k in 0 1 2 3 4; do .venv/bin/python -m training.train": "tests/training/test_cross_validation.py (fold runs)",
    "make install-dev": "what make test runs first",
    "make bench": "a benchmark (numbers, not a pass/fail test): run by hand, results in the README",
    ".venv/bin/python -m bench.": "benchmarks: their --quick modes are smoke-run by hand",
    "ORTHANC_USERNAME=orthanc": "pacs-sync against a real Orthanc: tests/dicom/test_pacs_sync.py",
    ".venv/bin/pip uninstall -y tensorflow-cpu": "needs an NVIDIA GPU; CI has none (and must keep tensorflow-cpu)",
    '.venv/bin/python -c "import tensorflow': "the GPU check: prints [] on CI's CPU-only machine, proving nothing",
    "DICOM_NODE_ALLOWED_CALLING_AE_TITLES=": "the DICOM node with models: tests/dicom/test_dicom_node.py runs it",
    "echoscu ": "tests/dicom/test_dicom_node.py runs echoscu against the node",
    "storescu ": "tests/dicom/test_dicom_node.py runs storescu against the node",
    "docker": "no Docker engine in CI: make image-test builds and runs the images with podman (see the README)",
    "EXTRAS=onnx INFERENCE_RUNTIME=onnxruntime docker": "as docker; tests/deploy checks the EXTRAS build argument",
}


def readme_blocks(language: str) -> list[str]:
    text = (REPO_ROOT / "README.md").read_text()
    blocks = re.findall(rf"^[ ]*```{language}\n(.*?)^[ ]*```", text, flags=re.MULTILINE | re.DOTALL)
    return [textwrap.dedent(block) for block in blocks]


def readme_commands() -> list[str]:
    """Shell commands of the README's bash blocks: continuation lines joined, comments dropped."""
    commands = []
    for block in readme_blocks("bash"):
        for command in block.replace("\\\n", " ").splitlines():
            command = re.sub(r"\s+#\s.*$", "", command).strip()
            if command and not command.startswith("#"):
                commands.append(re.sub(r"\s+", " ", command))
    return commands


def is_run_here(command: str) -> bool:
    return command.startswith(("curl ", ".venv/bin/brain-tumor predict", ".venv/bin/brain-tumor hash-key"))


def test_every_readme_command_is_run_or_accounted_for():
    unplaced = [
        command
        for command in readme_commands()
        if not is_run_here(command) and not any(command.startswith(prefix) for prefix in NOT_RUN_HERE)
    ]
    assert not unplaced, f"README commands neither run by this test nor listed in NOT_RUN_HERE: {unplaced}"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding the files the README's examples name, with `tests/` and `.venv/` of the repository."""
    folder = tmp_path_factory.mktemp("readme")
    (folder / "tests").symlink_to(REPO_ROOT / "tests")
    (folder / ".venv").symlink_to(REPO_ROOT / ".venv")
    Image.fromarray(read_slice(TUMOR_SLICE)).save(folder / "slice.png")
    Image.fromarray(read_slice(TUMOR_SLICE)).save(folder / "slice1.png")
    tifffile.imwrite(folder / "slice2.tif", (read_slice(TUMOR_SLICE)[:, :, 1].astype(np.uint16) * 16))
    for number, path in zip((20, 21, 22), TUMOR_SERIES, strict=True):
        Image.fromarray(read_slice(path)).save(folder / f"slice_{number}.png")
    for number, dataset in enumerate(mr_series(tumor_channels()), start=1):
        (folder / f"IM{number:04d}.dcm").write_bytes(to_bytes(dataset))
    return folder


@pytest.fixture(scope="module")
def server_url(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    server = start_server(tiny_model_dir, tmp_path_factory.mktemp("readme_server"))
    yield server.base_url
    server.stop()


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
@pytest.mark.parametrize("command", [command for command in readme_commands() if is_run_here(command)])
def test_readme_command_succeeds(command: str, workdir: Path, server_url: str, tiny_model_dir: Path):
    runnable = command.replace(README_URL, server_url)
    if runnable.startswith("curl "):
        runnable = "curl --fail-with-body " + runnable.removeprefix("curl ")
    environment = {**os.environ, "KEY": "example-key", "MODEL_DIR": str(tiny_model_dir)}
    completed = subprocess.run(
        ["bash", "-o", "pipefail", "-c", runnable],
        cwd=workdir,
        env=environment,
        capture_output=True,
        timeout=180,
    )
    assert completed.returncode == 0, completed.stderr.decode(errors="replace")[-2000:]
    if "-o overlay.png" in command:
        assert (workdir / "overlay.png").read_bytes()[:4] == b"\x89PNG"
    elif "-o seg.dcm" in command:
        assert (workdir / "seg.dcm").read_bytes()[128:132] == b"DICM"
    else:
        assert completed.stdout.strip()


def test_readme_python_example_imports_only_what_make_serve_installs():
    """`make serve` installs the project's dependencies only (no extras): the example must need nothing more."""
    (example,) = readme_blocks("python")
    modules = {
        node.names[0].name.split(".")[0] if isinstance(node, ast.Import) else node.module.split(".")[0]
        for node in ast.walk(ast.parse(example))
        if isinstance(node, ast.Import | ast.ImportFrom)
    }
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    runtime = {canonical(re.split(r"[<>=!~\[;\s]", item, maxsplit=1)[0]) for item in project["dependencies"]}
    installed = transitive(runtime)
    runtime_modules = {
        module
        for module, distributions in packages_distributions().items()
        if any(canonical(name) in installed for name in distributions)
    }
    missing = sorted(modules - runtime_modules)
    assert not missing, f"the README's Python example imports {missing}, which make serve does not install"


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def transitive(names: set[str]) -> set[str]:
    """Every distribution the given ones pull in (their non-extra requirements), as installed here."""
    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requirements = distribution(name).requires or []
        except PackageNotFoundError:
            continue
        for requirement in requirements:
            if "extra ==" not in requirement:
                todo.append(canonical(re.split(r"[<>=!~\[;\s(]", requirement, maxsplit=1)[0]))
    return seen


def test_readme_python_example_runs(workdir: Path, server_url: str):
    (example,) = readme_blocks("python")
    completed = subprocess.run(
        [sys.executable, "-c", example.replace(README_URL, server_url) + "\nassert mask.any()\n"],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
