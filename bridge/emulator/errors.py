"""Error bodies, in the two shapes Eka uses: connect-auth's and the voice API's."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from starlette.responses import JSONResponse

AUTH_OPS = frozenset({"login", "refresh"})

# MSA 11-errors names 429 ``rate_limit_exceeded``; other codes come from the HTTP phrase.
_CODE_OVERRIDES = {429: "rate_limit_exceeded", 500: "internal_error"}


def auth_error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """connect-auth's ``OpenapiGenericError``: ``{"code": <int>, "error": "<string>"}`` (A-YML)."""
    return JSONResponse({"code": status, "error": message}, status_code=status, headers=headers)


def voice_error(
    status: int,
    code: str,
    message: str,
    details: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """The voice API's ``ErrorResponse``: ``{"error": {"code", "message"[, "details"]}}`` (P-YAML)."""
    error: dict[str, Any] = {"code": code, "message": message}
    if details is not None:
        error["details"] = details
    return JSONResponse({"error": error}, status_code=status, headers=headers)


def invalid_request(message: str, details: dict[str, Any] | None = None) -> JSONResponse:
    return voice_error(400, "invalid_request", message, details if details is not None else {})


def unauthorized(message: str) -> JSONResponse:
    """The gateway's real 401 body is undocumented (spec §1.3); this is the voice API's shape."""
    return voice_error(401, "unauthorized", message)


def status_code_name(status: int) -> str:
    if status in _CODE_OVERRIDES:
        return _CODE_OVERRIDES[status]
    try:
        return HTTPStatus(status).phrase.lower().replace(" ", "_").replace("-", "_")
    except ValueError:
        return f"http_{status}"


def fault_response(op: str, status: int, retry_after: float | None) -> JSONResponse:
    """The body an injected fault answers with, shaped like that endpoint's own errors."""
    headers = {"Retry-After": format_retry_after(retry_after)} if retry_after is not None else None
    message = f"emulator fault injected for {op}: HTTP {status}"
    if op in AUTH_OPS:
        return auth_error(status, message, headers)
    return voice_error(status, status_code_name(status), message, headers=headers)


def format_retry_after(seconds: float) -> str:
    """Whole seconds as HTTP wants them; fractions kept (non-standard) so tests stay fast."""
    return str(int(seconds)) if float(seconds).is_integer() else f"{seconds:g}"
