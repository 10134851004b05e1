"""The docs stay in step with the code: every option, variable, command and metric they must name."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from processor import metrics
from processor.config import OPTIONS

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"


def test_configuration_reference_names_every_option_and_its_variable() -> None:
    text = (DOCS / "configuration.md").read_text()
    missing = [
        f"--{o.name} / {o.env}" for o in OPTIONS if f"`--{o.name}" not in text or f"`{o.env}`" not in text
    ]
    assert not missing, f"docs/configuration.md lacks {missing}"


def test_configuration_reference_names_no_option_that_does_not_exist() -> None:
    text = (DOCS / "configuration.md").read_text()
    known = {o.env for o in OPTIONS} | {"SHARDFLOW_CONFIG"}
    documented = set(re.findall(r"`(SHARDFLOW_[A-Z_]+)`", text))
    assert documented <= known, f"documented but not options: {sorted(documented - known)}"


def test_operations_guide_explains_every_metric() -> None:
    text = (DOCS / "operations.md").read_text()
    names = [m._name for m in vars(metrics).values() if hasattr(m, "_name") and hasattr(m, "_type")]
    assert names, "processor.metrics defines metrics"
    missing = [name for name in names if name not in text]
    assert not missing, f"docs/operations.md does not explain {missing}"


@pytest.mark.parametrize("doc", sorted(p.name for p in DOCS.glob("*.md")))
def test_relative_links_resolve(doc: str) -> None:
    text = (DOCS / doc).read_text()
    for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", text):
        assert (DOCS / target).resolve().exists(), f"{doc} links to missing {target}"


def test_readme_links_the_docs() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "docs/" in readme.split("## Docs", 1)[-1], "README.md ends with a Docs heading linking docs/"


def test_compose_example_configures_shardflow_by_known_variables_only() -> None:
    import yaml  # type: ignore[import-untyped]

    compose = yaml.safe_load((ROOT / "deploy" / "docker-compose.yml").read_text())
    known = {o.env for o in OPTIONS}
    roles: dict[str, str] = {}
    for name, service in compose["services"].items():
        if service.get("image") != "shardflow:local":
            continue
        roles[name] = service["command"][0]
        unknown = set(service["environment"]) - known
        assert not unknown, f"{name}: not shardflow options: {sorted(unknown)}"
    assert sorted(set(roles.values())) == ["consume", "ingest"], roles


def test_docs_cover_every_command_of_shardflow_help() -> None:
    import subprocess
    import sys

    helped = subprocess.run(
        [sys.executable, "-m", "processor", "--help"], capture_output=True, text=True, timeout=60, check=True
    )
    commands = re.findall(r"^    ([a-z][a-z-]+)\s", helped.stdout, flags=re.MULTILINE)
    assert {"run", "ingest", "consume", "stream", "status"} <= set(commands), helped.stdout
    docs = "\n".join(p.read_text() for p in DOCS.glob("*.md"))
    missing = [c for c in commands if f"shardflow {c}" not in docs]
    assert not missing, f"no doc mentions {missing}"
