"""Dependencies run one way: `app` -> `app.core` <- `training`, so the service image ships without `training/`; and
only the HTTP edge (`app/main.py`, `app/api/`) knows the web framework: the rest raises domain errors that
`app/api/handlers.py` maps to HTTP statuses.

Walks every module's imports (top level and inside functions) with `ast`, without importing anything.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("app", "training")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """Absolute names of the modules `path` imports (relative imports resolved against its package)."""
    package = module_name(path).rsplit(".", 1)[0] if path.name != "__init__.py" else module_name(path)
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def import_graph() -> dict[str, set[str]]:
    """Our modules -> the modules of ours they import."""
    paths = [path for package in PACKAGES for path in (REPO_ROOT / package).rglob("*.py")]
    modules = {module_name(path): path for path in paths}
    return {
        name: {imported for imported in imported_modules(path) if imported in modules} for name, path in modules.items()
    }


def is_core(module: str) -> bool:
    return module == "app.core" or module.startswith("app.core.")


GRAPH = import_graph()


def test_the_graph_covers_the_packages() -> None:
    assert "app.core.preprocessing" in GRAPH and "app.api.routes.predict" in GRAPH and "training.evaluate" in GRAPH


@pytest.mark.parametrize("module", sorted(name for name in GRAPH if name.startswith("app")))
def test_app_never_imports_training(module: str) -> None:
    assert not [name for name in GRAPH[module] if name.split(".")[0] == "training"]


@pytest.mark.parametrize("module", sorted(name for name in GRAPH if is_core(name)))
def test_core_imports_only_core(module: str) -> None:
    assert not [name for name in GRAPH[module] if name != "app" and not is_core(name)]


@pytest.mark.parametrize("module", sorted(name for name in GRAPH if name.startswith("training")))
def test_training_imports_only_the_core_of_app(module: str) -> None:
    assert not [name for name in GRAPH[module] if name.split(".")[0] == "app" and name != "app" and not is_core(name)]


def test_packages_depend_one_way() -> None:
    """Between `app` (outside the core), `app.core` and `training` the only edges are app -> core <- training."""

    def group(module: str) -> str:
        return "core" if is_core(module) else module.split(".")[0]

    edges = {(group(source), group(target)) for source, targets in GRAPH.items() for target in targets}
    crossing = {(source, target) for source, target in edges if source != target}
    assert crossing == {("app", "core"), ("training", "core")}


WEB_FRAMEWORKS = ("fastapi", "starlette")


def is_web_edge(module: str) -> bool:
    return module == "app.main" or module == "app.api" or module.startswith("app.api.")


OUTSIDE_THE_WEB_EDGE = [
    path for path in sorted((REPO_ROOT / "app").rglob("*.py")) if not is_web_edge(module_name(path))
]


def test_the_web_rule_sees_the_modules_it_guards() -> None:
    guarded = {module_name(path) for path in OUTSIDE_THE_WEB_EDGE}
    assert {"app.prediction", "app.node.dicom_node", "app.core.preprocessing"} <= guarded and "app.main" not in guarded


@pytest.mark.parametrize("path", OUTSIDE_THE_WEB_EDGE, ids=module_name)
def test_only_the_web_edge_imports_fastapi_or_starlette(path: Path) -> None:
    web = sorted(name for name in imported_modules(path) if name.split(".")[0] in WEB_FRAMEWORKS)
    assert not web, f"{module_name(path)} imports {web}: only app/main.py and app/api/ may"


# The request flow: what reads a request's files within its limits and chooses what the models read.
REQUEST_FLOW = (
    "app.uploads",
    "app.series.reading",
    "app.series.choice",
    "app.series.sequence_roles",
    "app.prediction",
    "app.study_analysis",
    "app.payloads",
    "app.batching",
    "app.node",
    "app.pacs",
)


@pytest.mark.parametrize("module", sorted(name for name in GRAPH if name.startswith("app.dicom.")))
def test_dicom_objects_know_no_request_flow(module: str) -> None:
    """`app.dicom` reads and writes DICOM objects; which files of a request are read, within which limits, is the
    flow's (`app.series.reading`). Before, `dicom_series` imported the upload limits and the series choice."""
    flow = sorted(
        name for name in GRAPH[module] if any(name == part or name.startswith(f"{part}.") for part in REQUEST_FLOW)
    )
    assert not flow, f"{module} imports {flow}"
