"""Two processes writing the embedded (SQLite) audit store at once: the audit sink against its
anchor, the same keyed ``INSERT`` bound row by row, a script.

    python benchmarks/audit_sqlite_writers.py [--rows 500000] [--rounds 2]

Each of two processes writes ``--rows`` events (``benchmarks.audit_mysql.build_events``: random
UUID event ids over four days) into one store made by the migrations, 50,000 at a time:

- **sink**: ``AuditSink(engine, 10_000).write`` as the pipeline calls it (its sort and Arrow
  conversions, rows staged in a file of their own by ADBC, then ``INSERT ... SELECT`` a batch at
  a time, one transaction per write);
- **anchor**: ``sqlite3`` ``executemany`` of the same keyed statement, on a connection with the
  engine's pragmas, of the tuples the sink sends (``audit_mysql.audit_rows``, built before the
  clock starts), 10,000 rows a call, one transaction per 50,000.

The processes start together (a barrier) and the wall time is until both have committed. The
modes alternate ``--rounds`` times on fresh stores.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the ``benchmarks`` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.audit_mysql import INPUTS_FINGERPRINT, audit_rows, build_events
from connectors.audit_sink import WRITTEN_COLUMNS, AuditSink, keyed_insert
from connectors.database import open_engine, upgrade

WRITE_ROWS = 50_000
BATCH_ROWS = 10_000


def write(mode: str, path: str, rows: int, seed: int, start: Any) -> None:
    events = build_events(rows, seed)
    engine = open_engine(f"sqlite:///{path}")
    if mode == "sink":
        sink = AuditSink(engine, BATCH_ROWS, outputs_id=INPUTS_FINGERPRINT)
        start.wait()
        for first in range(0, rows, WRITE_ROWS):
            sink.write("bench", events.slice(first, WRITE_ROWS))
    else:
        compiled = keyed_insert(engine).compile(dialect=engine.dialect, column_keys=WRITTEN_COLUMNS)
        position = {name: i for i, name in enumerate(WRITTEN_COLUMNS)}
        order = [position[name] for name in compiled.positiontup or []]
        tuples = [tuple(row[i] for i in order) for row in audit_rows(events)]
        raw = engine.raw_connection()  # the engine's pragmas (WAL, busy timeout, cache size)
        cursor = raw.cursor()
        start.wait()
        for first in range(0, rows, WRITE_ROWS):
            for batch in range(first, min(first + WRITE_ROWS, rows), BATCH_ROWS):
                cursor.executemany(str(compiled), tuples[batch : batch + BATCH_ROWS])
            raw.commit()
        raw.close()
    engine.dispose()


def measure(mode: str, rows: int, scratch: Path) -> float:
    path = scratch / f"{mode}-{time.monotonic_ns()}.sqlite"
    engine = open_engine(f"sqlite:///{path}")
    upgrade(engine)
    engine.dispose()
    start = mp.Barrier(3)
    workers = [mp.Process(target=write, args=(mode, str(path), rows, seed, start)) for seed in (1, 2)]
    for worker in workers:
        worker.start()
    start.wait()
    began = time.perf_counter()
    for worker in workers:
        worker.join()
        if worker.exitcode != 0:
            raise RuntimeError(f"a {mode} process failed (exit {worker.exitcode})")
    wall = time.perf_counter() - began
    with sqlite3.connect(path) as conn:
        stored = conn.execute("SELECT count(*) FROM ai_audit_trail").fetchone()[0]
    if stored != 2 * rows:
        raise RuntimeError(f"{mode}: {stored} rows stored, expected {2 * rows}")
    return wall


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=500_000, help="rows per process (default: 500,000)")
    parser.add_argument("--rounds", type=int, default=2, help="alternations of the two modes (default: 2)")
    args = parser.parse_args(argv)
    walls: dict[str, list[float]] = {"anchor": [], "sink": []}
    with tempfile.TemporaryDirectory(prefix="audit-sqlite-") as scratch:
        for round_ in range(args.rounds):
            for mode in walls:
                walls[mode].append(measure(mode, args.rows, Path(scratch)))
                print(f"round {round_ + 1}: {mode:6} {walls[mode][-1]:6.2f} s", flush=True)
    anchor, sink = statistics.median(walls["anchor"]), statistics.median(walls["sink"])
    print(f"\n2 processes x {args.rows:,} audit rows, median of {args.rounds}:")
    print(f"  anchor (sqlite3 executemany of the keyed INSERT) {anchor:6.2f} s")
    print(f"  AuditSink (staged by ADBC, INSERT ... SELECT)    {sink:6.2f} s")
    print(f"  sink / anchor = {sink / anchor:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
