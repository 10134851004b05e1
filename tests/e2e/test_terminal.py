"""`shardflow run` on a real terminal (a pty): Ctrl-C drains cleanly, a second Ctrl-C forces.

On a terminal Ctrl-C signals the whole process group, worker processes included; the drain
must still finish, exit 0 and print no traceback. The default worker count (one process per
core) is used on purpose.
"""

from __future__ import annotations

import os
import pty
import select
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import ROOT, events, send
from tests.support.net import free_port, port_open

pytestmark = pytest.mark.slow


class Terminal:
    def __init__(self, argv: list[str]) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SHARDFLOW_")}
        pid, fd = pty.fork()
        if pid == 0:  # the child: exec at once, nothing of pytest runs here
            os.chdir(ROOT)
            os.execve(sys.executable, [sys.executable, "-m", "processor", *argv], env)
        self.pid, self.fd, self.output = pid, fd, b""
        self.status: int | None = None

    def read_until(self, text: bytes, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output:
            if time.monotonic() > deadline:
                raise AssertionError(f"no {text!r} on the terminal:\n{self.output.decode(errors='replace')}")
            if select.select([self.fd], [], [], 0.1)[0]:
                try:
                    self.output += os.read(self.fd, 65536)
                except OSError:  # the child is gone and the pty closed
                    break

    def exit_code(self, timeout: float = 60.0) -> int:
        deadline = time.monotonic() + timeout
        while self.status is None:
            if select.select([self.fd], [], [], 0.1)[0]:
                try:
                    self.output += os.read(self.fd, 65536)
                except OSError:
                    pass
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = os.waitstatus_to_exitcode(status)
            elif time.monotonic() > deadline:
                raise AssertionError(f"still running:\n{self.output.decode(errors='replace')}")
        return self.status

    def close(self) -> None:
        if self.status is None:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
            self.status = -9
        os.close(self.fd)


@pytest.fixture
def terminal(tmp_path: Path) -> Iterator[tuple[Terminal, int]]:
    port = free_port()
    term = Terminal(["run", "--port", str(port), "--data-dir", str(tmp_path / "data")])
    try:
        term.read_until(b"Ctrl-C (or SIGTERM) drains")
        assert port_open("127.0.0.1", port)
        yield term, port
    finally:
        term.close()


def test_ctrl_c_drains_and_exits_0(terminal: tuple[Terminal, int]) -> None:
    term, port = terminal
    assert send(f"http://127.0.0.1:{port}", events(2000))[0] == 2000
    term.read_until(b"\x1b[2Kaccepted 2,000")
    os.write(term.fd, b"\x03")
    assert term.exit_code() == 0
    text = term.output.decode(errors="replace")
    assert "Traceback" not in text
    assert "stopped in" in text and "accepted 2000, in stream 2000, loaded 2000" in text


def test_second_ctrl_c_forces_exit(terminal: tuple[Terminal, int]) -> None:
    term, _ = terminal
    os.write(term.fd, b"\x03")
    term.read_until(b"draining (send again to force)")
    os.write(term.fd, b"\x03")
    assert term.exit_code() == 130
    assert "SIGINT again: forced exit" in term.output.decode(errors="replace")
