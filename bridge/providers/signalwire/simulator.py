"""Replay a call as a SignalWire stream: Twilio's messages (``connected``, ``start``, ``media``…,
``stop``) with SignalWire's UUID identifiers, and ``Authorization: Bearer <authBearerToken>`` on
the upgrade. The plan and the network part are Twilio's (``bridge/providers/twilio/simulator.py``).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path

from bridge.providers.twilio.simulator import ReplayResult, TwilioCall, plan_messages, replay
from bridge.simulator.audio import load_ulaw

__all__ = ["SignalWireCall", "bearer", "plan_messages", "replay", "simulate_signalwire"]


def _uuid() -> str:
    return str(uuid.uuid4())


@dataclass
class SignalWireCall(TwilioCall):
    """One simulated call: SignalWire's project, call and stream ids are UUIDs."""

    account_sid: str = field(default_factory=_uuid)
    call_sid: str = field(default_factory=_uuid)
    stream_sid: str = field(default_factory=_uuid)


def bearer(token: str | None) -> dict[str, str]:
    """The upgrade's headers for ``<Stream authBearerToken>`` (none without a token)."""
    return {"Authorization": f"Bearer {token}"} if token else {}


async def simulate_signalwire(
    url: str,
    audio: Path,
    *,
    second_track: Path | None = None,
    pace: float = 1.0,
    stream_token: str | None = None,
    params: dict[str, str] | None = None,
) -> ReplayResult:
    """Replay ``audio`` (inbound) and optionally ``second_track`` (outbound) as a new call."""
    inbound = load_ulaw(audio)
    outbound = load_ulaw(second_track) if second_track is not None else None
    call = SignalWireCall(
        tracks=["inbound", "outbound"] if outbound is not None else ["inbound"],
        custom_parameters=dict(params or {}),
    )
    return await replay(url, plan_messages(call, inbound, outbound), pace=pace, extra_headers=bearer(stream_token))
