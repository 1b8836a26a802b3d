"""Connection limits on a real `brain-tumor serve` process (app.http_protocol): slow and huge headers, silent
uploads, too many connections, and idle uploads at shutdown. Timeouts are set short so the tests stay short; the
code paths are those of the defaults."""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import signal
import socket
import statistics
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.security.conftest import ServerProcess, start_server

HEADER_TIMEOUT_SECONDS = 2.0
BODY_TIMEOUT_SECONDS = 2.0
MAX_CONNECTIONS = 60
SLOW_CONNECTIONS = 50
SLOW_REQUEST = b"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 64


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path, tmp_path_factory) -> Iterator[ServerProcess]:
    process = start_server(
        tiny_model_dir,
        tmp_path_factory.mktemp("limits"),
        HEADER_TIMEOUT_SECONDS=str(HEADER_TIMEOUT_SECONDS),
        BODY_TIMEOUT_SECONDS=str(BODY_TIMEOUT_SECONDS),
        MAX_CONNECTIONS=str(MAX_CONNECTIONS),
    )
    yield process
    process.stop()


def address(server: ServerProcess) -> tuple[str, int]:
    host, port = server.base_url.removeprefix("http://").split(":")
    return host, int(port)


def health_latencies(client: httpx.Client, count: int, pause: float = 0.05) -> list[float]:
    latencies = []
    for _ in range(count):
        started = time.perf_counter()
        assert client.get("/health/live").status_code == 200
        latencies.append(time.perf_counter() - started)
        time.sleep(pause)
    return latencies


def read_until_closed(sock: socket.socket, timeout: float) -> bytes:
    """Everything the server sends until it closes the connection; fails if it stays open past `timeout`."""
    sock.settimeout(timeout)
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except ConnectionResetError:
        pass
    except TimeoutError:
        pytest.fail(f"the server kept the connection open for more than {timeout:g} s")
    return received


def read_response(sock: socket.socket) -> bytes:
    """One whole response (headers and a Content-Length body); b"" if the server closed the connection first."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


def log_lines(server: ServerProcess) -> list[dict]:
    return [json.loads(line) for line in server.stderr().splitlines() if line.startswith("{")]


def test_slow_headers_do_not_delay_health_and_are_closed(server: ServerProcess):
    with httpx.Client(base_url=server.base_url, timeout=5.0) as client:
        baseline = statistics.median(health_latencies(client, 10))
        sockets = [socket.create_connection(address(server)) for _ in range(SLOW_CONNECTIONS)]
        opened = time.monotonic()
        closed_after: dict[int, float] = {}
        stop = threading.Event()

        def trickle() -> None:  # one byte a second on every connection, until the server closes it
            for position in range(len(SLOW_REQUEST)):
                open_sockets = [sock for sock in sockets if sock.fileno() not in closed_after]
                if stop.is_set() or not open_sockets:
                    return
                for sock in open_sockets:
                    try:
                        sock.send(SLOW_REQUEST[position : position + 1])
                    except OSError:
                        closed_after[sock.fileno()] = time.monotonic() - opened
                readable, _, _ = select.select(open_sockets, [], [], 1.0)
                for sock in readable:
                    try:
                        if not sock.recv(65536, socket.MSG_PEEK):
                            closed_after[sock.fileno()] = time.monotonic() - opened
                        else:
                            sock.recv(65536)  # the 408, then the close
                    except OSError:
                        closed_after[sock.fileno()] = time.monotonic() - opened

        sender = threading.Thread(target=trickle, daemon=True)
        sender.start()
        try:
            time.sleep(0.5)
            during = health_latencies(client, 20)
            sender.join(HEADER_TIMEOUT_SECONDS + 10)
        finally:
            stop.set()
            for sock in sockets:
                sock.close()

    # A server held up by the trickle answers every call a second or more late (a byte a second per connection); 0.5 s
    # apart tells that from a busy machine's jitter (0.1 s failed once on 2 cores shared with a training run: 103 ms),
    # and the third slowest of 20 calls, not the slowest, from a stall of either process (0.8 s seen on CI).
    third_slowest = sorted(during)[-3]
    assert third_slowest - baseline < 0.5, f"/health/live took {third_slowest * 1000:.0f} ms under slow headers"
    assert len(closed_after) == SLOW_CONNECTIONS, f"only {len(closed_after)} of {SLOW_CONNECTIONS} were closed"
    assert max(closed_after.values()) < HEADER_TIMEOUT_SECONDS + 3
    timeouts = [line for line in log_lines(server) if line.get("error_code") == "request_timeout"]
    assert len(timeouts) >= SLOW_CONNECTIONS and all(line["peer"] == "127.0.0.1" for line in timeouts)


def test_huge_header_is_refused_quickly(server: ServerProcess):
    request = b"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: "
    chunk = b"a" * (1 << 20)
    started = time.monotonic()
    with socket.create_connection(address(server)) as sock:
        sent = 0
        try:
            sock.sendall(request)
            while sent < 64 << 20:  # 64 MiB of one header, as the attack sent
                sock.sendall(chunk)
                sent += len(chunk)
        except OSError:  # the server closed the connection under us: what we want
            pass
        answer = read_until_closed(sock, 5.0)
    elapsed = time.monotonic() - started

    assert elapsed < 2.0, f"refusing a 64 MiB header took {elapsed:.1f} s"
    assert sent < 64 << 20, "the server read all 64 MiB"
    if answer:  # the 431 may be lost to a reset when the server closes with our bytes unread
        assert answer.startswith(b"HTTP/1.1 431 ")
        assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "headers_too_large"
    assert any(line.get("error_code") == "headers_too_large" for line in log_lines(server))
    assert httpx.get(f"{server.base_url}/health/live", timeout=2.0).status_code == 200


def test_a_malformed_header_gets_the_json_error_and_a_log_line(server: ServerProcess):
    """Attack finding: a control character in a header value got uvicorn's plain-text 400 and no log line of ours."""
    with socket.create_connection(address(server)) as sock:
        sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Request-ID: abc\x01def\r\n\r\n")
        answer = read_until_closed(sock, 5)

    assert answer.startswith(b"HTTP/1.1 400 ")
    head, body = answer.split(b"\r\n\r\n", 1)
    assert b"content-type: application/json" in head.lower()
    assert json.loads(body)["error"]["code"] == "invalid_http_request"
    assert any(line.get("error_code") == "invalid_http_request" for line in log_lines(server))
    assert httpx.get(f"{server.base_url}/health/live", timeout=2.0).status_code == 200


@pytest.mark.parametrize("path", ["/v1/models", "/health/live"])
def test_two_host_headers_are_a_malformed_request(server: ServerProcess, path: str):
    """Attack review 34, finding 4: `Host: localhost` then `Host: evil.example` passed ALLOWED_HOSTS, which read the
    first, while a proxy keeping the last would route by the other. RFC 9112 3.2: such a request is a 400."""
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nhost: evil.example\r\n\r\n".encode()
    with socket.create_connection(address(server)) as sock:
        sock.sendall(request)
        answer = read_until_closed(sock, 5)

    assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]
    error = json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]
    assert error["code"] == "invalid_http_request"
    assert "more than one Host header" in error["message"]
    with socket.create_connection(address(server)) as sock:  # one Host header is answered as ever
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        assert read_until_closed(sock, 5).startswith(b"HTTP/1.1 200 ")


def test_two_content_type_headers_are_a_malformed_request(server: ServerProcess):
    """Attack review 46 F8: an upload with `Content-Type: multipart/form-data` and a second `Content-Type: image/jpeg`
    was analysed by the first, while a proxy or filter keeping the last would have judged another body. RFC 9110 8.3:
    a request has one Content-Type."""
    body = b"--XyZ\r\nContent-Disposition: form-data; name=file; filename=a.jpg\r\n\r\nabc\r\n--XyZ--\r\n"
    head = (
        "POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=XyZ\r\n"
        f"Content-Type: image/jpeg\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    with socket.create_connection(address(server)) as sock:
        sock.sendall(head.encode() + body)
        answer = read_until_closed(sock, 5)

    assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]
    error = json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]
    assert error == {
        "code": "invalid_http_request",
        "message": "the request has more than one Content-Type header (RFC 9110 8.3 makes that a 400)",
    }


def test_an_unknown_method_is_not_implemented_rather_than_malformed(server: ServerProcess):
    """attack26 finding 11: `FOO`, a legal method token httptools does not know, got 400 "not valid HTTP/1.1"."""
    with socket.create_connection(address(server)) as sock:
        sock.sendall(b"FOO /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        answer = read_until_closed(sock, 5)

    assert answer.startswith(b"HTTP/1.1 501 ")
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "method_not_implemented"
    assert any(line.get("error_code") == "method_not_implemented" for line in log_lines(server))


def test_head_gets_the_headers_of_get_and_the_connection_goes_on(server: ServerProcess):
    """HEAD is answered as GET without the body (app.api.middleware.HeadAsGetMiddleware); the server itself must
    still see HEAD, or it waits for the Content-Length bytes that never come and fails the response."""
    log_before = len(server.stderr())
    with socket.create_connection(address(server)) as sock:
        sock.sendall(
            b"HEAD /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
            b"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        )
        answer = read_until_closed(sock, 5)

    head_answer, get_answer = answer.split(b"HTTP/1.1 ")[1:]
    head_headers, head_body = head_answer.split(b"\r\n\r\n", 1)
    assert head_headers.startswith(b"200 ") and head_body == b""
    assert b"content-length: 18" in head_headers.lower()
    assert get_answer.startswith(b"200 ") and get_answer.endswith(b'{"status":"alive"}')
    assert "Traceback" not in server.stderr()[log_before:]


def test_silent_upload_gets_408(server: ServerProcess):
    head = (
        b"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=b\r\n"
        b"Content-Length: 100000\r\n\r\n--b\r\n"
    )
    started = time.monotonic()
    with socket.create_connection(address(server)) as sock:
        sock.sendall(head)
        answer = read_until_closed(sock, BODY_TIMEOUT_SECONDS + 5)
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "request_timeout"
    assert BODY_TIMEOUT_SECONDS - 0.5 < time.monotonic() - started < BODY_TIMEOUT_SECONDS + 3


FILE_PART = b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\nContent-Type: image/png\r\n\r\n'


def send_body(server: ServerProcess, pieces: list[bytes], pause: float) -> tuple[bytes, float]:
    """What the server answers to an upload of `pieces`, one every `pause` seconds, and when it answered."""
    body = b"".join(pieces)
    head = (
        b"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=b\r\n"
        b"Content-Length: %d\r\n\r\n" % (len(body) + 1)  # one byte never sent: the answer is the server's limit
    )
    started = time.monotonic()
    with socket.create_connection(address(server)) as sock:
        sock.sendall(head)
        sock.settimeout(pause)
        for piece in pieces:
            try:
                sock.sendall(piece)
                answer = sock.recv(65536)
                if answer:
                    return answer + read_until_closed(sock, 5), time.monotonic() - started
            except TimeoutError:
                continue
            except OSError:
                break
        return read_until_closed(sock, BODY_TIMEOUT_SECONDS + 5), time.monotonic() - started


def test_an_upload_trickling_in_gets_408(server: ServerProcess):
    """Attack review 61 F1: a body sent up to its last bytes, then a byte now and then, kept clear of the pause
    limit and held its share of MAX_UPLOADS_HELD_BYTES for as long as its client liked."""
    answer, after = send_body(server, [FILE_PART + b"x" * 60_000, *[b"x"] * 20], pause=0.4)

    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    message = json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]["message"]
    assert "slower than 32768 bytes/s (MIN_UPLOAD_BYTES_PER_SECOND)" in message
    assert after < 3 * BODY_TIMEOUT_SECONDS


def test_an_upload_sent_steadily_with_pauses_is_read_to_its_end(server: ServerProcess):
    answer, _ = send_body(server, [FILE_PART, *[b"x" * 40_000] * 6], pause=0.5)  # 80 kB/s, pausing 0.5 s

    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]  # the byte never sent: the pause limit's 408
    assert b"paused for more than" in answer


def test_bursts_the_server_pauses_reading_for_still_count_against_the_upload_rate(tiny_model_dir: Path, tmp_path: Path):
    """Review 64 F1: a burst over uvicorn's 64 KiB buffer pauses reading, and each resume restarted the rate's window
    and forgot the bytes counted: bursts of 70 KB now and then held a connection without end at a twelfth of the
    rate. The time reading is paused is left out of the window; the bytes stay counted."""
    process = start_server(
        tiny_model_dir, tmp_path, BODY_TIMEOUT_SECONDS=str(BODY_TIMEOUT_SECONDS), MIN_UPLOAD_BYTES_PER_SECOND="100000"
    )
    try:  # 70 KB every 1.5 s: 47 kB/s, under the 100 kB/s asked, each burst over the buffer
        answer, after = send_body(process, [FILE_PART, *[b"x" * 70_000] * 12], pause=1.5)
    finally:
        process.stop()

    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert b"slower than 100000 bytes/s" in answer
    assert after < 5 * BODY_TIMEOUT_SECONDS


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_without_an_upload_rate_a_long_upload_costs_no_cpu_while_it_comes(tiny_model_dir: Path, tmp_path: Path):
    """Review 64 F2: with MIN_UPLOAD_BYTES_PER_SECOND=0 (no rate), the body's timer was re-armed at 0 s once a window
    had passed: 7.8 s of the server's CPU over a 10 s upload, against 0.04 s."""
    process = start_server(
        tiny_model_dir, tmp_path, BODY_TIMEOUT_SECONDS=str(BODY_TIMEOUT_SECONDS), MIN_UPLOAD_BYTES_PER_SECOND="0"
    )
    try:
        before = cpu_seconds(process.process.pid)
        send_body(process, [FILE_PART, *[b"x" * 4000] * 24], pause=0.25)  # 16 kB/s for 6 s, then the pause limit
        used = cpu_seconds(process.process.pid) - before
    finally:
        process.stop()

    assert used < 1.5, f"{used:.2f} s of CPU"


def connection_refusals(server: ServerProcess, code: str) -> float:
    """The server's count of refusals with `code` made before any route ran, from its /metrics."""
    text = httpx.get(f"{server.base_url}/metrics", timeout=5.0).text
    found = re.search(rf'^brain_tumor_http_connection_refusals_total{{code="{code}",status="\d+"}} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


def test_connections_past_the_maximum_are_refused(server: ServerProcess):
    refused_before = connection_refusals(server, "too_many_connections")
    held = [socket.create_connection(address(server)) for _ in range(MAX_CONNECTIONS)]
    try:
        time.sleep(0.3)  # let the server accept them all
        with socket.create_connection(address(server)) as extra:
            answer = read_until_closed(extra, 2.0)
        assert answer.startswith(b"HTTP/1.1 503 "), answer[:200]
        head, body = answer.split(b"\r\n\r\n", 1)
        assert json.loads(body)["error"]["code"] == "too_many_connections"
        assert b"\r\nretry-after: 5\r\n" in head  # attack review 44 F12: like every other 503 of the service
    finally:
        for sock in held:
            sock.close()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # the server sees the closes a moment later
        try:
            if httpx.get(f"{server.base_url}/health/live", timeout=1.0).status_code == 200:
                break
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    else:
        pytest.fail("the server did not accept connections again after the others closed")
    # Operations review 68 F7: refused before any route ran, it was in no metric (an alert on 5xx never saw it).
    assert connection_refusals(server, "too_many_connections") == refused_before + 1


def test_one_client_address_cannot_take_every_connection(tiny_model_dir: Path, tmp_path: Path):
    """Attack review 32: one client holding slow connections took all of them; health probes and clients with keys
    got 503 too. A trusted proxy speaks for many clients, and is not held to the per-client cap."""
    per_client = 8
    process = start_server(
        tiny_model_dir, tmp_path, MAX_CONNECTIONS_PER_CLIENT=str(per_client), TRUSTED_PROXIES="127.0.0.3"
    )
    held: list[socket.socket] = []
    try:

        def connect(source: str) -> socket.socket:
            return socket.create_connection(address(process), source_address=(source, 0))

        held += [connect("127.0.0.2") for _ in range(per_client)]
        held += [connect("127.0.0.3") for _ in range(per_client + 2)]  # the proxy's
        time.sleep(0.3)  # let the server accept them all
        with connect("127.0.0.2") as extra:
            answer = read_until_closed(extra, 2.0)
        assert answer.startswith(b"HTTP/1.1 503 "), answer[:200]
        assert b"\r\nretry-after: 5\r\n" in answer.split(b"\r\n\r\n", 1)[0]
        error = json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]
        assert error == {
            "code": "too_many_connections",
            "message": f"this client address holds the most connections one may ({per_client}); retry later",
        }
        for source in ("127.0.0.1", "127.0.0.3"):  # another client, and the proxy past the per-client number
            with connect(source) as other:
                other.sendall(b"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                assert read_until_closed(other, 5.0).startswith(b"HTTP/1.1 200 "), source
    finally:
        for sock in held:
            sock.close()
        process.stop()


def test_forwarded_for_from_loopback_is_not_believed_by_default(server: ServerProcess):
    response = httpx.get(f"{server.base_url}/v1/models", headers={"X-Forwarded-For": "198.51.100.77"}, timeout=5.0)
    assert response.status_code == 200
    deadline = time.monotonic() + 5
    while not (lines := [e for e in log_lines(server) if e.get("request_id") == response.headers["X-Request-ID"]]):
        assert time.monotonic() < deadline, "no access log line for the request"
        time.sleep(0.05)  # the line is written once the response is out
    [line] = lines
    assert (line["client"], line["peer"]) == ("127.0.0.1", "127.0.0.1")


def test_idle_uploads_do_not_hold_shutdown(tiny_model_dir: Path, tmp_path: Path):
    """Five uploads that stopped sending: SIGTERM ends them after SHUTDOWN_IDLE_UPLOAD_SECONDS (default 2 s), not
    after the graceful shutdown timeout (set to 60 s here, so that the two cannot be mistaken on a busy machine)."""
    server = start_server(tiny_model_dir, tmp_path, SHUTDOWN_TIMEOUT_SECONDS="60")
    head = (
        b"POST /v1/predict/batch HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=b\r\n"
        b"Content-Length: 1000000\r\n\r\n--b\r\n"
    )
    uploads = [socket.create_connection(address(server)) for _ in range(5)]
    try:
        for sock in uploads:
            sock.sendall(head)
        time.sleep(0.5)
        server.process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        try:
            exit_code = server.process.wait(40)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the server did not exit within 40 s of SIGTERM:\n{server.stderr()[-2000:]}")
        took = time.monotonic() - signalled
        answers = [read_until_closed(sock, 1.0) for sock in uploads]
    finally:
        for sock in uploads:
            sock.close()
        server.stop()
    assert exit_code == 0, server.stderr()[-2000:]
    assert took < 20.0, f"shutdown took {took:.1f} s with idle uploads"
    # Each was closed (read_until_closed fails otherwise): with a 408 once the server had read its headers; one
    # still unread when SIGTERM came (a busy machine) is closed without an answer, as uvicorn closes idle connections.
    assert all(answer == b"" or answer.startswith(b"HTTP/1.1 408 ") for answer in answers), [a[:40] for a in answers]
    assert any(answer.startswith(b"HTTP/1.1 408 ") for answer in answers), "no upload was answered 408"


def test_a_body_sent_in_full_after_the_answer_leaves_the_connection_open(server: ServerProcess):
    """browser24: the close meant for a trickling body also closed a connection whose body had all come (uvicorn
    keeps such a request's `more_body` true), cutting off the next request on it (a false 499, a retried upload)."""
    body = b"x" * 1000
    head = f"POST /v1/no-such-route HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(body)}\r\n\r\n".encode()
    with socket.create_connection(address(server)) as sock:
        sock.settimeout(10)
        sock.sendall(head)
        refusal = read_response(sock)  # answered before the body was sent
        sock.sendall(body)
        time.sleep(3.0)  # past UNWANTED_BODY_SECONDS
        sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        answer = read_response(sock)
    assert refusal.startswith(b"HTTP/1.1 404 "), refusal[:200]
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]


def test_a_body_still_trickling_in_after_the_answer_does_not_hold_the_connection(server: ServerProcess):
    """attack23b: after a refusal sent before the body was in (here 404), a client sending a byte every second kept
    its connection for as long as it liked; 515 of them kept every other client out."""
    head = b"POST /v1/no-such-route HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000\r\n\r\n"
    received = b""
    with socket.create_connection(address(server)) as sock:
        sock.sendall(head)
        sock.settimeout(0.5)
        closed = False
        for _ in range(20):  # up to 10 s, well past UNWANTED_BODY_SECONDS and within the body idle timeout
            try:
                sock.sendall(b"x")
                chunk = sock.recv(65536)
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            if not chunk:
                closed = True
                break
            received += chunk
    assert received.startswith(b"HTTP/1.1 404 "), received[:200]
    assert closed


def send_trailers_until_closed(server: ServerProcess, path: str, trailer: bytes, most: int) -> tuple[int, bytes]:
    """A chunked POST whose body ends at once, then trailer bytes (`trailer` again and again) up to `most` bytes or
    until the server closes; returns the bytes of trailers sent and what the server answered."""
    head = (  # a form the app reads to its end (no Content-Type: FastAPI answers 422 without reading the body)
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=B\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
    ).encode()
    sent = 0
    with socket.create_connection(address(server)) as sock:
        # A file part left open: the app waits for the rest of the form, so only the trailers' cap can end it.
        part = b'--B\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\nxx'
        sock.sendall(head + b"%x\r\n%s\r\n0\r\n" % (len(part), part))
        try:
            while sent < most:
                sock.sendall(trailer)
                sent += len(trailer)
        except OSError:  # closed under us: what we want
            pass
        answer = read_until_closed(sock, 5.0)
    return sent, answer


@pytest.mark.parametrize(
    "trailer",
    [b"X-T: " + b"a" * 60_000 + b"\r\n", b"a" * 65_536],  # many trailer fields; one that never ends
    ids=["many-fields", "one-endless-field"],
)
@pytest.mark.parametrize("path", ["/v1/predict", "/v1/no-such-route"], ids=["read-by-the-app", "answered-first"])
def test_trailer_fields_after_a_chunked_body_are_capped(server: ServerProcess, trailer: bytes, path: str):
    """attack25: the trailer section escaped every header limit, and uvicorn kept each field in the request's
    headers: one keyless connection added ~1 GiB to the server's memory in 2 s, a keyed one 2.4 GiB in 5 s. Now they
    are dropped, and past MAX_HEADER_BYTES the connection is closed (431 if the answer has not begun)."""
    started = time.monotonic()
    sent, answer = send_trailers_until_closed(server, path, trailer, 256 << 20)
    elapsed = time.monotonic() - started

    assert sent < 256 << 20, "the server read 256 MiB of trailers"
    assert elapsed < 5.0, f"closing took {elapsed:.1f} s"
    # The 431 may be lost to a reset when the server closes with our bytes unread; a 404 the app sent before the cap
    # was reached stands (the connection is closed all the same).
    expected = (b"HTTP/1.1 431 ",) if path == "/v1/predict" else (b"HTTP/1.1 431 ", b"HTTP/1.1 404 ")
    if answer:
        assert answer.startswith(expected), answer[:200]
    assert any("trailer fields" in line.get("message", "") for line in log_lines(server))
    assert httpx.get(f"{server.base_url}/health/live", timeout=2.0).status_code == 200


def test_a_chunked_body_with_a_small_trailer_is_answered_and_the_connection_goes_on(server: ServerProcess):
    """The cap leaves the trailers real clients send (a checksum) alone."""
    with socket.create_connection(address(server)) as sock:
        sock.settimeout(10)
        sock.sendall(
            b"POST /v1/no-such-route HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n0\r\nX-Checksum: 5d41402abc4b2a76\r\n\r\n"
        )
        first = read_response(sock)
        sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        second = read_response(sock)
    assert first.startswith(b"HTTP/1.1 404 "), first[:200]
    assert second.startswith(b"HTTP/1.1 200 "), second[:200]


def test_chunk_extensions_count_against_a_cap(server: ServerProcess):
    """Attack review 44 F5: a chunked upload that sent `1;x=` and then only chunk-extension bytes made the server read
    11 GB for one request limited to 20 MiB: extension bytes are no body bytes, so no upload limit saw them, and only
    the body idle timeout ended it. Now the framing may take at most twice MAX_HEADER_BYTES more than the data."""
    head = (
        b"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=B\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n1;x="
    )
    extension = b"a" * (1 << 20)
    sent = 0
    started = time.monotonic()
    with socket.create_connection(address(server)) as sock:
        try:
            sock.sendall(head)
            while sent < 256 << 20:
                sock.sendall(extension)
                sent += len(extension)
        except OSError:  # closed under us: what we want
            pass
        answer = read_until_closed(sock, 5.0)
    elapsed = time.monotonic() - started

    assert sent < 16 << 20, f"the server read {sent >> 20} MiB of chunk extensions"
    assert elapsed < BODY_TIMEOUT_SECONDS, f"closing took {elapsed:.1f} s"
    if answer:  # the 413 may be lost to a reset when the server closes with our bytes unread
        assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
        assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "payload_too_large"
    assert any("chunk-size lines with their extensions" in line.get("message", "") for line in log_lines(server))


def test_a_chunked_body_of_small_chunks_with_extensions_is_read(server: ServerProcess):
    """The framing cap leaves real chunked bodies alone: here 3000 chunks of 2 bytes, each with an extension (the
    framing takes over four times the data)."""
    chunks = b"".join(b"2;n=v\r\nab\r\n" for _ in range(3000))
    with socket.create_connection(address(server)) as sock:
        sock.settimeout(10)
        sock.sendall(
            b"POST /v1/no-such-route HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n"
            + chunks
            + b"0\r\n\r\n"
        )
        first = read_response(sock)
        sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        second = read_response(sock)
    assert first.startswith(b"HTTP/1.1 404 "), first[:200]
    assert second.startswith(b"HTTP/1.1 200 "), second[:200]


@pytest.mark.parametrize("header_bytes", [40_000, 100_000])
def test_the_header_cap_holds_for_a_request_that_comes_with_the_end_of_a_body(server: ServerProcess, header_bytes: int):
    """Attack review 44 F10: a GET with a 100 KB header, sent in one write right after a POST's 40 kB body, was parsed
    whole and answered 200 (alone, it got 431): its bytes went to the parser with the body's, uncounted."""
    request_id = f"f10-{header_bytes}"
    second = (
        f"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Request-ID: {request_id}\r\n"
        f"X-Big: {'a' * header_bytes}\r\nConnection: close\r\n\r\n"
    ).encode()
    first = b"POST /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 40000\r\n\r\n" + b"x" * 40_000
    refusals_before = sum(line.get("error_code") == "headers_too_large" for line in log_lines(server))
    with socket.create_connection(address(server)) as sock:
        with contextlib.suppress(OSError):  # closed under us: the refusal
            sock.sendall(first + second)
        read_until_closed(sock, 5.0)
    time.sleep(0.5)  # an access line is written once its response is out

    lines = log_lines(server)
    assert not [line for line in lines if line.get("request_id") == request_id], "the oversized request was answered"
    assert sum(line.get("error_code") == "headers_too_large" for line in lines) == refusals_before + 1


def test_allowed_hosts_judges_the_host_of_an_absolute_form_target(tiny_model_dir: Path, tmp_path: Path):
    """Attack review 44 F11: `GET http://evil.example/v1/models` with `Host: 127.0.0.1` was answered 200 under
    ALLOWED_HOSTS=127.0.0.1: only the Host header was read. RFC 9112 3.2.2: the target's authority is the host."""
    process = start_server(tiny_model_dir, tmp_path, ALLOWED_HOSTS="127.0.0.1")
    try:
        answers = {}
        for target, host in [
            ("http://evil.example/v1/models", "127.0.0.1"),
            ("http://evil.example:8000/v1/models", "127.0.0.1:8000"),
            ("http://127.0.0.1/v1/models", "evil.example"),  # the target wins, the Host header is ignored
            ("/v1/models", "127.0.0.1"),
        ]:
            with socket.create_connection(address(process)) as sock:
                sock.sendall(f"GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
                answers[target, host] = read_until_closed(sock, 5.0)
    finally:
        process.stop()

    statuses = {request: answer[:12] for request, answer in answers.items()}
    assert statuses == {
        ("http://evil.example/v1/models", "127.0.0.1"): b"HTTP/1.1 403",
        ("http://evil.example:8000/v1/models", "127.0.0.1:8000"): b"HTTP/1.1 403",
        ("http://127.0.0.1/v1/models", "evil.example"): b"HTTP/1.1 200",
        ("/v1/models", "127.0.0.1"): b"HTTP/1.1 200",
    }
    refusal = json.loads(answers["http://evil.example/v1/models", "127.0.0.1"].split(b"\r\n\r\n", 1)[1])["error"]
    assert refusal["code"] == "host_not_allowed"
    # Docs review 45 F6: the message said "the Host header names no host", but the Host header was allowed.
    assert refusal["message"] == "the request target (absolute form) names no host in ALLOWED_HOSTS"


def test_a_transfer_coding_besides_chunked_is_refused_with_its_name(server: ServerProcess):
    """Attack review 53 F9: httptools reads `Transfer-Encoding: gzip, chunked` as chunked and handed the gzip bytes
    on as the body; such a body is now refused before it is read."""
    with socket.create_connection(address(server)) as sock:
        sock.settimeout(10)
        sock.sendall(
            b"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=B\r\n"
            b"Transfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        )
        answer = read_until_closed(sock, 5.0)
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]
    assert b"Transfer-Encoding must be chunked alone; it is gzip, chunked" in answer


@pytest.mark.parametrize(
    ("extra_header", "content_type", "reason"),
    [
        ("Content-Encoding: gzip\r\n", "multipart/form-data; boundary=B", "without a Content-Encoding; it says gzip"),
        ("", "multipart/form-data; boundary=A; boundary=B", "names its boundary more than once"),
        ("", "multipart/form-data; boundary =A; boundary=B", "names its boundary more than once"),
        (
            "Content-Encoding: identity\r\nContent-Encoding: gzip\r\n",
            "multipart/form-data; boundary=B",
            "it says identity, gzip",
        ),
    ],
    ids=["content encoding", "two boundaries", "two boundaries, one spaced", "gzip in a second field"],
)
def test_an_upload_whose_body_is_declared_otherwise_than_it_is_read_is_refused(
    server: ServerProcess, extra_header: str, content_type: str, reason: str
):
    """Attack review 53 F9: a body declared gzip (and sent plain) was answered 200, and of two boundaries the last
    one was used, where a proxy reading the first saw an empty form."""
    body = b'--B\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\nxx\r\n--B--\r\n'
    head = (
        f"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n{extra_header}"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    with socket.create_connection(address(server)) as sock:
        sock.settimeout(10)
        sock.sendall(head + body)
        answer = read_until_closed(sock, 5.0)
    assert answer.startswith(b"HTTP/1.1 415 "), answer[:200]
    assert reason.encode() in answer


def test_a_boundary_named_inside_another_parameters_quotes_is_no_second_boundary(server: ServerProcess):
    """Attack review 55 F5: the check split the Content-Type at every `;`, quoted values too, and refused it."""
    body = b'--B\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\nxx\r\n--B--\r\n'
    head = (
        'POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; x="a;boundary=Q"; '
        f"boundary=B\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    with socket.create_connection(address(server)) as sock:
        sock.settimeout(10)
        sock.sendall(head + body)
        answer = read_until_closed(sock, 5.0)
    # Read by its one boundary: the form's file is found, and refused for what it holds (two letters), not the header.
    assert b"names its boundary" not in answer
    assert b"the file must start with the PNG, JPEG or TIFF magic bytes" in answer, answer[-300:]
