"""Per-user, per-tier rate limits over event-time tumbling windows (DESIGN.md, stage 4).

Within each (user, window) events are ordered by (event_time, event_id); an event whose rank in
that order exceeds its tier's quota gets ``rate_limited = true``. Limited events are still
audited and moderated: the flag only tells later stages to skip optional work.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from transforms.windows import TumblingWindows


@dataclass(frozen=True)
class RateLimits:
    """Quotas by tier and the window length they apply to."""

    quotas: Mapping[str, int]
    window_seconds: int

    def __post_init__(self) -> None:
        if self.window_seconds <= 0:
            raise ValueError(f"window_seconds must be > 0, got {self.window_seconds}")
        bad = {tier: q for tier, q in self.quotas.items() if not isinstance(q, int) or q < 0}
        if bad:
            raise ValueError(f"quotas must be integers >= 0, got {bad}")


@dataclass
class RateLimited:
    """Events with ``rate_limited`` and ``window_start`` added, and the windows over quota."""

    events: pa.Table
    violations: pa.Table


def apply_rate_limits(events: pa.Table, limits: RateLimits, violations_schema: pa.Schema) -> RateLimited:
    """Flag events past their tier's quota; the table must hold *every* event of its users.

    Args:
        events: events with ``user_id``, ``event_time``, ``event_id`` and ``ai_tier``.
        limits: quotas and window length.
        violations_schema: schema of the ``rate_limit_violations`` dataset.
    """
    windows = TumblingWindows(limits.window_seconds)
    window_us = windows.size_us
    times = events.column("event_time").cast(pa.int64()).to_numpy()
    window_start = windows.starts(events.column("event_time"))
    tiers = events.column("ai_tier")
    unknown = set(pc.unique(tiers).to_pylist()) - set(limits.quotas)
    if unknown:
        raise ValueError(f"no quota for tier(s) {sorted(unknown)}; configured: {sorted(limits.quotas)}")
    quota_of = pa.array([limits.quotas[t] for t in pc.unique(tiers).to_pylist()])
    quotas = pc.take(quota_of, pc.index_in(tiers, value_set=pc.unique(tiers))).to_numpy()

    keyed = pa.table(
        {
            "user_id": events.column("user_id"),
            "window": window_start,
            "event_time": times,
            "event_id": events.column("event_id"),
        }
    )
    order = pc.sort_indices(
        keyed,
        sort_keys=[
            ("user_id", "ascending"),
            ("window", "ascending"),
            ("event_time", "ascending"),
            ("event_id", "ascending"),
        ],
    ).to_numpy()
    users = keyed.column("user_id").to_numpy()[order]
    windows = window_start[order]
    n = len(order)
    new_group = np.ones(n, dtype=bool)
    if n > 1:
        new_group[1:] = (users[1:] != users[:-1]) | (windows[1:] != windows[:-1])
    group_start = np.maximum.accumulate(np.where(new_group, np.arange(n), 0))
    rank = np.arange(n) - group_start + 1  # 1-based position within (user, window)

    limited_sorted = rank > quotas[order]
    limited = np.empty(n, dtype=bool)
    limited[order] = limited_sorted

    flagged = events.append_column("rate_limited", pa.array(limited)).append_column(
        "window_start", pa.array(window_start, pa.timestamp("us", tz="UTC"))
    )
    return RateLimited(
        flagged,
        _violations(
            users,
            windows,
            new_group,
            limited_sorted,
            quotas[order],
            tiers.take(pa.array(order)),
            window_us,
            violations_schema,
        ),
    )


def _violations(
    users: np.ndarray,
    windows: np.ndarray,
    new_group: np.ndarray,
    limited: np.ndarray,
    quotas: np.ndarray,
    tiers: pa.ChunkedArray,
    window_us: int,
    schema: pa.Schema,
) -> pa.Table:
    starts = np.flatnonzero(new_group)
    counts = np.diff(np.append(starts, len(users)))
    limited_counts = np.add.reduceat(limited.astype(np.int64), starts) if len(starts) else starts
    over = limited_counts > 0
    first = starts[over]
    # A window's tier is that of its first event in (event_time, event_id) order; when the
    # events of one window name different tiers, each event was judged by its own tier's quota.
    return pa.Table.from_pydict(
        {
            "user_id": users[first],
            "ai_tier": tiers.take(pa.array(first)),
            "window_start": pa.array(windows[first], pa.timestamp("us", tz="UTC")),
            "window_end": pa.array(windows[first] + window_us, pa.timestamp("us", tz="UTC")),
            "request_count": counts[over],
            "quota": quotas[first],
            "limited_count": limited_counts[over],
        },
        schema=schema,
    )
