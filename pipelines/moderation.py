"""The moderation stages (DESIGN.md stage 5): every event, rate-limited ones included.

They come after :class:`~pipelines.semantic.EmbedTexts`, which embeds every text a pane holds
(the text model reads MiniLM vectors), and are built by :class:`~pipelines.worker.SpineWorker`:

1. :class:`ModerateContent`: each distinct content of a pane (prompt, output text, image) is
   scored once: the text model and the rules on texts; decoding checks, the perceptual-hash
   blocklist and the nudity detector on images. Each event gets the strictest decision of its
   contents at its user's thresholds (``events.decision``); each content gets one row of
   ``moderation/``, keyed for a shuffle by its hash's shard.
2. :class:`WriteModeration`: the rows of one shard, one per content (the first seen), to
   ``moderation/`` and to ``moderation_decisions`` through the :class:`DecisionSink`, which never
   overwrites a human review.
"""

from __future__ import annotations

import posixpath
import zlib
from collections.abc import Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from connectors.images import image_loader
from connectors.parquet_sink import ParquetSink
from connectors.sinks import Counts, Sink
from connectors.users import UserDirectory
from models.image_moderator import IMAGE_CATEGORIES, ImageModerator
from models.moderation_text import TEXT_CATEGORIES, TextModerator
from transforms.dead_letter import ContractViolation
from transforms.embedding import TextsToEmbed
from transforms.event_batch import IMAGE, IMAGE_PATH, INPUT_TEXT, OUTPUT_TEXT
from transforms.image_checks import (
    IMAGE_BLOCKLISTED,
    IMAGE_UNDECODABLE,
    DecodedImage,
    ImageProblem,
    PhashBlocklist,
    decode_image,
    unscanned,
)
from transforms.moderation import (
    DECISIONS,
    STRICT,
    ContentVerdicts,
    Scorers,
    Thresholds,
    decide_contents,
    decision_rows,
    event_decisions,
    first_per_content,
    first_seen,
    moderation_table,
)
from transforms.moderation_rules import RuleSet
from transforms.sharding import split_by_shard
from transforms.validate import is_url

#: Every category a content is scored in: the text model's, then the image detector's it lacks.
#: Each is a column of ``moderation/`` (a test checks the dataset declares them all).
CATEGORIES = TEXT_CATEGORIES + tuple(c for c in IMAGE_CATEGORIES if c not in TEXT_CATEGORIES)
#: Images decoded and scored together: the detector's batch, twice.
IMAGE_CHUNK = 32


class ScreenImages:
    """Images → verdicts: decoding checks (undecodable, oversized, bomb), the pHash blocklist,
    then the nudity detector on those that decoded. An http(s) image is never fetched: it is
    ``image_unscanned``. A path image is read here, from the path validation resolved."""

    def __init__(
        self, model: ImageModerator, blocklist: PhashBlocklist, max_pixels: int, max_bytes: int
    ) -> None:
        self.model = model
        self.blocklist = blocklist
        self.max_pixels = max_pixels
        self.max_bytes = max_bytes
        self.scorer = (model.name, model.version)

    def __call__(
        self, images: Sequence[bytes | str]
    ) -> tuple[np.ndarray, list[tuple[str, ...]], list[str | None]]:
        """(scores in ``IMAGE_CATEGORIES``, NaN when not scanned; hits; pHashes) per image, given
        its bytes, its resolved path or its URL."""
        scores = np.full((len(images), len(IMAGE_CATEGORIES)), np.nan, np.float32)
        hits: list[tuple[str, ...]] = [()] * len(images)
        phashes: list[str | None] = [None] * len(images)
        # A chunk at a time: decoded pixels (up to ~120 MB for a 40 MP image) are never held for a
        # whole pane.
        for start in range(0, len(images), IMAGE_CHUNK):
            decoded: list[tuple[int, DecodedImage]] = []
            for i in range(start, min(start + IMAGE_CHUNK, len(images))):
                found = self._decode(images[i])
                if isinstance(found, ImageProblem):
                    hits[i] = (found.reason,)
                    continue
                phashes[i] = found.phash
                if self.blocklist.matches(found.phash):
                    hits[i] = (IMAGE_BLOCKLISTED,)
                decoded.append((i, found))
            if decoded:
                scores[[i for i, _ in decoded]] = self.model([image.rgb for _, image in decoded])
        return scores, hits, phashes

    def _decode(self, image: bytes | str) -> DecodedImage | ImageProblem:
        if isinstance(image, str):
            if is_url(image):
                return unscanned(image)
            try:
                image = image_loader(posixpath.dirname(image), self.max_bytes)(posixpath.basename(image))
            except ContractViolation as exc:  # gone or changed since validation
                return ImageProblem(IMAGE_UNDECODABLE, f"{exc.reason.value}: {exc.detail}")
        return decode_image(image, max_pixels=self.max_pixels)


class ModerateContent:
    """Moderate a pane: each distinct content once, then each event's decision.

    Calling it returns the events with ``decision``, the pane's ``moderation/`` rows split by
    content shard, and the count of events per decision (``decisions_approved`` …).
    """

    def __init__(
        self,
        text_model: TextModerator,
        rules: RuleSet,
        images: ScreenImages,
        users: UserDirectory,
        thresholds: tuple[Thresholds, Thresholds],
        schema: pa.Schema,
        shards: int,
    ) -> None:
        self.text_model = text_model
        self.rules = rules
        self.images = images
        self.users = users
        self.default, self.strict = thresholds
        self.schema = schema
        self.shards = shards

    def __call__(
        self, events: pa.Table, texts: TextsToEmbed, vectors: np.ndarray
    ) -> tuple[pa.Table, list[tuple[int, pa.Table]], Counts]:
        """Moderate ``events``; ``texts`` and ``vectors`` are every non-empty text of theirs with
        its MiniLM vector (:class:`~pipelines.semantic.EmbedTexts` with ``rate_limited_too``)."""
        text_part, text_scorers = self._texts(events, texts, vectors)
        image_part, image_scorers = self._images(events)
        verdicts = ContentVerdicts.concat([text_part, image_part], CATEGORIES)
        decided = decide_contents(verdicts, self.default)
        decisions = event_decisions(
            events, verdicts.hashes, decided, self._strict_users(events), self.default, self.strict
        )
        events = events.set_column(events.schema.get_field_index("decision"), "decision", decisions)
        scorers = Scorers(
            text_scorers.names + image_scorers.names,
            text_scorers.versions + image_scorers.versions,
            text_scorers.phashes + image_scorers.phashes,
        )
        rows = moderation_table(verdicts, decided, first_seen(events), scorers, self.schema)
        counts = {f"decisions_{d}": int(pc.sum(pc.equal(decisions, d)).as_py() or 0) for d in DECISIONS}
        return events, split_by_content_shard(rows, self.shards), counts

    def _texts(
        self, events: pa.Table, texts: TextsToEmbed, vectors: np.ndarray
    ) -> tuple[ContentVerdicts, Scorers]:
        """Every distinct text content: the embedded ones, and empty ones (nothing to score)."""
        firsts: dict[str, int] = {}
        for i, content in enumerate(texts.hashes):
            firsts.setdefault(content, i)
        at = np.fromiter(firsts.values(), np.int64, len(firsts))
        distinct = [texts.texts[i] for i in at]
        empty = _empty_texts(events, firsts.keys())
        hashes = [*firsts, *empty]
        n = len(hashes)
        scores = np.full((n, len(CATEGORIES)), np.nan, np.float32)
        scores[:, : len(TEXT_CATEGORIES)] = 0.0  # an empty text: nothing to object to
        if distinct:
            scores[: len(distinct), : len(TEXT_CATEGORIES)] = self.text_model.score(distinct, vectors[at])
        hits = self.rules.hits(distinct) + [()] * len(empty)
        scorer = (self.text_model.name, self.text_model.version)
        verdicts = ContentVerdicts.build(hashes, ["text"] * n, CATEGORIES, scores, hits)
        return verdicts, Scorers([scorer[0]] * n, [scorer[1]] * n, [None] * n)

    def _images(self, events: pa.Table) -> tuple[ContentVerdicts, Scorers]:
        """Every distinct image content, screened once."""
        found: dict[str, bytes | str] = {}
        is_image = pc.equal(events.column("modality"), "image").to_numpy(zero_copy_only=False)
        rows = np.flatnonzero(is_image)
        image_hashes = pc.coalesce(events.column("image_hash"), events.column("output_hash")).take(rows)
        inline = events.column(IMAGE).take(rows).to_pylist()
        paths = events.column(IMAGE_PATH).take(rows).to_pylist()
        for content, data, path in zip(image_hashes.to_pylist(), inline, paths, strict=True):
            if content not in found:
                found[content] = data if data is not None else path
        hashes = list(found)
        scores = np.full((len(hashes), len(CATEGORIES)), np.nan, np.float32)
        image_scores, hits, phashes = self.images(list(found.values()))
        for j, category in enumerate(IMAGE_CATEGORIES):
            scores[:, CATEGORIES.index(category)] = image_scores[:, j]
        n = len(hashes)
        name, version = self.images.scorer
        return (
            ContentVerdicts.build(hashes, ["image"] * n, CATEGORIES, scores, hits),
            Scorers([name] * n, [version] * n, phashes),
        )

    def _strict_users(self, events: pa.Table) -> np.ndarray:
        """Per event: whether its user's prefs ask for ``"sensitivity": "strict"``."""
        users = events.column("user_id").to_pylist()
        profiles = self.users.profiles(set(users))
        strict = {uid for uid, p in profiles.items() if p.prefs and p.prefs.get("sensitivity") == STRICT}
        return np.array([uid in strict for uid in users], dtype=bool)


def _empty_texts(events: pa.Table, embedded: Iterable[str]) -> list[str]:
    """Hashes of the events' empty texts (a prompt may be ``""``): contents with nothing to score."""
    found: list[str] = []
    known = set(embedded)
    for text_column, hash_column in ((INPUT_TEXT, "input_hash"), (OUTPUT_TEXT, "output_hash")):
        empty = pc.fill_null(pc.equal(pc.utf8_length(events.column(text_column)), 0), False)
        for content in pc.unique(events.column(hash_column).filter(empty)).to_pylist():
            if content not in known:
                known.add(content)
                found.append(content)
    return found


def split_by_content_shard(rows: pa.Table, shards: int) -> list[tuple[int, pa.Table]]:
    """``rows`` by the shard of their ``content_hash``: one content's rows meet in one place."""
    contents = rows.column("content_hash").to_pylist()
    shard = pa.array([zlib.crc32(h.encode("ascii")) % shards for h in contents], pa.int64())
    return list(split_by_shard(rows, shard))


class WriteModeration:
    """Sink: a shard's ``moderation/`` rows, one per content (its earliest), to Parquet and to
    ``moderation_decisions``."""

    def __init__(self, parquet: ParquetSink, decisions: Sink) -> None:
        self.parquet = parquet
        self.decisions = decisions

    def __call__(self, key: str, tables: Iterable[pa.Table]) -> Counts:
        rows = first_per_content(pa.concat_tables(tables))
        self.parquet.write(key, rows)
        written = self.decisions.write(key, decision_rows(rows))
        return {"moderation_rows_written": rows.num_rows, **written.counts}
