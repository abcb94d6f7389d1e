"""The generator writes the load its manifest claims: byte for byte, and count for count.

Every count is recomputed from the file with the pipeline's own first stage
(``parse_record``/``validate_event`` inside ``enrich_records``), never taken from the generator.
What it cannot honour (rates over 1, an ``--out`` that is a folder, …) it refuses before writing,
on the command line in one line with exit status 2.
"""

from __future__ import annotations

import gzip
import os
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from PIL import Image

import runner
from connectors.config import PipelineConfig
from loadgen.bad_records import FILE_IMAGE_MAKERS, INLINE_MAKERS
from loadgen.events import UNPRICED_MODEL
from loadgen.generate import MAX_EVENTS, GenerateReport, generate_events, manifest_path
from pipelines.stages import build_enrich_settings
from schemas import arrow_schema, event_json_schema, pricing_rows, tier_table
from tests.conftest import run_cli
from transforms.dead_letter import ContractViolation, Reason
from transforms.event_batch import (
    ImageLoader,
    InputRecords,
    enrich_records,
    in_flight_schema,
)
from transforms.validate import EventRules, parse_record

RULES = EventRules.from_json_schema(event_json_schema())
SETTINGS = build_enrich_settings(PipelineConfig(shards=4))
SCHEMA = in_flight_schema(arrow_schema("events"))


def folder_loader(folder: Path) -> ImageLoader:
    """Reads path images the way the contract says: inside ``folder`` only, and only if there."""
    base = folder.resolve()

    def load(path: str) -> bytes:
        target = (base / path).resolve()
        if not target.is_relative_to(base):
            raise ContractViolation(Reason.PATH_OUTSIDE_INPUT, f"{path} leaves {base}")
        if not target.exists():
            raise ContractViolation(Reason.IMAGE_NOT_FOUND, f"{path} is not in {base}")
        if not target.is_file():
            raise ContractViolation(Reason.IMAGE_UNREADABLE, f"{path} is not a regular file in {base}")
        return target.read_bytes()

    return load


def read_lines(path: Path) -> list[bytes]:
    """The file's lines, without their newlines, gunzipped when the name ends in .gz."""
    data = path.read_bytes()
    if path.suffix == ".gz":
        data = gzip.decompress(data)
    assert data.endswith(b"\n")
    return data[:-1].split(b"\n")


class Outcome:
    """What the pipeline's first stage makes of a generated file."""

    def __init__(self, path: Path) -> None:
        self.lines = read_lines(path)
        records = InputRecords(str(path), 0, list(range(1, len(self.lines) + 1)), self.lines)
        batch = enrich_records(records, SETTINGS, folder_loader(path.parent), SCHEMA)
        self.reasons = Counter(str(d.reason) for d in batch.dead_letters)
        self.dead_ids = {d.event_id for d in batch.dead_letters if d.event_id}
        self.events = batch.events.to_pylist()
        self.valid = [parse_record(self.lines[row["line_no"] - 1], RULES) for row in self.events]


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> tuple[GenerateReport, Outcome]:
    out = tmp_path_factory.mktemp("load") / "events.jsonl"
    report = generate_events(4000, out, seed=11, dup_rate=0.03, bad_rate=0.03, images=True)
    return report, Outcome(out)


def test_same_seed_writes_byte_identical_files_and_another_seed_does_not(tmp_path: Path) -> None:
    paths = [tmp_path / name / "events.jsonl" for name in ("a", "b", "c")]
    for path, seed in zip(paths, (5, 5, 6), strict=True):
        generate_events(1500, path, seed=seed, images=True)
    a, b, c = (path.read_bytes() for path in paths)
    assert a == b
    assert a != c
    for image in sorted((paths[0].parent / "images").iterdir()):
        assert image.read_bytes() == (paths[1].parent / "images" / image.name).read_bytes()


def test_manifest_counts_add_up_to_the_lines_written(
    generated: tuple[GenerateReport, Outcome],
) -> None:
    report, outcome = generated
    manifest = orjson.loads(manifest_path(report.path).read_bytes())
    total = (
        report.valid_unique
        + report.exact_duplicates
        + report.conflicting_duplicates
        + sum(report.bad_by_reason.values())
    )
    assert len(outcome.lines) == report.lines == total == 4000
    assert manifest["lines"] == report.lines
    assert manifest["valid_unique"] == report.valid_unique
    assert manifest["exact_duplicates"] == report.exact_duplicates
    assert manifest["conflicting_duplicates"] == report.conflicting_duplicates
    assert manifest["bad_by_reason"] == report.bad_by_reason
    assert manifest["images_written"] == report.images_written


def test_every_bad_kind_gets_exactly_its_reason_code(
    generated: tuple[GenerateReport, Outcome],
) -> None:
    report, outcome = generated
    assert dict(outcome.reasons) == report.bad_by_reason
    every_kind = {str(reason) for reason in (*INLINE_MAKERS, *FILE_IMAGE_MAKERS)}
    assert set(report.bad_by_reason) == every_kind


def test_every_line_the_manifest_calls_valid_passes_the_contract(
    generated: tuple[GenerateReport, Outcome],
) -> None:
    report, outcome = generated
    copies = report.exact_duplicates + report.conflicting_duplicates
    assert len(outcome.events) == report.valid_unique + copies


def test_duplicates_are_counted_by_event_id_and_follow_their_original(
    generated: tuple[GenerateReport, Outcome],
) -> None:
    report, outcome = generated
    first_form: dict[str, bytes] = {}
    exact = conflicting = 0
    for obj in outcome.valid:  # in file order, so the first copy seen is the original
        form = orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)
        original = first_form.setdefault(obj["event_id"], form)
        if original is not form:
            exact += original == form
            conflicting += original != form
    assert len(first_form) == report.valid_unique
    assert (exact, conflicting) == (report.exact_duplicates, report.conflicting_duplicates)
    assert exact > 0 and conflicting > 0
    assert outcome.dead_ids.isdisjoint(first_form)


def test_some_free_user_exceeds_the_free_quota_within_one_window(
    generated: tuple[GenerateReport, Outcome],
) -> None:
    _, outcome = generated
    window = tier_table()["window_seconds"]
    unique = {row["event_id"]: row for row in outcome.events}.values()
    requests = Counter(
        (row["user_id"], int(row["event_time"].timestamp()) // window)
        for row in unique
        if row["ai_tier"] == "free"
    )
    assert max(requests.values()) > tier_table()["quotas"]["free"]


def test_every_model_appears_with_an_operation_that_fits_it(
    generated: tuple[GenerateReport, Outcome],
) -> None:
    _, outcome = generated
    operations: dict[str, set[str]] = {}
    for obj in outcome.valid:
        operations.setdefault(obj["model"], set()).add(obj["operation_type"])
        if obj["operation_type"] == "image_generation":
            assert obj["usage"]["images"] >= 1
        if obj["operation_type"] == "embedding":
            assert "output" not in obj
    models = {row["model"] for row in pricing_rows()} | {UNPRICED_MODEL}
    assert set(operations) == models
    assert operations["dall-e-3"] == {"image_generation"}
    assert operations["text-embedding-3-small"] == {"embedding"}
    assert operations["gpt-4o"] <= {"chat_completion", "text_generation"}


def test_times_are_zoned_unsorted_and_all_in_july_2025(
    generated: tuple[GenerateReport, Outcome],
) -> None:
    _, outcome = generated
    texts = [obj["event_time"] for obj in outcome.valid]
    times = [row["event_time"] for row in outcome.events]
    assert any(text.endswith("+02:00") for text in texts)
    assert sum(text.endswith("Z") for text in texts) > len(texts) / 2
    assert times != sorted(times)
    assert all(datetime(2025, 7, 1, tzinfo=UTC) <= t < datetime(2025, 8, 1, tzinfo=UTC) for t in times)


def test_load_mixes_tiers_metadata_empty_prompts_and_non_ascii_text(
    generated: tuple[GenerateReport, Outcome],
) -> None:
    _, outcome = generated
    valid: list[dict[str, Any]] = outcome.valid
    assert {obj.get("ai_tier") for obj in valid} == {"free", "pro", "enterprise", None}
    assert any("metadata" in obj for obj in valid)
    prompts = [obj.get("input", {}).get("text") for obj in valid]
    assert "" in prompts
    assert any(text and "\u0301" in text for text in prompts)  # a combining accent: NFD form
    assert any(text and not text.isascii() for text in prompts)


def test_image_files_are_real_pngs_that_events_name(
    generated: tuple[GenerateReport, Outcome],
) -> None:
    report, outcome = generated
    folder = report.path.parent / "images"
    files = sorted(folder.glob("img-*.png"))
    assert len(files) == report.images_written == 50
    for file in files:
        with Image.open(file) as image:
            assert image.format == "PNG"
            assert min(image.size) >= 16 and max(image.size) <= 64
    images = [obj["output"]["image"] for obj in outcome.valid if "image" in obj.get("output", {})]
    assert any("base64" in image for image in images)
    assert all((report.path.parent / image["path"]).is_file() for image in images if "path" in image)


def test_gzip_output_holds_the_same_lines_as_plain_output(tmp_path: Path) -> None:
    plain = generate_events(1500, tmp_path / "events.jsonl", seed=3)
    packed = generate_events(1500, tmp_path / "events.jsonl.gz", seed=3)
    assert gzip.decompress(packed.path.read_bytes()) == plain.path.read_bytes()
    assert manifest_path(packed.path).is_file()
    outcome = Outcome(packed.path)
    assert dict(outcome.reasons) == packed.bad_by_reason
    assert packed.images_written == 0


# --- the command line: every flag it cannot honour is one line and exit 2, before any write --

RATES_OVER_ONE = ("--dup-rate", "0.6", "--bad-rate", "0.6")


def generate_cli(capsys: pytest.CaptureFixture[str], out: Path, *flags: str) -> tuple[int, list[str]]:
    """``runner.py generate --events 100 --out OUT FLAGS...`` in this process: exit code, stderr lines."""
    code = runner.main(["generate", "--events", "100", "--out", str(out), *flags])
    return code, capsys.readouterr().err.splitlines()


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (RATES_OVER_ONE, ["--dup-rate", "--bad-rate"]),
        (("--bad-rate", "1"), ["--dup-rate", "--bad-rate"]),  # with the default --dup-rate 0.02
        (("--dup-rate", "-0.1"), ["--dup-rate"]),
        (("--bad-rate", "1.5"), ["--bad-rate"]),
        (("--dup-rate", "nan"), ["--dup-rate"]),
        (("--bad-rate", "inf"), ["--bad-rate"]),
        (("--events", "-1"), ["--events"]),
        (("--events", str(MAX_EVENTS + 1)), ["--events"]),
        (("--seed", str(2**64)), ["--seed"]),  # past what the manifest's JSON integer holds
        (("--seed", str(-(2**63) - 1)), ["--seed"]),
    ],
)
def test_values_generate_cannot_honour_are_one_line_naming_their_flags_and_exit_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, flags: tuple[str, ...], named: list[str]
) -> None:
    code, stderr = generate_cli(capsys, tmp_path / "x.jsonl", *flags)
    assert code == 2
    (line,) = stderr
    assert line.startswith("runner.py generate: error: argument")
    assert all(flag in line for flag in named), line
    assert list(tmp_path.iterdir()) == []  # refused before anything was written


def test_out_that_is_a_folder_is_refused(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, stderr = generate_cli(capsys, tmp_path)
    assert code == 2
    (line,) = stderr
    assert "argument --out:" in line and "is a folder" in line


def test_out_inside_a_file_is_refused(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "plain").write_text("a file, not a folder\n")
    code, stderr = generate_cli(capsys, tmp_path / "plain" / "deeper" / "x.jsonl")
    assert code == 2
    (line,) = stderr
    assert "argument --out:" in line and f"{tmp_path / 'plain'} is not a folder" in line


def test_out_whose_manifest_path_is_a_folder_is_refused_before_writing(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    manifest_path(tmp_path / "x.jsonl").mkdir()
    code, stderr = generate_cli(capsys, tmp_path / "x.jsonl")
    assert code == 2
    (line,) = stderr
    assert "argument --out:" in line and "manifest" in line
    assert not (tmp_path / "x.jsonl").exists()


def test_images_beside_a_file_named_images_are_refused(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "images").write_text("a file where the PNG folder goes\n")
    code, stderr = generate_cli(capsys, tmp_path / "x.jsonl", "--images")
    assert code == 2
    (line,) = stderr
    assert "arguments --out and --images:" in line


def test_out_that_is_not_utf8_is_refused_because_the_manifest_records_it(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, stderr = generate_cli(capsys, tmp_path / os.fsdecode(b"\xff.jsonl"))
    assert code == 2
    (line,) = stderr
    assert "argument --out:" in line and "not UTF-8" in line
    assert list(tmp_path.iterdir()) == []


def test_out_the_system_cannot_write_fails_in_one_line_with_exit_1(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, stderr = generate_cli(capsys, Path("/proc/aiep-cannot-write.jsonl"))
    assert code == 1
    assert stderr == ["error: cannot write --out /proc/aiep-cannot-write.jsonl: No such file or directory"]


def test_missing_folders_of_out_are_created(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out = tmp_path / "new" / "deeper" / "x.jsonl"
    code, stderr = generate_cli(capsys, out, "--images")
    assert (code, stderr) == (0, [])
    assert len(read_lines(out)) == 100
    assert len(list((out.parent / "images").glob("*.png"))) == 50


def test_zero_events_write_an_empty_file_and_its_manifest(tmp_path: Path) -> None:
    report = generate_events(0, tmp_path / "x.jsonl")
    assert report.path.read_bytes() == b""
    assert orjson.loads(manifest_path(report.path).read_bytes())["lines"] == 0


def test_a_rate_of_one_makes_every_line_of_its_kind(tmp_path: Path) -> None:
    report = generate_events(200, tmp_path / "x.jsonl", dup_rate=0.0, bad_rate=1.0)
    assert sum(report.bad_by_reason.values()) == report.lines == 200
    assert dict(Outcome(report.path).reasons) == report.bad_by_reason


def test_the_reported_crash_is_now_one_line_and_exit_2(tmp_path: Path) -> None:
    result = run_cli("generate", "--events", "100", "--out", tmp_path / "x.jsonl", *RATES_OVER_ONE)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "runner.py generate: error: arguments --dup-rate and --bad-rate: must add up to at most 1 "
        "(each line is of one kind), got 0.6 + 0.6"
    ]
