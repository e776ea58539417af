"""The fidelity benchmark reports; it never fails the build."""

from __future__ import annotations

import pytest

from bench import fidelity


def test_a_missed_target_is_printed_and_the_benchmark_still_exits_0(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    label, _, _ = fidelity.TARGETS["us_per_frame"]
    monkeypatch.setitem(fidelity.TARGETS, "us_per_frame", (label, "<= 0", lambda v: v <= 0))
    assert fidelity.main(["--seconds", "1"]) == 0
    out = capsys.readouterr().out
    assert f"targets missed: {label}" in out
    assert "| SI-SNR speech-like (dB)" in out
