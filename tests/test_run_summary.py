"""The run summary has one definition, ``RunSummary``: the file a run writes matches the JSON Schema
in ``schemas/``, reads back into the same value, and a file that is not a summary is refused with
one line naming the file and the place at fault."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import given
from hypothesis import strategies as st

import schemas
from connectors.config import PipelineConfig
from loadgen.generate import generate_events
from pipelines import summary as summary_module
from pipelines.batch_run import RunRequest, run_batch
from pipelines.summary import InputSummary, RunSummary, SummaryError
from transforms.dead_letter import Reason

REGENERATE = "python -m pipelines.summary > schemas/run_summary.schema.json"


@pytest.fixture(scope="module")
def real_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[RunSummary, Path]:
    """A run over generated events (duplicates and bad lines included): what it returned, and its file."""
    base = tmp_path_factory.mktemp("summary")
    generate_events(300, base / "events.jsonl", seed=5)
    returned = run_batch(
        RunRequest(
            inputs=[str(base / "events.jsonl")],
            out_dir=base / "out",
            overrides={"embeddings": False, "moderation": False},
        )
    )
    (written,) = (base / "out" / "_runs").glob("*.json")
    return returned, written


def test_the_schema_file_is_the_one_the_type_generates() -> None:
    assert schemas.run_summary_json_schema() == summary_module.json_schema(), f"stale: run `{REGENERATE}`"


def test_a_real_run_summary_matches_the_json_schema(real_run: tuple[RunSummary, Path]) -> None:
    _, written = real_run
    data = json.loads(written.read_text())
    jsonschema.Draft202012Validator.check_schema(schemas.run_summary_json_schema())
    jsonschema.validate(data, schemas.run_summary_json_schema(), cls=jsonschema.Draft202012Validator)
    assert data["dead_letters_by_reason"] and data["duplicates_collapsed"] > 0  # every part exercised


def test_a_real_run_summary_reads_back_into_what_the_run_returned(real_run: tuple[RunSummary, Path]) -> None:
    returned, written = real_run
    loaded = RunSummary.load(written)
    assert loaded == returned
    assert loaded.to_json() == written.read_text()  # byte for byte, key order included


def test_the_file_keeps_the_keys_runs_have_always_written(real_run: tuple[RunSummary, Path]) -> None:
    _, written = real_run
    data = json.loads(written.read_text())
    assert list(data) == [
        *("run_id", "engine", "engine_args", "started_at", "finished_at", "seconds", "events_read"),
        *("events_processed", "events_dead_lettered", "duplicates_collapsed", "rate_limited"),
        *("late_events", "unpriced_events", "cost_total", "rate_limit_violations", "audit_rows_inserted"),
        *("embedding_cache_hits", "embedding_cache_misses", "embeddings_written", "user_features_written"),
        *("decisions_approved", "decisions_flagged", "decisions_rejected", "moderation_rows_written"),
        "decision_rows_changed",
        *("blank_lines", "dead_letters_by_reason", "events_per_second", "inputs", "inputs_fingerprint"),
        *("out_dir", "audit_db", "audit_schema_version", "config"),
    ]
    assert list(data["inputs"][0]) == ["path", "format", "gzip", "size", "sha256", "content_sha256"]
    assert list(data["config"]) == [
        "quotas",
        "window_seconds",
        "pricing",
        "hash_mode",
        "shards",
        "batch_size",
        "embeddings",
        "embedding_device",
        "features_window_seconds",
        "moderation",
        "flag_threshold",
        "reject_threshold",
        "strict_flag_threshold",
        "strict_reject_threshold",
        "allowed_lateness_seconds",
    ]
    assert isinstance(data["cost_total"], str) and Decimal(data["cost_total"]) > 0
    assert list(data["dead_letters_by_reason"]) == sorted(data["dead_letters_by_reason"])


# --- a file that is not a run summary ------------------------------------------------------------


def without(data: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k != key}


BROKEN = {
    "a key is missing": (lambda d: without(d, "events_read"), "at $: 'events_read' is a required property"),
    "an unknown key": (lambda d: {**d, "events_late": 0}, "'events_late' was unexpected"),
    "a count as text": (
        lambda d: {**d, "rate_limited": "12"},
        "at $.rate_limited: '12' is not of type 'integer'",
    ),
    "a negative count": (
        lambda d: {**d, "blank_lines": -1},
        "at $.blank_lines: -1 is less than the minimum of 0",
    ),
    "a count that is true": (lambda d: {**d, "late_events": True}, "at $.late_events: True is not of type"),
    "cost as a number": (lambda d: {**d, "cost_total": 1.5}, "at $.cost_total: 1.5 is not of type 'string'"),
    "cost not a decimal": (lambda d: {**d, "cost_total": "1,5"}, "at $.cost_total: '1,5' does not match"),
    "an unknown dead-letter reason": (
        lambda d: {**d, "dead_letters_by_reason": {"gremlins": d["events_dead_lettered"]}},
        "at $.dead_letters_by_reason: 'gremlins' is not one of",
    ),
    "a short fingerprint": (lambda d: {**d, "inputs_fingerprint": "abc"}, "at $.inputs_fingerprint: 'abc'"),
    "an input without its hash": (
        lambda d: {**d, "inputs": [without(d["inputs"][0], "sha256")]},
        "at $.inputs[0]: 'sha256' is a required property",
    ),
    "an unknown config key": (
        lambda d: {**d, "config": {**d["config"], "shard": 4}},
        "at $.config: Additional properties are not allowed ('shard' was unexpected)",
    ),
    "a config value of the wrong type": (
        lambda d: {**d, "config": {**d["config"], "shards": "16"}},
        "at $.config.shards: '16' is not of type 'integer'",
    ),
    "a time without a zone": (
        lambda d: {**d, "started_at": "2026-01-01T00:00:00.000"},
        "at $.started_at: '2026-01-01T00:00:00.000' has no time zone",
    ),
    "a time that is no time": (
        lambda d: {**d, "finished_at": "soon"},
        "at $.finished_at: 'soon' is not an ISO",
    ),
    "counts that do not add up": (
        lambda d: {**d, "events_read": d["events_read"] + 1},
        "invariant broken: events_read",
    ),
    "dead letters by reason that do not add up": (
        lambda d: {**d, "dead_letters_by_reason": {"malformed_json": 10**6}},
        "dead_letters_by_reason add up to 1000000, events_dead_lettered is",
    ),
    "not an object": (lambda d: [d], "holds a JSON array, not an object"),
}


@pytest.mark.parametrize("case", BROKEN)
def test_a_wrong_summary_file_is_refused_naming_the_file_and_the_place(
    tmp_path: Path, real_run: tuple[RunSummary, Path], case: str
) -> None:
    _, written = real_run
    original = json.loads(written.read_text())
    change, expected = BROKEN[case]
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(change(original)))
    with pytest.raises(SummaryError) as refusal:
        RunSummary.load(broken)
    message = str(refusal.value)
    assert message.startswith(f"run summary {str(broken)!r}: ")
    assert expected in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("content", "expected"),
    [(b"{", "is not JSON: Expecting"), (b"\xff", "is not JSON: "), (None, "cannot read run summary")],
)
def test_a_file_that_is_no_json_at_all_is_refused(
    tmp_path: Path, content: bytes | None, expected: str
) -> None:
    path = tmp_path / "run.json"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(SummaryError, match=expected):
        RunSummary.load(path)


def test_a_summary_whose_counts_do_not_add_up_cannot_be_built(real_run: tuple[RunSummary, Path]) -> None:
    returned, _ = real_run
    with pytest.raises(SummaryError, match="invariant broken: events_read"):
        dataclasses.replace(returned, duplicates_collapsed=returned.duplicates_collapsed + 1)


# --- any summary the type can hold survives the round trip ----------------------------------------

moments = st.datetimes(
    min_value=datetime(1970, 1, 2), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
).map(lambda t: t.replace(microsecond=t.microsecond // 1000 * 1000))
counts = st.integers(min_value=0, max_value=2**40)
hashes = st.text("0123456789abcdef", min_size=64, max_size=64)


@st.composite
def summaries(draw: st.DrawFn) -> RunSummary:
    started = draw(moments)
    by_reason = draw(st.dictionaries(st.sampled_from(list(Reason)), st.integers(1, 2**31), max_size=5))
    dead = sum(by_reason.values())
    processed, collapsed = draw(counts), draw(counts)
    formats = st.sampled_from(["jsonl", "csv", "parquet"])
    inputs = st.builds(InputSummary, st.text(), formats, st.booleans(), counts, hashes, hashes)
    return RunSummary(
        run_id=draw(st.text(min_size=1)),
        engine="beam",
        engine_args=tuple(draw(st.lists(st.text(), max_size=3))),
        started_at=started,
        finished_at=started + timedelta(milliseconds=draw(st.integers(0, 10**9))),
        seconds=draw(st.floats(0, 1e9, allow_nan=False)),
        events_read=processed + dead + collapsed,
        events_processed=processed,
        events_dead_lettered=dead,
        duplicates_collapsed=collapsed,
        rate_limited=draw(counts),
        late_events=0,
        unpriced_events=draw(counts),
        cost_total=Decimal(draw(st.integers(0, 10**18))).scaleb(-6),
        rate_limit_violations=draw(counts),
        audit_rows_inserted=draw(counts),
        embedding_cache_hits=draw(counts),
        embedding_cache_misses=draw(counts),
        embeddings_written=draw(counts),
        user_features_written=draw(counts),
        decisions_approved=draw(counts),
        decisions_flagged=draw(counts),
        decisions_rejected=draw(counts),
        moderation_rows_written=draw(counts),
        decision_rows_changed=draw(counts),
        blank_lines=draw(counts),
        dead_letters_by_reason=dict(sorted(by_reason.items())),
        events_per_second=draw(st.none() | counts),
        inputs=tuple(draw(st.lists(inputs, min_size=1, max_size=3))),
        inputs_fingerprint=draw(st.text("0123456789abcdef", min_size=16, max_size=16)),
        out_dir="/out",
        audit_db="sqlite:////out/audit.sqlite",
        audit_schema_version="0004_exact_keys_and_inputs",
        config=PipelineConfig(shards=draw(st.integers(1, 65_536))).summary_block(),
    )


@given(summaries())
def test_any_summary_reads_back_as_itself(summary: RunSummary) -> None:
    text = summary.to_json()
    jsonschema.validate(json.loads(text), schemas.run_summary_json_schema())
    assert RunSummary.from_dict(json.loads(text)) == summary


def test_a_run_leaves_the_collector_as_its_caller_had_it(tmp_path: Path) -> None:
    """The launcher pauses the garbage collector while the engine imports (``_run_locked``); a
    process that runs many runs gets it back as it was: on and thawed, or paused and frozen."""
    import gc

    generate_events(30, tmp_path / "events.jsonl", seed=6)

    def run(out: str) -> None:
        run_batch(
            RunRequest(
                inputs=[str(tmp_path / "events.jsonl")],
                out_dir=tmp_path / out,
                overrides={"embeddings": False, "moderation": False},
            )
        )

    assert gc.isenabled() and gc.get_freeze_count() == 0
    run("on")
    assert gc.isenabled() and gc.get_freeze_count() == 0
    gc.disable()
    gc.freeze()
    frozen = gc.get_freeze_count()
    try:
        run("paused")
        # Still frozen (objects freed since leave the count), and nothing more frozen.
        assert not gc.isenabled() and 0 < gc.get_freeze_count() <= frozen
    finally:
        gc.unfreeze()
        gc.enable()
