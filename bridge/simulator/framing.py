"""How every provider's stream cuts the parties' audio: one frame per track per tick."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence


def interleaved_frames(audio: Sequence[tuple[str, bytes]], frame_bytes: int) -> Iterator[tuple[int, float, str, bytes]]:
    """(tick, share of the audio complete when it may be sent, track, frame), in sending order.

    Tracks take turns within a tick in the order given; a track whose audio has ended just
    stops, and a shorter last frame carries the remaining bytes exactly.
    """
    longest = max((len(data) for _, data in audio), default=0)
    for tick in range(math.ceil(longest / frame_bytes)):
        offset = tick * frame_bytes
        ready_at = min(offset + frame_bytes, longest)
        for name, data in audio:
            piece = data[offset : offset + frame_bytes]
            if piece:
                yield tick, ready_at, name, piece
