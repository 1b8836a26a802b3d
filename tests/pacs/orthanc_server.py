"""A real Orthanc (Debian packages orthanc, orthanc-dicomweb) for the pacs-sync tests, on 127.0.0.1."""

from __future__ import annotations

import json
import math
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest
import requests
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from requests.adapters import HTTPAdapter
from urllib3.util import Retry

from app.pacs.orthanc_client import SYNC_METADATA
from tests.dicom.builders import to_bytes

USER, PASSWORD = "sync-test", "not-a-secret"
ORTHANC_AE = "ORTHANC"
PLUGIN_CANDIDATES = (
    Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so"),
    Path("/usr/lib/orthanc/libOrthancDicomWeb.so"),
)


@dataclass(frozen=True)
class Orthanc:
    url: str
    session: requests.Session
    dicom_port: int | None = None  # set when started with a DICOM server (`dicom_modalities`)

    def upload(self, datasets: list[Dataset]) -> str:
        """Store the instances; return the Orthanc ID of their series once Orthanc calls it stable."""
        series_id = self.store(datasets)
        self.wait_until_stable(f"/series/{series_id}")
        return series_id

    def store(self, datasets: list[Dataset]) -> str:
        """Store the instances of one series; return its Orthanc ID at once (stable or not)."""
        series_ids = set()
        for dataset in datasets:
            response = self.session.post(f"{self.url}/instances", data=to_bytes(dataset), timeout=30)
            response.raise_for_status()
            series_ids.add(response.json()["ParentSeries"])
        (series_id,) = series_ids
        return series_id

    def wait_until_stable(self, resource: str) -> None:
        """Return once Orthanc calls `resource` (``/series/<id>``, ``/studies/<id>``) stable: no new instance in it
        for its StableAge. pacs-sync waits for a study's, and results it stored make it unstable for that long."""
        deadline = time.monotonic() + 30
        while not self.get(resource)["IsStable"]:
            if time.monotonic() > deadline:
                pytest.fail(f"Orthanc did not call {resource} stable within 30 s")
            time.sleep(0.05)  # Orthanc looks every 0.1 s: a 0.2 s poll added 0.1 s a wait

    def get(self, path: str) -> Any:
        response = self.session.get(f"{self.url}{path}", timeout=30)
        response.raise_for_status()
        return response.json()

    def study_of(self, series_id: str) -> str:
        return str(self.get(f"/series/{series_id}")["ParentStudy"])

    def results(self, study_uid: str, modality: str) -> list[Dataset]:
        """Every SEG or SR instance of the study, read back from Orthanc."""
        query = {"Level": "Instance", "Query": {"StudyInstanceUID": study_uid, "Modality": modality}}
        ids = self.session.post(f"{self.url}/tools/find", json=query, timeout=30).json()
        files = [self.session.get(f"{self.url}/instances/{i}/file", timeout=30).content for i in ids]
        return [pydicom.dcmread(DicomBytesIO(data)) for data in files]

    def record(self, study_id: str) -> dict[str, Any]:
        response = self.session.get(f"{self.url}/studies/{study_id}/metadata/{SYNC_METADATA}", timeout=30)
        response.raise_for_status()
        return json.loads(response.text)

    def result_series(self, study_id: str) -> dict[str, list[str]]:
        """The Series Instance UIDs of the SEG and SR series in one Orthanc study (not all studies with its UID)."""
        found: dict[str, list[str]] = {"SEG": [], "SR": []}
        for series in self.get(f"/studies/{study_id}/series"):
            tags = series["MainDicomTags"]
            if tags.get("Modality") in found:
                found[tags["Modality"]].append(tags["SeriesInstanceUID"])
        return {modality: sorted(uids) for modality, uids in found.items()}

    def series_with_uid(self, series_uid: str) -> list[str]:
        """The Orthanc IDs of the series with a Series Instance UID, in any study."""
        query = {"Level": "Series", "Query": {"SeriesInstanceUID": series_uid}}
        response = self.session.post(f"{self.url}/tools/find", json=query, timeout=30)
        response.raise_for_status()
        return list(response.json())

    def last_change(self) -> int:
        return int(self.get("/changes?last")["Last"])

    def result_origins(self, study_uid: str, modality: str) -> list[dict[str, str]]:
        """How each SEG or SR instance of the study reached Orthanc: its metadata (``Origin``, ``RemoteAET``, ...)."""
        query = {"Level": "Instance", "Query": {"StudyInstanceUID": study_uid, "Modality": modality}}
        ids = self.session.post(f"{self.url}/tools/find", json=query, timeout=30).json()
        return [self.get(f"/instances/{i}/metadata?expand") for i in ids]


def past_the_next_second() -> None:
    """Sleep until this machine's clock has passed its next whole second. Orthanc dates what it stores
    (``LastUpdate``) in whole seconds of the same clock, so whatever is stored after this is dated later than all
    stored before it: what a fixed ``time.sleep(1.1)`` ensured, on average 0.55 s sooner."""
    now = time.time()
    time.sleep(math.floor(now) + 1 - now + 0.02)


def orthanc_binary() -> str | None:
    return shutil.which("Orthanc") or next((p for p in ("/usr/sbin/Orthanc",) if Path(p).is_file()), None)


def dicomweb_plugin() -> Path | None:
    """The DICOMweb plugin as the Debian package installed it (`dpkg -L`), else the usual places."""
    try:
        listing = subprocess.run(["dpkg", "-L", "orthanc-dicomweb"], capture_output=True, text=True, check=False).stdout
    except FileNotFoundError:  # not a Debian system
        listing = ""
    listed = [Path(line) for line in listing.splitlines() if "libOrthancDicomWeb.so" in line]
    return next((path for path in (*listed, *PLUGIN_CANDIDATES) if path.is_file()), None)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def running_orthanc(
    directory: Path,
    dicom_modalities: dict[str, tuple[str, str, int]] | None = None,
    overwrite_instances: bool = False,
    stable_age: int = 1,
    port: int | None = None,
    lua_scripts: list[Path] | None = None,
) -> Iterator[Orthanc]:
    """A fresh Orthanc on a free loopback port, storing under `directory`; skips the test where it is not installed.
    With `overwrite_instances`, an instance stored again under its SOP Instance UID replaces the stored one (Orthanc's
    ``OverwriteInstances``, common where corrected images are sent again).

    With `dicom_modalities` (name -> AE title, host, port), Orthanc also listens for DICOM (AE title ``ORTHANC``) on
    another free port, and accepts C-STORE only from those modalities, so whatever it holds from DIMSE came from one.

    `stable_age` is Orthanc's StableAge (seconds without a new instance before a series is stable); `port` an HTTP
    port to listen on (default: a free one), so that a test can start Orthanc again on the same storage and address.
    `lua_scripts`: Orthanc's LuaScripts, e.g. a ``ReceivedInstanceFilter`` that refuses some instances.
    """
    binary = orthanc_binary()
    if binary is None:
        pytest.skip("Orthanc not found: install the Debian packages orthanc and orthanc-dicomweb")
    plugin = dicomweb_plugin()
    if plugin is None:
        pytest.fail("Orthanc is installed but its DICOMweb plugin is not: install the Debian package orthanc-dicomweb")
    session = requests.Session()
    session.auth = (USER, PASSWORD)
    # Orthanc sometimes closes a connection without an answer (a kept-alive one it timed out as the call went out: CI,
    # once; 4 of 300 calls for a missing study with "Connection: close"). pacs-sync retries such a failure, and so
    # does this helper, for every method: Orthanc had not read the call it dropped.
    session.mount(
        "http://", HTTPAdapter(max_retries=Retry(total=3, connect=3, read=3, status=0, other=0, allowed_methods=None))
    )
    log_path = directory / "orthanc.log"
    process = None
    try:
        # Started again on other ports if a free one was taken before Orthanc bound it (the other test worker's
        # connections take ports too); not when the test named its port.
        for attempt in range(3):
            http_port = port or free_port()
            dicom_port = None if dicom_modalities is None else free_port()
            config = orthanc_config(directory, plugin, http_port, dicom_port, dicom_modalities)
            config.update(
                StableAge=stable_age,
                OverwriteInstances=overwrite_instances,
                LuaScripts=[str(path) for path in lua_scripts or []],
            )
            config_path = directory / "orthanc.json"
            config_path.write_text(json.dumps(config))
            with log_path.open("w") as log:
                process = subprocess.Popen(
                    [binary, str(config_path)], stdout=log, stderr=subprocess.STDOUT, cwd=directory
                )
            url = f"http://127.0.0.1:{http_port}"
            if answers(session, url, process, deadline=time.monotonic() + 60):
                break
            if process.poll() is None:
                pytest.fail(f"Orthanc did not answer within 60 s: {log_path.read_text()[-2000:]}")
            if port is not None or attempt == 2 or "already in use" not in log_path.read_text():
                pytest.fail(f"Orthanc exited with {process.returncode}: {log_path.read_text()[-2000:]}")
        yield Orthanc(url=url, session=session, dicom_port=dicom_port)
    finally:
        if process is not None:
            if port is None:
                # Its storage is not used again: killed, not stopped, which takes Orthanc 2.4 s whatever it holds
                # (about 50 s of the suite). A test that names its port starts it again on that storage: stopped.
                process.kill()
            else:
                process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


def orthanc_config(
    directory: Path,
    plugin: Path,
    port: int,
    dicom_port: int | None,
    dicom_modalities: dict[str, tuple[str, str, int]] | None,
) -> dict[str, Any]:
    """Orthanc's configuration: HTTP on `port` with the test's user, DICOMweb; DICOM on `dicom_port` with
    `dicom_modalities`, if given."""
    config: dict[str, Any] = {
        "Name": "pacs-sync-test",
        "StorageDirectory": str(directory / "storage"),
        "IndexDirectory": str(directory / "storage"),
        "HttpPort": port,
        "RemoteAccessAllowed": False,  # localhost only
        "AuthenticationEnabled": True,
        "RegisteredUsers": {USER: PASSWORD},
        "DicomServerEnabled": False,
        "Plugins": [str(plugin)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        "UserMetadata": {SYNC_METADATA: 4600},
        "SaveJobs": False,
    }
    if dicom_modalities is not None:
        config.update(
            DicomServerEnabled=True,
            DicomAet=ORTHANC_AE,
            DicomPort=dicom_port,
            DicomCheckCalledAet=True,
            DicomAlwaysAllowStore=False,  # only the declared modalities may store
            DicomCheckModalityHost=True,
            DicomModalities={
                name: {"AET": ae_title, "Host": host, "Port": port, "AllowStore": True}
                for name, (ae_title, host, port) in dicom_modalities.items()
            },
        )
    return config


def answers(session: requests.Session, url: str, process: subprocess.Popen[bytes], deadline: float) -> bool:
    """Whether Orthanc at `url` answers before `deadline`; False at once if its process exits first."""
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if session.get(f"{url}/system", timeout=2).status_code == 200:
                return True
        except requests.ConnectionError:
            pass
        time.sleep(0.05)
    return False
