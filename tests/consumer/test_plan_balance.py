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


# -- balancing by records/s ---------------------------------------------------------------------


def rated(shard: str, owner: str | None, rate: float) -> Lease:
    return Lease("s", shard, owner, 1, NOW + 10 if owner else 0.0, (), None, records_per_second=rate)


def simulate(owners: list[str], rates: list[float], consumers: list[str], rng: random.Random,
             cycles: int) -> list[int]:  # fmt: skip
    """Moves per cycle, each consumer planning in turn on the table the previous one left."""
    moves_per_cycle = []
    for _ in range(cycles):
        moves = 0
        for me in rng.sample(consumers, len(consumers)):
            leases = [rated(f"sh{i}", o, r) for i, (o, r) in enumerate(zip(owners, rates, strict=True))]
            held = [x.shard_id for x in leases if x.owner == me]
            plan = plan_balance(leases, me, held, NOW, rng)
            for moved in (*plan.take, *plan.steals):
                owners[int(moved.shard_id[2:])] = me
                moves += 1
        moves_per_cycle.append(moves)
    return moves_per_cycle


def loads(owners: list[str], rates: list[float]) -> dict[str, float]:
    total: dict[str, float] = {}
    for owner, rate in zip(owners, rates, strict=True):
        total[owner] = total.get(owner, 0.0) + rate
    return total


def test_equal_rates_never_move() -> None:
    owners = [c for c in "abcd" for _ in range(2)]
    for me in "abcd":
        leases = [rated(f"sh{i}", o, 500.0) for i, o in enumerate(owners)]
        plan = plan_balance(leases, me, [x.shard_id for x in leases if x.owner == me], NOW, random.Random(1))
        assert plan.take == [] and plan.steals == [] and not plan.load_move


def test_small_differences_never_move() -> None:
    """Below the skew or the absolute gap nothing moves: noise in measured rates is no reason."""
    owners = ["a", "a", "b", "b", "me", "me"]
    for rates in ([40.0, 40.0, 5.0, 5.0, 1.0, 1.0], [700.0, 700.0, 600.0, 600.0, 500.0, 500.0]):
        leases = [rated(f"sh{i}", o, r) for i, (o, r) in enumerate(zip(owners, rates, strict=True))]
        plan = plan_balance(leases, "me", ["sh4", "sh5"], NOW, random.Random(1))
        assert plan.steals == []


def test_the_least_loaded_asks_the_busiest_for_a_shard_that_narrows_the_gap() -> None:
    owners = ["a"] * 3 + ["b"] * 3 + ["me"] * 2
    rates = [300.0, 200.0, 100.0, 10.0, 10.0, 10.0, 0.0, 0.0]
    leases = [rated(f"sh{i}", o, r) for i, (o, r) in enumerate(zip(owners, rates, strict=True))]
    plan = plan_balance(leases, "me", ["sh6", "sh7"], NOW, random.Random(1))
    assert plan.load_move and [x.shard_id for x in plan.steals] == ["sh0"]  # 300 <= (600 - 0) / 2
    # only the least-loaded consumer moves, so two never chase the same busiest one
    plan_b = plan_balance(leases, "b", ["sh3", "sh4", "sh5"], NOW, random.Random(1))
    assert plan_b.steals == []


def test_a_move_never_reverses_the_two() -> None:
    """One hot shard is more than half the gap: moving it only moves the problem; nothing moves."""
    owners = ["a", "a", "me", "me"]
    rates = [1000.0, 1.0, 1.0, 1.0]
    leases = [rated(f"sh{i}", o, r) for i, (o, r) in enumerate(zip(owners, rates, strict=True))]
    assert plan_balance(leases, "me", ["sh2", "sh3"], NOW, random.Random(1)).steals == []


def test_count_steals_take_the_coldest_lease_when_the_stealer_is_busier() -> None:
    owners = ["a"] * 4 + ["me"]
    rates = [900.0, 5.0, 400.0, 300.0, 2000.0]
    leases = [rated(f"sh{i}", o, r) for i, (o, r) in enumerate(zip(owners, rates, strict=True))]
    plan = plan_balance(leases, "me", ["sh4"], NOW, random.Random(1))
    assert not plan.load_move and [x.shard_id for x in plan.steals] == ["sh1"]


def test_uneven_rates_converge_by_swaps_and_then_stay() -> None:
    # every consumer holds the fair 2; "a" holds both hot shards
    owners = ["a", "a", "b", "b", "c", "c", "d", "d"]
    rates = [1000.0, 900.0, 100.0, 90.0, 80.0, 70.0, 60.0, 50.0]
    before = loads(owners, rates)
    moves = simulate(owners, rates, list("abcd"), random.Random(3), 30)
    after = loads(owners, rates)
    assert sorted(Counter(owners).values()) == [2, 2, 2, 2]
    assert owners[0] != owners[1], "the two hot shards end on different consumers"
    assert max(after.values()) < 0.6 * max(before.values())
    assert sum(moves) > 0 and sum(moves[10:]) == 0, moves


def test_no_oscillation_over_many_random_groups() -> None:
    rng = random.Random(11)
    for _ in range(60):
        consumers = [f"c{i}" for i in range(rng.randint(2, 6))]
        shards = rng.randint(len(consumers), 24)
        rates = [round(rng.paretovariate(1.2) * 50, 1) for _ in range(shards)]
        owners = [consumers[i % len(consumers)] for i in range(shards)]
        rng.shuffle(owners)
        before = sum(load**2 for load in loads(owners, rates).values())
        moves = simulate(owners, rates, consumers, rng, 80)
        assert sum(load**2 for load in loads(owners, rates).values()) <= before + 1e-6, "load only evens out"
        counts = Counter(owners)
        assert max(counts.values()) - min(counts[c] for c in consumers) <= 1, (owners, rates)
        assert sum(moves[40:]) == 0, (moves, rates)
        assert sum(moves) <= 4 * shards, moves
