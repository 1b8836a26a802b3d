"""The Orthanc client on canned answers: a body that is not the JSON a call expects is an `OrthancError`, retried."""

from __future__ import annotations

import json
import re
import traceback
from collections.abc import Callable
from typing import Any

import pytest
import requests

from app.pacs.orthanc_client import SYNC_METADATA, OrthancClient
from app.pacs.orthanc_errors import OrthancAnswerError, OrthancError, StoreRefusedError
from app.pacs.pacs_sync_config import PacsSyncConfig
from tests.dicom.builders import mr_series, tumor_channels
from tests.pacs.pacs_sync_support import (
    HTML_PAGE,
    HTML_SECRET,
    Answer,
    CannedSession,
    json_answer,
    orthanc_error,
    undeclared_metadata,
)

CONFIG = PacsSyncConfig("http://orthanc.invalid:8042", retries=2, backoff_seconds=0.5)
SERIES = {"ID": "s1", "Instances": ["i1"], "MainDicomTags": {"Modality": "MR"}, "ParentStudy": "st1"}
INSTANCE = {"ID": "i1", "IndexInSeries": 1, "MainDicomTags": {}, "ParentSeries": "s1", "Type": "Instance"}


def client_for(answers: dict[str, list[Answer]], delays: list[float] | None = None) -> OrthancClient:
    sleep = delays.append if delays is not None else (lambda _: None)
    return OrthancClient(CONFIG, session=CannedSession(answers), sleep=sleep)


def test_orthanc_client_turns_an_html_page_into_an_orthanc_error_after_retrying(
    caplog: pytest.LogCaptureFixture,
) -> None:
    delays: list[float] = []
    client = client_for({"GET /changes": [HTML_PAGE]}, delays)

    with pytest.raises(OrthancAnswerError) as raised:
        client.changes(0)

    assert isinstance(raised.value, OrthancError)
    assert str(raised.value) == (
        "GET /changes answered HTTP 200 with a body that is not JSON (Content-Type text/html) (3 attempts)"
    )
    assert delays == [0.5, 1.0]  # retried as a 5xx answer would be
    assert HTML_SECRET not in caplog.text
    assert HTML_SECRET not in "".join(traceback.format_exception(raised.value))  # as a log with a traceback shows it


def test_orthanc_client_retries_an_html_page_and_reads_the_json_that_follows() -> None:
    page = {"Changes": [], "Done": True, "Last": 7}
    client = client_for({"GET /changes": [HTML_PAGE, json_answer(page)]})

    assert client.changes(0) == page


@pytest.mark.parametrize(
    ("endpoint", "body", "call", "message"),
    [
        ("GET /changes", [], lambda c: c.changes(0), "GET /changes answered an array where an object was expected"),
        (
            "GET /changes",
            {"Changes": {}, "Done": True, "Last": 3},
            lambda c: c.changes(0),
            "GET /changes 'Changes' answered an object where an array was expected",
        ),
        (
            "GET /changes",
            {"Changes": [], "Done": True, "Last": "7"},
            lambda c: c.changes(0),
            "GET /changes 'Last' answered a string where an integer was expected",
        ),
        (
            "GET /changes",
            {"Changes": [], "Done": True},
            lambda c: c.changes(0),
            "GET /changes answered an object without",
        ),
        (
            "GET /changes",
            {"Changes": [3], "Done": True, "Last": 3},
            lambda c: c.changes(0),
            "GET /changes change answered an integer where an object was expected",
        ),
        ("GET /studies/st1", "text", lambda c: c.study("st1"), "GET /studies/st1 answered a string where an object"),
        (
            "GET /studies/st1/series",
            {"error": "x"},
            lambda c: c.study_series("st1"),
            "GET /studies/st1/series answered an object where an array was expected",
        ),
        (
            "GET /studies/st1/series",
            [SERIES | {"Instances": "i1"}],
            lambda c: c.study_series("st1"),
            "GET /studies/st1/series series 'Instances' answered a string where an array was expected",
        ),
        (
            "GET /studies/st1/series",
            [{"ID": "s1", "Instances": []}],
            lambda c: c.our_result_series("st1"),
            "GET /studies/st1/series series answered an object without 'MainDicomTags'",
        ),
        (
            "GET /series/s1",
            {key: value for key, value in SERIES.items() if key != "ParentStudy"},
            lambda c: c.series("s1"),
            "GET /series/s1 answered an object without 'ParentStudy'",
        ),
        (
            "GET /instances/i1",
            {key: value for key, value in INSTANCE.items() if key != "ParentSeries"},
            lambda c: c.series_id_of_instance("i1"),
            "GET /instances/i1 answered an object without 'ParentSeries'",
        ),
        (
            "GET /instances/i1",
            INSTANCE | {"ParentSeries": 7},
            lambda c: c.series_id_of_instance("i1"),
            "GET /instances/i1 'ParentSeries' answered an integer where a string was expected",
        ),
        (
            "POST /tools/find",
            None,
            lambda c: c.delete_our_series_by_uid("1.2.3"),
            "POST /tools/find answered null where an array was expected",
        ),
    ],
)
def test_orthanc_client_refuses_json_of_the_wrong_shape(
    endpoint: str, body: Any, call: Callable[[OrthancClient], Any], message: str
) -> None:
    client = client_for({endpoint: [json_answer(body)]})

    with pytest.raises(OrthancAnswerError, match=re.escape(message)):
        call(client)


def test_orthanc_client_reads_answers_of_the_right_shape() -> None:
    result = {"ID": "r1", "Instances": ["i9"], "MainDicomTags": {"Modality": "SEG", "Manufacturer": "x"}}
    client = client_for(
        {
            "GET /series/s1": [json_answer(SERIES)],
            "GET /instances/i1": [json_answer(INSTANCE)],
            "GET /studies/st1/series": [json_answer([SERIES, result])],
        }
    )

    assert client.series("s1") == SERIES
    assert client.series("gone") is None  # 404
    assert client.series_id_of_instance("i1") == "s1"
    assert client.series_id_of_instance("gone") is None  # 404
    assert client.study_series("st1") == [SERIES, result]


RECORD_PUT = f"PUT /studies/st1/metadata/{SYNC_METADATA}"
METADATA_HINT = f"Orthanc must declare the user-defined metadata {SYNC_METADATA!r}"


class FailingSession(requests.Session):
    """Fails every request as the network would, with `error`."""

    def __init__(self, error: requests.RequestException) -> None:
        super().__init__()
        self.error = error

    def request(self, *args: Any, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        raise self.error


def test_orthanc_client_says_what_to_declare_when_orthanc_does_not_know_the_metadata() -> None:
    client = client_for({RECORD_PUT: [undeclared_metadata("st1")]})

    with pytest.raises(OrthancError) as raised:
        client.write_sync_record("st1", {"status": "negative"})

    assert str(raised.value).startswith(f"{RECORD_PUT} failed with HTTP 404; {METADATA_HINT} in its configuration")
    assert (raised.value.status, raised.value.orthanc_status) == (404, 7)


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (
            orthanc_error(404, 17, "Unknown resource", f"/studies/st1/metadata/{SYNC_METADATA}"),  # study deleted
            f"{RECORD_PUT} failed with HTTP 404",
        ),
        (json_answer({"Message": "Unknown metadata"}, 404), f"{RECORD_PUT} failed with HTTP 404"),  # not Orthanc's
        ((404, "text/html", b"<html>Not Found</html>"), f"{RECORD_PUT} failed with HTTP 404"),  # a proxy's page
        (orthanc_error(500, 7, "Accessing an inexistent item", "/"), f"{RECORD_PUT} failed with HTTP 500"),
        ((503, "text/plain", b"busy"), f"{RECORD_PUT} failed with HTTP 503"),
    ],
)
def test_orthanc_client_gives_the_metadata_hint_for_no_other_answer(answer: Answer, message: str) -> None:
    client = client_for({RECORD_PUT: [answer]})

    with pytest.raises(OrthancError) as raised:
        client.write_sync_record("st1", {"status": "negative"})

    assert str(raised.value) == message
    assert METADATA_HINT not in str(raised.value)


@pytest.mark.parametrize("error", [requests.ConnectionError("refused"), requests.ReadTimeout("slow")])
def test_orthanc_client_gives_no_metadata_hint_when_orthanc_does_not_answer(error: requests.RequestException) -> None:
    client = OrthancClient(CONFIG, session=FailingSession(error), sleep=lambda _: None)

    with pytest.raises(OrthancError) as raised:
        client.write_sync_record("st1", {"status": "negative"})

    assert str(raised.value) == (
        f"{RECORD_PUT} at http://orthanc.invalid:8042 failed after 3 attempts: {type(error).__name__}"
    )
    assert raised.value.status is None and METADATA_HINT not in str(raised.value)


def test_an_untrusted_certificate_says_how_to_trust_its_ca() -> None:
    """Docs review 45 F1: an https:// Orthanc with a hospital CA's certificate failed with a bare "SSLError"."""
    untrusted = requests.exceptions.SSLError(
        "HTTPSConnectionPool(host='orthanc.invalid', port=8042): Max retries exceeded with url: /system (Caused by "
        "SSLError(SSLCertVerificationError(1, '[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: "
        "self-signed certificate (_ssl.c:1006)')))"
    )
    client = OrthancClient(CONFIG, session=FailingSession(untrusted), sleep=lambda _: None)

    with pytest.raises(OrthancError) as raised:
        client.system()

    assert str(raised.value) == (
        "GET /system at http://orthanc.invalid:8042 failed after 3 attempts: SSLError (certificate verify failed; "
        "trust a private CA with REQUESTS_CA_BUNDLE=<its PEM file>)"
    )


def test_another_tls_failure_is_named_by_its_class_only() -> None:
    wrong_protocol = requests.exceptions.SSLError("[SSL: WRONG_VERSION_NUMBER] wrong version number")
    client = OrthancClient(CONFIG, session=FailingSession(wrong_protocol), sleep=lambda _: None)

    with pytest.raises(OrthancError, match=r"failed after 3 attempts: SSLError$"):
        client.system()


def test_a_stow_answer_that_lists_the_instance_as_failed_is_a_refused_store() -> None:
    """Attack review 37: a DICOMweb server may answer 200 and list the instance in its Failed SOP Sequence (PS3.18
    10.5.3); counted as stored, it was later taken for a result that landed in another study."""
    failed = {
        "00081198": {
            "vr": "SQ",
            "Value": [{"00081155": {"vr": "UI", "Value": ["1.2.3"]}, "00081197": {"vr": "US", "Value": [0xA700]}}],
        }
    }
    stored = {"00081199": {"vr": "SQ", "Value": [{"00081155": {"vr": "UI", "Value": ["1.2.3"]}}]}}
    answers = [(200, "application/dicom+json", json.dumps(answer).encode()) for answer in (failed, stored)]
    client = client_for({"POST /dicom-web/studies": answers})
    dataset = mr_series(tumor_channels()[:1])[0]

    with pytest.raises(StoreRefusedError, match=r"refused the instance \(Failure Reason 0xA700\); not stored"):
        client.store(dataset)
    client.store(dataset)  # the next answer lists it as stored
