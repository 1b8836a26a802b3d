"""The README documents every setting the service reads, and names every module in its layout table."""

from __future__ import annotations

from app.settings import Settings
from tests.conftest import REPO_ROOT


def test_readme_configuration_table_lists_every_setting():
    readme = (REPO_ROOT / "README.md").read_text()
    missing = [name.upper() for name in Settings.model_fields if f"| `{name.upper()}` |" not in readme]
    assert not missing, f"settings missing from the README's configuration table: {missing}"


def test_readme_layout_table_names_every_module():
    """A newcomer's map: a module missing from it is one they cannot find (a review found 17 left out)."""
    readme = (REPO_ROOT / "README.md").read_text()
    layout = readme[readme.index("## Layout") :]
    layout = layout[: layout.index("\n## ", 1)]
    modules = [
        path
        for folder in ("app", "training")
        for path in sorted((REPO_ROOT / folder).rglob("*.py"))
        if path.name != "__init__.py"
    ]
    missing = [str(path.relative_to(REPO_ROOT)) for path in modules if f"`{path.name}`" not in layout]
    assert modules and not missing, f"modules the README's layout table does not name: {missing}"
