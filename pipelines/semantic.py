"""The semantic stages: embed texts (through the cache), then personalization features.

They come after rate limiting, on the events of one (user shard, pane), and are built by
:class:`~pipelines.worker.SpineWorker` like every stage:

1. :class:`EmbedTexts`: each prompt's and output's vector, from the cache or the model, and its
   rows of ``embeddings/`` (a prompt's with its top topics). The events gain an internal column,
   ``PROMPT_VECTOR``, for the next stage.
2. :class:`ProfileWindows`: the pane's user windows (``transforms.personalization``), with
   affinity to each user's declared topics. A pane holds whole windows, so its rows are final but
   for drift, which looks back to a user's previous window, maybe in an earlier pane.
3. :class:`WriteUserFeatures`: every window of a user shard, in time order: drift, then the sink.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

import schemas
from connectors.config import PipelineConfig
from connectors.embedding_cache import EmbeddingCache, open_embedding_cache
from connectors.parquet_sink import ParquetSink
from connectors.sinks import Counts, Sink
from connectors.users import UserDirectory
from models.embedder import TextEmbedder
from transforms.embedding import (
    PROMPT_VECTOR,
    Embed,
    Embedded,
    TextsToEmbed,
    embed_distinct,
    embeddings_table,
    prompt_vectors,
    texts_to_embed,
)
from transforms.hashing import ContentHasher
from transforms.personalization import (
    FeatureAccumulator,
    UserFeatureWindows,
    last_interest_vectors,
    with_drift,
)
from transforms.topics import TopicIndex, prefs_topics, prefs_vector


def default_cache_path(out_dir: Path) -> Path:
    """Where the embedding cache lives unless ``[embeddings] cache`` (``--cache``) says otherwise."""
    return out_dir / "_cache" / "embeddings.sqlite"


def open_cache(config: PipelineConfig, out_dir: Path, embedder: TextEmbedder) -> EmbeddingCache:
    """The run's embedding cache for ``embedder``'s model: the configured one, else the default."""
    return open_embedding_cache(
        config.embedding_cache or None,
        default_cache_path(out_dir),
        model=embedder.name,
        model_version=embedder.version,
        dim=embedder.dimensions,
        lru_entries=config.embedding_lru_entries,
    )


class CachedEmbedder:
    """The model behind the cache: each distinct text is looked up first and embedded only when
    the cache lacks it (then kept there). Texts are keyed by the run's content hash, so a topic
    description or a declared interest is cached like a prompt, and a run whose texts are all
    cached never loads the model."""

    def __init__(self, embed: Embed, cache: EmbeddingCache, hasher: ContentHasher, dim: int) -> None:
        self.embed = embed
        self.cache = cache
        self.hasher = hasher
        self.dim = dim

    def embed_texts(self, texts: TextsToEmbed) -> Embedded:
        """Vectors for ``texts`` (keyed by their hashes), with the cache's hits and misses."""
        done = embed_distinct(texts, self.cache.get_many, self.embed, self.dim)
        if done.misses:
            self.cache.put_many(done.computed_hashes, done.computed)
        return done

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        """``Embed`` for plain texts: hashed here."""
        hashes = tuple(self.hasher.text(text) or "" for text in texts)
        rows = np.arange(len(texts))
        return self.embed_texts(TextsToEmbed(rows, ("text",) * len(texts), hashes, tuple(texts))).vectors


def topic_index(labels_and_descriptions: Sequence[tuple[str, str]], embed: Embed) -> TopicIndex:
    """The topic labels with the vectors of their descriptions (embedded once per worker)."""
    labels = tuple(label for label, _ in labels_and_descriptions)
    return TopicIndex(labels, embed([description for _, description in labels_and_descriptions]))


#: ``EmbedTexts`` gathers texts of several panes, up to this many, before it embeds them: the
#: model then runs on batches of texts of about one length (sorted over the whole gathering), not
#: on a pane's few dozen. Measured here: MiniLM embeds 80 texts/s in sorted batches of 64 of 1,100
#: texts, and 37 texts/s called 20 texts at a time.
EMBED_BUFFER_TEXTS = 4096


@dataclass(frozen=True)
class EmbeddedPane:
    """One pane's events with their prompt vectors (``PROMPT_VECTOR``), its ``embeddings/`` rows,
    and every text embedded with its vector (for moderation, rate-limited events' texts too)."""

    key: Any
    events: pa.Table
    rows: pa.Table
    texts: TextsToEmbed
    vectors: np.ndarray


class EmbedTexts:
    """Embed the prompt and output text of each event not rate limited, each distinct text once:
    from the cache where it holds it, else from the model (then kept in the cache).

    With ``rate_limited_too`` (moderation on) the texts of rate-limited events are embedded as
    well, for the moderation model; they get no ``embeddings/`` rows. Without ``topics``
    (embeddings off, moderation on) no event gets ``embeddings/`` rows: the vectors are only for
    moderation.

    ``add`` gathers panes until they hold ``buffer_texts`` texts, then embeds them all at once;
    ``flush`` embeds what is gathered (an engine calls it at the end of a bundle or epoch).
    Calling the stage embeds one table at once.
    """

    def __init__(
        self,
        embedder: CachedEmbedder,
        topics: TopicIndex | None,
        model: tuple[str, str],
        keep_text_chars: int,
        buffer_texts: int = EMBED_BUFFER_TEXTS,
        *,
        rate_limited_too: bool = False,
    ) -> None:
        self.embedder = embedder
        self.topics = topics
        self.rate_limited_too = rate_limited_too
        self.model = model
        self.keep_text_chars = keep_text_chars
        self.buffer_texts = buffer_texts
        self.schema = schemas.arrow_schema("embeddings")
        self.dim = self.schema.field("vector").type.list_size
        self._pending: list[tuple[Any, pa.Table, TextsToEmbed]] = []
        self._pending_texts = 0
        self._pending_rows = 0

    def __call__(self, events: pa.Table) -> tuple[pa.Table, pa.Table, Counts]:
        """(events with ``PROMPT_VECTOR``, their ``embeddings/`` rows, cache counts)."""
        panes, counts = self.add(None, events)
        more, more_counts = self.flush()
        (pane,) = panes + more
        return pane.events, pane.rows, {name: counts.get(name, 0) + more_counts[name] for name in more_counts}

    def add(self, key: Any, events: pa.Table) -> tuple[list[EmbeddedPane], Counts]:
        """Gather one pane's events; embed everything gathered once it holds enough texts."""
        texts = texts_to_embed(events, rate_limited_too=self.rate_limited_too)
        self._pending.append((key, events, texts))
        self._pending_texts += len(texts)
        self._pending_rows += events.num_rows
        # Events without texts (images, rate limited) gather too: their rows bound the wait as well.
        enough = self._pending_texts >= self.buffer_texts or self._pending_rows >= 8 * self.buffer_texts
        return self.flush() if enough else ([], {})

    def flush(self) -> tuple[list[EmbeddedPane], Counts]:
        """Embed every gathered pane's texts in one go; each pane with its vectors and rows."""
        pending, self._pending, self._pending_texts, self._pending_rows = self._pending, [], 0, 0
        together = TextsToEmbed(
            np.concatenate([texts.rows for _, _, texts in pending] or [np.zeros(0, np.int64)]),
            tuple(field for _, _, texts in pending for field in texts.fields),
            tuple(h for _, _, texts in pending for h in texts.hashes),
            tuple(text for _, _, texts in pending for text in texts.texts),
        )
        done = self.embedder.embed_texts(together)
        panes, start = [], 0
        for key, events, texts in pending:
            end = start + len(texts)
            vectors = done.vectors[start:end]
            flat = pa.array(prompt_vectors(events, texts, vectors).reshape(-1), pa.float32())
            column = pa.FixedSizeListArray.from_arrays(flat, self.dim)
            rows = self._rows(events, texts, vectors)
            panes.append(EmbeddedPane(key, events.append_column(PROMPT_VECTOR, column), rows, texts, vectors))
            start = end
        return panes, {"embedding_cache_hits": done.hits, "embedding_cache_misses": done.misses}

    def _rows(self, events: pa.Table, texts: TextsToEmbed, vectors: np.ndarray) -> pa.Table:
        """The ``embeddings/`` rows of a pane: its texts but those of rate-limited events."""
        if self.topics is None:
            return self.schema.empty_table()
        limited = events.column("rate_limited").to_numpy(zero_copy_only=False)[texts.rows]
        texts, vectors = texts.take(~limited), vectors[~limited]
        prompts = np.array([field == "input" for field in texts.fields], dtype=bool)
        topics = self.topics.top(np.where(prompts[:, None], vectors, np.nan))
        return embeddings_table(events, texts, vectors, topics, self.model, self.keep_text_chars, self.schema)


class ProfileWindows:
    """A pane's personalization rows, one per (user, window), drift left to :class:`WriteUserFeatures`.

    Events flagged ``rate_limited`` are left out (DESIGN.md stage 4). A user's declared topics
    (``personalization_prefs`` ``{"topics": [...]}``) are embedded once per worker.
    """

    def __init__(self, windows: UserFeatureWindows, topics: TopicIndex, users: UserDirectory, embed: Embed):
        self.windows = windows
        self.topics = topics
        self.users = users
        self.embed = embed
        self._prefs: dict[tuple[str, ...], np.ndarray | None] = {}

    def __call__(self, events: pa.Table) -> pa.Table:
        """The rows of a whole pane: its windows accumulated and extracted at once."""
        return self.extract(self.add(self.windows.create_accumulator(), events))

    def add(self, acc: FeatureAccumulator, events: pa.Table) -> FeatureAccumulator:
        """Add events (with their prompt vectors) to ``acc``; rate-limited ones do not count."""
        kept = events.filter(pc.invert(events.column("rate_limited")))
        flat = kept.column(PROMPT_VECTOR).combine_chunks().flatten().to_numpy(zero_copy_only=False)
        vectors = flat.reshape(kept.num_rows, -1).astype(np.float32, copy=False)
        return self.windows.add_batch(acc, kept, vectors)

    def extract(self, acc: FeatureAccumulator, previous: Mapping[int, np.ndarray] | None = None) -> pa.Table:
        """The rows of the (closed) windows in ``acc``; ``previous``: each user's last interest
        vector before them, for drift (a stream carries it; a batch run computes drift later)."""
        users = sorted({user for user, _ in acc.windows})
        prefs = {}
        for user_id, profile in self.users.profiles(users).items():
            vector = self._prefs_vector(tuple(prefs_topics(profile.prefs)))
            if vector is not None:
                prefs[user_id] = vector
        return self.windows.extract_output(acc, topics=self.topics, prefs=prefs, previous=previous)

    def _prefs_vector(self, topics: tuple[str, ...]) -> np.ndarray | None:
        if topics not in self._prefs:
            self._prefs[topics] = prefs_vector(self.embed(list(topics))) if topics else None
        return self._prefs[topics]


class WriteEmbeddings:
    """Sink: one ``embeddings/`` file per pane."""

    def __init__(self, sink: Sink) -> None:
        self.sink = sink

    def __call__(self, key: str, rows: pa.Table) -> Counts:
        self.sink.write(key, rows)
        return {"embeddings_written": rows.num_rows}


class WriteUserFeatures:
    """Sink: every window of a user shard in time order, with drift from each user's previous
    window that has an interest vector: in this run, or before its first window here, in what
    earlier runs wrote to this output (daily runs over daily files drift as one run would)."""

    def __init__(self, sink: ParquetSink) -> None:
        self.sink = sink

    def __call__(self, key: str, tables: Iterable[pa.Table]) -> Counts:
        rows = pa.concat_tables(tables)
        rows = with_drift(rows, self._earlier_vectors(rows))
        self.sink.write(key, rows)
        return {"user_features_written": rows.num_rows}

    def _earlier_vectors(self, rows: pa.Table) -> dict[int, np.ndarray]:
        """Each user's last interest vector that other runs wrote before the user's first window here."""
        firsts = rows.group_by("user_id").aggregate([("window_start", "min")])
        if not firsts.num_rows:
            return {}
        latest_first = pc.max(firsts.column("window_start_min"))
        earlier = self.sink.rows_elsewhere(
            ["user_id", "window_start", "interest_vector"],
            pc.field("user_id").isin(firsts.column("user_id"))
            & (pc.field("window_start") < latest_first)
            & pc.field("interest_vector").is_valid(),
        )
        if not earlier.num_rows:
            return {}
        which = pc.index_in(earlier.column("user_id"), value_set=firsts.column("user_id"))
        first_here = pc.take(firsts.column("window_start_min"), which)
        return last_interest_vectors(earlier.filter(pc.less(earlier.column("window_start"), first_here)))
