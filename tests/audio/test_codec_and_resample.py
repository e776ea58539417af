"""μ-law decoding, the stateful upsampler and the per-track mixer, as units."""

from __future__ import annotations

import numpy as np
import pytest
import soxr

from bridge.audio.codec import ULAW, l16_to_pcm16, pcm16_bytes, pcm16_to_ulaw, ulaw_to_pcm16
from bridge.audio.mixer import Mixer
from bridge.audio.resample import HALF_SPAN, Upsampler2x, to_int16


def tone(freq: float, seconds: float, rate: int = 8000, amplitude: float = 8000.0) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return np.rint(amplitude * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def upsample_in_chunks(x: np.ndarray, sizes: list[int]) -> np.ndarray:
    up = Upsampler2x()
    out, i, k = [], 0, 0
    while i < len(x):
        n = sizes[k % len(sizes)]
        out.append(up.process(x[i : i + n]))
        i, k = i + n, k + 1
    out.append(up.flush())
    return np.concatenate(out)


def si_snr_db(estimate: np.ndarray, reference: np.ndarray) -> float:
    est, ref = estimate.astype(np.float64), reference.astype(np.float64)
    scale = np.dot(est, ref) / np.dot(ref, ref)
    noise = est - scale * ref
    return float(10 * np.log10(np.sum((scale * ref) ** 2) / np.sum(noise**2)))


# --- μ-law ------------------------------------------------------------------------------


def test_ulaw_decode_known_values() -> None:
    # G.711: 0xFF and 0x7F are the two zeros, 0x00 is the most negative, 0x80 the most positive.
    decoded = ulaw_to_pcm16(bytes([0xFF, 0x7F, 0x00, 0x80]))
    assert decoded.dtype == np.int16
    assert decoded.tolist() == [0, 0, -32124, 32124]


def test_ulaw_round_trip_is_within_quantization() -> None:
    x = tone(440, 0.5)
    y = ulaw_to_pcm16(pcm16_to_ulaw(x))
    assert len(y) == len(x)
    assert si_snr_db(y, x) > 35  # G.711 is ~38 dB


def test_all_256_ulaw_codes_decode_monotonically_per_sign() -> None:
    codes = bytes(range(256))
    values = ulaw_to_pcm16(codes).astype(int)
    assert values[0x00] == min(values) and values[0x80] == max(values)
    # Within each half, larger code = smaller magnitude.
    assert all(np.diff(np.abs(values[0x00:0x80])) <= 0)
    assert all(np.diff(np.abs(values[0x80:0x100])) <= 0)


def test_l16_byte_orders() -> None:
    samples = np.array([1, -2, 300], dtype=np.int16)
    assert l16_to_pcm16(samples.astype(">i2").tobytes(), "big").tolist() == [1, -2, 300]
    assert l16_to_pcm16(samples.astype("<i2").tobytes(), "little").tolist() == [1, -2, 300]
    assert pcm16_bytes(samples) == samples.astype("<i2").tobytes()


# --- the upsampler ----------------------------------------------------------------------


def test_exact_length_after_flush_for_any_chunking() -> None:
    x = tone(1000, 1.0)
    for sizes in ([160], [1], [7, 333, 20], [8000]):
        assert len(upsample_in_chunks(x, sizes)) == 2 * len(x)


def test_chunking_does_not_change_a_single_sample() -> None:
    """No seams: the output is identical whether fed in 20 ms frames, odd sizes, or whole."""
    rng = np.random.default_rng(7)
    x = ulaw_to_pcm16(pcm16_to_ulaw(rng.normal(0, 3000, 8000).astype(np.int16)))
    whole = upsample_in_chunks(x, [len(x)])
    assert np.array_equal(upsample_in_chunks(x, [160]), whole)
    assert np.array_equal(upsample_in_chunks(x, [1, 159, 33, 7]), whole)


def test_output_is_time_aligned_with_the_input() -> None:
    """The filter delay is compensated: output sample 2p is input sample p (to filter accuracy)."""
    x = tone(700, 0.2)
    y = upsample_in_chunks(x, [160])
    assert np.abs(y[0::2] - x)[200:-200].max() < 2.0


def test_tail_flush_releases_exactly_the_held_samples() -> None:
    x = tone(500, 0.1)
    up = Upsampler2x()
    body = np.concatenate([up.process(x[i : i + 160]) for i in range(0, len(x), 160)])
    assert len(body) == 2 * (len(x) - HALF_SPAN)
    tail = up.flush()
    assert len(tail) == 2 * HALF_SPAN
    assert up.flush().size == 0  # a second flush adds nothing
    with pytest.raises(RuntimeError):
        up.process(x[:160])


def test_matches_a_high_quality_reference() -> None:
    """Against soxr VHQ on the whole signal, on telephone-band speech-like audio."""
    rate = 8000
    t = np.arange(rate * 2) / rate
    f0 = 140 + 25 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / rate
    x = sum((1 / k) * np.sin(k * phase) * (k * 165 < 3400) for k in range(1, 21))
    x = np.rint(x / np.max(np.abs(x)) * 12000).astype(np.int16)
    y = upsample_in_chunks(x, [160])
    reference = soxr.resample(x.astype(np.float64), 8000, 16000, quality="VHQ")
    assert si_snr_db(y, reference) > 50


def test_mirror_images_are_rejected() -> None:
    x = tone(3000, 1.0, amplitude=16000)
    y = upsample_in_chunks(x, [160]).astype(np.float64)[1000:-1000]
    spectrum = np.abs(np.fft.rfft(y * np.hanning(len(y))))
    freqs = np.fft.rfftfreq(len(y), 1 / 16000)
    signal = spectrum[np.argmin(np.abs(freqs - 3000))]
    image = spectrum[np.argmin(np.abs(freqs - 5000))]
    assert 20 * np.log10(image / signal) < -70


# --- the mixer ---------------------------------------------------------------------------


def frames(x: np.ndarray, size: int = 160) -> list[bytes]:
    return [pcm16_to_ulaw(x[i : i + size]) for i in range(0, len(x), size)]


def run_single(mixer: Mixer, payloads: list[bytes], timestamps: list[int | None]) -> np.ndarray:
    out = [mixer.push("inbound", ts, p) for ts, p in zip(timestamps, payloads, strict=True)]
    out.append(mixer.flush())
    return np.concatenate(out)


def test_single_track_passes_through_bit_exact() -> None:
    x = tone(440, 1.0)
    payloads = frames(x)
    mixer = Mixer(["inbound"], 8000, ULAW)
    got = run_single(mixer, payloads, [i * 20 for i in range(len(payloads))])
    expected = to_int16(upsample_in_chunks(ulaw_to_pcm16(b"".join(payloads)), [160]))
    assert got.dtype == np.int16 and np.array_equal(got, expected)
    assert mixer.gap_filled_ms() == {"inbound": 0}


def test_missing_frame_is_filled_with_silence_and_counted() -> None:
    x = tone(440, 1.0)
    payloads = frames(x)
    keep = [i for i in range(len(payloads)) if i != 10]
    mixer = Mixer(["inbound"], 8000, ULAW)
    got = run_single(mixer, [payloads[i] for i in keep], [i * 20 for i in keep])
    assert len(got) == 2 * len(x)  # the timeline is intact
    assert mixer.gap_filled_ms() == {"inbound": 20}
    assert np.abs(got[3200 + 60 : 3520 - 60]).max() < 300  # the hole is (nearly) silent


def test_repeated_and_backwards_frames_are_dropped_and_counted() -> None:
    x = tone(440, 0.4)
    payloads = frames(x)
    order = [0, 1, 2, 2, 3, 1, 4] + list(range(5, len(payloads)))
    mixer = Mixer(["inbound"], 8000, ULAW)
    got = run_single(mixer, [payloads[i] for i in order], [i * 20 for i in order])
    assert len(got) == 2 * len(x)
    assert mixer.tracks["inbound"].stats.late_frames == 2
    expected = to_int16(upsample_in_chunks(ulaw_to_pcm16(b"".join(payloads)), [160]))
    assert np.array_equal(got, expected)


def test_frames_without_timestamps_are_contiguous() -> None:
    x = tone(440, 0.2)
    payloads = frames(x)
    got = run_single(Mixer(["inbound"], 8000, ULAW), payloads, [None] * len(payloads))
    assert len(got) == 2 * len(x)
