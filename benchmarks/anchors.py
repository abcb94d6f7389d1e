"""The spine's two anchors: how fast the input can merely be parsed, and what a data engineer
would write instead (DESIGN.md, "Performance rules").

* :func:`raw_parse`: ``pyarrow.json.read_json`` of the input, the ceiling of any JSONL reader.
* :func:`duckdb_peer`: validate, dedup, hash, price and rate-limit as one DuckDB SQL statement,
  ``read_json`` → … → ``COPY`` to zstd Parquet partitioned by ``dt``. Its limits, tiers, quotas,
  window and prices are read from the same contracts the pipeline reads, so it does the same
  amount of work; :data:`PEER_SIMPLIFICATIONS` says where it does less.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.json as pa_json

from benchmarks.event_files import EventFile, contract_valid_copy
from benchmarks.measure import Measurement, stopwatch
from benchmarks.peer_sql import peer_sql, quote
from connectors.config import PipelineConfig

#: Where the DuckDB peer does less than the spine (printed beside its number).
PEER_SIMPLIFICATIONS = (
    "no dead-letter output: rejected lines are filtered out, not written with a reason",
    "its reader is laxer than the contract: a number in a string field reads as its text, a "
    "fractional integer rounds, an overflowing one reads as NULL (then 0), NaN passes, and "
    "unknown fields and output.image are not checked (output.image is not hashed either)",
    "conflicting duplicates are dropped like exact ones (first copy in input order kept), no "
    "fingerprint compare",
    "no rate_limit_violations dataset, no SQLite audit trail, no run summary",
)

#: The contract's fields as pyarrow reads them; ``metadata`` is free-form and left to inference.
_CONTRACT_SCHEMA = pa.schema(
    [
        ("event_id", pa.string()),
        ("event_time", pa.string()),
        ("user_id", pa.int64()),
        ("operation_type", pa.string()),
        ("model", pa.string()),
        ("input", pa.struct([("text", pa.string())])),
        ("output", pa.struct([("text", pa.string())])),
        (
            "usage",
            pa.struct([("input_tokens", pa.int64()), ("output_tokens", pa.int64()), ("images", pa.int64())]),
        ),
        ("ai_tier", pa.string()),
    ]
)


def raw_parse(source: EventFile) -> Measurement:
    """Time ``pyarrow.json.read_json`` on the file, or, if pyarrow refuses it, on its valid lines.

    pyarrow rejects a whole file at its first malformed line (or invalid UTF-8, or a field whose
    type changes), so the fallback parses a copy holding only the lines that pass the contract.
    """
    options = pa_json.ParseOptions(explicit_schema=_CONTRACT_SCHEMA, unexpected_field_behavior="infer")
    try:
        with stopwatch() as watch:
            table = pa_json.read_json(source.path, parse_options=options)
        what = f"pyarrow.json.read_json of all {source.lines:,} lines"
        return Measurement(
            "raw parse", what, table.num_rows, watch.wall_s, watch.cpu_s, others_cores=watch.others_cores
        )
    except pa.ArrowInvalid as exc:
        refusal = str(exc).splitlines()[0]
    path, kept = contract_valid_copy(source)
    with stopwatch() as watch:
        table = pa_json.read_json(path, parse_options=options)
    what = (
        f"pyarrow.json.read_json of the {kept:,} contract-valid lines (a copy of the file less "
        f"its {source.lines - kept:,} bad lines; the whole file fails: {refusal}); explicit "
        "schema for the contract's fields, metadata inferred"
    )
    return Measurement(
        "raw parse",
        what,
        table.num_rows,
        watch.wall_s,
        watch.cpu_s,
        others_cores=watch.others_cores,
        details={"parsed_file": str(path), "columns": table.num_columns},
    )


def duckdb_peer(source: EventFile, out_dir: Path, threads: int | None = None) -> Measurement:
    """Time the peer statement over the whole file (bad lines included) into ``out_dir``.

    Events/s counts every line read, as the spine's ``events_read`` does. ``threads`` caps
    DuckDB's threads (default: DuckDB's own choice, every core).
    """
    shutil.rmtree(out_dir, ignore_errors=True)
    sql = peer_sql(source.path, out_dir, PipelineConfig())
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")  # dt and the price's date are UTC, as in the pipeline
    if threads:
        con.execute(f"SET threads = {int(threads)}")
    used_threads = con.execute("SELECT current_setting('threads')").fetchone()
    with stopwatch() as watch:
        written = con.execute(sql).fetchone()
    outcome = con.execute(_PEER_OUTCOME.format(out=quote(f"{out_dir}/**/*.parquet"))).fetchone()
    con.close()
    assert written is not None and outcome is not None and used_threads is not None
    name = "DuckDB peer" + (f" ({threads} thread)" if threads == 1 else "")
    what = (
        f"one COPY (read_json → validate → dedup → sha256 → ASOF price → row_number rate "
        f"limit) TO partitioned zstd Parquet, {used_threads[0]} thread(s), all "
        f"{source.lines:,} lines"
    )
    details = {
        "rows_written": written[0],
        "threads": used_threads[0],
        "rate_limited": outcome[0],
        "unpriced": outcome[1],
        "cost_total": str(outcome[2]),
        "sql": sql,
    }
    return Measurement(
        name, what, source.lines, watch.wall_s, watch.cpu_s, others_cores=watch.others_cores, details=details
    )


_PEER_OUTCOME = (
    "SELECT count(*) FILTER (WHERE rate_limited),"
    " count(*) FILTER (WHERE cost IS NULL), sum(cost)"
    " FROM read_parquet({out}, hive_partitioning = true)"
)
