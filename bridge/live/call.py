"""One phone call, top to bottom: telephony events in, finalized EkaScribe sessions out.

The flow:

1. ``handle`` takes each provider-neutral event from the telephony socket. It
   never waits on EkaScribe: audio is decoded, placed on the per-track
   timelines, mixed, and put in a bounded PCM queue.
2. On the first audio a background relay creates the Eka session, connects to its
   ``upload_url`` and sends the queue in ~200 ms batches. Audio that arrives
   before the upstream is ready waits in the queue. Before a session expires the
   relay moves the call to a new one (a rollover); after a lost socket, to a
   continuation.
3. ``finish`` runs exactly once, however the call ends (``stop``, the socket
   closing, an error): it flushes the resampler tails into the queue and closes
   it; the relay then drains it, sends ``stop``, waits for EkaScribe to close the
   socket (its last chunk is then in storage), and calls End Session exactly once
   per session.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, fields
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import numpy as np

from bridge.after_call.ledger import Ledger
from bridge.audio.byteorder import ByteOrderDetector
from bridge.audio.codec import ULAW, WireFormat, l16, pcm16_bytes
from bridge.audio.mixer import OUTPUT_RATE, BlockSource, Mixer
from bridge.config import ParamRoute, Settings
from bridge.eka.client import EkaClient, EndStatus, new_session_id
from bridge.eka.retry import EkaError
from bridge.eka.stream import UPSTREAM_ERRORS, UpstreamStream
from bridge.live.pcm_queue import PcmQueue, ReplayBuffer
from bridge.logging import Logger
from bridge.providers.events import (
    Connected,
    Dtmf,
    Mark,
    Media,
    MediaFormat,
    ProtocolError,
    StreamEvent,
    StreamStart,
    StreamStop,
    Unknown,
)

if TYPE_CHECKING:
    from bridge.metrics import Metrics

BYTES_PER_SECOND = OUTPUT_RATE * 2
#: Longest custom-parameter value copied into the session body.
MAX_PARAM_CHARS = 256
#: Per reason, log the first few protocol errors of a call; count them all.
LOGGED_ERRORS_PER_REASON = 3
#: Input rates the audio path takes (Twilio: 8 kHz μ-law; Vobiz: L16 at 8 or 16 kHz).
SUPPORTED_RATES = (8000, 16000)
#: Distinct unknown event names counted per call; more fold into "other".
MAX_EVENT_NAMES = 16
#: After a failed Create for a rollover, try again this much later (at most a quarter of the
#: margin), while the old session lasts.
ROLLOVER_RETRY_S = 10.0


def is_l16(fmt: MediaFormat) -> bool:
    return fmt.encoding.lower() in ("audio/x-l16", "audio/l16")


def wire_format_for(fmt: MediaFormat, l16_byteorder: str = "big") -> WireFormat:
    """The wire format of the stream's declared encoding, or ProtocolError."""
    encoding = fmt.encoding.lower()
    if encoding in ("audio/x-mulaw", "audio/pcmu", "audio/mulaw"):
        return ULAW
    if is_l16(fmt):
        return l16(l16_byteorder)
    raise ProtocolError("unsupported_format", fmt.encoding)


class CallStatus(StrEnum):
    """A call's ``end_status`` in its summary, the ledger and the metrics."""

    NOT_STARTED = "not_started"  # still running
    NO_START = "no_start"  # no valid ``start``: nothing to end
    NO_AUDIO = "no_audio"  # a ``start`` but no audio: no session was needed
    NOT_CREATED = "not_created"  # the session could not be created
    ENDED = "ended"  # every session settled
    END_PENDING = "end_pending"  # an End ran out of budget: left to the sweeper


class OpenedBecause(StrEnum):
    """Why a session of the call was opened."""

    CALL_START = "call_start"
    ROLLOVER = "rollover"  # the previous session was about to expire
    UPSTREAM_LOST = "upstream_lost"  # the previous session's stream socket was lost for good


class PartFinish(StrEnum):
    """How a session's stream socket finished."""

    FLUSHED = "flushed"  # the server closed after ``stop``: its last chunk was in storage
    FLUSH_TIMEOUT = "flush_timeout"  # no close within BRIDGE_FLUSH_WAIT_S: ended after the settle time
    LOST = "lost"  # lost mid-call: ended after the settle time
    NOT_CONNECTED = "not_connected"  # never connected: nothing to flush


@dataclass(frozen=True)
class CallSettings:
    """The settings a call uses, and only those (``Settings`` holds every setting of the service)."""

    batch_ms: int
    buffer_max_s: float
    max_track_wait_ms: int
    replay_s: float
    stream_format: str
    upstream_close_timeout_s: float
    flush_wait_s: float
    flush_settle_s: float
    rollover_margin_s: float
    finalize_budget_s: float
    max_session_parts: int
    session_mode: str
    templates: tuple[str, ...]
    model: str | None
    language_hint: tuple[str, ...]
    param_routes: tuple[ParamRoute, ...]

    @classmethod
    def of(cls, settings: Settings) -> CallSettings:
        return cls(**{f.name: getattr(settings, f.name) for f in fields(cls)})


@dataclass
class SessionPart:
    """One Eka session of a call. A call has more than one when its session would expire before
    the call ends (a rollover), or after its stream socket was lost for good (a continuation)."""

    session_id: str
    upload_url: str
    number: int
    opened_because: OpenedBecause
    expires_at: float  # Unix seconds (Create Session's expires_at)
    rollover_at: float  # loop time: open the next part then, well before expires_at
    must_stop_at: float  # loop time: past this, stop streaming into it even with no next part
    connections: int = 0
    streamed_bytes: int = 0  # sent into its socket, replays included
    finish: PartFinish | None = None
    flush_wait_s: float | None = None
    lost_at: float | None = None  # loop time its last connection was lost (flushed by the server, silently)
    end_status: EndStatus | None = None
    end_task: asyncio.Task[None] | None = None

    def summary(self) -> dict[str, Any]:
        return {
            "session_id": self.session_id,
            "part": self.number,
            "opened_because": self.opened_because,
            "streamed_s": round(self.streamed_bytes / BYTES_PER_SECOND, 3),
            "finish": self.finish,
            "flush_wait_ms": None if self.flush_wait_s is None else round(self.flush_wait_s * 1000, 1),
            "end_status": self.end_status,
        }


class Call:
    """The state of one call; owned by the telephony socket handler that created it."""

    __slots__ = (  # hundreds of calls at once: a slot each, not a dict of 45 keys (~1.2 KiB a call)
        "provider",
        "metrics",
        "_reported",
        "session_overrides",
        "settings",
        "eka",
        "ledger",
        "l16_byte_order",
        "_detector",
        "_held",
        "log",
        "started_at",
        "start",
        "mixer",
        "queue",
        "replay",
        "_batch_bytes",
        "parts",
        "relay",
        "_direct",
        "_direct_failure",
        "upstream_backed_up",
        "stopped",
        "refused",
        "finished",
        "end_reason",
        "end_request",
        "failure",
        "end_status",
        "end_latency_ms",
        "media_frames",
        "media_bytes",
        "chunk_regressions",
        "_last_chunk",
        "relayed_bytes",
        "upstream_lost_bytes",
        "upstream_drops",
        "losses",
        "rollovers",
        "reconnects",
        "stream_ids",
        "_dropping",
        "replayed_bytes",
        "bad_messages",
        "ignored_events",
        "_ended_at",
    )

    def __init__(
        self,
        *,
        provider: str,
        settings: CallSettings,
        eka: EkaClient,
        log: Logger,
        ledger: Ledger,
        metrics: Metrics,
        session_overrides: Callable[[StreamStart], dict[str, Any]] | None = None,
        l16_byte_order: str = "big",
    ) -> None:
        self.provider = provider
        self.metrics = metrics
        self._reported = (0, 0)  # media frames and bytes already counted in the metrics
        #: Per-call Create Session options, from the call's ``start`` (its route; see _session_body).
        self.session_overrides = session_overrides
        self.settings = settings
        self.eka = eka
        self.ledger = ledger
        self.l16_byte_order = l16_byte_order  # "big", "little" or "auto" (decided from the audio)
        self._detector: ByteOrderDetector | None = None
        self._held: list[Media] = []  # frames waiting for the byte-order decision
        self.log = log.bind(provider=provider, call_sid=None, stream_sid=None, session_id=None)
        self.started_at = time.monotonic()
        self.start: StreamStart | None = None
        self.mixer: Mixer | None = None
        self.queue = PcmQueue(int(settings.buffer_max_s * BYTES_PER_SECOND))
        self.replay = ReplayBuffer(int(settings.replay_s * BYTES_PER_SECOND))
        self._batch_bytes = max(2, int(settings.batch_ms * BYTES_PER_SECOND / 1000) // 2 * 2)
        self.parts: list[SessionPart] = []
        self.relay: asyncio.Task[None] | None = None
        #: Set while the relay is parked in the steady state: the media path sends full batches
        #: into this part's socket itself (``_send_direct``).
        self._direct: tuple[SessionPart, UpstreamStream] | None = None
        self._direct_failure: Exception | None = None  # a direct send failed: the relay handles it
        self.upstream_backed_up = 0  # times the media path found the socket backed up and left it to the relay
        self.stopped = False
        #: Why this socket must be closed at once (its ``start`` was refused), or None.
        self.refused: str | None = None
        self.finished = False
        self.end_reason: str | None = None
        self.end_request: str | None = None  # set when the bridge itself ends the call (shutdown)
        self.failure: str | None = None
        self.end_status = CallStatus.NOT_STARTED
        self.end_latency_ms: float | None = None
        self.media_frames = 0
        self.media_bytes = 0
        self.chunk_regressions = 0
        self._last_chunk: dict[str, int] = {}
        self.relayed_bytes = 0
        self.upstream_lost_bytes = 0
        self.upstream_drops = 0
        self.losses = 0  # stream sockets lost for good (each one continued in a new session)
        self.rollovers = 0  # sessions left for a new one before they expired
        self.reconnects = 0  # telephony reconnects (Vobiz) carried on in the same session
        self.stream_ids: list[str] = []
        self._dropping = False
        self.replayed_bytes = 0
        self.bad_messages: Counter[str] = Counter()
        self.ignored_events: Counter[str] = Counter()
        self._ended_at: float | None = None

    # -- 1. telephony events (never blocks) ----------------------------------------------

    def handle(self, event: StreamEvent) -> None:
        if isinstance(event, Media):
            self.on_media(event)
        elif isinstance(event, StreamStart):
            self._on_start(event)
        elif isinstance(event, StreamStop):
            self.stopped = True
            self.log.info("stream_stop_received")
        elif isinstance(event, (Mark, Dtmf, Connected)):
            self.ignored_events[type(event).__name__.lower()] += 1
        elif isinstance(event, Unknown):
            name = (
                event.event
                if event.event in self.ignored_events or len(self.ignored_events) < MAX_EVENT_NAMES
                else "other"
            )
            self.ignored_events[name] += 1
            if self.ignored_events[name] == 1:
                self.log.info("stream_event_ignored", stream_event=name)

    def protocol_error(self, error: ProtocolError) -> None:
        """Bad input: counted, logged (a few per reason), never fatal."""
        self.bad_messages[error.reason] += 1
        if self.bad_messages[error.reason] <= LOGGED_ERRORS_PER_REASON:
            self.log.warning("bad_stream_message", reason=error.reason, detail=error.detail or None)

    def _on_start(self, start: StreamStart) -> None:
        if self.start is not None:
            self.protocol_error(ProtocolError("duplicate_start", start.stream_id[:40]))
            return
        fmt = start.media_format
        detect = is_l16(fmt) and self.l16_byte_order == "auto"
        try:  # everything the format decides is built before any of it is kept
            if fmt.sample_rate not in SUPPORTED_RATES:
                raise ProtocolError("unsupported_format", f"{fmt.encoding} at {fmt.sample_rate} Hz")
            # With detection, "big" is replaced once the detector decides; nothing is placed before.
            wire = wire_format_for(fmt, "big" if detect else self.l16_byte_order)
            mixer = Mixer(
                start.tracks,
                fmt.sample_rate,
                wire,
                max_wait_ms=self.settings.max_track_wait_ms,
                # Resample and mix once per upstream batch, not once per 20 ms frame.
                render_samples=fmt.sample_rate * self.settings.batch_ms // 1000,
            )
            detector = ByteOrderDetector(fmt.sample_rate) if detect else None
        except (ProtocolError, ValueError, ArithmeticError) as exc:
            self.protocol_error(ProtocolError("unsupported_format", getattr(exc, "detail", "") or str(exc)))
            self.refused = "unsupported_format"
            return
        self.start = start
        self.mixer = mixer
        self._detector = detector
        self.stream_ids.append(start.stream_id)
        self.log = self.log.bind(call_sid=start.call_id, stream_sid=start.stream_id)
        self.log.info(
            "call_started",
            tracks=list(start.tracks),
            encoding=start.media_format.encoding,
            sample_rate=start.media_format.sample_rate,
        )

    def resume(self, start: StreamStart) -> None:
        """The provider reconnected (Vobiz: a new streamId, the same callId) within the grace
        period: the same session carries on. Timestamps share one clock across the two streams,
        so the mixer's timeline fills the interruption with silence (counted)."""
        assert self.start is not None and start.call_id == self.start.call_id
        if start.media_format.sample_rate != self.start.media_format.sample_rate:
            self.protocol_error(ProtocolError("format_changed_on_reconnect", start.media_format.encoding))
        self.reconnects += 1
        self.stream_ids.append(start.stream_id)
        self.log = self.log.bind(stream_sid=start.stream_id)
        self.log.info("stream_resumed", reconnects=self.reconnects)

    def on_media(self, media: Media) -> None:
        """One frame of audio (the media path calls this directly: it is most of the messages)."""
        mixer = self.mixer
        if mixer is None:
            self.protocol_error(ProtocolError("media_before_start"))
            return
        if self.finished:
            return
        track, payload = media.track, media.payload
        self.media_frames += 1
        self.media_bytes += len(payload)
        if track not in mixer.tracks and not mixer.accepts(track):
            mixer.push(track, media.timestamp_ms, payload)  # counted, nothing kept
            return
        chunk = media.chunk
        if chunk is not None:
            # Placement is by timestamp; chunk numbers only tell of trouble upstream. Whether
            # Twilio counts them per track or per stream is undocumented, so only a chunk that
            # goes backwards or repeats within its track is counted, never a jump.
            last = self._last_chunk.get(track)
            if last is not None and chunk <= last:
                self.chunk_regressions += 1
            else:
                self._last_chunk[track] = chunk
        if not payload:
            return
        if self.relay is None and self.start is not None:
            # The session is opened on the first audio, not on ``start``: a stream that ends
            # with no audio costs Eka nothing. The PCM queue holds the audio meanwhile.
            self.relay = asyncio.create_task(self._relay(), name=f"relay-{self.start.call_id}")
        if self._detector is not None:
            self._held.append(media)
            decision = self._detector.feed(payload)
            if decision is None:
                return
            self._decide_byte_order(decision)
            return
        mixed = mixer.push(track, media.timestamp_ms, payload)
        if len(mixed):  # once a block (a batch), not once a frame
            self._queue(mixed, mixer.source)

    def _decide_byte_order(self, order: str) -> None:
        """Decode every held frame (all tracks, in arrival order) with the order now known."""
        if self.mixer is None or self._detector is None:  # set together in _on_start, or neither
            return
        self.log.info("l16_byte_order_detected", byte_order=order, evidence=self._detector.evidence)
        self._detector = None
        self.mixer.wire = wire_format_for(MediaFormat("audio/x-l16", self.mixer.input_rate), order)
        held, self._held = self._held, []
        for media in held:
            self._queue(self.mixer.push(media.track, media.timestamp_ms, media.payload))

    def _queue(self, samples: np.ndarray, source: BlockSource | None = None) -> None:
        """Send or queue mixed samples; ``source``: what they were made from, if one block of
        one track (the replay buffer keeps that instead, when they are sent as one batch)."""
        pcm = pcm16_bytes(samples)
        direct = self._direct
        if direct is not None and len(pcm) == self._batch_bytes and not len(self.queue) and direct[1].ready():
            # The steady state: a block is a batch and nothing waits before it, so it goes
            # straight into the socket (no copy through the queue; it waited for nothing).
            if not self._send_now(*direct, pcm, 0.0, source):
                self._hand_back()
            return
        dropped = self.queue.dropped_bytes
        self.queue.put(pcm)
        if self.queue.dropped_bytes > dropped and not self._dropping:
            self._dropping = True  # one warning per episode; the summary has the total
            self.log.warning(
                "audio_dropped",
                reason="upstream too slow or unreachable; PCM queue full",
                buffer_max_s=self.settings.buffer_max_s,
            )
        elif self._dropping and len(self.queue) < self.queue.max_bytes // 2:
            self._dropping = False
        if self._direct is not None and len(self.queue) >= self._batch_bytes:
            self._send_direct()

    def _send_direct(self) -> None:
        """Send the full batches now, from the media path (the relay is parked): no task
        wake-up per batch. A socket that is backed up, closed or failing is handed back to
        the relay, which awaits it (the drain, or the reconnect with the replay).

        A remainder short of a batch goes too, so the queue is left empty and the next block,
        a batch exactly, goes straight into the socket: a call's first block is rarely a batch
        exactly (whole frames and the resampler's delay), and a remainder left behind would
        send every later block through the queue."""
        assert self._direct is not None
        part, upstream = self._direct
        while self.queue:
            if not upstream.ready():
                self.upstream_backed_up += upstream.backed_up()
                break
            batch = self.queue.take(min(len(self.queue), self._batch_bytes))
            assert batch is not None
            if not self._send_now(part, upstream, batch, self.queue.batch_waited_s()):
                break
        else:
            return
        self._hand_back()

    def _send_now(
        self,
        part: SessionPart,
        upstream: UpstreamStream,
        batch: bytes,
        lag_s: float | None,
        source: BlockSource | None = None,
    ) -> bool:
        """One batch into the socket from the media path; False if the send failed (the relay
        raises the failure where it handles upstream errors). ``lag_s``: how long its oldest
        audio waited (0 for a block sent as it was mixed); ``source``: what the batch was made from."""
        self.replay.append(batch, source)  # first: a batch whose send fails is re-sent too
        try:
            upstream.send_now(batch)
        except Exception as exc:
            self._direct_failure = exc
            return False
        self._sent(part, batch, lag_s)
        return True

    def _hand_back(self) -> None:
        """The relay takes the socket over again (it is backed up, or a send failed)."""
        self._direct = None
        self.queue.wake()

    def _sent(self, part: SessionPart, batch: bytes, lag_s: float | None) -> None:
        """``batch`` is in ``part``'s socket; ``lag_s``: how long its oldest audio waited."""
        part.streamed_bytes += len(batch)
        self.relayed_bytes += len(batch)
        self._report(len(batch), lag_s)

    # -- 2. the relay: sessions, stream sockets, End Session ------------------------------

    async def _relay(self) -> None:
        """Create the session and stream into it, moving to a new session of the call before
        one expires (rollover) or after its socket is lost for good (continuation). Every
        session opened is finished (``stop``, the server's flush) and then ended, once."""
        try:
            if self.start is not None:
                await self.ledger.call_started(self.start.call_id, self.provider)
            part = await self._open_first_part()
            while part is not None:
                part = await self._stream_into(part)
        finally:
            for p in self.parts:
                self._retire(p, None)
            outcomes = await asyncio.gather(*(p.end_task for p in self.parts if p.end_task), return_exceptions=True)
            for outcome in outcomes:
                if isinstance(outcome, Exception):  # a bug: the others still finished; say which
                    self._fail("end_session", type(outcome).__name__)
                    self.log.error("session_finish_crashed", error=type(outcome).__name__)

    async def _open_first_part(self) -> SessionPart | None:
        try:
            return await self._create_part(None, OpenedBecause.CALL_START)
        except EkaError as exc:
            self.end_status = CallStatus.NOT_CREATED
            self._give_up("create_session", exc.reason)
            return None

    async def _create_part(self, continues: SessionPart | None, because: OpenedBecause) -> SessionPart:
        """Create Session (part 1, a rollover or a continuation); record it durably."""
        number = len(self.parts) + 1
        body = self._session_body()
        if continues is not None:
            body["additional_data"].update(part=number, continues_session=continues.session_id, reason=because)
        # Recorded before Create: a process that dies between the two leaves a row the fleet
        # ends (or finds gone), never a session at Eka that nobody knows of.
        body["session_id"] = new_session_id()
        await self._record_part(body["session_id"], number)
        try:
            created = await self.eka.create_session(body, log=self.log)
        except EkaError:
            if self.start is not None:  # Create failed for good (a retried Create checks first)
                await self.ledger.session_discarded(body["session_id"])
            raise
        if created.session_id != body["session_id"]:  # the server named it otherwise
            await self._record_part(created.session_id, number)
            await self.ledger.session_discarded(body["session_id"])
        loop = asyncio.get_running_loop()
        now = loop.time()
        expires = now + (created.expires_at - time.time())
        # Roll over ``rollover_margin_s`` before expiry, but never in the first half of the life a
        # session has left: a margin larger than the TTL must not make a new session every batch.
        rollover_at = max(expires - self.settings.rollover_margin_s, now + (expires - now) / 2)
        must_stop_at = max(expires - self.settings.finalize_budget_s, rollover_at)
        part = SessionPart(
            created.session_id, created.upload_url, number, because, created.expires_at, rollover_at, must_stop_at
        )
        self.parts.append(part)
        self.log = self.log.bind(session_id=part.session_id)
        self.log.info(
            "eka_session_created",
            part=number,
            opened_because=because,
            expires_in_s=round(expires - now, 1),
            rollover_in_s=round(rollover_at - now, 1),
        )
        return part

    async def _record_part(self, session_id: str, number: int) -> None:
        if self.start is not None:
            await self.ledger.session_opened(session_id, self.start.call_id, self.provider, number)

    async def _stream_into(self, part: SessionPart) -> SessionPart | None:
        """Send the PCM queue into ``part``'s socket. Returns the part to carry on in (a rollover
        or a continuation), or None once the call's audio is all sent and ``part`` is retiring.

        After a drop, the last ``replay_s`` of audio is sent again first: a seam may repeat a
        little audio, never skip any. A rollover repeats nothing: the old socket was finished
        cleanly after the last batch it was sent.
        """
        settings = self.settings
        loop = asyncio.get_running_loop()
        reconnecting = False
        while True:
            try:
                upstream = await UpstreamStream.open(
                    part.upload_url,
                    wire_format=settings.stream_format,
                    timeout_s=settings.upstream_close_timeout_s,
                )
                if reconnecting or (part.connections == 0 and part.opened_because is OpenedBecause.UPSTREAM_LOST):
                    for chunk in list(self.replay):
                        await upstream.send(chunk)
                        part.streamed_bytes += len(chunk)
                    self.replayed_bytes += self.replay.size
            except UPSTREAM_ERRORS as exc:
                self.log.warning("upstream_connect_failed", reason=_close_reason(exc), reconnect=reconnecting)
                return await self._continue_after_loss(part)
            part.connections += 1
            self.log.info("upstream_connected", wire_format=settings.stream_format, connection=part.connections)
            try:
                while True:
                    if loop.time() >= part.rollover_at and not self.queue.closed:
                        following = await self._roll_over(part, upstream)
                        if following is not None or part.end_task is not None:
                            return following  # the next part, or none: out of time, given up
                    if not self.queue.closed and upstream.ready():
                        await self._park(part, upstream)  # the steady state: the media path sends
                        continue
                    try:
                        async with asyncio.timeout_at(part.rollover_at if not self.queue.closed else None):
                            batch = await self.queue.next_batch(self._batch_bytes)
                    except TimeoutError:
                        continue  # time to roll over
                    if batch is None:
                        break
                    self.replay.append(batch)  # first: a batch whose send fails is re-sent too
                    await upstream.send(batch)
                    self._sent(part, batch, self.queue.batch_waited_s())
            except UPSTREAM_ERRORS as exc:
                reason = _close_reason(exc)
                upstream.abort()
                part.lost_at = loop.time()
                self.upstream_drops += 1
                self.log.warning("upstream_dropped", reason=reason)
                if reconnecting or reason == "close_4000":
                    return await self._continue_after_loss(part)  # refused: this stream id is gone
                reconnecting = True
                continue
            self._retire(part, upstream)
            return None

    async def _park(self, part: SessionPart, upstream: UpstreamStream) -> None:
        """Let the media path send into ``upstream`` until something needs the relay: the call's
        end (the queue closed), the rollover time, a socket backed up or failed."""
        self._direct = (part, upstream)
        try:
            self._send_direct()  # what queued up while the relay was busy
            if self._direct is not None:
                async with asyncio.timeout_at(part.rollover_at):
                    await self.queue.parked()
        except TimeoutError:
            pass  # time to roll over
        finally:
            self._direct = None
        failure, self._direct_failure = self._direct_failure, None
        if isinstance(failure, UPSTREAM_ERRORS):
            raise failure
        if failure is not None:  # e.g. a transport that refuses writes once closed
            raise ConnectionError(f"send failed: {type(failure).__name__}") from failure

    async def _roll_over(self, part: SessionPart, upstream: UpstreamStream) -> SessionPart | None:
        """``part`` expires soon: open the next session and retire this one while it is valid.
        If the next cannot be created, keep streaming here and try again, until ``must_stop_at``."""
        loop = asyncio.get_running_loop()
        try:
            following = await self._create_part(part, OpenedBecause.ROLLOVER)
        except EkaError as exc:
            if loop.time() < part.must_stop_at:
                retry_s = min(ROLLOVER_RETRY_S, self.settings.rollover_margin_s / 4)  # a few tries in the margin
                part.rollover_at = min(loop.time() + retry_s, part.must_stop_at)
                self.log.warning("rollover_failed", reason=exc.reason, retry_in_s=round(retry_s, 3))
                return None
            # Out of time: this session must be finished and ended now. The audio waits in the
            # PCM queue while one more Create is tried, with its whole retry budget.
            self._retire(part, upstream)
            self.log.warning("rollover_late", reason=exc.reason)
            try:
                following = await self._create_part(part, OpenedBecause.ROLLOVER)
            except EkaError as late:
                self._give_up("rollover", late.reason)
                return None
        self.rollovers += 1
        self.metrics.rollover()
        self.log.info("session_rollover", part=following.number, previous=part.session_id)
        self._retire(part, upstream)
        return following

    async def _continue_after_loss(self, part: SessionPart) -> SessionPart | None:
        """``part``'s socket is gone for good: end it (after the settle time) and carry on in a
        new session, up to ``max_session_parts`` losses."""
        part.finish = PartFinish.LOST if part.connections else PartFinish.NOT_CONNECTED
        self._retire(part, None)
        self.losses += 1
        if self.losses >= self.settings.max_session_parts:
            self._give_up("upstream", f"gave up after {self.losses} lost stream(s)")
            return None
        try:
            return await self._create_part(part, OpenedBecause.UPSTREAM_LOST)
        except EkaError as exc:
            self._give_up("create_session", exc.reason)
            return None

    def _give_up(self, stage: str, reason: str) -> None:
        """No session will take the rest of the call's audio: count it, and drop what follows."""
        self._fail(stage, reason)
        self.upstream_lost_bytes += len(self.queue)
        self.queue.discard()

    def _retire(self, part: SessionPart, upstream: UpstreamStream | None) -> None:
        """Finish ``part``'s stream and End it, in the background, once."""
        if part.end_task is None:
            part.end_task = asyncio.create_task(self._finish_part(part, upstream), name=f"end-{part.session_id}")

    async def _finish_part(self, part: SessionPart, upstream: UpstreamStream | None) -> None:
        """``stop``, wait for the server's close (its flush is done), then End. Without that
        signal (a lost socket, or a flush slower than ``flush_wait_s``) wait ``flush_settle_s``
        first: the server flushes on disconnect, and an End before that would lose the tail."""
        s = self.settings
        log = self.log.bind(session_id=part.session_id)
        if upstream is not None:
            done = await upstream.finish(flush_wait_s=s.flush_wait_s, close_timeout_s=s.upstream_close_timeout_s)
            part.flush_wait_s = done.wait_s
            self.metrics.flush_wait(done.wait_s, timed_out=not done.closed_by_server)
            if done.closed_by_server:
                part.finish = PartFinish.FLUSHED
                log.info("upstream_flushed", flush_wait_ms=round(done.wait_s * 1000, 1), close_code=done.close_code)
            else:
                part.finish = PartFinish.FLUSH_TIMEOUT
                log.warning(
                    "upstream_flush_timeout",
                    flush_wait_s=s.flush_wait_s,
                    settle_s=s.flush_settle_s,
                    close_code=done.close_code,
                )
        elif part.finish is None:
            part.finish = PartFinish.LOST if part.connections else PartFinish.NOT_CONNECTED
        if part.finish is not PartFinish.FLUSHED and part.connections:
            await asyncio.sleep(s.flush_settle_s)
        elif part.lost_at is not None:  # an earlier connection of this session was lost mid-call
            await asyncio.sleep(max(0.0, part.lost_at + s.flush_settle_s - asyncio.get_running_loop().time()))
        await self._end_session(part)

    async def _end_session(self, part: SessionPart) -> None:
        """End one session, once, after its stream is finished (or given up on)."""
        started = time.monotonic()
        log = self.log.bind(session_id=part.session_id)
        try:
            result = await self.eka.end_session(part.session_id, log=log)
        except EkaError as exc:
            part.end_status = EndStatus.END_PENDING
            self._fail("end_session", exc.reason)
            await self.ledger.session_end_pending(part.session_id, exc.reason)
            return
        finally:
            self.end_latency_ms = round((time.monotonic() - started) * 1000, 1)
            self.metrics.end_session(self.end_latency_ms / 1000)
        part.end_status = result.settled
        await self.ledger.session_ended(part.session_id, result.settled)
        log.info("eka_session_ended", status=result.status, end_latency_ms=self.end_latency_ms)

    def _report(self, relayed: int, lag_s: float | None) -> None:
        """Metrics move per upstream batch (and once at the end), never per frame."""
        frames, nbytes = self._reported
        self._reported = (self.media_frames, self.media_bytes)
        self.metrics.relayed(
            self.provider,
            frames=self.media_frames - frames,
            bytes_in=self.media_bytes - nbytes,
            bytes_out=relayed,
            lag_s=lag_s,
        )

    def _fail(self, stage: str, reason: str) -> None:
        self.failure = f"{stage}: {reason}"
        self.log.error("call_failed", stage=stage, reason=reason)

    def _session_body(self) -> dict[str, Any]:
        """Create Session body: configured options plus allow-listed per-call parameters."""
        assert self.start is not None
        s = self.settings
        body: dict[str, Any] = {
            "upload_type": "stream",
            "communication_protocol": "websocket",
            "session_mode": s.session_mode,
            "additional_data": {
                "source": "eka-phone-bridge",
                "provider": self.provider,
                "call_sid": self.start.call_id,
                "stream_sid": self.start.stream_id,
            },
        }
        if s.templates:
            body["templates"] = list(s.templates)
        if s.model:
            body["model"] = s.model
        if s.language_hint:
            body["language_hint"] = list(s.language_hint)
        overrides = self.session_overrides(self.start) if self.session_overrides else {}
        for key, value in overrides.items():  # empty values remove; the call's identity stays
            if key == "additional_data":
                body["additional_data"] = {**value, **body["additional_data"]}
            elif value in (None, "", []):
                body.pop(key, None)
            else:
                body[key] = value
        params = self.start.custom_parameters
        for route in s.param_routes:
            value = params.get(route.param)
            if value:
                section = body.setdefault(route.section, {})
                section.setdefault(route.key, value[:MAX_PARAM_CHARS])
        return body

    # -- 3. the end of the call (exactly once, on every path) ------------------------------

    async def finish(self, reason: str) -> dict[str, Any]:
        """Flush, let the relay drain and End every session, then log the call's summary.

        Total: whatever state hostile input left the call in, this returns a summary, and every
        session opened is still finished and ended. A failing step is logged and counted."""
        if self.finished:
            raise RuntimeError("Call.finish() called twice")
        self.finished = True
        self.end_reason = reason
        self._ended_at = time.monotonic()
        try:
            if self._detector is not None:  # the call ended before the audio said: the documented order
                self._decide_byte_order("big")
            if self.mixer is not None:
                self._queue(self.mixer.flush())
        except Exception as exc:  # a bug: the audio already queued still goes to Eka
            self._fail("flush", type(exc).__name__)
            self.log.exception("flush_failed")
        self.queue.close()
        if self.relay is not None:
            try:
                await self.relay
            except Exception as exc:  # a bug, not an Eka failure: still summarise the call
                self._fail("relay", type(exc).__name__)
                self.log.exception("relay_crashed")
        if self.start is None:
            self.end_status = CallStatus.NO_START
        elif self.relay is None:
            self.end_status = CallStatus.NO_AUDIO  # no session was opened: nothing to end
        elif self.parts:
            settled = all(p.end_status is not None and p.end_status.settled for p in self.parts)
            self.end_status = CallStatus.ENDED if settled else CallStatus.END_PENDING
        try:
            self._report(0, None)  # frames that arrived after the last batch
            summary = self.summary()
        except Exception as exc:
            self.log.exception("summary_failed")
            summary = {"end_reason": reason, "end_status": self.end_status, "failure": f"summary: {type(exc).__name__}"}
        self.log.info("call_summary", **summary)
        if self.start is not None:
            try:
                if self.relay is None:  # the relay records a call as it opens its session
                    await self.ledger.call_started(self.start.call_id, self.provider)
                await self.ledger.call_finished(self.start.call_id, summary)
            except Exception:
                self.log.exception("ledger_write_failed")
        return summary

    def summary(self) -> dict[str, Any]:
        mixer = self.mixer
        stats = [t.stats for t in mixer.tracks.values()] if mixer else []
        return {
            "end_reason": self.end_reason,
            "end_status": self.end_status,
            "failure": self.failure,
            "duration_s": round((self._ended_at or time.monotonic()) - self.started_at, 3),
            "frames": self.media_frames,
            "bytes_in": self.media_bytes,
            "bytes_relayed": self.relayed_bytes,
            "upstream_backed_up": self.upstream_backed_up,
            "audio_relayed_s": round(self.relayed_bytes / BYTES_PER_SECOND, 3),
            "gap_filled_ms": mixer.gap_filled_ms() if mixer else {},
            "late_frames": sum(s.late_frames + s.duplicate_frames for s in stats),
            "reordered_frames": sum(s.reordered_frames for s in stats),
            "chunk_regressions": self.chunk_regressions,
            "clock_discontinuities": sum(s.discontinuities for s in stats),
            "ignored_track_frames": mixer.ignored_track_frames if mixer else 0,
            "limited_samples": mixer.limited_samples if mixer else 0,
            "dropped_bytes": self.queue.dropped_bytes,
            "outbox_high_water_bytes": self.queue.high_water_bytes,
            "discarded_bytes": self.queue.discarded_bytes + self.upstream_lost_bytes,
            "bad_messages": dict(self.bad_messages),
            "end_latency_ms": self.end_latency_ms,
            "flush_wait_ms": self.parts[-1].summary()["flush_wait_ms"] if self.parts else None,
            "sessions": [p.summary() for p in self.parts],
            "rollovers": self.rollovers,
            "upstream_drops": self.upstream_drops,
            "telephony_reconnects": self.reconnects,
            "replayed_bytes": self.replayed_bytes,
        }


def _close_reason(exc: BaseException) -> str:
    """A short label for how an upstream socket failed (``close_4000``, ``http_503``, …)."""
    received = getattr(exc, "rcvd", None)
    if received is not None:
        return f"close_{received.code}"
    response = getattr(exc, "response", None)
    if response is not None and hasattr(response, "status_code"):
        return f"http_{response.status_code}"
    return type(exc).__name__
