"""Reads that end and memory that stays bounded, whatever the input: a line longer than any valid
event is cut off while it is read (never held whole) and becomes ``line_too_long``."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT, read_dataset, run_pipeline

LINE_MIB = 512
#: A run of a few events takes ~240 MB here (Beam, Arrow, the interpreter); holding the line would
#: take LINE_MIB more, at least.
PEAK_RSS_LIMIT_MB = 400


def event_line(event_id: str) -> bytes:
    event = {"event_id": event_id, "event_time": "2025-07-01T12:00:00Z", "user_id": 5,
             "operation_type": "chat", "model": "gpt-4o"}  # fmt: skip
    return json.dumps(event).encode() + b"\n"


def peak_rss_mb(*args: str | Path) -> tuple[int, float]:
    """Run ``runner.py args`` in a fresh parent; return its exit code and its peak RSS in MB."""
    probe = (
        "import resource, subprocess, sys; "
        "code = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode; "
        "print(code, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe, sys.executable, str(ROOT / "runner.py"), *map(str, args)],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    code, kib = result.stdout.split()
    return int(code), int(kib) / 1024


def test_a_gzip_that_inflates_to_one_huge_line_is_cut_while_read(tmp_path: Path) -> None:
    source = tmp_path / "bomb.jsonl.gz"
    with gzip.open(source, "wb", compresslevel=1) as fh:
        fh.write(event_line("before"))
        fh.write(b'{"event_id": "huge", "metadata": {"blob": "')
        block = b"a" * (1 << 20)
        for _ in range(LINE_MIB):
            fh.write(block)
        fh.write(b'"}}\n')
        fh.write(event_line("after"))
    assert source.stat().st_size < 4 << 20  # small on disk

    code, peak = peak_rss_mb(
        "run",
        "--input",
        source,
        "--out",
        tmp_path / "out",
        "--no-progress",
        "--no-embeddings",
        "--no-moderation",
    )
    assert code == 0
    assert peak < PEAK_RSS_LIMIT_MB, f"peak RSS {peak:.0f} MB: the line was held in memory"
    events = [e["event_id"] for e in read_dataset(tmp_path / "out", "events", "event_id")]
    assert events == ["after", "before"]
    (letter,) = read_dataset(tmp_path / "out", "dead_letter", "line_no")
    assert (letter["line_no"], letter["reason"], letter["raw_truncated"]) == (2, "line_too_long", True)
    assert bytes(letter["raw"]).startswith(b'{"event_id": "huge"') and len(letter["raw"]) == 1 << 20
    read, _, limit = letter["detail"].partition(
        " bytes read for one record (line ends included); the limit is "
    )
    assert int(read) > LINE_MIB << 20 > int(limit)


def test_a_huge_line_across_split_boundaries_keeps_every_other_line_and_its_number(tmp_path: Path) -> None:
    source = tmp_path / "big.jsonl"
    with source.open("wb") as fh:
        for i in range(3):
            fh.write(event_line(f"a{i}"))
        fh.write(b'{"event_id": "huge", "metadata": "' + b"b" * (40 << 20) + b'"}\n')
        for i in range(3):
            fh.write(event_line(f"z{i}"))
    config = tmp_path / "small-splits.toml"
    config.write_text("[pipeline]\nsplit_mb = 1\n")  # the line spans dozens of splits
    summary = run_pipeline([source], tmp_path / "out", "--config", config).summary()
    assert (summary["events_read"], summary["events_processed"]) == (7, 6)
    events = {e["event_id"]: e["line_no"] for e in read_dataset(tmp_path / "out", "events", "event_id")}
    assert events == {"a0": 1, "a1": 2, "a2": 3, "z0": 5, "z1": 6, "z2": 7}
    (letter,) = read_dataset(tmp_path / "out", "dead_letter", "line_no")
    assert (letter["line_no"], letter["reason"]) == (4, "line_too_long")
