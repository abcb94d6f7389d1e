"""Each event's effective tier: its own ``ai_tier``, else its user's, else the default."""

from __future__ import annotations

from collections.abc import Mapping

import pyarrow as pa
import pyarrow.compute as pc


def resolve_tiers(events: pa.Table, user_tiers: Mapping[int, str | None], default: str) -> pa.Table:
    """Fill ``ai_tier`` and add ``tier_source`` (``event`` | ``users`` | ``default``).

    >>> t = pa.table({"user_id": [1, 2, 3], "ai_tier": ["pro", None, None]})
    >>> r = resolve_tiers(t, {2: "enterprise", 3: None}, "free")
    >>> r.column("ai_tier").to_pylist(), r.column("tier_source").to_pylist()
    (['pro', 'enterprise', 'free'], ['event', 'users', 'default'])
    """
    own = events.column("ai_tier")
    known = {uid: tier for uid, tier in user_tiers.items() if tier is not None}
    ids = pa.array(list(known), pa.int64())
    tiers = pa.array(list(known.values()), pa.string())
    from_users = pc.take(tiers, pc.index_in(events.column("user_id"), value_set=ids))
    source = pc.if_else(pc.is_valid(own), "event", pc.if_else(pc.is_valid(from_users), "users", "default"))
    effective = pc.coalesce(own, from_users, pa.scalar(default, pa.string()))
    index = events.schema.get_field_index("ai_tier")
    return events.set_column(index, "ai_tier", effective).append_column("tier_source", source)
