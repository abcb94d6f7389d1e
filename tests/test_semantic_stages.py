"""The embedding stage in-process, with a counting stand-in for the model: texts of several panes
are embedded together, each distinct text once, and every pane gets back its own rows."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pyarrow as pa

from connectors.embedding_cache import open_embedding_cache
from pipelines.semantic import CachedEmbedder, EmbedTexts
from transforms.embedding import PROMPT_VECTOR
from transforms.event_batch import INPUT_TEXT, OUTPUT_TEXT
from transforms.hashing import ContentHasher
from transforms.topics import TopicIndex

DIM = 384


class CountingModel:
    """A deterministic unit vector per text; remembers every call."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def __call__(self, texts: list[str]) -> np.ndarray:
        self.calls.append(list(texts))
        vectors = np.array(
            [
                np.random.default_rng(int(hashlib.sha256(t.encode()).hexdigest()[:8], 16)).normal(size=DIM)
                for t in texts
            ],
            dtype=np.float32,
        ).reshape(len(texts), DIM)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def pane(
    ids: list[str], prompts: list[str | None], outputs: list[str | None], limited: list[bool]
) -> pa.Table:
    hasher = ContentHasher(None)
    n = len(ids)
    return pa.table(
        {
            "event_id": ids,
            "event_time": pa.array([1_741_078_800_000_000] * n, pa.timestamp("us", tz="UTC")),
            "user_id": pa.array([7] * n, pa.int64()),
            "rate_limited": limited,
            "input_hash": [hasher.text(t) for t in prompts],
            "output_hash": [hasher.text(t) for t in outputs],
            INPUT_TEXT: pa.array(prompts, pa.string()),
            OUTPUT_TEXT: pa.array(outputs, pa.string()),
        }
    )


def stage(tmp_path: Path, model: CountingModel, buffer_texts: int) -> EmbedTexts:
    cache = open_embedding_cache(
        None, tmp_path / "cache.sqlite", model="m", model_version="1", dim=DIM, lru_entries=10
    )
    embedder = CachedEmbedder(model, cache, ContentHasher(None), DIM)
    topics = TopicIndex(("a", "b", "c"), model(["topic a", "topic b", "topic c"]))
    model.calls.clear()
    return EmbedTexts(embedder, topics, ("m", "1"), keep_text_chars=0, buffer_texts=buffer_texts)


def test_panes_are_embedded_together_once_enough_texts_are_gathered(tmp_path: Path) -> None:
    model = CountingModel()
    embed = stage(tmp_path, model, buffer_texts=5)
    first = pane(["a1", "a2"], ["hello", "again"], ["world", None], [False, False])
    second = pane(["b1", "b2"], ["hello", "skipped"], ["new", "also skipped"], [False, True])
    assert embed.add("A", first) == ([], {})  # 3 texts gathered: not enough yet
    panes, counts = embed.add("B", second)  # 5 texts: embedded now, in one call
    assert [p.key for p in panes] == ["A", "B"]
    assert len(model.calls) == 1
    assert sorted(model.calls[0]) == ["again", "hello", "new", "world"]  # "hello" twice, once embedded
    assert counts == {"embedding_cache_hits": 0, "embedding_cache_misses": 4}
    rows_b = panes[1].rows
    assert rows_b.column("event_id").to_pylist() == ["b1", "b1"]  # b2 is rate limited
    assert rows_b.column("field").to_pylist() == ["input", "output"]
    vectors_a = np.array(panes[0].rows.column("vector").to_pylist())
    vectors_b = np.array(rows_b.column("vector").to_pylist())
    assert np.array_equal(vectors_a[0], vectors_b[0])  # "hello" in both panes: one vector
    prompt_vectors = np.array(panes[1].events.column(PROMPT_VECTOR).to_pylist())
    assert np.array_equal(prompt_vectors[0], vectors_b[0]) and np.isnan(prompt_vectors[1]).all()
    assert embed.flush() == ([], {"embedding_cache_hits": 0, "embedding_cache_misses": 0})


def test_events_without_texts_do_not_wait_without_bound(tmp_path: Path) -> None:
    model = CountingModel()
    embed = stage(tmp_path, model, buffer_texts=2)
    images = pane([f"i{n}" for n in range(16)], [None] * 16, [None] * 16, [False] * 16)
    panes, _ = embed.add("I", images)  # no text at all, but 8 × 2 rows: flushed
    assert [p.key for p in panes] == ["I"] and panes[0].rows.num_rows == 0 and model.calls == []


def test_a_second_pass_is_served_by_the_cache(tmp_path: Path) -> None:
    model = CountingModel()
    embed = stage(tmp_path, model, buffer_texts=100)
    events = pane(["a1"], ["hello"], ["world"], [False])
    _, first_rows, first = embed(events)
    _, again_rows, again = embed(events)
    assert first == {"embedding_cache_hits": 0, "embedding_cache_misses": 2}
    assert again == {"embedding_cache_hits": 2, "embedding_cache_misses": 0}
    assert len(model.calls) == 1 and again_rows.equals(first_rows)
