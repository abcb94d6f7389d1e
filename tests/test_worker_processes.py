"""A large input runs on one DirectRunner worker process per core, with the outputs of one process
and a progress bar that counts bytes; the worker processes run ``pipelines.sdk_worker``."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import apache_beam as beam
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions
from apache_beam.testing.util import assert_that

from pipelines.batch_run import RunRequest, _beam_import_noise, run_batch
from pipelines.beam import _runner
from tests.test_inputs import generate, run_outputs

#: ``split_mb = 1`` makes a few MiB of input a large one (SPLITS_PER_PROCESS splits per process).
OVERRIDES = {"embeddings": False, "moderation": False, "split_mb": 1}


def test_a_large_input_runs_on_a_worker_process_per_core_with_the_outputs_of_one(tmp_path: Path) -> None:
    source = generate(tmp_path / "events.jsonl", 18_000, 5)
    size = source.stat().st_size
    assert size > 8 << 20  # 8 splits of 1 MiB or more: two processes of four
    reports: list[tuple[int | None, int]] = []
    spread = run_batch(
        RunRequest(inputs=[str(source)], out_dir=tmp_path / "spread", overrides=OVERRIDES),
        on_progress=lambda done, total: reports.append((done, total)),
    )
    one = run_batch(
        RunRequest(
            inputs=[str(source)],
            out_dir=tmp_path / "one",
            overrides=OVERRIDES,
            engine_args=("--direct_num_workers=1",),  # a choice of theirs: kept as it is
        )
    )
    # This machine has two cores (CI's too); on one, a run stays in one process whatever its size.
    processes = min(os.cpu_count() or 1, 2)  # 9 splits: at most 2 processes of 4 splits
    chosen = ("--direct_running_mode=multi_processing", f"--direct_num_workers={processes}")
    assert spread.engine_args == (chosen if processes > 1 else ())
    assert one.engine_args == ("--direct_num_workers=1",)
    spread_outputs, one_outputs = run_outputs(tmp_path / "spread"), run_outputs(tmp_path / "one")
    for outputs in (spread_outputs, one_outputs):
        del outputs["summary"]["engine_args"]
    assert spread_outputs == one_outputs
    assert spread.events_read == 18_000
    # The worker processes' bytes reach the bar: it counts up, and ends at every byte.
    assert reports[-1] == (size, size)
    assert all(done is not None and done <= size for done, _ in reports)


def test_only_beams_apitools_warning_is_filtered_from_the_root_logger() -> None:
    def record(name: str, msg: str) -> logging.LogRecord:
        return logging.LogRecord(name, logging.WARNING, __file__, 1, msg, None, None)

    beam_noise = "apitools not found, and bigquery client libraries are not available"
    assert not _beam_import_noise(record("root", beam_noise))
    assert _beam_import_noise(record("root", "no users table: creating a minimal users table"))
    assert _beam_import_noise(record("aiep.run", beam_noise))  # another logger's: kept


class _WhereAmI(beam.DoFn):  # type: ignore[misc]
    """Each element → (the element, the module the worker process was started as, its pid)."""

    def process(self, element: int) -> Iterator[tuple[int, str, int]]:
        main = sys.modules["__main__"]
        yield element, getattr(main.__spec__, "name", ""), os.getpid()


def test_worker_processes_run_the_projects_harness_entry_and_return_every_output() -> None:
    options = PipelineOptions(["--direct_running_mode=multi_processing", "--direct_num_workers=2"])
    with beam.Pipeline(runner=_runner(options), options=options) as pipeline:
        seen = pipeline | beam.Create(range(40)) | beam.Reshuffle() | beam.ParDo(_WhereAmI())
        rows = seen | beam.combiners.ToList()
        launcher = os.getpid()
        assert_that(rows, lambda found: _check_workers(found, set(range(40)), launcher))
    # The options are handed back as the run found them.
    assert options.view_as(DirectOptions).direct_running_mode == "multi_processing"


def _check_workers(found: list[list[tuple[int, str, int]]], expected: set[int], launcher: int) -> None:
    (rows,) = found
    assert {element for element, _, _ in rows} == expected
    assert {module for _, module, _ in rows} == {"pipelines.sdk_worker"}
    assert launcher not in {pid for _, _, pid in rows}


def test_a_failing_harness_exits_with_its_error() -> None:
    # No control service to reach: Beam's harness fails, and the process says so.
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_SERVICE_DESCRIPTOR")}
    done = subprocess.run(
        [sys.executable, "-m", "pipelines.sdk_worker"], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode != 0
    assert "CONTROL_API_SERVICE_DESCRIPTOR" in done.stderr


def test_the_worker_processes_imports_leave_out_the_stores_and_models_they_do_not_use() -> None:
    # Every worker process imports the pipeline before its first bundle; migrations (alembic), the
    # Redis client and the moderation models' scipy load only where a run uses them.
    unused = "{'alembic', 'redis', 'scipy', 'torch'}"
    probe = f"import sys, pipelines.beam; print(sorted({{m.split('.')[0] for m in sys.modules}} & {unused}))"
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True
    )
    assert done.stdout.strip() == "[]"
