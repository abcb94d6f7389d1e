"""Who sends the next synthetic request, and when: skewed users, a drifting clock, bursts.

Real AI traffic is not uniform. A few users send most requests (Zipf-like activity), clients
report times late or out of order, and now and then one user fires more requests within a
minute than their tier allows, which is what the rate limiter exists for. :class:`LoadPlan`
reproduces all three, deterministically for one ``random.Random``.

Times are integer milliseconds after :data:`BASE_TIME`, which is midnight UTC, so a minute
here is exactly one of the rate limiter's tumbling windows (aligned to the Unix epoch).
"""

from __future__ import annotations

import bisect
import itertools
import random
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

#: Start of the generated traffic: every priced model is in force from this date.
BASE_TIME = datetime(2025, 7, 7, tzinfo=UTC)
#: Length of the traffic: a few days, all inside July 2025.
SPAN_MS = 4 * 86_400_000
#: Share of users in each tier, in percent.
TIER_SHARES: dict[str, int] = {"free": 70, "pro": 25, "enterprise": 5}
#: Share of bursts per tier: bursts target free users mostly; a pro or enterprise burst is big.
BURST_SHARES: dict[str, int] = {"free": 84, "pro": 15, "enterprise": 1}
#: Zipf exponent of user activity: with 5,000 users the top one sends ~7 % of background
#: traffic, the median one ~0.01 %. Above 1 the top user alone trips the free quota all day.
ZIPF_EXPONENT = 0.9
_LATE_MS = 6 * 3_600_000
_JITTER_MS = 15 * 60_000


def user_count(lines: int) -> int:
    """How many users ``lines`` of traffic come from.

    >>> user_count(1000), user_count(1_000_000)
    (50, 5000)
    """
    return max(50, lines // 200)


@dataclass(frozen=True)
class Population:
    """Users with their ids, tiers and activity weights (parallel tuples, by user index)."""

    user_ids: tuple[int, ...]
    tiers: tuple[str, ...]
    cum_weights: tuple[float, ...]
    by_tier: dict[str, tuple[int, ...]]

    @classmethod
    def draw(cls, rng: random.Random, size: int) -> Population:
        """Draw ``size`` users (at least one per tier) with random ids and Zipf activity."""
        if size < len(TIER_SHARES):
            raise ValueError(f"need at least {len(TIER_SHARES)} users, one per tier; got {size}")
        user_ids = tuple(rng.sample(range(1, 2**31), size))
        tiers = rng.choices(list(TIER_SHARES), weights=list(TIER_SHARES.values()), k=size)
        for slot, tier in enumerate(TIER_SHARES):
            if tier not in tiers:
                tiers[slot] = tier
        ranks = list(range(1, size + 1))
        rng.shuffle(ranks)
        weights = (rank**-ZIPF_EXPONENT for rank in ranks)
        by_tier = {tier: tuple(i for i, t in enumerate(tiers) if t == tier) for tier in TIER_SHARES}
        return cls(user_ids, tuple(tiers), tuple(itertools.accumulate(weights)), by_tier)

    def pick(self, rng: random.Random) -> int:
        """Index of a user drawn by activity weight."""
        return bisect.bisect_left(self.cum_weights, rng.random() * self.cum_weights[-1])


@dataclass
class _Burst:
    user: int
    window_start_ms: int
    remaining: int


class LoadPlan:
    """Hands out ``(user index, time in ms after BASE_TIME)`` for each line of the file.

    Background traffic advances evenly over :data:`SPAN_MS` with the line number; most times
    sit near that point, some up to 15 minutes either side, and 1 % arrive up to 6 hours late,
    so the file is not sorted by time. Every ``spacing`` lines a burst starts: one user sends
    their tier's quota plus a few more requests, all inside one window, interleaved with the
    background traffic. The first burst is always a free user's, so small files trip too.

    Args:
        rng: the generator's random stream (shared, so the plan is part of one sequence).
        population: the users.
        lines: lines the file will have; sets the clock's pace and which bursts fit.
        quotas: requests allowed per window, by tier (``schemas/tiers.toml``).
        window_seconds: the rate limiter's window.
    """

    def __init__(
        self,
        rng: random.Random,
        population: Population,
        lines: int,
        quotas: Mapping[str, int],
        window_seconds: int,
    ) -> None:
        self._rng = rng
        self._population = population
        self._lines = max(lines, 1)
        self._quotas = quotas
        self._window_ms = window_seconds * 1000
        self._spacing = min(1000, max(100, lines // 4))
        self._next_burst_at = self._spacing // 10
        self._bursts_started = 0
        self._active: list[_Burst] = []

    def background_slot(self, line_no: int) -> tuple[int, int]:
        """A request from the Zipf background traffic, timed near ``line_no``'s point."""
        rng = self._rng
        at = SPAN_MS * line_no // self._lines + rng.randrange(1 + SPAN_MS // self._lines)
        roll = rng.random()
        if roll < 0.01:
            at -= rng.randrange(_LATE_MS)
        elif roll < 0.09:
            at += rng.randrange(-_JITTER_MS, _JITTER_MS)
        return self._population.pick(rng), at

    def next_slot(self, line_no: int) -> tuple[int, int]:
        """The next valid event's request: from an active burst about half the time."""
        if line_no >= self._next_burst_at:
            self._next_burst_at += self._spacing
            self._start_burst(line_no)
        rng = self._rng
        if self._active and rng.random() < 0.5:
            burst = self._active[rng.randrange(len(self._active))]
            burst.remaining -= 1
            if burst.remaining == 0:
                self._active.remove(burst)
            return burst.user, burst.window_start_ms + rng.randrange(self._window_ms)
        return self.background_slot(line_no)

    def _start_burst(self, line_no: int) -> None:
        rng = self._rng
        tiers = [
            tier
            for tier in BURST_SHARES
            if 3 * (self._quotas[tier] + self._quotas[tier] // 10 + 3) <= self._lines - line_no
        ]
        if not tiers:
            return
        tier = (
            "free"
            if self._bursts_started == 0 and "free" in tiers
            else rng.choices(tiers, weights=[BURST_SHARES[t] for t in tiers])[0]
        )
        self._bursts_started += 1
        quota = self._quotas[tier]
        now = SPAN_MS * line_no // self._lines
        self._active.append(
            _Burst(
                user=rng.choice(self._population.by_tier[tier]),
                window_start_ms=now - now % self._window_ms,
                remaining=quota + rng.randint(1, quota // 10 + 3),
            )
        )
