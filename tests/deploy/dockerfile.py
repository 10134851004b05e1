"""A small Dockerfile reader for the deploy tests: stages, instructions, ARG defaults, ENV values.

No Docker engine runs where the tests run, so the tests read the Dockerfile and carry out its
commands themselves; this module is the one place that knows the Dockerfile syntax they use.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Dockerfile", "Instruction", "Stage"]


@dataclass(frozen=True)
class Instruction:
    keyword: str
    """Upper-case, e.g. RUN, COPY, HEALTHCHECK."""
    args: str
    """Everything after the keyword, continuation lines joined with one space."""

    def exec_form(self) -> list[str] | None:
        """The JSON array of an exec-form instruction (`["a", "b"]`), else None."""
        text = self.args.strip()
        if not text.startswith("["):
            return None
        value = json.loads(text)
        assert isinstance(value, list) and all(isinstance(v, str) for v in value), text
        return value


@dataclass
class Stage:
    base: str
    """The FROM image with build ARGs substituted."""
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def one(self, keyword: str) -> Instruction:
        found = self.all(keyword)
        assert len(found) == 1, (
            f"expected one {keyword} in stage {self.name or self.base}, found {len(found)}"
        )
        return found[0]

    def env(self) -> dict[str, str]:
        """ENV values in order, `KEY=VALUE` forms only (the kind the shardflow Dockerfile uses)."""
        values: dict[str, str] = {}
        for inst in self.all("ENV"):
            for token in shlex.split(inst.args):
                key, sep, value = token.partition("=")
                assert sep, f"ENV {inst.args!r}: use KEY=VALUE"
                values[key] = value
        return values


@dataclass
class Dockerfile:
    args: dict[str, str]
    """ARG defaults declared before the first FROM."""
    stages: list[Stage]

    @property
    def final(self) -> Stage:
        return self.stages[-1]

    def stage(self, name: str) -> Stage:
        for s in self.stages:
            if s.name == name:
                return s
        raise AssertionError(f"no stage named {name!r}")

    @classmethod
    def parse(cls, path: Path) -> Dockerfile:
        args: dict[str, str] = {}
        stages: list[Stage] = []
        for line in _logical_lines(path.read_text()):
            keyword, _, rest = line.partition(" ")
            keyword = keyword.upper()
            rest = rest.strip()
            if keyword == "FROM":
                words = rest.split()
                words = [w for w in words if not w.startswith("--")]
                base = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args[m.group(1) or m.group(2)], words[0])
                name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
                stages.append(Stage(base=base, name=name))
            elif not stages:
                assert keyword == "ARG", f"only ARG may come before FROM, found {keyword}"
                key, _, default = rest.partition("=")
                args[key] = default
            else:
                stages[-1].instructions.append(Instruction(keyword, rest))
        assert stages, f"{path} has no FROM"
        return cls(args=args, stages=stages)


def _logical_lines(text: str) -> list[str]:
    """Instructions with backslash continuations joined; comments, parser directives and blanks dropped."""
    lines: list[str] = []
    pending = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1].rstrip() + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    if pending:
        lines.append(pending.rstrip())
    return lines
