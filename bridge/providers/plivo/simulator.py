"""Replay a call as a Plivo Audio Stream, with the exact message shapes Plivo sends.

Plivo's stream is the one Vobiz copied, so the plan is Vobiz's (``bridge/providers/vobiz/
simulator.py``) with Plivo's differences: ``sequenceNumber`` from 1, a 20-character ``MA…``
``accountId``, ``extra_headers`` as ``k=v;k2=v2``. No ``stop``: the replay closes the socket.
With the auth token the stream URL gets the bridge's path token, as the answer XML writes it.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bridge.providers.plivo.signature import stream_token
from bridge.providers.plivo.stream import FIRST_SEQUENCE_NUMBER
from bridge.providers.twilio.simulator import ReplayResult
from bridge.providers.vobiz import simulator as family
from bridge.providers.vobiz.simulator import (
    BYTE_ORDERS,
    CONTENT_TYPES,
    DEFAULT_CONTENT_TYPE,
    Connection,
    VobizCall,
    load_audio,
    replay_connections,
)

__all__ = [
    "BYTE_ORDERS",
    "CONTENT_TYPES",
    "DEFAULT_CONTENT_TYPE",
    "Connection",
    "PlivoCall",
    "load_audio",
    "plan_connections",
    "plan_messages",
    "replay_connections",
    "simulate_plivo",
    "stream_url",
]


def new_account_id() -> str:
    """Plivo's ``accountId``: ``MA`` and 18 more capitals and digits."""
    return "MA" + secrets.token_hex(9).upper()


@dataclass
class PlivoCall(VobizCall):
    """The identity of one simulated Plivo stream (the values its ``start`` carries)."""

    account_id: str = field(default_factory=new_account_id)
    extra_headers: str = ""


def plan_messages(
    call: VobizCall, inbound: bytes | np.ndarray, outbound: bytes | np.ndarray | None = None, **options: Any
) -> family.Plan:
    """One stream's messages (see the Vobiz planner), ``sequenceNumber`` counting from 1."""
    return family.plan_messages(call, inbound, outbound, first_seq=FIRST_SEQUENCE_NUMBER, **options)


def plan_connections(
    call: VobizCall, inbound: bytes | np.ndarray, outbound: bytes | np.ndarray | None = None, **options: Any
) -> list[Connection]:
    """The call on one socket, or two with ``reconnect_after_s`` (see the Vobiz planner)."""
    return family.plan_connections(call, inbound, outbound, first_seq=FIRST_SEQUENCE_NUMBER, **options)


def stream_url(url: str, auth_token: str | None) -> str:
    """``url`` with the bridge's Plivo stream token appended as the last path segment."""
    return url.rstrip("/") + "/" + stream_token(auth_token) if auth_token else url


async def simulate_plivo(
    url: str,
    audio: Path,
    *,
    second_track: Path | None = None,
    content_type: str = DEFAULT_CONTENT_TYPE,
    pace: float = 1.0,
    reconnect_after_s: float | None = None,
    l16_byte_order: str = "big",
    auth_token: str | None = None,
) -> list[ReplayResult]:
    """Replay ``audio`` (inbound, the caller) and optionally ``second_track`` (outbound, the
    callee) as a new Plivo call; one result per connection."""
    inbound = load_audio(audio, content_type)
    outbound = load_audio(second_track, content_type) if second_track is not None else None
    call = PlivoCall(tracks=["inbound", "outbound"] if outbound is not None else ["inbound"])
    connections = plan_connections(
        call,
        inbound,
        outbound,
        content_type=content_type,
        l16_byte_order=l16_byte_order,
        reconnect_after_s=reconnect_after_s,
    )
    return await replay_connections(stream_url(url, auth_token), connections, pace=pace)
