"""Emulator settings: everything a test or a human may want to vary, in one place."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

REPEAT_END_MODES = ("error", "reprocess")
EXPIRES_FORMATS = ("iso", "unix")  # Create Session's expires_at: ISO 8601 (docs) or Unix seconds (OSS)
OUTCOMES = ("completed", "partial", "failed")  # how processing ends (P-GS: 200, 206, 200 failed)


@dataclass
class EmulatorOptions:
    """How the emulator behaves where EkaScribe's docs leave room, or where tests need speed.

    Defaults follow the docs (developer.eka.care); ``repeat_end="reprocess"`` and
    ``expires_format="unix"`` switch to what Eka's open-sourced server does instead.
    The end of a stream is always as strict as that server (spec §3.6): audio reaches
    storage in ``chunk_s`` chunks, a connection's last partial chunk only ``flush_delay_s``
    after its receive loop ends, and End processes what storage holds at that moment.
    """

    audio_dir: Path | None = Path("emulator-audio")  # <session_id>.wav per session; None = write nothing
    client_id: str | None = None  # None: any non-empty client_id/client_secret pair logs in
    client_secret: str | None = None
    static_tokens: frozenset[str] = frozenset()  # long-lived console tokens, valid as Bearer forever
    token_ttl_s: float = 1800.0  # access token lifetime (``expires_in``)
    refresh_ttl_s: float = 86400.0  # refresh token lifetime (``refresh_expires_in``)
    processing_s: float = 2.0  # first End -> Get returns 200 completed
    repeat_end: str = "error"  # "error": repeated End -> 400 (docs); "reprocess": 202 again (OSS)
    session_ttl_s: float = 3600.0  # a session not ended by then is expired (docs: ~1 h)
    expires_format: str = "iso"  # Create Session's expires_at: "iso" (docs) or "unix" (integer seconds, OSS)
    chunk_s: float = 20.0  # a connection's audio reaches storage in chunks this long (OSS VAD: ~10-25 s)
    flush_delay_s: float = 1.0  # the final flush of a connection's partial chunk (encode + upload) takes this long
    long_poll_s: float = 0.0  # hold a Get on a processing session up to this long (OSS: ~14 s); 0 = docs
    record_arrivals: bool = False  # keep (monotonic time, audio bytes) per stream frame: for bench/load.py
    outcome: str = "completed"  # "partial": the last template fails (206); "failed": 200 with status failed
    webhook_url: str | None = None  # POST a v2rx.completed notification here when processing ends (§7)
    webhook_signing_key: str | None = None  # sign it with Eka-Webhook-Signature; None = unsigned (§7.3)

    def __post_init__(self) -> None:
        if self.repeat_end not in REPEAT_END_MODES:
            raise ValueError(f"repeat_end must be one of {REPEAT_END_MODES}, not {self.repeat_end!r}")
        if self.expires_format not in EXPIRES_FORMATS:
            raise ValueError(f"expires_format must be one of {EXPIRES_FORMATS}, not {self.expires_format!r}")
        if not self.chunk_s > 0:  # also refuses NaN
            raise ValueError("chunk_s must be > 0")
        if self.outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {OUTCOMES}, not {self.outcome!r}")
        # Callers may pass a str and a set; keep one type each.
        self.audio_dir = Path(self.audio_dir) if self.audio_dir is not None else None
        self.static_tokens = frozenset(self.static_tokens)
        for name in ("token_ttl_s", "refresh_ttl_s", "processing_s", "session_ttl_s", "long_poll_s", "flush_delay_s"):
            if not getattr(self, name) >= 0:  # also refuses NaN
                raise ValueError(f"{name} must be >= 0")
