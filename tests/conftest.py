"""Shared fixtures: run the pipeline the way users do, and read its outputs back independently."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pytest

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@dataclass
class CliResult:
    """What a ``runner.py`` process did: exit code, output, and the run summary if one was written."""

    returncode: int
    stdout: str
    stderr: str
    out_dir: Path | None

    def summary(self) -> dict[str, Any]:
        assert self.out_dir is not None
        runs = sorted((self.out_dir / "_runs").glob("*.json"), key=lambda p: p.stat().st_mtime)
        assert runs, f"no run summary in {self.out_dir}; stderr:\n{self.stderr}"
        return json.loads(runs[-1].read_text())


def run_cli(
    *args: str | Path,
    cwd: Path | None = None,
    stdin: bytes | None = None,
    env: dict[str, str] | None = None,
    out_dir: Path | None = None,
) -> CliResult:
    """Run ``runner.py`` in a fresh process, exactly as a user would."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "runner.py"), *map(str, args)],
        cwd=cwd or ROOT,
        input=stdin if stdin is not None else b"",
        capture_output=True,
        env={**os.environ, **(env or {})},
        timeout=600,
    )
    return CliResult(proc.returncode, proc.stdout.decode(), proc.stderr.decode(), out_dir)


def run_pipeline(
    inputs: list[Path | str],
    out_dir: Path,
    *extra: str,
    cwd: Path | None = None,
    stdin: bytes | None = None,
    env: dict[str, str] | None = None,
) -> CliResult:
    """``runner.py run --input ... --out out_dir extra...``; fails the test unless it exits 0."""
    result = run_cli(
        "run", "--input", *inputs, "--out", out_dir, *extra, cwd=cwd, stdin=stdin, env=env, out_dir=out_dir
    )
    assert result.returncode == 0, f"run failed ({result.returncode}):\n{result.stderr}"
    return result


def read_dataset(out_dir: Path, dataset: str, order_by: str) -> list[dict[str, Any]]:
    """Every row of a Parquet dataset, read by DuckDB with Hive partitioning (``dt`` included)."""
    files = list((out_dir / dataset).glob("dt=*/*.parquet"))
    if not files:
        return []
    pattern = str(out_dir / dataset / "dt=*" / "*.parquet")
    con = duckdb.connect()
    cur = con.execute(
        f"SELECT * FROM read_parquet('{pattern}', hive_partitioning = true) ORDER BY {order_by}"
    )
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


@pytest.fixture(scope="session")
def png_bytes() -> bytes:
    """A small real PNG."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 90)).save(buffer, format="PNG")
    return buffer.getvalue()
