"""The governance data as answers to an assistant's questions: costs, the audit trail, decisions,
the review queue, runs and dead letters, each as a JSON-ready dict.

:class:`GovernanceData` is what ``runner.py mcp`` serves (:mod:`analytics.mcp_server` only wires
it to the protocol). It reuses the commands' own code: ``report``'s :func:`build_report`, the
read-only DuckDB views of ``sql``, ``review``'s functions in :mod:`connectors.review`, and
``similar``. It never runs SQL it was given: every query is written here, its values bound as
parameters. It never returns raw text (prompts, outputs, a dead letter's bytes, an event's
metadata): contents are named by their hashes. Money and days are text (exact decimals with their
6 places, ISO 8601), as ``report --format json`` prints them.

A bad argument is an :class:`AnswerError` that says what was expected and what came; so is a
directory or audit store that cannot be read (its password hidden).

>>> check_limit("limit", 10**9)
Traceback (most recent call last):
...
analytics.governance.AnswerError: limit must be an integer from 1 to 1000; got 1000000000
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import duckdb
import sqlalchemy as sa

from analytics.report import NO_BUDGETS, Budgets, Section, build_report, format_cell, utc_day
from analytics.views import ViewError, read_only_connection
from connectors import database, review
from connectors.database_url import hide_secrets, redact

#: What a question's work returns.
AnswerT = TypeVar("AnswerT")
#: The most rows one answer lists (as ``review --list``).
MAX_ROWS = review.MAX_QUEUE_ROWS
#: ``cost_report``'s groupings: the report's ``cost_by_day`` rows summed by one of its keys.
GROUPINGS: dict[str, str] = {"day": "day", "tier": "ai_tier", "operation": "operation_type", "model": "model"}
#: The ``events`` columns an answer shows: every one but ``metadata`` (free JSON the client sent).
EVENT_COLUMNS = (
    "event_id, event_time, user_id, operation_type, model, ai_tier, tier_source, modality, input_hash, "
    "output_hash, image_hash, hash_mode, input_tokens, output_tokens, images, cost, cost_status, "
    "rate_limited, decision, window_start, source, line_no, dt"
)
#: The ``dead_letter`` columns an answer shows: every one but ``raw`` (the record's bytes).
DEAD_LETTER_COLUMNS = "source, line_no, position, reason, detail, event_id, event_time, raw_truncated, dt"
#: The most events ``audit_lookup`` lists for one content.
EVENTS_PER_CONTENT = 20


class AnswerError(Exception):
    """A question that cannot be answered: a bad argument, or data that cannot be read; one line."""


def check_limit(name: str, value: object) -> int:
    """``value`` if it is an integer from 1 to :data:`MAX_ROWS`, else AnswerError (never clamped)."""
    if type(value) is not int or not 1 <= value <= MAX_ROWS:
        raise AnswerError(f"{name} must be an integer from 1 to {MAX_ROWS}; got {value!r}")
    return value


def parse_day(name: str, text: str | None) -> date | None:
    """A UTC day given as ``YYYY-MM-DD`` (None stays None).

    >>> parse_day("since", "2025-07-08")
    datetime.date(2025, 7, 8)
    """
    if text is None:
        return None
    try:
        return utc_day(text)
    except ValueError as exc:
        raise AnswerError(f"{name} {exc}") from None


def json_value(value: Any) -> Any:
    """A cell as JSON: numbers, text, booleans and None as they are; money, days and times as
    ``report``'s text (:func:`format_cell`); bytes as hex.

    >>> json_value(Decimal("1.500000")), json_value(date(2025, 7, 8)), json_value(b"\\x01\\xff")
    ('1.500000', '2025-07-08', '01ff')
    """
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, datetime) and value.tzinfo is None:
        value = value.replace(tzinfo=UTC)  # the audit store keeps UTC without a zone
    return format_cell(value)


def section_rows(section: Section) -> list[dict[str, Any]]:
    """A report section's rows as JSON objects."""
    return [{column: json_value(value) for column, value in row.items()} for row in section.records()]


@dataclass
class GovernanceData:
    """The answers over one output directory and its audit store.

    Args:
        out_dir: a run's output directory (``--out``).
        audit_url: the audit store (None: ``out_dir/audit.sqlite`` when it exists).
        allow_review: whether :meth:`record_review` may write; without it nothing is ever written.
        budgets: the budgets ``cost_report`` checks (``[budgets]`` of a config).
        device: where ``similar``'s model runs.
    """

    out_dir: Path
    audit_url: str | None = None
    allow_review: bool = False
    budgets: Budgets = NO_BUDGETS
    device: str = "auto"
    _engine: sa.Engine | None = field(default=None, init=False, repr=False)
    _upgraded: bool = field(default=False, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.audit_url is None and (self.out_dir / "audit.sqlite").is_file():
            self.audit_url = database.default_url(self.out_dir)

    # --- the Parquet outputs -----------------------------------------------------------------

    def cost_report(
        self, since: str | None = None, until: str | None = None, group_by: str = "day"
    ) -> dict[str, Any]:
        """``report``'s cost figures for UTC days ``since`` to ``until`` (both included): its
        ``cost_by_day`` rows summed (exactly, as Decimal) by ``group_by``, the total, the top
        users, the unpriced events by model and the budget breaches."""
        if group_by not in GROUPINGS:
            raise AnswerError(f"group_by must be one of {', '.join(GROUPINGS)}; got {group_by!r}")
        first, last = parse_day("since", since), parse_day("until", until)
        if first and last and first > last:
            raise AnswerError(f"since {first} is after until {last}")
        report = self._read(
            lambda: build_report(self.out_dir, since=first, until=last, budgets=self.budgets, top=10)
        )
        rows = grouped_costs(report.sections["cost_by_day"], GROUPINGS[group_by])
        total = grouped_costs(report.sections["cost_by_day"], None)
        return {
            "since": json_value(first),
            "until": json_value(last),
            "group_by": group_by,
            "costs": rows,
            "total": total[0],
            "top_users": section_rows(report.sections["top_users"]),
            "unpriced_by_model": section_rows(report.sections["unpriced_by_model"]),
            "budget_breaches": section_rows(report.sections["budget_breaches"]),
        }

    def runs(self, limit: int = 20) -> dict[str, Any]:
        """The ``limit`` latest runs, newest first: the run summaries' figures (``runs`` view)."""
        check_limit("limit", limit)
        sql = "SELECT * FROM runs ORDER BY started_at DESC, run_id DESC LIMIT $limit"
        rows = self._query(sql, {"limit": limit})
        for row in rows:
            for name in ("dead_letters_by_reason", "config", "inputs", "engine_args"):
                if isinstance(row.get(name), str):
                    row[name] = json.loads(row[name])
        return {"runs": rows}

    def dead_letters(
        self, run_id: str | None = None, reason: str | None = None, limit: int = 100
    ) -> dict[str, Any]:
        """Dead letters (never their raw bytes), oldest event time first: those of a run's
        inputs (its files ``part-<inputs_fingerprint>-*``), of a reason, or all; and their count."""
        check_limit("limit", limit)
        source = "dead_letter"
        if run_id is not None:
            fingerprint = self._run_fingerprint(run_id)
            files = sorted((self.out_dir / "dead_letter").glob(f"dt=*/part-{fingerprint}-*.parquet"))
            if not files:
                return {"total": 0, "dead_letters": []}
            source = (
                "read_parquet($files, hive_partitioning = true, hive_types = {'dt': DATE}, "
                "union_by_name = true)"
            )
        params: dict[str, Any] = {"reason": reason}
        if run_id is not None:
            params["files"] = [str(f) for f in files]
        where = "($reason IS NULL OR reason = $reason)"
        total = self._query(f"SELECT count(*) AS n FROM {source} WHERE {where}", params)[0]["n"]
        rows = self._query(
            f"SELECT {DEAD_LETTER_COLUMNS} FROM {source} WHERE {where} "
            "ORDER BY event_time NULLS LAST, source, line_no, position LIMIT $limit",
            {**params, "limit": limit},
        )
        return {"total": total, "dead_letters": rows}

    def latest_run_summary(self) -> str:
        """The newest run summary file's JSON text (by start time in the ``runs`` view)."""
        rows = self._query("SELECT run_id, kind FROM runs ORDER BY started_at DESC, run_id DESC LIMIT 1", {})
        if not rows:
            raise AnswerError(f"no run summary in {str(self.out_dir / '_runs')!r}")
        suffix = ".stream.json" if rows[0]["kind"] == "stream" else ".json"
        candidates = sorted((self.out_dir / "_runs").glob(f"{rows[0]['run_id']}*{suffix}"))
        if not candidates:
            raise AnswerError(f"the summary of run {rows[0]['run_id']!r} is gone from _runs/")
        return candidates[0].read_text(encoding="utf-8")

    def similar(self, text: str, k: int = 10, field: str = "both") -> dict[str, Any]:
        """The ``k`` stored texts nearest ``text`` by cosine (``runner.py similar``): event, user,
        field, cosine, content hash, and the start of the text only where the run kept it."""
        from analytics.similar import SearchError, similar
        from models.handler import ModelError

        check_limit("k", k)
        if not text.strip():
            raise AnswerError("text must not be empty")
        try:
            matches = similar(self.out_dir, text, k=k, field=field, device=self.device)
        except (SearchError, ModelError) as exc:
            raise AnswerError(str(exc).removeprefix("--")) from None  # "--k must …": a flag's name
        return {"matches": [{name: json_value(v) for name, v in vars(m).items()} for m in matches]}

    # --- the audit store ---------------------------------------------------------------------

    def audit_lookup(self, event_id: str | None = None, content_hash: str | None = None) -> dict[str, Any]:
        """One event's audit row, its Parquet row and its contents' decisions; or one content's
        decision and the events holding it (at most :data:`EVENTS_PER_CONTENT`, oldest first)."""
        if (event_id is None) == (content_hash is None):
            raise AnswerError("give exactly one of event_id or content_hash")
        if content_hash is not None:
            return self._content_lookup(content_hash)
        assert event_id is not None
        engine = self._store()
        audit = self._db(lambda: _audit_rows(engine, [event_id]))
        events = self._query(f"SELECT {EVENT_COLUMNS} FROM events WHERE event_id = $id", {"id": event_id})
        if not audit and not events:
            where = f"the audit store or {self.out_dir}/events"
            raise AnswerError(f"no event with event_id {event_id!r} in {where}")
        hashes = {
            kind: found
            for kind in ("input_hash", "output_hash", "image_hash")
            if (found := (audit[0] if audit else events[0]).get(kind))
        }
        decisions = {kind: self._decision(h) for kind, h in hashes.items()}
        return {
            "event_id": event_id,
            "audit_row": audit[0] if audit else None,
            "event": events[0] if events else None,
            "decisions": decisions,
        }

    def review_queue(self, decision: str = "flagged", limit: int = 50) -> dict[str, Any]:
        """The ``decision`` decisions no human has reviewed, oldest first, and how many wait."""
        self._check(review.check_decision, decision)
        check_limit("limit", limit)
        engine = self._store()
        rows = self._db(lambda: review.review_queue(engine, decision, limit))
        sizes = self._db(lambda: review.queue_sizes(engine))
        waiting = {s.decision: s.awaiting_review for s in sizes}
        return {
            "decision": decision,
            "awaiting_review": waiting.get(decision, len(rows)),
            "queue": [row.to_json() for row in rows],
        }

    def record_review(self, content_hash: str, decision: str, reviewer_id: int) -> dict[str, Any]:
        """Record a human decision through ``connectors.review.record_review`` (the code of
        ``runner.py review``): later automatic runs never change it. Refused without
        ``allow_review``."""
        if not self.allow_review:
            raise AnswerError(
                "record_review is refused: this server is read-only; restart it with "
                "`runner.py mcp --allow-review` to let it record reviews"
            )
        self._check(review.check_content_hash, content_hash)
        self._check(review.check_decision, decision)
        self._check(review.check_reviewer, reviewer_id)
        engine = self._store()
        if not self._upgraded:
            self._db(lambda: database.upgrade(engine))
            self._upgraded = True
        before = self._db(lambda: review.decision_of(engine, content_hash))
        after = self._db(lambda: review.record_review(engine, content_hash, decision, reviewer_id))
        return {
            "content_hash": content_hash,
            "before": None if before is None else before.to_json(),
            "after": after.to_json(),
        }

    def close(self) -> None:
        """Release the audit store's connections."""
        if self._engine is not None:
            self._engine.dispose()

    # --- helpers -----------------------------------------------------------------------------

    def _content_lookup(self, content_hash: str) -> dict[str, Any]:
        self._check(review.check_content_hash, content_hash)
        where = "$h IN (input_hash, output_hash, image_hash)"
        total = self._query(f"SELECT count(*) AS n FROM events WHERE {where}", {"h": content_hash})
        events = self._query(
            f"SELECT {EVENT_COLUMNS} FROM events WHERE {where} ORDER BY event_time, event_id LIMIT $limit",
            {"h": content_hash, "limit": EVENTS_PER_CONTENT},
        )
        decision = self._decision(content_hash)
        if decision is None and not events:
            raise AnswerError(f"no decision and no event for content_hash {content_hash!r}")
        engine = self._store()
        audit = self._db(lambda: _audit_rows(engine, [e["event_id"] for e in events]))
        return {
            "content_hash": content_hash,
            "decision": decision,
            "events_total": total[0]["n"],
            "events": events,
            "audit_rows": audit,
        }

    def _decision(self, content_hash: str) -> dict[str, Any] | None:
        engine = self._store()
        found = self._db(lambda: review.decision_of(engine, content_hash))
        return None if found is None else found.to_json()

    def _run_fingerprint(self, run_id: str) -> str:
        rows = self._query("SELECT kind, inputs_fingerprint FROM runs WHERE run_id = $id", {"id": run_id})
        if not rows:
            raise AnswerError(f"no run {run_id!r} in {str(self.out_dir / '_runs')!r}")
        fingerprint = rows[0]["inputs_fingerprint"]
        if rows[0]["kind"] != "batch" or not isinstance(fingerprint, str) or not fingerprint.isalnum():
            raise AnswerError(
                f"run {run_id!r} is a stream execution: its dead letters are the stream's, not one "
                "execution's; ask without run_id (by reason)"
            )
        return fingerprint

    def _query(self, sql: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        """Rows of one query written here (``params`` bound, never spliced) over the read-only views."""

        def rows() -> list[dict[str, Any]]:
            with read_only_connection(self.out_dir) as con:
                cursor = con.execute(sql, params)
                names = [d[0] for d in cursor.description or []]
                return [{n: json_value(v) for n, v in zip(names, r, strict=True)} for r in cursor.fetchall()]

        return self._read(rows)

    def _read(self, work: Callable[[], AnswerT]) -> AnswerT:
        try:
            return work()
        except ViewError as exc:
            raise AnswerError(str(exc)) from None
        except duckdb.Error as exc:
            raise AnswerError(f"cannot read {self.out_dir}: {str(exc).strip().splitlines()[0]}") from None

    def _store(self) -> sa.Engine:
        if self.audit_url is None:
            raise AnswerError(
                f"no audit store: {self.out_dir}/audit.sqlite does not exist; "
                "start the server with --audit-db URL"
            )
        if self._engine is None:
            url = self.audit_url
            self._engine = self._db(lambda: database.open_engine(url, create=False))
        return self._engine

    def _db(self, work: Callable[[], AnswerT]) -> AnswerT:
        """``work()``, with a database error turned into one line naming the store, password hidden."""
        try:
            return work()
        except (sa.exc.SQLAlchemyError, ConnectionError, FileNotFoundError, ValueError) as exc:
            url = self.audit_url or ""
            raise AnswerError(
                f"audit store {redact(url)}: {hide_secrets(database.describe_error(exc, url), url)}"
            ) from None

    @staticmethod
    def _check(check: Callable[[object], None], value: object) -> None:
        try:
            check(value)
        except ValueError as exc:
            raise AnswerError(str(exc)) from None


def grouped_costs(section: Section, key: str | None) -> list[dict[str, Any]]:
    """``cost_by_day`` rows summed by ``key`` (one of its columns; None: one total row), exactly:
    counts as ints, ``cost_usd`` as a Decimal summed and printed with its 6 places."""
    counts = ("events", "priced_events", "unpriced_events")
    sums: dict[Any, list[Any]] = {}
    for row in section.records():
        group = row[key] if key else None
        found = sums.setdefault(group, [0, 0, 0, Decimal("0.000000")])
        for i, name in enumerate(counts):
            found[i] += int(row[name])
        found[3] += row["cost_usd"]
    if key is None and not sums:
        sums[None] = [0, 0, 0, Decimal("0.000000")]
    ordered = sorted(sums.items(), key=lambda item: (item[0] is None, str(item[0])))
    return [
        {
            **({key: json_value(group)} if key else {}),
            **dict(zip(counts, values[:3], strict=True)),
            "cost_usd": format_cell(values[3].quantize(Decimal("0.000001"))),
        }
        for group, values in ordered
    ]


def _audit_rows(engine: sa.Engine, event_ids: list[str]) -> list[dict[str, Any]]:
    """The ``ai_audit_trail`` rows of ``event_ids`` (a bound IN list), by id."""
    if not event_ids:
        return []

    def read(conn: sa.Connection) -> list[dict[str, Any]]:
        # Declared, not reflected: SQLite reflects BINARY(16) with NUMERIC affinity.
        fingerprint = sa.Column("payload_fingerprint", sa.LargeBinary)
        table = sa.Table("ai_audit_trail", sa.MetaData(), fingerprint, autoload_with=conn)
        statement = sa.select(table).where(table.c.event_id.in_(event_ids)).order_by(table.c.id)
        return [{k: json_value(v) for k, v in row._asdict().items()} for row in conn.execute(statement)]

    return database.in_transaction(engine, read, 8, commit=False)
