"""The balancing rule on its own: fair targets, free leases first, steals that never flap."""

from __future__ import annotations

import random
from collections import Counter

from shard_consumer.leases import plan_balance, workable
from sinks.base import Lease

NOW = 1000.0


def lease(shard: str, owner: str | None, *, expires: float = NOW + 10, parents: tuple[str, ...] = (),
          checkpoint: str | None = None) -> Lease:  # fmt: skip
    return Lease("s", shard, owner, 1, expires if owner else 0.0, parents, checkpoint)


def test_free_leases_are_taken_up_to_the_fair_share() -> None:
    leases = [lease(f"sh{i}", "other" if i < 3 else None) for i in range(8)]
    plan = plan_balance(leases, "me", [], NOW, random.Random(1))
    assert plan.consumers == 2 and plan.target == 4
    assert len(plan.take) == 4 and all(p.owner is None for p in plan.take)
    assert plan.steals == []


def test_expired_leases_count_as_free_and_their_owner_as_gone() -> None:
    leases = [lease(f"sh{i}", "dead", expires=NOW - 1) for i in range(4)]
    plan = plan_balance(leases, "me", [], NOW, random.Random(1))
    assert plan.consumers == 1 and len(plan.take) == 4


def test_steals_only_from_owners_two_ahead() -> None:
    # 3/3/2 over 8 shards: the one with 2 must not steal (that would flap)
    leases = [lease(f"sh{i}", o) for i, o in enumerate(["a"] * 3 + ["b"] * 3 + ["me"] * 2)]
    plan = plan_balance(leases, "me", ["sh6", "sh7"], NOW, random.Random(1))
    assert plan.take == [] and plan.steals == []


def test_a_newcomer_steals_from_the_most_loaded_until_even() -> None:
    leases = [lease(f"sh{i}", o) for i, o in enumerate(["a"] * 3 + ["b"] * 3 + ["c"] * 2)]
    plan = plan_balance(leases, "me", [], NOW, random.Random(1))
    assert plan.target == 2
    assert Counter(p.owner for p in plan.steals) == Counter({"a": 1, "b": 1})


def test_repeated_planning_converges_without_flapping() -> None:
    rng = random.Random(7)
    owners: list[str | None] = ["a"] * 9
    consumers = ["a", "b", "c", "d"]

    def step() -> int:
        moves = 0
        for me in consumers:
            leases = [lease(f"sh{i}", o) for i, o in enumerate(owners)]
            held = [lease_.shard_id for lease_ in leases if lease_.owner == me]
            plan = plan_balance(leases, me, held, NOW, rng)
            for stolen in plan.steals:
                owners[int(stolen.shard_id[2:])] = me
                moves += 1
        return moves

    total = sum(step() for _ in range(5))
    assert sorted(Counter(owners).values()) == [2, 2, 2, 3]
    assert total <= 9, "a consumer joining unseen may overshoot once, never oscillate"
    assert sum(step() for _ in range(20)) == 0, "once fair, nothing moves"


def test_children_wait_for_every_parent_at_shard_end() -> None:
    leases = [
        lease("p1", None, checkpoint="SHARD_END"),
        lease("p2", None, checkpoint="123"),
        lease("c1", None, parents=("p1",)),
        lease("c2", None, parents=("p1", "p2")),
        lease("c3", None, parents=("trimmed",)),
    ]
    assert [x.shard_id for x in workable(leases)] == ["p2", "c1", "c3"]
