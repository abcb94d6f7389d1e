"""Two processes writing the embedded (SQLite) audit store at once: the audit writer against its
anchor, the same keyed ``INSERT`` bound row by row, a script.

    python benchmarks/audit_sqlite_writers.py [--rows 500000] [--rounds 2]

Each of two processes writes ``--rows`` audit rows (random UUID event ids, sorted as the sink
sorts them) in writes of 50,000 rows, batches of 10,000, one transaction per write, into one
store made by the migrations:

- **writer**: ``connectors.database.BatchWriter``, as the audit sink uses it (rows bound into a
  TEMP table, then ``INSERT ... SELECT`` a batch at a time);
- **anchor**: ``sqlite3`` ``executemany`` of the same compiled statement on a connection with
  the same pragmas, one call per batch.

The rows are built as Arrow columns before the clock starts; the writer's conversion to Python
values is timed, the anchor's is not. The processes start together (a barrier) and the wall
time is until both have committed. The modes alternate ``--rounds`` times on fresh stores.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import random
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pyarrow as pa
import sqlalchemy as sa
from sqlalchemy.dialects import sqlite

from connectors.database import BatchWriter, open_engine, upgrade

WRITE_ROWS = 50_000
BATCH_ROWS = 10_000


def columns(rows: int, seed: int) -> dict[str, pa.Array]:
    """Audit rows as the sink hands them to the writer, sorted by event_id."""
    rng = random.Random(seed)
    ids = sorted(str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(rows))
    hexes = [f"{rng.getrandbits(256):064x}" for _ in range(2 * rows)]
    return {
        "event_id": pa.array(ids),
        "user_id": pa.array([rng.randrange(1, 10_000) for _ in range(rows)], pa.int64()),
        "operation_type": pa.array([rng.choice(["chat", "completion", "image"]) for _ in range(rows)]),
        "input_hash": pa.array(hexes[:rows]),
        "output_hash": pa.array(hexes[rows:]),
        "cost": pa.array([f"0.000{rng.randrange(1000):03d}" for _ in range(rows)]),
        "created_at": pa.array([f"2026-11-01 12:{i // 60 % 60:02d}:{i % 60:02d}" for i in range(rows)]),
        "model": pa.array(["gpt-4o"] * rows),
        "ai_tier": pa.array(["free"] * rows),
        "cost_status": pa.array(["priced"] * rows),
        "rate_limited": pa.array([0] * rows, pa.int8()),
        "hash_mode": pa.array(["hmac"] * rows),
        "payload_fingerprint": pa.array([rng.randbytes(16) for _ in range(rows)], pa.binary()),
        "inputs_fingerprint": pa.array(["f" * 64] * rows),
    }


def keyed_insert(engine: sa.Engine) -> sqlite.Insert:
    table = sa.Table("ai_audit_trail", sa.MetaData(), autoload_with=engine)
    return sqlite.insert(table).on_conflict_do_nothing(index_elements=["event_id"])


def write(mode: str, path: str, rows: int, seed: int, start: Any) -> None:
    data = columns(rows, seed)
    names = list(data)
    engine = open_engine(f"sqlite:///{path}")
    statement = keyed_insert(engine)
    if mode == "writer":
        writer = BatchWriter(engine, statement, names, BATCH_ROWS, retry_attempts=1)
        start.wait()
        for first in range(0, rows, WRITE_ROWS):
            part = {name: array.slice(first, WRITE_ROWS) for name, array in data.items()}
            writer.write(part, min(WRITE_ROWS, rows - first))
    else:
        compiled = statement.compile(dialect=engine.dialect, column_keys=names)
        values = [data[name].to_pylist() for name in compiled.positiontup or []]
        tuples = list(zip(*values, strict=True))
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
    walls: dict[str, list[float]] = {"anchor": [], "writer": []}
    with tempfile.TemporaryDirectory(prefix="audit-sqlite-") as scratch:
        for round_ in range(args.rounds):
            for mode in walls:
                walls[mode].append(measure(mode, args.rows, Path(scratch)))
                print(f"round {round_ + 1}: {mode:6} {walls[mode][-1]:6.2f} s", flush=True)
    anchor, writer = statistics.median(walls["anchor"]), statistics.median(walls["writer"])
    print(f"\n2 processes x {args.rows:,} audit rows, median of {args.rounds}:")
    print(f"  anchor (sqlite3 executemany of the keyed INSERT) {anchor:6.2f} s")
    print(f"  BatchWriter (TEMP table, INSERT ... SELECT)      {writer:6.2f} s")
    print(f"  writer / anchor = {writer / anchor:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
