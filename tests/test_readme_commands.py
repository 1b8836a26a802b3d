"""Every command the README shows is run here against a live server, or named below with the test or CI step that
covers it. A new README command fails `test_every_readme_command_is_run_or_accounted_for` until it is placed."""

from __future__ import annotations

import ast
import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
import tomllib
from importlib.metadata import PackageNotFoundError, distribution, packages_distributions
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT
from tests.security.conftest import start_server

README_URL = "http://127.0.0.1:8000"
# Commands not run here, and why (what runs them instead).
NOT_RUN_HERE = {
    "make serve": "builds .venv and serves on a fixed port; the same `brain-tumor serve` is started by this test",
    "make test": "what .ci/run runs",
    "make examples": "its recipe (python -m tests.example_files examples) is what the workdir fixture runs, here with "
    "this interpreter: make would first build .venv",
    "make image-test": "what .ci/run runs after make test (podman, minutes); tests/deploy/test_image_test.py",
    ".venv/bin/brain-tumor serve": "started by this test (python -m app.cli serve) and by tests/security",
    ".venv/bin/brain-tumor train": "tests/training/test_train_evaluate_export.py trains through main() on tiny data",
    ".venv/bin/brain-tumor evaluate": "tests/training/test_train_evaluate_export.py evaluates through the same main()",
    ".venv/bin/python -m training.train": "tests/training/test_train_evaluate_export.py",
    ".venv/bin/python -m training.evaluate": "tests/training/test_train_evaluate_export.py",
    ".venv/bin/python -m training.export_onnx": "tests/inference/test_onnx_runtime.py, through the same main()",
    ".venv/bin/python -m training.export": "tests/training/test_train_evaluate_export.py",
    ".venv/bin/python -m training.model_card": "tests/training/test_model_card.py, through the same main()",
    ".venv/bin/python -m training.cross_validation": "tests/training/test_cross_validation.py, through the same main()",
    ".venv/bin/python -m training.compare_classifiers": "tests/training/test_train_evaluate_export.py, same main()",
    "for k in 0 1 2 3 4; do .venv/bin/python -m training.train": "tests/training/test_cross_validation.py (fold runs)",
    "for k in fold0 fold1 fold2 all; do .venv/bin/python -m training.train": "tests/training/test_cross_validation.py "
    "(fold runs; refit-folds' splits in their own test)",
    "make install-dev": "what make test runs first",
    "make bench": "a benchmark (numbers, not a pass/fail test): run by hand, results in the README",
    ".venv/bin/python -m bench.": "benchmarks: their --quick modes are smoke-run by hand",
    "ORTHANC_USERNAME=orthanc": "pacs-sync against a real Orthanc: tests/pacs/test_pacs_sync.py",
    ".venv/bin/pip uninstall -y tensorflow-cpu": "needs an NVIDIA GPU; CI has none (and must keep tensorflow-cpu)",
    '.venv/bin/python -c "import tensorflow': "the GPU check: prints [] on CI's CPU-only machine, proving nothing",
    "DICOM_NODE_ALLOWED_CALLING_AE_TITLES=": "the DICOM node with models: tests/node/test_dicom_node.py runs it",
    "echoscu ": "tests/node/test_dicom_node.py runs echoscu against the node",
    ".venv/bin/brain-tumor dicom-node-forget": "needs a node's spool holding a refused study: "
    "tests/node/test_dicom_node_forget.py runs the command (app.cli.main) on one",
    "DICOM_NODE_METRICS_PORT=": "the node's metrics served and scraped: tests/node/test_node_metrics.py",
    "PACS_SYNC_METRICS_PORT=": "pacs-sync's metrics served and scraped: tests/pacs/test_pacs_sync_metrics.py",
    "storescu ": "tests/node/test_dicom_node.py runs storescu against the node",
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
    return command.startswith(
        ("curl ", ".venv/bin/brain-tumor predict", ".venv/bin/brain-tumor hash-key", ".venv/bin/brain-tumor health")
    )


def test_every_readme_command_is_run_or_accounted_for():
    unplaced = [
        command
        for command in readme_commands()
        if not is_run_here(command) and not any(command.startswith(prefix) for prefix in NOT_RUN_HERE)
    ]
    assert not unplaced, f"README commands neither run by this test nor listed in NOT_RUN_HERE: {unplaced}"


def make_recipe(target: str) -> list[str]:
    """The command lines `make TARGET` runs, as the Makefile writes them."""
    makefile = (REPO_ROOT / "Makefile").read_text()
    match = re.search(rf"^{re.escape(target)}:.*\n((?:\t.*\n)+)", makefile, flags=re.MULTILINE)
    assert match, f"the Makefile has no recipe for {target}"
    return [line.strip() for line in match.group(1).splitlines()]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkout-like folder (`tests/` and `.venv/` of the repository) in which `make examples`'s own recipe has
    written the files the README's examples name, so a README path with no file behind it fails here."""
    folder = tmp_path_factory.mktemp("readme")
    (folder / "tests").symlink_to(REPO_ROOT / "tests")
    (folder / ".venv").symlink_to(REPO_ROOT / ".venv")
    for recipe in make_recipe("examples"):
        command = shlex.split(recipe.replace("$(BIN)/python", shlex.quote(sys.executable)))
        completed = subprocess.run(command, cwd=folder, capture_output=True, text=True, timeout=300)
        assert completed.returncode == 0, completed.stderr[-2000:]
    return folder


def test_make_examples_writes_every_file_the_readme_names(workdir: Path):
    named = set(re.findall(r"examples/[\w./*-]+\.(?:png|tif|dcm)", (REPO_ROOT / "README.md").read_text()))
    outputs = {"examples/overlay.png", "examples/seg.dcm"}  # what the commands write, not read

    missing = [name for name in sorted(named - outputs) if not list(workdir.glob(name))]

    assert named - outputs, "the README names no example file"
    assert not missing, f"make examples does not write {missing}"


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
    environment = {**os.environ, "KEY": "example-key-0123456789", "MODEL_DIR": str(tiny_model_dir)}
    environment["PORT"] = server_url.rsplit(":", 1)[1]  # `brain-tumor health` asks HOST:PORT
    completed = subprocess.run(
        ["bash", "-o", "pipefail", "-c", runnable],
        cwd=workdir,
        env=environment,
        capture_output=True,
        timeout=180,
    )
    assert completed.returncode == 0, completed.stderr.decode(errors="replace")[-2000:]
    if "-o examples/overlay.png" in command:
        assert (workdir / "examples" / "overlay.png").read_bytes()[:4] == b"\x89PNG"
    elif "-o examples/seg.dcm" in command:
        assert (workdir / "examples" / "seg.dcm").read_bytes()[128:132] == b"DICM"
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
