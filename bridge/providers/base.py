"""What the service needs of a telephony provider, and nothing more.

The role httpx's ``BaseTransport`` plays: the stream handler, the call, the audio path and
the Eka client speak only provider-neutral events (``events.py``); each provider package
turns its own webhooks and stream messages into those, behind this interface. ``app.py``
builds its routes by looping over the configured providers and names none of them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, Self

from starlette.requests import HTTPConnection
from starlette.routing import BaseRoute
from starlette.websockets import WebSocket

from bridge.errors import Refused as Refused
from bridge.providers.events import StreamEvent, StreamStart
from bridge.routing import RouteDefaults

if TYPE_CHECKING:
    from bridge.config import Settings

#: Serves one provider stream socket to its end (the service's shared stream handler).
StreamEndpoint = Callable[[WebSocket], Awaitable[None]]
#: Ends a live call now, by the provider's call id and a reason; True if there was one to end.
EndCall = Callable[[str, str, str], Awaitable[bool]]

#: Largest webhook body read (a provider's webhooks are a few hundred bytes of form fields).
MAX_WEBHOOK_BYTES = 64 * 1024
#: Longest form value copied into a log line.
MAX_LOGGED_CHARS = 200


@dataclass(frozen=True)
class ProviderSettings:
    """The settings every provider reads; each provider's own subclass adds its credentials and
    options. ``of`` copies them from ``Settings`` by field name (``routing``: what routing reads)."""

    development: bool
    routing: RouteDefaults

    @classmethod
    def of(cls, settings: Settings) -> Self:
        values: dict[str, Any] = {f.name: getattr(settings, f.name) for f in fields(cls) if f.name != "routing"}
        return cls(routing=RouteDefaults.of(settings), **values)


@dataclass(frozen=True)
class WebhookSettings(ProviderSettings):
    """A provider with webhooks also reads the public URL they are signed over."""

    public_url: str | None


class Provider(ABC):
    """One telephony provider: its web routes, its stream's parser and upgrade checks, and
    what its calls ask of an Eka session."""

    #: A short stable name: log field, metric label, the registry's key with the call id.
    name: str
    #: > 0: a stream that closes without an end signal may come back on a new socket (same
    #: call id) within this many seconds, and carries on in the same session.
    reconnect_grace_s: float = 0.0
    #: How L16 audio is decoded: "big", "little" or "auto" (decided from the audio).
    l16_byte_order: str = "big"

    @abstractmethod
    def routes(self, stream: StreamEndpoint) -> list[BaseRoute]:
        """Every route of this provider: its webhooks, and its stream socket served by ``stream``."""

    @abstractmethod
    def parse(self, text: str) -> StreamEvent:
        """One stream message to a provider-neutral event (raises ``ProtocolError``)."""

    @abstractmethod
    def check_upgrade(self, websocket: WebSocket) -> None:
        """Raise ``Refused`` unless the stream upgrade is authentic (before it is accepted)."""

    @abstractmethod
    def reject(
        self, endpoint: str, reason: str, *, status: int | None = None, conn: HTTPConnection | None = None
    ) -> None:
        """Count and log one refused request or message (never its content or signature)."""

    @abstractmethod
    def session_overrides(self, start: StreamStart) -> dict[str, Any]:
        """Per-call Create Session options from the call's route (see ``bridge.routing``)."""

    def announce(self) -> None:  # noqa: B027 - optional: most providers have nothing to say
        """Say at start-up how this provider's traffic will be treated, when it is not the normal case."""
