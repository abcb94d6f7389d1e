"""Database URLs: read them safely, and never show the password one carries.

A password reaches the pipeline in the URL (percent-encoded), in a ``password=`` query parameter
or in ``$AIEP_MYSQL_PASSWORD``. Whichever way it came, and however malformed the URL, it must not
appear in a log line, an error or a run summary: ``redact`` hides it in a URL and
``hide_secrets`` in any text (a driver's error may quote a database name that swallowed it).
"""

from __future__ import annotations

import os
import re
from urllib.parse import unquote

import sqlalchemy as sa

MYSQL_PASSWORD_ENV = "AIEP_MYSQL_PASSWORD"

#: Query parameters whose value is a secret (after percent-decoding their name).
_SECRET_PARAMS = frozenset({"password", "passwd", "pwd", "secret", "token", "api_key", "apikey"})
#: ``scheme:`` and the slashes after it; a URL typed without them has none.
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:/+")
#: Secrets shorter than this are not searched for in free text: it would blank out letters.
_MIN_SECRET = 3


def redact(url: str) -> str:
    """The URL with any password replaced by ``***``, for logs, errors and summaries; never raises.

    Everything between the user and the *last* ``@`` is hidden, whatever the scheme looks like
    (one slash, three, none), since a password that was not percent-encoded may hold ``@``, ``:``,
    ``/``, ``?`` or ``#`` itself; so is every query parameter whose decoded name says "password".
    When in doubt it hides more, never less.

    >>> redact("mysql+pymysql://app:s3cr%40t@db:3306/prod")
    'mysql+pymysql://app:***@db:3306/prod'
    >>> redact("mysql+pymysql://root:Secret@Part2@host/db")
    'mysql+pymysql://root:***@host/db'
    >>> redact("app:secret@db/prod")
    'app:***@db/prod'
    >>> redact("mysql+pymysql://u@h/db?charset=utf8mb4&pass%77ord=x")
    'mysql+pymysql://u@h/db?charset=utf8mb4&pass%77ord=***'
    """
    start, at = _userinfo_span(url)
    if at is not None and ":" in url[start:at]:
        url = f"{url[:start]}{url[start:at].split(':', 1)[0]}:***{url[at:]}"
    base, question, query = url.partition("?")
    if not question:
        return url
    params = []
    for param in query.split("&"):
        name, equals, _ = param.partition("=")
        params.append(f"{name}=***" if equals and _is_secret_param(name) else param)
    return f"{base}?{'&'.join(params)}"


def _userinfo_span(url: str) -> tuple[int, int | None]:
    """Where ``user[:password]`` starts, and where its ``@`` is (``None`` when there is none)."""
    scheme = _SCHEME.match(url)
    start = scheme.end() if scheme else 0
    at = url.rfind("@")
    return start, (at if at >= start else None)


def _is_secret_param(name: str) -> bool:
    return unquote(name).strip().lower() in _SECRET_PARAMS


def resolve_url(url: str) -> sa.URL:
    """Parse ``url``; a MySQL URL without a password takes it from ``$AIEP_MYSQL_PASSWORD``.

    Raises ValueError (its message redacted) for a URL that is not one, for a user or password
    holding a raw ``@`` (or a raw ``/`` in the user), which could send the connection to another
    host (percent-encode it: ``%40``), for a MySQL URL that names no host or no database, and for
    an in-memory SQLite store (it would vanish between connections). A raw ``:``, ``/``, ``?`` or
    ``#`` in a password is read as it is.
    """
    try:
        parsed = sa.make_url(url)
    except Exception:  # SQLAlchemy's messages quote the whole URL, password included
        raise ValueError(f"not a database URL: {redact(url)}") from None
    shown = redact(url)
    backend = parsed.get_backend_name()
    if backend != "sqlite" and _ambiguous(url, parsed):
        raise ValueError(
            f"the user or password in {shown} holds a raw '@' (or a '/' before one), so the URL could "
            f"name another host: percent-encode it (%40 for @, %2F for /) or leave the password out "
            f"and set ${MYSQL_PASSWORD_ENV}"
        )
    if backend in ("mysql", "mariadb"):
        if not parsed.host:
            raise ValueError(f"{shown} names no host: expected mysql+pymysql://USER@HOST:PORT/DATABASE")
        if not parsed.database:
            raise ValueError(f"{shown} names no database: expected mysql+pymysql://USER@HOST:PORT/DATABASE")
        if parsed.password is None and os.environ.get(MYSQL_PASSWORD_ENV):
            parsed = parsed.set(password=os.environ[MYSQL_PASSWORD_ENV])
    elif backend == "sqlite" and parsed.database in (None, "", ":memory:"):
        raise ValueError(
            f"{shown} is an in-memory SQLite store, gone with each connection: use sqlite:///PATH"
        )
    return parsed


def _ambiguous(url: str, parsed: sa.URL) -> bool:
    """Whether the URL's ``@`` may not be where its authority ends: more than one before the query,
    or one that the parser put in the host or the database name (a raw ``/`` in the user)."""
    return (
        url.partition("?")[0].count("@") > 1 or "@" in (parsed.host or "") or "@" in (parsed.database or "")
    )


def hide_secrets(text: str, url: str | None) -> str:
    """``text`` with every form of the password ``url`` carries (or the environment gives) hidden.

    >>> hide_secrets("Unknown database 'db:hunter2@h'", "mysql+pymysql:///db:hunter2@h")
    "Unknown database 'db:***@h'"
    """
    secrets = {os.environ.get(MYSQL_PASSWORD_ENV, "")}
    if url:
        start, at = _userinfo_span(url)
        if at is not None and ":" in url[start:at]:
            secrets.add(url[start:at].split(":", 1)[1])
        for param in url.partition("?")[2].split("&"):
            name, equals, value = param.partition("=")
            if equals and _is_secret_param(name):
                secrets.add(value)
    for secret in sorted(secrets | {unquote(s) for s in secrets}, key=len, reverse=True):
        if len(secret) >= _MIN_SECRET:
            text = text.replace(secret, "***")
    return text
