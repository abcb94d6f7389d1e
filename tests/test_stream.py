"""The stream job on Bytewax, as operators run it: real processes, the real Redis and MariaDB.

- Parity: one generated input through Beam (batch, files) and through Bytewax (Redis) gives the
  same audit rows, decisions, costs, rate-limited sets, violations and window features.
- Crash loop: the job is SIGKILLed at a random point (``AIEP_STREAM_KILLS`` points; ``make
  crash-loop`` kills it four times) and started again each time with the same command; the audit
  trail holds each event once and every output equals a clean run's.
- Late events land in ``late_events/``, and only they (recomputed here from the input).
- SIGTERM drains and exits 0; two workers give the results of one.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, drop_database, make_database, read_dataset, run_cli

pytestmark = pytest.mark.slow

EVENTS = 600
#: Out of order by up to about 12 hours in the generated input: with this lateness nothing is late,
#: so a stream must give exactly what a batch run gives.
NOTHING_LATE = "[stream]\nallowed_lateness_seconds = 259200\nsnapshot_seconds = 1\n"
#: Small batches and 1 s epochs: a stream of 1,000 events spans many epochs and snapshots.
SMALL_BATCHES = "[pipeline]\nbatch_size = 100\n"


@pytest.fixture(scope="module")
def workload(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("stream")
    source = folder / "events.jsonl"
    generated = run_cli("generate", "--events", EVENTS, "--out", source, "--seed", 41, "--images")
    assert generated.returncode == 0, generated.stderr
    configs = {
        "nothing_late": NOTHING_LATE + SMALL_BATCHES,
        "default_lateness": "[stream]\nsnapshot_seconds = 1\nstatus_seconds = 1\n" + SMALL_BATCHES,
    }
    paths = {"folder": folder, "source": source}
    for name, text in configs.items():
        paths[name] = folder / f"{name}.toml"
        paths[name].write_text(text)
    return paths


@pytest.fixture
def stream_name(redis_server: tuple[str, int]) -> Any:
    """A fresh stream key, deleted afterwards."""
    import redis

    name = f"aiep-test-{os.getpid()}-{random.getrandbits(40):x}"
    yield name
    client = redis.Redis(*redis_server)
    client.delete(name)
    client.close()


def publish(source: Path, stream: str) -> None:
    done = run_cli("publish", "--input", source, "--to", f"redis://127.0.0.1:6379/0?stream={stream}")
    assert done.returncode == 0, done.stderr


def stream_args(stream: str, group: str, out: Path, *extra: str | Path, image_root: Path) -> list[str]:
    return [
        "run",
        "--engine",
        "bytewax",
        "--source",
        f"redis://127.0.0.1:6379/0?stream={stream}&group={group}",
        "--out",
        str(out),
        "--image-root",
        str(image_root),
        *(str(e) for e in extra),
    ]


def stream_summary(out: Path) -> dict[str, Any]:
    runs = sorted((out / "_runs").glob("*.stream.json"), key=lambda p: p.stat().st_mtime)
    assert runs, f"no stream summary in {out}"
    data: dict[str, Any] = json.loads(runs[-1].read_text())
    return data


# --- what two runs are compared on -----------------------------------------------------------


def audit_rows(db: Any) -> list[tuple[Any, ...]]:
    """Every audit row but its surrogate id, time of insert and the writing run's outputs id."""
    return db.query(
        "SELECT event_id, user_id, operation_type, input_hash, output_hash, cost, model, ai_tier,"
        " cost_status, rate_limited, image_hash, hash_mode, HEX(payload_fingerprint)"
        " FROM ai_audit_trail ORDER BY event_id"
    )


def decision_rows(db: Any) -> list[tuple[Any, ...]]:
    return db.query(
        "SELECT content_hash, decision, score, categories, scorer, scorer_version, reviewed_by"
        " FROM moderation_decisions ORDER BY content_hash"
    )


def rows(out: Path, dataset: str, order_by: str, drop: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    return [
        {k: v for k, v in row.items() if k not in drop and k != "dt"}
        for row in read_dataset(out, dataset, order_by)
    ]


def assert_close(a: list[dict[str, Any]], b: list[dict[str, Any]], what: str) -> None:
    """Rows equal, floats (and lists of floats) within 1e-6."""
    assert len(a) == len(b), f"{what}: {len(a)} rows != {len(b)}"
    for left, right in zip(a, b, strict=True):
        assert left.keys() == right.keys()
        for key in left:
            x, y = left[key], right[key]
            if isinstance(x, float) or isinstance(y, float):
                assert x == pytest.approx(y, abs=1e-6), f"{what}.{key}: {x} != {y} in {left}"
            elif isinstance(x, list) and x and isinstance(x[0], float):
                assert x == pytest.approx(y, abs=1e-6), f"{what}.{key} differs in {left.get('user_id')}"
            else:
                assert x == y, f"{what}.{key}: {x!r} != {y!r}"


def checksum(out: Path, dataset: str, order_by: str, drop: tuple[str, ...] = ()) -> str:
    """A checksum of a dataset's rows, sorted: equal for equal content however it was filed."""
    found = rows(out, dataset, order_by, drop)
    return hashlib.sha256(json.dumps(found, default=str, sort_keys=True).encode()).hexdigest()


# --- parity --------------------------------------------------------------------------------------


def test_bytewax_from_redis_gives_what_beam_gives(
    workload: dict[str, Path], mysql_server: tuple[str, int], stream_name: str, tmp_path: Path
) -> None:
    beam_db, stream_db = make_database(*mysql_server), make_database(*mysql_server)
    cache = tmp_path / "embeddings.sqlite"  # shared: the second run's vectors are the first's
    try:
        beam_out, stream_out = tmp_path / "beam", tmp_path / "bytewax"
        batch = run_cli(
            "run", "--input", workload["source"], "--out", beam_out, "--audit-db", beam_db.root_url,
            "--config", workload["nothing_late"], "--cache", cache, "--no-progress",
            embeddings=True, moderation=True, out_dir=beam_out,
        )  # fmt: skip
        assert batch.returncode == 0, batch.stderr
        publish(workload["source"], stream_name)
        args = stream_args(
            stream_name, "parity", stream_out, "--until-end", "--audit-db", stream_db.root_url,
            "--config", workload["nothing_late"], "--cache", cache, image_root=workload["folder"],
        )  # fmt: skip
        streamed = run_cli(*args, embeddings=True, moderation=True)
        assert streamed.returncode == 0, streamed.stderr

        summary, beam_summary = stream_summary(stream_out), batch.summary()
        for name in ("events_read", "events_processed", "events_dead_lettered", "duplicates_collapsed"):
            assert summary[name] == beam_summary[name], name
        assert summary["late_events"] == 0 and summary["events_in_windows_change"] == 0
        assert summary["entries_acknowledged"] == EVENTS  # every entry, once its results committed
        assert summary["events_processed"] > 0.9 * EVENTS and summary["rate_limited"] > 0

        assert audit_rows(stream_db) == audit_rows(beam_db)
        assert decision_rows(stream_db) == decision_rows(beam_db)
        no_position = ("source", "line_no")
        assert rows(stream_out, "events", "event_id", no_position) == rows(
            beam_out, "events", "event_id", no_position
        )
        assert rows(stream_out, "rate_limit_violations", "user_id, window_start") == rows(
            beam_out, "rate_limit_violations", "user_id, window_start"
        )
        assert_close(
            rows(stream_out, "user_features", "user_id, window_start"),
            rows(beam_out, "user_features", "user_id, window_start"),
            "user_features",
        )
        order = "content_hash, field, event_id"
        assert_close(rows(stream_out, "embeddings", order), rows(beam_out, "embeddings", order), "embeddings")
        letters = "reason, event_id, raw"
        keep = ("source", "line_no", "position", "detail")  # a detail names where the first copy was
        assert rows(stream_out, "dead_letter", letters, keep) == rows(beam_out, "dead_letter", letters, keep)
        assert not list(stream_out.glob("late_events/*/*.parquet"))
    finally:
        drop_database(beam_db)
        drop_database(stream_db)


# --- crash loop ------------------------------------------------------------------------------------

#: Functions the job runs many times per execution; a kill lands right before or after one call.
KILL_TARGETS = [
    ("connectors.audit_sink:AuditSink.write", (1, 25)),
    ("connectors.parquet_sink:write_partitioned", (1, 60)),
    ("pipelines.stream:StreamGate.__call__", (1, 15)),
    ("pipelines.stream:ShardWindows.snapshot", (1, 40)),
]


def outputs_of(out: Path, db: Any) -> dict[str, Any]:
    return {
        "audit": audit_rows(db),
        "events": checksum(out, "events", "event_id"),
        "late_events": checksum(out, "late_events", "event_id, aggregate"),
        "violations": checksum(out, "rate_limit_violations", "user_id, window_start"),
        "user_features": checksum(out, "user_features", "user_id, window_start"),
        "embeddings": checksum(out, "embeddings", "content_hash, field, event_id"),
        "dead_letter": checksum(out, "dead_letter", "position, reason"),
    }


def test_killed_at_random_the_stream_loses_and_doubles_nothing(
    workload: dict[str, Path], mysql_server: tuple[str, int], stream_name: str, tmp_path: Path
) -> None:
    seed = int(os.environ.get("AIEP_CRASH_SEED", time.time_ns() % 10_000))
    kills = int(os.environ.get("AIEP_STREAM_KILLS", "1"))  # make crash-loop: 4
    rng = random.Random(seed)
    clean_db, killed_db = make_database(*mysql_server), make_database(*mysql_server)
    cache = tmp_path / "embeddings.sqlite"
    try:
        # The first half of the workload: the model stage is the cost of every execution here.
        half = tmp_path / "half.jsonl"
        half.write_bytes(b"".join(workload["source"].read_bytes().splitlines(keepends=True)[: EVENTS // 2]))
        publish(half, stream_name)
        common = (
            "--until-end",
            "--config",
            workload["default_lateness"],
            "--cache",
            cache,
            "--no-moderation",
        )
        clean = tmp_path / "clean"
        done = run_cli(
            *stream_args(stream_name, "clean", clean, *common, "--audit-db", clean_db.root_url,
                         image_root=workload["folder"]),
            embeddings=True,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert stream_summary(clean)["late_events"] > 0  # windows closed while the stream ran

        killed = tmp_path / "killed"
        # Killed executions read the stream without --until-end: one whose drawn call never comes
        # (its input already read) is killed by the clock instead, at a drawn moment, idle or not.
        args = stream_args(
            stream_name, "killed", killed, *common[1:], "--audit-db", killed_db.root_url,
            image_root=workload["folder"],
        )  # fmt: skip
        points = []
        for _ in range(kills):
            target, (low, high) = rng.choice(KILL_TARGETS)
            point = (target, rng.choice(["before", "after"]), rng.randint(low, high))
            clock = rng.uniform(5, 12)
            points.append((*point, f"or at {clock:.0f} s"))
            proc = subprocess.Popen(
                [sys.executable, str(ROOT / "tests" / "kill_at.py"), *map(str, point), "--", *args],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT,
            )  # fmt: skip
            try:
                _, stderr = proc.communicate(timeout=clock)
            except subprocess.TimeoutExpired:
                proc.kill()
                _, stderr = proc.communicate()
            assert proc.returncode == -signal.SIGKILL, (
                f"seed {seed}: {point} ended the job otherwise ({proc.returncode}): {stderr.decode()[-2000:]}"
            )
        args = [*args, "--until-end"]
        finished = run_cli(*args, embeddings=True)
        assert finished.returncode == 0, f"seed {seed}, kills {points}: {finished.stderr}"

        ids = killed_db.query("SELECT COUNT(*), COUNT(DISTINCT event_id) FROM ai_audit_trail")[0]
        assert ids[0] == ids[1], f"seed {seed}, kills {points}: an event is twice in the audit trail"
        assert outputs_of(killed, killed_db) == outputs_of(clean, clean_db), f"seed {seed}, kills {points}"
        assert not list(killed.glob("*/dt=*/.part-*.tmp")), "a temporary file was left behind"
    finally:
        drop_database(clean_db)
        drop_database(killed_db)


# --- late events -----------------------------------------------------------------------------------


def _utc_micros(text: str) -> int:
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    delta = moment.astimezone(UTC) - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def test_late_events_land_in_late_events_and_only_they(workload: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "late"
    args = ["run", "--engine", "bytewax", "--input", workload["source"], "--out", out]
    done = run_cli(*args, "--config", workload["default_lateness"])
    assert done.returncode == 0, done.stderr

    processed = {row["event_id"]: row for row in rows(out, "events", "event_id")}
    dead = {row["line_no"]: row["reason"] for row in rows(out, "dead_letter", "line_no")}
    conflicts = {line_no for line_no, reason in dead.items() if reason == "conflicting_duplicate"}
    # Recomputed from the input: every validated record in file order moves the watermark, and a
    # kept event whose rate-limit window ended at or before it (5 minutes behind the latest time
    # seen before it) is late.
    latest = None
    expected = set()
    seen: set[str] = set()
    for line_no, line in enumerate(workload["source"].read_bytes().splitlines(), start=1):
        try:
            event = json.loads(line)
            event_id = event["event_id"]
        except (ValueError, TypeError, KeyError):
            continue
        if line_no in dead and line_no not in conflicts:
            continue  # a dead letter, never a valid event
        micros = _utc_micros(event["event_time"])
        window_end = (micros // 60_000_000) * 60_000_000 + 60_000_000
        first_copy = event_id not in seen and line_no not in conflicts
        if first_copy and latest is not None and window_end <= latest - 300_000_000:
            expected.add(event_id)
        seen.add(event_id)
        latest = micros if latest is None else max(latest, micros)

    late = rows(out, "late_events", "event_id")
    assert expected and {row["event_id"] for row in late} == expected
    assert all(row["aggregate"] == "rate_limit" for row in late)
    assert stream_summary(out)["late_events"] == len(expected)
    for row in late:
        event = processed[row["event_id"]]  # still audited, priced and written
        assert event["rate_limited"] is False
        assert row["watermark"] >= row["window_start"]
    # Late events count in no violation window: each one's request count is its on-time events.
    on_time: dict[tuple[int, Any], int] = {}
    for event_id, event in processed.items():
        if event_id not in expected:
            key = (event["user_id"], event["window_start"])
            on_time[key] = on_time.get(key, 0) + 1
    for violation in rows(out, "rate_limit_violations", "user_id, window_start"):
        assert violation["request_count"] == on_time[(violation["user_id"], violation["window_start"])]


# --- workers and SIGTERM -------------------------------------------------------------------------------


def test_two_workers_give_what_one_gives(workload: dict[str, Path], tmp_path: Path) -> None:
    results = []
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        args = [
            "run",
            "--engine",
            "bytewax",
            "--input",
            workload["source"],
            "--out",
            out,
            "--workers",
            workers,
        ]
        done = run_cli(*args, "--config", workload["default_lateness"])
        assert done.returncode == 0, done.stderr
        summary = stream_summary(out)
        assert summary["workers"] == workers
        audit = run_sqlite(out / "audit.sqlite")
        results.append((audit, *(checksum(out, d, o) for d, o in CHECKED)))
    assert results[0] == results[1]


CHECKED = [
    ("events", "event_id"),
    ("late_events", "event_id, aggregate"),
    ("rate_limit_violations", "user_id, window_start"),
    ("dead_letter", "position, reason"),
]


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def scrape(port: int) -> dict[str, float]:
    """The metrics ``/metrics`` serves, by name and labels; empty while nothing answers."""
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as page:
            text = page.read().decode()
    except OSError:
        return {}
    found = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            found[name] = float(value)
    return found


def run_sqlite(path: Path) -> list[tuple[Any, ...]]:
    import sqlite3

    with sqlite3.connect(path) as con:
        return con.execute(
            "SELECT event_id, cost, rate_limited, payload_fingerprint FROM ai_audit_trail ORDER BY event_id"
        ).fetchall()


def test_sigterm_drains_commits_and_exits_0_and_a_restart_goes_on(
    workload: dict[str, Path], stream_name: str, tmp_path: Path
) -> None:
    publish(workload["source"], stream_name)
    clean, drained = tmp_path / "clean", tmp_path / "drained"
    config = ("--config", workload["default_lateness"])
    done = run_cli(
        *stream_args(stream_name, "clean", clean, "--until-end", *config, image_root=workload["folder"])
    )
    assert done.returncode == 0, done.stderr

    args = stream_args(stream_name, "drained", drained, *config, image_root=workload["folder"])
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "runner.py"), *args, "--no-embeddings", "--no-moderation",
         "--metrics-port", str(port)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    # Every entry read and the counts still for a second: the job is idle, waiting for entries.
    deadline, last = time.monotonic() + 180, None
    while time.monotonic() < deadline:
        time.sleep(1)
        metrics = scrape(port)
        if metrics and metrics.get("aiep_events_in_total") == EVENTS and metrics == last:
            break
        last = metrics
    else:
        proc.kill()
        raise AssertionError(f"the job did not read the stream: {last}")
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr.decode()
    first = stream_summary(drained)
    assert first["ended_by"] == "sigterm"
    audit = drained / "audit.sqlite"
    written = len(run_sqlite(audit))
    assert 0 < written == first["events_processed"]  # what was processed was committed
    assert first["events_in_windows_change"] > 0  # open windows wait in the recovery store
    # The metrics said what the summary says.
    assert metrics["aiep_events_out_total"] == first["events_processed"]
    assert metrics["aiep_late_events_total"] == first["late_events"]
    assert metrics["aiep_entries_acknowledged_total"] == first["entries_acknowledged"]
    for reason, count in first["dead_letters_by_reason"].items():
        assert metrics[f'aiep_events_dead_lettered_total{{reason="{reason}"}}'] == count
    assert metrics['aiep_stage_seconds_count{stage="gate"}'] > 0
    assert stderr.decode().count("stream ") >= 1  # the periodic status line

    resumed = run_cli(*args, "--until-end")
    assert resumed.returncode == 0, resumed.stderr
    assert stream_summary(drained)["ended_by"] == "end of input"
    assert run_sqlite(audit) == run_sqlite(clean / "audit.sqlite")
    for dataset, order in CHECKED:
        assert checksum(drained, dataset, order) == checksum(clean, dataset, order), dataset


# --- follow --------------------------------------------------------------------------------------------


def wait_for_reads(port: int, proc: subprocess.Popen[bytes], expected: int) -> dict[str, float]:
    """Scrape until the job has read ``expected`` records and its counts stand still."""
    deadline, last = time.monotonic() + 180, None
    while time.monotonic() < deadline:
        time.sleep(0.5)
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        metrics = scrape(port)
        if metrics and metrics.get("aiep_events_in_total") == expected and metrics == last:
            return metrics
        last = metrics
    proc.kill()
    raise AssertionError(f"expected {expected} records read; metrics: {last}")


def test_follow_reads_each_appended_line_once_across_a_restart(
    workload: dict[str, Path], tmp_path: Path
) -> None:
    lines = workload["source"].read_bytes().splitlines(keepends=True)
    records = lambda part: sum(1 for line in part if line.strip())  # noqa: E731
    folder, out = tmp_path / "in", tmp_path / "followed"
    folder.mkdir()
    first, second = folder / "a.jsonl", folder / "b.jsonl"
    a, b, c = EVENTS * 2 // 5, EVENTS * 7 // 10, EVENTS * 17 // 20  # where the input is cut
    first.write_bytes(b"".join(lines[:a]))

    def start() -> tuple[subprocess.Popen[bytes], int]:
        port = free_port()
        argv = ["run", "--engine", "bytewax", "--input", str(folder), "--follow", "--out", str(out),
                "--config", str(workload["default_lateness"]), "--no-embeddings", "--no-moderation",
                "--metrics-port", str(port)]  # fmt: skip
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "runner.py"), *argv],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        return proc, port

    def stop(proc: subprocess.Popen[bytes]) -> dict[str, Any]:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, stderr.decode()
        return stream_summary(out)

    proc, port = start()
    wait_for_reads(port, proc, records(lines[:a]))
    with first.open("ab") as grow:  # lines appended to a file, and a new file with half a line
        grow.write(b"".join(lines[a:b]))
    second.write_bytes(b"".join(lines[b:c]) + lines[c][:50])
    wait_for_reads(port, proc, records(lines[:c]))  # the half line waits for its end
    before = stop(proc)
    assert before["ended_by"] == "sigterm" and before["events_read"] == records(lines[:c])

    with second.open("ab") as grow:  # while stopped: the rest of the half line, and more
        grow.write(lines[c][50:] + b"".join(lines[c + 1 :]))
    proc, port = start()
    wait_for_reads(port, proc, records(lines[c:]))
    after = stop(proc)
    assert after["events_read"] == records(lines[c:])  # nothing read twice, nothing missed

    audit = run_sqlite(out / "audit.sqlite")
    assert len(audit) == len({row[0] for row in audit})
    clean = tmp_path / "clean"
    done = run_cli("run", "--engine", "bytewax", "--input", first, second, "--out", clean,
                   "--config", workload["default_lateness"])  # fmt: skip
    assert done.returncode == 0, done.stderr
    whole = {row[0]: row for row in run_sqlite(clean / "audit.sqlite")}
    assert all(whole[row[0]] == row for row in audit)  # each as the bounded run wrote it
    waiting = before["events_in_windows_change"] + after["events_in_windows_change"]
    assert len(audit) + waiting == len(whole)  # the rest wait in open windows, in the recovery store


# --- flags ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["--source", "redis://127.0.0.1:6379/0?stream=s&group=g"], 2, "--source is for --engine bytewax"),
        (["--input", "x.jsonl", "--follow"], 2, "are for --engine bytewax"),
        (["--engine", "bytewax", "--input", "x.jsonl", "--workers", "0"], 2, "--workers must be 1 to 256"),
        (["--engine", "bytewax", "--input", "x.jsonl", "--until-end"], 2, "--until-end is for --source"),
        (
            ["--engine", "bytewax", "--input", "x.jsonl", "--metrics-port", "70000"],
            2,
            "--metrics-port must be",
        ),
        (
            ["--engine", "bytewax", "--source", "redis://127.0.0.1:6379/0?stream=s", "--follow"],
            2,
            "--follow is for",
        ),
        (
            ["--engine", "bytewax", "--source", "redis://:hunter2@127.0.0.1:6379/0?stream=s"],
            1,
            "needs &group=NAME",
        ),
        (
            ["--engine", "bytewax", "--source", "redis://:hunter2@127.0.0.1:6379/x?stream=s&group=g"],
            1,
            "malformed",
        ),
    ],
)
def test_bad_stream_flags_exit_with_one_line(
    argv: list[str], code: int, message: str, tmp_path: Path
) -> None:
    done = run_cli("run", *argv, "--out", tmp_path / "out", cwd=tmp_path)
    assert done.returncode == code, done.stderr
    assert message in done.stderr and "hunter2" not in done.stderr + done.stdout
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_stdin_is_read_as_it_arrives_and_its_end_ends_the_job(
    workload: dict[str, Path], tmp_path: Path
) -> None:
    lines = workload["source"].read_bytes().splitlines(keepends=True)
    records = lambda part: sum(1 for line in part if line.strip())  # noqa: E731
    out, port = tmp_path / "stdin", free_port()
    argv = ["run", "--engine", "bytewax", "--input", "-", "--out", str(out), "--no-embeddings",
            "--no-moderation", "--config", str(workload["default_lateness"]),
            "--metrics-port", str(port)]  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "runner.py"), *argv],
        cwd=workload["folder"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdin is not None
    proc.stdin.write(b"".join(lines[:500]))
    proc.stdin.flush()
    wait_for_reads(port, proc, records(lines[:500]))  # read while stdin is still open
    _, stderr = proc.communicate(b"".join(lines[500:]), timeout=300)  # the rest, then stdin closes
    assert proc.returncode == 0, stderr.decode()
    summary = stream_summary(out)
    assert summary["ended_by"] == "end of input" and summary["recovery_dir"] is None
    assert summary["events_read"] == records(lines) and summary["events_in_windows_change"] == 0

    files = tmp_path / "files"
    done = run_cli("run", "--engine", "bytewax", "--input", workload["source"], "--out", files,
                   "--config", workload["default_lateness"])  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert run_sqlite(out / "audit.sqlite") == run_sqlite(files / "audit.sqlite")
    for dataset, order in CHECKED[:3]:
        assert checksum(out, dataset, order, ("source",)) == checksum(files, dataset, order, ("source",)), (
            dataset
        )


def _event(event_id: str, when: str, user: int = 7) -> bytes:
    return json.dumps(
        {
            "event_id": event_id,
            "event_time": when,
            "user_id": user,
            "ai_tier": "free",
            "operation_type": "chat_completion",
            "model": "claude-3-5-haiku",
            "input": {"text": "hello"},
            "output": {"text": "hi there"},
            "usage": {"input_tokens": 3, "output_tokens": 4},
        }
    ).encode()


def test_a_copy_after_the_gate_forgot_the_first_is_a_duplicate_not_a_late_event(tmp_path: Path) -> None:
    # The first copy's window closes and the gate forgets it (an hour of event time later); the
    # copy then comes, late: the audit trail and this output's files say it is a duplicate.
    lines = [_event("first", "2025-07-07T00:00:10Z")]
    lines += [_event(f"later-{n}", "2025-07-07T01:00:00Z", user=8 + n) for n in range(3)]
    lines += [_event("first", "2025-07-07T00:00:10Z"), _event("last", "2025-07-07T02:00:00Z")]
    source = tmp_path / "events.jsonl"
    source.write_bytes(b"\n".join(lines) + b"\n")
    config = tmp_path / "one-by-one.toml"
    config.write_text("[pipeline]\nbatch_size = 1\n")
    out = tmp_path / "out"
    done = run_cli("run", "--engine", "bytewax", "--input", source, "--out", out, "--config", config)
    assert done.returncode == 0, done.stderr
    summary = stream_summary(out)
    assert (summary["events_read"], summary["events_processed"], summary["duplicates_collapsed"]) == (6, 5, 1)
    assert summary["late_events"] == 0 and not rows(out, "late_events", "event_id")
    assert [row["event_id"] for row in rows(out, "events", "event_id")].count("first") == 1
