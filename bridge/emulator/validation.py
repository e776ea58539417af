"""Request-body validation for Create and End Session, following P-CS / P-ES.

Where the docs (P-YAML: 422) and Eka's OSS server (400 ``BAD_REQUEST``) disagree on
validation failures, the emulator answers 400 ``invalid_request``: the docs' code for
bad requests, and the status both sources use for template validation.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

UPLOAD_TYPES = ("chunked", "single", "stream")
SESSION_MODES = ("dictation", "consultation")
MODELS = ("lite", "pro")
COMMUNICATION_PROTOCOLS = ("http", "websocket", "rpc")
MAX_TEMPLATES = 2
SESSION_ID_LENGTH = (16, 32)
DEFAULT_TEMPLATE = "clinical_notes_template"


class ValidationError(ValueError):
    """A bad request body; ``field`` names the offending field for ``error.details``."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def details(self) -> dict[str, Any]:
        return {} if self.field is None else {"field": self.field}


@dataclass(frozen=True)
class CreateRequest:
    """A validated Create Session body, with the docs' defaults filled in."""

    upload_type: str
    session_id: str | None = None
    session_mode: str = "dictation"  # P-CS default (OSS: consultation)
    templates: tuple[str, ...] = ()
    model: str = "lite"  # P-CS default (N-OAS and OSS: pro)
    language_hint: tuple[str, ...] = ()
    transcript_language: str | None = None
    communication_protocol: str | None = None
    additional_data: dict[str, Any] | None = None
    patient_details: dict[str, Any] | None = None


def parse_json(raw: bytes, *, allow_empty: bool) -> Any:
    if not raw.strip():
        if allow_empty:
            return None
        raise ValidationError("request body is required (JSON object)")
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ValidationError("request body is not valid JSON") from None


def parse_create(raw: bytes) -> CreateRequest:
    body = parse_json(raw, allow_empty=False)
    if not isinstance(body, dict):
        raise ValidationError("request body must be a JSON object")

    upload_type = body.get("upload_type")
    if upload_type is None:
        raise ValidationError("upload_type is required", "upload_type")
    _one_of(upload_type, UPLOAD_TYPES, "upload_type")

    session_id = body.get("session_id")
    if session_id is not None:
        low, high = SESSION_ID_LENGTH
        if not isinstance(session_id, str) or not low <= len(session_id) <= high:
            raise ValidationError(f"session_id must be a string of {low}-{high} characters", "session_id")

    session_mode = body.get("session_mode", "dictation")
    _one_of(session_mode, SESSION_MODES, "session_mode")
    model = body.get("model", "lite")
    _one_of(model, MODELS, "model")

    templates = body.get("templates", [])
    if not isinstance(templates, list) or not all(isinstance(t, str) and t for t in templates):
        raise ValidationError("templates must be a list of template ids", "templates")
    if len(templates) > MAX_TEMPLATES:
        raise ValidationError(f"template validation failed: at most {MAX_TEMPLATES} templates", "templates")

    language_hint = body.get("language_hint", [])
    if not isinstance(language_hint, list) or not all(isinstance(x, str) for x in language_hint):
        raise ValidationError("language_hint must be a list of strings", "language_hint")

    transcript_language = body.get("transcript_language")
    if transcript_language is not None and not isinstance(transcript_language, str):
        raise ValidationError("transcript_language must be a string", "transcript_language")

    protocol = body.get("communication_protocol")
    if protocol is not None:
        _one_of(protocol, COMMUNICATION_PROTOCOLS, "communication_protocol")

    additional_data = body.get("additional_data")
    if additional_data is not None and not isinstance(additional_data, dict):
        raise ValidationError("additional_data must be an object", "additional_data")
    patient_details = body.get("patient_details")
    if patient_details is not None and not isinstance(patient_details, dict):
        raise ValidationError("patient_details must be an object", "patient_details")

    return CreateRequest(
        upload_type=upload_type,
        session_id=session_id,
        session_mode=session_mode,
        templates=tuple(templates),
        model=model,
        language_hint=tuple(language_hint),
        transcript_language=transcript_language,
        communication_protocol=protocol,
        additional_data=additional_data,
        patient_details=patient_details,
    )


def parse_end(raw: bytes) -> int | None:
    """``audio_files_sent`` from an End body; a missing body or field is fine (N-OAS)."""
    body = parse_json(raw, allow_empty=True)
    if body is None:
        return None
    if not isinstance(body, dict):
        raise ValidationError("request body must be a JSON object")
    sent = body.get("audio_files_sent")
    if sent is None:
        return None
    if isinstance(sent, bool) or not isinstance(sent, int) or sent < 0:
        raise ValidationError("audio_files_sent must be an integer >= 0", "audio_files_sent")
    return sent


def _one_of(value: Any, allowed: tuple[str, ...], name: str) -> None:
    if value not in allowed:
        raise ValidationError(f"{name} must be one of {', '.join(allowed)}", name)
