"""Provider-neutral stream events, what the call flow consumes.

Every string here came off the wire. The events that are kept (a call's ``start``, an
unknown event's name) cut theirs to the bounds below as they are made, in this one place for
every provider, so nothing hostile is logged, stored or sent to Eka at full length; NUL
characters are dropped too (a PostgreSQL text column cannot hold one).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bridge.errors import ProtocolError as ProtocolError

#: Call, stream and account ids: Twilio's SIDs are 34 characters, Vobiz's UUIDs 36.
MAX_ID_CHARS = 64
#: Names in ``start``'s track list (the documented ones are ``inbound`` and ``outbound``).
MAX_LISTED_TRACKS = 4
MAX_TRACK_CHARS = 32
#: Custom parameters kept from ``start`` (only allow-listed ones reach Eka, cut again there).
MAX_PARAMS = 64
MAX_PARAM_KEY_CHARS = 64
MAX_PARAM_VALUE_CHARS = 256
#: Encoding names, event names and error details.
MAX_LABEL_CHARS = 40


def bounded(text: str, limit: int) -> str:
    """``text`` without NUL characters, cut to ``limit`` characters."""
    return text.replace("\x00", "")[:limit]


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

    def __post_init__(self) -> None:
        cut = object.__setattr__  # frozen: the bounds apply once, as the event is made
        cut(self, "call_id", bounded(self.call_id, MAX_ID_CHARS))
        cut(self, "stream_id", bounded(self.stream_id, MAX_ID_CHARS))
        cut(self, "account_id", bounded(self.account_id, MAX_ID_CHARS))
        cut(self, "tracks", tuple(bounded(t, MAX_TRACK_CHARS) for t in self.tracks[:MAX_LISTED_TRACKS]))
        fmt = self.media_format
        encoding = bounded(fmt.encoding, MAX_LABEL_CHARS)
        if encoding != fmt.encoding:
            cut(self, "media_format", MediaFormat(encoding, fmt.sample_rate, fmt.channels))
        params = list(self.custom_parameters.items())[:MAX_PARAMS]
        cut(
            self,
            "custom_parameters",
            {bounded(k, MAX_PARAM_KEY_CHARS): bounded(v, MAX_PARAM_VALUE_CHARS) for k, v in params},
        )


@dataclass(slots=True)
class Media:
    """One frame of audio: 50 a second per track, so the cheapest class to make (a frozen
    dataclass costs three times as much to build); nothing changes it once made."""

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

    def __post_init__(self) -> None:
        object.__setattr__(self, "event", bounded(self.event, MAX_LABEL_CHARS))


StreamEvent = Connected | StreamStart | Media | Mark | Dtmf | StreamStop | Unknown
