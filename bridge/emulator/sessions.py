"""The voice API's HTTP endpoints: Create, End and Get Session (P-CS, P-ES, P-GS)."""

from __future__ import annotations

import copy
import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from structlog.typing import FilteringBoundLogger

from bridge.emulator import results
from bridge.emulator.auth import check_bearer
from bridge.emulator.changes import Changes
from bridge.emulator.errors import invalid_request, voice_error
from bridge.emulator.options import EmulatorOptions
from bridge.emulator.processing import Processor
from bridge.emulator.state import EmulatedSession, SessionStore
from bridge.emulator.storage import Storage
from bridge.emulator.tokens import TokenStore
from bridge.emulator.validation import ValidationError, parse_create, parse_end

STREAM_PATH = "/voice/v1/stream/sessions/{stream_id}/audio"
CHUNKED_PATH = "/voice/v1/sessions/{session_id}/audio"
PROTOCOL_VERSION = "0.1"


def is_expired(session: EmulatedSession, now: datetime) -> bool:
    """Not ended before ``expires_at`` (P-CS: about 1 h after creation)."""
    return session.ended_at is None and now >= session.expires_at


class SessionEndpoints:
    """Create, End, Get. Every call needs a valid Bearer token first (P-OV)."""

    def __init__(
        self,
        *,
        store: SessionStore,
        storage: Storage,
        tokens: TokenStore,
        processor: Processor,
        changes: Changes,
        options: EmulatorOptions,
        log: FilteringBoundLogger,
    ) -> None:
        self._store = store
        self._storage = storage
        self._tokens = tokens
        self._processor = processor
        self._changes = changes
        self._options = options
        self._log = log

    async def create(self, request: Request) -> Response:
        if (denied := check_bearer(request, self._tokens)) is not None:
            return denied
        raw = await request.body()
        try:
            parsed = parse_create(raw)
        except ValidationError as exc:
            return invalid_request(exc.message, exc.details())
        if parsed.session_id is not None and parsed.session_id in self._store.sessions:
            return voice_error(409, "session_already_exists", f"session {parsed.session_id} already exists")

        session_id = parsed.session_id or self._store.new_session_id()
        stream_id = self._store.new_stream_id() if parsed.upload_type == "stream" else None
        created = datetime.now(UTC)
        protocol = "websocket" if stream_id else "http"  # N-OAS/OSS derive it; a sent value is ignored
        additional = copy.deepcopy(parsed.additional_data) if parsed.additional_data is not None else {}
        additional["_protocol"] = {
            "version": PROTOCOL_VERSION,
            "upload_type": parsed.upload_type,
            "communication_protocol": protocol,
            "requested_templates": list(parsed.templates),
        }
        session = EmulatedSession(
            session_id=session_id,
            stream_id=stream_id,
            request=_as_received(raw),
            created_at=created,
            expires_at=created + timedelta(seconds=self._options.session_ttl_s),
            upload_type=parsed.upload_type,
            upload_url=_upload_url(request, session_id, stream_id),
            templates=list(parsed.templates),
            model=parsed.model,
            session_mode=parsed.session_mode,
            additional_data=additional,
            patient_details=copy.deepcopy(parsed.patient_details),
        )
        self._store.add(session)
        self._log.info(
            "session_created",
            session_id=session_id,
            upload_type=parsed.upload_type,
            stream_id=stream_id,
            templates=session.templates,
        )
        self._changes.notify()
        body: dict[str, Any] = {
            "session_id": session_id,
            "status": "created",
            "created_at": results.iso(session.created_at),
            "expires_at": self._expires_at(session),
            "upload_url": session.upload_url,
        }
        if parsed.patient_details is not None:
            body["patient_details"] = session.patient_details
        return JSONResponse(body, status_code=201)

    def _expires_at(self, session: EmulatedSession) -> str | int:
        """ISO 8601 as documented, or integer Unix seconds as Eka's OSS server sends.

        Both are cut to the second, so the value on the wire is never later than the real expiry.
        """
        if self._options.expires_format == "unix":
            return int(session.expires_at.timestamp())
        return results.iso(session.expires_at)

    async def end(self, request: Request) -> Response:
        """202 and processing starts. A repeat is 400 (docs) or 202 again (``repeat_end="reprocess"``, OSS).

        Processes what storage holds at this moment, like OSS (spec §3.6): a stream's last
        partial chunk still being flushed is not in it, and is lost. A reprocessing End
        lists storage again. ``audio_files_sent`` is accepted and stored, never compared
        (spec §4.1). Ending an expired session is undocumented; the emulator answers 410
        ``session_expired`` (MSA) and processes nothing.
        """
        if (denied := check_bearer(request, self._tokens)) is not None:
            return denied
        session = self._store.get(request.path_params["session_id"])
        if session is None:
            return _not_found(request.path_params["session_id"])
        session.end_calls += 1
        self._changes.notify()
        try:
            sent = parse_end(await request.body())
        except ValidationError as exc:
            return invalid_request(exc.message, exc.details())
        if is_expired(session, datetime.now(UTC)):
            self._log.warning(
                "session_end_expired",
                session_id=session.session_id,
                received_seconds=round(session.audio_seconds, 2),
                stored_seconds=round(session.stored_seconds, 2),
            )
            return voice_error(410, "session_expired", "Session expired before processing was initiated")
        if session.ended_at is not None and self._options.repeat_end == "error":
            return voice_error(400, "session_already_ended", "Session already ended")

        first = session.ended_at is None
        if first:
            session.ended_at = time.monotonic()
            session.audio_files_sent = sent
        self._storage.commit(session)
        self._processor.start(session)
        files = results.audio_files(session)
        self._log.info(
            "session_ended" if first else "session_reprocessing",
            session_id=session.session_id,
            audio_files_sent=sent,
            audio_files_received=len(files),
            processed_seconds=round(session.processed_seconds, 2),
            received_seconds=round(session.audio_seconds, 2),
            stream_open=session.open_streams > 0,
        )
        return JSONResponse(
            {
                "session_id": session.session_id,
                "status": "processing",
                "message": "Session ended. Processing started.",
                "audio_files_received": len(files),
                "audio_files": files,
            },
            status_code=202,
        )

    async def get(self, request: Request) -> Response:
        """202 until processing is done, then 200 ``completed`` (P-GS); with the ``outcome``
        option, 206 ``partial`` or 200 ``failed`` instead.

        No long-poll by default (P-GS: poll every ~1 s); ``long_poll_s`` holds a GET on
        a processing session like Eka's OSS server does (up to ~14 s there).
        """
        if (denied := check_bearer(request, self._tokens)) is not None:
            return denied
        session = self._store.get(request.path_params["session_id"])
        if session is None:
            return _not_found(request.path_params["session_id"])
        self._processor.catch_up(session)
        if session.status == "processing" and self._options.long_poll_s > 0:
            try:
                await self._changes.wait_for(lambda: session.status != "processing", self._options.long_poll_s)
            except TimeoutError:
                pass
        if session.status == "created":
            if is_expired(session, datetime.now(UTC)):
                return JSONResponse(results.expired_body(session), status_code=410)
            return JSONResponse(results.pending_body(session, "initialized"), status_code=202)
        if session.status == "processing":
            return JSONResponse(results.pending_body(session, "processing"), status_code=202)

        template_id = request.query_params.get("template_id")
        document_id = request.query_params.get("document_id")
        documents = results.documents(session, template_id, document_id)
        if template_id is not None and not documents:
            return voice_error(404, "template_not_found", f"no document for template {template_id}")
        if document_id is not None and not documents:
            return voice_error(404, "document_not_found", f"no document {document_id}")
        status_code = 206 if session.status == "partial" else 200
        return JSONResponse(results.completed_body(session, documents), status_code=status_code)


def _not_found(session_id: str) -> Response:
    return voice_error(404, "session_not_found", f"Session {session_id} not found")


def _as_received(raw: bytes) -> dict[str, Any]:
    body = json.loads(raw)  # already validated by parse_create
    return body if isinstance(body, dict) else {}


def _upload_url(request: Request, session_id: str, stream_id: str | None) -> str:
    """Built from the request's own base URL, so it works on any host and port (https -> wss)."""
    base = request.base_url
    if stream_id is None:
        return str(base).rstrip("/") + CHUNKED_PATH.format(session_id=session_id)
    ws_base = base.replace(scheme="wss" if base.scheme == "https" else "ws")
    return str(ws_base).rstrip("/") + STREAM_PATH.format(stream_id=stream_id)
