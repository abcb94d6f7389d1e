"""The identity of an input is its content, never the spelling of its path: rerunning the same
content replaces its outputs, and no dataset ever holds one event twice."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import read_dataset, run_cli, run_pipeline
from tests.test_cli import event_line

DATASETS = ("events", "rate_limit_violations", "dead_letter")


def parquet_files(out: Path) -> list[str]:
    return sorted(str(p.relative_to(out)) for p in out.rglob("*.parquet"))


def rows(out: Path) -> dict[str, list[dict[str, Any]]]:
    """Every dataset's rows, less the column that names the input as it was spelt."""
    order = {"events": "event_id", "rate_limit_violations": "user_id, window_start", "dead_letter": "line_no"}
    return {
        name: [
            {k: v for k, v in row.items() if k != "source"} for row in read_dataset(out, name, order[name])
        ]
        for name in DATASETS
    }


def audit_count(out: Path) -> int:
    with sqlite3.connect(out / "audit.sqlite") as con:
        return int(con.execute("SELECT count(*) FROM ai_audit_trail").fetchone()[0])


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    data.mkdir()
    lines = [
        event_line(f"e{i}", user_id=i % 3 + 1, event_time=f"2025-07-01T00:00:{i % 60:02d}Z")
        for i in range(60)
    ]
    lines.insert(10, "{not json\n")  # a dead letter too
    (data / "x.jsonl").write_text("".join(lines))
    (tmp_path / "elsewhere").mkdir()
    shutil.copy(data / "x.jsonl", tmp_path / "elsewhere" / "copy.jsonl")
    os.symlink(data, tmp_path / "linked")
    return tmp_path


def test_every_spelling_of_one_input_replaces_the_same_outputs(workspace: Path) -> None:
    out = workspace / "out"
    spellings = [
        "data/x.jsonl",
        str(workspace / "data" / "x.jsonl"),
        "./data/x.jsonl",
        "data//x.jsonl",
        f"{workspace}//data/./x.jsonl",
        "linked/x.jsonl",  # through a symlinked folder
        "elsewhere/copy.jsonl",  # the same bytes under another name
        "data/x.json*",  # a glob
    ]
    first = run_pipeline([spellings[0]], out, cwd=workspace)
    files, contents = parquet_files(out), rows(out)
    assert files and len(contents["events"]) == 60
    for spelling in spellings[1:]:
        run_pipeline([spelling], out, cwd=workspace)
        assert parquet_files(out) == files, spelling
        assert rows(out) == contents, spelling
    run_pipeline(["-"], out, cwd=workspace / "data", stdin=(workspace / "data" / "x.jsonl").read_bytes())
    assert parquet_files(out) == files and rows(out) == contents
    assert audit_count(out) == 60
    fingerprints = {json.loads(p.read_text())["inputs_fingerprint"] for p in (out / "_runs").glob("*.json")}
    assert fingerprints == {first.summary()["inputs_fingerprint"]}


def test_one_file_named_twice_in_a_run_is_read_once(workspace: Path) -> None:
    result = run_pipeline(
        ["data/x.jsonl", "linked/x.jsonl", "./data/x.jsonl"], workspace / "out", cwd=workspace
    )
    assert result.summary()["events_read"] == 61
    assert len(result.summary()["inputs"]) == 1


def test_overlapping_inputs_never_put_an_event_in_parquet_twice(workspace: Path) -> None:
    lines = (workspace / "data" / "x.jsonl").read_text().splitlines(keepends=True)
    (workspace / "first.jsonl").write_text("".join(lines[:40]))
    (workspace / "second.jsonl").write_text("".join(lines[25:]))
    out = workspace / "out"
    run_pipeline(["first.jsonl"], out, cwd=workspace)
    second = run_pipeline(["second.jsonl"], out, cwd=workspace).summary()
    assert second["duplicates_collapsed"] == 15  # the events the first run already wrote
    run_pipeline(["first.jsonl"], out, cwd=workspace)  # a rerun replaces its own files
    events = [e["event_id"] for e in read_dataset(out, "events", "event_id")]
    assert sorted(events) == sorted(f"e{i}" for i in range(60))
    assert audit_count(out) == 60


def test_inputs_in_another_order_are_another_run(workspace: Path) -> None:
    # The order decides which of two differing copies is kept, so it is part of the identity.
    (workspace / "a.jsonl").write_text(event_line("only-a"))
    (workspace / "b.jsonl").write_text(event_line("only-b"))
    ab = run_cli("run", "--input", "a.jsonl", "b.jsonl", "--out", "o1", cwd=workspace)
    ba = run_cli("run", "--input", "b.jsonl", "a.jsonl", "--out", "o2", cwd=workspace)
    assert ab.returncode == ba.returncode == 0
    fingerprint = {
        name: json.loads(next((workspace / name / "_runs").glob("*.json")).read_text())["inputs_fingerprint"]
        for name in ("o1", "o2")
    }
    assert fingerprint["o1"] != fingerprint["o2"]


def test_events_a_killed_run_stored_but_never_wrote_are_written_by_the_next_run(workspace: Path) -> None:
    import signal
    import subprocess
    import sys

    from tests.conftest import ROOT

    data = workspace / "data" / "x.jsonl"
    (workspace / "b.jsonl").write_text("".join(event_line(f"b{i}") for i in range(5)))
    out = workspace / "out"
    killed = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "kill_at.py"), "connectors.database:BatchWriter._execute",
         "after", "1", "--", "run", "--input", str(data), "--out", str(out), "--no-embeddings",
         "--no-moderation"],
        cwd=ROOT, capture_output=True, timeout=300,
    )  # fmt: skip
    assert killed.returncode == -signal.SIGKILL
    assert 0 < audit_count(out) <= 60  # stored, but none of it in Parquet yet
    assert not list((out / "events").glob("dt=*/*.parquet"))
    # The next run covers those events among other inputs: it writes what the killed run stored.
    run_pipeline([data, workspace / "b.jsonl"], out)
    events = [e["event_id"] for e in read_dataset(out, "events", "event_id")]
    assert sorted(events) == sorted([f"e{i}" for i in range(60)] + [f"b{i}" for i in range(5)])


def test_one_store_and_two_output_directories_each_hold_their_inputs_events(workspace: Path) -> None:
    store = f"sqlite:///{workspace / 'shared.sqlite'}"
    source = workspace / "data" / "x.jsonl"
    run_pipeline([source], workspace / "one", "--audit-db", store)
    second = run_pipeline([source], workspace / "two", "--audit-db", store).summary()
    assert second["audit_rows_inserted"] == 0 and second["events_processed"] == 60
    for out in (workspace / "one", workspace / "two"):
        assert sorted(e["event_id"] for e in read_dataset(out, "events", "event_id")) == sorted(
            f"e{i}" for i in range(60)
        )


def test_events_an_earlier_run_wrote_still_count_towards_their_windows_quota(tmp_path: Path) -> None:
    config = tmp_path / "quota.toml"
    config.write_text("[rate_limit]\nquotas = { free = 6 }\n")
    lines = [event_line(f"q{i:02d}", user_id=7, event_time=f"2025-07-01T00:00:{i:02d}Z") for i in range(15)]
    (tmp_path / "first.jsonl").write_text("".join(lines[:10]))
    (tmp_path / "both.jsonl").write_text("".join(lines))
    out = tmp_path / "out"
    run_pipeline([tmp_path / "first.jsonl"], out, "--config", config)
    later = run_pipeline([tmp_path / "both.jsonl"], out, "--config", config).summary()
    assert later["duplicates_collapsed"] == 10 and later["rate_limited"] == 5  # all five new ones
    limited = {e["event_id"] for e in read_dataset(out, "events", "event_id") if e["rate_limited"]}
    assert limited == {f"q{i:02d}" for i in range(6, 15)}  # as one run over all fifteen would say
