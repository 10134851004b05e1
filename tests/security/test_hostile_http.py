"""Hostile clients against a real front end on loopback: fuzzed requests, slow-loris, huge headers.

Whatever a client sends, the answer is never a 500 and the process keeps serving; clients that
trickle headers or send oversized ones are cut off within the configured limits.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.security.conftest import WRITE_KEY, Served
from tests.support.kinesalite import ROOT
from tests.support.net import free_port
from tests.support.wait import wait_until

PATHS = ["/v1/events", "/v1/page", "/v1/track", "/v1/identify", "/v1/batch", "/i", "/healthz",
         "/readyz", "/metrics", "/openapi.json", "/v1/events/../metrics", "/%00", "/v1/events?x=%ff",
         "/nope"]  # fmt: skip
TYPES = ["application/json", "application/x-ndjson", "text/plain", "application/x-www-form-urlencoded",
         "application/xml", "multipart/form-data; boundary=x", "application/json; charset=latin-1",
         ""]  # fmt: skip
FIELDS = ["event_id", "type", "ts", "url", "referrer", "title", "user_id", "anonymous_id", "session_id",
          "user_agent", "ip", "properties", "context", "name", "traits", "messageId", "timestamp",
          "userId", "anonymousId", "event", "writeKey", "batch"]  # fmt: skip


def _dumps(value: object) -> bytes:
    """The stdlib encoder: it writes integers of any size, as hostile clients do."""
    return json.dumps(value).encode()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=50),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=20,
)
events = st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=8)
bodies = st.one_of(
    st.binary(max_size=2000),
    events.map(_dumps),
    st.lists(events, max_size=5).map(_dumps),
    st.lists(events, max_size=5).map(lambda xs: b"\n".join(_dumps(x) for x in xs)),
    st.dictionaries(st.just("batch"), st.lists(events, max_size=5)).map(_dumps),
)
auth = st.sampled_from(
    [None, "Basic " + base64.b64encode(f"{WRITE_KEY}:".encode()).decode(), "Basic !!!", "Bearer x",
     "Basic " + base64.b64encode(b"\xff\xfe:").decode(), "Basic " + base64.b64encode(b"wrong:").decode()]
)  # fmt: skip


def _request(served: Served, method: str, path: str, body: bytes, headers: dict[str, str]) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    method=st.sampled_from(["POST", "GET", "OPTIONS", "PUT", "DELETE", "HEAD"]),
    path=st.sampled_from(PATHS),
    content_type=st.sampled_from(TYPES),
    body=bodies,
    authorization=auth,
    origin=st.sampled_from([None, "https://shop.example", "null"]),
)
def test_no_request_gets_a_500(
    keyed_front: Served,
    method: str,
    path: str,
    content_type: str,
    body: bytes,
    authorization: str | None,
    origin: str | None,
) -> None:
    headers = {"Content-Type": content_type}
    if authorization is not None:
        headers["Authorization"] = authorization
    if origin is not None:
        headers["Origin"] = origin
    status = _request(keyed_front, method, path, body, headers)
    assert status < 500, (method, path, headers, body[:200], status)


def test_the_server_still_serves_after_the_fuzzing(keyed_front: Served) -> None:
    assert _request(keyed_front, "GET", "/healthz", b"", {}) == 200


def test_slow_loris_headers_are_cut_off(keyed_front: Served) -> None:
    """A client trickling a header byte every 0.5 s is disconnected by the idle timeout (2 s here)."""
    with socket.create_connection(("127.0.0.1", keyed_front.port), timeout=10) as sock:
        sock.sendall(b"POST /v1/events HTTP/1.1\r\nHost: x\r\n")
        started = time.monotonic()
        closed = False
        while time.monotonic() - started < 12:
            try:
                sock.sendall(b"X-a: b\r\n")
                sock.settimeout(0.5)
                if sock.recv(1024) == b"":
                    closed = True
                    break
            except TimeoutError:
                continue
            except OSError:
                closed = True
                break
        assert closed, "the server kept a connection trickling headers open for 12 s"
        assert time.monotonic() - started < 8


def test_a_slow_body_is_answered_408_and_closed(keyed_front: Served) -> None:
    with socket.create_connection(("127.0.0.1", keyed_front.port), timeout=10) as sock:
        key = base64.b64encode(f"{WRITE_KEY}:".encode()).decode()
        sock.sendall(
            b"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Authorization: Basic {key}\r\n".encode()
            + b"Content-Length: 1000\r\n\r\n{"
        )
        started = time.monotonic()
        answer = b""
        sock.settimeout(10)
        while chunk := sock.recv(4096):
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert time.monotonic() - started < 8


@pytest.mark.parametrize(
    "header",
    [b"X-Big: " + b"a" * 70_000, b"".join(b"X-%d: v\r\n" % i for i in range(5000)).rstrip(b"\r\n")],
    ids=["one-70KB-header", "5000-headers"],
)
def test_oversized_headers_are_refused_without_a_500(keyed_front: Served, header: bytes) -> None:
    with socket.create_connection(("127.0.0.1", keyed_front.port), timeout=10) as sock:
        try:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + header + b"\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            return  # cut off while still sending: refused
        sock.settimeout(10)
        answer = b""
        try:
            while chunk := sock.recv(4096):
                answer += chunk
        except ConnectionResetError:
            pass
    status = answer.split(b" ", 2)[1] if answer.startswith(b"HTTP/") else b""
    assert status in (b"", b"400", b"413", b"431"), answer[:300]
    assert _request(keyed_front, "GET", "/healthz", b"", {}) == 200


def test_schemathesis_finds_no_server_error(tmp_path: Path) -> None:
    """Schemathesis generates requests from /openapi.json of a real `shardflow ingest` (bounded ~20 s):
    no 500, the process survives, and its memory stays bounded."""
    st_bin = Path(sys.executable).with_name("st")
    if not st_bin.exists():
        pytest.skip("schemathesis is not installed (pip install -e '.[test]')")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHARDFLOW_")}
    server = subprocess.Popen(
        [sys.executable, "-m", "processor", "ingest", "--port", str(port), "--data-dir", str(tmp_path),
         "--write-key", WRITE_KEY, "--max-body", "256KiB"],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_until(lambda: _up(port) or server.poll() is not None, timeout=30, what="shardflow ingest")
        assert server.poll() is None
        rss_before = _rss_mb(server.pid)
        done = subprocess.run(
            [str(st_bin), "run", f"http://127.0.0.1:{port}/openapi.json", "--checks", "not_a_server_error",
             "--max-examples", "15", "--max-time", "20", "--seed", "1", "--workers", "2",
             "--phases", "examples,coverage,fuzzing"],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=100,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
        assert server.poll() is None, "the front end died under schemathesis"
        grown = _rss_mb(server.pid) - rss_before
        assert grown < 150, f"the front end grew by {grown:.0f} MB under schemathesis"
    finally:
        server.terminate()
        server.wait(30)


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _up(port: int) -> bool:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
        conn.request("GET", "/healthz")
        return conn.getresponse().status == 200
    except OSError:
        return False


assert ROOT.is_dir()
