"""How fast the audit sink writes to MariaDB, next to plain PyMySQL: a benchmark script, not a test.

    python benchmarks/audit_mysql.py --rows 200000 [--batch-rows 10000] [--json FILE] [--profile]

Builds N realistic rows in the ``events`` schema (deterministic for ``--seed``), then measures,
in this order, each into its own freshly migrated, empty database on the server (created with a
random name and dropped at the end):

1. **raw multi-row**: PyMySQL ``executemany`` of ``INSERT IGNORE … VALUES (%s, …)`` on rows
   converted to tuples beforehand (not timed) and sorted by ``event_id`` as the sink sorts them,
   one commit per batch; PyMySQL rewrites it into multi-row INSERTs. The anchor: what the sink
   could reach with the same driver.
2. **pipeline sink**: ``AuditSink(open_engine(url), batch_rows).write(key, events)``, its sort and
   Arrow to Python conversion included.
3. **replay**: the pipeline sink again into the already-filled table (every row a duplicate).
4. **row-by-row**: one ``execute`` per row, one commit per batch, on the first ``--row-sample``
   rows: what a naive writer gets.

Then prints rows/s and the ratios, checks the stored rows (count and exact Decimal sum of costs)
and prints ``ok``. Timings are printed, never asserted.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import logging
import pstats
import random
import secrets
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from importlib.metadata import version
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the ``benchmarks`` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pymysql
import sqlalchemy as sa

import schemas
from benchmarks.measure import Measurement, Stopwatch, stopwatch
from benchmarks.report import environment, print_environment
from connectors.audit_sink import AUDIT_COLUMNS, WRITTEN_COLUMNS, AuditSink
from connectors.database import open_engine, upgrade
from connectors.database_url import redact, resolve_url
from loadgen.events import KIND_SHARES, ModelCard, model_catalogue
from loadgen.load import BASE_TIME, SPAN_MS, Population, user_count
from transforms.cost import PriceBook, event_cost
from transforms.dedup import STORED
from transforms.event_batch import FINGERPRINT

#: The inputs fingerprint the sink stores beside each row (a run's, in the pipeline).
INPUTS_FINGERPRINT = "0123456789abcdef"

#: The pipeline sink's rows/s over the raw multi-row anchor's that we aim for.
TARGET_RATIO = 0.8
#: One audit row as the driver takes it: values in ``AUDIT_COLUMNS`` order.
AuditRow = tuple[object, ...]


@dataclass(frozen=True)
class Catalogue:
    """What synthetic events are drawn from: skewed users, the priced models, the price table."""

    population: Population
    models_by_kind: dict[str, tuple[ModelCard, ...]]
    prices: PriceBook

    @classmethod
    def draw(cls, rng: random.Random, rows: int) -> Catalogue:
        """Users for ``rows`` events (Zipf activity), every model of ``pricing.csv`` plus an unpriced one."""
        cards = model_catalogue(schemas.pricing_rows())
        by_kind = {kind: tuple(c for c in cards if c.kind == kind) for kind in KIND_SHARES}
        return cls(
            Population.draw(rng, user_count(rows)), by_kind, PriceBook.from_rows(schemas.pricing_rows())
        )


def _usage(rng: random.Random, model: ModelCard) -> tuple[int, int, int]:
    """``(input_tokens, output_tokens, images)`` shaped like the model's kind."""
    prompt = min(100_000, int(rng.lognormvariate(4.0, 1.0)))
    if model.kind == "image":
        images = rng.choices((1, 2, 3, 4), weights=(80, 10, 5, 5))[0]
        return (prompt if model.bills_input_tokens else 0, 0, images)
    if model.kind == "embedding":
        return (prompt, 0, 0)
    answer = min(100_000, int(rng.lognormvariate(5.0, 1.0)))
    return (rng.choice((0, 12, 40, 350)) + prompt, answer, 0)


def _operation(rng: random.Random, model: ModelCard) -> str:
    if model.kind == "image":
        return "image_generation"
    if model.kind == "embedding":
        return "embedding"
    return "chat_completion" if rng.random() < 0.8 else "text_generation"


def _event(rng: random.Random, catalogue: Catalogue, line_no: int, ms: int) -> dict[str, Any]:
    """One processed event as the ``events`` dataset holds it."""
    user = catalogue.population.pick(rng)
    kind = rng.choices(list(KIND_SHARES), weights=list(KIND_SHARES.values()))[0]
    model = rng.choice(catalogue.models_by_kind[kind])
    input_tokens, output_tokens, images = usage = _usage(rng, model)
    event_time = BASE_TIME + timedelta(milliseconds=ms)
    price = catalogue.prices.price_in_force(model.name, event_time.date())
    own_tier = rng.random() < 0.9
    return {
        "event_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        "event_time": event_time,
        "user_id": catalogue.population.user_ids[user],
        "operation_type": _operation(rng, model),
        "model": model.name,
        "ai_tier": catalogue.population.tiers[user] if own_tier else "free",
        "tier_source": "event" if own_tier else "default",
        "modality": "image" if images else "text",
        "input_hash": rng.randbytes(32).hex(),
        "output_hash": rng.randbytes(32).hex() if output_tokens else None,
        "image_hash": rng.randbytes(32).hex() if images else None,
        "hash_mode": "sha256",
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "images": images,
        "cost": None if price is None else event_cost(price, *usage),
        "cost_status": "unpriced" if price is None else "priced",
        "rate_limited": rng.random() < 0.06,
        "decision": None,  # moderation decides after the audit sink's input is ordered
        "window_start": event_time.replace(second=0, microsecond=0),
        "metadata": f'{{"app": "web", "session": "s-{line_no:010x}"}}' if rng.random() < 0.3 else None,
        "source": "bench/audit_mysql",
        "line_no": line_no,
    }


def build_events(rows: int, seed: int) -> pa.Table:
    """``rows`` events in the ``events`` schema, in time order over four days; the same for a seed."""
    rng = random.Random(seed)
    catalogue = Catalogue.draw(rng, rows)
    schema = schemas.arrow_schema("events")
    columns: dict[str, list[Any]] = {name: [] for name in schema.names}
    for line_no in range(1, rows + 1):
        ms = (line_no - 1) * SPAN_MS // rows + rng.randrange(1000)
        for name, value in _event(rng, catalogue, line_no, ms).items():
            columns[name].append(value)
    # The audit sink also stores each event's payload fingerprint (16 bytes) beside its row, and
    # is told which events an earlier run stored (none, for a first write).
    fingerprints = pa.array([rng.randbytes(16) for _ in range(rows)], pa.binary(16))
    table = pa.table(columns, schema=schema).append_column(FINGERPRINT, fingerprints)
    return table.append_column(STORED, pa.array([False] * rows))


def as_replay(events: pa.Table) -> pa.Table:
    """``events`` as a replay reaches the sink: the pipeline found each of them stored already."""
    return events.set_column(
        events.schema.get_field_index(STORED), STORED, pa.array([True] * events.num_rows)
    )


def audit_rows(events: pa.Table) -> list[AuditRow]:
    """The driver's tuples for ``events``, in the order and with the values ``AuditSink`` sends.

    Sorted by ``event_id`` like the sink sorts, so both meet the unique index in the same order;
    times as ``YYYY-MM-DD HH:MM:SS`` UTC text (TIMESTAMP holds whole seconds), flags as 0/1.
    """
    events = events.sort_by("event_id")
    seconds = events.column("event_time").cast(pa.timestamp("s", tz="UTC"), safe=False)
    replaced = {
        "event_time": pc.strftime(seconds, "%Y-%m-%d %H:%M:%S"),
        "rate_limited": pc.cast(events.column("rate_limited"), pa.int8()),
        "cost": pc.cast(events.column("cost"), pa.string()),
    }
    columns = [replaced.get(name, events.column(name)).to_pylist() for name in AUDIT_COLUMNS]
    columns.append([INPUTS_FINGERPRINT] * events.num_rows)
    return list(zip(*columns, strict=True))


def insert_sql() -> str:
    """The anchor's keyed insert, with one ``%s`` per audit column."""
    names = ", ".join(WRITTEN_COLUMNS)
    marks = ", ".join(["%s"] * len(WRITTEN_COLUMNS))
    return f"INSERT IGNORE INTO ai_audit_trail ({names}) VALUES ({marks})"


def connect(url: sa.URL, autocommit: bool = False) -> pymysql.Connection:
    """A PyMySQL connection to ``url``'s server and database, set up like ``open_engine``'s."""
    return pymysql.connect(
        host=url.host or "127.0.0.1",
        port=url.port or 3306,
        user=url.username or "root",
        password=url.password or "",
        database=url.database,
        autocommit=autocommit,
        charset="utf8mb4",
        init_command="SET time_zone = '+00:00'",
    )


def run_sql(url: sa.URL, sql: str) -> list[tuple[Any, ...]]:
    """Run one statement on a fresh autocommit connection; return its rows."""
    con = connect(url, autocommit=True)
    try:
        cursor = con.cursor()
        cursor.execute(sql)
        return list(cursor.fetchall())
    finally:
        con.close()


@contextmanager
def scratch_database(server: sa.URL, purpose: str) -> Iterator[sa.URL]:
    """A new database ``aiep_bench_<hex>_<purpose>``, migrated to head; dropped on exit."""
    name = f"aiep_bench_{secrets.token_hex(4)}_{purpose}"
    run_sql(server, f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    try:
        url = server.set(database=name)
        engine = open_engine(url.render_as_string(hide_password=False))
        try:
            upgrade(engine)
        finally:
            engine.dispose()
        yield url
    finally:
        run_sql(server, f"DROP DATABASE IF EXISTS `{name}`")


def time_sink(url: sa.URL, events: pa.Table, batch_rows: int, name: str, what: str) -> Measurement:
    """Time ``AuditSink.write(key, events)``; the engine and the writer are made before the clock starts."""
    engine = open_engine(url.render_as_string(hide_password=False))
    try:
        writer = AuditSink(engine, batch_rows, outputs_id=INPUTS_FINGERPRINT)
        with stopwatch() as watch:
            inserted = writer.write("bench", events).counts["audit_rows_inserted"]
    finally:
        engine.dispose()
    return _measurement(name, what, events.num_rows, watch, inserted)


#: How one anchor sends a batch of rows on a cursor; returns the rows the server inserted.
InsertBatch = Callable[[pymysql.cursors.Cursor, list[AuditRow]], int]


def insert_multi_row(cursor: pymysql.cursors.Cursor, batch: list[AuditRow]) -> int:
    """``executemany``: PyMySQL rewrites the batch into multi-row INSERTs of up to ~1 MB each."""
    return int(cursor.executemany(insert_sql(), batch) or 0)


def insert_row_by_row(cursor: pymysql.cursors.Cursor, batch: list[AuditRow]) -> int:
    """One ``execute`` (one round trip) per row."""
    sql = insert_sql()
    return sum(cursor.execute(sql, row) for row in batch)


def time_driver(
    url: sa.URL, rows: list[AuditRow], batch_rows: int, insert: InsertBatch, name: str, what: str
) -> Measurement:
    """Time ``insert`` over ``rows`` on one PyMySQL connection, one commit per batch."""
    con = connect(url)
    try:
        cursor = con.cursor()
        inserted = 0
        with stopwatch() as watch:
            for start in range(0, len(rows), batch_rows):
                inserted += insert(cursor, rows[start : start + batch_rows])
                con.commit()
    finally:
        con.close()
    return _measurement(name, what, len(rows), watch, inserted)


def _measurement(name: str, what: str, rows: int, watch: Stopwatch, inserted: int) -> Measurement:
    details = {"inserted": inserted}
    return Measurement(name, what, rows, watch.wall_s, watch.cpu_s, None, watch.others_cores, details)


def stored_totals(url: sa.URL) -> tuple[int, Decimal]:
    """``COUNT(*)`` and ``SUM(cost)`` of ``ai_audit_trail``, read back on a fresh connection."""
    [(count, total)] = run_sql(url, "SELECT COUNT(*), COALESCE(SUM(cost), 0) FROM ai_audit_trail")
    return int(count), Decimal(total)


def input_cost(events: pa.Table) -> Decimal:
    """The exact Decimal sum of the events' costs (NULL, unpriced, counts as nothing)."""
    return sum((c for c in events.column("cost").to_pylist() if c is not None), Decimal(0))


def check_stored(url: sa.URL, events: pa.Table, replayed: Measurement) -> list[str]:
    """What differs between the pipeline's stored rows and its input; empty when all agree."""
    count, total = stored_totals(url)
    expected = input_cost(events)
    problems = []
    if count != events.num_rows:
        problems.append(f"pipeline table holds {count:,} rows; expected {events.num_rows:,}")
    if total != expected:
        problems.append(f"pipeline table SUM(cost) = {total}; the input's costs sum to {expected}")
    if replayed.details["inserted"] != 0:
        problems.append(f"replay inserted {replayed.details['inserted']:,} rows; expected 0")
    return problems


def check_inserted(rows: list[Measurement]) -> list[str]:
    """Every first write must insert all its rows, or the rates do not compare like with like."""
    return [
        f"{m.name} inserted {m.details['inserted']:,} of {m.events:,} rows"
        for m in rows
        if m.name != "replay" and m.details["inserted"] != m.events
    ]


def measure_all(server: sa.URL, events: pa.Table, args: argparse.Namespace) -> dict[str, Any]:
    """Run the four measurements, each into its own fresh database; check the stored rows."""
    rows = audit_rows(events)
    sample = rows[: args.row_sample]
    batch = args.batch_rows
    with scratch_database(server, "raw") as url:
        what = "PyMySQL executemany INSERT IGNORE, pre-built tuples (conversion not timed)"
        raw = time_driver(url, rows, batch, insert_multi_row, "raw multi-row", what)
        raw_count, _ = stored_totals(url)
    print(f"  measured {raw.name}: {raw.wall_s:.2f} s", flush=True)
    with scratch_database(server, "sink") as url:
        what = "AuditSink.write(key, events): sort, Arrow->Python, executemany via the engine pool"
        sink = time_sink(url, events, batch, "pipeline sink", what)
        print(f"  measured {sink.name}: {sink.wall_s:.2f} s", flush=True)
        what = "AuditSink.write(key, events) again into the filled table: every row a duplicate"
        replay = time_sink(url, as_replay(events), batch, "replay", what)
        print(f"  measured {replay.name}: {replay.wall_s:.2f} s", flush=True)
        problems = check_stored(url, events, replay)
    with scratch_database(server, "rowwise") as url:
        what = f"PyMySQL execute per row, first {len(sample):,} rows only, commit per batch"
        rowwise = time_driver(url, sample, batch, insert_row_by_row, "row-by-row", what)
    print(f"  measured {rowwise.name}: {rowwise.wall_s:.2f} s", flush=True)
    measured = [sink, raw, rowwise, replay]
    problems += check_inserted(measured)
    if raw_count != len(rows):
        problems.append(f"raw multi-row table holds {raw_count:,} rows; expected {len(rows):,}")
    return {"measurements": measured, "problems": problems, "input_cost": input_cost(events)}


def print_table(measured: list[Measurement]) -> dict[str, float]:
    """One line per measurement, what each measured, then the ratios; returns the ratios."""
    print(
        f"{'':3}{'measurement':<16}{'rows':>10}{'inserted':>10}{'wall s':>9}{'cpu s':>8}"
        f"{'rows/s':>10}{'others':>8}"
    )
    for i, m in enumerate(measured, start=1):
        print(
            f"{i:>2} {m.name:<16}{m.events:>10,}{m.details['inserted']:>10,}{m.wall_s:>9.2f}"
            f"{m.cpu_s:>8.2f}{m.events_per_s:>10,.0f}{m.others_cores or 0:>8.2f}"
        )
    print(f"{'':3}cpu s: this process; others: cores other processes (mariadbd included) kept busy\n")
    for i, m in enumerate(measured, start=1):
        print(f"{i:>2} {m.what}")
    by_name = {m.name: m.events_per_s for m in measured}
    ratios = {
        "pipeline sink / raw multi-row": by_name["pipeline sink"] / by_name["raw multi-row"],
        "raw multi-row / row-by-row": by_name["raw multi-row"] / by_name["row-by-row"],
    }
    print("\nratios (rows/s):")
    for label, ratio in ratios.items():
        print(f"  {label:<31} = {ratio:6.2f}x")
    sink_ratio = ratios["pipeline sink / raw multi-row"]
    verdict = "met" if sink_ratio >= TARGET_RATIO else "NOT met"
    print(f"  target: pipeline sink >= {TARGET_RATIO:.2f}x raw multi-row: {verdict}")
    return {label: round(ratio, 4) for label, ratio in ratios.items()}


def profile_sink(server: sa.URL, events: pa.Table, batch_rows: int, top: int) -> str:
    """cProfile of one more ``AuditSink.write`` into a fresh database: the top functions by own time."""
    with scratch_database(server, "profile") as url:
        engine = open_engine(url.render_as_string(hide_password=False))
        try:
            profiler = cProfile.Profile()
            profiler.runcall(AuditSink(engine, batch_rows).write, "bench", events)
        finally:
            engine.dispose()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(top)
    return out.getvalue()


def _as_json(m: Measurement) -> dict[str, Any]:
    return {
        "name": m.name,
        "what": m.what,
        "rows": m.events,
        "inserted": m.details["inserted"],
        "wall_s": round(m.wall_s, 3),
        "cpu_s": round(m.cpu_s, 3),
        "rows_per_s": round(m.events_per_s),
        "others_cores": None if m.others_cores is None else round(m.others_cores, 2),
    }


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="audit_mysql.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--rows", type=_positive, default=200_000, metavar="N", help="audit rows (default: 200,000)"
    )
    parser.add_argument(
        "--batch-rows", type=_positive, default=10_000, metavar="B", help="rows per batch (10,000)"
    )
    parser.add_argument(
        "--row-sample",
        type=_positive,
        default=20_000,
        metavar="K",
        help="rows for row-by-row (first K; 20,000)",
    )
    parser.add_argument("--seed", type=int, default=1, help="generator seed (default: 1)")
    parser.add_argument(
        "--server",
        default="mysql+pymysql://root@127.0.0.1:3306",
        metavar="URL",
        help="MariaDB/MySQL server; a password comes from $AIEP_MYSQL_PASSWORD (default: root on 127.0.0.1)",
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the figures here")
    parser.add_argument(
        "--profile",
        type=int,
        nargs="?",
        const=20,
        default=0,
        metavar="TOP",
        help="then profile one more sink write and print the TOP functions (20)",
    )
    return parser


def _positive(text: str) -> int:
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer like 200000; got {text!r}")
    return value


def print_header(args: argparse.Namespace, server: sa.URL) -> dict[str, Any]:
    """What ran, where, against which server, on which rows; returns it for ``--json``."""
    header = {
        "environment": environment(),
        "server_version": str(run_sql(server, "SELECT VERSION()")[0][0]),
        "drivers": {name: version(name) for name in ("pymysql", "sqlalchemy")},
        **{name: getattr(args, name) for name in ("rows", "batch_rows", "row_sample", "seed")},
    }
    print_environment(header["environment"])
    drivers = ", ".join(f"{k} {v}" for k, v in header["drivers"].items())
    print(f"server:  {header['server_version']} at {redact(args.server)}; {drivers}")
    print(
        f"rows:    {args.rows:,} (seed {args.seed}); batch {args.batch_rows:,} rows; "
        f"row-by-row on the first {args.row_sample:,}\n",
        flush=True,
    )
    return header


def print_verdict(problems: list[str], rows: int, cost: Decimal) -> None:
    """``ok`` with what was checked, or one ``FAILED`` line per problem."""
    for problem in problems:
        print(f"FAILED: {problem}")
    if not problems:
        print(f"\nok: {rows:,} rows stored once, SUM(cost) = {cost} as in the input, replay inserted 0")


def main(argv: list[str] | None = None) -> int:
    """Build the rows, measure, print the table and ``ok`` (or what is wrong); write ``--json``."""
    args = _parser().parse_args(argv)
    args.row_sample = min(args.row_sample, args.rows)
    # Every scratch database starts without a users table: the migration's warning is expected.
    logging.getLogger("aiep.migrations").setLevel(logging.ERROR)
    # A server, not a database: each measurement makes its own (resolve_url wants one named).
    named = sa.make_url(args.server)
    server = resolve_url(str(named.set(database=named.database or "mysql"))).set(database=None)
    header = print_header(args, server)
    with stopwatch() as built:
        events = build_events(args.rows, args.seed)
    print(f"  built {events.num_rows:,} events in {built.wall_s:.1f} s (not timed)", flush=True)
    results = measure_all(server, events, args)
    print()
    ratios = print_table(results["measurements"])
    print_verdict(results["problems"], args.rows, results["input_cost"])
    if args.profile:
        print(f"\nprofile of AuditSink.write ({args.rows:,} rows, top {args.profile} by own time):")
        print(profile_sink(server, events, args.batch_rows, args.profile))
    if args.json:
        figures = {
            **header,
            "measurements": [_as_json(m) for m in results["measurements"]],
            "ratios": ratios,
            "target_ratio": TARGET_RATIO,
            "input_cost": str(results["input_cost"]),
            "problems": results["problems"],
            "ok": not results["problems"],
        }
        args.json.write_bytes(orjson.dumps(figures, option=orjson.OPT_INDENT_2) + b"\n")
        print(f"wrote {args.json}")
    return 1 if results["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
