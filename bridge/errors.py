"""Every exception the bridge raises on purpose, in one tree.

::

    BridgeError
    ├── ConfigError     settings that cannot run; lists every problem at once (bridge/config.py)
    ├── Refused         a request or stream upgrade turned away with an HTTP status, before any
    │                   socket is accepted or Eka is called (bridge/providers/)
    ├── ProtocolError   a stream message that cannot be understood: counted and logged, the
    │                   call goes on (also a ValueError) (bridge/providers/)
    └── EkaError        an EkaScribe operation that failed for good, after its retries (bridge/eka/)

Anything else that escapes is a bug: the call's end catches it, logs it and counts it
(``Call.finish`` is total), and no exception from one call reaches another.
"""

from __future__ import annotations


class BridgeError(Exception):
    """The root of the bridge's own exceptions."""


class ConfigError(BridgeError):
    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class Refused(BridgeError):
    """A request or upgrade turned away with an HTTP status, before any socket or Eka call."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


#: Longest detail a ProtocolError keeps (details may come off the wire).
MAX_DETAIL_CHARS = 40


class ProtocolError(BridgeError, ValueError):
    """A provider message that cannot be understood; the call goes on, the message is counted."""

    def __init__(self, reason: str, detail: str = "") -> None:
        detail = detail[:MAX_DETAIL_CHARS]
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason  # short, stable, safe to log and to use as a counter label
        self.detail = detail


class EkaError(BridgeError):
    """An EkaScribe call failed for good; ``reason`` is short and safe to log."""

    def __init__(self, op: str, reason: str, status: int | None = None, attempts: int = 1) -> None:
        super().__init__(f"{op} failed: {reason} after {attempts} attempt(s)")
        self.op = op
        self.reason = reason
        self.status = status
        self.attempts = attempts
