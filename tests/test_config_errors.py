"""A pricing table or a config file that is wrong is never used: the run refuses before it starts,
with one line naming the file and the row and column (or key) at fault.

The tests of each key's values are parametrised over ``PipelineConfig.settings()``, the config's one
definition, so a key added there is tested here without a line changed.
"""

from __future__ import annotations

import json
import os
import tomllib
from decimal import Decimal
from pathlib import Path

import pytest

import schemas
from connectors.config import ConfigError, PipelineConfig, Setting, example_toml, load_config
from schemas import PRICING_COLUMNS
from tests.conftest import run_cli, run_pipeline

HEADER = ",".join(PRICING_COLUMNS)
EVENT = (
    '{"event_id": "e1", "event_time": "2025-07-01T00:00:00Z", "user_id": 1, "operation_type": "chat", '
    '"model": "gpt-4o", "usage": {"input_tokens": 1000}}\n'
)


def refused(tmp_path: Path, config_text: str, pricing: str | bytes | None = None) -> str:
    """Run with this config (and pricing table); assert it fails in one line; return that line."""
    if pricing is not None:
        table = tmp_path / "prices.csv"
        table.write_bytes(pricing if isinstance(pricing, bytes) else pricing.encode())
        config_text = '[pricing]\npath = "prices.csv"\n' + config_text
    config = tmp_path / "config.toml"
    config.write_text(config_text)
    (tmp_path / "in.jsonl").write_text(EVENT)
    result = run_cli("run", "--input", tmp_path / "in.jsonl", "--out", tmp_path / "out", "--config", config)
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert not (tmp_path / "out" / "events").exists()  # refused before anything was written
    return lines[0]


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        # A row cut short: its missing cells are not prices of 0.
        ("gpt-4o,2024-05-13", "row 2, column input_per_1k_usd: the cell is missing"),
        ("gpt-4o,2024-05-13,0.005,0.015", "row 2, column per_image_usd: the cell is missing"),
        ("gpt-4o,2024-05-13,0.005,0.015,,extra", "row 2: 6 cells, but the header has 5"),
        ("gpt-4o,2024-13-01,0.005,0.015,", "row 2 (model 'gpt-4o'), column effective_from: '2024-13-01'"),
        ("gpt-4o,2024-05-13,0.0.5,0.015,", "row 2 (model 'gpt-4o'), column input_per_1k_usd: '0.0.5'"),
        ("gpt-4o,2024-05-13,0.005,-1,", "column output_per_1k_usd: '-1' is not an amount in USD"),
        (",2024-05-13,0.005,0.015,", "row 2, column model: the model name is empty"),
        ("m,2024-05-13,1,1,\nm,2024-05-13,2,2,", "rows 2 and 3: model 'm' has two prices from 2024-05-13"),
        # Amounts that would be rounded, take minutes to scale, or were typos: refused, never used.
        ("m,2024-05-13,0.0025000000000000000000000000001,,", "at most 18 decimal places"),
        ("m,2024-05-13,1e-999999,,", "at most 18 decimal places"),
        ("m,2024-05-13,1E+999999999,,", "an amount of at most 1000000 USD"),
        ("m,2024-05-13,1_000,,", "column input_per_1k_usd: '1_000' is not an amount in USD"),
        ("m,2024-05-13,\u0660.\u0665,,", "is not an amount in USD"),  # Arabic-Indic digits
        ("m,2024-05-13,Infinity,,", "is not an amount in USD"),
        ("m,2024-05-13,1,1,\n\nm,2024-06-01,1,1,", "row 3 is empty; rows must follow one another"),
    ],
)
def test_a_bad_pricing_row_names_the_file_row_and_column(tmp_path: Path, rows: str, expected: str) -> None:
    line = refused(tmp_path, "", f"{HEADER}\n{rows}\n")
    assert line.startswith(f"error: pricing table {str(tmp_path / 'prices.csv')!r}: ")
    assert expected in line


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("model,effective_from,input_per_1k_usd,output_per_1k_usd", "no column 'per_image_usd'"),
        (HEADER + ",model", "column 'model' appears twice"),
        (HEADER.replace("per_image_usd", "per_img_usd"), "unknown column 'per_img_usd'"),
    ],
)
def test_a_bad_pricing_header_is_refused(tmp_path: Path, header: str, expected: str) -> None:
    line = refused(tmp_path, "", f"{header}\ngpt-4o,2024-05-13,0.005,0.015,\n")
    assert "row 1 (the header)" in line and expected in line


def test_a_pricing_table_with_a_byte_order_mark_loads(tmp_path: Path) -> None:
    (tmp_path / "prices.csv").write_bytes(
        b"\xef\xbb\xbf" + f"{HEADER}\ngpt-4o,2024-05-13,0.005,0.015,\n".encode()
    )
    config = tmp_path / "config.toml"
    config.write_bytes(b'\xef\xbb\xbf[pricing]\npath = "prices.csv"\n')  # the config may carry one too
    (tmp_path / "in.jsonl").write_text(EVENT)
    summary = run_pipeline([tmp_path / "in.jsonl"], tmp_path / "out", "--config", config).summary()
    assert (summary["events_processed"], summary["cost_total"]) == (1, "0.005000")


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (
            "[rate_limit]\nwindow_seconds = 1000000000000000",
            "rate_limit.window_seconds must be between 1 and",
        ),
        ("[rate_limit]\nwindow_seconds = 0", "rate_limit.window_seconds must be between 1 and"),
        ("[pipeline]\nshards = 100000000", "pipeline.shards must be between 1 and 65536"),
        ("[pipeline]\nbatch_size = -1", "pipeline.batch_size must be between 1 and"),
        ("[audit]\nretry_attempts = 0", "audit.retry_attempts must be between 1 and 100"),
        ("[rate_limit]\nquotas = { free = -1 }", "rate_limit.quotas.free must be an integer between 0 and"),
        ("[rate_limit]\nquotas = { gold = 5 }", "rate_limit.quotas must name exactly the tiers"),
        ("[pipeline]\nshards = true", "pipeline.shards must be int, got True"),
        ("[pipeline]\nshard = 4", "unknown key pipeline.shard"),
        ("[pipelines]\nshards = 4", "unknown section [pipelines]"),
        ("[pipeline\nshards = 4", "is not valid TOML"),
    ],
)
def test_a_bad_config_value_names_the_file_and_key(tmp_path: Path, config: str, expected: str) -> None:
    line = refused(tmp_path, config)
    assert line.startswith(f"error: config {str(tmp_path / 'config.toml')!r}")
    assert expected in line


def test_prices_in_exponent_notation_and_trailing_blank_lines_are_fine(tmp_path: Path) -> None:
    (tmp_path / "prices.csv").write_text(f"{HEADER}\ngpt-4o,2024-05-13,5e-3,1.50E-2,\n\n\n")
    config = tmp_path / "config.toml"
    config.write_text('[pricing]\npath = "prices.csv"\n')
    (tmp_path / "in.jsonl").write_text(EVENT)
    summary = run_pipeline([tmp_path / "in.jsonl"], tmp_path / "out", "--config", config).summary()
    assert summary["cost_total"] == "0.005000"


@pytest.mark.parametrize("which", ["config", "pricing"])
def test_a_fifo_in_place_of_a_file_is_refused_not_waited_on(tmp_path: Path, which: str) -> None:
    os.mkfifo(tmp_path / "fifo")
    config = tmp_path / "fifo" if which == "config" else tmp_path / "config.toml"
    if which == "pricing":
        config.write_text('[pricing]\npath = "fifo"\n')
    (tmp_path / "in.jsonl").write_text(EVENT)
    result = run_cli("run", "--input", tmp_path / "in.jsonl", "--out", tmp_path / "out", "--config", config)
    assert result.returncode == 1
    assert result.stderr.strip().endswith(f"{str(tmp_path / 'fifo')!r} is not a regular file")


def test_hmac_mode_without_a_key_names_the_config_file(tmp_path: Path) -> None:
    line = refused(tmp_path, '[hashing]\nmode = "hmac-sha256"\n')
    where = f"config {str(tmp_path / 'config.toml')!r}"
    assert line == f"error: {where}: hashing.mode = hmac-sha256 needs the key in $AIEP_HMAC_KEY"


def test_a_section_that_is_not_a_table_says_so(tmp_path: Path) -> None:
    assert "pipeline must be a table ([pipeline]), got 5" in refused(tmp_path, "pipeline = 5\n")


# --- every key, from the one definition (in-process: load_config is what the run calls first) ---

SETTINGS = PipelineConfig.settings()
NUMBERS = [s for s in SETTINGS if s.is_table or s.file_type in (int, float)]
#: A value of another type than each kind of key takes; a number in quotes is the usual slip.
WRONG_TYPE: dict[type, object] = {int: "12", float: "1.5", bool: "yes", str: 12, dict: 12}


def load_error(tmp_path: Path, text: str) -> str:
    """Load a config file holding ``text``; assert it is refused; return the message."""
    path = tmp_path / "config.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as refusal:
        load_config(path)
    prefix = f"config {str(path)!r}: "
    assert str(refusal.value).startswith(prefix)
    return str(refusal.value).removeprefix(prefix)


def one_key(spec: Setting, value: str) -> str:
    return f"[{spec.section}]\n{spec.key} = {value}\n"


#: A threshold at a bound can pass its partner (flag <= reject is checked across keys): the
#: partner moves to the same bound.
ORDERED_PARTNER = {
    (f"{strict}flag_threshold", 1): f"{strict}reject_threshold = 1\n" for strict in ("", "strict_")
} | {(f"{strict}reject_threshold", 0): f"{strict}flag_threshold = 0\n" for strict in ("", "strict_")}


def test_a_flag_threshold_above_the_reject_threshold_is_refused(tmp_path: Path) -> None:
    message = load_error(
        tmp_path, "[moderation]\nstrict_flag_threshold = 0.7\nstrict_reject_threshold = 0.6\n"
    )
    assert message == (
        "moderation.strict_flag_threshold (0.7) must be at most moderation.strict_reject_threshold (0.6)"
    )


def a_table_entry(spec: Setting) -> str:
    """An entry the table holds by default (a tier of ``quotas``), or one it may hold."""
    default = getattr(PipelineConfig(), spec.attribute)
    return next(iter(default)) if default else {"tier": "pro", "user_id": '"42"'}[spec.keys]


@pytest.mark.parametrize("spec", SETTINGS, ids=lambda s: s.name)
def test_a_value_of_the_wrong_type_names_the_key_and_the_type(tmp_path: Path, spec: Setting) -> None:
    wrong = WRONG_TYPE[spec.file_type]
    message = load_error(tmp_path, one_key(spec, json.dumps(wrong)))  # a JSON scalar is TOML too
    assert message == f"{spec.name} must be {spec.file_type.__name__}, got {wrong!r}"


@pytest.mark.parametrize(
    ("spec", "side"),
    [(s, side) for s in NUMBERS for side in ("below", "above")],
    ids=lambda p: getattr(p, "name", p),
)
def test_a_number_out_of_range_names_the_key_and_the_range(tmp_path: Path, spec: Setting, side: str) -> None:
    assert spec.between is not None
    low, high = spec.between
    value = low - 1 if side == "below" else high + 1
    if spec.is_table:
        entry = a_table_entry(spec)
        message = load_error(tmp_path, one_key(spec, f"{{ {entry} = {value} }}"))
        entry = entry.strip('"')
        if spec.entry_type is Decimal:
            assert message == (
                f"{spec.name}.{entry} must be an amount in USD between {low} and {high} with at most 6 "
                f"decimals (a number, or its text), got {value}"
            )
        else:
            assert message == f"{spec.name}.{entry} must be an integer between {low} and {high}, got {value}"
    else:
        message = load_error(tmp_path, one_key(spec, str(value)))
        assert message == f"{spec.name} must be between {low} and {high}, got {value}"


@pytest.mark.parametrize("spec", NUMBERS, ids=lambda s: s.name)
def test_the_bounds_of_a_range_are_themselves_allowed(tmp_path: Path, spec: Setting) -> None:
    assert spec.between is not None
    path = tmp_path / "config.toml"
    for bound in spec.between:
        literal = f"{{ {a_table_entry(spec)} = {bound} }}" if spec.is_table else str(bound)
        path.write_text(one_key(spec, literal) + ORDERED_PARTNER.get((spec.key, bound), ""))
        loaded = getattr(load_config(path), spec.attribute)
        assert (loaded[a_table_entry(spec).strip('"')] if spec.is_table else loaded) == bound


def test_every_number_has_a_range() -> None:
    assert NUMBERS and all(spec.between is not None for spec in NUMBERS)


@pytest.mark.parametrize("spec", [s for s in SETTINGS if s.choices], ids=lambda s: s.name)
def test_a_value_outside_the_choices_names_the_key_and_the_choices(tmp_path: Path, spec: Setting) -> None:
    message = load_error(tmp_path, one_key(spec, '"none-of-these"'))
    assert message == f"{spec.name} must be one of {spec.choices}, got 'none-of-these'"


def test_an_unknown_section_is_refused_listing_the_known_ones(tmp_path: Path) -> None:
    sections = sorted({spec.section for spec in SETTINGS})
    message = load_error(tmp_path, "[embedding]\nenabled = true\n")
    assert message == f"unknown section [embedding]; expected {sections}"


@pytest.mark.parametrize("section", sorted({s.section for s in SETTINGS}))
def test_an_unknown_key_names_the_section_and_the_key(tmp_path: Path, section: str) -> None:
    keys = sorted(spec.key for spec in SETTINGS if spec.section == section)
    message = load_error(tmp_path, f"[{section}]\nno_such_key = 1\n")
    assert message == f"unknown key {section}.no_such_key; expected {keys}"


def test_the_example_file_sets_every_key_to_its_default(tmp_path: Path) -> None:
    path = tmp_path / "example.toml"
    path.write_text(example_toml())
    written = {f"{section}.{key}" for section, body in tomllib.loads(example_toml()).items() for key in body}
    assert written == {spec.name for spec in SETTINGS}
    assert load_config(path) == load_config(None) == PipelineConfig()


def test_a_path_is_relative_to_the_config_file_and_a_table_overrides_entries(tmp_path: Path) -> None:
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "prices.csv").write_bytes((schemas.HERE / "pricing.csv").read_bytes())
    path = tmp_path / "conf" / "config.toml"
    path.write_text('[pricing]\npath = "prices.csv"\n[rate_limit]\nquotas = { free = 3 }\n')
    config = load_config(path)
    assert config.pricing_path == tmp_path / "conf" / "prices.csv"
    assert config.quotas == {**PipelineConfig().quotas, "free": 3}


def test_the_summary_block_keeps_the_keys_and_values_runs_have_always_written() -> None:
    config = PipelineConfig(shards=4, pricing_path=Path("/srv/prices.csv"))
    block = config.summary_block()
    assert list(block)[:6] == ["quotas", "window_seconds", "pricing", "hash_mode", "shards", "batch_size"]
    assert block["quotas"] == dict(schemas.tier_table()["quotas"])
    assert block["window_seconds"] == schemas.tier_table()["window_seconds"]
    assert (block["pricing"], block["hash_mode"], block["shards"], block["batch_size"]) == (
        "/srv/prices.csv",
        "sha256",
        4,
        10_000,
    )
