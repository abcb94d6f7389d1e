"""Prometheus metrics of a stream job, served on 127.0.0.1 (``--metrics-port``).

The job's steps report counts and timings (:class:`pipelines.stream.Counted`); :class:`StreamMetrics`
turns them into metrics in a registry of its own, so two jobs in one process (tests) never share
one. Names follow Prometheus' conventions: ``aiep_`` prefix, ``_total`` counters, ``_seconds``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

#: Counts that map one to one onto a counter: (count name, metric name, help).
_COUNTERS = (
    ("events_read", "aiep_events_in_total", "Events read from the source."),
    ("events_processed", "aiep_events_out_total", "Events written to the audit trail and events/."),
    ("duplicates_collapsed", "aiep_duplicates_collapsed_total", "Copies of an event already seen."),
    ("late_events", "aiep_late_events_total", "Events that arrived after their window closed."),
    ("rate_limited", "aiep_rate_limited_total", "Events past their tier's quota."),
    ("entries_acknowledged", "aiep_entries_acknowledged_total", "Redis entries acknowledged (XACK)."),
    ("embedding_cache_hits", "aiep_embedding_cache_hits_total", "Texts found in the embedding cache."),
    ("embedding_cache_misses", "aiep_embedding_cache_misses_total", "Texts the model embedded."),
    ("user_features_written", "aiep_user_features_written_total", "user_features rows written."),
)
DECISIONS = ("approved", "flagged", "rejected")


class StreamMetrics:
    """The job's metrics; :meth:`observe` takes a step's counts and timings."""

    def __init__(self, lag: Callable[[], int | None] = lambda: None) -> None:
        self.registry = CollectorRegistry()
        self._counters = {
            count: Counter(name.removesuffix("_total"), text, registry=self.registry)
            for count, name, text in _COUNTERS
        }
        self._dead = Counter(
            "aiep_events_dead_lettered",
            "Records dead-lettered, by reason.",
            ["reason"],
            registry=self.registry,
        )
        self._decisions = Counter(
            "aiep_decisions", "Events moderated, by decision.", ["decision"], registry=self.registry
        )
        self._stage = Histogram(
            "aiep_stage_seconds",
            "Wall time of one call of a stream step on a batch.",
            ["stage"],
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=self.registry,
        )
        self._model_batch = Histogram(
            "aiep_model_batch_texts",
            "Texts a model stage handled in one call (embedding misses, moderated contents).",
            ["model"],
            buckets=(1, 8, 32, 64, 128, 256, 512, 1024, 4096, 16384),
            registry=self.registry,
        )
        self._hit_rate = Gauge(
            "aiep_embedding_cache_hit_ratio",
            "Embedding cache hits over lookups so far.",
            registry=self.registry,
        )
        self._in_windows = Gauge(
            "aiep_events_in_open_windows_change",
            "Change, since this start, of the events waiting in open windows.",
            registry=self.registry,
        )
        lag_gauge = Gauge("aiep_source_lag_entries", "Stream entries not yet delivered to the group.",
                          registry=self.registry)  # fmt: skip
        lag_gauge.set_function(lambda: float(lag() or 0))
        self._hits = self._lookups = 0
        self._lock = threading.Lock()

    def observe(
        self, counts: Mapping[str, int], timings: Mapping[str, float], batches: Mapping[str, int]
    ) -> None:
        for count, counter in self._counters.items():
            value = counts.get(count, 0)
            if value > 0:
                counter.inc(value)
        for name, value in counts.items():
            if name.startswith("dead_letter.") and value > 0:
                self._dead.labels(reason=name.split(".", 1)[1]).inc(value)
        for decision in DECISIONS:
            value = counts.get(f"decisions_{decision}", 0)
            if value > 0:
                self._decisions.labels(decision=decision).inc(value)
        self._in_windows.inc(counts.get("events_in_windows_change", 0))
        with self._lock:  # several workers' results sinks report at once
            self._hits += counts.get("embedding_cache_hits", 0)
            self._lookups += counts.get("embedding_cache_hits", 0) + counts.get("embedding_cache_misses", 0)
            if self._lookups:
                self._hit_rate.set(self._hits / self._lookups)
        for stage, seconds in timings.items():
            self._stage.labels(stage=stage).observe(seconds)
        for model, size in batches.items():
            if size > 0:
                self._model_batch.labels(model=model).observe(size)

    def serve(self, port: int) -> Any:
        """Serve ``/metrics`` on 127.0.0.1:``port``; returns the server (``shutdown()`` stops it)."""
        server, _ = start_http_server(port, addr="127.0.0.1", registry=self.registry)
        return server
