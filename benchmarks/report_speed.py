"""How fast ``runner.py report`` reads a large output, beside a bare DuckDB scan of the same files.

    python benchmarks/report_speed.py --events 10000000 [--data-dir bench-data] [--rounds 3]

Makes (once per size, under ``--data-dir``) an output directory shaped as a run writes it: the
``events/`` dataset with ``--events`` rows over 60 days of event time, Hive-partitioned by day,
zstd Parquet of ``schemas/datasets.json``'s types (written by DuckDB from generated columns, not by
the pipeline: a 10M-event run would take hours here), plus ``moderation/`` (one row per 5
events), ``rate_limit_violations/``, ``dead_letter/`` and one run summary. Then, alternating,
``--rounds`` times in one process:

1. **anchor**: ``SELECT count(*) FROM read_parquet('events/dt=*/*.parquet')`` in a new DuckDB
   connection (the bare scan the issue names; DuckDB answers it from the files' metadata);
2. **scan**: ``SELECT sum(cost) …``, a scan that reads one column of every row (a second anchor);
3. **report**: ``build_report`` with a budget of each kind, every section, as ``report`` runs it;

and prints each round's times and the median ratios ``report / anchor`` and ``report / scan``.
Timings are printed, never asserted.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from decimal import Decimal
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the ``benchmarks`` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import duckdb

import schemas
from analytics.report import Budgets, build_report
from benchmarks.report import environment, print_environment

DAYS = 60
#: How every dataset is written: zstd Parquet in dt= folders, files named as a run names its own.
PARTITIONED = "(FORMAT parquet, COMPRESSION zstd, PARTITION_BY (dt), FILENAME_PATTERN 'part-bench-{i}')"
USERS = 200_000


def make_output(out: Path, events: int) -> None:
    """An output directory with ``events`` generated events and the datasets that go with them."""
    models = [*sorted({row["model"] for row in schemas.pricing_rows()}), "llama-3.1-70b-selfhosted"]
    model_list = "[" + ", ".join(f"'{m}'" for m in models) + "]"
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    (out / "_runs").mkdir(parents=True)
    con.execute("CREATE MACRO h(i, k) AS CAST(hash(i, k) >> 1 AS BIGINT)")  # hash() is UBIGINT
    # Rows in generation order are spread over the days, as a run's events of many files would be.
    con.execute(
        f"""
        CREATE TEMP TABLE e AS
        SELECT 'evt-' || i AS event_id,
               TIMESTAMPTZ '2025-07-01 00:00:00+00'
                   + to_microseconds(h(i, 1) % ({DAYS} * 86400000000)) AS event_time,
               CAST(1 + h(i, 2) % {USERS} AS BIGINT) AS user_id,
               ['chat_completion', 'text_generation', 'image_generation', 'embedding'][1 + h(i, 3) % 4]
                   AS operation_type,
               {model_list}[1 + h(i, 4) % {len(models)}] AS model,
               ['free', 'free', 'free', 'pro', 'pro', 'enterprise'][1 + h(i, 5) % 6] AS ai_tier,
               'event' AS tier_source,
               CASE WHEN h(i, 3) % 4 = 2 THEN 'image' ELSE 'text' END AS modality,
               sha256(CAST(h(i, 6) % 1000000 AS VARCHAR)) AS input_hash,
               sha256(CAST(h(i, 7) % 1000000 AS VARCHAR)) AS output_hash,
               CASE WHEN h(i, 3) % 4 = 2 THEN sha256(CAST(i AS VARCHAR) || 'img') END AS image_hash,
               'sha256' AS hash_mode,
               CAST(h(i, 8) % 2000 AS BIGINT) AS input_tokens,
               CAST(h(i, 9) % 1000 AS BIGINT) AS output_tokens,
               CAST(h(i, 3) % 4 = 2 AS BIGINT) AS images,
               CASE WHEN h(i, 4) % {len(models)} = {len(models) - 1} THEN NULL
                    ELSE CAST(CAST(h(i, 10) % 40000 AS DECIMAL(18, 6)) / 1000000 AS DECIMAL(10, 6))
               END AS cost,
               CASE WHEN h(i, 4) % {len(models)} = {len(models) - 1} THEN 'unpriced' ELSE 'priced' END
                   AS cost_status,
               h(i, 11) % 200 = 0 AS rate_limited,
               ['approved', 'approved', 'approved', 'approved', 'flagged', 'rejected'][1 + h(i, 12) % 6]
                   AS decision,
               time_bucket(INTERVAL 60 SECOND, event_time) AS window_start,
               NULL AS metadata,
               'bench.jsonl' AS source,
               i AS line_no
        FROM range({events}) AS t(i)
        """
    )
    con.execute(f"COPY (SELECT *, CAST(event_time AS DATE) AS dt FROM e) TO '{out / 'events'}' {PARTITIONED}")
    con.execute(
        f"""
        COPY (SELECT input_hash AS content_hash, 'text' AS content_type, min(event_time) AS first_seen,
                     CAST(0.42 AS DECIMAL(3, 2)) AS score, any_value(decision) AS decision,
                     CASE WHEN any_value(decision) = 'approved' THEN [] ELSE ['offensive'] END AS categories,
                     CAST([] AS VARCHAR[]) AS rule_hits, 'bench' AS scorer, '1' AS scorer_version,
                     CAST(min(event_time) AS DATE) AS dt
              FROM e WHERE hash(event_id) % 5 = 0 GROUP BY input_hash)
        TO '{out / "moderation"}' {PARTITIONED}
        """
    )
    con.execute(
        f"""
        COPY (SELECT user_id, ai_tier, window_start, window_start + INTERVAL 60 SECOND AS window_end,
                     CAST(count(*) + 20 AS BIGINT) AS request_count, CAST(20 AS BIGINT) AS quota,
                     CAST(count(*) AS BIGINT) AS limited_count, CAST(window_start AS DATE) AS dt
              FROM e WHERE rate_limited GROUP BY ALL)
        TO '{out / "rate_limit_violations"}' {PARTITIONED}
        """
    )
    dead = events // 100
    con.execute(
        f"""
        COPY (SELECT 'bench.jsonl' AS source, i AS line_no, CAST(i AS VARCHAR) AS position,
                     CAST('{{}}' AS BLOB) AS raw, false AS raw_truncated,
                     ['malformed_json', 'missing_field', 'invalid_timestamp'][1 + i % 3] AS reason,
                     'generated' AS detail, NULL AS event_id,
                     TIMESTAMPTZ '2025-07-01 00:00:00+00' + to_seconds(i % ({DAYS} * 86400)) AS event_time,
                     CAST(event_time AS DATE) AS dt
              FROM range({dead}) AS t(i))
        TO '{out / "dead_letter"}' {PARTITIONED}
        """
    )
    cost = con.execute("SELECT CAST(coalesce(sum(cost), 0) AS DECIMAL(38, 6)) FROM e").fetchall()[0][0]
    unpriced = con.execute("SELECT count(*) FROM e WHERE cost IS NULL").fetchall()[0][0]
    reasons = "['malformed_json', 'missing_field', 'invalid_timestamp'][1 + i % 3]"
    by_reason = dict(con.execute(f"SELECT {reasons}, count(*) FROM range({dead}) t(i) GROUP BY 1").fetchall())
    summary = {
        "run_id": "20260101T000000Z-bench000",
        "engine": "beam",
        "engine_args": [],
        "started_at": "2026-01-01T00:00:00.000+00:00",
        "finished_at": "2026-01-01T01:00:00.000+00:00",
        "seconds": 3600.0,
        "events_read": events + dead,
        "events_processed": events,
        "events_dead_lettered": dead,
        "duplicates_collapsed": 0,
        "rate_limited": 0,
        "late_events": 0,
        "unpriced_events": unpriced,
        "cost_total": str(cost),
        "rate_limit_violations": 0,
        "audit_rows_inserted": events,
        "embedding_cache_hits": 0,
        "embedding_cache_misses": 0,
        "embeddings_written": 0,
        "user_features_written": 0,
        "decisions_approved": 0,
        "decisions_flagged": 0,
        "decisions_rejected": 0,
        "moderation_rows_written": 0,
        "decision_rows_changed": 0,
        "blank_lines": 0,
        "dead_letters_by_reason": by_reason,
        "events_per_second": events // 3600,
        "inputs": [],
        "inputs_fingerprint": "0123456789abcdef",
        "out_dir": str(out),
        "audit_db": "sqlite:///bench",
        "audit_schema_version": "bench",
        "config": {},
    }
    (out / "_runs" / "20260101T000000Z-bench000.json").write_text(json.dumps(summary, indent=2))


def timed(work: object) -> float:
    start = time.perf_counter()
    work()  # type: ignore[operator]
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--data-dir", type=Path, default=Path("bench-data"))
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    out = args.data_dir / f"report-{args.events}"
    if not (out / "_runs").is_dir():
        print(f"generating {args.events:,} events under {out} …", flush=True)
        seconds = timed(lambda: make_output(out, args.events))
        print(f"generated in {seconds:.1f}s\n")
    print_environment(environment(packages=("duckdb", "pyarrow")))
    size = sum(p.stat().st_size for p in (out / "events").rglob("*.parquet"))
    files = len(list((out / "events").glob("dt=*/*.parquet")))
    print(f"events/: {args.events:,} rows in {files} files, {size / 2**20:,.0f} MiB\n")

    glob = str(out / "events" / "dt=*" / "*.parquet")
    budgets = Budgets(
        {"free": Decimal(1000)}, {"pro": Decimal(10_000)}, {7: Decimal("0.5")}, {42: Decimal("2.5")}
    )

    def anchor() -> None:
        with duckdb.connect() as con:
            (count,) = con.execute(f"SELECT count(*) FROM read_parquet('{glob}')").fetchall()[0]
            assert count == args.events

    def scan() -> None:
        with duckdb.connect() as con:
            con.execute(f"SELECT sum(cost) FROM read_parquet('{glob}')").fetchall()

    sections: dict[str, int] = {}

    def report() -> None:
        done = build_report(out, budgets=budgets)
        sections.update({name: len(s.rows) for name, s in done.sections.items()})

    rounds = []
    header = ("round", "anchor s", "scan s", "report s", "report/anchor", "report/scan")
    print("{:>5} {:>9} {:>8} {:>9} {:>14} {:>12}".format(*header))
    for number in range(1, args.rounds + 1):
        a, s, r = timed(anchor), timed(scan), timed(report)
        rounds.append((a, s, r))
        print(f"{number:>5} {a:>9.3f} {s:>8.3f} {r:>9.3f} {r / a:>14.1f} {r / s:>12.1f}", flush=True)
    print("\nrows per section:", ", ".join(f"{k} {v:,}" for k, v in sections.items()))
    print(
        f"\nreport: {statistics.median(r for _, _, r in rounds):.2f}s for {args.events:,} events; "
        f"report / count(*) anchor (median) = {statistics.median(r / a for a, _, r in rounds):.1f}; "
        f"report / sum(cost) scan (median) = {statistics.median(r / s for _, s, r in rounds):.1f}"
    )


if __name__ == "__main__":
    main()
