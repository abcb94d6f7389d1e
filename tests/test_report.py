"""`runner.py report` and `runner.py sql` over a real run: every figure recomputed here from the
Parquet files (read with pyarrow, summed with Python's Decimal), the run summary and the audit
store, to the last decimal; budgets found and breached; SQL that writes refused."""

from __future__ import annotations

import json
import shutil
import sqlite3
from collections import Counter, defaultdict
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow.dataset as ds
import pytest

from tests.conftest import run_cli_in_process

MICRO = Decimal("0.000001")


def rows_of(out_dir: Path, dataset: str) -> list[dict[str, Any]]:
    """Every row of a dataset, with its ``dt`` partition as a date (None for the default one)."""
    folder = out_dir / dataset
    if not folder.is_dir():
        return []
    table = ds.dataset(folder, format="parquet", partitioning="hive").to_table()
    rows = table.to_pylist()
    for row in rows:
        dt = row["dt"]
        row["dt"] = None if dt in (None, "__HIVE_DEFAULT_PARTITION__") else date.fromisoformat(str(dt))
    return rows


def report(out_dir: Path, *flags: str | Path) -> dict[str, list[dict[str, Any]]]:
    """``report --format json``: each section's rows."""
    done = run_cli_in_process("report", "--out", out_dir, "--format", "json", *flags)
    assert done.returncode == 0, done.stderr
    return {name: s["rows"] for name, s in json.loads(done.stdout)["sections"].items()}


def money(value: Decimal) -> str:
    return str(value.quantize(MICRO))


def expected_cost_by_day(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = defaultdict(list)
    for e in events:
        groups[(e["dt"], e["ai_tier"], e["operation_type"], e["model"])].append(e)
    return [
        {
            "day": day.isoformat(),
            "ai_tier": tier,
            "operation_type": operation,
            "model": model,
            "events": len(group),
            "priced_events": sum(e["cost_status"] == "priced" for e in group),
            "unpriced_events": sum(e["cost_status"] == "unpriced" for e in group),
            "cost_usd": money(sum((e["cost"] for e in group if e["cost"] is not None), Decimal(0))),
        }
        for (day, tier, operation, model), group in sorted(groups.items())
    ]


def test_cost_figures_equal_sums_recomputed_from_the_files(analytics_out: Path) -> None:
    events = rows_of(analytics_out, "events")
    got = report(analytics_out, "--top", "5")
    assert got["cost_by_day"] == expected_cost_by_day(events)
    total = sum((Decimal(r["cost_usd"]) for r in got["cost_by_day"]), Decimal(0))
    summary = json.loads(next((analytics_out / "_runs").glob("*.json")).read_text())
    assert money(total) == money(Decimal(summary["cost_total"]))

    by_user: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for e in events:
        by_user[e["user_id"]].append(e)
    users = sorted(
        (
            (sum((e["cost"] for e in es if e["cost"] is not None), Decimal(0)), user, es)
            for user, es in by_user.items()
        ),
        key=lambda t: (-t[0], t[1]),
    )[:5]
    assert got["top_users"] == [
        {
            "user_id": user,
            "ai_tier": max(es, key=lambda e: (e["event_time"], e["event_id"]))["ai_tier"],
            "events": len(es),
            "cost_usd": money(cost),
            "unpriced_events": sum(e["cost_status"] == "unpriced" for e in es),
        }
        for cost, user, es in users
    ]

    unpriced = Counter(e["model"] for e in events if e["cost_status"] == "unpriced")
    per_model = Counter(e["model"] for e in events)
    assert unpriced, "the generator makes events of models the pricing table lacks"
    assert [(r["model"], r["events"], r["unpriced_events"]) for r in got["unpriced_by_model"]] == sorted(
        ((m, per_model[m], n) for m, n in unpriced.items()), key=lambda t: (-t[2], t[0])
    )
    for row in got["unpriced_by_model"]:
        assert row["unpriced_share"] == pytest.approx(row["unpriced_events"] / row["events"])


def test_decisions_limits_dead_letters_runs_and_the_queue_equal_their_sources(analytics_out: Path) -> None:
    got = report(analytics_out)
    events = rows_of(analytics_out, "events")
    decisions = Counter((e["dt"].isoformat(), e["decision"]) for e in events if e["decision"] is not None)
    assert {(r["day"], r["decision"]): r["events"] for r in got["decisions_by_day"]} == decisions
    assert {"approved", "flagged", "rejected"} <= {d for _, d in decisions}

    categories: Counter[tuple[str, str, str]] = Counter()
    for row in rows_of(analytics_out, "moderation"):
        for category in row["categories"] or ["(none)"]:
            categories[(row["dt"].isoformat(), row["decision"], category)] += 1
    assert {(r["day"], r["decision"], r["category"]): r["contents"] for r in got["decision_categories"]} == (
        categories
    )

    limits: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for v in rows_of(analytics_out, "rate_limit_violations"):
        limits[(v["dt"].isoformat(), v["ai_tier"])].append(v)
    assert limits, "the generator's bursts go over quota"
    assert got["rate_limits"] == [
        {
            "day": day,
            "ai_tier": tier,
            "windows_over_quota": len(vs),
            "users": len({v["user_id"] for v in vs}),
            "limited_events": sum(v["limited_count"] for v in vs),
        }
        for (day, tier), vs in sorted(limits.items())
    ]

    reasons = Counter(d["reason"] for d in rows_of(analytics_out, "dead_letter"))
    assert {r["reason"]: r["records"] for r in got["dead_letters"]} == reasons
    summary = json.loads(next((analytics_out / "_runs").glob("*.json")).read_text())
    assert reasons == summary["dead_letters_by_reason"]

    (run,) = got["runs"]
    for key in ("run_id", "engine", "events_read", "events_processed", "events_dead_lettered"):
        assert run[key] == summary[key]
    assert run["cost_total"] == money(Decimal(summary["cost_total"]))
    assert (
        run["events_read"]
        == run["events_processed"] + run["events_dead_lettered"] + run["duplicates_collapsed"]
    )
    (cache,) = got["embedding_cache"]
    hits, misses = summary["embedding_cache_hits"], summary["embedding_cache_misses"]
    assert (cache["hits"], cache["misses"]) == (hits, misses)
    assert cache["hit_rate"] == pytest.approx(hits / (hits + misses))

    with sqlite3.connect(analytics_out / "audit.sqlite") as db:
        waiting = dict(
            db.execute(
                "SELECT decision, count(*) FROM moderation_decisions WHERE reviewed_by IS NULL "
                "AND decision IN ('flagged', 'rejected') GROUP BY decision"
            ).fetchall()
        )
    assert {r["decision"]: r["awaiting_review"] for r in got["review_queue"]} == {
        "flagged": waiting.get("flagged", 0),
        "rejected": waiting.get("rejected", 0),
    }


def test_since_and_until_keep_the_days_between_them(analytics_out: Path) -> None:
    events = rows_of(analytics_out, "events")
    days = sorted({e["dt"] for e in events})
    assert len(days) >= 3
    first, last = days[1], days[-2]
    got = report(analytics_out, "--since", first.isoformat(), "--until", last.isoformat())
    kept = [e for e in events if first <= e["dt"] <= last]
    assert got["cost_by_day"] == expected_cost_by_day(kept)
    assert got["runs"] == [], "runs are kept by the day they started (today), not the events' days"


def write_budgets(path: Path, text: str) -> Path:
    path.write_text("[budgets]\n" + text)
    return path


def test_a_budget_breach_is_found_and_fails_the_command_on_request(
    analytics_out: Path, tmp_path: Path
) -> None:
    events = rows_of(analytics_out, "events")
    daily: dict[tuple[str, date], Decimal] = defaultdict(Decimal)
    monthly_user: dict[tuple[int, date], Decimal] = defaultdict(Decimal)
    for e in events:
        if e["cost"] is not None:
            daily[(e["ai_tier"], e["dt"])] += e["cost"]
            monthly_user[(e["user_id"], e["dt"].replace(day=1))] += e["cost"]
    (tier, day), top = max(daily.items(), key=lambda kv: kv[1])
    second = max(cost for (t, d), cost in daily.items() if t == tier and d != day)
    (user, month), user_cost = max(monthly_user.items(), key=lambda kv: kv[1])
    budget = (top + second) / 2  # between the tier's two costliest days: exactly one breach
    config = write_budgets(
        tmp_path / "budgets.toml",
        f'tier_daily_usd = {{ {tier} = "{money(budget)}" }}\n'
        f'user_monthly_usd = {{ "{user}" = "{money(user_cost - MICRO)}" }}\n',
    )
    got = report(analytics_out, "--config", config)
    assert got["budget_breaches"] == [
        {
            "scope": scope,
            "key": key,
            "period": period,
            "period_start": start.isoformat(),
            "cost_usd": money(cost),
            "budget_usd": money(limit),
            "over_by_usd": money(cost - limit),
        }
        for start, scope, period, key, cost, limit in sorted(
            [
                (day, "tier", "day", tier, top, budget.quantize(MICRO)),
                (month, "user", "month", str(user), user_cost, user_cost - MICRO),
            ]
        )
    ]
    failing = run_cli_in_process("report", "--out", analytics_out, "--config", config, "--fail-on-breach")
    assert failing.returncode == 1, failing.stderr
    assert "2 budget breaches" in failing.stderr
    assert "Budget breaches" in failing.stdout

    at_the_limit = write_budgets(
        tmp_path / "exact.toml",
        f'tier_daily_usd = {{ {tier} = "{money(top)}" }}\nuser_monthly_usd = {{ "{user}" = {user_cost} }}\n',
    )
    passing = run_cli_in_process(
        "report", "--out", analytics_out, "--config", at_the_limit, "--fail-on-breach"
    )
    assert passing.returncode == 0, passing.stderr
    assert report(analytics_out, "--config", at_the_limit)["budget_breaches"] == []


def test_report_formats_agree_and_a_bad_budget_is_refused(analytics_out: Path, tmp_path: Path) -> None:
    as_json = report(analytics_out)
    as_csv = run_cli_in_process("report", "--out", analytics_out, "--format", "csv")
    assert as_csv.returncode == 0, as_csv.stderr
    block = as_csv.stdout.split("# cost_by_day: ")[1].split("\n\n")[0].splitlines()[1:]
    header, *lines = block
    assert [dict(zip(header.split(","), line.split(","), strict=True)) for line in lines] == [
        {k: str(v) for k, v in row.items()} for row in as_json["cost_by_day"]
    ]
    table = run_cli_in_process("report", "--out", analytics_out)
    assert table.returncode == 0 and "== Runs ==" in table.stdout
    bad = write_budgets(tmp_path / "bad.toml", 'user_daily_usd = { "7" = "0.0000001" }\n')
    refused = run_cli_in_process("report", "--out", analytics_out, "--config", bad)
    assert refused.returncode == 1
    assert "budgets.user_daily_usd.7 must be an amount" in refused.stderr
    inverted = run_cli_in_process(
        "report", "--out", analytics_out, "--since", "2025-07-09", "--until", "2025-07-08"
    )
    assert inverted.returncode == 2 and "is after --until" in inverted.stderr


def test_sql_runs_queries_over_the_views(analytics_out: Path) -> None:
    done = run_cli_in_process(
        "sql",
        "--out",
        analytics_out,
        "--format",
        "json",
        "SELECT ai_tier, sum(cost) AS cost, count(*) AS n FROM events GROUP BY ai_tier ORDER BY ai_tier",
    )
    assert done.returncode == 0, done.stderr
    totals: dict[str, list[Any]] = defaultdict(lambda: [Decimal(0), 0])
    for e in rows_of(analytics_out, "events"):
        totals[e["ai_tier"]][0] += e["cost"] or 0
        totals[e["ai_tier"]][1] += 1
    assert json.loads(done.stdout) == [
        {"ai_tier": tier, "cost": money(cost), "n": n} for tier, (cost, n) in sorted(totals.items())
    ]
    # Every dataset has a view with its contract's columns, even one the run wrote no file of.
    late = run_cli_in_process("sql", "--out", analytics_out, "--format", "csv", "SELECT * FROM late_events")
    assert late.returncode == 0, late.stderr
    assert late.stdout.splitlines() == [
        "event_id,event_time,user_id,aggregate,window_start,watermark,source,line_no,dt"
    ]


@pytest.mark.parametrize(
    "statement",
    [
        "COPY (SELECT * FROM events) TO '{out}/copied.csv'",
        "CREATE TABLE copied AS SELECT * FROM events",
        "ATTACH '{out}/other.duckdb' AS other",
        "SELECT 1; CREATE VIEW v AS SELECT 1",
        "SET enable_external_access = true",
        "INSTALL httpfs",
    ],
)
def test_sql_refuses_a_statement_that_writes(analytics_out: Path, tmp_path: Path, statement: str) -> None:
    out = tmp_path / "out"
    shutil.copytree(analytics_out, out)
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    done = run_cli_in_process("sql", "--out", out, statement.format(out=out))
    assert done.returncode == 2, done.stderr
    assert "only queries (SELECT, EXPLAIN) may run here" in done.stderr
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before


def test_sql_cannot_read_files_outside_the_output_directory(analytics_out: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret.csv"
    secret.write_text("password\nhunter2\n")
    done = run_cli_in_process("sql", "--out", analytics_out, f"SELECT * FROM read_csv('{secret}')")
    assert done.returncode == 1
    assert "hunter2" not in done.stdout + done.stderr
    assert "disabled by configuration" in done.stderr


def test_the_views_type_every_column_as_duckdb_reads_it_from_arrow() -> None:
    import duckdb

    import schemas
    from analytics.views import duckdb_type

    with duckdb.connect() as con:
        for dataset in schemas.datasets():
            read = [str(t) for t in con.from_arrow(dataset.schema.empty_table()).types]
            assert [duckdb_type(t) for t in dataset.schema.types] == read, dataset.name
