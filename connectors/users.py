"""The ``users`` table as the pipeline reads it: each user's tier and personalization prefs,
looked up in batches and cached with a TTL."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import cachetools
import sqlalchemy as sa

from connectors.database import LOOKUP_CHUNK, fetch_all

log = logging.getLogger("aiep.users")


@dataclass(frozen=True)
class UserProfile:
    """What the pipeline knows of a user: tier (``None`` when unknown) and prefs (an object)."""

    tier: str | None
    prefs: dict[str, Any] | None


UNKNOWN = UserProfile(tier=None, prefs=None)


class UserDirectory:
    """Batched, TTL-cached reads of ``users``; a missing user is cached as unknown too.

    Malformed ``personalization_prefs`` (not JSON, or JSON that is not an object) and an
    ``ai_tier`` that is not one of ``tiers`` (an application that added a tier to its enum) are
    logged once per lookup and ignored for that user; they never fail the run.
    """

    def __init__(
        self,
        engine: sa.Engine,
        ttl_seconds: float = 300.0,
        max_users: int = 200_000,
        retry_attempts: int = 8,
        tiers: frozenset[str] = frozenset({"free", "pro", "enterprise"}),
    ) -> None:
        self._engine = engine
        self._tiers = tiers
        self._retry_attempts = retry_attempts
        self._cache: cachetools.TTLCache[int, UserProfile] = cachetools.TTLCache(max_users, ttl_seconds)
        # Untyped columns: values come back as the driver gives them, so a malformed prefs value
        # reaches _prefs (and is ignored there) instead of failing the fetch.
        users = sa.table("users", sa.column("id"), sa.column("ai_tier"), sa.column("personalization_prefs"))
        self._query = sa.select(users.c.id, users.c.ai_tier, users.c.personalization_prefs).where(
            users.c.id.in_(sa.bindparam("ids", expanding=True))
        )

    def profiles(self, user_ids: Iterable[int]) -> dict[int, UserProfile]:
        """Profiles of ``user_ids``, from the cache or from one query per chunk of misses."""
        wanted = set(user_ids)
        found = {uid: self._cache[uid] for uid in wanted if uid in self._cache}
        missing = sorted(wanted - found.keys())
        for start in range(0, len(missing), LOOKUP_CHUNK):
            chunk = missing[start : start + LOOKUP_CHUNK]
            rows = fetch_all(self._engine, self._query, {"ids": chunk}, self._retry_attempts)
            fetched = {
                int(row.id): UserProfile(
                    self._tier(row.id, row.ai_tier), _prefs(row.id, row.personalization_prefs)
                )
                for row in rows
            }
            for uid in chunk:
                profile = fetched.get(uid, UNKNOWN)
                self._cache[uid] = profile
                found[uid] = profile
        return found

    def _tier(self, user_id: int, value: Any) -> str | None:
        if value is None or value in self._tiers:
            return value
        log.warning("user %s: ai_tier %r is not one of %s; ignored", user_id, value, sorted(self._tiers))
        return None


def _prefs(user_id: int, value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    if isinstance(value, (str, bytes)):
        try:
            value = json.loads(value)
        except ValueError as exc:
            log.warning("user %s: personalization_prefs is not JSON (%s); ignored", user_id, exc)
            return None
    if not isinstance(value, dict):
        log.warning(
            "user %s: personalization_prefs is %s, not an object; ignored", user_id, type(value).__name__
        )
        return None
    return value
