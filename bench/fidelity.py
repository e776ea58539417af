"""8 kHz μ-law in → 16 kHz PCM out: how close each streaming resampler gets to ideal.

Run: ``python -m bench.fidelity`` (or ``make bench``). Every resampler is fed the
same μ-law-decoded audio in 20 ms frames with its state carried, then flushed;
figures are measured in the same run, with ratios against ``audioop.ratecv``. It exits 0
whatever the figures: a missed target is printed, not turned into a failed build.

- SI-SNR: against soxr VHQ run once over the whole signal (the ideal reference),
  on a speech-like synthetic signal and on the committed sample recording.
- Image rejection: worst, over tones 300–3400 Hz, of the mirror at 8000−f Hz.
- Flatness: worst deviation of tone gain from unity, 100–3400 Hz.
- Length: output samples minus 2 × input samples after the final flush.
- CPU: µs per 20 ms frame per track; latency: worst ms held inside the resampler.
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soxr

from bridge.audio.codec import pcm16_to_ulaw, ulaw_to_pcm16
from bridge.audio.resample import Upsampler2x, to_int16

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

RATE_IN, RATE_OUT, FRAME = 8000, 16000, 160
SAMPLE = Path(__file__).resolve().parent.parent / "samples" / "caller.wav"


class Stream:
    """What the benchmark needs of a streaming resampler."""

    def process(self, frame: np.ndarray) -> np.ndarray: ...
    def flush(self) -> np.ndarray: ...


class Bridge:
    """Ours, as a single-track call runs it: polyphase FIR, then rounding to int16."""

    def __init__(self) -> None:
        self.up = Upsampler2x()

    def process(self, frame: np.ndarray) -> np.ndarray:
        return to_int16(self.up.process(frame))

    def flush(self) -> np.ndarray:
        return to_int16(self.up.flush())


class Ratecv:
    """``audioop.ratecv`` with its state carried across frames: the usual choice."""

    def __init__(self) -> None:
        self.state = None

    def process(self, frame: np.ndarray) -> np.ndarray:
        out, self.state = audioop.ratecv(frame.tobytes(), 2, 1, RATE_IN, RATE_OUT, self.state)
        return np.frombuffer(out, dtype=np.int16)

    def flush(self) -> np.ndarray:
        return np.zeros(0, dtype=np.int16)


class SoxrStream:
    """``soxr.ResampleStream`` (pipecat's choice), flushed with ``last=True``."""

    def __init__(self, quality: str) -> None:
        self.rs = soxr.ResampleStream(RATE_IN, RATE_OUT, 1, dtype="int16", quality=quality)

    def process(self, frame: np.ndarray) -> np.ndarray:
        return self.rs.resample_chunk(frame)

    def flush(self) -> np.ndarray:
        return self.rs.resample_chunk(np.zeros(0, dtype=np.int16), last=True)


RESAMPLERS: dict[str, Callable[[], Stream]] = {
    "bridge polyphase FIR": Bridge,
    "audioop.ratecv (state carried)": Ratecv,
    "soxr ResampleStream HQ": lambda: SoxrStream("HQ"),
}


@dataclass
class Figures:
    si_snr_synthetic: float
    si_snr_sample: float | None
    image_rejection: float
    flatness: float
    length_error: int
    us_per_frame: float
    latency_ms: float


def run_stream(factory: Callable[[], Stream], x: np.ndarray) -> tuple[np.ndarray, float]:
    """Feed ``x`` in 20 ms frames; return the output and the worst ms held inside."""
    r = factory()
    out, held = [], 0.0
    produced = 0
    for i in range(0, len(x), FRAME):
        frame = x[i : i + FRAME]
        y = r.process(frame)
        produced += len(y)
        out.append(y)
        held = max(held, (2 * (i + len(frame)) - produced) / (RATE_OUT / 1000))
    out.append(r.flush())
    return np.concatenate(out).astype(np.float64), held


def si_snr(estimate: np.ndarray, reference: np.ndarray) -> float:
    n = min(len(estimate), len(reference))
    est, ref = estimate[:n], reference[:n]
    scale = np.dot(est, ref) / np.dot(ref, ref)
    noise = est - scale * ref
    return float(10 * np.log10(np.sum((scale * ref) ** 2) / np.sum(noise**2)))


def through_ulaw(x: np.ndarray) -> np.ndarray:
    return ulaw_to_pcm16(pcm16_to_ulaw(np.clip(np.rint(x), -32768, 32767).astype(np.int16)))


def speech_like(seconds: float = 20.0) -> np.ndarray:
    """Voiced harmonics under a syllable envelope plus fricative noise, telephone band."""
    rng = np.random.default_rng(2026)
    t = np.arange(int(RATE_IN * seconds)) / RATE_IN
    f0 = 120 + 40 * np.sin(2 * np.pi * 0.4 * t) + 15 * np.sin(2 * np.pi * 2.3 * t)
    phase = 2 * np.pi * np.cumsum(f0) / RATE_IN
    voiced = sum((1 / k) * np.sin(k * phase) * (k * f0 < 3400) for k in range(1, 30))
    envelope = np.clip(np.sin(2 * np.pi * 2.7 * t), 0, None) ** 0.5
    noise = np.fft.irfft(np.fft.rfft(rng.normal(0, 0.15, len(t))) * _band(len(t), 300, 3400), len(t))
    x = voiced * envelope + noise * (1 - envelope)
    return through_ulaw(x / np.max(np.abs(x)) * 16000)


def _band(n: int, low: float, high: float) -> np.ndarray:
    freqs = np.fft.rfftfreq(n, 1 / RATE_IN)
    return ((freqs >= low) & (freqs <= high)).astype(np.float64)


def sample_recording() -> np.ndarray | None:
    if not SAMPLE.exists():
        return None
    from bridge.simulator.audio import load_ulaw

    return ulaw_to_pcm16(load_ulaw(SAMPLE))


def tone_levels(factory: Callable[[], Stream], freq: float) -> tuple[float, float]:
    """(gain in dB of the tone, level in dB of its mirror at 8000−f relative to the tone)."""
    seconds, amplitude = 1.0, 16000.0
    t = np.arange(int(RATE_IN * seconds)) / RATE_IN
    x = np.rint(amplitude * np.sin(2 * np.pi * freq * t)).astype(np.int16)  # linear, no μ-law
    y, _ = run_stream(factory, x)
    y = y[800 : 800 + 12800]  # steady state, 0.8 s
    window = np.blackman(len(y))
    spectrum = np.abs(np.fft.rfft(y * window)) / (np.sum(window) / 2)
    freqs = np.fft.rfftfreq(len(y), 1 / RATE_OUT)

    def peak(f: float) -> float:
        k = int(np.argmin(np.abs(freqs - f)))
        return float(np.max(spectrum[max(k - 3, 0) : k + 4]))

    signal = peak(freq)
    return 20 * np.log10(signal / amplitude), 20 * np.log10(max(peak(RATE_IN - freq), 1e-12) / signal)


def us_per_frame(factory: Callable[[], Stream], x: np.ndarray, repeats: int = 3) -> float:
    frames = [x[i : i + FRAME] for i in range(0, len(x) - FRAME + 1, FRAME)]
    best = float("inf")
    for _ in range(repeats):
        r = factory()
        started = time.perf_counter()
        for frame in frames:
            r.process(frame)
        best = min(best, (time.perf_counter() - started) / len(frames) * 1e6)
    return best


def measure(factory: Callable[[], Stream], synthetic: np.ndarray, sample: np.ndarray | None) -> Figures:
    y, latency = run_stream(factory, synthetic)
    reference = soxr.resample(synthetic.astype(np.float64), RATE_IN, RATE_OUT, quality="VHQ")
    sample_snr = None
    if sample is not None:
        ys, _ = run_stream(factory, sample)
        sample_snr = si_snr(ys, soxr.resample(sample.astype(np.float64), RATE_IN, RATE_OUT, quality="VHQ"))
    images = [tone_levels(factory, f)[1] for f in (300, 700, 1000, 2000, 3000, 3400)]
    gains = [tone_levels(factory, f)[0] for f in (100, 300, 1000, 2000, 3000, 3400)]
    return Figures(
        si_snr_synthetic=si_snr(y, reference),
        si_snr_sample=sample_snr,
        image_rejection=-max(images),
        flatness=max(abs(g) for g in gains),
        length_error=len(y) - 2 * len(synthetic),
        us_per_frame=us_per_frame(factory, synthetic),
        latency_ms=latency,
    )


TARGETS = {
    "si_snr_synthetic": ("SI-SNR speech-like (dB)", ">= 50", lambda v: v >= 50),
    "si_snr_sample": ("SI-SNR sample recording (dB)", ">= 50", lambda v: v is None or v >= 50),
    "image_rejection": ("image rejection 300-3400 Hz (dB)", ">= 70", lambda v: v >= 70),
    "flatness": ("passband deviation 100-3400 Hz (±dB)", "<= 0.5", lambda v: v <= 0.5),
    "length_error": ("length error after flush (samples)", "0 (±1 frame)", lambda v: abs(v) <= 1),
    "us_per_frame": ("CPU per 20 ms frame per track (µs)", "<= 15", lambda v: v <= 15),
    "latency_ms": ("worst latency held inside (ms)", "(lower is better)", lambda v: True),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20.0, help="length of the synthetic signal")
    args = parser.parse_args(argv)
    synthetic = speech_like(args.seconds)
    sample = sample_recording()
    results = {name: measure(factory, synthetic, sample) for name, factory in RESAMPLERS.items()}
    names = list(results)
    ours, baseline = results[names[0]], results[names[1]]

    def fmt(value: float | int | None) -> str:
        if value is None:
            return "n/a"
        return f"{value:.0f}" if isinstance(value, int) else f"{value:.2f}"

    header = ["figure", "target", *names, "ours vs ratecv", "ours meets target"]
    rows = []
    for key, (label, target, ok) in TARGETS.items():
        values = [getattr(results[n], key) for n in names]
        a, b = getattr(ours, key), getattr(baseline, key)
        if a is None or b is None:
            ratio = "n/a"
        elif key in ("si_snr_synthetic", "si_snr_sample", "image_rejection"):
            ratio = f"{a - b:+.1f} dB"
        elif key == "length_error":
            ratio = f"{a} vs {b}"
        elif b:
            ratio = f"{a / b:.2f}×"
        else:
            ratio = "n/a"
        rows.append([label, target, *map(fmt, values), ratio, "yes" if ok(a) else "NO"])
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"  # noqa: E731
    print(line(header))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print(line(row))
    print(
        f"\nsignal: {args.seconds:.0f} s speech-like synthetic via μ-law; sample: {SAMPLE.name}"
        f"{'' if sample is not None else ' (missing)'}; reference: soxr VHQ one-shot"
    )
    missed = [TARGETS[k][0] for k in TARGETS if not TARGETS[k][2](getattr(ours, k))]
    print("targets: all met" if not missed else f"targets missed: {'; '.join(missed)}")
    return 0  # a benchmark reports; it does not fail the build


if __name__ == "__main__":
    raise SystemExit(main())
