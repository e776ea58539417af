"""G.711 μ-law and linear PCM codecs (C speed via audioop, or audioop-lts on 3.13+)."""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

with warnings.catch_warnings():
    # Stdlib audioop warns of its removal on 3.11/3.12; 3.13+ gets audioop-lts (same C code).
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop


def ulaw_to_pcm16(payload: bytes) -> np.ndarray:
    """Decode μ-law bytes to int16 samples (one sample per byte)."""
    return np.frombuffer(audioop.ulaw2lin(payload, 2), dtype="<i2")


def pcm16_to_ulaw(samples: np.ndarray) -> bytes:
    """Encode int16 samples to μ-law bytes (used by the call simulator)."""
    return audioop.lin2ulaw(np.asarray(samples, dtype="<i2").tobytes(), 2)


def l16_to_pcm16(payload: bytes, byteorder: str) -> np.ndarray:
    """Interpret 16-bit linear PCM in the given byte order ("big" or "little")."""
    if len(payload) % 2:
        payload = payload[:-1]
    dtype = ">i2" if byteorder == "big" else "<i2"
    return np.frombuffer(payload, dtype=dtype).astype(np.int16)


def pcm16_bytes(samples: np.ndarray) -> bytes:
    """int16 samples as little-endian bytes, the wire format EkaScribe expects."""
    if sys.byteorder == "little":
        return np.ascontiguousarray(samples, dtype=np.int16).tobytes()
    return np.asarray(samples, dtype="<i2").tobytes()


@dataclass(frozen=True)
class WireFormat:
    """How a stream's audio is laid out on the wire. The mixer keeps frames in it until a block
    is rendered, then decodes the block at once: one decode per block, not one per 20 ms frame,
    and a waiting frame costs its wire size (one byte a sample for μ-law), not an array's."""

    decode: Callable[[bytes], np.ndarray]  # a whole number of samples → int16
    width: int  # bytes per sample
    silence: bytes  # one sample of silence, as it decodes to 0


#: G.711 μ-law (Twilio's and most providers' telephone audio); 0xFF decodes to 0.
ULAW = WireFormat(ulaw_to_pcm16, 1, b"\xff")


def l16(byteorder: str) -> WireFormat:
    """16-bit linear PCM in ``byteorder`` ("big" or "little")."""
    return WireFormat(lambda payload: l16_to_pcm16(payload, byteorder), 2, b"\x00\x00")
