"""Writes a session's audio to a WAV file, so humans can listen to what Eka would have processed."""

from __future__ import annotations

import struct
from pathlib import Path

from bridge.emulator.state import BYTES_PER_SAMPLE

HEADER_BYTES = 44


class WavFile:
    """A mono 16-bit WAV grown by appends of whole samples; nothing stays open between them.

    Each append opens the file, adds the frames at the end and patches the RIFF and data
    sizes, so the file is playable at any moment, and sessions waiting for End (or for a
    flush that may never be processed) hold no file handles. Appends come once per stored
    chunk (~20 s of audio), not per frame, so opening the file each time costs nothing.
    The first append creates (or truncates) the file: a client may reuse a session id
    from an earlier run of the emulator.
    """

    def __init__(self, path: Path, sample_rate: int) -> None:
        self.path = path
        self.sample_rate = sample_rate
        self.bytes_written = 0  # PCM bytes in the file, header excluded
        self._created = False

    def append(self, pcm: bytes) -> None:
        if len(pcm) % BYTES_PER_SAMPLE:
            raise ValueError("a WAV append must hold whole samples")
        if not self._created:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_bytes(_header(self.sample_rate, 0))
            self._created = True
        with self.path.open("r+b") as file:
            file.seek(HEADER_BYTES + self.bytes_written)
            file.write(pcm)
            data_bytes = self.bytes_written + len(pcm)
            file.truncate()
            file.seek(0)
            file.write(_header(self.sample_rate, data_bytes))
        self.bytes_written = data_bytes


def _header(sample_rate: int, data_bytes: int) -> bytes:
    """The canonical 44-byte PCM WAV header for mono 16-bit audio."""
    block_align = BYTES_PER_SAMPLE
    return struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF",
        36 + data_bytes,
        b"WAVE",
        b"fmt ",
        16,
        1,  # PCM
        1,  # mono
        sample_rate,
        sample_rate * block_align,
        block_align,
        8 * BYTES_PER_SAMPLE,
        b"data",
        data_bytes,
    )
