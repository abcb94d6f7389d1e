"""The embedding benchmark's anchors: a raw ``SentenceTransformer.encode`` of the texts, and what a
Beam user would write instead, ``MLTransform`` with ``SentenceTransformerEmbeddings``.

* :func:`raw_encode`: one ``model.encode(texts, batch_size=64, normalize_embeddings=True)``, the
  ceiling of any pipeline that embeds those texts with that model on these threads.
* :func:`mltransform`: ``beam.Create`` of ``{"text": ...}`` rows → ``MLTransform`` (its defaults:
  RunInference's batching, ``encode``'s arguments, no normalisation) on the DirectRunner. It loads
  its own copy of the model inside each run, as it would in a user's job.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.measure import stopwatch

#: The raw anchor's batch size: the pipeline's default ``[embeddings] batch_size``.
BATCH_SIZE = 64


@dataclass(frozen=True)
class TextsMeasurement:
    """One timed way of embedding texts: how many it was given, how many the model embedded."""

    name: str
    what: str  # what was timed, in words
    texts: int  # the numerator of texts/s: every text of the input, repeats included
    wall_s: float
    cpu_s: float  # user + system, all threads of this process
    others_cores: float  # CPU cores other processes kept busy meanwhile (noise)
    events: int | None = None  # the numerator of events/s, for a pipeline run
    model_texts: int | None = None  # texts the model was called on (``None``: not counted)
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def texts_per_s(self) -> float:
        return self.texts / self.wall_s if self.wall_s > 0 else float("nan")

    @property
    def events_per_s(self) -> float | None:
        return None if self.events is None or self.wall_s <= 0 else self.events / self.wall_s


def raw_encode(name: str, texts: Sequence[str], model: Any) -> TextsMeasurement:
    """Time one ``model.encode`` of ``texts``, as a user of sentence-transformers would call it."""
    with stopwatch() as watch:
        vectors = model.encode(
            list(texts), batch_size=BATCH_SIZE, normalize_embeddings=True, show_progress_bar=False
        )
    what = f"SentenceTransformer.encode of {len(texts):,} texts, batch_size={BATCH_SIZE}, normalised"
    return TextsMeasurement(
        name, what, len(texts), watch.wall_s, watch.cpu_s, watch.others_cores, model_texts=len(texts),
        details={"shape": list(vectors.shape)},
    )  # fmt: skip


def _count_vector(row: dict[str, Any]) -> None:
    from apache_beam.metrics.metric import Metrics

    Metrics.counter("bench", f"vectors_of_{len(row['text'])}").inc()


def mltransform(name: str, texts: Sequence[str], artifacts: Path) -> TextsMeasurement | str:
    """Time Beam's ``MLTransform`` + ``SentenceTransformerEmbeddings`` on ``texts`` (DirectRunner),
    or say why it cannot run."""
    import apache_beam as beam
    from apache_beam.metrics.metric import MetricsFilter
    from apache_beam.ml.transforms.base import MLTransform
    from apache_beam.ml.transforms.embeddings.huggingface import SentenceTransformerEmbeddings

    from models.embedder import model_path

    embeddings = SentenceTransformerEmbeddings(
        model_name=model_path(), columns=["text"], load_model_args={"device": "cpu", "local_files_only": True}
    )
    try:
        with stopwatch() as watch:
            logging.disable(logging.WARNING)  # Beam warns that MLTransform's type hint is ignored
            try:
                pipeline = beam.Pipeline()
                _ = (
                    pipeline
                    | "Texts" >> beam.Create([{"text": text} for text in texts])
                    | "Embed"
                    >> MLTransform(write_artifact_location=str(artifacts)).with_transform(embeddings)
                    | "CountVectors" >> beam.Map(_count_vector)
                )
            finally:
                logging.disable(logging.NOTSET)
            result = pipeline.run()
            result.wait_until_finish()
    except Exception as exc:  # reported in the table's place: why the peer has no figure
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    counters = result.metrics().query(MetricsFilter().with_namespace("bench"))["counters"]
    vectors = {c.key.metric.name: int(c.committed or c.attempted or 0) for c in counters}
    what = (
        f"beam.Create → MLTransform(SentenceTransformerEmbeddings(model_name=<packaged model>)) of "
        f"{len(texts):,} texts, DirectRunner, its default batching and encode arguments"
    )
    return TextsMeasurement(
        name, what, len(texts), watch.wall_s, watch.cpu_s, watch.others_cores, details={"outputs": vectors}
    )
