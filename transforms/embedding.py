"""Semantic embedding on batches: which texts to embed, each distinct text once, the rows of
``embeddings/``.

Pure: the model and the cache arrive as callables (``embed``, ``lookup``), the way
``enrich_records`` receives its image loader. Texts are identified by their content hash (the
events' ``input_hash``/``output_hash``), so one text met twice, in one event or in two, is looked
up and embedded once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from transforms.event_batch import INPUT_TEXT, OUTPUT_TEXT

#: ``embed(texts) -> (len(texts), dim) float32``, L2-normalised rows.
Embed = Callable[[Sequence[str]], np.ndarray]
#: ``lookup(content hashes) -> (vectors, found)``: a cache's answer; rows not found are ignored.
Lookup = Callable[[Sequence[str]], tuple[np.ndarray, np.ndarray]]

#: Internal column the embedding stage adds to events: the prompt's vector (NULL-free: NaN where
#: the event has none), for the personalization stage. Sinks drop it like every internal column.
PROMPT_VECTOR = "_prompt_vector"

#: The ``field`` of an embedded text, and the events' columns it comes from.
FIELDS = (("input", INPUT_TEXT, "input_hash"), ("output", OUTPUT_TEXT, "output_hash"))


@dataclass(frozen=True)
class TextsToEmbed:
    """The texts of a batch of events to embed: one entry per (event, field) with a text.

    An event flagged ``rate_limited`` has none (DESIGN.md stage 4: it skips embedding), nor has a
    field whose text is absent or empty (nothing to embed).
    """

    rows: np.ndarray  # the event's row in the batch, per text
    fields: tuple[str, ...]  # "input" | "output"
    hashes: tuple[str, ...]
    texts: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.hashes)

    def take(self, picked: np.ndarray) -> TextsToEmbed:
        """The texts at the positions ``picked`` (a bool mask or indices), in order."""
        at = np.flatnonzero(picked) if picked.dtype == bool else picked
        return TextsToEmbed(
            self.rows[at],
            tuple(self.fields[i] for i in at),
            tuple(self.hashes[i] for i in at),
            tuple(self.texts[i] for i in at),
        )


def texts_to_embed(events: pa.Table, *, rate_limited_too: bool = False) -> TextsToEmbed:
    """The prompt and output texts of ``events`` that are to be embedded, by field then row.

    ``rate_limited_too`` takes the texts of rate-limited events as well: moderation scores every
    event, and its model reads the texts' vectors.

    >>> from transforms.event_batch import INPUT_TEXT, OUTPUT_TEXT
    >>> t = pa.table({"rate_limited": [False, True, False], "input_hash": ["a", "b", "c"],
    ...               "output_hash": ["x", "y", None], INPUT_TEXT: ["hi", "no", ""],
    ...               OUTPUT_TEXT: ["yo", "no", None]})
    >>> found = texts_to_embed(t)
    >>> found.rows.tolist(), found.fields, found.texts
    ([0, 0], ('input', 'output'), ('hi', 'yo'))
    """
    rate_limited = events.column("rate_limited")
    allowed = pc.invert(rate_limited) if not rate_limited_too else pc.is_valid(rate_limited)
    rows: list[np.ndarray] = []
    fields: list[str] = []
    hashes: list[str] = []
    texts: list[str] = []
    for field_name, text_column, hash_column in FIELDS:
        text = events.column(text_column)
        wanted = pc.fill_null(pc.and_(allowed, pc.greater(pc.utf8_length(text), 0)), False)
        picked = np.flatnonzero(np.asarray(wanted.to_numpy(zero_copy_only=False), dtype=bool))
        if not picked.size:
            continue
        index = pa.array(picked)
        rows.append(picked)
        fields += [field_name] * picked.size
        hashes += events.column(hash_column).take(index).to_pylist()
        texts += text.take(index).to_pylist()
    return TextsToEmbed(
        np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64),
        tuple(fields),
        tuple(hashes),
        tuple(texts),
    )


@dataclass(frozen=True)
class Embedded:
    """Vectors for each text of a :class:`TextsToEmbed`, and how they were found."""

    vectors: np.ndarray  # (len(texts), dim) float32, one row per text
    hits: int  # distinct texts the cache held
    #: Distinct texts the model embedded: their hashes and vectors, for the cache to keep.
    computed_hashes: tuple[str, ...]
    computed: np.ndarray

    @property
    def misses(self) -> int:
        return len(self.computed_hashes)


def embed_distinct(texts: TextsToEmbed, lookup: Lookup, embed: Embed, dim: int) -> Embedded:
    """Embed each distinct text of ``texts`` once: from ``lookup`` where it holds it, else ``embed``.

    >>> calls = []
    >>> def embed(batch):
    ...     calls.append(list(batch))
    ...     return np.ones((len(batch), 2), dtype=np.float32)
    >>> def lookup(hashes):
    ...     return np.full((len(hashes), 2), 7, np.float32), np.array([h == "h1" for h in hashes])
    >>> texts = TextsToEmbed(np.array([0, 1, 2]), ("input",) * 3, ("h1", "h2", "h2"), ("a", "b", "b"))
    >>> done = embed_distinct(texts, lookup, embed, dim=2)
    >>> done.vectors[:, 0].tolist(), done.hits, done.misses, calls
    ([7.0, 1.0, 1.0], 1, 1, [['b']])
    """
    if not len(texts):
        return Embedded(np.zeros((0, dim), np.float32), 0, (), np.zeros((0, dim), np.float32))
    distinct, first, inverse = np.unique(np.array(texts.hashes), return_index=True, return_inverse=True)
    keys = distinct.tolist()
    vectors, found = lookup(keys)
    missing = np.flatnonzero(~found)
    computed = (
        embed([texts.texts[first[i]] for i in missing]) if missing.size else np.zeros((0, dim), np.float32)
    )
    vectors = np.array(vectors, dtype=np.float32, copy=True)
    vectors[missing] = computed
    return Embedded(vectors[inverse], int(found.sum()), tuple(keys[i] for i in missing), computed)


def prompt_vectors(events: pa.Table, texts: TextsToEmbed, vectors: np.ndarray) -> np.ndarray:
    """One row per event: its prompt's vector, or NaN where it has none (the features' input)."""
    out = np.full((events.num_rows, vectors.shape[1]), np.nan, dtype=np.float32)
    is_input = np.array([field == "input" for field in texts.fields], dtype=bool)
    out[texts.rows[is_input]] = vectors[is_input]
    return out


def embeddings_table(
    events: pa.Table,
    texts: TextsToEmbed,
    vectors: np.ndarray,
    topics: tuple[list[list[str] | None], list[list[float] | None]],
    model: tuple[str, str],
    keep_text_chars: int,
    schema: pa.Schema,
) -> pa.Table:
    """The ``embeddings/`` rows of ``texts``: one per text, in the ``schema`` of the dataset.

    ``topics`` holds each text's top topics and their cosines (``None`` for an output text);
    ``model`` is (name, version); ``keep_text_chars`` > 0 keeps the start of each text.
    """
    index = pa.array(texts.rows)
    n = len(texts)
    dim = schema.field("vector").type.list_size
    flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1), pa.float32())
    prefix = (
        pa.array([text[:keep_text_chars] for text in texts.texts], pa.string())
        if keep_text_chars
        else pa.nulls(n, pa.string())
    )
    columns = {
        "event_id": events.column("event_id").take(index),
        "event_time": events.column("event_time").take(index),
        "user_id": events.column("user_id").take(index),
        "field": pa.array(texts.fields, pa.string()),
        "content_hash": pa.array(texts.hashes, pa.string()),
        "model": pa.array([model[0]] * n, pa.string()),
        "model_version": pa.array([model[1]] * n, pa.string()),
        "vector": pa.FixedSizeListArray.from_arrays(flat, dim),
        "topics": pa.array(topics[0], pa.list_(pa.string())),
        "topic_scores": pa.array(topics[1], pa.list_(pa.float32())),
        "text_prefix": prefix,
    }
    return pa.table(columns).cast(schema)
