"""Benchmark inputs: generated JSONL files cached by size and seed, and their contract-valid copies.

Generating a million events takes a while, so a file is made once per ``(n, seed)`` under the
data directory and reused. The generator writes its manifest after the file, so a file without a
manifest (an interrupted run) is made again.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

import schemas
from connectors.config import PipelineConfig
from connectors.images import FolderImageLoader
from loadgen.generate import generate_events, manifest_path
from pipelines.stages import build_enrich_settings
from transforms.event_batch import InputRecords, enrich_records, in_flight_schema

_CHECK_BATCH_LINES = 10_000


@dataclass(frozen=True)
class EventFile:
    """A generated input and what its manifest says it holds."""

    path: Path
    manifest: dict[str, Any]

    @property
    def lines(self) -> int:
        """Lines in the file, which is a run's ``events_read`` (the generator writes no blanks)."""
        return int(self.manifest["lines"])


def event_file(data_dir: Path, n: int, seed: int) -> EventFile:
    """The JSONL file of ``n`` events for ``seed`` (default duplicate and bad rates), made once."""
    path = data_dir / f"events-n{n}-seed{seed}.jsonl"
    manifest = manifest_path(path)
    if not (path.exists() and manifest.exists()):
        print(f"generating {n:,} events (seed {seed}) into {path} ...", flush=True)
        data_dir.mkdir(parents=True, exist_ok=True)
        manifest.unlink(missing_ok=True)
        generate_events(n, path, seed=seed)
    content = orjson.loads(manifest.read_bytes())
    if content["lines"] != n or content["arguments"]["seed"] != seed:
        raise ValueError(f"{manifest} does not describe n={n}, seed={seed}; delete it and rerun")
    return EventFile(path, content)


def contract_valid_copy(source: EventFile) -> tuple[Path, int]:
    """A copy of ``source`` holding only the lines the spine's first stage accepts; its line count.

    Lines are judged by the pipeline's own ``enrich_records`` (parse, validate, image, price), so
    duplicates stay (they are valid lines) and every other dead-letter kind goes. Made once.
    """
    copy = source.path.with_name(source.path.stem + ".contract-valid.jsonl")
    if copy.exists():
        with copy.open("rb") as fh:
            return copy, sum(1 for _ in fh)
    print(f"writing the contract-valid lines of {source.path.name} to {copy.name} ...", flush=True)
    settings = build_enrich_settings(PipelineConfig(shards=1))
    loader = FolderImageLoader(str(source.path.parent), settings.rules.image_max_bytes)
    schema = in_flight_schema(schemas.arrow_schema("events"))
    kept = 0
    temporary = copy.with_name(f".{copy.name}.{os.getpid()}.tmp")
    with source.path.open("rb") as src, temporary.open("wb") as dst:
        numbered = enumerate(src, start=1)
        while batch := list(itertools.islice(numbered, _CHECK_BATCH_LINES)):
            records = InputRecords(
                source.path.name, 0, [n for n, _ in batch], [line.rstrip(b"\r\n") for _, line in batch]
            )
            enriched = enrich_records(records, settings, loader, schema)
            rejected = {letter.line_no for letter in enriched.dead_letters}
            accepted = [line for n, line in batch if n not in rejected]
            dst.writelines(accepted)
            kept += len(accepted)
    os.replace(temporary, copy)
    return copy, kept
