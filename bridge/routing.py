"""Per-number call routing: what a call to one of the clinic's numbers does.

A route says whether the call is forwarded to a clinician (``forward``: announce, fork both
parties into the bridge, ``<Dial>`` the clinician) or is a clinician dictating
(``dictation``: announce, then the call is the stream), and carries the Eka session options
for calls to that number (templates, language hint, clinic and doctor identifiers).

Values come in three layers, each filling what the next leaves out: the environment
defaults (``Settings``), the routes file's ``[default]`` section, then the section of the
called number (``[numbers."+15551234567"]``). Without a routes file only the environment
applies. The file is read once, with the standard library's ``tomllib``, and checked in
full at start-up: every problem is reported, naming the line (syntax) or the section and
key (meaning).
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bridge.config import Settings

MODES = ("forward", "dictation")
SESSION_MODES = ("consultation", "dictation")
#: E.164: a plus, a non-zero country code digit, at most 15 digits in all.
E164 = re.compile(r"\+[1-9][0-9]{1,14}")
MAX_TEMPLATES = 2
MAX_ID_CHARS = 256
#: Twilio's ``<Say>`` takes at most 4,096 characters.
MAX_SAY_CHARS = 4096
DEFAULT_CONSENT_TEXT = (
    "This call is recorded and transcribed by an automated medical scribe "
    "to help your clinician write notes. Please stay on the line to continue."
)


def is_e164(value: str) -> bool:
    return E164.fullmatch(value) is not None


@dataclass(frozen=True)
class RouteSpec:
    """One section of the routes file; ``None`` means "inherit from the layer below"."""

    mode: str | None = None
    forward_to: str | None = None
    templates: tuple[str, ...] | None = None
    language_hint: tuple[str, ...] | None = None
    session_mode: str | None = None
    consent: bool | None = None
    consent_text: str | None = None
    consent_voice: str | None = None
    consent_language: str | None = None
    clinic_id: str | None = None
    doctor_id: str | None = None


SPEC_KEYS = tuple(f.name for f in fields(RouteSpec))


@dataclass(frozen=True)
class RoutingTable:
    """The parsed routes file."""

    path: str
    default: RouteSpec
    numbers: tuple[tuple[str, RouteSpec], ...]

    def spec_for(self, number: str | None) -> RouteSpec | None:
        for key, spec in self.numbers:
            if key == number:
                return spec
        return None


@dataclass(frozen=True)
class CallRoute:
    """Everything a call to one number needs, all layers applied."""

    number: str | None  # the called number when the table has a section for it, else None
    mode: str
    forward_to: str | None
    templates: tuple[str, ...]
    language_hint: tuple[str, ...]
    session_mode: str
    consent: bool
    consent_text: str
    consent_voice: str | None
    consent_language: str | None
    clinic_id: str | None
    doctor_id: str | None

    def session_overrides(self) -> dict[str, Any]:
        """The Create Session options this route sets (see ``Call._session_body``)."""
        extra = {k: v for k, v in (("clinic_id", self.clinic_id), ("doctor_id", self.doctor_id)) if v}
        if self.number:
            extra["route"] = self.number
        return {
            "session_mode": self.session_mode,
            "templates": list(self.templates),
            "language_hint": list(self.language_hint),
            "additional_data": extra,
        }


@dataclass(frozen=True)
class RouteDefaults:
    """The settings routing reads, and only those: the environment defaults and the routes file."""

    call_mode: str
    forward_number: str | None
    templates: tuple[str, ...]
    language_hint: tuple[str, ...]
    session_mode: str
    consent: bool
    consent_text: str
    consent_voice: str | None
    consent_language: str | None
    routes: RoutingTable | None

    @classmethod
    def of(cls, settings: Settings) -> RouteDefaults:
        return cls(**{f.name: getattr(settings, f.name) for f in fields(cls)})


def resolve(defaults: RouteDefaults, number: str | None) -> CallRoute:
    """The route for a call to ``number``: env defaults ← ``[default]`` ← the number's section."""
    values: dict[str, Any] = {
        "mode": defaults.call_mode,
        "forward_to": defaults.forward_number,
        "templates": defaults.templates,
        "language_hint": defaults.language_hint,
        "session_mode": defaults.session_mode,
        "consent": defaults.consent,
        "consent_text": defaults.consent_text,
        "consent_voice": defaults.consent_voice,
        "consent_language": defaults.consent_language,
        "clinic_id": None,
        "doctor_id": None,
    }
    table = defaults.routes
    own = table.spec_for(number) if table is not None and number else None
    layers = [table.default, own] if table is not None else []
    session_mode_set = False
    for spec in layers:
        if spec is None:
            continue
        for key in SPEC_KEYS:
            value = getattr(spec, key)
            if value is not None:
                values[key] = value
        session_mode_set = session_mode_set or spec.session_mode is not None
    if values["mode"] == "dictation" and not session_mode_set:
        values["session_mode"] = "dictation"  # a clinician dictating is Eka's dictation mode
    return CallRoute(number=number if own is not None else None, **values)


# --- reading and checking the file ---------------------------------------------------------


def load_routes(path: str) -> tuple[RoutingTable | None, list[str]]:
    """Parse and check the routes file; returns the table and every problem found."""
    where = f"BRIDGE_ROUTES_FILE {path}"
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        return None, [f"{where}: cannot read it ({exc.strerror or type(exc).__name__})"]
    try:
        document = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        return None, [f"{where}: not UTF-8 text"]
    except tomllib.TOMLDecodeError as exc:
        # tomllib's message ends with "(at line L, column C)".
        return None, [f"{where}: invalid TOML: {exc}"]
    problems: list[str] = []
    for key in document:
        if key not in ("default", "numbers"):
            expected = '[default] and [numbers."+E164"]'
            problems.append(f"{where}: unknown top-level key {key!r} (expected {expected})")
    default = _spec(document.get("default", {}), "[default]", where, problems)
    numbers: list[tuple[str, RouteSpec]] = []
    sections = document.get("numbers", {})
    if not isinstance(sections, dict):
        problems.append(f"{where}: 'numbers' must be a table of [numbers.\"+E164\"] sections")
        sections = {}
    for number, section in sections.items():
        label = f'[numbers."{number}"]'
        if not is_e164(number):
            problems.append(f"{where}: {label}: {number!r} is not an E.164 number (like +15551234567)")
        numbers.append((number, _spec(section, label, where, problems)))
    return RoutingTable(path=path, default=default, numbers=tuple(numbers)), problems


def _spec(section: Any, label: str, where: str, problems: list[str]) -> RouteSpec:
    def problem(text: str) -> None:
        problems.append(f"{where}: {label}: {text}")

    if not isinstance(section, dict):
        problem("must be a table")
        return RouteSpec()
    values: dict[str, Any] = {}
    for key, value in section.items():
        if key not in SPEC_KEYS:
            problem(f"unknown key {key!r} (known: {', '.join(SPEC_KEYS)})")
            continue
        checked = _check(key, value, problem)
        if checked is not None:
            values[key] = checked
    return RouteSpec(**values)


def _check(key: str, value: Any, problem: Any) -> Any:
    """The value in its stored form, or None after reporting a problem."""
    if key in ("mode", "session_mode"):
        options = MODES if key == "mode" else SESSION_MODES
        if value not in options:
            problem(f"{key} = {value!r} must be one of: {', '.join(options)}")
            return None
        return value
    if key == "forward_to":
        if not isinstance(value, str) or not is_e164(value):
            problem(f"forward_to = {value!r} is not an E.164 number (like +15551234567)")
            return None
        return value
    if key in ("templates", "language_hint"):
        if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
            problem(f"{key} must be a list of non-empty strings")
            return None
        if key == "templates" and len(value) > MAX_TEMPLATES:
            problem(f"templates lists {len(value)} items; EkaScribe allows at most {MAX_TEMPLATES}")
            return None
        return tuple(v.strip() for v in value)
    if key == "consent":
        if not isinstance(value, bool):
            problem(f"consent = {value!r} must be true or false")
            return None
        return value
    limit = MAX_SAY_CHARS if key == "consent_text" else MAX_ID_CHARS
    if not isinstance(value, str) or not value.strip() or len(value) > limit:
        problem(f"{key} must be a non-empty string of at most {limit} characters")
        return None
    return value.strip()
