"""End to end through ``runner.py``: generated data in, outputs read back and checked
independently (counts against the generator's manifest, costs recomputed from the pricing CSV,
Parquet through DuckDB, audit rows through sqlite3)."""

from __future__ import annotations

import csv
import gzip
import json
import re
import shutil
import sqlite3
from datetime import date, datetime
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import duckdb
import pytest

import schemas
from tests.conftest import read_dataset, run_cli, run_pipeline

N_EVENTS = 4000


def reference_cost(
    model: str, day: date, input_tokens: int, output_tokens: int, images: int
) -> Decimal | None:
    """Cost recomputed from pricing.csv with exact fractions and half-even rounding to 6 places."""
    with (schemas.HERE / "pricing.csv").open(newline="") as fh:
        rows = [
            r
            for r in csv.DictReader(fh)
            if r["model"] == model and date.fromisoformat(r["effective_from"]) <= day
        ]
    if not rows:
        return None
    row = max(rows, key=lambda r: r["effective_from"])
    price = {k: Fraction(row[k] or "0") for k in ("input_per_1k_usd", "output_per_1k_usd", "per_image_usd")}
    exact = (
        input_tokens * price["input_per_1k_usd"] + output_tokens * price["output_per_1k_usd"]
    ) / 1000 + images * price["per_image_usd"]
    micros = exact * 1_000_000
    floor = micros.numerator // micros.denominator
    rest = micros - floor
    if rest > Fraction(1, 2) or (rest == Fraction(1, 2) and floor % 2 == 1):
        floor += 1
    return Decimal(floor).scaleb(-6)


def event_line(event_id: str, **fields: Any) -> str:
    """One JSONL line of a minimal valid event, with fields added or replaced."""
    event = {"event_id": event_id, "event_time": "2025-07-01T00:00:00Z", "user_id": 1,
             "operation_type": "chat", "model": "gpt-4o"}  # fmt: skip
    return json.dumps(event | fields) + "\n"


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    data = tmp_path_factory.mktemp("gen")
    source = data / "events.jsonl"
    result = run_cli(
        "generate",
        "--events",
        N_EVENTS,
        "--out",
        source,
        "--seed",
        11,
        "--images",
        "--dup-rate",
        "0.05",
        "--bad-rate",
        "0.03",
    )
    assert result.returncode == 0, result.stderr
    manifest = json.loads(Path(f"{source}.manifest.json").read_text())
    return {"dir": data, "source": source, "manifest": manifest}


@pytest.fixture(scope="module")
def default_run(generated: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("run") / "out"
    result = run_pipeline([generated["source"]], out)
    return {"out": out, "summary": result.summary(), "stdout": result.stdout}


def test_summary_counts_match_what_the_generator_wrote(
    generated: dict[str, Any], default_run: dict[str, Any]
) -> None:
    manifest, summary = generated["manifest"], default_run["summary"]
    assert summary["events_read"] == manifest["lines"]
    assert summary["events_processed"] == manifest["valid_unique"]
    assert summary["duplicates_collapsed"] == manifest["exact_duplicates"]
    expected_reasons = dict(manifest["bad_by_reason"])
    if manifest["conflicting_duplicates"]:
        expected_reasons["conflicting_duplicate"] = manifest["conflicting_duplicates"]
    assert summary["dead_letters_by_reason"] == dict(sorted(expected_reasons.items()))
    assert summary["events_read"] == (
        summary["events_processed"] + summary["events_dead_lettered"] + summary["duplicates_collapsed"]
    )
    assert summary["late_events"] == 0
    for key in ("run_id", "engine", "started_at", "finished_at", "rate_limited", "cost_total"):
        assert key in summary


def test_each_event_cost_is_recomputed_from_the_pricing_table(
    generated: dict[str, Any], default_run: dict[str, Any]
) -> None:
    events = read_dataset(default_run["out"], "events", "event_id")
    by_id = {}
    for raw in generated["source"].read_bytes().splitlines():
        try:
            obj = json.loads(raw)
        except (ValueError, RecursionError):  # bad lines, some nested past the stdlib's recursion
            continue
        if isinstance(obj, dict) and isinstance(obj.get("event_id"), str):
            by_id.setdefault(obj["event_id"], obj)  # the first copy is the kept one
    unpriced = 0
    for row in events:
        source = by_id[row["event_id"]]
        usage = source.get("usage", {})
        assert (row["input_tokens"], row["output_tokens"], row["images"]) == (
            usage.get("input_tokens", 0),
            usage.get("output_tokens", 0),
            usage.get("images", 0),
        )
        expected = reference_cost(
            row["model"], row["event_time"].date(), row["input_tokens"], row["output_tokens"], row["images"]
        )
        assert row["cost"] == expected, row["event_id"]
        assert row["cost_status"] == ("unpriced" if expected is None else "priced")
        unpriced += expected is None
    assert unpriced == default_run["summary"]["unpriced_events"] > 0


def test_cost_totals_agree_to_the_last_digit(default_run: dict[str, Any]) -> None:
    out = default_run["out"]
    parquet_total = duckdb.execute(
        f"SELECT sum(cost) FROM read_parquet('{out}/events/dt=*/*.parquet', hive_partitioning = true)"
    ).fetchone()[0]
    with sqlite3.connect(out / "audit.sqlite") as con:
        costs = [
            Decimal(str(c)).quantize(Decimal("0.000001"))
            for (c,) in con.execute("SELECT cost FROM ai_audit_trail WHERE cost IS NOT NULL")
        ]
    assert Decimal(default_run["summary"]["cost_total"]) == parquet_total == sum(costs)


def test_audit_trail_has_one_row_per_processed_event(default_run: dict[str, Any]) -> None:
    out = default_run["out"]
    events = {e["event_id"]: e for e in read_dataset(out, "events", "event_id")}
    with sqlite3.connect(out / "audit.sqlite") as con:
        rows = con.execute(
            "SELECT event_id, user_id, operation_type, input_hash, output_hash, created_at, "
            "rate_limited FROM ai_audit_trail"
        ).fetchall()
    assert len(rows) == len(events) == default_run["summary"]["events_processed"]
    for event_id, user_id, operation, input_hash, output_hash, created_at, limited in rows:
        event = events[event_id]
        assert (user_id, operation, input_hash, output_hash, bool(limited)) == (
            event["user_id"],
            event["operation_type"],
            event["input_hash"],
            event["output_hash"],
            event["rate_limited"],
        )
        assert created_at == event["event_time"].strftime("%Y-%m-%d %H:%M:%S")  # the event's time


def test_parquet_is_hive_partitioned_by_event_date(default_run: dict[str, Any]) -> None:
    out = default_run["out"]
    for dataset in ("events", "rate_limit_violations", "dead_letter"):
        entries = list((out / dataset).iterdir())
        assert entries and all(p.is_dir() and p.name.startswith("dt=") for p in entries), dataset
    mismatched = duckdb.execute(
        f"SELECT count(*) FROM read_parquet('{out}/events/dt=*/*.parquet', hive_partitioning = true) "
        "WHERE CAST(dt AS VARCHAR) <> strftime(event_time AT TIME ZONE 'UTC', '%Y-%m-%d')"
    ).fetchone()[0]
    assert mismatched == 0


def test_rate_limits_trip_and_violations_match_flagged_events(default_run: dict[str, Any]) -> None:
    out = default_run["out"]
    limited = duckdb.execute(
        f"SELECT count(*) FROM read_parquet('{out}/events/dt=*/*.parquet') WHERE rate_limited"
    ).fetchone()[0]
    violations = read_dataset(out, "rate_limit_violations", "user_id, window_start")
    assert limited == default_run["summary"]["rate_limited"] > 0
    assert sum(v["limited_count"] for v in violations) == limited
    # Each event is judged by its own tier's quota; where one window's events name one tier, the
    # window's count past the quota is exactly what was limited.
    tiers = duckdb.execute(
        "SELECT user_id, window_start, count(DISTINCT ai_tier)"
        f" FROM read_parquet('{out}/events/dt=*/*.parquet') GROUP BY ALL"
    ).fetchall()
    one_tier = {(user, start) for user, start, n in tiers if n == 1}
    checked = [v for v in violations if (v["user_id"], v["window_start"]) in one_tier]
    assert checked and all(v["request_count"] - v["quota"] == v["limited_count"] for v in checked)


def test_rerun_replaces_outputs_instead_of_duplicating(
    generated: dict[str, Any], default_run: dict[str, Any], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    shutil.copytree(default_run["out"], out)
    before = sorted(p.relative_to(out) for p in out.rglob("*.parquet"))
    run_pipeline([generated["source"]], out)
    after = sorted(p.relative_to(out) for p in out.rglob("*.parquet"))
    assert before == after
    assert len(read_dataset(out, "events", "event_id")) == default_run["summary"]["events_processed"]
    with sqlite3.connect(out / "audit.sqlite") as con:
        assert (
            con.execute("SELECT count(*) FROM ai_audit_trail").fetchone()[0]
            == default_run["summary"]["events_processed"]
        )
    assert len(list((out / "_runs").glob("*.json"))) == 2


def _dataset_rows(out: Path) -> dict[str, list[dict[str, Any]]]:
    return {
        "events": read_dataset(out, "events", "event_id"),
        "dead_letter": read_dataset(out, "dead_letter", "source, line_no"),
        "rate_limit_violations": read_dataset(out, "rate_limit_violations", "user_id, window_start"),
    }


@pytest.mark.slow
def test_bundles_run_three_times_give_the_outputs_of_one_pass(
    generated: dict[str, Any], default_run: dict[str, Any], tmp_path: Path
) -> None:
    out = tmp_path / "repeat"
    summary = run_pipeline([generated["source"]], out, "--", "--direct_runner_bundle_repeat=3").summary()
    assert _dataset_rows(out) == _dataset_rows(default_run["out"])
    counts = ("events_read", "events_processed", "events_dead_lettered", "duplicates_collapsed", "cost_total")
    assert {k: summary[k] for k in counts} == {k: default_run["summary"][k] for k in counts}
    with sqlite3.connect(out / "audit.sqlite") as con:
        assert con.execute("SELECT count(*) FROM ai_audit_trail").fetchone()[0] == summary["events_processed"]


def test_stdin_input_gives_the_same_events(
    generated: dict[str, Any], default_run: dict[str, Any], tmp_path: Path
) -> None:
    out = tmp_path / "stdin"
    result = run_pipeline(["-"], out, cwd=generated["dir"], stdin=generated["source"].read_bytes())
    summary = result.summary()
    assert summary["inputs"][0]["path"] == "<stdin>"
    mine = [{k: v for k, v in e.items() if k != "source"} for e in read_dataset(out, "events", "event_id")]
    theirs = [
        {k: v for k, v in e.items() if k != "source"}
        for e in read_dataset(default_run["out"], "events", "event_id")
    ]
    assert mine == theirs


def test_gzip_input_gives_the_same_counts(
    generated: dict[str, Any], default_run: dict[str, Any], tmp_path: Path
) -> None:
    packed = generated["dir"] / "events-copy.jsonl.gz"
    packed.write_bytes(gzip.compress(generated["source"].read_bytes()))
    summary = run_pipeline([packed], tmp_path / "gz").summary()
    for key in (
        "events_read",
        "events_processed",
        "events_dead_lettered",
        "duplicates_collapsed",
        "cost_total",
    ):
        assert summary[key] == default_run["summary"][key], key


def test_csv_and_parquet_inputs_match_jsonl(tmp_path: Path) -> None:
    rows = [
        {
            "event_id": f"t-{i}",
            "event_time": f"2025-07-02T10:00:{i:02d}Z",
            "user_id": 7 + i % 3,
            "operation_type": "chat_completion",
            "model": "gpt-4o-mini",
            "input.text": f"prompt {i} é",
            "output.text": f"answer {i}",
            "usage.input_tokens": 10 + i,
            "usage.output_tokens": 40 + i,
            "ai_tier": "free",
        }
        for i in range(30)
    ]
    jsonl = tmp_path / "in.jsonl"
    jsonl.write_text(
        "".join(
            json.dumps(
                {
                    **{k: v for k, v in r.items() if "." not in k},
                    "input": {"text": r["input.text"]},
                    "output": {"text": r["output.text"]},
                    "usage": {
                        "input_tokens": r["usage.input_tokens"],
                        "output_tokens": r["usage.output_tokens"],
                    },
                }
            )
            + "\n"
            for r in rows
        )
    )
    csv_path = tmp_path / "in.csv"
    with csv_path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
        fh.write("bad-row,only,three\n")
    import pyarrow as pa
    import pyarrow.parquet as pq

    parquet_path = tmp_path / "in.parquet"
    pq.write_table(pa.Table.from_pylist(rows), parquet_path)

    def events(path: Path) -> list[dict[str, Any]]:
        out = tmp_path / f"out-{path.suffix[1:]}"
        run_pipeline([path], out)
        return [
            {k: v for k, v in e.items() if k not in ("source", "line_no")}
            for e in read_dataset(out, "events", "event_id")
        ]

    reference = events(jsonl)
    assert len(reference) == 30
    assert events(csv_path) == reference
    assert events(parquet_path) == reference
    dead = read_dataset(tmp_path / "out-csv", "dead_letter", "line_no")
    assert [(d["line_no"], d["reason"], bytes(d["raw"])) for d in dead] == [
        (32, "malformed_row", b"bad-row,only,three")
    ]


def test_keyed_hashing_uses_the_key_from_the_environment(tmp_path: Path) -> None:
    import hashlib
    import hmac

    source = tmp_path / "in.jsonl"
    source.write_text(event_line("k1", input={"text": "hi"}))
    config = tmp_path / "hmac.toml"
    config.write_text('[hashing]\nmode = "hmac-sha256"\n')
    secret = "s3cret-key-value"
    missing = run_cli(
        "run", "--input", source, "--out", tmp_path / "o1", "--config", config, env={"AIEP_HMAC_KEY": ""}
    )
    assert missing.returncode == 1 and "AIEP_HMAC_KEY" in missing.stderr
    result = run_pipeline([source], tmp_path / "o2", "--config", config, env={"AIEP_HMAC_KEY": secret})
    (row,) = read_dataset(tmp_path / "o2", "events", "event_id")
    assert row["input_hash"] == hmac.new(secret.encode(), b"hi", hashlib.sha256).hexdigest()
    assert row["hash_mode"] == "hmac-sha256"
    everything = (
        result.stdout
        + result.stderr
        + "".join(p.read_text() for p in (tmp_path / "o2" / "_runs").glob("*.json"))
    )
    assert secret not in everything


def test_config_overrides_quotas(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text(
        "".join(event_line(f"q{i}", event_time=f"2025-07-01T00:00:{i:02d}Z", user_id=5) for i in range(5))
    )
    config = tmp_path / "quota.toml"
    config.write_text("[rate_limit]\nquotas = { free = 2 }\n")
    summary = run_pipeline([source], tmp_path / "out", "--config", config).summary()
    assert summary["rate_limited"] == 3
    assert summary["config"]["quotas"] == {"free": 2, "pro": 200, "enterprise": 2000}


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["run", "--out", "x"], 2, "--input"),
        (["run", "--input", "a.jsonl", "--out", "o", "--engine", "spark"], 2, "invalid choice"),
        (["run", "--input", "/nonexistent/in.jsonl", "--out", "{tmp}/o"], 1, "is not a readable file"),
        (["run", "--input", "/nonexistent/*.jsonl", "--out", "{tmp}/o"], 1, "no input matches"),
        (["run", "--input", "{tmp}/in.txt", "--out", "{tmp}/o"], 1, "unsupported input"),
        (["run", "--input", "{tmp}/in.jsonl", "--out", "/proc/aiep-cannot-write"], 1, "not writable"),
        (
            ["run", "--input", "{tmp}/in.jsonl", "--out", "{tmp}/o", "--config", "{tmp}/nope.toml"],
            1,
            "cannot read config",
        ),
        (["generate", "--events", "10", "--out", "{tmp}/g.jsonl", "--dup-rate", "2"], 2, "--dup-rate"),
    ],
)
def test_failures_exit_non_zero_with_a_one_line_reason(
    tmp_path: Path, args: list[str], code: int, message: str
) -> None:
    (tmp_path / "in.jsonl").write_text("{}\n")
    (tmp_path / "in.txt").write_text("{}\n")
    result = run_cli(*[a.replace("{tmp}", str(tmp_path)) for a in args])
    assert result.returncode == code, result.stderr
    assert message in result.stderr
    if code == 1:
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert "Traceback" not in result.stderr


def test_second_run_into_a_locked_output_refuses(tmp_path: Path) -> None:
    import filelock

    (tmp_path / "in.jsonl").write_text("{}\n")
    out = tmp_path / "out"
    out.mkdir()
    with filelock.FileLock(str(out / ".aiep.lock")):
        result = run_cli("run", "--input", tmp_path / "in.jsonl", "--out", out)
    assert result.returncode == 1 and "another run" in result.stderr


@pytest.mark.parametrize(
    "command",
    [[], ["run"], ["generate"], ["review"], ["publish"], ["sql"], ["report"], ["validate"], ["mcp"]],
)
def test_help_describes_every_command(command: list[str]) -> None:
    result = run_cli(*command, "--help")
    assert result.returncode == 0
    expected = {
        (): ["run", "generate", "review", "publish", "sql", "report", "dashboard", "validate", "mcp"],
        ("sql",): ["--out", "SQL", "--format"],
        ("report",): [
            "--out",
            "--since",
            "--until",
            "--config",
            "--audit-db",
            "--format",
            "--fail-on-breach",
        ],
        ("validate",): ["--out"],
        ("mcp",): ["--out", "--audit-db", "--config", "--allow-review", "Exit status"],
        ("publish",): ["--input", "--to", "stream=NAME"],
        ("run",): ["--input", "--out", "--engine", "--audit-db", "--config"],
        ("generate",): ["--events", "--seed", "--dup-rate", "--bad-rate", "--images"],
        ("review",): [
            "CONTENT_HASH",
            "--decision",
            "--reviewer",
            "--list",
            "--limit",
            "--format",
            "--audit-db",
        ],
    }[tuple(command)]
    for word in expected:
        assert word in result.stdout


def test_summary_file_names_inputs_with_a_fingerprint(
    generated: dict[str, Any], default_run: dict[str, Any]
) -> None:
    import hashlib

    summary = default_run["summary"]
    (entry,) = summary["inputs"]
    assert entry["sha256"] == hashlib.sha256(generated["source"].read_bytes()).hexdigest()
    assert entry["size"] == generated["source"].stat().st_size
    datetime.fromisoformat(summary["started_at"])
    assert "audit.sqlite" in summary["audit_db"]


def test_against_an_earlier_run_a_differing_copy_conflicts_and_an_identical_one_collapses(
    tmp_path: Path,
) -> None:
    def event(event_id: str, tokens: int, reorder: bool = False) -> str:
        line = event_line(
            event_id, event_time="2025-07-01T08:00:00Z", user_id=3, usage={"input_tokens": tokens}
        )
        fields = json.loads(line)
        return json.dumps(dict(reversed(fields.items()))) + "\n" if reorder else line

    first, second, out = tmp_path / "first.jsonl", tmp_path / "second.jsonl", tmp_path / "out"
    first.write_text(event("e1", 10) + event("e2", 20))
    second.write_text(event("e1", 99) + event("e2", 20, reorder=True) + event("e3", 30))
    run_pipeline([first], out)
    summary = run_pipeline([second], out).summary()
    # e2 is an identical replay of what the first input stored: it changes nothing, so it is not
    # written to Parquet a second time (DESIGN.md, duplicates against stored rows).
    counts = ("events_processed", "events_dead_lettered", "duplicates_collapsed")
    assert [summary[name] for name in counts] == [1, 1, 1]
    assert summary["dead_letters_by_reason"] == {"conflicting_duplicate": 1}
    events = read_dataset(out, "events", "event_id")
    assert [(e["event_id"], e["source"]) for e in events] == [
        ("e1", str(first)),
        ("e2", str(first)),
        ("e3", str(second)),
    ]
    (letter,) = [d for d in read_dataset(out, "dead_letter", "line_no") if d["source"] == str(second)]
    assert (letter["line_no"], letter["event_id"]) == (1, "e1") and "earlier run" in letter["detail"]
    with sqlite3.connect(out / "audit.sqlite") as con:
        rows = dict(con.execute("SELECT event_id, cost FROM ai_audit_trail").fetchall())
    assert sorted(rows) == ["e1", "e2", "e3"]
    assert Decimal(str(rows["e1"])) == Decimal("0.000025")  # run one's copy: 10 tokens at $0.0025/1K


#: tqdm's bar at 100 %: "reading: 100%|" then full blocks ("#" where the terminal lacks Unicode).
FULL_BAR = re.compile(rb"reading: +100%\|(?:\xe2\x96\x88|#)+\|")


@pytest.mark.parametrize(
    "window",
    [
        pytest.param((40, 120), id="sized-terminal"),
        # What os.openpty() gives, like some CI and container terminals: the OS reports 0x0,
        # from which tqdm would make a bar it never draws.
        pytest.param(None, id="terminal-of-unknown-size"),
    ],
)
def test_a_run_on_a_terminal_draws_its_progress_bar_to_100_percent_and_succeeds(
    generated: dict[str, Any], tmp_path: Path, window: tuple[int, int] | None
) -> None:
    import fcntl
    import os
    import struct
    import subprocess
    import sys
    import termios

    from tests.conftest import ROOT

    leader, follower = os.openpty()
    if window is not None:
        fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", *window, 0, 0))
    proc = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "runner.py"),
            "run",
            "--input",
            str(generated["source"]),
            "--out",
            str(tmp_path / "o"),
            "--no-embeddings",
            "--no-moderation",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=follower,
        cwd=ROOT,
        # COLUMNS and LINES would stand in for the size a terminal does not report.
        env={name: value for name, value in os.environ.items() if name not in ("COLUMNS", "LINES")},
    )
    os.close(follower)
    terminal = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # EIO: the run closed the terminal
            break
        if not chunk:
            break
        terminal += chunk
    stdout, _ = proc.communicate(timeout=300)
    os.close(leader)
    assert proc.returncode == 0, terminal.decode(errors="replace")
    assert "finished in" in stdout.decode()
    assert b"Traceback" not in terminal
    assert FULL_BAR.search(terminal), terminal.decode(errors="replace")
    if window is not None:  # no line of the bar is wider than the terminal
        assert all(len(line.decode()) < window[1] for line in terminal.split(b"\r"))
    # The bar is cleared when the run ends: the last thing written over its line is blank.
    assert [segment for segment in terminal.split(b"\r") if segment][-1].strip() == b""


def test_a_run_clears_what_a_killed_run_left_in_staging(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text(event_line("s1"))
    leftover = tmp_path / "out" / "_staging" / "20250101T000000Z-dead" / "spill" / "by_user"
    leftover.mkdir(parents=True)
    (leftover / "x.arrow").write_bytes(b"half a file")
    run_pipeline([source], tmp_path / "out")
    assert not (tmp_path / "out" / "_staging").exists()
