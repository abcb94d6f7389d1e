"""Semantic search over ``embeddings/``: the stored texts nearest a query, by cosine, in DuckDB.

The query is embedded with the model the pipeline used; only vectors of that model and version
are compared (another model's vectors live in another space). DuckDB's
``array_cosine_similarity`` ranks every stored vector of the chosen fields, reading the Parquet
files in place.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np

from models.embedder import TextEmbedder

FIELDS = ("input", "output", "both")


class SearchError(Exception):
    """The search cannot run; the message is one line for the operator."""


@dataclass(frozen=True)
class Match:
    """One stored text near the query."""

    event_id: str
    user_id: int
    field: str
    cosine: float
    #: The start of the text where the run kept it (``[embeddings] keep_text_chars``), else None.
    text_prefix: str | None
    content_hash: str


def similar(out_dir: Path, query: str, k: int = 10, field: str = "both", device: str = "auto") -> list[Match]:
    """The ``k`` stored texts of ``field`` (input, output or both) nearest ``query``, best first."""
    if field not in FIELDS:
        raise SearchError(f"--field must be one of {', '.join(FIELDS)}, got {field!r}")
    if k < 1:
        raise SearchError(f"--k must be at least 1, got {k}")
    files = out_dir / "embeddings"
    if not any(files.glob("dt=*/*.parquet")):
        raise SearchError(f"no embeddings under {str(files)!r}: run the pipeline with embeddings on first")
    embedder = TextEmbedder(device=device)
    vector = embedder([query])[0].astype(np.float32)
    dim = vector.shape[0]
    fields = ["input", "output"] if field == "both" else [field]
    sql = f"""
        SELECT event_id, user_id, field,
               array_cosine_similarity(vector::FLOAT[{dim}], $query::FLOAT[{dim}]) AS cosine,
               text_prefix, content_hash
        FROM read_parquet($files, hive_partitioning = true)
        WHERE model = $model AND model_version = $version AND list_contains($fields, field)
        ORDER BY cosine DESC, event_id, field
        LIMIT $k
    """
    params = {
        "query": vector.tolist(),
        "files": str(files / "dt=*" / "*.parquet"),
        "model": embedder.name,
        "version": embedder.version,
        "fields": fields,
        "k": k,
    }
    with duckdb.connect() as con:
        rows = con.execute(sql, params).fetchall()
    return [Match(r[0], int(r[1]), r[2], float(r[3]), r[4], r[5]) for r in rows]
