"""G.711 μ-law and linear PCM codecs (C speed via audioop, or audioop-lts on 3.13+)."""

from __future__ import annotations

import sys
import warnings

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
