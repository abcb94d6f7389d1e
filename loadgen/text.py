"""Prompt and answer texts for synthetic events: real tweets, model-like replies, awkward Unicode.

Prompts come from the committed Davidson sample (``loadgen/corpus/``), so the moderation
stage sees real offensive and hateful text rather than lorem ipsum. Answers mix corpus text
with a few templated assistant replies, so outputs read like model output. A small share of
texts carry accents, emoji, NFD (decomposed) characters and right-to-left or CJK script, and a
few prompts are empty: the cases a hashing or length rule gets wrong first.
"""

from __future__ import annotations

import csv
import random
from dataclasses import dataclass
from pathlib import Path

#: The committed corpus sample: columns ``text`` and ``label`` (neither / offensive / hate).
CORPUS_PATH = Path(__file__).resolve().parent / "corpus" / "davidson_sample.csv"

#: How often each corpus label is drawn. Real traffic is mostly benign; the sample is balanced.
LABEL_WEIGHTS: dict[str, int] = {"neither": 80, "offensive": 15, "hate": 5}

#: Non-ASCII that trips naive code: accents, astral-plane emoji, ZWJ sequences, NFD forms
#: (``e`` + U+0301 rather than ``é``, which NFC hashing must treat as equal), CJK, Arabic.
UNICODE_SNIPPETS: tuple[str, ...] = (
    "Café crème, s'il vous plaît ☕",
    "naïve résumé for Zoë",
    "Cafe\u0301 in Zu\u0308rich, Ma\u0303e",
    "👍🏽 thanks! 🤖✨",
    "family 👨\u200d👩\u200d👧 trip",
    "東京の天気は？",
    "مرحبا بالعالم",
    "Ångström · Straße · Øre",
)

_REFUSALS: tuple[str, ...] = (
    "I can't help with that. If someone upset you, I can help you say so calmly.",
    "I'm not able to write that, but I'm happy to help with something else.",
    "Let's keep this respectful. Could you tell me what you are trying to achieve?",
)

_IMAGE_SUBJECTS: tuple[str, ...] = (
    "a lighthouse at dusk",
    "a cat in a space suit",
    "a bowl of ramen on a rainy night",
    "an old map of an imaginary island",
    "a robot watering tomatoes",
    "a mountain village in winter",
)
_IMAGE_STYLES: tuple[str, ...] = ("A watercolour", "Pixel art", "A photo", "An ink sketch")
_PROMPT_FRAMES: tuple[str, ...] = (
    "{}",
    "{}",
    "Reply to this tweet: {}",
    "Is this offensive? {}",
    "Rewrite politely: {}",
    "Summarise: {}",
)


@dataclass(frozen=True)
class Corpus:
    """Corpus texts grouped by label, drawn with :data:`LABEL_WEIGHTS`."""

    labels: tuple[str, ...]
    cum_weights: tuple[int, ...]
    texts: dict[str, tuple[str, ...]]

    @classmethod
    def load(cls, path: Path = CORPUS_PATH) -> Corpus:
        """Read the sample CSV; a label missing from :data:`LABEL_WEIGHTS` is an error."""
        by_label: dict[str, list[str]] = {label: [] for label in LABEL_WEIGHTS}
        with path.open(newline="", encoding="utf-8") as fh:
            for row_no, row in enumerate(csv.DictReader(fh), start=2):
                if row["label"] not in by_label:
                    raise ValueError(
                        f"{path}:{row_no}: label {row['label']!r}; expected one of {list(by_label)}"
                    )
                by_label[row["label"]].append(row["text"])
        labels = tuple(label for label, texts in by_label.items() if texts)
        running, cum = 0, []
        for label in labels:
            running += LABEL_WEIGHTS[label]
            cum.append(running)
        return cls(labels, tuple(cum), {label: tuple(by_label[label]) for label in labels})

    def text(self, rng: random.Random) -> str:
        """One corpus text, its label drawn by weight."""
        label = rng.choices(self.labels, cum_weights=self.cum_weights)[0]
        return rng.choice(self.texts[label])


def chat_prompt(rng: random.Random, corpus: Corpus) -> str:
    """A user's prompt: usually a framed corpus text; sometimes Unicode-heavy; rarely ``""``."""
    roll = rng.random()
    if roll < 0.01:
        return ""
    prompt = rng.choice(_PROMPT_FRAMES).format(corpus.text(rng))
    if roll < 0.05:
        prompt = f"{prompt} {rng.choice(UNICODE_SNIPPETS)}"
    return prompt


def chat_answer(rng: random.Random, corpus: Corpus, prompt: str) -> str:
    """What a model answered: corpus text (as if generated), a template, or a long reply."""
    roll = rng.random()
    if roll < 0.35:
        return corpus.text(rng)
    if roll < 0.50:
        return rng.choice(_REFUSALS)
    if roll < 0.65:
        gist = prompt[:60].strip() or "your message"
        return f'In short, "{gist}…" is a {rng.choice(("casual", "heated", "sarcastic"))} remark.'
    if roll < 0.80:
        return f"Here's a calmer way to put it:\n\n{corpus.text(rng)}"
    if roll < 0.85:
        return f"Traduction : {rng.choice(UNICODE_SNIPPETS)}"
    points = [corpus.text(rng) for _ in range(rng.randint(3, 6))]
    return "Sure! A few thoughts:\n" + "\n".join(f"{i}. {p}" for i, p in enumerate(points, 1))


def image_prompt(rng: random.Random, corpus: Corpus) -> str:
    """An image-generation prompt: a subject and style, or (sometimes) a raw corpus text."""
    if rng.random() < 0.15:
        return corpus.text(rng)
    return f"{rng.choice(_IMAGE_STYLES)} of {rng.choice(_IMAGE_SUBJECTS)}"


def token_count(rng: random.Random, text: str) -> int:
    """Tokens a tokenizer would plausibly report: about one per 4 UTF-8 bytes, with noise.

    Counting bytes rather than characters makes emoji and CJK cost more tokens, as they do.

    >>> token_count(random.Random(0), "")
    0
    >>> 20 <= token_count(random.Random(0), "x" * 100) <= 30
    True
    """
    size = len(text.encode("utf-8"))
    if size == 0:
        return 0
    return max(1, round(size / 4 * rng.uniform(0.85, 1.2)))
