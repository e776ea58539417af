"""The bridge's Prometheus metrics, in a registry each Bridge owns (no process-global state).

Counters move per call summary and per upstream batch (~10 a second per call), never per
media frame, so the audio path pays nothing it would notice. Labels are closed sets (provider,
outcome, Eka operation, HTTP status): never a call or session id, never anything a caller said.
"""

from __future__ import annotations

import asyncio
from collections import Counter as Tally
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

#: End Session, retries included: usually well under a second, up to EKA_END_RETRY_BUDGET_S.
END_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
#: From ``stop`` to the server's close (its last chunk in storage): hundreds of ms to seconds.
FLUSH_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 60.0)
#: Audio waiting in the bridge before it goes upstream: ~one batch normally, seconds when stalled.
LAG_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: How late the event loop runs a timer: a millisecond when idle, tens of ms when saturated.
LOOP_LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
CONTENT_TYPE = CONTENT_TYPE_LATEST


class RejectionsCollector(Collector):
    """Exports the bridge's ``endpoint:reason`` tally of refusals as it stands at each scrape."""

    def __init__(self, rejections: Tally[str]) -> None:
        self._rejections = rejections

    def describe(self) -> Iterator[Metric]:
        yield self._family()

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        for key, count in sorted(self._rejections.items()):
            endpoint, _, reason = key.partition(":")
            family.add_metric([endpoint, reason], count)
        yield family

    @staticmethod
    def _family() -> CounterMetricFamily:
        return CounterMetricFamily(
            "bridge_rejections",
            "Refused requests (signatures, keys, limits) and malformed stream messages, by endpoint and reason.",
            labels=["endpoint", "reason"],
        )


class Metrics:
    def __init__(self, *, active_calls: Callable[[], int], rejections: Tally[str]) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        Gauge("bridge_active_calls", "Calls in progress (including ones finalizing).", registry=r).set_function(
            lambda: float(active_calls())
        )
        self.calls = Counter(
            "bridge_calls",
            "Finished calls by provider, end status (ended, end_pending, not_created, no_start) and end reason.",
            ["provider", "outcome", "end_reason"],
            registry=r,
        )
        self._relay_children: dict[str, tuple[Any, ...]] = {}
        self.frames = Counter("bridge_media_frames", "Telephony media frames received.", ["provider"], registry=r)
        self.bytes_in = Counter(
            "bridge_media_bytes", "Telephony audio payload bytes received (decoded).", ["provider"], registry=r
        )
        self.bytes_relayed = Counter(
            "bridge_relayed_bytes", "16 kHz PCM bytes sent to EkaScribe (replays excluded).", ["provider"], registry=r
        )
        self.gap_filled = Counter(
            "bridge_gap_filled_seconds",
            "Silence inserted for missing or late telephony audio.",
            ["provider"],
            registry=r,
        )
        self.upstream_drops = Counter(
            "bridge_upstream_reconnects",
            "EkaScribe stream sockets lost mid-call (then resumed or continued).",
            registry=r,
        )
        self.continuations = Counter(
            "bridge_continuation_sessions", "Continuation sessions opened after a stream could not resume.", registry=r
        )
        self.rollovers = Counter(
            "bridge_session_rollovers", "Sessions left for a new one of the same call before they expired.", registry=r
        )
        self.flush_waits = Histogram(
            "bridge_upstream_flush_wait_seconds",
            "From sending stop to EkaScribe closing the stream socket (its last chunk flushed to storage).",
            buckets=FLUSH_BUCKETS,
            registry=r,
        )
        self.flush_timeouts = Counter(
            "bridge_upstream_flush_timeouts",
            "Stream sockets EkaScribe did not close within BRIDGE_FLUSH_WAIT_S of stop (ended after the settle time).",
            registry=r,
        )
        self.telephony_reconnects = Counter(
            "bridge_telephony_reconnects",
            "Telephony streams resumed within the grace period.",
            ["provider"],
            registry=r,
        )
        self.dropped = Counter(
            "bridge_dropped_audio_bytes",
            "Audio lost: outbox over BRIDGE_BUFFER_MAX_S (outbox_full) or no session to send it to (no_session).",
            ["reason"],
            registry=r,
        )
        self.end_latency = Histogram(
            "bridge_end_session_seconds", "End Session time for a call's sessions, retries included.",
            buckets=END_BUCKETS, registry=r,
        )  # fmt: skip
        self.relay_lag = Histogram(
            "bridge_relay_lag_seconds",
            "Per upstream batch: time from the oldest audio in it becoming ready (its frame arriving) to being sent.",
            buckets=LAG_BUCKETS,
            registry=r,
        )
        self.eka_requests = Counter(
            "bridge_eka_requests",
            "EkaScribe HTTP requests by operation (login, refresh, create, end, get) and status or transport error.",
            ["endpoint", "status"],
            registry=r,
        )
        self.results = Counter("bridge_results", "Session results recorded, by status.", ["status"], registry=r)
        self.deliveries = Counter(
            "bridge_result_deliveries",
            "Result webhook attempts by outcome: delivered, retried (failed, will retry), given_up.",
            ["outcome"],
            registry=r,
        )
        self.loop_lag = Histogram(
            "bridge_event_loop_lag_seconds",
            "How late the event loop ran a timer (sampled every 250 ms): every call's audio waits this long.",
            buckets=LOOP_LAG_BUCKETS,
            registry=r,
        )
        self.ends_pending = Gauge(
            "bridge_sessions_end_pending",
            "Sessions waiting for an End (retry budget ran out, or left by a dead process), at the last sweep.",
            registry=r,
        )
        self.fleet_members = Gauge(
            "bridge_fleet_members", "Bridge processes with a live lease in the shared ledger.", registry=r
        )
        self.adopted = Counter(
            "bridge_fleet_adopted",
            "Work taken over from a process whose lease expired, by kind (session, result, delivery).",
            ["kind"],
            registry=r,
        )
        self.fleet_relays = Counter(
            "bridge_fleet_relayed_streams",
            "Telephony streams relayed to the process that owns their call (a reconnect that landed elsewhere).",
            registry=r,
        )
        # Children that exist from the start: an alert's increase() sees a series' first event.
        for kind in ("session", "result", "delivery"):
            self.adopted.labels(kind)
        for outcome in ("delivered", "retried", "given_up"):
            self.deliveries.labels(outcome)
        r.register(RejectionsCollector(rejections))
        ProcessCollector(registry=r)  # process_* (CPU, memory, open files) of this process

    # -- the call path (per batch, per call) ------------------------------------------------

    def relayed(self, provider: str, *, frames: int, bytes_in: int, bytes_out: int, lag_s: float | None) -> None:
        """One upstream batch sent (or the call's final tally): frames and bytes since the last one."""
        children = self._relay_children.get(provider)
        if children is None:  # one per provider (a fixed set): no label lookup per batch
            children = (self.frames.labels(provider), self.bytes_in.labels(provider))
            children += (self.bytes_relayed.labels(provider),)
            self._relay_children[provider] = children
        frame_count, in_count, out_count = children
        if frames:
            frame_count.inc(frames)
        if bytes_in:
            in_count.inc(bytes_in)
        if bytes_out:
            out_count.inc(bytes_out)
        if lag_s is not None:
            self.relay_lag.observe(max(0.0, lag_s))

    def call_finished(self, provider: str, summary: dict[str, Any]) -> None:
        self.calls.labels(
            provider, summary.get("end_status") or "unknown", summary.get("end_reason") or "unknown"
        ).inc()
        gap_ms = sum((summary.get("gap_filled_ms") or {}).values())
        if gap_ms:
            self.gap_filled.labels(provider).inc(gap_ms / 1000)
        if summary.get("upstream_drops"):
            self.upstream_drops.inc(summary["upstream_drops"])
        continued = sum(1 for p in summary.get("sessions") or () if p.get("opened_because") == "upstream_lost")
        if continued:
            self.continuations.inc(continued)
        if summary.get("telephony_reconnects"):
            self.telephony_reconnects.labels(provider).inc(summary["telephony_reconnects"])
        if summary.get("dropped_bytes"):
            self.dropped.labels("outbox_full").inc(summary["dropped_bytes"])
        if summary.get("discarded_bytes"):
            self.dropped.labels("no_session").inc(summary["discarded_bytes"])

    def end_session(self, seconds: float) -> None:
        self.end_latency.observe(seconds)

    def flush_wait(self, seconds: float, *, timed_out: bool) -> None:
        self.flush_waits.observe(seconds)
        if timed_out:
            self.flush_timeouts.inc()

    def rollover(self) -> None:
        self.rollovers.inc()

    # -- Eka, results, deliveries -----------------------------------------------------------

    def eka_request(self, op: str, outcome: str) -> None:
        self.eka_requests.labels(op, outcome).inc()

    def result(self, status: str) -> None:
        self.results.labels(status).inc()

    def delivery(self, outcome: str) -> None:
        self.deliveries.labels(outcome).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    async def watch_loop_lag(self, interval_s: float = 0.25) -> None:
        """Sleep ``interval_s`` over and over; how much later than asked each wake-up comes is
        the event loop's lag (every call's audio waits that long too)."""
        loop = asyncio.get_running_loop()
        while True:
            asked = loop.time() + interval_s
            await asyncio.sleep(interval_s)
            self.loop_lag.observe(max(0.0, loop.time() - asked))
