"""Moderation decisions (DESIGN.md stage 5): from each distinct content's category scores and rule
hits to its overall score, its decision and the categories that fired; then each event's decision,
the stricter of its contents' at its user's thresholds.

A content is a prompt, an output text or an image, keyed by its hash. Its overall score is the
highest of its category scores, rounded half up to two places (``moderation_decisions.score`` is
DECIMAL(3,2)), and decisions compare that rounded score with the thresholds, so the stored score
and the stored decision always agree. Rules do not move the score (it stays the models' view, the
one an AUC is measured on); they set a floor under the decision: a PII, secret, prompt-injection
or image-check hit makes content at least ``flagged``, a blocklist hit ``rejected``.

>>> t = Thresholds.of(0.5, 0.85)
>>> t.decide(cents=49), t.decide(cents=50), t.decide(cents=85)
('approved', 'flagged', 'rejected')
>>> verdicts = ContentVerdicts.build(
...     hashes=["a", "b"], kinds=["text", "text"], categories=("hate", "sexual"),
...     scores=np.array([[0.1, 0.2], [0.9, np.nan]], np.float32), hits=[("pii_email",), ()])
>>> decided = decide_contents(verdicts, t)
>>> decided.cents.tolist(), decided.decisions, decided.fired
([20, 90], ['flagged', 'rejected'], [('pii_email',), ('hate',)])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from transforms.image_checks import (
    IMAGE_BLOCKLISTED,
    IMAGE_BOMB,
    IMAGE_OVERSIZED,
    IMAGE_UNDECODABLE,
    IMAGE_UNSCANNED,
)
from transforms.moderation_rules import PII_AND_SECRETS

#: Decisions in order of strictness: an event takes the highest of its contents'.
DECISIONS = ("approved", "flagged", "rejected")
APPROVED, FLAGGED, REJECTED = range(3)

#: Hits that make content at least flagged, whatever its score: PII and secrets (a prompt must not
#: carry them), prompt injection, and an image the detector could not look at.
FLAGGING_HITS = PII_AND_SECRETS | {
    "prompt_injection",
    IMAGE_UNDECODABLE,
    IMAGE_OVERSIZED,
    IMAGE_BOMB,
    IMAGE_UNSCANNED,
}
#: Hits that reject content: the operator's blocklists.
REJECTING_HITS = frozenset({"blocklist", IMAGE_BLOCKLISTED})

#: The value of the ``sensitivity`` key in a user's ``personalization_prefs`` that asks for the
#: stricter thresholds.
STRICT = "strict"


@dataclass(frozen=True)
class Thresholds:
    """Scores at or above ``flag`` are flagged, at or above ``reject`` rejected; in cents (the
    scores' two decimal places), so comparisons are exact."""

    flag: int
    reject: int

    @classmethod
    def of(cls, flag: float, reject: float) -> Thresholds:
        """Thresholds from scores in [0, 1], as the config gives them."""
        thresholds = cls(_cents(flag), _cents(reject))
        if not 0 <= thresholds.flag <= thresholds.reject <= 100:
            raise ValueError(f"thresholds must satisfy 0 <= flag <= reject <= 1, got {flag} and {reject}")
        return thresholds

    def decide(self, cents: int) -> str:
        """The decision for an overall score of ``cents`` / 100, rules aside."""
        return DECISIONS[self.levels(np.array([cents]))[0]]

    def levels(self, cents: np.ndarray) -> np.ndarray:
        """Decision levels (indices into ``DECISIONS``) of scores in cents."""
        return (cents >= self.flag).astype(np.int8) + (cents >= self.reject).astype(np.int8)


def _cents(score: float) -> int:
    return int(Decimal(repr(score)).scaleb(2).to_integral_value(rounding="ROUND_HALF_UP"))


@dataclass(frozen=True)
class ContentVerdicts:
    """What the models and rules found in each distinct content of a batch, row by row."""

    hashes: tuple[str, ...]
    kinds: tuple[str, ...]  # "text" | "image"
    categories: tuple[str, ...]
    #: (n, len(categories)) float32 in [0, 1]; NaN where a category does not apply to the content.
    scores: np.ndarray
    #: The rules and image checks that fired on each content (names, in a fixed order).
    hits: tuple[tuple[str, ...], ...]

    @classmethod
    def build(
        cls,
        hashes: Sequence[str],
        kinds: Sequence[str],
        categories: tuple[str, ...],
        scores: np.ndarray,
        hits: Sequence[tuple[str, ...]],
    ) -> ContentVerdicts:
        if scores.shape != (len(hashes), len(categories)) or len(kinds) != len(hashes) != len(hits):
            raise ValueError(
                f"{len(hashes)} contents need scores of shape ({len(hashes)}, {len(categories)}), "
                f"{len(hashes)} kinds and hit lists; got {scores.shape}, {len(kinds)}, {len(hits)}"
            )
        return cls(tuple(hashes), tuple(kinds), categories, scores.astype(np.float32), tuple(hits))

    @classmethod
    def concat(cls, parts: Sequence[ContentVerdicts], categories: tuple[str, ...]) -> ContentVerdicts:
        """The rows of ``parts`` one after the other."""
        return cls(
            tuple(h for part in parts for h in part.hashes),
            tuple(k for part in parts for k in part.kinds),
            categories,
            np.concatenate([p.scores for p in parts])
            if parts
            else np.zeros((0, len(categories)), np.float32),
            tuple(h for part in parts for h in part.hits),
        )


@dataclass(frozen=True)
class ContentDecisions:
    """Each content's overall score (cents), rule floor, decision and fired categories at one set
    of thresholds, row for row with its :class:`ContentVerdicts`."""

    cents: np.ndarray  # int16, 0..100
    floors: np.ndarray  # int8 decision level the hits alone impose
    decisions: list[str]
    fired: list[tuple[str, ...]]


def overall_cents(scores: np.ndarray) -> np.ndarray:
    """The overall score of each row in cents: its highest category score, rounded half up; 0 for
    a row with no score at all (an image the detector could not read, an empty text)."""
    if not scores.size:
        return np.zeros(scores.shape[0], np.int16)
    top = np.max(np.where(np.isnan(scores), -1.0, scores.astype(np.float64)), axis=1)
    cents: np.ndarray = np.clip(np.floor(top * 100 + 0.5), 0, 100).astype(np.int16)
    return cents


def rule_floors(hits: Sequence[tuple[str, ...]]) -> np.ndarray:
    """The decision level each content's hits impose on it (0 when none)."""
    return np.array(
        [
            REJECTED
            if REJECTING_HITS.intersection(h)
            else FLAGGED
            if FLAGGING_HITS.intersection(h)
            else APPROVED
            for h in hits
        ],
        dtype=np.int8,
    )


def decide_contents(verdicts: ContentVerdicts, thresholds: Thresholds) -> ContentDecisions:
    """Scores, floors, decisions and fired categories of each content at ``thresholds``.

    A category fires when its score reaches the flag threshold; every hit fires.
    """
    cents = overall_cents(verdicts.scores)
    floors = rule_floors(verdicts.hits)
    levels = np.maximum(thresholds.levels(cents), floors)
    reached = np.nan_to_num(verdicts.scores, nan=0.0) * 100 >= thresholds.flag - 0.5
    fired = [
        tuple(c for c, on in zip(verdicts.categories, row, strict=True) if on) + hits
        for row, hits in zip(reached.tolist(), verdicts.hits, strict=True)
    ]
    return ContentDecisions(cents, floors, [DECISIONS[level] for level in levels.tolist()], fired)


#: The events' columns that name their contents: the prompt, the output, and an image that is a
#: content of its own (``image_hash`` is set only when the output also has a text).
CONTENT_COLUMNS = ("input_hash", "output_hash", "image_hash")


def event_decisions(
    events: pa.Table,
    hashes: Sequence[str],
    decided: ContentDecisions,
    strict: np.ndarray,
    default: Thresholds,
    stricter: Thresholds,
) -> pa.Array:
    """Each event's decision: the strictest of its contents', each decided at the event's user's
    thresholds (``stricter`` where ``strict`` is set, else ``default``).

    Args:
        events: with the :data:`CONTENT_COLUMNS`; a null hash is a content the event lacks.
        hashes: the contents ``decided`` holds, row by row; every hash the events name is among them.
        decided: the contents' scores and floors (their decisions are not used: thresholds differ
            per user).
        strict: bool per event.
    """
    index = pa.array(list(hashes), pa.string())
    flag = np.where(strict, stricter.flag, default.flag)
    reject = np.where(strict, stricter.reject, default.reject)
    level = np.zeros(events.num_rows, np.int8)
    for column in CONTENT_COLUMNS:
        found = pc.index_in(events.column(column), value_set=index)
        present = found.is_valid().to_numpy(zero_copy_only=False)
        if (events.column(column).is_valid().to_numpy(zero_copy_only=False) & ~present).any():
            raise ValueError(f"events name {column} contents that were not decided")
        if not present.any():
            continue
        rows = pc.fill_null(found, 0).to_numpy()
        cents = decided.cents[rows]
        content_level = np.maximum((cents >= flag).astype(np.int8) + (cents >= reject), decided.floors[rows])
        level = np.maximum(level, np.where(present, content_level, 0).astype(np.int8))
    return pa.array([DECISIONS[i] for i in level.tolist()], pa.string())


def first_seen(events: pa.Table) -> pa.Table:
    """``content_hash, first_seen``: each content the events name, with its earliest event time."""
    parts = [
        pa.table({"content_hash": events.column(c), "first_seen": events.column("event_time")})
        for c in CONTENT_COLUMNS
    ]
    named = pa.concat_tables(parts).filter(pc.is_valid(pc.field("content_hash")))
    found = named.group_by("content_hash").aggregate([("first_seen", "min")])
    return found.rename_columns(["content_hash", "first_seen"])


@dataclass(frozen=True)
class Scorers:
    """Who scored each content: (name, version) per row, and each image's perceptual hash."""

    names: list[str]
    versions: list[str]
    phashes: list[str | None]


def moderation_table(
    verdicts: ContentVerdicts, decided: ContentDecisions, seen: pa.Table, scorers: Scorers, schema: pa.Schema
) -> pa.Table:
    """The ``moderation/`` rows of a batch's contents, in ``schema`` (the dataset's).

    ``seen`` is :func:`first_seen` of the batch; every content of ``verdicts`` is in it.
    """
    at = pc.index_in(pa.array(verdicts.hashes, pa.string()), value_set=seen.column("content_hash"))
    n = len(verdicts.hashes)
    columns: dict[str, pa.Array | pa.ChunkedArray] = {
        "content_hash": pa.array(verdicts.hashes, pa.string()),
        "content_type": pa.array(verdicts.kinds, pa.string()),
        "first_seen": seen.column("first_seen").take(at),
        "score": pa.array([Decimal(int(c)).scaleb(-2) for c in decided.cents.tolist()], pa.decimal128(3, 2)),
        "decision": pa.array(decided.decisions, pa.string()),
        "categories": pa.array([list(f) for f in decided.fired], pa.list_(pa.string())),
        "rule_hits": pa.array([list(h) for h in verdicts.hits], pa.list_(pa.string())),
        "phash": pa.array(scorers.phashes, pa.string()),
        "scorer": pa.array(scorers.names, pa.string()),
        "scorer_version": pa.array(scorers.versions, pa.string()),
    }
    for i, category in enumerate(verdicts.categories):
        column = verdicts.scores[:, i] if n else np.zeros(0, np.float32)
        columns[category] = pa.array(column, pa.float32(), mask=np.isnan(column))
    return pa.table({name: columns[name] for name in schema.names}).cast(schema)


def first_per_content(rows: pa.Table) -> pa.Table:
    """One ``moderation/`` row per content: the one first seen (rows of one content differ only
    in ``first_seen``: scoring is deterministic)."""
    if not rows.num_rows:
        return rows
    ordered = rows.sort_by([("content_hash", "ascending"), ("first_seen", "ascending")])
    hashes = ordered.column("content_hash").to_numpy(zero_copy_only=False)
    keep = np.ones(len(hashes), dtype=bool)
    keep[1:] = hashes[1:] != hashes[:-1]
    return ordered.filter(pa.array(keep))


def decision_rows(rows: pa.Table) -> pa.Table:
    """What ``moderation_decisions`` stores of ``moderation/`` rows: hashes, decisions, scores,
    what fired and the scorer; never a text."""
    return pa.table(
        {
            "content_hash": rows.column("content_hash"),
            "decision": rows.column("decision"),
            "score": rows.column("score"),
            "categories": rows.column("categories"),
            "scorer": rows.column("scorer"),
            "scorer_version": rows.column("scorer_version"),
        }
    )
