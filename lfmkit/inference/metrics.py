"""Prometheus metrics for the server and the engine, rendered as the text exposition format.

A tiny self-contained implementation (counters, gauges, histograms, optional labels) so serving
needs no extra dependency. Every metric is thread-safe: the engine thread observes token
latencies while the HTTP event loop counts requests and renders `/metrics`.
"""

from __future__ import annotations

import math
import threading
from typing import Callable

# Latency buckets in seconds: time to first token spans prefill of long prompts, per-token
# latency spans one decode step (milliseconds on a GPU, tens of milliseconds on a laptop CPU).
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
REQUEST_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: tuple[str, ...], values: tuple[str, ...], extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _number(x: float) -> str:
    if x == math.inf:
        return "+Inf"
    if float(x).is_integer():
        return str(int(x))
    return repr(float(x))


class _Metric:
    kind = ""

    def __init__(self, name: str, help_text: str, labelnames: tuple[str, ...] = ()):
        self.name = name
        self.help = help_text
        self.labelnames = tuple(labelnames)
        self._lock = threading.Lock()

    def _key(self, labels: dict[str, str] | None) -> tuple[str, ...]:
        labels = labels or {}
        if set(labels) != set(self.labelnames):
            raise ValueError(f"metric {self.name} takes labels {self.labelnames}, got {tuple(labels)}")
        return tuple(str(labels[n]) for n in self.labelnames)

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]


class Counter(_Metric):
    """A monotonically increasing count (requests, tokens)."""

    kind = "counter"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._values: dict[tuple[str, ...], float] = {}
        self._read: Callable[[], float] | None = None

    def bind(self, read: Callable[[], float]) -> None:
        """Read the (unlabelled) count from a callback at render time, e.g. a counter kept elsewhere."""
        self._read = read

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, **labels: str) -> float:
        if self._read is not None:
            return float(self._read())
        with self._lock:
            return self._values.get(self._key(labels), 0.0)

    def render(self) -> list[str]:
        if self._read is not None:
            return self.header() + [f"{self.name} {_number(self._read())}"]
        with self._lock:
            items = sorted(self._values.items())
        if not items and not self.labelnames:
            items = [((), 0.0)]
        return self.header() + [f"{self.name}{_labels(self.labelnames, k)} {_number(v)}" for k, v in items]


class Gauge(_Metric):
    """A value read at render time from a callback (queue depth, running sequences)."""

    kind = "gauge"

    def __init__(self, name: str, help_text: str, read: Callable[[], float] | None = None):
        super().__init__(name, help_text)
        self._read = read
        self._value = 0.0

    def set(self, value: float) -> None:
        self._value = float(value)

    def bind(self, read: Callable[[], float]) -> None:
        self._read = read

    def value(self) -> float:
        return float(self._read()) if self._read is not None else self._value

    def render(self) -> list[str]:
        return self.header() + [f"{self.name} {_number(self.value())}"]


class Histogram(_Metric):
    """Cumulative buckets, sum and count, as Prometheus expects."""

    kind = "histogram"

    def __init__(self, name: str, help_text: str, buckets: tuple[float, ...]):
        super().__init__(name, help_text)
        self.buckets = tuple(sorted(buckets)) + (math.inf,)
        self._counts = [0] * len(self.buckets)
        self._sum = 0.0
        self._count = 0

    def observe(self, value: float) -> None:
        with self._lock:
            for i, bound in enumerate(self.buckets):
                if value <= bound:
                    self._counts[i] += 1
                    break
            self._sum += value
            self._count += 1

    @property
    def count(self) -> int:
        return self._count

    @property
    def total(self) -> float:
        return self._sum

    def render(self) -> list[str]:
        with self._lock:
            counts, total, count = list(self._counts), self._sum, self._count
        lines = self.header()
        running = 0
        for bound, c in zip(self.buckets, counts):
            running += c
            lines.append(f'{self.name}_bucket{{le="{_number(bound)}"}} {running}')
        lines.append(f"{self.name}_sum {_number(total)}")
        lines.append(f"{self.name}_count {count}")
        return lines


class ServingMetrics:
    """Every metric `lfmkit serve` exposes on `GET /metrics` (names prefixed `lfmkit_`)."""

    def __init__(self):
        self.requests = Counter(
            "lfmkit_requests_total", "HTTP requests by endpoint and status code.", ("endpoint", "status")
        )
        self.prompt_tokens = Counter("lfmkit_prompt_tokens_total", "Prompt tokens prefilled.")
        self.generation_tokens = Counter("lfmkit_generation_tokens_total", "Tokens generated.")
        self.finished = Counter("lfmkit_sequences_finished_total", "Generated sequences by finish reason.", ("reason",))
        self.rejected = Counter("lfmkit_requests_rejected_total", "Requests refused because the queue was full.")
        self.queue_depth = Gauge("lfmkit_queue_depth", "Requests waiting for a batch slot.")
        self.running = Gauge("lfmkit_running_sequences", "Sequences in the running batch.")
        self.slots = Gauge("lfmkit_batch_slots", "Batch slots (maximum concurrent sequences).")
        self.ttft = Histogram(
            "lfmkit_time_to_first_token_seconds",
            "Time from request arrival to its first generated token.",
            TTFT_BUCKETS,
        )
        self.token_latency = Histogram(
            "lfmkit_time_per_output_token_seconds", "Time between consecutive tokens of one sequence.", TOKEN_BUCKETS
        )
        self.request_latency = Histogram(
            "lfmkit_request_duration_seconds", "Time from request arrival to its last token.", REQUEST_BUCKETS
        )
        self.decode_tokens = Counter("lfmkit_decode_tokens_total", "Tokens generated by decode (or verify) steps.")
        self.decode_seconds = Counter("lfmkit_decode_seconds_total", "Seconds spent in decode (or verify) steps.")
        self.decode_speed = Gauge(
            "lfmkit_decode_tokens_per_second",
            "Decode throughput so far: decode tokens / decode seconds (all running sequences together).",
            read=lambda: self.decode_tokens.value() / max(self.decode_seconds.value(), 1e-9),
        )
        self.draft_tokens = Counter(
            "lfmkit_spec_draft_tokens_total", "Draft tokens proposed for verification (speculative decoding)."
        )
        self.accepted_tokens = Counter("lfmkit_spec_accepted_tokens_total", "Draft tokens the target accepted.")
        self.acceptance = Gauge(
            "lfmkit_spec_acceptance_rate",
            "Accepted / proposed draft tokens so far (0 before any draft).",
            read=lambda: self.accepted_tokens.value() / max(self.draft_tokens.value(), 1.0),
        )
        self.cache_hits = Counter("lfmkit_prefix_cache_hits_total", "Prompts resumed from a cached prefix.")
        self.cache_misses = Counter("lfmkit_prefix_cache_misses_total", "Prompts with no cached prefix to resume.")
        self.cache_hit_tokens = Counter(
            "lfmkit_prefix_cache_hit_tokens_total", "Prompt tokens restored from the prefix cache instead of prefilled."
        )
        self.cache_evictions = Counter("lfmkit_prefix_cache_evictions_total", "Prefix-cache nodes evicted (LRU).")
        self.cache_bytes = Gauge("lfmkit_prefix_cache_bytes", "Bytes held by the prefix cache.")
        self.cache_capacity = Gauge("lfmkit_prefix_cache_capacity_bytes", "The prefix cache's budget (--cache-mb).")
        self.cache_snapshots = Gauge("lfmkit_prefix_cache_snapshots", "Resumable points in the prefix cache.")

    def bind_cache(self, cache) -> None:
        """Report a `PrefixCache`'s counters and sizes (all zero when `cache` is None: no cache)."""
        if cache is None:
            return
        self.cache_hits.bind(lambda: cache.hits)
        self.cache_misses.bind(lambda: cache.misses)
        self.cache_hit_tokens.bind(lambda: cache.hit_tokens)
        self.cache_evictions.bind(lambda: cache.evictions)
        self.cache_bytes.bind(lambda: cache.bytes)
        self.cache_capacity.set(cache.max_bytes)
        self.cache_snapshots.bind(lambda: cache.snapshots)

    def all(self) -> list[_Metric]:
        return [
            self.requests,
            self.prompt_tokens,
            self.generation_tokens,
            self.finished,
            self.rejected,
            self.queue_depth,
            self.running,
            self.slots,
            self.ttft,
            self.token_latency,
            self.request_latency,
            self.decode_tokens,
            self.decode_seconds,
            self.decode_speed,
            self.draft_tokens,
            self.accepted_tokens,
            self.acceptance,
            self.cache_hits,
            self.cache_misses,
            self.cache_hit_tokens,
            self.cache_evictions,
            self.cache_bytes,
            self.cache_capacity,
            self.cache_snapshots,
        ]

    def render(self) -> str:
        lines: list[str] = []
        for metric in self.all():
            lines.extend(metric.render())
        return "\n".join(lines) + "\n"


__all__ = ["Counter", "Gauge", "Histogram", "ServingMetrics"]
