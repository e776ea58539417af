"""SignalWire's stream is Twilio's Media Streams wire format (``connected``, ``start``, ``media``,
``dtmf``, ``mark``, ``stop`` with Twilio's exact fields), so Twilio's parser and builders are used
as they are. SignalWire's docs show the events in places wrapped as ``{timestamp, direction,
eventType, rawEvent: {…}}``; whether that wrapper is ever on the wire is undocumented, so a
message without ``event`` but with a ``rawEvent`` object is unwrapped and parsed the same way.
"""

from __future__ import annotations

import orjson

from bridge.providers.events import ProtocolError, StreamEvent
from bridge.providers.twilio import stream as twilio
from bridge.providers.twilio.stream import connected_message, media_message, start_message, stop_message

PROVIDER = "signalwire"

__all__ = ["PROVIDER", "connected_message", "media_message", "parse", "start_message", "stop_message"]


def parse(text: str | bytes) -> StreamEvent:
    """One WebSocket text message to a neutral event, or ProtocolError (Twilio's parser)."""
    try:
        return twilio.parse(text)
    except ProtocolError as error:
        if error.detail != "no event field" or "rawEvent" not in (text if isinstance(text, str) else str(text)):
            raise
    wrapped = orjson.loads(text)  # valid JSON: the parser got as far as the event field
    inner = wrapped.get("rawEvent") if isinstance(wrapped, dict) else None
    if not isinstance(inner, dict) or "rawEvent" in inner:
        raise ProtocolError("bad_message", "no event field")
    return twilio.parse(orjson.dumps(inner))
