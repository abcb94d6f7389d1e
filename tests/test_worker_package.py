"""What a cluster's workers install is the wheel (``pip wheel .``, the worker image's content): it
must carry every file the code reads, and run the pipeline, every stage on, with no source tree."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

from tests.conftest import ROOT, run_cli

PACKAGES = ("transforms", "connectors", "pipelines", "schemas", "loadgen", "models", "analytics")


def _wheel(tmp_path: Path) -> Path:
    tmp_path.mkdir()
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            tmp_path,
            ROOT,
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = tmp_path.glob("*.whl")
    return wheel


def test_the_wheel_carries_every_file_the_packages_hold_and_runs_alone(tmp_path: Path) -> None:
    wheel = _wheel(tmp_path / "dist")
    names = set(zipfile.ZipFile(wheel).namelist())
    tracked = subprocess.run(
        ["git", "ls-files", *PACKAGES], capture_output=True, text=True, cwd=ROOT, check=True
    ).stdout.split()
    missing = sorted(name for name in tracked if name not in names)
    assert not missing, f"files of the packages missing from the wheel: {missing}"
    assert "runner.py" in names

    # Unpacked alone, outside the source tree: the run must import and read nothing from ROOT.
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    events = tmp_path / "events.jsonl"
    assert run_cli("generate", "--events", "60", "--out", events, "--seed", "3", "--images").returncode == 0
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1"}
    where = subprocess.run(
        [
            sys.executable,
            "-c",
            "import runner, pipelines.beam, models.moderation_text as m; "
            "print(runner.__file__); print(pipelines.beam.__file__); print(m.__file__)",
        ],
        capture_output=True,
        text=True,
        cwd=work,
        env=env,
        check=True,
    ).stdout.split()
    assert all(Path(path).is_relative_to(site) for path in where), where

    run = subprocess.run(
        [sys.executable, "-m", "runner", "run", "--input", events, "--out", work / "out", "--no-progress"],
        capture_output=True,
        text=True,
        cwd=work,
        env=env,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr
    (summary_file,) = (work / "out" / "_runs").glob("*.json")
    summary = json.loads(summary_file.read_text())
    assert summary["events_read"] == 60
    assert summary["embeddings_written"] > 0
    assert summary["moderation_rows_written"] > 0
    assert summary["user_features_written"] > 0
