"""What the command-line tests share: settings read afresh from each test's environment, and a command's run."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from app import cli
from app.settings import get_settings


@pytest.fixture
def fresh_settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Settings read from this test's environment; the commands' JSON logging left out of the test process."""
    monkeypatch.setattr("app.logging_config.configure_logging", lambda level: None)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def run(capsys: pytest.CaptureFixture[str], *arguments: str) -> tuple[int, str, str]:
    """`brain-tumor <arguments>` in this process: its exit code, standard output and standard error."""
    code = cli.main(list(arguments))
    captured = capsys.readouterr()
    return code, captured.out, captured.err
