"""The spine's stages in-process, without an engine: each stage object does its one job, the
sinks drop the internal columns, content rides along to the sinks, panes hold whole windows, and
a worker releases its database connections when it ends."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import sqlite3
import unicodedata
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import schemas
from connectors.config import PipelineConfig
from connectors.database import open_engine, upgrade
from connectors.parquet_sink import ParquetSink, RunFileNames
from connectors.spill import PLACE_AT, PLACE_FILE
from pipelines.stages import CARRIED, RunPlan, pane_label
from pipelines.worker import SpineWorker
from tests.conftest import MySQLDatabase, read_dataset
from transforms.event_batch import IMAGE, IMAGE_PATH, INPUT_TEXT, OUTPUT_TEXT, InputRecords
from transforms.windows import TumblingWindows

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32


def line(event_id: str, when: str, user: int = 7, **fields: Any) -> bytes:
    event = {"event_id": event_id, "event_time": when, "user_id": user, "operation_type": "chat",
             "model": "gpt-4o", "input": {"text": f"prompt é {event_id}"},
             "output": {"text": f"answer {event_id}"},
             "usage": {"input_tokens": 10, "output_tokens": 5}}  # fmt: skip
    return json.dumps({**event, **fields}).encode()


def plan_for(tmp_path: Path, audit_url: str, quota: int = 2, shards: int = 2) -> RunPlan:
    config = PipelineConfig(
        shards=shards,
        quotas={"free": quota, "pro": 100, "enterprise": 1000},
        embeddings=False,
        moderation=False,
    )
    return RunPlan(
        run_id="r1",
        out_dir=str(tmp_path / "out"),
        audit_url=audit_url,
        config=config,
        outputs_id="f00d",
        naming=RunFileNames("f00d"),
        image_dirs=(str(tmp_path),),
        compare_with_store=True,
    )


def run_stages(worker: SpineWorker, raws: list[bytes]) -> dict[str, int]:
    """Every stage in order, by hand, the way an engine adapter moves tables between them."""
    counts: dict[str, int] = {}

    def add(more: dict[str, int]) -> None:
        for name, value in more.items():
            counts[name] = counts.get(name, 0) + value

    records = InputRecords("in.jsonl", 0, list(range(1, len(raws) + 1)), raws)
    validated = worker.validate(records)
    add(validated.counts)
    letters = list(validated.dead_letters)
    panes: dict[Any, list[pa.Table]] = {}
    for _, table in validated.tables:  # one shard at a time, as after shuffle 1
        events, collapsed = worker.collapse([table])
        add(collapsed.counts)
        compared = worker.compare(events)
        add(compared.counts)
        letters += collapsed.dead_letters + compared.dead_letters
        for key, pane in compared.tables:
            panes.setdefault(key, []).append(pane)
    for key, tables in sorted(panes.items()):  # as after shuffle 2
        events, violations = worker.rate_limits(worker.tiers(pa.concat_tables(tables)))
        ordered = worker.order(events)
        conflicts, written = worker.write_events(pane_label(key), ordered)
        add(written)
        letters += conflicts
        if violations.num_rows:
            add(worker.write_violations(pane_label(key), violations))
    by_file: dict[str, list[pa.Table]] = {}
    for key, table in letters:
        by_file.setdefault(key, []).append(table)
    for key, tables in by_file.items():
        add(worker.write_dead_letters(key, tables))
    return counts


def test_stages_in_process_write_every_sink_and_keep_the_invariant(tmp_path: Path) -> None:
    (tmp_path / "cat.png").write_bytes(PNG)
    audit_url = f"sqlite:///{tmp_path / 'audit.sqlite'}"
    upgrade(open_engine(audit_url))
    raws = [
        line("a", "2025-07-01T10:00:01Z"),
        line("b", "2025-07-01T10:00:02Z"),
        line("c", "2025-07-01T10:00:03Z"),  # third in its window: over the free quota of 2
        line("a", "2025-07-01T10:00:01Z"),  # an identical copy: collapsed
        line("b", "2025-07-01T10:00:09Z"),  # another payload under b: a conflicting duplicate
        line("d", "2025-07-02T23:59:59Z", output={"image": {"path": "cat.png"}}),
        b'{"event_id": "broken"',
    ]
    worker = SpineWorker(plan_for(tmp_path, audit_url))
    counts = run_stages(worker, raws)
    worker.close()

    assert counts["events_read"] == 7
    fates = counts["events_processed"], counts["duplicates_collapsed"], counts["events_dead_lettered"]
    assert fates == (4, 1, 2)
    assert counts["rate_limited"] == counts["rate_limit_violations"] == 1
    out = tmp_path / "out"
    events = read_dataset(out, "events", "event_id")
    assert [(e["event_id"], e["rate_limited"], str(e["dt"])) for e in events] == [
        ("a", False, "2025-07-01"),
        ("b", False, "2025-07-01"),
        ("c", True, "2025-07-01"),
        ("d", False, "2025-07-02"),
    ]
    # The sinks dropped every internal column: the files hold exactly the dataset's schema.
    for path in (out / "events").glob("dt=*/*.parquet"):
        assert pq.read_schema(path).names == schemas.arrow_schema("events").names
        assert path.name.startswith("part-f00d-0001-2025070")  # user 7 of 2 shards; the pane's day
    reasons = sorted(r["reason"] for r in read_dataset(out, "dead_letter", "line_no"))
    assert reasons == ["conflicting_duplicate", "malformed_json"]
    with sqlite3.connect(tmp_path / "audit.sqlite") as con:
        stored = con.execute("SELECT event_id, inputs_fingerprint FROM ai_audit_trail ORDER BY 1").fetchall()
    assert stored == [("a", "f00d"), ("b", "f00d"), ("c", "f00d"), ("d", "f00d")]
    assert counts["audit_rows_inserted"] == 4


def test_content_rides_to_the_sinks_and_matches_its_hashes(tmp_path: Path) -> None:
    (tmp_path / "cat.png").write_bytes(PNG)
    audit_url = f"sqlite:///{tmp_path / 'audit.sqlite'}"
    upgrade(open_engine(audit_url))
    plan = plan_for(tmp_path, audit_url, quota=100)
    worker = SpineWorker(
        dataclasses.replace(plan, config=dataclasses.replace(plan.config, carry_content=True))
    )
    raws = [line(f"e{i}", f"2025-07-01T10:00:{i:02d}Z") for i in range(5)]
    raws.append(line("img", "2025-07-01T11:00:00Z", output={"image": {"path": "cat.png"}}))
    inline = {"base64": base64.b64encode(PNG).decode(), "mime": "image/png"}
    raws.append(line("inline", "2025-07-01T11:00:01Z", output={"image": inline}))
    records = InputRecords("in.jsonl", 0, list(range(1, 8)), raws)
    tables = [table for _, table in worker.validate(records).tables]
    events, _ = worker.collapse(tables)
    panes = [table for _, table in worker.compare(events).tables]
    ready = worker.order(worker.rate_limits(worker.tiers(pa.concat_tables(panes)))[0])
    worker.close()

    # In one process events keep their raw records; the Beam adapter leaves them in spill files
    # and carries where (PLACE_*).
    assert set(CARRIED) - {PLACE_FILE, PLACE_AT} <= set(ready.column_names)
    for row in ready.to_pylist():  # recomputed independently of the pipeline's hasher
        nfc = unicodedata.normalize("NFC", row[INPUT_TEXT]).encode()
        assert hashlib.sha256(nfc).hexdigest() == row["input_hash"]
        if row["event_id"] == "img":  # a path image travels as its path: read again where needed
            path = str(plan.image_dirs[0]) + "/cat.png"  # resolved against the input's folder
            assert (row[IMAGE], row[IMAGE_PATH], row[OUTPUT_TEXT]) == (None, path, None)
            assert hashlib.sha256(Path(row[IMAGE_PATH]).read_bytes()).hexdigest() == row["output_hash"]
        elif row["event_id"] == "inline":  # inline bytes came with the input: carried
            assert (row[IMAGE], row[IMAGE_PATH], row[OUTPUT_TEXT]) == (PNG, None, None)
            assert hashlib.sha256(PNG).hexdigest() == row["output_hash"]
        else:
            assert row[OUTPUT_TEXT] == f"answer {row['event_id']}" and row[IMAGE] is None


def test_without_a_model_stage_no_content_leaves_the_first_stage(tmp_path: Path) -> None:
    audit_url = f"sqlite:///{tmp_path / 'audit.sqlite'}"
    worker = SpineWorker(plan_for(tmp_path, audit_url))
    records = InputRecords("in.jsonl", 0, [1], [line("e1", "2025-07-01T10:00:00Z")])
    ((_, table),) = worker.validate(records).tables
    assert not {INPUT_TEXT, OUTPUT_TEXT, IMAGE, IMAGE_PATH} & set(table.column_names)
    internal = {c for c in table.column_names if c.startswith("_")}
    assert internal == {"_order", "_raw", "_fingerprint", "_shard"}


def test_a_pane_holds_whole_windows_of_one_user_shard(tmp_path: Path) -> None:
    audit_url = f"sqlite:///{tmp_path / 'audit.sqlite'}"
    upgrade(open_engine(audit_url))
    worker = SpineWorker(plan_for(tmp_path, audit_url, shards=3))
    raws = [line(f"e{i}", f"2025-07-0{1 + i % 3}T{i % 24:02d}:59:59Z", user=1 + i % 5) for i in range(60)]
    tables = [t for _, t in worker.validate(InputRecords("in.jsonl", 0, list(range(1, 61)), raws)).tables]
    seen: set[str] = set()
    for table in tables:
        events, _ = worker.collapse([table])
        for (shard, start), pane in worker.compare(events).tables:
            times = pane.column("event_time").to_pylist()
            users = set(pane.column("user_id").to_pylist())
            assert {u % 3 for u in users} == {shard}
            day = datetime.fromtimestamp(start / 1e6, UTC)
            assert all(t.date() == day.date() for t in times)  # the default 60 s windows: panes are days
            windows = set(TumblingWindows(60).starts(pane.column("event_time")).tolist())
            assert all(start <= w < start + 86_400_000_000 for w in windows)
            seen.update(pane.column("event_id").to_pylist())
    worker.close()
    assert len(seen) == 60


def test_the_parquet_sink_drops_internal_columns_and_names_files_by_its_policy(tmp_path: Path) -> None:
    sink = ParquetSink(tmp_path, schemas.dataset("rate_limit_violations"), RunFileNames("cafe"))
    schema = schemas.arrow_schema("rate_limit_violations")
    start = datetime(2025, 7, 1, 23, 59, tzinfo=UTC)
    rows = pa.table(
        {
            "user_id": [1],
            "ai_tier": ["free"],
            "window_start": pa.array([start], pa.timestamp("us", tz="UTC")),
            "window_end": pa.array([start], pa.timestamp("us", tz="UTC")),
            "request_count": [3],
            "quota": [2],
            "limited_count": [1],
            "_internal": ["dropped"],
        }
    )
    written = sink.write("0003-20250701T000000", rows)
    assert written.counts == {"parquet_rows.rate_limit_violations": 1} and written.refused == ()
    (path,) = (tmp_path / "rate_limit_violations").glob("dt=*/*.parquet")
    assert path.relative_to(tmp_path).as_posix() == (
        "rate_limit_violations/dt=2025-07-01/part-cafe-0003-20250701T000000.parquet"
    )
    assert pq.read_table(path).schema == schema


def test_a_worker_releases_its_database_connections_when_it_ends(
    tmp_path: Path, mysql_db: MySQLDatabase
) -> None:
    engine = open_engine(mysql_db.root_url)
    upgrade(engine)
    engine.dispose()
    worker = SpineWorker(plan_for(tmp_path, mysql_db.root_url))
    run_stages(worker, [line(f"e{i}", "2025-07-01T10:00:00Z", user=i) for i in range(20)])

    def connections() -> int:
        sql = "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE DB = %s"
        rows = mysql_db.query(sql, mysql_db.name)
        return int(rows[0][0]) - 1  # less the query's own

    assert connections() >= 1  # the worker's pool holds its connections between batches
    worker.close()
    assert connections() == 0


@pytest.mark.parametrize("window_seconds", [60, 3600, 86_400, 25_200, 7 * 86_400])
def test_panes_nest_whole_rate_limit_windows(tmp_path: Path, window_seconds: int) -> None:
    plan = plan_for(tmp_path, "sqlite://")
    plan = RunPlan(**{**plan.__dict__, "config": PipelineConfig(window_seconds=window_seconds)})
    pane = plan.panes.size_seconds
    assert pane % window_seconds == 0 and pane % 86_400 == 0


#: What each layer must not import: no engine below pipelines/, and transforms/ stays pure (it
#: receives models and IO as callables).
FORBIDDEN_IMPORTS = {
    "transforms": (
        "pipelines",
        "apache_beam",
        "bytewax",
        "connectors",
        "models",
        "torch",
        "sentence_transformers",
    ),
    "connectors": ("pipelines", "apache_beam", "bytewax", "models"),
    "models": ("pipelines", "apache_beam", "bytewax", "connectors", "transforms"),
}


def test_the_layers_import_as_the_design_says() -> None:
    """transforms/, connectors/ and models/ import no engine and nothing from pipelines/ (DESIGN.md,
    Engines): a stage or sink is usable by any engine adapter; transforms/ gets models as callables."""
    import ast

    root = Path(__file__).resolve().parent.parent
    for package, forbidden in FORBIDDEN_IMPORTS.items():
        for path in (root / package).glob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                names = (
                    [node.module or ""]
                    if isinstance(node, ast.ImportFrom)
                    else [a.name for a in node.names]
                    if isinstance(node, ast.Import)
                    else []
                )
                for name in names:
                    top = name.split(".")[0]
                    assert top not in forbidden, f"{package}/{path.name} imports {name}"


def test_conflicts_found_at_write_time_leave_through_beam_as_dead_letters(tmp_path: Path) -> None:
    """The Beam adapter's write step gathers panes and writes at the end of a bundle; a conflict
    the audit sink finds then still reaches the dead-letter output, with the rest written."""
    from connectors.inputs import discover_inputs, plan_splits
    from pipelines import beam

    audit_url = f"sqlite:///{tmp_path / 'audit.sqlite'}"
    upgrade(open_engine(audit_url))
    # Another run stored "c" with another payload after this run looked at the store.
    other = SpineWorker(plan_for(tmp_path / "other", audit_url))
    run_stages(other, [line("c", "2025-07-01T10:00:00Z", user=3)])
    other.close()
    data = tmp_path / "in.jsonl"
    data.write_bytes(
        b"\n".join([line("a", "2025-07-01T10:00:00Z"), line("c", "2025-07-01T10:00:05Z")]) + b"\n"
    )
    plan = dataclasses.replace(plan_for(tmp_path, audit_url), compare_with_store=False)
    files = discover_inputs([str(data)], tmp_path / "stdin.jsonl")
    counts = beam.run(plan_splits(files, 1 << 20), plan, str(tmp_path / "staging"), [])

    assert (counts["events_read"], counts["events_processed"], counts["events_dead_lettered"]) == (2, 1, 1)
    (letter,) = read_dataset(tmp_path / "out", "dead_letter", "line_no")
    assert (letter["reason"], letter["event_id"], letter["line_no"]) == ("conflicting_duplicate", "c", 2)
    assert "another run at the same time" in letter["detail"]
    # Its raw record, left behind after dedup, was read back from the first shuffle's files.
    assert letter["raw"] == line("c", "2025-07-01T10:00:05Z")
    assert [e["event_id"] for e in read_dataset(tmp_path / "out", "events", "event_id")] == ["a"]
