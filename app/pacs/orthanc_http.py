"""Reading Orthanc's answers over HTTP: the body within its byte limit and deadline, so neither a huge answer nor one
that trickles in forever can hold the sync; and a request, a server and an endpoint named for messages and redirect
checks without the URL's user information."""

from __future__ import annotations

import time
from urllib.parse import urlsplit

import requests
import urllib3

from app.pacs.orthanc_errors import AnswerTooLargeError, AnswerTooSlowError

READ_CHUNK = 64 * 1024


def read_body(response: requests.Response, max_bytes: int, seconds: float) -> bytes:
    """The answer's body, read as it arrives; `AnswerTooLargeError` past `max_bytes`, `AnswerTooSlowError` past
    `seconds`. Network errors mid-body become `requests.ConnectionError`, retried like the others."""
    declared = response.headers.get("Content-Length", "")
    body = bytearray()
    deadline = time.monotonic() + seconds
    try:
        if declared.isdigit() and int(declared) > max_bytes:
            raise AnswerTooLargeError(
                f"{request_line(response)} answered {declared} bytes; at most {max_bytes} are read",
                response.status_code,
            )
        while chunk := response.raw.read1(READ_CHUNK, decode_content=True):
            body += chunk
            if len(body) > max_bytes:
                raise AnswerTooLargeError(
                    f"{request_line(response)} answered more than {max_bytes} bytes; cut off there",
                    response.status_code,
                )
            if time.monotonic() > deadline:
                raise AnswerTooSlowError(f"{request_line(response)}: answer not complete within {seconds:.0f} s")
    except urllib3.exceptions.HTTPError as error:  # cut mid-body, a read timeout, a bad compressed stream
        response.close()
        raise requests.ConnectionError(
            f"{request_line(response)}: {type(error).__name__} while reading the answer"
        ) from None
    except BaseException:
        response.close()  # drops the connection: the rest of the body is never read
        raise
    response.raw.release_conn()
    return bytes(body)


def request_line(response: requests.Response) -> str:
    """``METHOD /path`` of an answer's request, for messages (never the host's user information or the body)."""
    request = response.request
    return f"{request.method} {urlsplit(request.url or '').path}"


def endpoint(url: str) -> tuple[str, str | None, int | None]:
    """Scheme, host and port of a URL, the port filled in when it is the scheme's default: what is one server."""
    parts = urlsplit(url)
    return parts.scheme, parts.hostname, parts.port or {"http": 80, "https": 443}.get(parts.scheme)


def origin(url: str) -> str:
    """Scheme, host and port of a URL (the port only when it says one): what may see the credentials."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")
