"""All configuration, read once from the environment and validated at start-up.

Every problem is reported on its own line (``ConfigError.problems``) so an
integrator fixes them all in one go; nothing here reads the environment later.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from bridge.errors import ConfigError as ConfigError
from bridge.routing import DEFAULT_CONSENT_TEXT, RoutingTable, is_e164, load_routes
from bridge.routing import MODES as CALL_MODES

DEFAULT_EKA_BASE_URL = "https://api.eka.care"
SESSION_MODES = ("consultation", "dictation")
MODELS = ("lite", "pro")
STREAM_FORMATS = ("binary", "json")
#: Where an allow-listed Twilio ``<Parameter>`` may go in the Create Session body.
PARAM_TARGETS = ("patient_details", "additional_data")


@dataclass(frozen=True)
class ParamRoute:
    """One allow-listed custom parameter: ``param`` → ``section.key`` of the session body."""

    param: str
    section: str
    key: str


@dataclass(frozen=True)
class Settings:
    eka_base_url: str = DEFAULT_EKA_BASE_URL
    eka_client_id: str | None = None
    eka_client_secret: str | None = None
    eka_access_token: str | None = None
    twilio_auth_token: str | None = None
    public_url: str | None = None
    templates: tuple[str, ...] = ()
    model: str | None = None
    language_hint: tuple[str, ...] = ()
    session_mode: str = "consultation"
    param_routes: tuple[ParamRoute, ...] = (ParamRoute("patient_oid", "patient_details", "oid"),)
    stream_format: str = "json"
    batch_ms: int = 200
    buffer_max_s: float = 60.0
    upstream_close_timeout_s: float = 10.0
    flush_wait_s: float = 30.0
    flush_settle_s: float = 5.0
    rollover_margin_s: float = 300.0
    create_budget_s: float = 30.0
    end_budget_s: float = 120.0
    http_timeout_s: float = 20.0
    backoff_base_s: float = 0.25
    backoff_max_s: float = 8.0
    max_track_wait_ms: int = 200
    replay_s: float = 1.0
    max_session_parts: int = 10
    ledger_path: str = "bridge-ledger.db"
    database_url: str | None = None
    lease_ttl_s: float = 15.0
    internal_url: str | None = None
    drain_s: float = 3600.0
    sweep_grace_s: float = 10.0
    sweep_interval_s: float = 60.0
    development: bool = False
    log_format: str = "json"
    # The front door (Twilio webhooks, per-number routing, limits): see bridge/routing.py.
    call_mode: str = "forward"
    forward_number: str | None = None
    consent: bool = True
    consent_text: str = DEFAULT_CONSENT_TEXT
    consent_voice: str | None = None
    consent_language: str | None = None
    routes: RoutingTable | None = None
    ws_max_bytes: int = 64 * 1024
    max_calls: int = 100
    max_call_s: float = 4 * 3600.0
    media_idle_s: float = 30.0
    start_timeout_s: float = 5.0
    request_timeout_s: float = 10.0
    vobiz_auth_token: str | None = None
    vobiz_stream_token: str | None = None
    vobiz_reconnect_grace_s: float = 3.0
    vobiz_l16_byte_order: str = "auto"
    plivo_auth_token: str | None = None
    plivo_reconnect_grace_s: float = 3.0
    signalwire_signing_key: str | None = None
    signalwire_stream_token: str | None = None
    exotel_basic_auth: str | None = None
    exotel_allowed_ips: tuple[str, ...] = ()
    telnyx_stream_auth_token: str | None = None
    telnyx_public_key: str | None = None
    # Results and operations: Get Session polling, deliveries, the Eka webhook, the /calls API.
    result_poll_s: float = 1.0
    result_deadline_s: float = 900.0
    eka_webhook_signing_key: str | None = None
    webhook_fallback_poll_s: float = 60.0
    result_webhook_url: str | None = None
    result_webhook_secret: str | None = None
    result_webhook_backoff_s: float = 2.0
    result_webhook_backoff_max_s: float = 300.0
    result_webhook_give_up_s: float = 86400.0
    api_key: str | None = None

    @property
    def finalize_budget_s(self) -> float:
        """The longest a session's finish can take: the server's flush, the settle time if it
        gave no signal, then End Session with its retries."""
        return self.flush_wait_s + self.flush_settle_s + self.end_budget_s

    @property
    def has_eka_credentials(self) -> bool:
        return bool(self.eka_access_token or (self.eka_client_id and self.eka_client_secret))

    @classmethod
    def from_env(cls, env: Mapping[str, str], *, development: bool = False) -> Settings:
        """Build settings from an environment mapping; raise ConfigError listing every problem."""
        r = _Reader(env)
        dev = development or r.flag("BRIDGE_DEV", False)
        settings = cls(
            eka_base_url=r.url("EKA_API_BASE_URL", DEFAULT_EKA_BASE_URL, ("http", "https")) or "",
            eka_client_id=r.text("EKA_CLIENT_ID"),
            eka_client_secret=r.text("EKA_CLIENT_SECRET"),
            eka_access_token=r.text("EKA_ACCESS_TOKEN"),
            twilio_auth_token=r.text("TWILIO_AUTH_TOKEN"),
            public_url=r.url("BRIDGE_PUBLIC_URL", None, ("http", "https")),
            templates=r.listing("EKA_TEMPLATES", max_items=2),
            model=r.choice("EKA_MODEL", MODELS, None),
            language_hint=r.listing("EKA_LANGUAGE_HINT"),
            session_mode=r.choice("EKA_SESSION_MODE", SESSION_MODES, "consultation") or "consultation",
            param_routes=r.param_routes("BRIDGE_CALL_PARAMS", "patient_oid=patient_details.oid"),
            stream_format=r.choice("EKA_STREAM_FORMAT", STREAM_FORMATS, "json") or "json",
            batch_ms=int(r.number("BRIDGE_BATCH_MS", 200, 20, 1000)),
            buffer_max_s=r.number("BRIDGE_BUFFER_MAX_S", 60.0, 1, 3600),
            upstream_close_timeout_s=r.number("BRIDGE_UPSTREAM_CLOSE_TIMEOUT_S", 10.0, 0.1, 120),
            flush_wait_s=r.number("BRIDGE_FLUSH_WAIT_S", 30.0, 0.1, 600),
            flush_settle_s=r.number("BRIDGE_FLUSH_SETTLE_S", 5.0, 0, 600),
            rollover_margin_s=r.number("BRIDGE_ROLLOVER_MARGIN_S", 300.0, 1, 3000),
            create_budget_s=r.number("EKA_CREATE_RETRY_BUDGET_S", 30.0, 0, 600),
            end_budget_s=r.number("EKA_END_RETRY_BUDGET_S", 120.0, 0, 3600),
            http_timeout_s=r.number("EKA_HTTP_TIMEOUT_S", 20.0, 1, 120),
            backoff_base_s=r.number("EKA_BACKOFF_BASE_S", 0.25, 0.001, 60),
            backoff_max_s=r.number("EKA_BACKOFF_MAX_S", 8.0, 0.01, 600),
            max_track_wait_ms=int(r.number("BRIDGE_TRACK_WAIT_MS", 200, 20, 5000)),
            replay_s=r.number("BRIDGE_REPLAY_S", 1.0, 0, 30),
            max_session_parts=int(r.number("BRIDGE_MAX_SESSION_PARTS", 10, 1, 100)),
            ledger_path=r.text("BRIDGE_LEDGER_PATH") or "bridge-ledger.db",
            database_url=r.database_url("BRIDGE_DATABASE_URL"),
            lease_ttl_s=r.number("BRIDGE_LEASE_TTL_S", 15.0, 1, 600),
            internal_url=r.url("BRIDGE_INTERNAL_URL", None, ("http",)),
            drain_s=r.number("BRIDGE_DRAIN_S", 3600.0, 0, 86400),
            sweep_grace_s=r.number("BRIDGE_SWEEP_GRACE_S", 10.0, 0, 3600),
            sweep_interval_s=r.number("BRIDGE_SWEEP_INTERVAL_S", 60.0, 0.1, 86400),
            development=dev,
            log_format=r.choice("BRIDGE_LOG_FORMAT", ("json", "console"), "console" if dev else "json") or "json",
            call_mode=r.choice("BRIDGE_MODE", CALL_MODES, "forward") or "forward",
            forward_number=r.e164("BRIDGE_FORWARD_NUMBER"),
            consent=r.flag("BRIDGE_CONSENT", True),
            consent_text=r.text("BRIDGE_CONSENT_TEXT") or DEFAULT_CONSENT_TEXT,
            consent_voice=r.text("BRIDGE_CONSENT_VOICE"),
            consent_language=r.text("BRIDGE_CONSENT_LANGUAGE"),
            routes=r.routes("BRIDGE_ROUTES_FILE"),
            ws_max_bytes=int(r.number("BRIDGE_WS_MAX_BYTES", 64 * 1024, 1024, 16 * 1024 * 1024)),
            max_calls=int(r.number("BRIDGE_MAX_CALLS", 100, 1, 100_000)),
            max_call_s=r.number("BRIDGE_MAX_CALL_S", 4 * 3600.0, 1, 86400),
            media_idle_s=r.number("BRIDGE_MEDIA_IDLE_S", 30.0, 0.1, 3600),
            start_timeout_s=r.number("BRIDGE_START_TIMEOUT_S", 5.0, 0.1, 600),
            request_timeout_s=r.number("BRIDGE_REQUEST_TIMEOUT_S", 10.0, 0.5, 600),
            vobiz_auth_token=r.text("VOBIZ_AUTH_TOKEN"),
            vobiz_stream_token=r.token("VOBIZ_STREAM_TOKEN"),
            vobiz_reconnect_grace_s=r.number("VOBIZ_RECONNECT_GRACE_S", 3.0, 0, 600),
            vobiz_l16_byte_order=r.choice("VOBIZ_L16_BYTE_ORDER", ("auto", "big", "little"), "auto") or "auto",
            plivo_auth_token=r.text("PLIVO_AUTH_TOKEN"),
            plivo_reconnect_grace_s=r.number("PLIVO_RECONNECT_GRACE_S", 3.0, 0, 600),
            signalwire_signing_key=r.text("SIGNALWIRE_SIGNING_KEY"),
            signalwire_stream_token=r.token("SIGNALWIRE_STREAM_TOKEN"),
            exotel_basic_auth=r.basic_auth("EXOTEL_BASIC_AUTH"),
            exotel_allowed_ips=r.networks("EXOTEL_ALLOWED_IPS"),
            telnyx_stream_auth_token=r.token("TELNYX_STREAM_AUTH_TOKEN"),
            telnyx_public_key=r.ed25519_key("TELNYX_PUBLIC_KEY"),
            result_poll_s=r.number("EKA_RESULT_POLL_S", 1.0, 0.05, 60),
            result_deadline_s=r.number("EKA_RESULT_DEADLINE_S", 900.0, 1, 7 * 86400),
            eka_webhook_signing_key=r.secret("EKA_WEBHOOK_SIGNING_KEY"),
            webhook_fallback_poll_s=r.number("EKA_WEBHOOK_FALLBACK_POLL_S", 60.0, 1, 86400),
            result_webhook_url=r.url("RESULT_WEBHOOK_URL", None, ("http", "https"), exact=True),
            result_webhook_secret=r.secret("RESULT_WEBHOOK_SECRET"),
            result_webhook_backoff_s=r.number("RESULT_WEBHOOK_BACKOFF_S", 2.0, 0.01, 3600),
            result_webhook_backoff_max_s=r.number("RESULT_WEBHOOK_BACKOFF_MAX_S", 300.0, 0.01, 86400),
            result_webhook_give_up_s=r.number("RESULT_WEBHOOK_GIVE_UP_S", 86400.0, 1, 30 * 86400),
            api_key=r.secret("BRIDGE_API_KEY"),
        )
        if bool(settings.eka_client_id) != bool(settings.eka_client_secret):
            r.problems.append("EKA_CLIENT_ID and EKA_CLIENT_SECRET must be set together")
        if settings.rollover_margin_s < settings.finalize_budget_s:
            r.problems.append(
                f"BRIDGE_ROLLOVER_MARGIN_S={settings.rollover_margin_s:g} must cover a session's finish:"
                " BRIDGE_FLUSH_WAIT_S + BRIDGE_FLUSH_SETTLE_S + EKA_END_RETRY_BUDGET_S"
                f" = {settings.finalize_budget_s:g}"
            )
        if settings.result_webhook_url and not settings.result_webhook_secret:
            r.problems.append("RESULT_WEBHOOK_URL is set without RESULT_WEBHOOK_SECRET (deliveries are signed)")
        if settings.result_webhook_url and not dev and not _private_http_ok(settings.result_webhook_url):
            r.problems.append(
                "RESULT_WEBHOOK_URL must be https:// (transcripts travel in it); plain http only to a loopback host"
            )
        if not settings.has_eka_credentials and not dev:
            r.problems.append(
                "no Eka credentials: set EKA_CLIENT_ID + EKA_CLIENT_SECRET or EKA_ACCESS_TOKEN"
                " (or run `bridge serve --dev` to use the local emulator)"
            )
        if r.problems:
            raise ConfigError(r.problems)
        return settings


class _Reader:
    """Reads typed values and collects problems instead of stopping at the first."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.problems: list[str] = []

    def text(self, name: str) -> str | None:
        value = self.env.get(name, "").strip()
        return value or None

    def secret(self, name: str, min_chars: int = 16) -> str | None:
        """A shared secret or key: at least ``min_chars`` characters, so it cannot be guessed."""
        value = self.text(name)
        if value is not None and len(value) < min_chars:
            self.problems.append(f"{name} must be at least {min_chars} characters")
            return None
        return value

    def token(self, name: str) -> str | None:
        """A secret that travels in a URL path: letters and digits only, at least 16 of them."""
        value = self.text(name)
        if value is not None and (not value.isalnum() or not value.isascii() or len(value) < 16):
            self.problems.append(f"{name} must be at least 16 letters and digits (it goes in a URL path)")
            return None
        return value

    def basic_auth(self, name: str) -> str | None:
        """``user:password`` for HTTP Basic auth: a user without ``:``, a password of at least 16."""
        value = self.text(name)
        if value is None:
            return None
        user, sep, password = value.partition(":")
        if not sep or not user or len(password) < 16 or not value.isprintable():
            self.problems.append(f"{name} must be user:password, the password at least 16 characters")
            return None
        return value

    def networks(self, name: str) -> tuple[str, ...]:
        """Comma-separated IP addresses or CIDR blocks, normalised (``10.0.0.0/8``, ``::1/128``)."""
        found = []
        for item in self.listing(name):
            try:
                found.append(str(ipaddress.ip_network(item, strict=False)))
            except ValueError:
                self.problems.append(f"{name}: {item!r} is not an IP address or CIDR block")
        return tuple(found)

    def ed25519_key(self, name: str) -> str | None:
        """A base64 Ed25519 public key: 32 bytes once decoded."""
        value = self.text(name)
        if value is None:
            return None
        try:
            raw = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raw = b""
        if len(raw) != 32:
            self.problems.append(f"{name} must be a base64 Ed25519 public key (32 bytes)")
            return None
        return value

    def flag(self, name: str, default: bool) -> bool:
        value = self.text(name)
        if value is None:
            return default
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        self.problems.append(f"{name}={value!r} is not a boolean (use true or false)")
        return default

    def number(self, name: str, default: float, low: float, high: float) -> float:
        value = self.text(name)
        if value is None:
            return default
        try:
            number = float(value)
        except ValueError:
            self.problems.append(f"{name}={value!r} is not a number")
            return default
        if not low <= number <= high:
            self.problems.append(f"{name}={value} is out of range [{low:g}, {high:g}]")
            return default
        return number

    def choice(self, name: str, options: tuple[str, ...], default: str | None) -> str | None:
        value = self.text(name)
        if value is None:
            return default
        if value not in options:
            self.problems.append(f"{name}={value!r} must be one of: {', '.join(options)}")
            return default
        return value

    def listing(self, name: str, max_items: int | None = None) -> tuple[str, ...]:
        value = self.text(name)
        items = tuple(i.strip() for i in (value or "").split(",") if i.strip())
        if max_items is not None and len(items) > max_items:
            self.problems.append(f"{name} lists {len(items)} items; EkaScribe allows at most {max_items}")
        return items

    def url(self, name: str, default: str | None, schemes: tuple[str, ...], *, exact: bool = False) -> str | None:
        value = self.text(name)
        if value is None:
            return default
        parts = urlsplit(value)
        if parts.scheme not in schemes or not parts.netloc:
            self.problems.append(f"{name}={value!r} must be an absolute {'/'.join(schemes)} URL")
            return default
        return value if exact else value.rstrip("/")

    def database_url(self, name: str) -> str | None:
        """A PostgreSQL URL (``postgresql://user[:password]@host[:port]/db``), or None for SQLite."""
        value = self.text(name)
        if value is not None and urlsplit(value).scheme not in ("postgresql", "postgres"):
            self.problems.append(f"{name} must be a postgresql:// URL (unset: SQLite at BRIDGE_LEDGER_PATH)")
            return None
        return value

    def e164(self, name: str) -> str | None:
        value = self.text(name)
        if value is not None and not is_e164(value):
            self.problems.append(f"{name}={value!r} is not an E.164 number (like +15551234567)")
            return None
        return value

    def routes(self, name: str) -> RoutingTable | None:
        path = self.text(name)
        if path is None:
            return None
        table, problems = load_routes(path)
        self.problems.extend(problems)
        return table

    def param_routes(self, name: str, default: str) -> tuple[ParamRoute, ...]:
        value = self.env.get(name, default).strip()
        routes = []
        for item in filter(None, (i.strip() for i in value.split(","))):
            param, _, target = item.partition("=")
            section, _, key = target.partition(".")
            if not param or section not in PARAM_TARGETS or not key:
                self.problems.append(
                    f"{name}: {item!r} must look like param=patient_details.key or param=additional_data.key"
                )
                continue
            routes.append(ParamRoute(param.strip(), section, key.strip()))
        return tuple(routes)


def _private_http_ok(url: str) -> bool:
    """https anywhere; plain http only to this machine (a sidecar), never across a network."""
    parts = urlsplit(url)
    return parts.scheme == "https" or parts.hostname in ("127.0.0.1", "localhost", "::1")


def stream_url(public_url: str, path: str) -> str:
    """The WebSocket URL for ``path`` under the public base URL (http→ws, https→wss)."""
    parts = urlsplit(public_url)
    scheme = "wss" if parts.scheme == "https" else "ws"
    return f"{scheme}://{parts.netloc}{parts.path.rstrip('/')}{path}"
