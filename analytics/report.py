"""The cost-monitoring report: what ``runner.py report`` prints and the dashboard draws.

Every figure is one SQL query over the views of :mod:`analytics.views` (the Parquet datasets and the
run summaries, read in place), except the review queue, which is the audit store's. Money stays an
exact ``Decimal`` from the Parquet ``decimal(10,6)`` to the printed text: DuckDB sums decimals
exactly, and :func:`format_cell` prints them with their 6 places.

``since`` and ``until`` are UTC dates, both included, of event time (the ``dt`` partition), and of
``started_at`` for runs. Dead letters whose date could not be read (``dt`` NULL) count only when
no date is given. A monthly budget is checked against the whole month's cost for every month the
period touches, so ``report --since today`` still sees this month's spend.

>>> format_cell(Decimal("12.500000")), format_cell(date(2025, 7, 8)), format_cell(None)
('12.500000', '2025-07-08', '')
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from analytics.views import connect
from connectors.config import PipelineConfig

#: Report output formats.
FORMATS = ("table", "csv", "json")


@dataclass(frozen=True)
class Section:
    """One table of the report."""

    name: str
    title: str
    columns: tuple[str, ...]
    #: Money as ``Decimal``, days as ``date``, times as aware ``datetime``; ints, floats, text, None.
    rows: tuple[tuple[Any, ...], ...]

    def records(self) -> list[dict[str, Any]]:
        """The rows as dicts by column."""
        return [dict(zip(self.columns, row, strict=True)) for row in self.rows]


@dataclass(frozen=True)
class Budgets:
    """Cost budgets in USD: per tier (its users together) and per user, per UTC day and month."""

    tier_daily: dict[str, Decimal]
    tier_monthly: dict[str, Decimal]
    user_daily: dict[int, Decimal]
    user_monthly: dict[int, Decimal]

    @classmethod
    def from_config(cls, config: PipelineConfig) -> Budgets:
        """The ``[budgets]`` section of a loaded config."""
        return cls(
            dict(config.tier_daily_budgets),
            dict(config.tier_monthly_budgets),
            {int(user): amount for user, amount in config.user_daily_budgets.items()},
            {int(user): amount for user, amount in config.user_monthly_budgets.items()},
        )

    @property
    def monthly(self) -> bool:
        """Whether any budget is monthly (the report then reads whole months)."""
        return bool(self.tier_monthly or self.user_monthly)

    def rows(self) -> list[tuple[str, str, str, Decimal]]:
        """(scope, period, key, budget) for each budget."""
        return [
            (scope, period, str(key), amount)
            for scope, period, table in (
                ("tier", "day", self.tier_daily),
                ("tier", "month", self.tier_monthly),
                ("user", "day", self.user_daily),
                ("user", "month", self.user_monthly),
            )
            for key, amount in sorted(table.items())
        ]


NO_BUDGETS = Budgets({}, {}, {}, {})


@dataclass(frozen=True)
class Report:
    """Every section of the report over one output directory and period."""

    out_dir: Path
    since: date | None
    until: date | None
    sections: dict[str, Section]

    @property
    def breaches(self) -> Section:
        """Costs over their budget."""
        return self.sections["budget_breaches"]

    def to_json(self) -> str:
        """The report as one JSON object; money and times as text (exact), counts as numbers."""
        return json.dumps(
            {
                "out_dir": str(self.out_dir),
                "since": format_cell(self.since) or None,
                "until": format_cell(self.until) or None,
                "sections": {
                    s.name: {
                        "title": s.title,
                        "columns": list(s.columns),
                        "rows": [{c: _json_cell(v) for c, v in r.items()} for r in s.records()],
                    }
                    for s in self.sections.values()
                },
            },
            indent=2,
        )

    def to_csv(self) -> str:
        """Each section as CSV under a ``# name: title`` line, blank lines between sections."""
        text = io.StringIO()
        for number, section in enumerate(self.sections.values()):
            if number:
                text.write("\n")
            text.write(f"# {section.name}: {section.title}\n")
            writer = csv.writer(text, lineterminator="\n")
            writer.writerow(section.columns)
            writer.writerows([format_cell(v) for v in row] for row in section.rows)
        return text.getvalue()

    def to_table(self) -> str:
        """Each section as an aligned text table under its title."""
        blocks = []
        for section in self.sections.values():
            cells = [list(section.columns), *([format_cell(v) for v in row] for row in section.rows)]
            widths = [max(len(row[i]) for row in cells) for i in range(len(section.columns))]
            numeric = [bool(section.rows) and _is_number(section.rows[0][i]) for i in range(len(widths))]
            lines = [f"== {section.title} =="]
            for row in cells:
                lines.append(
                    "  ".join(
                        cell.rjust(width) if right else cell.ljust(width)
                        for cell, width, right in zip(row, widths, numeric, strict=True)
                    ).rstrip()
                )
            if not section.rows:
                lines.append("(none)")
            blocks.append("\n".join(lines))
        return "\n\n".join(blocks) + "\n"


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float | Decimal) and not isinstance(value, bool)


def format_cell(value: Any) -> str:
    """How every format prints a value: money with its 6 places, dates ISO, times ISO 8601 UTC
    (``…Z``), shares to 4 places, None empty."""
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def utc_day(text: str) -> date:
    """A day of the period as the commands take it: ``YYYY-MM-DD``; ValueError saying so.

    >>> utc_day("2025-07-08")
    datetime.date(2025, 7, 8)
    """
    try:
        if len(text) != 10:
            raise ValueError
        return date.fromisoformat(text)
    except ValueError:
        raise ValueError(f"must be a date, YYYY-MM-DD; got {text!r}") from None


def _json_cell(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return format_cell(value)


# --- the queries ---------------------------------------------------------------------------------

#: One scan of ``events`` feeds every section about events: the period's events grouped twice,
#: by (day, tier, operation, model, decision) and by user (within the period or not). ``{scanned}``
#: is the days it reads: the period, widened to whole months when a monthly budget needs them.
EVENT_GROUPS = """
    CREATE TEMP TABLE event_groups AS
    SELECT grouping(user_id) = 0 AS per_user, dt, ai_tier, operation_type, model, decision,
           user_id, in_period, count(*) AS events,
           count(*) FILTER (WHERE cost_status = 'priced') AS priced_events,
           count(*) FILTER (WHERE cost_status = 'unpriced') AS unpriced_events,
           CAST(coalesce(sum(cost), 0) AS DECIMAL(38, 6)) AS cost
    FROM (SELECT *, {days} AS in_period FROM events WHERE {scanned})
    GROUP BY GROUPING SETS ((dt, ai_tier, operation_type, model, decision), (user_id, in_period))
"""

#: Each section: its title and its query. ``{days}`` is the period's condition on ``dt``; ``{top}``
#: the number of top users. ``by_day`` is ``event_groups``' rows by day within the period.
QUERIES: dict[str, tuple[str, str]] = {
    "cost_by_day": (
        "Cost by day, tier, operation and model (USD)",
        """
        SELECT dt AS day, ai_tier, operation_type, model, sum(events) AS events,
               sum(priced_events) AS priced_events, sum(unpriced_events) AS unpriced_events,
               CAST(sum(cost) AS DECIMAL(38, 6)) AS cost_usd
        FROM by_day GROUP BY ALL ORDER BY day, ai_tier, operation_type, model
        """,
    ),
    "unpriced_by_model": (
        "Unpriced events by model (no price in force at the event's time)",
        """
        SELECT model, events, unpriced_events, unpriced_events / events AS unpriced_share
        FROM (SELECT model, sum(events) AS events, sum(unpriced_events) AS unpriced_events
              FROM by_day GROUP BY model)
        WHERE unpriced_events > 0 ORDER BY unpriced_events DESC, model
        """,
    ),
    "decisions_by_day": (
        "Moderation decisions by day: events by their decision",
        """
        SELECT dt AS day, decision, sum(events) AS events
        FROM by_day WHERE decision IS NOT NULL
        GROUP BY ALL ORDER BY day, decision
        """,
    ),
    "decision_categories": (
        "Moderation decisions by day and category: contents moderated (a content counts once per category)",
        """
        SELECT day, decision, category, count(*) AS contents
        FROM (SELECT dt AS day, decision,
                     unnest(CASE WHEN len(categories) = 0 THEN ['(none)'] ELSE categories END) AS category
              FROM moderation WHERE {days})
        GROUP BY ALL ORDER BY day, decision, category
        """,
    ),
    "rate_limits": (
        "Rate-limit violations by day and tier",
        """
        SELECT dt AS day, ai_tier, count(*) AS windows_over_quota, count(DISTINCT user_id) AS users,
               sum(limited_count) AS limited_events
        FROM rate_limit_violations WHERE {days}
        GROUP BY ALL ORDER BY day, ai_tier
        """,
    ),
    "dead_letters": (
        "Dead letters by reason",
        """
        SELECT reason, count(*) AS records
        FROM dead_letter WHERE {dead_letter_days}
        GROUP BY reason ORDER BY records DESC, reason
        """,
    ),
    "embedding_cache": (
        "Embedding cache hit rate by run (distinct texts looked up)",
        """
        SELECT run_id, embedding_cache_hits AS hits, embedding_cache_misses AS misses,
               CASE WHEN hits + misses > 0 THEN hits / (hits + misses) END AS hit_rate
        FROM runs WHERE {run_days} AND embedding_cache_hits IS NOT NULL
        ORDER BY started_at, run_id
        """,
    ),
    "runs": (
        "Runs",
        """
        SELECT run_id, engine, started_at, finished_at, seconds, events_read, events_processed,
               events_dead_lettered, duplicates_collapsed, rate_limited, unpriced_events, cost_total,
               events_per_second
        FROM runs WHERE {run_days}
        ORDER BY started_at, run_id
        """,
    ),
}

BREACHES_TITLE = "Budget breaches: cost over budget (USD)"
BREACH_COLUMNS = ("scope", "key", "period", "period_start", "cost_usd", "budget_usd", "over_by_usd")
QUEUE_TITLE = "Human-review queue: decisions no human has reviewed"
QUEUE_COLUMNS = ("decision", "awaiting_review", "oldest_decided_at")

#: Sections in the order the report shows them.
SECTIONS = (
    "cost_by_day",
    "top_users",
    "unpriced_by_model",
    "decisions_by_day",
    "decision_categories",
    "review_queue",
    "rate_limits",
    "dead_letters",
    "embedding_cache",
    "runs",
    "budget_breaches",
)


def build_report(
    out_dir: Path,
    *,
    since: date | None = None,
    until: date | None = None,
    budgets: Budgets = NO_BUDGETS,
    audit_url: str | None = None,
    top: int = 10,
) -> Report:
    """Every section over ``out_dir`` for days ``since`` to ``until`` (both included; None: open).

    ``audit_url`` is the store whose review queue is shown (None: no queue rows). ViewError when
    the directory or a run summary cannot be read.
    """
    if since is not None and until is not None and since > until:
        raise ValueError(f"--since {since} is after --until {until}")
    if top < 1:
        raise ValueError(f"top must be at least 1, got {top}")
    days = _day_condition("dt", since, until)
    months = _whole_months(since, until)
    conditions = {
        "days": days,
        "scanned": months if budgets.monthly else days,
        "dead_letter_days": days if since or until else "true",
        "run_days": _day_condition("CAST(started_at AS DATE)", since, until),
        "top": str(top),
    }
    found: dict[str, Section] = {}
    with connect(out_dir) as con:
        con.execute(EVENT_GROUPS.format(**conditions))
        con.execute(f"CREATE TEMP VIEW by_day AS SELECT * FROM event_groups WHERE NOT per_user AND {days}")
        for name, (title, sql) in QUERIES.items():
            found[name] = _section(con, name, title, sql.format(**conditions))
        found["top_users"] = _top_users(con, days, top)
        found["budget_breaches"] = _breaches(con, budgets, days, months)
    found["review_queue"] = _review_queue(audit_url)
    return Report(out_dir, since, until, {name: found[name] for name in SECTIONS})


def _day_condition(column: str, since: date | None, until: date | None) -> str:
    """SQL for ``since <= column <= until`` (dates are ``date`` objects: their text is safe)."""
    parts = [f"{column} >= DATE '{since.isoformat()}'"] if since else []
    parts += [f"{column} <= DATE '{until.isoformat()}'"] if until else []
    return " AND ".join(parts) or "true"


def _section(con: duckdb.DuckDBPyConnection, name: str, title: str, sql: str) -> Section:
    cursor = con.execute(sql)
    columns = tuple(d[0] for d in cursor.description or [])
    return Section(name, title, columns, tuple(cursor.fetchall()))


TOP_USERS_TITLE = "Top users by cost (USD): their tier is their latest event's"


def _top_users(con: duckdb.DuckDBPyConnection, days: str, top: int) -> Section:
    """The ``top`` users by cost, from ``event_groups``; their tiers from a scan of their events."""
    found = con.execute(
        "SELECT user_id, events, cost, unpriced_events FROM event_groups WHERE per_user AND in_period "
        "ORDER BY cost DESC, user_id LIMIT $top",
        {"top": top},
    ).fetchall()
    if not found:
        columns = ("user_id", "ai_tier", "events", "cost_usd", "unpriced_events")
        return Section("top_users", TOP_USERS_TITLE, columns, ())
    users = ", ".join(str(int(row[0])) for row in found)  # a literal list: DuckDB filters it in the scan
    sql = f"""
        WITH top(user_id, events, cost_usd, unpriced_events) AS (VALUES {
        ", ".join(f"({int(u)}, {int(e)}, CAST('{c}' AS DECIMAL(38, 6)), {int(n)})" for u, e, c, n in found)
    }), tier AS (
            SELECT user_id, arg_max(ai_tier, (event_time, event_id)) AS ai_tier
            FROM events WHERE {days} AND user_id IN ({users}) GROUP BY user_id
        )
        SELECT user_id, ai_tier, events, cost_usd, unpriced_events
        FROM top JOIN tier USING (user_id) ORDER BY cost_usd DESC, user_id
    """
    return _section(con, "top_users", TOP_USERS_TITLE, sql)


def _whole_months(since: date | None, until: date | None) -> str:
    """The condition on ``dt`` for every whole month the period touches."""
    return _day_condition(
        "dt", None if since is None else since.replace(day=1), None if until is None else _month_end(until)
    )


def _breaches(con: duckdb.DuckDBPyConnection, budgets: Budgets, days: str, months: str) -> Section:
    """Each day and month whose cost is over a tier's or a user's budget, oldest first.

    Tiers' costs come from ``event_groups``; users' from one scan of the budgeted users' events.
    """
    rows = budgets.rows()
    if not rows:
        return Section("budget_breaches", BREACHES_TITLE, BREACH_COLUMNS, ())
    table = pa.table(
        {
            "scope": [r[0] for r in rows],
            "period": [r[1] for r in rows],
            "key": [r[2] for r in rows],
            "budget_usd": pa.array([r[3] for r in rows], pa.decimal128(38, 6)),
        }
    )
    con.register("budgets", table)
    month = "CAST(date_trunc('month', dt) AS DATE)"
    spend = []
    for period, condition, start in (("day", days, "dt"), ("month", months, month)):
        if any(r[0] == "tier" and r[1] == period for r in rows):
            spend.append(
                f"SELECT 'tier' AS scope, '{period}' AS period, ai_tier AS key, {start} AS period_start, "
                f"CAST(sum(cost) AS DECIMAL(38, 6)) AS cost_usd FROM event_groups "
                f"WHERE NOT per_user AND {condition} GROUP BY ALL"
            )
    users = sorted({int(r[2]) for r in rows if r[0] == "user"})
    if users:
        # One scan of the budgeted users' events (a literal list: DuckDB filters it in the scan).
        con.execute(
            f"CREATE TEMP TABLE user_days AS SELECT user_id, dt, {days} AS in_period, "
            f"CAST(coalesce(sum(cost), 0) AS DECIMAL(38, 6)) AS cost FROM events "
            f"WHERE {months} AND user_id IN ({', '.join(map(str, users))}) GROUP BY ALL"
        )
        for period, where, start in (("day", "in_period", "dt"), ("month", "true", month)):
            spend.append(
                f"SELECT 'user' AS scope, '{period}' AS period, CAST(user_id AS VARCHAR) AS key, "
                f"{start} AS period_start, CAST(sum(cost) AS DECIMAL(38, 6)) AS cost_usd FROM user_days "
                f"WHERE {where} GROUP BY ALL"
            )
    sql = f"""
        SELECT s.scope, s.key, s.period, s.period_start, s.cost_usd, b.budget_usd,
               CAST(s.cost_usd - b.budget_usd AS DECIMAL(38, 6)) AS over_by_usd
        FROM ({" UNION ALL ".join(spend)}) AS s JOIN budgets AS b USING (scope, period, key)
        WHERE s.cost_usd > b.budget_usd
        ORDER BY s.period_start, s.scope, s.period, s.key
    """
    return _section(con, "budget_breaches", BREACHES_TITLE, sql)


def _month_end(day: date) -> date:
    following = day.replace(day=28).toordinal() + 4
    return date.fromordinal(following - date.fromordinal(following).day)


def _review_queue(audit_url: str | None) -> Section:
    """The review queue's size by decision, from the audit store (no rows without one)."""
    if audit_url is None:
        return Section("review_queue", QUEUE_TITLE, QUEUE_COLUMNS, ())
    from connectors import database, review

    engine = database.open_engine(audit_url, create=False)
    try:
        sizes = review.queue_sizes(engine)
    finally:
        engine.dispose()
    rows = tuple((s.decision, s.awaiting_review, s.oldest_decided_at) for s in sizes)
    return Section("review_queue", QUEUE_TITLE, QUEUE_COLUMNS, rows)
