"""The fault schedule: drawn from a seed, so the same seed always gives the same faults.

Every fault has a start time (seconds after the load starts), a duration, and a target. The
schedule covers each kind at least once, spread over the run and clear of its last tenth, so
the pipeline is healed well before the load stops. Faults of different kinds may overlap (that
is the point: everything breaks at once); faults of one kind on one target never do.
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass

__all__ = ["Fault", "Kind", "build", "describe"]


class Kind(enum.StrEnum):
    FRONT_END_KILL = "front-end SIGKILL + restart"
    CONSUMER_KILL = "consumer SIGKILL + restart"
    CONSUMER_PAUSE = "consumer SIGSTOP ... SIGCONT"
    CONSUMER_RESTART = "consumer SIGTERM + restart"
    STREAM_STALL = "stream stalled"
    THROTTLE = "stream throttling"
    RECORD_ERRORS = "per-record put errors"
    WAREHOUSE_CUT = "warehouse cut off"
    RESHARD = "reshard --split"
    SPOOL_FULL = "spool disk full"


KINESIS_ONLY = frozenset({Kind.THROTTLE, Kind.RECORD_ERRORS})
"""The embedded stream is a local file: it never throttles or fails single records."""


@dataclass(frozen=True, slots=True)
class Fault:
    at: float
    """Seconds after the load starts."""
    kind: Kind
    duration: float
    """Seconds until the fault is healed (0: a single action, such as a reshard)."""
    target: int = 0
    """Which front end or consumer (0-based); unused for stream and warehouse faults."""

    @property
    def until(self) -> float:
        return self.at + self.duration

    def label(self) -> str:
        who = ""
        if self.kind is Kind.FRONT_END_KILL or self.kind is Kind.SPOOL_FULL:
            who = f" fe{self.target + 1}"
        elif self.kind.name.startswith("CONSUMER"):
            who = f" c{self.target + 1}"
        return f"{self.kind.value}{who}"


_DURATIONS: dict[Kind, tuple[float, float]] = {
    Kind.FRONT_END_KILL: (1.0, 4.0),
    Kind.CONSUMER_KILL: (1.0, 5.0),
    Kind.CONSUMER_PAUSE: (4.0, 8.0),
    Kind.CONSUMER_RESTART: (0.5, 3.0),
    Kind.STREAM_STALL: (2.0, 8.0),
    Kind.THROTTLE: (2.0, 6.0),
    Kind.RECORD_ERRORS: (2.0, 6.0),
    Kind.WAREHOUSE_CUT: (2.0, 8.0),
    Kind.RESHARD: (0.0, 0.0),
    Kind.SPOOL_FULL: (2.0, 6.0),
}


def build(
    seed: int, seconds: float, *, kinesis: bool, front_ends: int = 2, consumers: int = 3
) -> list[Fault]:
    """Faults for a run of `seconds` of load: every kind once per ~60 s (at least once), one reshard.

    The same arguments always give the same list, sorted by start time.
    """
    rng = random.Random(seed)
    horizon = seconds * 0.85
    rounds = max(1, round(seconds / 60))
    kinds = [k for k in Kind if kinesis or k not in KINESIS_ONLY]
    faults: list[Fault] = []
    busy: dict[tuple[Kind, int], list[tuple[float, float]]] = {}
    for kind in kinds:
        count = 1 if kind is Kind.RESHARD else rounds
        for i in range(count):
            low, high = _DURATIONS[kind]
            # Short runs compress the faults so that each fits well before the load stops.
            scale = min(1.0, seconds / 60)
            if kind is not Kind.CONSUMER_PAUSE:
                # A pause stays longer than the lease timeout, so that its leases are taken over.
                low, high = low * max(scale, 0.5), high * max(scale, 0.5)
            duration = round(rng.uniform(low, high), 1)
            if kind is Kind.RESHARD:
                window = (horizon * 0.3, horizon * 0.6)
            else:
                width = horizon / count
                window = (0.1 * seconds + i * width * 0.9, min(horizon, (i + 1) * width) - duration)
            target = 0
            if kind in (Kind.FRONT_END_KILL, Kind.SPOOL_FULL):
                target = rng.randrange(front_ends)
            elif kind.name.startswith("CONSUMER"):
                target = rng.randrange(consumers)
            at = _place(rng, window, duration, busy.setdefault(_resource(kind, target), []))
            faults.append(Fault(round(at, 1), kind, duration, target))
    faults.sort(key=lambda f: (f.at, f.kind.value))
    return faults


def _resource(kind: Kind, target: int) -> tuple[Kind, int]:
    """Faults that act on the same process must not overlap (a killed process cannot be paused)."""
    if kind in (Kind.FRONT_END_KILL, Kind.SPOOL_FULL):
        return (Kind.FRONT_END_KILL, target)
    if kind.name.startswith("CONSUMER"):
        return (Kind.CONSUMER_KILL, target)
    return (kind, 0)


def _place(
    rng: random.Random, window: tuple[float, float], duration: float, taken: list[tuple[float, float]]
) -> float:
    low, high = window
    high = max(low, high)
    at = low
    for _ in range(50):
        at = rng.uniform(low, high)
        if all(at + duration + 1.0 < s or at > e + 1.0 for s, e in taken):
            break
    taken.append((at, at + duration))
    return at


def describe(faults: list[Fault], seed: int) -> str:
    """The schedule as printed before the run, so a failure names the faults that caused it."""
    lines = [f"fault schedule (seed {seed}):"]
    for f in faults:
        span = f"{f.at:6.1f}s" + (f" .. {f.until:6.1f}s" if f.duration else " " * 11)
        lines.append(f"  {span}  {f.label()}")
    return "\n".join(lines)
