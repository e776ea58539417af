"""Regenerate caller.wav and clinician.wav: a short synthetic consultation, one file per party.

Needs espeak-ng on PATH (only to make the files; nothing at test time does):
    apt-get install -y espeak-ng
    .venv/bin/python samples/make_samples.py

The two tracks share one timeline: while one party speaks the other track holds
silence, so playing them together (or streaming them as Twilio's inbound and
outbound tracks) sounds like one conversation.
"""

from __future__ import annotations

import io
import subprocess
import wave
from pathlib import Path

import numpy as np
import soxr

RATE = 8000
GAP_S = 0.3  # pause between turns
LEAD_S = 0.3  # silence before the first and after the last turn
PEAK = 0.7  # both voices normalised to the same peak (-3 dBFS)

#: espeak-ng arguments per party: distinct accent, voice variant, pitch and speed.
VOICES = {
    "clinician": ["-v", "en-gb+m3", "-p", "35", "-s", "180"],
    "caller": ["-v", "en-us+f3", "-p", "60", "-s", "175"],
}

TURNS = [
    ("clinician", "Good morning. What brings you in today?"),
    ("caller", "I have had a dry cough and a fever for three days."),
    ("clinician", "Any shortness of breath or chest pain?"),
    ("caller", "No chest pain. I just feel very tired."),
]


def speak(text: str, args: list[str]) -> np.ndarray:
    """Synthesize with espeak-ng; float samples at 8 kHz, edge silence trimmed."""
    wav = subprocess.run(["espeak-ng", *args, "--stdout", text], check=True, capture_output=True).stdout
    with wave.open(io.BytesIO(wav)) as w:
        rate = w.getframerate()
        # espeak-ng writes a streaming header (size 0xFFFFFFFF): read every frame after it.
        samples = np.frombuffer(w.readframes(1 << 30), dtype="<i2") / 32768.0
    voiced = np.flatnonzero(np.abs(samples) > 0.01)
    samples = samples[voiced[0] : voiced[-1] + 1]
    return soxr.resample(samples, rate, RATE, quality="VHQ")


def main() -> None:
    out_dir = Path(__file__).resolve().parent
    clips = [(who, speak(text, VOICES[who])) for who, text in TURNS]
    total = int(RATE * (2 * LEAD_S + GAP_S * (len(clips) - 1))) + sum(len(c) for _, c in clips)
    tracks = {who: np.zeros(total) for who in VOICES}
    pos = int(RATE * LEAD_S)
    for who, clip in clips:
        tracks[who][pos : pos + len(clip)] = clip / np.max(np.abs(clip)) * PEAK
        pos += len(clip) + int(RATE * GAP_S)
    for who, samples in tracks.items():
        pcm = np.clip(np.rint(samples * 32767), -32768, 32767).astype("<i2")
        path = out_dir / f"{who}.wav"
        with wave.open(str(path), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(RATE)
            w.writeframes(pcm.tobytes())
        print(f"{path.name}: {len(pcm) / RATE:.2f} s, {path.stat().st_size} bytes")


if __name__ == "__main__":
    main()
