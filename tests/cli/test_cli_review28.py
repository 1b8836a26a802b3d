"""Operations review 28: the daemons (serve, dicom-node, pacs-sync) started wrong say so in one line with the
documented exit code, before or instead of running in a state that cannot work."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from app import cli
from app.settings import get_settings


@pytest.fixture(autouse=True)
def fresh_settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Settings read from this test's environment; the commands' JSON logging left out of the test process."""
    monkeypatch.setattr("app.logging_config.configure_logging", lambda level: None)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def run(capsys: pytest.CaptureFixture[str], *arguments: str) -> tuple[int, str, str]:
    code = cli.main(list(arguments))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize(
    ("option", "why"),
    [("--host", "it would listen on every interface"), ("--spool-dir", "the spool would be the working directory")],
)
@pytest.mark.parametrize("value", ["", "  "])
def test_dicom_node_refuses_an_empty_host_or_spool_option(
    option: str,
    why: str,
    value: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`--host ""` listened on 0.0.0.0 and `--spool-dir ""` spooled into the working directory (finding 3), while
    the same values of DICOM_NODE_HOST and DICOM_NODE_SPOOL_DIR are refused."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("app.inference.Predictor.from_model_dir", lambda *args, **kwargs: pytest.fail("no models"))

    code, out, err = run(capsys, "dicom-node", "--port", "11112", option, value)

    assert code == cli.EXIT_USAGE
    assert out == ""
    assert err == f"brain-tumor dicom-node: error: {option} must not be empty ({why}); leave it out for the default\n"
    assert list(tmp_path.iterdir()) == []
