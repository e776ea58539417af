"""Plivo Audio Streams: the wire format Vobiz copied, so the parser and builders are shared.

Plivo's messages (its protocol reference): ``start`` nests ``callId``, ``streamId``,
``accountId``, ``tracks`` and ``mediaFormat{encoding, sampleRate}`` under ``start``, with
``extra_headers`` (the ``<Stream extraHeaders>``, ``k=v;k2=v2``) beside it, and
``sequenceNumber`` counting from 1; ``media`` carries a top-level ``streamId`` and
``media{track, timestamp (epoch ms, a string), chunk (per track), payload}``; ``dtmf`` nests
``dtmf.digit``; ``playedStream`` and ``clearedAudio`` are acknowledgements. Audio is
``audio/x-mulaw`` at 8 kHz or ``audio/x-l16`` at 8 or 16 kHz. The reference has no ``stop``
(a guide mentions one): the socket closing is the end, and a ``stop`` if one comes is
tolerated and counted, not acted on. Everything here is the parser of
``bridge/providers/vobiz/stream.py``, which accepts both providers' shapes.
"""

from __future__ import annotations

from bridge.providers.vobiz.stream import answer_xml, media_message, parse, parse_content_type, start_message

PROVIDER = "plivo"
#: Plivo counts ``sequenceNumber`` from 1 (Vobiz from 0).
FIRST_SEQUENCE_NUMBER = 1

__all__ = [
    "FIRST_SEQUENCE_NUMBER",
    "PROVIDER",
    "answer_xml",
    "media_message",
    "parse",
    "parse_content_type",
    "start_message",
]
