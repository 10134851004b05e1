"""Write keys and warehouse passwords never show in logs, metrics, answers or error messages."""

from __future__ import annotations

import base64
import http.client
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from tests.security.conftest import WRITE_KEY, Served
from tests.support.kinesalite import ROOT
from tests.support.net import free_port
from tests.support.wait import wait_until

WRONG_KEY = "sk_live_WrongKey7Hq3"
PASSWORD = "Pw_s3cret_Vb81xQ"


def _basic(key: str) -> str:
    return "Basic " + base64.b64encode(f"{key}:".encode()).decode()


def _call(served: Served, method: str, path: str, body: bytes = b"", **headers: str) -> str:
    """Status line, headers and body of one answer, as text."""
    conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers)
        r = conn.getresponse()
        return f"{r.status}\n{r.getheaders()}\n{r.read().decode('utf-8', 'replace')}"
    finally:
        conn.close()


def test_write_keys_are_not_in_answers_metrics_or_logs(
    keyed_front: Served, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    good = orjson.dumps({"event_id": "k1", "url": "https://shop.example/"})
    bad = orjson.dumps([{"event_id": "k2", "url": 5}])
    answers = []
    for key in (WRITE_KEY, WRONG_KEY):
        answers += [
            _call(keyed_front, "POST", "/v1/events", body, Authorization=_basic(key),
                  **{"Content-Type": "application/json"})
            for body in (good, bad, b"not json")
        ]  # fmt: skip
        for path in ("/v1/track", "/v1/batch"):
            segment = (
                {"writeKey": key, "event": 5} if path == "/v1/track" else {"writeKey": key, "batch": [{}]}
            )
            answers.append(_call(keyed_front, "POST", path, orjson.dumps(segment)))
        answers.append(_call(keyed_front, "GET", f"/i?k={key}&url=https://shop.example/"))
    answers.append(_call(keyed_front, "POST", "/v1/events", good, Authorization=f"Basic {WRONG_KEY}"))
    assert any(a.startswith("202") for a in answers) and any(a.startswith("401") for a in answers)
    metrics = _call(keyed_front, "GET", "/metrics")
    ready = _call(keyed_front, "GET", "/readyz")
    for where, text in [("answers", "\n".join(answers)), ("metrics", metrics), ("readyz", ready),
                        ("logs", caplog.text)]:  # fmt: skip
        assert WRITE_KEY not in text, f"the write key shows in the {where}"
        assert WRONG_KEY not in text, f"a wrong key a client sent shows in the {where}"


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("SHARDFLOW_")}


def test_a_warehouse_password_is_not_in_any_output(tmp_path: Path) -> None:
    """consume (warehouse unreachable, debug logs), query's error, and config all mask the password."""
    url = f"postgresql://postgres:{PASSWORD}@127.0.0.1:{free_port()}/nowhere"
    common = ["--warehouse", url, "--data-dir", str(tmp_path), "--log-level", "debug"]
    port = free_port()
    log = tmp_path / "consume.log"
    with open(log, "wb") as out:
        consume = subprocess.Popen(
            [sys.executable, "-m", "processor", "consume", *common, "--port", str(port),
             "--status-interval", "1s"],
            cwd=ROOT, env=_env(), stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        wait_until(lambda: _get(port, "/readyz")[0] == 503 or consume.poll() is not None, timeout=30)
        assert consume.poll() is None, log.read_text(errors="replace")
        metrics = _get(port, "/metrics")[1]
        ready = _get(port, "/readyz")[1]
        wait_until(lambda: "127.0.0.1" in log.read_text(errors="replace"), timeout=15, what="a log line")
    finally:
        consume.send_signal(signal.SIGTERM)
        consume.wait(30)
    outputs = {"consume logs": log.read_text(errors="replace"), "consume /metrics": metrics,
               "consume /readyz": ready}  # fmt: skip
    for args in (["query", "SELECT 1", *common], ["config", *common, "--write-key", WRITE_KEY],
                 ["status", *common]):  # fmt: skip
        done = subprocess.run(
            [sys.executable, "-m", "processor", *args], cwd=ROOT, env=_env(), capture_output=True,
            text=True, timeout=60,
        )  # fmt: skip
        outputs[f"shardflow {args[0]}"] = done.stdout + done.stderr
    assert "127.0.0.1" in outputs["shardflow query"], outputs["shardflow query"]
    for where, text in outputs.items():
        assert PASSWORD not in text, f"the warehouse password shows in {where}:\n{text[-2000:]}"
        assert WRITE_KEY not in text, f"the write key shows in {where}"


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.read().decode("utf-8", "replace")
    except OSError:
        return 0, ""


def test_a_rejected_segment_call_does_not_file_its_write_key_in_the_dead_letter(keyed_front: Served) -> None:
    """A dead letter's payload is shown by `shardflow dead-letters list` and stored in the warehouse."""
    import asyncio

    from tests.ingest.conftest import dead_letters_on_stream

    for path in ("/v1/track", "/v1/page", "/v1/identify"):
        answer = _call(keyed_front, "POST", path, orjson.dumps({"writeKey": WRITE_KEY, "event": 5}))
        assert answer.startswith("200"), answer

    async def letters() -> list[str]:
        return [d.payload for d in await dead_letters_on_stream(keyed_front.stream)]

    def three() -> list[str] | None:
        found = asyncio.run_coroutine_threadsafe(letters(), keyed_front.loop).result(10)
        return found if len(found) >= 3 else None

    payloads = wait_until(three, timeout=20, what="3 dead letters on the stream")
    assert all(WRITE_KEY not in p for p in payloads), payloads
    assert all('"event":5' in p.replace(" ", "") for p in payloads), payloads
