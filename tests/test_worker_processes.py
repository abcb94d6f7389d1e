"""A large input runs on one DirectRunner worker process per core, with the outputs of one process
and a progress bar that counts bytes."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from pipelines.batch_run import RunRequest, _beam_import_noise, run_batch
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
