"""The README documents every setting the service reads."""

from __future__ import annotations

from app.settings import Settings
from tests.conftest import REPO_ROOT


def test_readme_configuration_table_lists_every_setting():
    readme = (REPO_ROOT / "README.md").read_text()
    missing = [name.upper() for name in Settings.model_fields if f"| `{name.upper()}` |" not in readme]
    assert not missing, f"settings missing from the README's configuration table: {missing}"
