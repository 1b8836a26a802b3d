"""Build the service image from the real Dockerfile with podman and run it as `docker compose up` runs the `api`
service, on a machine with no Docker engine (CI).

    .venv/bin/python deploy/image_test.py                   # both builds (TensorFlow, EXTRAS=onnx) + the broken control
    .venv/bin/python deploy/image_test.py --variant keras --no-broken-control

For each build: the build arguments, command, environment and health check come from docker-compose.yml's `api`
service, interpolated as Compose would with the variables the README's command sets (none for the default image,
EXTRAS=onnx INFERENCE_RUNTIME=onnxruntime for the ONNX one). The image must become ready within its HEALTHCHECK start
period, answer `/v1/predict` on a test slice as the service run from the checkout does, serve as uid 10001 with code
and models it cannot write, and hold no tests/, runs/, .git or training/; the default build is also run as
Compose's `dicom-node` service, which the image's HEALTHCHECK must call healthy once its models are loaded. Then a
copy of the Dockerfile without `COPY models` is built and run the same way, and must fail: the control that shows
these checks can fail.

Base image: python:3.11-slim-bookworm when a registry serves it, else a stand-in with Debian's Python 3.11 at the same
path, made with debootstrap and kept in podman's storage for the next run. Container: `podman run` where the OCI
runtime can start one, else the image's root file system (`podman image mount`, read only) in its own mount and
network namespaces, the command run with `chroot --userspec` as the image's user. Needs root, podman, debootstrap
(.ci/install-system-packages.sh installs them).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import httpx
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
SERVICE = "api"
TEST_SLICE = REPO_ROOT / "tests" / "data" / "lgg" / "TCGA_DU_A5TW_19980228" / "TCGA_DU_A5TW_19980228_22.jpg"
# A JPEG-lossless DICOM: only GDCM decodes it, in a worker process the service starts (app.dicom.dicom_pixels), so this
# upload proves the worker starts and decodes inside the image, as its user, on its read-only file system.
TEST_DICOM = REPO_ROOT / "tests" / "data" / "dicom" / "flair_jpeg_lossless.dcm"
# What each image is asked: (name, file, content type); both answers must match the checkout's.
UPLOADS: tuple[tuple[str, Path, str], ...] = (
    ("slice.jpg", TEST_SLICE, "image/jpeg"),
    ("slice.dcm", TEST_DICOM, "application/dicom"),
)
PREDICT_PATH = "/v1/predict?mask_format=rle"
OFFICIAL_BASE = "docker.io/library/python:3.11-slim-bookworm"
STANDIN_BASE = "localhost/brain-tumor-standin-base:bookworm"
STANDIN_PACKAGES = "python3.11,python3.11-venv,python3-pip,ca-certificates"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
IMAGE_USER_UID = 10001
# training/ too: the service imports only app/ (app.core holds what training shares with it), issue 15.
FORBIDDEN_NAMES = {"tests", "runs", ".git", "training"}
# A response differs only in its request id; probabilities may differ in the last bits between ONNX Runtime builds.
VOLATILE_KEYS = {"request_id"}
PROBABILITY_TOLERANCE = 1e-6
STARTED = time.monotonic()
STARTED_WALL = time.time()


def log(message: str) -> None:
    print(f"[image-test {time.monotonic() - STARTED:7.1f}s] {message}", file=sys.stderr, flush=True)


class CheckFailed(Exception):
    """One check of the image failed; the message says which and what was found."""


# --- the compose file ---------------------------------------------------------------------------------------------

_INTERPOLATION = re.compile(r"\$(?:(\$)|\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}|([A-Za-z_][A-Za-z0-9_]*))")


def interpolate(value: str, variables: Mapping[str, str]) -> str:
    """Compose's variable substitution: `$$`, `$VAR`, `${VAR}`, `${VAR:-default}`, `${VAR-default}`, `${VAR:?error}`."""

    def substitute(match: re.Match[str]) -> str:
        escaped, name, operator, argument, bare = match.groups()
        if escaped:
            return "$"
        name = name or bare
        found = variables.get(name)
        if operator in (":-", ":?") and not found or operator in ("-", "?") and found is None:
            if operator.endswith("?"):
                raise ValueError(f"compose variable {name} is required: {argument}")
            return argument
        return found or ""

    return _INTERPOLATION.sub(substitute, value)


def interpolate_tree(node: Any, variables: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, variables)
    if isinstance(node, list):
        return [interpolate_tree(item, variables) for item in node]
    if isinstance(node, dict):
        return {key: interpolate_tree(value, variables) for key, value in node.items()}
    return node


@dataclass(frozen=True)
class ComposeService:
    """What Compose would do for one service, with its variables already substituted."""

    build_args: dict[str, str]
    dockerfile: str
    environment: dict[str, str]
    command: list[str] | None
    entrypoint: list[str] | None
    user: str | None
    healthcheck: list[str]
    healthcheck_timeout_s: float
    start_period_s: float
    read_only: bool
    tmpfs: list[str]
    init: bool
    container_port: int


def _as_list(value: str | list[str] | None) -> list[str] | None:
    return shlex.split(value) if isinstance(value, str) else value


def _key_values(value: dict[str, Any] | list[str] | None) -> dict[str, str]:
    if isinstance(value, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in value)
    return {key: "" if item is None else str(item) for key, item in (value or {}).items()}


def compose_duration_seconds(value: str) -> float:
    """Compose durations: `1m30s`, `120s`, `500ms`."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", value)
    if not parts or "".join(number + unit for number, unit in parts) != value:
        raise ValueError(f"not a compose duration: {value!r}")
    return sum(float(number) * units[unit] for number, unit in parts)


def healthcheck_argv(test: list[str] | str) -> list[str]:
    """The command a Compose/Docker health check `test` runs."""
    if isinstance(test, str):
        return ["/bin/sh", "-c", test]
    kind, *rest = test
    if kind == "CMD":
        return rest
    if kind == "CMD-SHELL":
        return ["/bin/sh", "-c", " ".join(rest)]
    raise ValueError(f"health check test must start with CMD or CMD-SHELL, found {kind!r}")


def read_compose_service(
    variables: Mapping[str, str], path: Path = COMPOSE_FILE, name: str = SERVICE
) -> ComposeService:
    """The service as Compose sees it with `variables` in its environment (YAML merge keys resolved by the loader)."""
    services = yaml.safe_load(path.read_text())["services"]
    service = interpolate_tree(services[name], variables)
    build = service.get("build") or {}
    if isinstance(build, str):
        build = {"context": build}
    if Path(build.get("context", ".")) != Path("."):
        raise ValueError(f"{name}: build context {build['context']!r}; this test builds the repository root")
    health = service["healthcheck"]
    if health.get("disable"):
        raise ValueError(f"{name}: the health check is disabled; nothing to wait for")
    (port,) = service["ports"]
    target = port["target"] if isinstance(port, dict) else str(port).split(":")[-1].split("/")[0]
    return ComposeService(
        build_args=_key_values(build.get("args")),
        dockerfile=build.get("dockerfile", "Dockerfile"),
        environment=_key_values(service.get("environment")),
        command=_as_list(service.get("command")),
        entrypoint=_as_list(service.get("entrypoint")),
        user=service.get("user"),
        healthcheck=healthcheck_argv(health["test"]),
        healthcheck_timeout_s=compose_duration_seconds(health.get("timeout", "30s")),
        start_period_s=compose_duration_seconds(health.get("start_period", "0s")),
        read_only=bool(service.get("read_only")),
        tmpfs=_as_list(service.get("tmpfs")) or [],
        init=bool(service.get("init")),
        container_port=int(target),
    )


# --- the image's file system --------------------------------------------------------------------------------------


def writable_paths(root: Path, uid: int, gid: int) -> list[Path]:
    """Files and folders under `root` that `uid`:`gid` may write by their owner and mode bits (symlinks skipped:
    their own mode means nothing)."""
    found = []
    for directory, folders, files in os.walk(root):
        for name in [".", *folders, *files]:
            path = Path(directory, name) if name != "." else Path(directory)
            info = path.lstat()
            if stat.S_ISLNK(info.st_mode):
                continue
            mode = info.st_mode
            if (
                (info.st_uid == uid and mode & stat.S_IWUSR)
                or (info.st_gid == gid and mode & stat.S_IWGRP)
                or mode & stat.S_IWOTH
            ):
                found.append(path)
    return found


def forbidden_paths(root: Path, names: set[str] = FORBIDDEN_NAMES) -> list[Path]:
    """Folders or files under `root` with a name that must never reach the image (the build context leaking)."""
    return sorted(
        Path(directory, name)
        for directory, folders, files in os.walk(root)
        for name in folders + files
        if name in names
    )


def comparable(answer: Any) -> Any:
    """A /v1/predict answer without the fields that differ between any two requests."""
    if isinstance(answer, dict):
        return {key: comparable(value) for key, value in answer.items() if key not in VOLATILE_KEYS}
    return answer


def answers_differ(expected: dict[str, Any], found: dict[str, Any]) -> str | None:
    """None when two /v1/predict answers agree (probabilities within PROBABILITY_TOLERANCE), else what differs."""
    expected, found = comparable(expected), comparable(found)
    difference = abs(expected.get("tumor_probability", 0.0) - found.get("tumor_probability", 0.0))
    if difference > PROBABILITY_TOLERANCE:
        return f"tumor_probability {found.get('tumor_probability')} != {expected.get('tumor_probability')}"
    expected_rest = {key: value for key, value in expected.items() if key != "tumor_probability"}
    found_rest = {key: value for key, value in found.items() if key != "tumor_probability"}
    if expected_rest != found_rest:
        keys = sorted(
            key for key in expected_rest.keys() | found_rest.keys() if expected_rest.get(key) != found_rest.get(key)
        )
        return f"fields {keys} differ: {json.dumps({key: found_rest.get(key) for key in keys})[:400]}"
    return None


def without_models_copy(dockerfile: str) -> str:
    """The Dockerfile with its `COPY models ...` line removed: an image that builds but has no models."""
    kept = [line for line in dockerfile.splitlines() if not re.match(r"^\s*COPY\s+(--\S+\s+)*models\b", line, re.I)]
    if len(kept) == len(dockerfile.splitlines()):
        raise ValueError("the Dockerfile has no `COPY models` line to remove for the broken control")
    return "\n".join(kept) + "\n"


# --- podman -------------------------------------------------------------------------------------------------------


def run(argv: list[str], timeout: float = 3600, check: bool = True, **options: Any) -> subprocess.CompletedProcess:
    return subprocess.run(argv, timeout=timeout, check=check, text=True, **options)


def podman(*arguments: str, timeout: float = 600, check: bool = True) -> str:
    return run(["podman", *arguments], timeout=timeout, check=check, capture_output=True).stdout.strip()


def image_exists(name: str) -> bool:
    return run(["podman", "image", "exists", name], check=False, timeout=60).returncode == 0


def choose_base_image(rebuild_standin: bool) -> str:
    """The real base image when a registry gives it, else the Debian-built stand-in (cached in podman's storage)."""
    if image_exists(OFFICIAL_BASE):
        log(f"base image: {OFFICIAL_BASE} (already pulled)")
        return OFFICIAL_BASE
    try:
        pulled = run(["podman", "pull", "--quiet", OFFICIAL_BASE], check=False, timeout=300, capture_output=True)
    except subprocess.TimeoutExpired:
        reason = "no answer within 300 s"
    else:
        if pulled.returncode == 0:
            log(f"base image: {OFFICIAL_BASE} (pulled)")
            return OFFICIAL_BASE
        reason = (pulled.stderr.strip().splitlines() or ["no reason given"])[-1]
    log(f"base image: {OFFICIAL_BASE} cannot be pulled ({reason[:200]})")
    if image_exists(STANDIN_BASE) and not rebuild_standin:
        created = podman("image", "inspect", "--format", "{{.Created}}", STANDIN_BASE)
        log(f"base image: the Debian stand-in {STANDIN_BASE}, built {created[:19]}, reused from podman's storage")
        return STANDIN_BASE
    build_standin_base()
    return STANDIN_BASE


def build_standin_base() -> None:
    """python:3.11-slim-bookworm's layout from Debian packages: Python 3.11 with venv and pip, `python` in
    /usr/local/bin. Debian's Python, not python.org's build: the same minor version and the same glibc."""
    log(f"base image: building the Debian stand-in {STANDIN_BASE} with debootstrap ({STANDIN_PACKAGES})")
    with tempfile.TemporaryDirectory(prefix="standin-", dir="/var/tmp") as work:
        rootfs = Path(work) / "rootfs"
        run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={STANDIN_PACKAGES}",
                "bookworm",
                str(rootfs),
                DEBIAN_MIRROR,
            ],
            capture_output=True,
        )
        (rootfs / "usr/local/bin/python").symlink_to("/usr/bin/python3.11")
        for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for entry in (rootfs / cache).glob("*"):
                if entry.is_file():
                    entry.unlink()
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "--numeric-owner", "-c", "."], stdout=subprocess.PIPE)
        run(
            [
                "podman",
                "import",
                "--change",
                "ENV LANG=C.UTF-8",
                "--change",
                'CMD ["python"]',
                "--message",
                "Debian stand-in for python:3.11-slim-bookworm",
                "-",
                STANDIN_BASE,
            ],
            stdin=tar.stdout,
            capture_output=True,
        )
        if tar.wait() != 0:
            raise RuntimeError("tar of the stand-in root file system failed")
    log(f"base image: stand-in built, {image_size_mb(STANDIN_BASE):.0f} MB")


def image_size_mb(image: str) -> float:
    return int(podman("image", "inspect", "--format", "{{.Size}}", image)) / 1e6


HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


def host_trust_volumes(folder: Path) -> list[str]:
    """pip in the build's RUN steps verifies TLS with this machine's CA bundle, as the host's pip does: where an
    egress proxy re-signs HTTPS, the base image's own bundle refuses PyPI. Build-time mounts only: the image keeps its
    base's bundle and gets no pip.conf."""
    if not HOST_CA_BUNDLE.is_file():
        return []
    pip_conf = folder / "image-test-pip.conf"
    pip_conf.write_text("[global]\ncert = /run/image-test-host-ca.pem\n")
    return ["--volume", f"{HOST_CA_BUNDLE}:/run/image-test-host-ca.pem:ro", "--volume", f"{pip_conf}:/etc/pip.conf:ro"]


def build_image(tag: str, base_image: str, service: ComposeService, dockerfile: Path) -> float:
    """`podman build` of the repository as Compose would build the service; returns seconds taken."""
    arguments = {"BASE_IMAGE": base_image, **service.build_args}
    argv = [
        "podman",
        "build",
        "--isolation",
        "chroot",
        "--network",
        "host",
        "--layers",
        "--format",
        "docker",
        "--file",
        str(dockerfile),
        "--tag",
        tag,
    ]
    for name, value in arguments.items():
        argv += ["--build-arg", f"{name}={value}"]
    argv += host_trust_volumes(Path(tempfile.gettempdir()))
    log(f"build {tag}: {shlex.join(argv[2:] + [str(REPO_ROOT)])}")
    started = time.monotonic()
    # The build's own output goes to the log: its last lines are what a failure needs.
    build = run([*argv, str(REPO_ROOT)], check=False, timeout=1800, stdout=sys.stderr, stderr=subprocess.STDOUT)
    if build.returncode != 0:
        raise CheckFailed(f"podman build failed with exit code {build.returncode}")
    return time.monotonic() - started


@dataclass(frozen=True)
class ImageConfig:
    env: dict[str, str]
    user: str
    workdir: str
    entrypoint: list[str]
    cmd: list[str]
    start_period_s: float


def healthcheck_start_period_s(image: str, inspected: dict[str, Any]) -> float:
    """The image HEALTHCHECK's start period. podman 4.3's inspect leaves `Healthcheck` out of a docker-format image
    it built, so the build history's HEALTHCHECK line is the fallback."""
    health = inspected.get("Healthcheck") or inspected["Config"].get("Healthcheck")
    if health:
        return health.get("StartPeriod", 0) / 1e9
    history = podman("history", "--no-trunc", "--format", "{{.CreatedBy}}", image).splitlines()
    line = next((entry for entry in history if "HEALTHCHECK" in entry), "")
    match = re.search(r"--start-period=(\S+)", line)
    return compose_duration_seconds(match.group(1)) if match else 0.0


def image_config(image: str) -> ImageConfig:
    (inspected,) = json.loads(podman("image", "inspect", image))
    config = inspected["Config"]
    return ImageConfig(
        env=_key_values(config.get("Env") or []),
        user=config.get("User") or "0:0",
        workdir=config.get("WorkingDir") or "/",
        entrypoint=config.get("Entrypoint") or [],
        cmd=config.get("Cmd") or [],
        start_period_s=healthcheck_start_period_s(image, inspected),
    )


@contextmanager
def mounted_image(image: str) -> Iterator[Path]:
    root = Path(podman("image", "mount", image))
    try:
        yield root
    finally:
        podman("image", "unmount", image, check=False)


def numeric_user(root: Path, user: str) -> tuple[int, int]:
    """uid, gid of a `user[:group]` spec, names resolved in the image's /etc/passwd and /etc/group."""
    name, _, group = user.partition(":")
    passwd = [line.split(":") for line in (root / "etc/passwd").read_text().splitlines() if line]
    groups = [line.split(":") for line in (root / "etc/group").read_text().splitlines() if line]
    entry = next((fields for fields in passwd if name in (fields[0], fields[2])), None)
    uid = int(name) if name.isdigit() else int(entry[2]) if entry else -1
    if uid < 0:
        raise CheckFailed(f"user {name!r} is not in the image's /etc/passwd")
    if group:
        gid = int(group) if group.isdigit() else next(int(fields[2]) for fields in groups if fields[0] == group)
    else:
        gid = int(entry[3]) if entry else 0
    return uid, gid


def home_of(root: Path, uid: int) -> str:
    for line in (root / "etc/passwd").read_text().splitlines():
        fields = line.split(":")
        if len(fields) > 5 and fields[2] == str(uid):
            return fields[5]
    return "/"


# --- starting the image -------------------------------------------------------------------------------------------


class Started(Protocol):
    """A started container: its namespaces are those of `pid`."""

    pid: int
    mode: str

    def exec(self, argv: list[str], timeout: float) -> subprocess.CompletedProcess: ...

    def exited(self) -> int | None: ...

    def logs(self) -> str: ...

    def stop(self) -> None: ...


def runtime_works(image: str) -> tuple[bool, str]:
    """Whether the OCI runtime can start a container here (it cannot where, for one, setrlimit is refused)."""
    probe = run(
        ["podman", "run", "--rm", "--network", "none", "--entrypoint", "true", image],
        check=False,
        timeout=120,
        capture_output=True,
    )
    return probe.returncode == 0, (probe.stderr.strip().splitlines() or [""])[-1][:200]


@dataclass
class PodmanContainer:
    """`podman run` with the compose service's settings."""

    image: str
    service: ComposeService
    command: list[str] | None
    mode: str = "podman run"
    name: str = field(default_factory=lambda: f"brain-tumor-image-test-{os.getpid()}-{time.monotonic_ns()}")
    pid: int = 0

    def start(self) -> PodmanContainer:
        argv = ["podman", "run", "--detach", "--name", self.name, "--network", "none"]
        argv += ["--read-only"] if self.service.read_only else []
        argv += [option for path in self.service.tmpfs for option in ("--tmpfs", path)]
        argv += ["--init"] if self.service.init else []
        argv += ["--user", self.service.user] if self.service.user else []
        argv += [option for key, value in self.service.environment.items() for option in ("--env", f"{key}={value}")]
        if self.service.entrypoint is not None:
            argv += ["--entrypoint", json.dumps(self.service.entrypoint)]
        argv += [self.image, *(self.service.command or [])]
        podman(*argv[1:])
        self.pid = int(podman("inspect", "--format", "{{.State.Pid}}", self.name))
        return self

    def exec(self, argv: list[str], timeout: float) -> subprocess.CompletedProcess:
        return run(["podman", "exec", self.name, *argv], check=False, timeout=timeout, capture_output=True)

    def exited(self) -> int | None:
        state = json.loads(podman("inspect", "--format", "{{json .State}}", self.name))
        return None if state["Running"] else int(state["ExitCode"])

    def logs(self) -> str:
        logs = run(["podman", "logs", self.name], check=False, capture_output=True, timeout=60)
        return logs.stdout + logs.stderr

    def stop(self) -> None:
        podman("rm", "--force", "--time", "30", self.name, check=False)


# Mount and network namespaces of their own; the image's root read only (as `read_only: true`), /proc, /sys and /dev
# from the host, a tmpfs for each of the service's tmpfs paths, loopback up; then the command as the image's user.
_CHROOT_SETUP = """set -e
root=$1; userspec=$2; shift 2
ip link set lo up
mount --rbind /proc "$root/proc"
mount --rbind /sys "$root/sys"
mount --rbind /dev "$root/dev"
for path in $TMPFS_PATHS; do mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$root$path"; done
exec chroot --userspec="$userspec" "$root" "$@"
"""


@dataclass
class ChrootContainer:
    """The image's root file system, run as the image's user in its own mount and network namespaces."""

    root: Path
    uid: int
    gid: int
    workdir: str
    environment: dict[str, str]
    argv: list[str]
    tmpfs: list[str]
    mode: str = "chroot of the image's root file system (podman image mount)"
    pid: int = 0
    process: subprocess.Popen | None = None
    log_file: Any = None

    def _in_root(self, argv: list[str]) -> list[str]:
        environment = [f"{key}={value}" for key, value in self.environment.items()]
        return ["/usr/bin/env", "-i", "-C", self.workdir, *environment, *argv]

    def start(self) -> ChrootContainer:
        self.log_file = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 (read by logs(), closed by stop())
        self.process = subprocess.Popen(
            [
                "unshare",
                "--mount",
                "--net",
                "--fork",
                "--kill-child",
                "sh",
                "-c",
                _CHROOT_SETUP,
                "chroot-setup",
                str(self.root),
                f"{self.uid}:{self.gid}",
                *self._in_root(self.argv),
            ],
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "TMPFS_PATHS": " ".join(self.tmpfs)},
            stdout=self.log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        # unshare --fork: the container's first process is its child, in the new namespaces.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not self.pid:
            children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
            with suppress(OSError, ValueError, IndexError):
                self.pid = int(children.read_text().split()[0])
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        if not self.pid:
            raise CheckFailed(f"the chroot container did not start: {self.logs()[-2000:]}")
        return self

    def exec(self, argv: list[str], timeout: float) -> subprocess.CompletedProcess:
        command = [
            "nsenter",
            f"--target={self.pid}",
            "--mount",
            "--net",
            "--",
            "chroot",
            f"--userspec={self.uid}:{self.gid}",
            str(self.root),
            *self._in_root(argv),
        ]
        return run(command, check=False, timeout=timeout, capture_output=True, env={"PATH": "/usr/sbin:/usr/bin"})

    def exited(self) -> int | None:
        return self.process.poll() if self.process else 0

    def logs(self) -> str:
        self.log_file.seek(0)
        return self.log_file.read()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=40)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)


# --- talking to it ------------------------------------------------------------------------------------------------

# Run in the container's network namespace with this interpreter (the checkout's venv, httpx installed).
_PREDICT_CLIENT = """import json, sys, httpx
with open(sys.argv[2], "rb") as upload:
    response = httpx.post(sys.argv[1], files={"file": (sys.argv[3], upload, sys.argv[4])}, timeout=120)
print(json.dumps({"status": response.status_code, "body": response.text}))
"""


def predict_in_namespace(pid: int, port: int, name: str, path: Path, content_type: str) -> tuple[int, str]:
    client = run(
        [
            "nsenter",
            f"--target={pid}",
            "--net",
            "--",
            sys.executable,
            "-c",
            _PREDICT_CLIENT,
            f"http://127.0.0.1:{port}{PREDICT_PATH}",
            str(path),
            name,
            content_type,
        ],
        capture_output=True,
        timeout=180,
    )
    reply = json.loads(client.stdout)
    return reply["status"], reply["body"]


def listening_process(pid: int, port: int) -> int:
    """The process holding the TCP socket that listens on `port` in `pid`'s network namespace."""
    inodes = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A":  # 0A: LISTEN
                inodes.add(fields[9])
    for process in Path("/proc").iterdir():
        if not process.name.isdigit():
            continue
        with suppress(OSError):
            for descriptor in (process / "fd").iterdir():
                with suppress(OSError):
                    if os.readlink(descriptor) in {f"socket:[{inode}]" for inode in inodes}:
                        return int(process.name)
    raise CheckFailed(f"no process listens on port {port} in the container")


def process_ids(pid: int) -> tuple[int, int]:
    """Real uid and gid of a process."""
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return int(status["Uid"].split()[0]), int(status["Gid"].split()[0])


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def checkout_answers(service: ComposeService) -> dict[str, dict[str, Any]]:
    """The answers of `brain-tumor serve`, run from the checkout with the service's INFERENCE_RUNTIME, to UPLOADS."""
    port = free_port()
    environment = {
        **os.environ,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "MODEL_DIR": str(REPO_ROOT / "models"),
        "INFERENCE_RUNTIME": service.environment.get("INFERENCE_RUNTIME", "keras"),
        "LOG_LEVEL": "WARNING",
    }
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "brain-tumor"), "serve"],
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                if server.poll() is not None:
                    raise RuntimeError(f"the checkout's service exited with code {server.returncode}")
                with suppress(httpx.TransportError):
                    if client.get("/health/ready").status_code == 200:
                        break
                time.sleep(0.2)
            else:
                raise RuntimeError("the checkout's service was not ready within 300 s")
            answers = {}
            for name, path, content_type in UPLOADS:
                response = client.post(PREDICT_PATH, files={"file": (name, path.read_bytes(), content_type)})
                response.raise_for_status()
                answers[name] = response.json()
            return answers
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=40)
        except subprocess.TimeoutExpired:
            server.kill()


# --- the checks ---------------------------------------------------------------------------------------------------


@dataclass
class Report:
    name: str
    results: dict[str, Any] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    def check(self, name: str, ok: bool, detail: str) -> None:
        self.results[name] = {"ok": ok, "detail": detail}
        log(f"{self.name}: {'PASS' if ok else 'FAIL'} {name}: {detail}")
        if not ok:
            self.failures.append(f"{name}: {detail}")


def check_file_system(report: Report, root: Path, config: ImageConfig, service: ComposeService) -> tuple[int, int]:
    """Static checks on the image's files: owner and mode bits, no build-context leftovers."""
    uid, gid = numeric_user(root, service.user or config.user)
    report.check("runs as uid 10001", uid == IMAGE_USER_UID, f"the service's user is {uid}:{gid}")
    entry = (service.entrypoint or config.entrypoint or [""])[0]
    path = (service.environment.get("PATH") or config.env.get("PATH", "")).split(":")
    executable = next((Path(folder) / entry for folder in path if (root / folder.lstrip("/") / entry).exists()), None)
    if executable is None:
        report.check("entry point present", False, f"{entry!r} is on no folder of PATH {':'.join(path)}")
        return uid, gid
    model_dir = service.environment.get("MODEL_DIR") or config.env.get("MODEL_DIR", "")
    # The code: the working directory (the sources) and the environment the entry point lives in (/opt/venv).
    protected = {"models": model_dir, "code": config.workdir, "environment": str(executable.parent.parent)}
    for label, folder in protected.items():
        inside = root / folder.lstrip("/")
        if not inside.is_dir():
            report.check(f"{label} not writable", False, f"{folder} is not a folder in the image")
            continue
        writable = writable_paths(inside, uid, gid)
        shown = ", ".join("/" + str(path.relative_to(root)) for path in writable[:5])
        report.check(
            f"{label} not writable",
            not writable,
            f"{folder}: {len(writable)} writable by {uid}:{gid}" + (f" ({shown})" if writable else ""),
        )
    leaked = forbidden_paths(root / config.workdir.lstrip("/"))
    report.check(
        "no tests/, runs/, .git, training/",
        not leaked,
        ", ".join("/" + str(path.relative_to(root)) for path in leaked) or f"none under {config.workdir}",
    )
    return uid, gid


def last_log_lines(log_text: str, count: int = 3) -> list[str]:
    """The service log's last records, a JSON record as its level, message and the last line of its exception."""
    lines = []
    for line in log_text.strip().splitlines()[-count:]:
        try:
            record = json.loads(line)
        except ValueError:
            lines.append(line[-300:])
            continue
        exception = str(record.get("exception", "")).strip().splitlines()[-1:]
        lines.append(f"{record.get('level')} {record.get('message')}" + "".join(f" ({line})" for line in exception))
    return lines


def wait_until_healthy(
    report: Report,
    container: Started,
    service: ComposeService,
    deadline_s: float,
    check: str = "ready within the start period",
) -> None:
    started = time.monotonic()
    last = ""
    while time.monotonic() - started < deadline_s:
        exit_code = container.exited()
        if exit_code is not None:
            raise CheckFailed(
                f"the service exited with code {exit_code} before it was ready; its log ends: "
                + " | ".join(last_log_lines(container.logs()))
            )
        probe = container.exec(service.healthcheck, timeout=service.healthcheck_timeout_s + 5)
        if probe.returncode == 0:
            report.check(
                check,
                True,
                f"health check passed after {time.monotonic() - started:.1f} s (limit {deadline_s:g} s): "
                + probe.stdout.strip()[-200:],
            )
            return
        last = (probe.stderr.strip().splitlines() or [""])[-1][:200]
        time.sleep(1.0)
    raise CheckFailed(f"health check still failing after {deadline_s:g} s: {last}")


def new_container(
    image: str,
    service: ComposeService,
    root: Path,
    user: tuple[int, int],
    config: ImageConfig,
    argv: list[str],
    container_runtime: bool,
) -> PodmanContainer | ChrootContainer:
    """A container (not started) running `argv` of `image` as Compose's `service` would: `podman run` where the OCI
    runtime works, else the image's root file system (`root`) under chroot as the image's user."""
    if container_runtime:
        return PodmanContainer(image, service, service.command)
    environment = {"HOME": home_of(root, user[0]), **config.env, **service.environment}
    return ChrootContainer(root, user[0], user[1], config.workdir, environment, argv, service.tmpfs)


def check_image(
    name: str,
    image: str,
    service: ComposeService,
    expected: dict[str, dict[str, Any]] | None,
    container_runtime: bool,
) -> Report:
    report = Report(name)
    config = image_config(image)
    size = image_size_mb(image)
    report.results["image_size_mb"] = round(size, 1)
    log(f"{name}: image {image}, {size:.0f} MB")
    start_period = min(config.start_period_s or float("inf"), service.start_period_s or float("inf"))
    report.check(
        "HEALTHCHECK start period",
        0 < start_period < float("inf"),
        f"image {config.start_period_s:g} s, compose {service.start_period_s:g} s",
    )
    argv = (service.entrypoint if service.entrypoint is not None else config.entrypoint) + (
        service.command if service.command is not None else config.cmd
    )
    with mounted_image(image) as root:
        uid, gid = check_file_system(report, root, config, service)
        container = new_container(image, service, root, (uid, gid), config, argv, container_runtime)
        log(
            f"{name}: starting {shlex.join(argv)} ({container.mode}), environment from compose: "
            + " ".join(f"{key}={value}" for key, value in service.environment.items() if "PASSWORD" not in key)
        )
        try:
            container.start()
            wait_until_healthy(report, container, service, start_period)
            server = listening_process(container.pid, service.container_port)
            found_uid, found_gid = process_ids(server)
            report.check(
                "process uid 10001",
                found_uid == IMAGE_USER_UID,
                f"the process listening on {service.container_port} runs as {found_uid}:{found_gid}",
            )
            probe = container.exec(
                ["python", "-c", _WRITE_PROBE, service.environment.get("MODEL_DIR", ""), config.workdir], timeout=60
            )
            report.check(
                "cannot write code or models at run time",
                probe.returncode == 0,
                (probe.stdout.strip() or probe.stderr.strip())[-300:],
            )
            release = container.exec(["python", "-c", _RELEASE_PROBE], timeout=60)
            report.check(
                "names the checkout's release",
                release.stdout.strip() == checkout_version(),
                f"{(release.stdout.strip() or release.stderr.strip())[-300:]} (pyproject.toml: {checkout_version()})",
            )
            for upload, path, content_type in UPLOADS:
                check = f"/v1/predict answers {upload} as the checkout"
                status, body = predict_in_namespace(container.pid, service.container_port, upload, path, content_type)
                if status != 200:
                    report.check(check, False, f"status {status}: {body[:300]}")
                    continue
                if expected is None:
                    continue  # the broken control: any answer but 200 is what it must show
                answer = json.loads(body)
                difference = answers_differ(expected[upload], answer)
                report.check(
                    check,
                    difference is None,
                    difference
                    or f"tumor_probability {answer['tumor_probability']:.6f}, "
                    f"mask area {(answer.get('mask') or {}).get('area_pixels')} px, same as the checkout",
                )
        except CheckFailed as failure:
            report.check("starts and serves", False, str(failure))
        finally:
            container.stop()
        if name == "keras" and expected is not None:
            check_dicom_node_health(report, image, root, uid, gid, config, start_period, container_runtime)
    return report


def check_dicom_node_health(
    report: Report,
    image: str,
    root: Path,
    uid: int,
    gid: int,
    config: ImageConfig,
    start_period: float,
    container_runtime: bool,
) -> None:
    """The DICOM node from the same image, as Compose's `dicom-node` service runs it (its spool volume a tmpfs here):
    the image's HEALTHCHECK, which asked every container for the API's /health/ready, must call it healthy once its
    models are loaded (its heartbeat file). pacs-sync writes the same heartbeat, but needs an Orthanc to start."""
    node = read_compose_service(VARIANTS["keras"], name="dicom-node")
    node = replace(node, tmpfs=[*node.tmpfs, "/home/app"])
    argv = (node.entrypoint if node.entrypoint is not None else config.entrypoint) + (node.command or config.cmd)
    container = new_container(image, node, root, (uid, gid), config, argv, container_runtime)
    log(f"keras: starting {shlex.join(argv)} ({container.mode}) for its health check")
    try:
        container.start()
        wait_until_healthy(report, container, node, start_period, check="dicom-node healthy by the image's probe")
    except CheckFailed as failure:
        report.check("dicom-node healthy by the image's probe", False, str(failure))
    finally:
        container.stop()


# Run inside the container: the release the image's package says it is (SEGs, SRs, /v1/models carry it).
_RELEASE_PROBE = "from app.release import service_version; print(service_version())"


def checkout_version() -> str:
    """pyproject.toml's version: what an image built from this checkout must name."""
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["version"]


# Run inside the container as its user: writing next to the models and the code must fail.
_WRITE_PROBE = """import sys
refused = []
for folder in sys.argv[1:]:
    try:
        open(folder + "/.image-test-write-probe", "x").close()
    except OSError as error:
        refused.append(f"{folder}: {error.strerror}")
    else:
        sys.exit(f"{folder} is writable")
print("; ".join(refused))
"""


# --- main ---------------------------------------------------------------------------------------------------------

# The variables the README's Compose commands set for each image.
VARIANTS: dict[str, dict[str, str]] = {
    "keras": {},
    "onnx": {"EXTRAS": "onnx", "INFERENCE_RUNTIME": "onnxruntime"},
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--variant", action="append", choices=sorted(VARIANTS), help="which build to test (repeatable; default: all)"
    )
    parser.add_argument(
        "--no-broken-control",
        dest="broken_control",
        action="store_false",
        help="skip the Dockerfile without `COPY models` that must fail",
    )
    parser.add_argument("--base-image", help="use this base image instead of choosing one")
    parser.add_argument("--rebuild-standin", action="store_true", help="rebuild the Debian stand-in base image")
    parser.add_argument("--report", type=Path, help="write the results as JSON here")
    parser.add_argument(
        "--no-prune",
        dest="prune",
        action="store_false",
        help="keep the untagged layers earlier runs left in podman's storage (by default they are removed)",
    )
    args = parser.parse_args(argv)
    for tool in ("podman", "unshare", "nsenter", "chroot"):
        if shutil.which(tool) is None:
            parser.error(f"{tool} is not installed: run .ci/install-system-packages.sh as root")
    if os.geteuid() != 0:
        parser.error("needs root (rootful podman, chroot, namespaces)")

    base_image = args.base_image or choose_base_image(args.rebuild_standin)
    reports: list[Report] = []
    summary: dict[str, Any] = {"base_image": base_image, "builds": {}}
    container_runtime: bool | None = None
    for variant in args.variant or list(VARIANTS):
        service = read_compose_service(VARIANTS[variant])
        tag = f"localhost/brain-tumor-service:image-test-{variant}"
        try:
            seconds = build_image(tag, base_image, service, REPO_ROOT / service.dockerfile)
        except CheckFailed as failure:
            report = Report(variant)
            report.check("builds", False, str(failure))
            reports.append(report)
            continue
        log(f"{variant}: built in {seconds:.0f} s")
        if container_runtime is None:
            container_runtime, reason = runtime_works(tag)
            log(
                "containers: podman run works"
                if container_runtime
                else f"containers: the OCI runtime cannot start one here ({reason}); running the image's root file "
                "system with chroot as its user instead"
            )
        expected = checkout_answers(service)
        report = check_image(variant, tag, service, expected, container_runtime)
        report.results["build_seconds"] = round(seconds)
        reports.append(report)
        summary["builds"][variant] = report.results

    if args.broken_control:
        summary["broken_control"] = broken_control(base_image, bool(container_runtime))
    if args.prune:
        prune_earlier_build_layers()
    summary["seconds"] = round(time.monotonic() - STARTED)
    if args.report:
        args.report.write_text(json.dumps(summary, indent=2) + "\n")
    failures = [f"{report.name}: {failure}" for report in reports for failure in report.failures]
    if summary.get("broken_control", {}).get("ok") is False:
        failures.append("broken control: the image without models passed every check")
    for report in reports:
        log(
            f"summary {report.name}: {'FAIL' if report.failures else 'PASS'}, "
            f"image {report.results.get('image_size_mb', '?')} MB, build {report.results.get('build_seconds', '?')} s"
        )
    log(f"{'FAILED' if failures else 'PASSED'} in {summary['seconds']} s" + "".join(f"\n  {item}" for item in failures))
    return 1 if failures else 0


def prune_earlier_build_layers() -> None:
    """Remove the untagged images that builds before this run left behind, keeping this run's as the next build's
    cache. Each run tags its images anew and the layers of the images it replaced stay behind untagged: on the build
    machine they had grown to 60 GB when a build failed with "no space left on device"."""
    started = datetime.fromtimestamp(STARTED_WALL, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    result = run(
        ["podman", "image", "prune", "--force", "--filter", f"until={started}"],
        check=False,
        timeout=600,
        capture_output=True,
    )
    removed = len(result.stdout.split())
    log(
        f"podman storage: removed {removed} untagged images older than this run"
        if result.returncode == 0
        else f"podman storage: prune failed ({result.stderr.strip()[:200]}); nothing removed"
    )


def broken_control(base_image: str, container_runtime: bool) -> dict[str, Any]:
    """Build and check a Dockerfile without `COPY models`: the checks must fail, or they prove nothing."""
    service = read_compose_service(VARIANTS["keras"])
    tag = "localhost/brain-tumor-service:image-test-broken"
    with tempfile.TemporaryDirectory(prefix="image-test-") as work:
        dockerfile = Path(work) / "Dockerfile"
        dockerfile.write_text(without_models_copy((REPO_ROOT / service.dockerfile).read_text()))
        log("broken control: the Dockerfile without its `COPY models` line must fail these checks")
        try:
            build_image(tag, base_image, service, dockerfile)
        except CheckFailed as failure:
            log(f"broken control: failed as it must ({failure})")
            return {"ok": True, "failures": [str(failure)]}
    report = check_image("broken control", tag, service, None, container_runtime)
    log(f"broken control: {'failed as it must' if report.failures else 'PASSED, so the checks prove nothing'}")
    return {"ok": bool(report.failures), "failures": report.failures}


if __name__ == "__main__":
    sys.exit(main())
