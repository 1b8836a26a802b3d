"""The README documents every setting the service reads, and names every module in its layout table."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
import requests
import tifffile
import yaml

from app.imaging import decode_image, is_stretched
from app.pacs.orthanc_client import network_failure
from app.security import ApiKeyStore, KeyConfigurationError, hash_key
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


def errors_table_row(readme: str, code: str) -> str:
    """The README Errors table's row of one error code."""
    return next(line for line in readme.splitlines() if line.startswith("| ") and f"| `{code}` |" in line)


def test_readme_errors_table_gives_two_host_headers_the_status_serve_answers():
    """Docs review 45 F6: the 403 row said two Host headers get 403; `brain-tumor serve` answers them 400
    (`tests/security/test_server_limits.py`), before the app."""
    readme = (REPO_ROOT / "README.md").read_text()
    row = errors_table_row(readme, "host_not_allowed")

    assert "Two Host headers are 400 `invalid_http_request` at `brain-tumor serve`" in row
    assert "or there are two Host headers;" not in row


def test_readme_says_how_to_trust_a_private_ca_for_an_https_orthanc():
    """Docs review 45 F1: the README recommended TLS for Orthanc but not how pacs-sync trusts a hospital's CA; it
    quotes the message pacs-sync gives for an untrusted certificate."""
    readme = " ".join((REPO_ROOT / "README.md").read_text().split())
    untrusted = requests.exceptions.SSLError("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed")

    assert "`REQUESTS_CA_BUNDLE=/path/to/hospital-ca.pem`" in readme
    assert f"failed after 5 attempts: {network_failure(untrusted)}" in readme


def test_readme_key_rotation_recipe_holds(tmp_path):
    """Docs review 45 F3: the README said nothing on rotating keys. Its recipe rests on two facts: one id cannot
    hold two keys (the message it quotes), and a second id can hold the new key beside the old."""
    readme = " ".join((REPO_ROOT / "README.md").read_text().split())
    keys = tmp_path / "keys.txt"
    keys.write_text(f"alice:{hash_key('old-secret-0123456789')}\nalice:{hash_key('new-secret-0123456789')}\n")
    with pytest.raises(KeyConfigurationError) as raised:
        ApiKeyStore.from_settings([], keys)
    keys.write_text(f"alice:{hash_key('old-secret-0123456789')}\nalice-2:{hash_key('new-secret-0123456789')}\n")
    store = ApiKeyStore.from_settings([], keys)

    assert "**Rotating a key**" in readme
    assert f"(`{str(raised.value).split(': ', 1)[1]}`, exit 2)" in readme
    assert store.authenticate("old-secret-0123456789") == "alice"
    assert store.authenticate("new-secret-0123456789") == "alice-2"


def readme_bullet(readme: str, title: str) -> str:
    """One bullet of the README, from its bold title to the next bullet of its level."""
    start = readme.index(f"- **{title}**")
    end = readme.find("\n- **", start + 1)
    return readme[start:end]


def test_readme_back_up_says_how_and_names_the_compose_volumes():
    """Docs review 45 F4: the README named what to back up, not whether the node must be stopped, how to copy the
    Compose volumes, or that the spool holds patient data."""
    readme = (REPO_ROOT / "README.md").read_text()
    backup = readme_bullet(readme, "Back up")
    compose = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())

    for volume in ("dicom-node-spool", "pacs-sync-state"):
        assert f"`{compose['name']}_{volume}`" in backup
    assert "docker compose stop dicom-node" in backup
    assert "patient data" in backup


def test_readme_performance_ratios_follow_from_the_measured_figures():
    """Docs review 45 F7: the text gave 0.77 and 0.70 of the "ceiling" while the table's batch-16 row gave 0.83 and
    0.99. The text now says the ceiling is the pipeline at its best batch size (bench/README.md's table of the same
    run) and works the single-run ratio out; each of its figures must be the measured one."""
    readme = (REPO_ROOT / "README.md").read_text()
    performance = readme[readme.index("## Performance") : readme.index("## Integrating with a PACS")]
    bench = (REPO_ROOT / "bench" / "README.md").read_text()
    run = bench[bench.index("### Models 1.4.0, 2026-12-01") :]
    table = run[run.index("| batch size |") : run.index("\n\n", run.index("| batch size |"))]
    pipeline = [[float(figure) for figure in row.split("|")[4].split("/")] for row in table.splitlines()[2:]]
    service_c16 = re.search(
        r"\| service at concurrency 16: req/s, p50 \| ([\d.]+) req/s, [^|]*\| ([\d.]+) req/s", performance
    )
    ratios = re.findall(r"([\d.]+) / ([\d.]+) = ([\d.]+)", " ".join(performance.split()))

    assert len(ratios) == 2
    for runtime, (service, ceiling, ratio) in enumerate(ratios):
        assert service == service_c16.group(runtime + 1)
        assert float(ceiling) == max(row[runtime] for row in pipeline)
        assert f"{float(service) / float(ceiling):.2f}" == ratio


def test_readme_marks_every_figure_whose_script_the_repository_lacks():
    """Docs review 45 F9: five figures cite scripts of attack reviews that the repository does not hold. Each says
    "script not kept" beside the script, so that no reader looks for it; the header-memory figure also names the
    bench script that sends a like request."""
    readme = (REPO_ROOT / "README.md").read_text()
    kept = {path.name for path in REPO_ROOT.rglob("*.py") if ".venv" not in path.parts}
    unmarked = [
        mention.group(1)
        for mention in re.finditer(r"`(?:[\w./-]*/)?([\w-]+\.py)\b[^`]*`", readme)
        if mention.group(1) not in kept
        and "script not kept" not in " ".join(readme[mention.start() - 300 : mention.end() + 300].split())
    ]
    header_figure = readme[readme.index("`header_series_memory.py") :][:400]

    assert not unmarked, f"scripts the README cites, neither in the repository nor marked not kept: {unmarked}"
    assert "`python -m bench.header_memory --requests 1 --files 24 --elements 99000`" in " ".join(header_figure.split())


def test_readme_layout_table_names_the_test_deploy_and_ci_files():
    """Docs review 45 F12: the layout left out `tests/bench/`, the README tests, `deploy/nginx.conf` (the only proxy
    configuration), `deploy/image_test.py`, `models/evaluation/` and `.ci/`."""
    readme = (REPO_ROOT / "README.md").read_text()
    layout = readme[readme.index("## Layout") :]
    layout = layout[: layout.index("\n## ", 1)]
    entries = [
        f"`{path.name}/`" if path.is_dir() else f"`{path.name}`"
        for folder in ("tests", "deploy")
        for path in sorted((REPO_ROOT / folder).iterdir())
        if path.name not in {"__init__.py", "__pycache__", "conftest.py", "README.md"} and not path.name.startswith(".")
    ]
    missing = [entry for entry in [*entries, "`.ci/`", "`evaluation/`"] if entry not in layout]

    assert not missing, f"entries the README's layout table does not name: {missing}"


def test_readme_pacs_sync_settings_list_names_every_setting_it_reads():
    """Docs review 45 F13: the pacs-sync section's "Settings:" list left out `PACS_STABLE_SECONDS`, which the same
    section says to set, and three more; the list is checked against what `app/pacs/pacs_sync.py` reads."""
    readme = " ".join((REPO_ROOT / "README.md").read_text().split())
    section = readme[readme.index("### pacs-sync with Orthanc") : readme.index("### A DICOM node")]
    listed = section[section.index("Settings: `ORTHANC_URL`") :]
    listed = listed[: listed.index(". ")]
    source = (REPO_ROOT / "app" / "pacs" / "pacs_sync.py").read_text()
    read = sorted(set(re.findall(r"\bsettings\.([a-z_]+)", source)))
    missing = [name.upper() for name in read if f"`{name.upper()}`" not in listed]

    assert read and not missing, f"settings pacs-sync reads, missing from its Settings list: {missing}"
    assert "the `SEQUENCE_*` rules" in listed  # SelectionRules.from_settings


@pytest.mark.parametrize("sample_type", [np.float32, np.float64, np.int32, np.uint32])
def test_readme_accepted_input_names_the_deep_tiffs_the_service_reads_and_their_stretch(sample_type):
    """ML audit 48 F6: the API's "Accepted input" line said "8 or 16 bit", while float and 32-bit TIFFs are read and
    stretched per slice (which changes their answers)."""
    buffer = io.BytesIO()
    samples = (np.random.default_rng(0).random((64, 64, 3)) * 100).astype(sample_type)
    tifffile.imwrite(buffer, samples, photometric="rgb")
    readme = " ".join((REPO_ROOT / "README.md").read_text().split())
    accepted = readme[readme.index("Accepted input:") :]
    accepted = accepted[: accepted.index("- **Formats**")]

    assert decode_image(buffer.getvalue()).dtype == np.uint8 and is_stretched(samples)
    bits = 8 * np.dtype(sample_type).itemsize
    kind = "float" if np.dtype(sample_type).kind == "f" else "integer"
    assert f"{bits}" in accepted and kind in accepted
    assert "stretched per channel to 0..255" in accepted and "**Intensity**" in accepted
