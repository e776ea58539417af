"""structlog set-up: JSON lines in production, readable console output in development.

Call code never formats secrets or audio into events; as a second line of
defence, the ``_redact`` processor masks any key that looks like a credential
or a payload.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Protocol, TextIO

import structlog


class Logger(Protocol):
    """What the bridge asks of a logger: structlog's bound loggers (and a test's capture) fit.

    ``bind`` returns a logger that adds its fields to every event; events are short names,
    everything else goes in fields, never formatted into the name.
    """

    def bind(self, **fields: Any) -> Logger: ...
    def debug(self, event: str, *args: Any, **fields: Any) -> Any: ...
    def info(self, event: str, *args: Any, **fields: Any) -> Any: ...
    def warning(self, event: str, *args: Any, **fields: Any) -> Any: ...
    def error(self, event: str, *args: Any, **fields: Any) -> Any: ...
    def exception(self, event: str, *args: Any, **fields: Any) -> Any: ...


_SENSITIVE = ("token", "secret", "password", "authorization", "payload", "signature")


def _redact(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    for key in event:
        if any(s in key.lower() for s in _SENSITIVE):
            event[key] = "[redacted]"
    return event


def configure(log_format: str = "json", stream: TextIO | None = None, level: int = logging.INFO) -> None:
    """Configure structlog once for the process (the CLI does this; tests pass their own logger)."""
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _redact,
    ]
    if log_format == "console":
        processors.append(structlog.dev.ConsoleRenderer(colors=False))
    else:
        processors += [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.WriteLoggerFactory(stream or sys.stdout),  # line and newline in one write
        cache_logger_on_first_use=True,
    )
