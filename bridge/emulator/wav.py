"""Writes a session's received PCM to a WAV file as it arrives, so humans can listen."""

from __future__ import annotations

import wave
from pathlib import Path

from bridge.emulator.state import BYTES_PER_SAMPLE


class WavSink:
    """A mono 16-bit WAV written incrementally; the header is patched on every write.

    ``wave.Wave_write.writeframes`` rewrites the RIFF sizes after each call on a
    seekable file, so the file is playable mid-call, not only once it is closed.
    The file is opened lazily on the first audio, because a JSON-mode ``start``
    may still change the sample rate before then.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sample_rate: int | None = None
        self._writer: wave.Wave_write | None = None
        self._carry = b""  # an odd trailing byte, held until its sample's other half arrives

    @property
    def started(self) -> bool:
        return self._writer is not None

    def write(self, pcm: bytes, sample_rate: int) -> None:
        if self._writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            writer = wave.open(str(self.path), "wb")
            writer.setnchannels(1)
            writer.setsampwidth(BYTES_PER_SAMPLE)
            writer.setframerate(sample_rate)
            self._writer = writer
            self.sample_rate = sample_rate
        data = self._carry + pcm
        whole = len(data) - len(data) % BYTES_PER_SAMPLE
        self._carry = data[whole:]
        if whole:
            self._writer.writeframes(data[:whole])

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
