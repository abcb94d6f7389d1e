"""The stream job's sustained throughput, from Redis Streams into MariaDB and Parquet, beside the
same events through Beam's file path in the same run (prints, never asserts).

    python benchmarks/stream_throughput.py [--events N] [--model-events N]

For each of "embeddings and moderation off" (N events) and "embeddings on, moderation off" (a
smaller N: the CPU model is the cost), it:

1. generates the events (``runner.py generate``) and publishes them to a fresh stream (not timed);
2. runs ``runner.py run --engine bytewax --source ... --until-end`` into a fresh MariaDB database
   and output folder, and reads its summary's ``seconds`` (from the flow's start to its end:
   model loading included, process start-up excluded);
3. runs ``runner.py run`` (Beam, the file) into another fresh database and folder, the same way.

The figure is events read per second of each, and the stream's ratio to Beam's. Both write every
sink; the stream also snapshots its state every second to its recovery store, and closes windows
as its watermark passes (allowed lateness 5 minutes, as by default).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pymysql
import redis

REPO = Path(__file__).resolve().parent.parent


def runner(*args: str | Path, cwd: Path = REPO) -> str:
    done = subprocess.run(
        [sys.executable, str(REPO / "runner.py"), *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    if done.returncode != 0:
        raise SystemExit(f"runner.py {' '.join(map(str, args[:3]))} failed:\n{done.stderr[-3000:]}")
    return done.stdout


def fresh_database() -> str:
    name = f"aiep_bench_{uuid.uuid4().hex[:8]}"
    con = pymysql.connect(host="127.0.0.1", user="root", password="", autocommit=True)
    with con.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    con.close()
    return name


def drop_database(name: str) -> None:
    con = pymysql.connect(host="127.0.0.1", user="root", password="", autocommit=True)
    with con.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
    con.close()


def latest_summary(out: Path, pattern: str) -> dict[str, object]:
    runs = sorted((out / "_runs").glob(pattern), key=lambda p: p.stat().st_mtime)
    return json.loads(runs[-1].read_text())


def measure(events: int, flags: list[str], label: str, work: Path) -> dict[str, object]:
    source = work / f"{label}.jsonl"
    runner("generate", "--events", events, "--out", source, "--seed", 11, "--images")
    stream = f"aiep-bench-{uuid.uuid4().hex[:8]}"
    client = redis.Redis()
    config = work / "bench.toml"
    config.write_text("[stream]\nsnapshot_seconds = 1\n")
    results: dict[str, object] = {"label": label, "events": events}
    try:
        runner("publish", "--input", source, "--to", f"redis://127.0.0.1:6379/0?stream={stream}")
        for engine in ("bytewax", "beam"):
            db = fresh_database()
            out = work / f"{label}-{engine}"
            try:
                audit = f"mysql+pymysql://root@127.0.0.1:3306/{db}"
                if engine == "bytewax":
                    url = f"redis://127.0.0.1:6379/0?stream={stream}&group=bench"
                    runner("run", "--engine", "bytewax", "--source", url, "--until-end", "--out", out,
                           "--audit-db", audit, "--config", config, "--image-root", work, *flags)  # fmt: skip
                    summary = latest_summary(out, "*.stream.json")
                else:
                    runner("run", "--input", source, "--out", out, "--audit-db", audit, "--config", config,
                           "--no-progress", *flags)  # fmt: skip
                    summary = latest_summary(out, "*Z-*[0-9a-f].json")
                seconds = float(summary["seconds"])  # type: ignore[arg-type]
                results[engine] = {"seconds": seconds, "events_per_s": round(events / seconds, 1)}
            finally:
                drop_database(db)
    finally:
        client.delete(stream)
        client.close()
    stream_rate = results["bytewax"]["events_per_s"]  # type: ignore[index]
    beam_rate = results["beam"]["events_per_s"]  # type: ignore[index]
    results["ratio"] = round(stream_rate / beam_rate, 3)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000, help="events with models off (default 20000)")
    parser.add_argument(
        "--model-events", type=int, default=2_000, help="events with embeddings on (default 2000)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="aiep-stream-bench-") as folder:
        work = Path(folder)
        rows = [
            measure(args.events, ["--no-embeddings", "--no-moderation"], "models-off", work),
            # Each run's embedding cache starts empty (its own <out>/_cache): both embed every text.
            measure(args.model_events, ["--no-moderation"], "embeddings-on", work),
        ]
    print(
        f"{'stream job (Redis -> MariaDB + Parquet)':42} {'events':>7} {'bytewax ev/s':>13}"
        f" {'beam ev/s':>10} {'ratio':>6}"
    )
    for row in rows:
        print(
            f"{row['label']:42} {row['events']:>7} {row['bytewax']['events_per_s']:>13} "  # type: ignore[index]
            f"{row['beam']['events_per_s']:>10} {row['ratio']:>6}"  # type: ignore[index]
        )
    print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
