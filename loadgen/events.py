"""Valid synthetic events: a model's request and response, as the input contract spells them.

:class:`EventFactory` turns a user and a time (from :class:`~loadgen.load.LoadPlan`)
into one event dict that passes every contract rule. The model decides its shape: image models
give ``image_generation`` with ``usage.images``, embedding models ``embedding`` with no output,
the rest ``chat_completion`` or ``text_generation`` with token counts that follow the texts.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from loadgen.images import ImagePool, image_ref_path
from loadgen.load import BASE_TIME, Population
from loadgen.text import (
    Corpus,
    chat_answer,
    chat_prompt,
    image_prompt,
    token_count,
)

#: A self-hosted model with no row in ``pricing.csv``: its events are processed but unpriced.
UNPRICED_MODEL = "llama-3.1-70b-selfhosted"
#: Share of events per model kind, in percent (spread evenly over that kind's models).
KIND_SHARES: dict[str, int] = {"chat": 72, "embedding": 12, "image": 12, "unpriced": 4}
#: Zones some clients report in instead of ``Z``.
UTC_OFFSETS: tuple[tuple[str, int], ...] = (("+02:00", 120), ("-05:00", -300), ("+05:30", 330))
_APPS = ("web", "ios", "android", "slack-bot", "api")


@dataclass(frozen=True)
class ModelCard:
    """A model and the shape of its events: ``chat``, ``embedding``, ``image`` or ``unpriced``."""

    name: str
    kind: str
    bills_input_tokens: bool


def model_catalogue(pricing: list[dict[str, str]]) -> tuple[ModelCard, ...]:
    """Every model of the pricing table, classified by which prices it has, plus the unpriced one.

    A model with a per-image price and no output price makes images; one with neither is an
    embedding model; every other model chats.
    """
    cards: dict[str, ModelCard] = {}
    for row in pricing:
        has_output = bool(row["output_per_1k_usd"].strip())
        has_image = bool(row["per_image_usd"].strip())
        kind = "image" if has_image and not has_output else "chat" if has_output else "embedding"
        cards[row["model"].strip()] = ModelCard(
            row["model"].strip(), kind, bool(row["input_per_1k_usd"].strip())
        )
    cards[UNPRICED_MODEL] = ModelCard(UNPRICED_MODEL, "unpriced", True)
    return tuple(cards.values())


def format_event_time(rng: random.Random, ms: int) -> str:
    """RFC 3339 text for ``ms`` after BASE_TIME: mostly ``Z``, 10 % with a local offset.

    >>> format_event_time(random.Random(1), 90_061_500)
    '2025-07-08T01:01:01.500Z'
    """
    moment = BASE_TIME + timedelta(milliseconds=ms)
    fraction = f".{ms % 1000:03d}" if rng.random() < 0.5 else ""
    if rng.random() < 0.1:
        zone, minutes = rng.choice(UTC_OFFSETS)
        local = moment + timedelta(minutes=minutes)
        return f"{local:%Y-%m-%dT%H:%M:%S}{fraction}{zone}"
    return f"{moment:%Y-%m-%dT%H:%M:%S}{fraction}Z"


class EventFactory:
    """Builds valid events; all randomness comes from the one ``rng`` it is given.

    Args:
        rng: the generator's random stream.
        population: users (ids and tiers).
        models: :func:`model_catalogue`.
        corpus: texts for prompts and answers.
        images: the PNG pool when image files are written, else ``None`` (image events then
            carry ``usage.images`` but no ``output.image``).
    """

    def __init__(
        self,
        rng: random.Random,
        population: Population,
        models: tuple[ModelCard, ...],
        corpus: Corpus,
        images: ImagePool | None,
    ) -> None:
        self._rng = rng
        self._population = population
        self._corpus = corpus
        self._images = images
        self._by_kind = {
            kind: tuple(m for m in models if m.kind == kind)
            for kind in KIND_SHARES
            if any(m.kind == kind for m in models)
        }
        self._kinds = tuple(self._by_kind)
        self._kind_weights = tuple(KIND_SHARES[kind] for kind in self._kinds)

    def event(self, user: int, ms: int) -> dict[str, Any]:
        """One valid event from user index ``user`` at ``ms`` after BASE_TIME."""
        rng = self._rng
        kind = rng.choices(self._kinds, weights=self._kind_weights)[0]
        model = rng.choice(self._by_kind[kind])
        event: dict[str, Any] = {
            "event_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "event_time": format_event_time(rng, ms),
            "user_id": self._population.user_ids[user],
        }
        if rng.random() < 0.9:
            event["ai_tier"] = self._population.tiers[user]
        if model.kind == "image":
            event.update(self._image_parts(model))
        elif model.kind == "embedding":
            event.update(self._embedding_parts(model))
        else:
            event.update(self._chat_parts(model))
        if rng.random() < 0.3:
            event["metadata"] = self._metadata()
        return event

    def _chat_parts(self, model: ModelCard) -> dict[str, Any]:
        rng = self._rng
        prompt = chat_prompt(rng, self._corpus)
        answer = chat_answer(rng, self._corpus, prompt)
        parts: dict[str, Any] = {
            "operation_type": "chat_completion" if rng.random() < 0.8 else "text_generation",
            "model": model.name,
            "input": {"text": prompt},
            "output": {"text": answer},
        }
        if rng.random() < 0.98:  # a few clients never report usage; it defaults to 0
            system_prompt = rng.choice((0, 12, 40, 350))
            parts["usage"] = {
                "input_tokens": system_prompt + token_count(rng, prompt),
                "output_tokens": token_count(rng, answer),
            }
        return parts

    def _embedding_parts(self, model: ModelCard) -> dict[str, Any]:
        text = self._corpus.text(self._rng)
        return {
            "operation_type": "embedding",
            "model": model.name,
            "input": {"text": text},
            "usage": {"input_tokens": token_count(self._rng, text)},
        }

    def _image_parts(self, model: ModelCard) -> dict[str, Any]:
        rng = self._rng
        prompt = image_prompt(rng, self._corpus)
        usage: dict[str, int] = {"images": rng.choices((1, 2, 3, 4), weights=(80, 10, 5, 5))[0]}
        if model.bills_input_tokens:
            usage = {"input_tokens": token_count(rng, prompt), **usage}
        parts: dict[str, Any] = {
            "operation_type": "image_generation",
            "model": model.name,
            "input": {"text": prompt},
        }
        if self._images is not None:
            parts["output"] = {"image": self._image_ref(self._images)}
        parts["usage"] = usage
        return parts

    def _image_ref(self, pool: ImagePool) -> Mapping[str, str]:
        index = self._rng.randrange(len(pool.pngs))
        if self._rng.random() < 0.25:
            return {"base64": pool.base64s[index], "mime": "image/png"}
        return {"path": image_ref_path(index)}

    def _metadata(self) -> dict[str, Any]:
        rng = self._rng
        metadata: dict[str, Any] = {
            "app": rng.choice(_APPS),
            "session": f"s-{rng.getrandbits(40):010x}",
        }
        if rng.random() < 0.3:
            metadata["client"] = {"version": f"2.{rng.randrange(12)}.{rng.randrange(5)}"}
        return metadata
