"""What a cluster's workers install is the wheel (``pip wheel .``, the worker image's content): it
must carry every file the code reads, load its models from there, and run the pipeline with no
source tree."""

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


def test_the_wheel_carries_every_file_the_packages_hold_loads_its_models_and_runs_alone(
    tmp_path: Path,
) -> None:
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
    # What a worker reads from the package: the moderation weights, the data-quality suites, the
    # MiniLM model (from its own package); every module from the unpacked wheel, none from ROOT.
    probe = (
        "import runner, pipelines.beam, models.moderation_text as m, analytics.quality_suites as q, "
        "models.embedder as e\n"
        "m.TextModerator.load(); assert q.load_suites()\n"
        "assert e.TextEmbedder()(['a worker']).shape == (1, 384)\n"
        "print(runner.__file__, pipelines.beam.__file__, m.__file__, q.__file__)"
    )
    where = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=work, env=env, timeout=300
    )
    assert where.returncode == 0, where.stderr
    assert all(Path(path).is_relative_to(site) for path in where.stdout.split()), where.stdout

    # The run itself, models off (they cost a minute; their files were loaded above).
    run = subprocess.run(
        [sys.executable, "-m", "runner", "run", "--input", events, "--out", work / "out", "--no-progress",
         "--no-embeddings", "--no-moderation"],
        capture_output=True, text=True, cwd=work, env=env, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    (summary_file,) = (work / "out" / "_runs").glob("*.json")
    summary = json.loads(summary_file.read_text())
    assert summary["events_read"] == 60 and summary["events_processed"] > 0
