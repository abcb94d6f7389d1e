"""Inputs for the embedding benchmark: valid events whose texts, and how often each repeats, are known.

Every event is a valid ``chat_completion`` of an ``enterprise`` user with a prompt and an output,
so the pipeline embeds exactly two texts per event (the benchmark's runs set quotas no user
reaches: nothing is rate limited). Texts are the shipped corpus's real tweets
(``loadgen/corpus``, 3,000 distinct, 87 characters on average), shuffled; past the 3,000th a text
is made distinct by a ``#n`` tag at its end. ``repeats=2`` writes each distinct (prompt, output)
pair in two events, half an input apart, so half the input's texts repeat an earlier one.
"""

from __future__ import annotations

import random
import unicodedata
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson

from loadgen.text import Corpus, token_count

#: Event times start here and spread over this many seconds; users are drawn from this many.
START = datetime(2025, 7, 7, tzinfo=UTC)
SPAN_SECONDS = 6 * 3600
USERS = 100
MODEL = "gpt-4o-mini"


@dataclass(frozen=True)
class TextEvents:
    """A written input: its events, every text in input order (prompt then output of each event),
    and how many of them are distinct."""

    path: Path
    events: int
    texts: tuple[str, ...]

    @property
    def distinct_texts(self) -> tuple[str, ...]:
        """The texts without repeats, first occurrence first (what a cache-less run embeds once)."""
        return tuple(dict.fromkeys(self.texts))


def distinct_corpus_texts(count: int, seed: int) -> list[str]:
    """``count`` distinct texts: the corpus's, shuffled by ``seed``, then tagged ``#n`` to go on.

    Distinct as the pipeline's content hash sees them (NFC): two texts it would key alike are one.
    """
    corpus = Corpus.load()
    pool = sorted({unicodedata.normalize("NFC", t) for texts in corpus.texts.values() for t in texts if t})
    random.Random(seed).shuffle(pool)
    return [pool[i] if i < len(pool) else f"{pool[i % len(pool)]} #{i}" for i in range(count)]


def write_text_events(path: Path, events: int, repeats: int = 1, seed: int = 1) -> TextEvents:
    """Write ``events`` valid events to ``path``; each distinct text pair in ``repeats`` events.

    With ``repeats=2`` event ``j`` and event ``j + events/2`` carry the same prompt and output.
    """
    if events < 1 or repeats < 1:
        raise ValueError(f"events and repeats must be at least 1; got {events} and {repeats}")
    pairs = -(-events // repeats)
    texts = distinct_corpus_texts(2 * pairs, seed)
    rng = random.Random(seed)
    written: list[str] = []
    with path.open("wb") as sink:
        for j in range(events):
            prompt, output = texts[2 * (j % pairs)], texts[2 * (j % pairs) + 1]
            moment = START + timedelta(milliseconds=rng.randrange(SPAN_SECONDS * 1000))
            event = {
                "event_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                "event_time": f"{moment:%Y-%m-%dT%H:%M:%S}.{moment.microsecond // 1000:03d}Z",
                "user_id": 1_000 + rng.randrange(USERS),
                "ai_tier": "enterprise",
                "operation_type": "chat_completion",
                "model": MODEL,
                "input": {"text": prompt},
                "output": {"text": output},
                "usage": {
                    "input_tokens": token_count(rng, prompt),
                    "output_tokens": token_count(rng, output),
                },
            }
            sink.write(orjson.dumps(event) + b"\n")
            written += [prompt, output]
    return TextEvents(path, events, tuple(written))
