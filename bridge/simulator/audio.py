"""Turn an audio file into what a phone stream carries: 8 kHz μ-law bytes, or 16-bit
linear PCM at 8 or 16 kHz (Vobiz's L16).

WAV files are parsed here rather than with the stdlib ``wave`` module, which on
3.11 reads only plain integer PCM: recordings from phones and tools are often
μ-law, A-law, float or WAVE_FORMAT_EXTENSIBLE, and all of them are a few lines
of numpy once the header is read.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soxr

from bridge.audio.codec import pcm16_to_ulaw, ulaw_to_pcm16

TARGET_RATE = 8000
RAW_ULAW_SUFFIXES = frozenset({".ulaw", ".mulaw", ".ul", ".raw"})

_PCM, _FLOAT, _ALAW, _ULAW, _EXTENSIBLE = 0x0001, 0x0003, 0x0006, 0x0007, 0xFFFE


def load_ulaw(path: Path) -> bytes:
    """8 kHz mono μ-law bytes for a WAV (any rate, channels, PCM width) or a raw μ-law file."""
    path = Path(path)
    if path.suffix.lower() in RAW_ULAW_SUFFIXES:
        audio = path.read_bytes()
        if not audio:
            raise ValueError(f"{path}: file is empty")
        return audio
    fmt, data = _read_wav(path)
    if fmt.tag == _ULAW and fmt.channels == 1 and fmt.rate == TARGET_RATE:
        return data  # already what the phone network sends: pass it through untouched
    return pcm16_to_ulaw(_to_pcm16(_decode(fmt, data, path), fmt.rate, TARGET_RATE))


def load_pcm16(path: Path, rate: int = TARGET_RATE) -> np.ndarray:
    """Mono int16 samples at ``rate`` for a WAV (any rate, channels, PCM width) or raw μ-law.

    A 16-bit mono WAV already at ``rate`` comes back sample for sample; anything else is
    mixed down and resampled (soxr VHQ), as :func:`load_ulaw` does.
    """
    path = Path(path)
    if rate <= 0:
        raise ValueError(f"rate must be > 0, got {rate}")
    if path.suffix.lower() in RAW_ULAW_SUFFIXES:
        audio = path.read_bytes()
        if not audio:
            raise ValueError(f"{path}: file is empty")
        samples, source_rate = (ulaw_to_pcm16(audio) / 32768.0).reshape(-1, 1), TARGET_RATE
    else:
        fmt, data = _read_wav(path)
        samples, source_rate = _decode(fmt, data, path), fmt.rate
    return _to_pcm16(samples, source_rate, rate)


def _read_wav(path: Path) -> tuple[WavFormat, bytes]:
    blob = path.read_bytes()
    if blob[:4] != b"RIFF" or blob[8:12] != b"WAVE":
        raise ValueError(
            f"{path}: not a WAV file (no RIFF/WAVE header); raw μ-law must be named "
            f"*{', *'.join(sorted(RAW_ULAW_SUFFIXES))}"
        )
    return _parse_wav(blob, path)


def _to_pcm16(samples: np.ndarray, source_rate: int, rate: int) -> np.ndarray:
    """(frames, channels) floats in [-1, 1) → mono int16 at ``rate``."""
    mono = samples.mean(axis=1) if samples.shape[1] > 1 else samples[:, 0]
    if source_rate != rate:
        mono = soxr.resample(mono, source_rate, rate, quality="VHQ")
    return np.clip(np.rint(mono * 32768.0), -32768, 32767).astype(np.int16)


@dataclass(frozen=True)
class WavFormat:
    tag: int
    channels: int
    rate: int
    bits: int
    block_align: int


def _parse_wav(blob: bytes, path: Path) -> tuple[WavFormat, bytes]:
    """Walk the RIFF chunks for ``fmt `` and ``data``; tolerate odd padding and bad sizes."""
    fmt: WavFormat | None = None
    data: bytes | None = None
    pos = 12
    while pos + 8 <= len(blob):
        chunk_id = blob[pos : pos + 4]
        (size,) = struct.unpack_from("<I", blob, pos + 4)
        body = blob[pos + 8 : pos + 8 + size]  # a streamed/oversized data size just runs to EOF
        if chunk_id == b"fmt ":
            fmt = _parse_fmt(body, path)
        elif chunk_id == b"data" and data is None:
            data = body
        pos += 8 + size + (size & 1)
    if fmt is None:
        raise ValueError(f"{path}: WAV has no fmt chunk")
    if data is None:
        raise ValueError(f"{path}: WAV has no data chunk")
    data = data[: len(data) - len(data) % fmt.block_align]
    if not data:
        raise ValueError(f"{path}: WAV contains no audio")
    return fmt, data


def _parse_fmt(body: bytes, path: Path) -> WavFormat:
    if len(body) < 16:
        raise ValueError(f"{path}: WAV fmt chunk is truncated")
    tag, channels, rate, _byte_rate, block_align, bits = struct.unpack_from("<HHIIHH", body)
    if tag == _EXTENSIBLE:
        if len(body) < 26:
            raise ValueError(f"{path}: WAVE_FORMAT_EXTENSIBLE fmt chunk is truncated")
        (tag,) = struct.unpack_from("<H", body, 24)  # first two bytes of the sub-format GUID
    if channels < 1 or rate < 1:
        raise ValueError(f"{path}: WAV declares {channels} channels at {rate} Hz")
    width = (bits + 7) // 8
    if width < 1 or block_align != width * channels:
        raise ValueError(f"{path}: inconsistent WAV header ({bits}-bit, {channels} ch, block {block_align})")
    return WavFormat(tag, channels, rate, bits, block_align)


def _decode(fmt: WavFormat, data: bytes, path: Path) -> np.ndarray:
    """Samples as float64 in [-1, 1), shaped (frames, channels)."""
    width = fmt.block_align // fmt.channels
    if fmt.tag == _PCM and width == 1:
        flat = (np.frombuffer(data, dtype=np.uint8).astype(np.float64) - 128.0) / 128.0
    elif fmt.tag == _PCM and width == 2:
        flat = np.frombuffer(data, dtype="<i2") / 32768.0
    elif fmt.tag == _PCM and width == 3:
        b = np.frombuffer(data, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        value = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        flat = np.where(value >= 1 << 23, value - (1 << 24), value) / float(1 << 23)
    elif fmt.tag == _PCM and width == 4:
        flat = np.frombuffer(data, dtype="<i4") / float(1 << 31)
    elif fmt.tag == _FLOAT and width in (4, 8):
        flat = np.frombuffer(data, dtype="<f4" if width == 4 else "<f8").astype(np.float64)
        flat = np.nan_to_num(flat)
    elif fmt.tag == _ULAW and width == 1:
        flat = ulaw_to_pcm16(data) / 32768.0
    elif fmt.tag == _ALAW and width == 1:
        flat = _alaw_to_pcm16(np.frombuffer(data, dtype=np.uint8)) / 32768.0
    else:
        raise ValueError(
            f"{path}: unsupported WAV encoding (format tag 0x{fmt.tag:04x}, {fmt.bits}-bit); "
            "use 8/16/24/32-bit PCM, 32/64-bit float, μ-law or A-law"
        )
    return np.asarray(flat, dtype=np.float64).reshape(-1, fmt.channels)


def _alaw_to_pcm16(codes: np.ndarray) -> np.ndarray:
    """G.711 A-law expansion (ITU-T reference algorithm), vectorised."""
    a = codes.astype(np.int32) ^ 0x55
    exponent = (a >> 4) & 0x07
    mantissa = (a & 0x0F) << 4
    magnitude = np.where(exponent == 0, mantissa + 8, (mantissa + 0x108) << np.maximum(exponent - 1, 0))
    return np.where(a & 0x80, magnitude, -magnitude).astype(np.int16)
