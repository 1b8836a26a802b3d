"""Write the project's runtime requirements from pyproject.toml, with the TensorFlow distribution swapped if asked.

The Docker build installs these requirements first and then the project itself with ``--no-deps``. pyproject.toml pins
``tensorflow-cpu``; the GPU image needs ``tensorflow[and-cuda]`` at the same version instead. Both distributions install
the same ``tensorflow`` package, so they must never be installed together, and pip has no way to override one
dependency of a project: hence this one swap, made here, with the version still read from pyproject.toml so the CPU
and GPU images cannot drift apart.
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from collections.abc import Sequence
from pathlib import Path

PINNED_TENSORFLOW = "tensorflow-cpu"
# A requirement's name ends where its extras, version specifier, marker or URL begin.
_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def requirement_name(requirement: str) -> str:
    """Normalised distribution name of a PEP 508 requirement (``Tensorflow_CPU>=2`` -> ``tensorflow-cpu``)."""
    match = _NAME.match(requirement)
    if match is None:
        raise ValueError(f"Not a PEP 508 requirement: {requirement!r}.")
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


def runtime_requirements(
    pyproject: Path, tensorflow_package: str = PINNED_TENSORFLOW, extras: Sequence[str] = ()
) -> list[str]:
    """``[project].dependencies`` of ``pyproject``, with ``tensorflow-cpu`` replaced by ``tensorflow_package``, then
    the requirements of each optional-dependency group named in ``extras``.

    Parameters
    ----------
    pyproject
        Path of the project's pyproject.toml.
    tensorflow_package
        Distribution (with extras) to install instead of the pinned one, e.g. ``tensorflow[and-cuda]``.
    extras
        Names of ``[project.optional-dependencies]`` groups to add, e.g. ``onnx`` for ONNX Runtime.

    Returns
    -------
    list[str]
        One requirement per item, in pyproject order.

    Raises
    ------
    ValueError
        If pyproject.toml does not pin ``tensorflow-cpu`` exactly once, so there is nothing unambiguous to swap, or an
        extra is not one of its optional-dependency groups.
    """
    project = tomllib.loads(pyproject.read_text())["project"]
    dependencies: list[str] = project["dependencies"]
    groups: dict[str, list[str]] = project.get("optional-dependencies", {})
    unknown = [extra for extra in extras if extra not in groups]
    if unknown:
        raise ValueError(f"{pyproject} has no optional-dependency group {unknown}; it has {sorted(groups)}.")
    pinned = [dep for dep in dependencies if requirement_name(dep) == PINNED_TENSORFLOW]
    if len(pinned) != 1:
        raise ValueError(f"{pyproject} must list {PINNED_TENSORFLOW} exactly once; found {pinned}.")
    specifier = _NAME.sub("", pinned[0], count=1)
    swapped = [f"{tensorflow_package}{specifier}" if dep == pinned[0] else dep for dep in dependencies]
    return swapped + [requirement for extra in extras for requirement in groups[extra]]


def main(argv: list[str] | None = None) -> None:
    """Print the requirements, one per line, for ``pip install -r``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pyproject", type=Path, help="path of pyproject.toml")
    parser.add_argument(
        "--tensorflow",
        default=PINNED_TENSORFLOW,
        help=f"TensorFlow distribution to install instead of {PINNED_TENSORFLOW} (default: keep it)",
    )
    parser.add_argument(
        "--extras",
        default="",
        help="comma-separated optional-dependency groups to add, e.g. onnx (default: none)",
    )
    args = parser.parse_args(argv)
    extras = [extra.strip() for extra in args.extras.split(",") if extra.strip()]
    requirements = runtime_requirements(args.pyproject, args.tensorflow, extras)
    sys.stdout.write("".join(f"{line}\n" for line in requirements))


if __name__ == "__main__":
    main()
