"""The Dockerfile, checked without a Docker engine: its shape, then its commands run the way the image would.

The build test copies exactly what the builder stage COPYs, runs the builder's `pip wheel`, creates the
final stage's venv with the final stage's `pip install` (no index: only the built wheels), then runs the
ENTRYPOINT with `--help` and with `ingest` configured by SHARDFLOW_* variables only, and probes it with
the HEALTHCHECK command itself.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.deploy.dockerfile import Dockerfile, Instruction, Stage
from tests.deploy.promql import exposed_series, used_metrics
from tests.support.net import free_port
from tests.support.wait import wait_until

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"

COMPILERS = re.compile(r"\b(gcc|g\+\+|cc|clang|make|build-essential|python3?-dev|libc6?-dev|apt-get|apk)\b")


@pytest.fixture(scope="module")
def dockerfile() -> Dockerfile:
    return Dockerfile.parse(DOCKERFILE)


def _run_words(inst: Instruction) -> list[list[str]]:
    """The shell commands of one RUN, split on `&&`, without its `--mount=...` style flags."""
    words = shlex.split(inst.args)
    while words and words[0].startswith("--"):
        words.pop(0)
    commands: list[list[str]] = [[]]
    for w in words:
        if w == "&&":
            commands.append([])
        else:
            commands[-1].append(w)
    return [c for c in commands if c]


def _pip_commands(stage: Stage, verb: str) -> list[list[str]]:
    return [cmd for inst in stage.all("RUN") for cmd in _run_words(inst) if "pip" in cmd and verb in cmd]


def test_final_stage_is_slim_python_run_as_a_non_root_user(dockerfile: Dockerfile) -> None:
    assert len(dockerfile.stages) >= 2, "multi-stage: a builder and a final stage"
    final = dockerfile.final
    assert final.base == "python:3.11-slim"
    user = final.all("USER")
    assert user, "the final stage must switch to a non-root USER"
    name = user[-1].args.split(":")[0].strip()
    assert name not in ("root", "0"), f"USER {user[-1].args} is root"
    assert final.one("ENTRYPOINT").exec_form() == ["shardflow"]
    assert "8080" in final.one("EXPOSE").args.split()
    healthcheck = final.one("HEALTHCHECK").args
    assert "/healthz" in healthcheck and "urllib" in healthcheck
    assert "curl" not in healthcheck and "wget" not in healthcheck


def test_final_stage_installs_no_compiler_and_no_source(dockerfile: Dockerfile) -> None:
    final = dockerfile.final
    for inst in final.all("RUN"):
        for cmd in _run_words(inst):
            assert not COMPILERS.search(" ".join(cmd)), f"final stage runs {cmd}"
    for inst in final.all("COPY") + final.all("ADD"):
        assert "--from=" in inst.args, f"final stage copies from the build context: {inst.args}"
    installs = _pip_commands(final, "install")
    assert len(installs) == 1, installs
    assert "--no-index" in installs[0], "the final stage installs only the builder's wheels"


def test_dockerignore_lets_in_only_what_the_builder_copies(dockerfile: Dockerfile) -> None:
    lines = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*", ".dockerignore starts by excluding everything"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    sources = _builder_sources(dockerfile.stage("builder"))
    assert set(sources) == allowed


def _builder_sources(builder: Stage) -> list[str]:
    sources: list[str] = []
    for inst in builder.all("COPY"):
        words = [w for w in shlex.split(inst.args) if not w.startswith("--")]
        sources.extend(w.rstrip("/") for w in words[:-1])
    return sources


def _image_env(final: Stage, venv: Path, **overrides: str) -> dict[str, str]:
    """The environment the container gets: the final stage's ENV, with the venv's PATH and test overrides."""
    env = {
        "HOME": str(venv.parent / "home"),
        "LANG": "C.UTF-8",
    }
    env.update(final.env())
    env["PATH"] = f"{venv / 'bin'}:/usr/local/bin:/usr/bin:/bin"
    env.update(overrides)
    return env


@pytest.mark.slow
def test_image_commands_install_the_wheel_and_serve_healthz(dockerfile: Dockerfile, tmp_path: Path) -> None:
    for needed in ("processor/cli.py", "processor/ingest/server.py"):
        if not (ROOT / needed).exists():
            pytest.skip(f"{needed} (needed by `shardflow ingest`) has not landed yet")
    builder = dockerfile.stage("builder")
    final = dockerfile.final

    src = tmp_path / "src"
    src.mkdir()
    for source in _builder_sources(builder):
        origin = ROOT / source
        if origin.is_dir():
            shutil.copytree(origin, src / source, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(origin, src / source)

    substitutions = {"/wheels": str(tmp_path / "wheels"), "/opt/shardflow": str(tmp_path / "venv")}

    def localise(cmd: list[str]) -> list[str]:
        out = []
        for word in cmd:
            for image_path, local in substitutions.items():
                word = word.replace(image_path, local)
            out.append(word)
        if out[0] == "python":
            out[0] = sys.executable
        return out

    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    (wheel,) = _pip_commands(builder, "wheel")
    subprocess.run(localise(wheel), cwd=src, env=clean, check=True, capture_output=True, timeout=300)
    for inst in final.all("RUN"):
        for cmd in _run_words(inst):
            if "pip" in cmd or "venv" in cmd:
                subprocess.run(localise(cmd), env=clean, check=True, capture_output=True, timeout=300)

    venv = tmp_path / "venv"
    home = tmp_path / "home"
    home.mkdir()
    port = free_port()
    env = _image_env(
        final,
        venv,
        SHARDFLOW_HOST="127.0.0.1",
        SHARDFLOW_PORT=str(port),
        SHARDFLOW_DATA_DIR=str(tmp_path / "data"),
    )
    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import processor; print(processor.__file__)"],
        cwd=home,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert Path(where).is_relative_to(venv), f"processor imported from {where}, not the fresh venv"

    entrypoint = final.one("ENTRYPOINT").exec_form()
    assert entrypoint is not None
    entry = [shutil.which(entrypoint[0], path=env["PATH"]) or entrypoint[0], *entrypoint[1:]]
    assert Path(entry[0]).is_relative_to(venv), entry

    helped = subprocess.run([*entry, "--help"], cwd=home, env=env, capture_output=True, text=True, timeout=60)
    assert helped.returncode == 0, helped.stderr
    for role in ("ingest", "consume", "run"):
        assert role in helped.stdout, f"`shardflow --help` does not mention {role}"

    healthcheck = final.one("HEALTHCHECK").args
    probe_form = Instruction("CMD", healthcheck.split(" CMD ", 1)[1]).exec_form()
    assert probe_form is not None, "HEALTHCHECK CMD in exec form"
    probe = [shutil.which(probe_form[0], path=env["PATH"]) or probe_form[0], *probe_form[1:]]
    assert Path(probe[0]).is_relative_to(venv), probe

    shown = subprocess.run([*entry, "config"], cwd=home, env=env, capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert f"port = {port}  # env" in shown.stdout, shown.stdout

    with _serving([*entry, "ingest"], probe, home, env, tmp_path / "ingest.log"):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as answer:
            assert answer.status == 200
        event = json.dumps({"url": "https://shop.example/p?utm_source=docker", "anonymous_id": "a1"})
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/events",
            data=event.encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as answer:
            assert answer.status == 202
            assert json.loads(answer.read()) == {"accepted": 1, "rejected": []}

    # The consumer role, on the same data dir, answers the same HEALTHCHECK and loads the event:
    # the wheel carries everything enrichment needs at run time.
    consume_env = env | {"SHARDFLOW_WORKERS": "1"}
    with _serving([*entry, "consume"], probe, home, consume_env, tmp_path / "consume.log"):

        def loaded() -> bool:
            counted = subprocess.run(
                [*entry, "query", "--format", "tsv", "select count(*) from page_views"],
                cwd=home,
                env=env,
                capture_output=True,
                text=True,
                timeout=30,
            )
            return counted.returncode == 0 and counted.stdout.split()[-1:] == ["1"]

        wait_until(loaded, timeout=30, interval=0.25, what="the event in page_views")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
            exposed = exposed_series(answer.read().decode())
        missing = sorted(set(used_metrics()) - exposed)
        assert not missing, f"the dashboard or alerts use {missing}, absent from consume's /metrics"


@contextmanager
def _serving(
    command: list[str], probe: list[str], home: Path, env: dict[str, str], log_path: Path
) -> Iterator[None]:
    """Run one role until the HEALTHCHECK passes, yield, then SIGTERM it: it must drain and exit 0."""
    with log_path.open("wb") as log:
        proc = subprocess.Popen(command, cwd=home, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:

            def healthy() -> bool:
                assert proc.poll() is None, f"{command[1:]} exited {proc.returncode}: {_tail(log_path)}"
                return (
                    subprocess.run(probe, cwd=home, env=env, capture_output=True, timeout=10).returncode == 0
                )

            wait_until(healthy, timeout=30, interval=0.1, what=f"the HEALTHCHECK of {command[1:]} to pass")
            yield
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0, _tail(log_path)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _tail(path: Path) -> str:
    return path.read_text(errors="replace")[-2000:]
