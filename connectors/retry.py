"""The one retry policy for sinks: exponential backoff with jitter on transient database errors.

Transient: MySQL/MariaDB lost or refused connections (2003 can't connect, 2006 gone away, 2013
lost during query), deadlocks (1213) and lock wait timeouts (1205); a SQLite database still
locked after its busy timeout; a Redis connection refused, dropped or timed out (a refused
password is not transient). Anything else fails at once; a transient error that outlasts the
attempts fails the run loudly, never a silently skipped batch.
"""

from __future__ import annotations

import logging
import sqlite3
import sys

import pymysql
import tenacity

log = logging.getLogger("aiep.retry")

TRANSIENT_MYSQL_ERRORS = frozenset({2003, 2006, 2013, 1205, 1213})


def is_transient(exc: BaseException) -> bool:
    """Whether retrying the same statement may succeed."""
    # SQLAlchemy wraps the driver's error (connection-level calls) in its own DBAPIError.
    exc = getattr(exc, "orig", None) or exc
    if isinstance(exc, pymysql.err.MySQLError):
        code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else None
        # InterfaceError (0, '') is PyMySQL's word for a socket the server already closed.
        return code in TRANSIENT_MYSQL_ERRORS or isinstance(exc, pymysql.err.InterfaceError)
    if isinstance(exc, sqlite3.OperationalError):
        return "locked" in str(exc) or "busy" in str(exc)
    # A Redis error can only come from a process that imported redis; the others (a worker with
    # no Redis cache) never load it.
    redis = sys.modules.get("redis")
    errors = redis.exceptions if redis is not None else None
    if errors is not None and isinstance(exc, (errors.ConnectionError, errors.TimeoutError)):
        # Redis reports a refused password as a kind of ConnectionError; retrying cannot help.
        refused = (errors.AuthenticationError, errors.AuthorizationError, errors.ExternalAuthProviderError)
        return not isinstance(exc, refused)
    return False


def transient_retry(attempts: int, max_wait_seconds: float = 8.0) -> tenacity.Retrying:
    """Retry transient errors up to ``attempts`` times in all, then re-raise the last one."""
    return tenacity.Retrying(
        retry=tenacity.retry_if_exception(is_transient),
        stop=tenacity.stop_after_attempt(attempts),
        wait=tenacity.wait_random_exponential(multiplier=0.25, max=max_wait_seconds),
        before_sleep=lambda state: log.warning(
            "transient database error (attempt %d of %d), retrying: %s",
            state.attempt_number,
            attempts,
            _describe(state.outcome.exception() if state.outcome else None),
        ),
        reraise=True,
    )


def _describe(exc: BaseException | None) -> str:
    return "" if exc is None else f"{type(exc).__name__}{exc.args[:2]!r}"
