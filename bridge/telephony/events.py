"""Provider-neutral stream events, what the call flow consumes."""

from __future__ import annotations

from dataclasses import dataclass, field


class ProtocolError(ValueError):
    """A provider message that cannot be understood; the call goes on, the message is counted."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason  # short, stable, safe to log and to use as a counter label
        self.detail = detail


@dataclass(frozen=True)
class MediaFormat:
    encoding: str  # "audio/x-mulaw" or "audio/x-l16"
    sample_rate: int
    channels: int = 1


@dataclass(frozen=True)
class Connected:
    """Twilio's first message; carries no call data."""


@dataclass(frozen=True)
class StreamStart:
    call_id: str
    stream_id: str
    account_id: str
    tracks: tuple[str, ...]
    media_format: MediaFormat
    custom_parameters: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Media:
    track: str
    payload: bytes
    timestamp_ms: int | None
    chunk: int | None


@dataclass(frozen=True)
class Mark:
    name: str


@dataclass(frozen=True)
class Dtmf:
    track: str
    digit: str


@dataclass(frozen=True)
class StreamStop:
    reason: str = "stop"


@dataclass(frozen=True)
class Unknown:
    """A well-formed message with an event we do not handle; tolerated and counted."""

    event: str


StreamEvent = Connected | StreamStart | Media | Mark | Dtmf | StreamStop | Unknown
