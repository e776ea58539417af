"""Hostile input on a live socket: arbitrary and mutated Twilio messages (hypothesis).

One real bridge and one EkaScribe emulator serve every example; each example is one call
whose messages are Twilio's own, each kept, dropped, duplicated, truncated, replaced by
garbage, or with one field set to an arbitrary value or removed. Whatever arrives, the
bridge must not crash, must end every call it took (never with ``end_reason: error``, and
no message may trip a bug: ``internal_error``), and must end every Eka session it opened
exactly once.

Hypothesis drives the examples from a worker thread; each call runs on the test's event
loop (``anyio.from_thread.run``), so the servers live across all examples.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.audio.codec import ULAW
from bridge.audio.mixer import Mixer
from bridge.providers.twilio.simulator import TwilioCall, plan_messages, replay
from tests.harness import Harness, running
from tests.live.test_call import ulaw_call

pytestmark = pytest.mark.anyio

EXAMPLES = 150
LIMIT_S = 10.0
INBOUND = ulaw_call(0.12, seed=1)
OUTBOUND = ulaw_call(0.12, seed=2)
WS_MAX_BYTES = 8 * 1024

# Values a field may be set to: JSON of any shape, numbers at the edges, numeric strings
# (Twilio's own type for timestamps and chunks), base64 of anything, long text.
edge_numbers = st.sampled_from([0, -1, 1, 159, 2**31, -(2**31), 2**53, 2**63, 10**15, -(10**15), 1e308, -0.0])
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12) | edge_numbers,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
field_values = st.one_of(
    json_values,
    edge_numbers.map(str),
    st.binary(max_size=400).map(lambda b: base64.b64encode(b).decode()),
    st.sampled_from(["inbound", "outbound", "both", "audio/x-l16", "audio/x-mulaw", "start", "stop"]),
    st.text(min_size=100, max_size=3000),
)
garbage = st.one_of(
    st.text(max_size=200),
    st.binary(max_size=200),
    json_values.map(json.dumps),
    st.sampled_from(["media", "start", "stop", "mark", "dtmf", "clear", ""]).map(lambda e: f'{{"event": "{e}"}}'),
    st.just("x" * (WS_MAX_BYTES + 1)),  # over the size cap: the socket is closed (1009)
)


def paths(message: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every key path in a nested message, intermediate objects included."""
    found: list[tuple[str, ...]] = []
    if isinstance(message, dict):
        for key, value in message.items():
            found.append((*prefix, key))
            found.extend(paths(value, (*prefix, key)))
    return found


#: The emulator's flush after a stream ends, shortened: these tests are about the phone side.
QUICK_FLUSH = {"flush_delay_s": 0.05}

#: What happens to each of a call's messages ("set" twice as likely as the other changes).
OPS = ["keep"] * 5 + ["drop", "duplicate", "set", "set", "delete", "truncate", "garbage"]
#: Fields the bridge acts on: mutated more often than the rest.
SENSITIVE = [
    ("event",),
    ("media", "timestamp"),
    ("media", "track"),
    ("media", "payload"),
    ("start", "tracks"),
    ("start", "mediaFormat", "encoding"),
    ("start", "mediaFormat", "sampleRate"),
    ("start", "callSid"),
    ("start", "customParameters"),
]


def with_field(message: dict[str, Any], path: tuple[str, ...], value: Any, *, delete: bool) -> dict[str, Any]:
    copy = json.loads(json.dumps(message))
    node = copy
    for key in path[:-1]:
        node = node[key]
    if delete:
        node.pop(path[-1], None)
    else:
        node[path[-1]] = value
    return copy


@st.composite
def hostile_call(draw: st.DrawFn) -> tuple[list[tuple[float, Any]], bool]:
    two_tracks = draw(st.booleans())
    call = TwilioCall(tracks=["inbound", "outbound"] if two_tracks else ["inbound"])
    plan = plan_messages(call, INBOUND, OUTBOUND if two_tracks else None)
    out: list[tuple[float, Any]] = []
    for _, message in plan:
        op = draw(st.sampled_from(OPS))
        if op == "keep":
            out.append((0.0, message))
        elif op == "duplicate":
            out += [(0.0, message), (0.0, message)]
        elif op in ("set", "delete"):
            every = paths(message)
            sensitive = [p for p in SENSITIVE if p in every]
            path = draw(st.sampled_from(sensitive if sensitive and draw(st.booleans()) else every))
            out.append((0.0, with_field(message, path, draw(field_values), delete=op == "delete")))
        elif op == "truncate":
            text = json.dumps(message)
            out.append((0.0, text[: draw(st.integers(0, len(text) - 1))]))
        elif op == "garbage":
            out.append((0.0, draw(garbage)))
    for _ in range(draw(st.integers(0, 3))):  # extra messages anywhere
        out.insert(draw(st.integers(0, len(out))), (0.0, draw(garbage)))
    return out, draw(st.booleans())


async def one_call(h: Harness, messages: list[tuple[float, Any]], drop: bool, number: int) -> int:
    """One hostile call; returns how many Eka sessions the bridge says it opened for it."""
    await replay(
        h.twilio_url,
        messages,
        pace=1000,
        drop_after_s=0.0 if drop else None,  # drop: the TCP connection just goes, no close frame
        open_timeout=LIMIT_S,
        server_close_timeout=LIMIT_S,
    )
    summaries = await h.bridge.calls.wait_finished(number, timeout=LIMIT_S)
    summary = summaries[-1]
    assert summary["end_reason"] in ("stop", "socket_closed", "refused"), summary
    assert summary["end_status"] in ("ended", "no_start", "no_audio"), summary
    assert "internal_error" not in summary["bad_messages"], summary  # no message tripped a bug
    for session in h.emulator.sessions.values():
        assert session.end_calls == 1, session.session_id
    return len(summary["sessions"])


async def test_hostile_messages_never_crash_the_bridge_and_every_session_ends_once(tmp_path: Path) -> None:
    calls = 0
    reported_sessions = 0
    # The hostile part here is the phone's stream; a quick flush keeps a hundred calls fast.
    async with running(tmp_path, emulator_options=QUICK_FLUSH, ws_max_bytes=WS_MAX_BYTES, media_idle_s=LIMIT_S) as h:

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        @given(hostile_call())
        def property_(case: tuple[list[tuple[float, Any]], bool]) -> None:
            nonlocal calls, reported_sessions
            calls += 1
            messages, drop = case
            reported_sessions += anyio.from_thread.run(one_call, h, messages, drop, calls)

        await anyio.to_thread.run_sync(property_)

        async with httpx.AsyncClient(timeout=LIMIT_S) as http:
            health = await http.get(h.bridge_url + "/healthz")
        sessions = list(h.emulator.sessions.values())

    assert health.status_code == 200 and health.json()["active_calls"] == 0
    assert h.bridge.calls.finished_count == calls >= EXAMPLES
    # Every session the bridge opened is one a call reports, and each was ended exactly once.
    assert reported_sessions == len(sessions) == h.emulator.count("end")
    assert len(sessions) >= EXAMPLES // 4  # the cases are hostile, yet many are still calls
    assert all(s.end_calls == 1 for s in sessions)


# --- regressions the fuzzing pointed at -------------------------------------------------------


def test_a_timestamp_far_off_re_anchors_the_track_instead_of_filling_hours_of_silence() -> None:
    frame = bytes(INBOUND[:160])
    mixer = Mixer(["inbound", "outbound"], 8000, ULAW)
    out = [mixer.push("inbound", 0, frame), mixer.push("outbound", 0, frame)]
    for ts in (10**12, 10**12 + 20, 40, -(2**40)):  # ~31 years ahead, then back, then before 1970
        out += [mixer.push("inbound", ts, frame), mixer.push("outbound", ts, frame)]
    out.append(mixer.flush())
    assert sum(len(o) for o in out) == 5 * 320  # five 20 ms frames per track, nothing added
    assert [t.stats.discontinuities for t in mixer.tracks.values()] == [3, 3]  # the +20 ms step is not one
    assert mixer.gap_filled_ms() == {"inbound": 0, "outbound": 0}


async def test_hostile_timestamps_end_the_call_normally(tmp_path: Path) -> None:
    values = ["Infinity", "-Infinity", "1e308", "NaN", str(2**31), str(10**15), str(-(2**31)), '"9999999999"']
    async with running(tmp_path, emulator_options=QUICK_FLUSH) as h:
        for number, value in enumerate(values, start=1):
            plan = [m for _, m in plan_messages(TwilioCall(), INBOUND)]
            hostile = json.dumps(plan[3]).replace('"timestamp": "20"', f'"timestamp": {value}')
            assert hostile != json.dumps(plan[3])
            messages = [(0.0, m) for m in plan[:3]] + [(0.0, hostile)] + [(0.0, m) for m in plan[4:]]
            await one_call(h, messages, False, number)
        sessions = list(h.emulator.sessions.values())
    assert len(sessions) == len(values) and all(s.end_calls == 1 for s in sessions)
