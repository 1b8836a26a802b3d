"""A layering rule a reader relies on: only the HTTP edge knows about the web framework (the rules between app,
app.core and training are in `tests/core/test_import_graph.py`).

The domain code (decoding, prediction, DICOM, the node, pacs-sync, the CLI) raises domain errors that
`app/api/handlers.py` maps to HTTP statuses; a FastAPI or Starlette import there would tie it to the web layer.
Imports are read with `ast`, including those inside functions and under `TYPE_CHECKING`, without importing anything.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
WEB_FRAMEWORKS = ("fastapi", "starlette")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """Absolute names of the modules `path` imports, and of the names it imports from them (`from a import b` gives
    `a` and `a.b`, since `b` may be a module); relative imports are resolved against the file's package."""
    module = module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
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


def is_under(name: str, package: str) -> bool:
    return name == package or name.startswith(f"{package}.")


def python_files(package: str) -> list[Path]:
    return sorted((REPO_ROOT / package).rglob("*.py"))


def allowed_to_import_web_framework(path: Path) -> bool:
    """`app/main.py` assembles the application; `app/api/` is the HTTP edge (routes, middleware, handlers)."""
    module = module_name(path)
    return module == "app.main" or is_under(module, "app.api")


APP_OUTSIDE_THE_WEB_EDGE = [path for path in python_files("app") if not allowed_to_import_web_framework(path)]


def test_the_rules_see_the_modules_they_guard() -> None:
    """Guards against a wrong root or glob, which would make every parametrised test below pass on nothing."""
    checked = {module_name(path) for path in APP_OUTSIDE_THE_WEB_EDGE}
    assert {"app.prediction", "app.core.preprocessing", "app.cli"} <= checked
    assert "app.main" not in checked and "app.api.routes.predict" not in checked


@pytest.mark.parametrize("path", APP_OUTSIDE_THE_WEB_EDGE, ids=module_name)
def test_only_the_web_edge_imports_fastapi_or_starlette(path: Path) -> None:
    web_imports = sorted(
        name for name in imported_modules(path) if any(is_under(name, framework) for framework in WEB_FRAMEWORKS)
    )
    assert not web_imports, f"{module_name(path)} imports {web_imports}: only app/main.py and app/api/ may"
