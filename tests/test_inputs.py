"""Inputs: every format the planner accepts has a reader, readers say how much of an input they
went through in one unit (its content as read), so the progress bar never runs past its total,
and cutting an input into splits never changes what a run makes of it."""

from __future__ import annotations

import ast
import gzip
import json
import sqlite3
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import schemas
from connectors import inputs
from connectors.inputs import (
    FORMATS,
    GZIP_FORMATS,
    LINE_SPLIT_FORMATS,
    InputError,
    InputFile,
    LineIndex,
    discover_inputs,
    plan_splits,
)
from connectors.readers import READERS, read_split
from pipelines.beam_options import balanced_split_bytes
from tests.conftest import ROOT, read_dataset, run_cli, run_pipeline
from tests.test_cli import event_line
from transforms.validate import EventRules

RULES = EventRules.from_json_schema(schemas.event_json_schema())
PACKAGES = ("connectors", "pipelines", "transforms", "schemas", "loadgen")


def test_every_format_the_planner_accepts_has_a_reader() -> None:
    assert set(FORMATS.values()) == set(READERS)
    assert set(READERS) >= GZIP_FORMATS | LINE_SPLIT_FORMATS


def project_imports() -> dict[str, set[str]]:
    """Each project module and the project modules it imports, at the top or inside a function."""
    modules = {f"{pkg}.{f.stem}": f for pkg in PACKAGES for f in (ROOT / pkg).glob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module:
                found |= {node.module, *(f"{node.module}.{alias.name}" for alias in node.names)}
            elif isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names}
        graph[name] = {module for module in found if module in modules and module != name}
    return graph


def test_no_module_imports_one_that_imports_it_back() -> None:
    graph = project_imports()
    for start in graph:
        path, seen = [start], {start}
        stack = [iter(sorted(graph[start]))]
        while stack:  # depth-first from start, reporting the first way back to it
            step = next(stack[-1], None)
            if step is None:
                stack.pop()
                path.pop()
                continue
            assert step != start, f"import cycle: {' -> '.join([*path, start])}"
            if step not in seen:
                seen.add(step)
                path.append(step)
                stack.append(iter(sorted(graph[step])))


def jsonl_content(n: int) -> bytes:
    """Lines as they come in the wild: a byte order mark, CRLF endings, blank lines."""
    lines = [event_line(f"j{i}").encode() for i in range(n)]
    lines[3] = lines[3].replace(b"\n", b"\r\n")
    lines[5:5] = [b"\n", b"   \n"]
    return b"\xef\xbb\xbf" + b"".join(lines)


def csv_content(n: int) -> bytes:
    rows = [f"c{i},2025-07-01T09:00:00Z,7,chat,gpt-4o,hello {i}\n" for i in range(n)]
    rows[4:4] = ["\n"]
    return ("event_id,event_time,user_id,operation_type,model,input.text\n" + "".join(rows)).encode()


def write_input(folder: Path, kind: str, n: int) -> Path:
    if kind == "parquet":
        ids = [f"p{i}" for i in range(n)]
        table = pa.table({"event_id": ids, "event_time": ["2025-07-01T09:00:00Z"] * n, "user_id": [7] * n,
                          "operation_type": ["chat"] * n, "model": ["gpt-4o"] * n})  # fmt: skip
        path = folder / "in.parquet"
        pq.write_table(table, path, row_group_size=7)
        return path
    content = jsonl_content(n) if kind.startswith("jsonl") else csv_content(n)
    path = folder / f"in.{kind}"
    path.write_bytes(gzip.compress(content) if kind.endswith(".gz") else content)
    return path


@pytest.mark.parametrize("kind", ["jsonl", "jsonl.gz", "csv", "csv.gz", "parquet"])
def test_a_readers_batches_cover_the_content_it_read_and_no_more(kind: str, tmp_path: Path) -> None:
    (file,) = discover_inputs([str(write_input(tmp_path, kind, 50))], tmp_path / "spool")
    if kind.endswith(".gz"):
        assert file.content_size == len(gzip.decompress(Path(file.path).read_bytes())) > file.size
    splits = plan_splits([file], split_bytes=1000)  # several splits of a plain JSONL input
    assert len(splits) > 1 if kind == "jsonl" else len(splits) == 1
    read, records = 0, 0
    for split in splits:
        for batch in read_split(split, 9, RULES):
            read += batch.bytes_read
            records += len(batch.raws)
            assert read <= file.content_size
    assert (read, records) == (file.content_size, 50)


def test_an_input_file_built_by_hand_counts_its_size_as_its_content() -> None:
    file = InputFile(0, "/in.jsonl", "in.jsonl", "jsonl", False, 123, "-", "/")
    assert file.content_size == 123


def generate(path: Path, events: int, seed: int) -> Path:
    rates = ("--dup-rate", "0.05", "--bad-rate", "0.03")  # duplicates and dead letters across splits
    result = run_cli("generate", "--events", events, "--out", path, "--seed", seed, *rates)
    assert result.returncode == 0, result.stderr
    return path


def test_the_progress_of_a_gzip_input_never_passes_its_total(tmp_path: Path) -> None:
    from pipelines.batch_run import RunRequest, run_batch

    packed = generate(tmp_path / "events.jsonl.gz", 6000, 3)
    reports: list[tuple[int, int]] = []
    summary = run_batch(
        RunRequest(
            inputs=[str(packed)],
            out_dir=tmp_path / "out",
            overrides={"embeddings": False, "moderation": False},
        ),
        on_progress=lambda done, total: reports.append((done, total)),
    )
    inflated = len(gzip.decompress(packed.read_bytes()))
    assert summary.events_read == 6000
    # The end: every byte read was counted, in the unit of the total, no more and no less.
    assert reports[-1] == (inflated, inflated)
    assert all(total == inflated and done <= total for done, total in reports)


def run_outputs(out: Path) -> dict[str, Any]:
    """What a run leaves, less what differs from run to run (ids, times, the run's own id)."""
    with sqlite3.connect(out / "audit.sqlite") as con:
        columns = [c[1] for c in con.execute("PRAGMA table_info(ai_audit_trail)") if c[1] != "id"]
        audit = con.execute(f"SELECT {', '.join(columns)} FROM ai_audit_trail ORDER BY event_id").fetchall()
    (summary_path,) = (out / "_runs").glob("*.json")
    summary = json.loads(summary_path.read_text())
    varying = {"run_id", "started_at", "finished_at", "seconds", "events_per_second", "out_dir", "audit_db"}
    return {
        "events": read_dataset(out, "events", "event_id"),
        "dead_letter": read_dataset(out, "dead_letter", "source, line_no, reason"),
        "rate_limit_violations": read_dataset(out, "rate_limit_violations", "user_id, window_start"),
        "files": sorted(str(p.relative_to(out)) for p in out.rglob("*.parquet")),
        "audit": audit,
        "summary": {k: v for k, v in summary.items() if k not in varying},
    }


def test_an_input_read_in_many_splits_gives_the_outputs_of_one_split(tmp_path: Path) -> None:
    source = generate(tmp_path / "events.jsonl", 8000, 17)
    assert source.stat().st_size > 3 << 20  # several 1 MiB splits
    configs = {}
    for name, split_mb in (("many", 1), ("one", 64)):
        configs[name] = tmp_path / f"{name}.toml"
        configs[name].write_text(f"[pipeline]\nsplit_mb = {split_mb}\n")
    (file,) = discover_inputs([str(source)], tmp_path / "spool")
    assert len(plan_splits([file], 1 << 20)) > 3 and len(plan_splits([file], 64 << 20)) == 1
    for name, config in configs.items():
        run_pipeline([source], tmp_path / name, "--config", config)
    outputs = run_outputs(tmp_path / "many")
    assert outputs["dead_letter"] and outputs["summary"]["duplicates_collapsed"] > 0
    assert outputs == run_outputs(tmp_path / "one")


@pytest.mark.parametrize("indexed", [False, True])
@pytest.mark.parametrize("lines", [7_777, 12_345])
def test_splits_sized_for_two_processes_come_out_a_multiple_of_two(
    lines: int, indexed: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Lines counted as the input is hashed, at points 64 KiB apart: many between two cuts.
    monkeypatch.setattr(inputs, "PLAN_CHUNK_BYTES", 64 << 10)
    source = generate(tmp_path / "events.jsonl", lines, lines)
    content = source.read_bytes()
    line_index: LineIndex = {}
    (file,) = discover_inputs([str(source)], tmp_path / "spool", line_index if indexed else None)
    assert (len(line_index[file.path]) == -(-file.size // (64 << 10))) if indexed else not line_index
    for split_bytes in (200 << 10, 300 << 10, 450 << 10, 3 << 20):
        assert max(map(len, content.splitlines())) < split_bytes // 2  # no line spans a cut
        asked = -(-file.size // split_bytes)
        size = balanced_split_bytes(file.size, split_bytes, cpus=2)
        splits = plan_splits([file], size, line_index)
        assert size <= split_bytes
        if asked >= 8:  # two processes of four splits or more: balanced
            assert len(splits) == asked + asked % 2
        else:
            assert size == split_bytes and len(splits) == asked
        # Whole lines, in order, with nothing left out and nothing read twice.
        assert [s.start for s in splits[1:]] == [s.end for s in splits[:-1]]
        assert splits[0].start == 0 and splits[-1].end == file.size
        assert all(content[s.start - 1 : s.start] == b"\n" for s in splits[1:])
        assert [s.first_line_no for s in splits] == [content[: s.start].count(b"\n") + 1 for s in splits]


@pytest.mark.parametrize("ending", [b"\n", b""])
def test_line_numbers_from_the_index_match_counting_every_line(
    ending: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Lines of every length, one of them longer than several points of the index and than a
    # split, and a last line with or without its newline.
    monkeypatch.setattr(inputs, "PLAN_CHUNK_BYTES", 1000)
    rows = [b"x" * (i * 37 % 700) for i in range(400)]
    rows[150] = b"y" * 9_000
    source = tmp_path / "events.jsonl"
    source.write_bytes(b"\n".join(rows) + ending)
    line_index: LineIndex = {}
    (file,) = discover_inputs([str(source)], tmp_path / "spool", line_index)
    content = source.read_bytes()
    for split_bytes in (1_500, 4_000, 20_000):
        splits = plan_splits([file], split_bytes, line_index)
        assert splits == plan_splits([file], split_bytes)  # the same as counting every line
        assert [s.first_line_no for s in splits] == [content[: s.start].count(b"\n") + 1 for s in splits]
        assert splits[-1].end == file.size


def test_an_input_that_shrinks_before_it_is_planned_is_an_error_not_a_hang(tmp_path: Path) -> None:
    source = generate(tmp_path / "events.jsonl", 2_000, 3)
    (file,) = discover_inputs([str(source)], tmp_path / "spool")
    source.write_bytes(source.read_bytes()[: file.size // 2])
    with pytest.raises(InputError, match="shrank while its splits were planned"):
        plan_splits([file], 64 << 10)
