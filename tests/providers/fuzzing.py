"""Hypothesis strategies shared by the providers' parser fuzz tests: messages shaped like each
provider's (its event names and field names, nested where it nests them) carrying hostile
values, and plain junk. A parser must turn every one into a neutral event or a ProtocolError."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Sequence
from typing import Any

from hypothesis import strategies as st

from bridge.providers.events import (
    Connected,
    Dtmf,
    Mark,
    Media,
    ProtocolError,
    StreamEvent,
    StreamStart,
    StreamStop,
    Unknown,
)

NEUTRAL_EVENTS = (Connected, StreamStart, Media, Mark, Dtmf, StreamStop, Unknown)

leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["8000", "16000", "24000", "1", "-1", "1e400", "audio/x-mulaw", "PCMU", "L16", "audio/x-raw"]),
    st.binary(max_size=24).map(lambda b: base64.b64encode(b).decode()),
)
values = st.recursive(
    leaves,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10,
)


def messages(events: Sequence[str], fields: Sequence[str]) -> st.SearchStrategy[str]:
    """JSON text of objects with one of ``events`` (or anything) as ``event``, top-level and
    nested members named from ``fields`` (or anything), and junk that is not such an object."""
    names = st.sampled_from(list(fields)) | st.text(max_size=6)
    body = st.dictionaries(names, values, max_size=8)
    member = body | values
    shaped = st.builds(
        lambda event, members: {"event": event, **members},
        st.sampled_from(list(events)) | values,
        st.dictionaries(names, member, max_size=6),
    )
    return st.one_of(
        shaped.map(lambda m: json.dumps(m, allow_nan=True)),
        values.map(lambda v: json.dumps(v, allow_nan=True)),
        st.text(max_size=40),
    )


def assert_total(parse: Callable[[str], StreamEvent], text: str) -> Any:
    """``parse(text)`` returns a neutral event or raises ProtocolError, nothing else."""
    try:
        event = parse(text)
    except ProtocolError:
        return None
    assert isinstance(event, NEUTRAL_EVENTS), type(event)
    return event
