"""End-to-end latency of the stream job: from XADD to the audit row's commit in MariaDB, at a
fixed rate (prints, never asserts).

    python benchmarks/stream_latency.py [--rate 200] [--seconds 60] [--window 1] [--lateness 1]

A publisher XADDs generated events at ``--rate`` per second, each stamped with the current time
as its event time and a fresh event_id, while a poller reads new audit rows every 20 ms and notes
when each appeared. Latency is appearance minus XADD, per event: p50, p99 and max.

An audit row is written when its rate-limit window closes, that is when the watermark (the latest
event time seen, less the allowed lateness) passes the window's end. So the latency's floor is the
rest of the event's window plus the allowed lateness: with the defaults (60 s windows, 5 minutes of
lateness) about 5.5 minutes, by design. The benchmark runs with short windows and lateness so that
what remains, the pipeline's own work, is visible; it prints the floor beside the figures.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pymysql
import redis

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=int, default=200, help="events per second (default 200)")
    parser.add_argument("--seconds", type=int, default=60, help="how long to publish (default 60)")
    parser.add_argument("--window", type=int, default=1, help="rate-limit window, seconds (default 1)")
    parser.add_argument("--lateness", type=int, default=1, help="allowed lateness, seconds (default 1)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="aiep-latency-") as folder:
        work = Path(folder)
        source = work / "templates.jsonl"
        subprocess.run(
            [sys.executable, str(REPO / "runner.py"), "generate", "--events", "2000", "--out", str(source),
             "--bad-rate", "0", "--dup-rate", "0"],
            check=True, capture_output=True,
        )  # fmt: skip
        templates = [json.loads(line) for line in source.read_text().splitlines() if line.strip()]
        config = work / "latency.toml"
        config.write_text(
            f"[rate_limit]\nwindow_seconds = {args.window}\n"
            f"[stream]\nallowed_lateness_seconds = {args.lateness}\nsnapshot_seconds = 1\n"
        )
        database = f"aiep_latency_{uuid.uuid4().hex[:8]}"
        admin = pymysql.connect(host="127.0.0.1", user="root", password="", autocommit=True)
        admin.cursor().execute(f"CREATE DATABASE `{database}`")
        stream = f"aiep-latency-{uuid.uuid4().hex[:8]}"
        client = redis.Redis()
        job = subprocess.Popen(
            [sys.executable, str(REPO / "runner.py"), "run", "--engine", "bytewax",
             "--source", f"redis://127.0.0.1:6379/0?stream={stream}&group=latency",
             "--out", str(work / "out"),
             "--audit-db", f"mysql+pymysql://root@127.0.0.1:3306/{database}", "--config", str(config),
             "--no-embeddings", "--no-moderation"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )  # fmt: skip
        sent: dict[str, float] = {}
        seen: dict[str, float] = {}
        done = threading.Event()

        def poll() -> None:
            con = pymysql.connect(
                host="127.0.0.1", user="root", password="", database=database, autocommit=True
            )
            last = 0
            while not done.is_set():
                try:
                    with con.cursor() as cur:
                        cur.execute(
                            "SELECT id, event_id FROM ai_audit_trail WHERE id > %s ORDER BY id", (last,)
                        )
                        rows = cur.fetchall()
                except (pymysql.err.ProgrammingError, pymysql.err.OperationalError):  # not migrated yet
                    rows = ()
                now = time.time()
                for row_id, event_id in rows:
                    seen.setdefault(event_id, now)
                    last = max(last, row_id)
                time.sleep(0.02)
            con.close()

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        time.sleep(8)  # the job's start-up (imports, the audit store's migrations)
        period = 1 / args.rate
        began = time.time()
        for n, template in zip(range(args.rate * args.seconds), itertools.cycle(templates), strict=False):
            due = began + n * period
            pause = due - time.time()
            if pause > 0:
                time.sleep(pause)
            event = dict(template)
            event["event_id"] = str(uuid.uuid4())
            event["event_time"] = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
            client.xadd(stream, {b"event": json.dumps(event).encode()})
            sent[event["event_id"]] = time.time()
        # The last windows close once the watermark passes them: keep time moving with a few events.
        for _ in range(args.window + args.lateness + 3):
            time.sleep(1)
            tick = dict(templates[0], event_id=str(uuid.uuid4()))
            tick["event_time"] = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
            client.xadd(stream, {b"event": json.dumps(tick).encode()})
        deadline = time.time() + 60
        while time.time() < deadline and not all(event_id in seen for event_id in sent):
            time.sleep(0.2)
        done.set()
        job.send_signal(signal.SIGTERM)
        _, job_errors = job.communicate(timeout=120)
        summary = next((work / "out" / "_runs").glob("*.stream.json"), None)
        if summary is not None:
            counts = json.loads(summary.read_text())
            print("job:", {k: counts[k] for k in ("events_read", "events_processed", "events_dead_lettered")},
                  counts["dead_letters_by_reason"])  # fmt: skip
        else:
            print(job_errors.decode()[-3000:])
        client.delete(stream)
        admin.cursor().execute(f"DROP DATABASE IF EXISTS `{database}`")
        latencies = np.array([seen[e] - sent[e] for e in sent if e in seen])
        missing = sum(1 for e in sent if e not in seen)
    p50, p99 = np.percentile(latencies, [50, 99])
    floor = args.window / 2 + args.lateness
    print(
        f"rate {args.rate} events/s for {args.seconds} s; window {args.window} s,"
        f" allowed lateness {args.lateness} s"
    )
    print(f"events sent {len(sent)}, committed {len(latencies)}, not seen {missing}")
    print(f"latency XADD -> MariaDB commit: p50 {p50:.3f} s, p99 {p99:.3f} s, max {latencies.max():.3f} s")
    print(
        f"floor by design (half a window on average + the lateness): {floor:.1f} s;"
        f" p50 above it: {p50 - floor:.3f} s"
    )


if __name__ == "__main__":
    main()
