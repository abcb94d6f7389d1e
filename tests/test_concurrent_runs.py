"""Runs at the same time against one audit store: migrations are serialised (every process
succeeds on a fresh store), and a conflicting copy of an event is caught even when two runs write
it at the same moment (at write time, not only against rows stored before the run began)."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest

from connectors.audit_sink import AuditSink
from connectors.database import head_version, open_engine, upgrade
from tests.conftest import ROOT, MySQLDatabase, read_dataset
from transforms.dedup import STORED
from transforms.event_batch import FINGERPRINT

PROCESSES = 4


def start(*args: str | Path) -> subprocess.Popen[bytes]:
    """``runner.py args`` in the background; a ``run`` without the embedding stage (not tested here)."""
    extra = ["--no-embeddings", "--no-moderation"] if args[0] == "run" else []
    return subprocess.Popen(
        [sys.executable, str(ROOT / "runner.py"), *map(str, args), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
    )


def finish(procs: list[subprocess.Popen[bytes]]) -> list[tuple[int, str]]:
    results = []
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        results.append((proc.returncode, err.decode()))
    return results


def store_urls(tmp_path: Path, mysql_db: MySQLDatabase) -> dict[str, str]:
    return {"sqlite": f"sqlite:///{tmp_path / 'fresh.sqlite'}", "mariadb": mysql_db.root_url}


@pytest.mark.parametrize("store", ["sqlite", "mariadb"])
def test_processes_migrating_one_fresh_store_at_once_all_succeed(
    tmp_path: Path, mysql_db: MySQLDatabase, store: str
) -> None:
    url = store_urls(tmp_path, mysql_db)[store]
    for _ in range(3):  # a race can be lucky once; three rounds on fresh stores
        procs = [start("db", "upgrade", "--audit-db", url) for _ in range(PROCESSES)]
        for code, err in finish(procs):
            assert code == 0, err
        engine = open_engine(url)
        assert upgrade(engine).after == head_version()
        engine.dispose()
        if store == "sqlite":
            (tmp_path / "fresh.sqlite").unlink()
        else:
            mysql_db.query(
                "DROP TABLE IF EXISTS ai_audit_trail, moderation_decisions, users, alembic_version"
            )


def events_file(path: Path, tokens: int) -> Path:
    lines = [
        json.dumps(
            {
                "event_id": f"e{i}",
                "event_time": "2025-07-01T12:00:00Z",
                "user_id": i % 40 + 1,
                "operation_type": "chat",
                "model": "gpt-4o",
                "usage": {"input_tokens": tokens if i % 2 else 7},
            }
        )
        for i in range(3000)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("store", ["sqlite", "mariadb"])
def test_two_runs_writing_one_store_at_once_keep_each_event_once_and_report_conflicts(
    tmp_path: Path, mysql_db: MySQLDatabase, store: str
) -> None:
    url = store_urls(tmp_path, mysql_db)[store]
    config = tmp_path / "no-limits.toml"
    config.write_text("[rate_limit]\nquotas = { free = 100000 }\n")
    # Even events are identical in both inputs; odd ones differ in their token counts.
    inputs = [events_file(tmp_path / "a.jsonl", 10), events_file(tmp_path / "b.jsonl", 99)]
    procs = [
        start(
            "run", "--input", source, "--out", tmp_path / source.stem, "--audit-db", url, "--config", config
        )
        for source in inputs
    ]
    for code, err in finish(procs):
        assert code == 0, err
    summaries = [
        json.loads(next((tmp_path / source.stem / "_runs").glob("*.json")).read_text()) for source in inputs
    ]
    written = {
        source.stem: {
            e["event_id"]: e["input_tokens"]
            for e in read_dataset(tmp_path / source.stem, "events", "event_id")
        }
        for source in inputs
    }
    even = {f"e{i}" for i in range(0, 3000, 2)}
    odd = {f"e{i}" for i in range(1, 3000, 2)}
    # Each output directory holds every event of its input once, but a conflicting copy the other
    # run stored first: that one is a dead letter. The audit trail holds each event once.
    for summary, events in zip(summaries, written.values(), strict=True):
        assert summary["events_read"] == 3000 and even <= events.keys()
        conflicts = summary["dead_letters_by_reason"].get("conflicting_duplicate", 0)
        assert len(events) == 3000 - conflicts == summary["events_processed"]
    won_a, won_b = written["a"].keys() & odd, written["b"].keys() & odd
    assert won_a.isdisjoint(won_b) and won_a | won_b == odd
    assert all(written["a"][e] == 10 for e in won_a) and all(written["b"][e] == 99 for e in won_b)
    assert sum(s["audit_rows_inserted"] for s in summaries) == 3000


def writer_rows(ids: list[str], fingerprints: list[bytes], stored: list[bool]) -> pa.Table:
    n = len(ids)
    return pa.table(
        {
            "event_id": ids,
            "user_id": [1] * n,
            "operation_type": ["chat"] * n,
            "input_hash": pa.nulls(n, pa.string()),
            "output_hash": pa.nulls(n, pa.string()),
            "cost": pa.nulls(n, pa.decimal128(10, 6)),
            "event_time": pa.array([1_751_371_200_000_000] * n, pa.timestamp("us", tz="UTC")),
            "model": ["gpt-4o"] * n,
            "ai_tier": ["free"] * n,
            "cost_status": ["unpriced"] * n,
            "rate_limited": [False] * n,
            "image_hash": pa.nulls(n, pa.string()),
            "hash_mode": ["sha256"] * n,
            FINGERPRINT: pa.array(fingerprints, pa.binary(16)),
            STORED: stored,
        }
    )


@pytest.mark.parametrize("store", ["sqlite", "mariadb"])
def test_rows_another_run_stored_meanwhile_are_told_apart_at_write_time(
    tmp_path: Path, mysql_db: MySQLDatabase, store: str
) -> None:
    engine = open_engine(store_urls(tmp_path, mysql_db)[store])
    upgrade(engine)
    same, other = b"\x01" * 16, b"\x02" * 16
    theirs = AuditSink(engine, batch_rows=2, outputs_id="their-inputs")
    assert theirs.write("0", writer_rows(["dup", "clash"], [same, same], [False, False])).counts == {
        "audit_rows_inserted": 2
    }
    # The run's check before rate limiting saw none of them stored: another run wrote them since.
    ours = AuditSink(engine, batch_rows=2, outputs_id="our-inputs")
    written = ours.write("0", writer_rows(["dup", "clash", "new"], [same, other, same], [False] * 3))
    assert (written.counts["audit_rows_inserted"], written.refused) == (1, ("clash",))  # "dup": same event
    engine.dispose()
    if store == "sqlite":
        with sqlite3.connect(tmp_path / "fresh.sqlite") as con:
            rows = con.execute(
                "SELECT event_id, inputs_fingerprint FROM ai_audit_trail ORDER BY 1"
            ).fetchall()
    else:
        rows = mysql_db.query("SELECT event_id, inputs_fingerprint FROM ai_audit_trail ORDER BY 1")
    assert [tuple(r) for r in rows] == [
        ("clash", "their-inputs"),
        ("dup", "their-inputs"),
        ("new", "our-inputs"),
    ]
