"""Shard leases: who reads which shard, kept in the warehouse and fenced by a counter.

Every change is a compare-and-set on the lease counter in the `LeaseStore`, so two consumers
never both believe they took the same lease. The rules, decided by `plan_balance`:

- Fair share: a consumer aims for ceil(workable shards / live consumers), consumers being the
  distinct owners of unexpired leases, the consumers with a hand-off request pending on one
  (a newcomer holding nothing is seen by its first request) and itself. A shard is workable
  when it is not finished (`SHARD_END`) and every parent is.
- Free and expired leases are taken first (in random order, so consumers starting together
  rarely collide); a consumer that already has its fair minimum leaves them to any consumer that
  holds fewer (else a lease handed over to a poorer consumer is snapped up by a richer one).
- Beyond that a consumer steals from the most-loaded owner, one lease per step, and only from
  an owner that holds at least two more than itself (counting the steals already planned):
  each step strictly narrows the spread, so the group converges and never flaps.
- Which lease a steal asks for follows the read rates owners publish with their renewals
  (`Lease.records_per_second`): the one that brings the two consumers' records/s closest without
  reversing them (the coldest when the stealer is already the busier).
- Load: once counts are fair, the consumer with the fewest records/s asks the busiest for one
  shard when the busiest exceeds the group mean by `RATE_SKEW` times and `RATE_MIN_GAP` records/s,
  choosing a shard that narrows their gap by `RATE_MIN_GAP` or more without reversing them. Where
  every consumer holds exactly the fair share, that move leaves the asker one over, and the
  victim's count steal takes back the asker's coldest shard: a swap in two hand-offs. Only the
  least-loaded consumer moves, one shard per cycle, and every move lowers the sum of squared
  loads by a fixed minimum, so the group settles and never ping-pongs.
- Stealing is graceful: `request_handoff`, the owner finishes its in-flight batches, commits and
  releases; the lease is forced only when the owner has not let go within `handoff_timeout`.
"""

from __future__ import annotations

import logging
import math
import os
import random
import secrets
import socket
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from processor.metrics import CONSUMER_RECORDS, LEASE_EVENTS, LEASES_HELD
from processor.streams.base import SHARD_END, Stream
from sinks.base import Lease, LeaseStore

__all__ = [
    "RATE_MIN_GAP",
    "RATE_SKEW",
    "RATE_TIME_CONSTANT",
    "BalancePlan",
    "LeaseManager",
    "RenewResult",
    "new_consumer_id",
    "plan_balance",
    "records_read",
    "workable",
]

log = logging.getLogger(__name__)

RATE_SKEW = 1.5
"""A load move starts only when the busiest consumer reads more than this times the group mean."""
RATE_MIN_GAP = 50.0
"""records/s: the busiest must exceed the mean by this much, and a move must narrow a gap by it."""
RATE_TIME_CONSTANT = 30.0
"""seconds: the EWMA of a shard's read rate forgets older reads on this scale."""


def new_consumer_id() -> str:
    """host:pid:random, unique across restarts of the same process id."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


def workable(leases: Sequence[Lease]) -> list[Lease]:
    """Leases of shards that are not finished and whose parents all are (or are long gone)."""
    known = {lease.shard_id for lease in leases}
    done = {lease.shard_id for lease in leases if lease.checkpoint == SHARD_END}
    return [
        lease
        for lease in leases
        if lease.checkpoint != SHARD_END
        and all(parent in done or parent not in known for parent in lease.parent_shard_ids)
    ]


def _live(lease: Lease, now: float) -> bool:
    return lease.owner is not None and lease.expires_at > now


@dataclass(frozen=True, slots=True)
class BalancePlan:
    target: int
    consumers: int
    take: list[Lease] = field(default_factory=list)
    """Free or expired leases to take now."""
    steals: list[Lease] = field(default_factory=list)
    """Live leases of the most-loaded owners to ask for, one per step."""
    load_move: bool = False
    """The steal (one at most) moves records/s between consumers already fair by count."""


def plan_balance(
    leases: Sequence[Lease], me: str, held: Sequence[str], now: float, rng: random.Random | None = None
) -> BalancePlan:
    """What `me`, holding `held`, should take or ask for to move towards a fair share."""
    rng = rng or random.Random()
    candidates = workable(leases)
    held_set = set(held)
    owners = Counter(
        lease.owner
        for lease in candidates
        if _live(lease, now) and lease.owner != me and lease.shard_id not in held_set
    )
    waiting = {
        lease.handoff_to
        for lease in candidates
        if lease.handoff_to is not None
        and lease.handoff_to != me
        and lease.handoff_to not in owners
        and _live(lease, now)
    }
    consumers = len(owners) + len(waiting) + 1
    target = math.ceil(len(candidates) / consumers) if candidates else 0
    mine = len(held_set)
    theirs: dict[str, list[Lease]] = {}
    for lease in candidates:
        if lease.owner is not None and lease.owner in owners and _live(lease, now):
            theirs.setdefault(lease.owner, []).append(lease)
    loads = {owner: sum(lease.records_per_second for lease in owned) for owner, owned in theirs.items()}
    my_load = sum(lease.records_per_second for lease in candidates if lease.shard_id in held_set)
    if mine >= target:
        if waiting:
            return BalancePlan(target, consumers)
        move = _load_move(candidates, held_set, owners, theirs, loads, my_load, me, target)
        return BalancePlan(target, consumers, steals=move, load_move=bool(move))
    free = [lease for lease in candidates if lease.shard_id not in held_set and not _live(lease, now)]
    rng.shuffle(free)
    free.sort(key=lambda lease: lease.handoff_to != me)
    if free:
        poorer = bool(waiting) or any(count < mine for count in owners.values())
        if poorer and mine >= len(candidates) // consumers:
            # Leave it to a consumer below its fair minimum: a lease just handed over to one
            # would otherwise be snapped up here, and the hand-off would start all over.
            return BalancePlan(target, consumers)
        return BalancePlan(target, consumers, take=free[: target - mine])
    for leases_of_owner in theirs.values():
        rng.shuffle(leases_of_owner)
    steals: list[Lease] = []
    while mine < target:
        most = max(owners.values(), default=0)
        if most < mine + 2:
            break
        victim = rng.choice([owner for owner, count in owners.items() if count == most])
        assert victim is not None
        stolen = _closest(theirs[victim], my_load, loads[victim])
        theirs[victim].remove(stolen)
        steals.append(stolen)
        owners[victim] -= 1
        loads[victim] -= stolen.records_per_second
        my_load += stolen.records_per_second
        mine += 1
    if steals or waiting:
        return BalancePlan(target, consumers, steals=steals)
    move = _load_move(candidates, held_set, owners, theirs, loads, my_load, me, target)
    return BalancePlan(target, consumers, steals=move, load_move=bool(move))


def _closest(offered: Sequence[Lease], mine: float, theirs: float) -> Lease:
    """The lease whose rate brings `mine` closest to `theirs` without reversing them."""
    fitting = [
        lease for lease in offered if mine + lease.records_per_second <= theirs - lease.records_per_second
    ]
    if fitting:
        return max(fitting, key=lambda lease: lease.records_per_second)
    return min(offered, key=lambda lease: lease.records_per_second)


def _load_move(
    candidates: Sequence[Lease],
    held: set[str],
    owners: Counter[str | None],
    theirs: dict[str, list[Lease]],
    loads: dict[str, float],
    my_load: float,
    me: str,
    target: int,
) -> list[Lease]:
    """One shard for the least-loaded consumer `me` to ask of the busiest, or nothing.

    Only where counts are fair (every consumer within [floor, ceil] of the share), and only a
    move that keeps them fair: a plain move when `me` is below the target and the busiest above
    the floor, a swap (the victim's count steal takes back `me`'s coldest shard) when every
    consumer holds exactly the share.
    """
    if not loads:
        return []
    mine = len(held)
    floor = len(candidates) // (len(owners) + 1)
    if not all(floor <= count <= target for count in (mine, *owners.values())):
        return []
    everyone = {**loads, me: my_load}
    if min(everyone.items(), key=lambda item: (item[1], item[0]))[0] != me:
        return []
    mean = sum(everyone.values()) / len(everyone)
    victim, busiest = max(loads.items(), key=lambda item: (item[1], item[0]))
    if busiest <= RATE_SKEW * mean or busiest - mean <= RATE_MIN_GAP:
        return []
    if mine < target and owners[victim] > floor:
        given_back = 0.0
    elif mine == target == floor == owners[victim] and held:
        given_back = min(lease.records_per_second for lease in candidates if lease.shard_id in held)
    else:
        return []
    gap = busiest - my_load
    best: Lease | None = None
    for lease in theirs[victim]:
        moved = lease.records_per_second - given_back
        # The net move neither reverses the two nor is too small to matter. A swap's first half
        # may reverse them for a moment but stays below the gap, so it too narrows the spread.
        if 2 * moved > gap or 2 * moved < RATE_MIN_GAP or lease.records_per_second >= gap:
            continue
        if best is None or lease.records_per_second > best.records_per_second:
            best = lease
    return [] if best is None else [best]


def records_read() -> dict[str, float]:
    """shard -> records this process has read from it (`shardflow_consumer_records`)."""
    return {
        sample.labels["shard_id"]: sample.value
        for metric in CONSUMER_RECORDS.collect()
        for sample in metric.samples
        if sample.name.endswith("_total")
    }


@dataclass(slots=True)
class _Rate:
    """An EWMA of one held shard's records/s over the reads between renewals."""

    per_second: float
    read: float
    at: float

    def update(self, read: float, at: float) -> None:
        elapsed = at - self.at
        if elapsed <= 0:
            return
        weight = 1 - math.exp(-elapsed / RATE_TIME_CONSTANT)
        self.per_second += weight * (max(read - self.read, 0.0) / elapsed - self.per_second)
        self.read, self.at = read, at


@dataclass(frozen=True, slots=True)
class RenewResult:
    lost: list[str]
    """Shards whose lease another consumer holds now: drop them, never checkpoint."""
    handoffs: list[str]
    """Shards another consumer asked for: finish in-flight work, commit, release."""


@dataclass(slots=True)
class _Steal:
    shard_id: str
    owner: str
    counter: int
    deadline: float


class LeaseManager:
    """One consumer's leases on one stream: shard sync, renewal, balancing, release."""

    def __init__(
        self,
        store: LeaseStore,
        stream: Stream,
        consumer_id: str,
        *,
        lease_timeout: float,
        handoff_timeout: float | None = None,
        rng: random.Random | None = None,
        reads: Callable[[], Mapping[str, float]] = records_read,
    ) -> None:
        self._store = store
        self._stream = stream
        self.consumer_id = consumer_id
        self.lease_timeout = lease_timeout
        # an owner notices a request at its next renewal and then commits what is in flight
        self.handoff_timeout = 2 * lease_timeout if handoff_timeout is None else handoff_timeout
        self.held: dict[str, Lease] = {}
        self._handing_off: set[str] = set()
        self._steals: dict[str, _Steal] = {}
        self._valid_until: dict[str, float] = {}
        """shard -> monotonic time its lease surely still holds until (renewal start + timeout)."""
        self._margin = min(lease_timeout / 10, 1.0)
        self._rng = rng or random.Random()
        self._reads = reads
        self._rates: dict[str, _Rate] = {}
        self.target = 0
        self.consumers = 1

    @property
    def stream_name(self) -> str:
        return self._stream.name

    async def sync_shards(self) -> None:
        """Create a free lease for every shard the stream lists that has none (children too)."""
        description = await self._stream.describe()
        await self._store.create_leases(self.stream_name, description.shards)

    async def renew(self) -> RenewResult:
        """Extend every held lease; report the lost ones and those asked for by another consumer.

        A lease whose last renewal began a lease timeout ago (less a margin) is given up as lost
        instead of renewed: another consumer may be taking it as expired at this very moment,
        and a renewal racing that take would leave two consumers believing they hold it.
        """
        started = time.monotonic()
        lost: list[str] = []
        for shard in list(self.held):
            if started >= self._valid_until.get(shard, math.inf) - self._margin:
                log.warning("shard %s: lease not renewed in time; giving it up", shard)
                lost.append(shard)
                self.drop(shard)
        snapshot = {shard: lease.lease_counter for shard, lease in self.held.items()}
        if not snapshot:
            return RenewResult(lost, [])
        renewed = await self._store.renew_leases(
            self.stream_name, self.consumer_id, snapshot, self.lease_timeout, self.rates()
        )
        dropped: list[str] = []
        handoffs: list[str] = []
        for shard, counter in snapshot.items():
            current = self.held.get(shard)
            if current is None or current.lease_counter != counter:
                continue
            lease = renewed.get(shard)
            if lease is None:
                dropped.append(shard)
                continue
            LEASE_EVENTS.labels("renewed").inc()
            self.held[shard] = lease
            self._valid_until[shard] = started + self.lease_timeout
            if lease.handoff_to not in (None, self.consumer_id) and shard not in self._handing_off:
                self._handing_off.add(shard)
                handoffs.append(shard)
        for shard in dropped:
            self.drop(shard)
        return RenewResult(lost + dropped, handoffs)

    async def balance(self) -> list[Lease]:
        """Take free/expired leases or pursue one steal; the leases newly acquired."""
        leases = await self._store.list_leases(self.stream_name)
        now = await self._store.now()
        acquired: list[Lease] = []
        by_shard = {lease.shard_id: lease for lease in leases}
        for steal in list(self._steals.values()):
            stolen = await self._pursue_steal(steal, by_shard.get(steal.shard_id), now)
            if stolen is not None:
                acquired.append(stolen)
                by_shard[stolen.shard_id] = stolen
        leases = list(by_shard.values())
        if self._steals:
            # wait for the hand-offs under way before planning more
            return acquired
        plan = plan_balance(leases, self.consumer_id, list(self.held), now, self._rng)
        self.target, self.consumers = plan.target, plan.consumers
        for lease in plan.take:
            began = time.monotonic()
            taken = await self._store.take_lease(
                self.stream_name, lease.shard_id, self.consumer_id, lease.lease_counter, self.lease_timeout
            )
            if taken is not None:
                LEASE_EVENTS.labels("taken").inc()
                self._hold(taken, began)
                acquired.append(taken)
        for victim in plan.steals:
            assert victim.owner is not None
            await self._store.request_handoff(self.stream_name, victim.shard_id, self.consumer_id)
            self._steals[victim.shard_id] = _Steal(
                victim.shard_id, victim.owner, victim.lease_counter, time.monotonic() + self.handoff_timeout
            )
            log.info(
                "asked %s to hand over shard %s%s",
                victim.owner,
                victim.shard_id,
                f" ({victim.records_per_second:.0f} records/s, to balance load)" if plan.load_move else "",
            )
        return acquired

    async def _pursue_steal(self, steal: _Steal, lease: Lease | None, now: float) -> Lease | None:
        if lease is None or lease.checkpoint == SHARD_END or lease.owner == self.consumer_id:
            del self._steals[steal.shard_id]
            return None
        released = lease.owner is None or not _live(lease, now)
        unchanged = lease.owner == steal.owner and lease.lease_counter == steal.counter
        if not released and not unchanged:
            del self._steals[steal.shard_id]
            return None
        if not released and time.monotonic() < steal.deadline:
            return None
        del self._steals[steal.shard_id]
        began = time.monotonic()
        taken = await self._store.take_lease(
            self.stream_name, lease.shard_id, self.consumer_id, lease.lease_counter, self.lease_timeout
        )
        if taken is None:
            return None
        LEASE_EVENTS.labels("stolen" if released else "forced").inc()
        if not released:
            log.warning("shard %s: %s did not hand over in time; took it", lease.shard_id, steal.owner)
        self._hold(taken, began)
        return taken

    def rates(self) -> dict[str, float]:
        """records/s of every held shard, measured since it was taken (seeded by the last owner's)."""
        read, at = self._reads(), time.monotonic()
        for shard, rate in self._rates.items():
            rate.update(read.get(shard, 0.0), at)
        return {shard: rate.per_second for shard, rate in self._rates.items()}

    def _hold(self, lease: Lease, began: float) -> None:
        if lease.shard_id not in self._rates:
            read = self._reads().get(lease.shard_id, 0.0)
            self._rates[lease.shard_id] = _Rate(lease.records_per_second, read, time.monotonic())
        if lease.shard_id not in self.held:
            LEASES_HELD.inc()
        self.held[lease.shard_id] = lease
        self._valid_until[lease.shard_id] = began + self.lease_timeout

    def _is_other(self, shard_id: str, lease_counter: int | None) -> bool:
        """True when `lease_counter` names a lease of the shard other than the one held now."""
        held = self.held.get(shard_id)
        return lease_counter is not None and held is not None and held.lease_counter != lease_counter

    async def release(self, shard_id: str, lease_counter: int | None = None) -> None:
        """Give a held lease up so the next owner starts without waiting for expiry.

        With `lease_counter`, only that lease: a task of an earlier lease on the shard, ending
        after the shard was taken again, must not give up the lease a newer task reads under.
        """
        if self._is_other(shard_id, lease_counter):
            return
        lease = self.held.pop(shard_id, None)
        self._handing_off.discard(shard_id)
        self._valid_until.pop(shard_id, None)
        self._rates.pop(shard_id, None)
        if lease is None:
            return
        LEASES_HELD.dec()
        if await self._store.release_lease(self.stream_name, shard_id, self.consumer_id, lease.lease_counter):
            LEASE_EVENTS.labels("released").inc()

    def drop(self, shard_id: str, lease_counter: int | None = None) -> None:
        """Forget a lease another consumer took (no release: it is not ours any more); with
        `lease_counter`, only that lease (as for `release`)."""
        if self._is_other(shard_id, lease_counter):
            return
        self._handing_off.discard(shard_id)
        self._valid_until.pop(shard_id, None)
        self._rates.pop(shard_id, None)
        if self.held.pop(shard_id, None) is not None:
            LEASES_HELD.dec()
            LEASE_EVENTS.labels("lost").inc()
