"""The lifecycle of one leased shard, in the KCL's words, as explicit states.

```
                 take lease
                     |
                     v
        +---------------------+  parents not at SHARD_END: poll
        | WAITING_ON_PARENTS  |<----+
        +---------------------+-----+
                     | every parent checkpointed SHARD_END
                     v
        +---------------------+
        |    INITIALIZING     |  read checkpoint, open an iterator
        +---------------------+
                     |
                     v
        +---------------------+  GetRecords -> worker pool -> in-order commit
        |     PROCESSING      |
        +---------------------+
          |         |        \\
 shard end|  stop / |         \\ lease lost (renewal or fenced commit refused)
          |  handoff|          \\
          v         v           v
        +---------------------+ |
        |    SHUTTING_DOWN    | |   drain in-flight batches, commit, release
        +---------------------+ |
                     |          |
                     v          v
        +--------------------------+
        |           DONE           |
        +--------------------------+
```

Checkpoint rules per transition (see `Transition`): shard end MUST checkpoint `SHARD_END`;
a requested shutdown or hand-off commits what is in flight and then releases; a lost lease must
NOT checkpoint anything (the fenced commit would be refused anyway) and does not release.
"""

from __future__ import annotations

import enum
from typing import Final

__all__ = ["ShardState", "Transition", "check_transition"]


class ShardState(enum.Enum):
    WAITING_ON_PARENTS = "waiting_on_parents"
    INITIALIZING = "initializing"
    PROCESSING = "processing"
    SHUTTING_DOWN = "shutting_down"
    DONE = "done"


class Transition(enum.Enum):
    """Why a shard leaves PROCESSING (or an earlier state)."""

    PARENTS_DONE = "parents_done"
    """Every parent is at SHARD_END; no checkpoint is written."""
    INITIALIZED = "initialized"
    """The iterator is open from the checkpoint; no checkpoint is written."""
    SHARD_END = "shard_end"
    """The closed shard was read to its end: MUST commit the checkpoint SHARD_END, then release,
    so the children become eligible."""
    SHUTDOWN_REQUESTED = "shutdown_requested"
    """Consumer stopping or hand-off asked: MAY checkpoint (commits the batches in flight, no new
    reads), then releases the lease at once so the next owner needs not wait for expiry."""
    LEASE_LOST = "lease_lost"
    """Another consumer owns the shard: MUST NOT checkpoint; in-flight batches are dropped and
    the lease is not released (it is not ours)."""
    FINISHED = "finished"
    """Shutting down completed; nothing more is written."""


_ALLOWED: Final[dict[tuple[ShardState, Transition], ShardState]] = {
    (ShardState.WAITING_ON_PARENTS, Transition.PARENTS_DONE): ShardState.INITIALIZING,
    (ShardState.INITIALIZING, Transition.INITIALIZED): ShardState.PROCESSING,
    (ShardState.INITIALIZING, Transition.SHARD_END): ShardState.SHUTTING_DOWN,
    (ShardState.PROCESSING, Transition.SHARD_END): ShardState.SHUTTING_DOWN,
    (ShardState.PROCESSING, Transition.SHUTDOWN_REQUESTED): ShardState.SHUTTING_DOWN,
    (ShardState.WAITING_ON_PARENTS, Transition.SHUTDOWN_REQUESTED): ShardState.SHUTTING_DOWN,
    (ShardState.INITIALIZING, Transition.SHUTDOWN_REQUESTED): ShardState.SHUTTING_DOWN,
    (ShardState.SHUTTING_DOWN, Transition.FINISHED): ShardState.DONE,
    (ShardState.WAITING_ON_PARENTS, Transition.LEASE_LOST): ShardState.DONE,
    (ShardState.INITIALIZING, Transition.LEASE_LOST): ShardState.DONE,
    (ShardState.PROCESSING, Transition.LEASE_LOST): ShardState.DONE,
    (ShardState.SHUTTING_DOWN, Transition.LEASE_LOST): ShardState.DONE,
}


def check_transition(state: ShardState, transition: Transition) -> ShardState:
    """The state after `transition`; ValueError for a transition the diagram does not have."""
    try:
        return _ALLOWED[(state, transition)]
    except KeyError:
        raise ValueError(f"no transition {transition.value} from {state.value}") from None
