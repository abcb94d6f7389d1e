"""kill -9 at any moment, then rerun: the outputs are exactly those of a run never killed.

A run is SIGKILLed before its first sink commit, right after it, in the middle of writing a
Parquet file (written, not yet renamed), after the first Parquet file appeared, and after every
sink committed (before the cleanup and the summary). Each time the same command runs again and
its outputs are compared with a clean run's: every audit row, a checksum of every dataset's sorted
rows, and no staging or temporary file left behind.

``make crash-loop`` runs the same at scale (``AIEP_CRASH_EVENTS``, more kill points).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, read_dataset, run_cli, run_pipeline

pytestmark = pytest.mark.slow

EVENTS = int(os.environ.get("AIEP_CRASH_EVENTS", "6000"))
#: Small audit transactions: the sink commits many times, so a kill lands between commits.
AUDIT_BATCH_ROWS = 100

KILL_POINTS = [
    ("connectors.database:BatchWriter._execute", "before", 1),  # before the first sink commits
    ("connectors.database:BatchWriter._execute", "after", 1),  # right after it
    ("connectors.database:BatchWriter._execute", "after", 7),  # while the audit sink writes on
    ("pyarrow.parquet:write_table", "after", 1),  # a Parquet file written but not renamed
    ("connectors.parquet_sink:write_partitioned", "after", 2),  # some Parquet files in place
    ("connectors.parquet_sink:remove_stale_parts", "before", 1),  # every sink committed
]

DATASETS = {
    "events": "event_id",
    "rate_limit_violations": "user_id, window_start",
    "dead_letter": "source, line_no",
}


@pytest.fixture(scope="module")
def workload(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("kill")
    source = folder / "events.jsonl"
    generated = run_cli("generate", "--events", EVENTS, "--out", source, "--seed", 23, "--images")
    assert generated.returncode == 0, generated.stderr
    config = folder / "small-batches.toml"
    config.write_text(f"[pipeline]\naudit_batch_rows = {AUDIT_BATCH_ROWS}\nshards = 8\n")
    clean = folder / "clean"
    run_pipeline([source], clean, "--config", config)
    return {"source": source, "config": config, "clean": snapshot(clean)}


def snapshot(out: Path) -> dict[str, Any]:
    """What a run leaves: audit rows, a checksum of each dataset's sorted rows, file names."""
    with sqlite3.connect(out / "audit.sqlite") as con:
        columns = [c[1] for c in con.execute("PRAGMA table_info(ai_audit_trail)") if c[1] != "id"]
        audit = con.execute(f"SELECT {', '.join(columns)} FROM ai_audit_trail ORDER BY event_id").fetchall()
    checksums = {
        name: hashlib.sha256(repr(read_dataset(out, name, order)).encode()).hexdigest()
        for name, order in DATASETS.items()
    }
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*.parquet"))
    return {"audit": audit, "checksums": checksums, "files": files}


def leftovers(out: Path) -> list[str]:
    """Files a finished run should not leave: staging, temporary files."""
    found = [
        str(p.relative_to(out)) for p in out.rglob("*") if p.name.endswith(".tmp") or "_staging" in p.parts
    ]
    return sorted(found)


@pytest.mark.parametrize(
    ("target", "when", "nth"), KILL_POINTS, ids=[f"{t.split(':')[1]}-{w}-{n}" for t, w, n in KILL_POINTS]
)
def test_a_run_killed_at_any_moment_then_rerun_equals_a_clean_run(
    workload: dict[str, Any], tmp_path: Path, target: str, when: str, nth: int
) -> None:
    out = tmp_path / "out"
    args = [
        "run",
        "--input",
        str(workload["source"]),
        "--out",
        str(out),
        "--config",
        str(workload["config"]),
        "--no-embeddings",
        "--no-moderation",
    ]
    killed = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "kill_at.py"), target, when, str(nth), "--", *args],
        cwd=ROOT,
        capture_output=True,
        timeout=600,
    )
    assert killed.returncode == -signal.SIGKILL, f"never reached the kill point:\n{killed.stderr.decode()}"
    assert not list(out.glob("_runs/*.json"))  # a killed run never claims to have finished

    rerun = run_pipeline([workload["source"]], out, "--config", workload["config"])
    assert snapshot(out) == workload["clean"]
    assert leftovers(out) == []
    summary = json.loads(next((out / "_runs").glob("*.json")).read_text())
    assert summary["events_read"] == EVENTS
    assert rerun.returncode == 0
