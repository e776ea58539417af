"""What Get Session returns: the emulator's stand-in for transcription and templates.

Nothing is recognised; the transcript and every document say so plainly and report
how much audio was processed (what End found in storage, not what the socket received),
which is what a test of the bridge actually needs to check.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from bridge.emulator.state import EmulatedSession

CHUNK_EXTENSION = "m4a"  # OSS converts stream chunks to m4a


def iso(moment: datetime) -> str:
    """ISO 8601 in UTC with a ``Z``, as in the docs' examples."""
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def audio_files(session: EmulatedSession) -> list[str]:
    """One file per stored chunk, ``0.m4a``, ``1.m4a``, ...: those End listed once it has
    been called, those in storage now before that."""
    count = len(session.stored_chunk_sizes) if session.chunks_at_end is None else session.chunks_at_end
    return [f"{index}.{CHUNK_EXTENSION}" for index in range(count)]


def transcript(session: EmulatedSession) -> str:
    return (
        "EkaScribe emulator: no speech recognition was performed. "
        f"Processed {session.processed_seconds:.2f} s of audio at {session.sample_rate} Hz "
        f"in {session.stream_connections} stream connection(s)."
    )


def language_detected(session: EmulatedSession) -> str:
    hints = session.request.get("language_hint") or []
    for hint in hints:
        if isinstance(hint, str) and len(hint) == 2:
            return hint
    return "en"


def failed_templates(session: EmulatedSession) -> list[str]:
    """Which documents the configured outcome fails: the last one when ``partial``, all when ``failed``."""
    names = list(session.documents)
    if session.status == "failed":
        return names
    if session.status == "partial":
        return names[-1:]
    return []


def documents(
    session: EmulatedSession, template_id: str | None = None, document_id: str | None = None
) -> list[dict[str, Any]]:
    """``templates``: a list of single-key objects keyed by template id (P-YAML), filtered on request."""
    failed = set(failed_templates(session))
    items = []
    for template, doc_id in session.documents.items():
        if template_id is not None and template != template_id:
            continue
        if document_id is not None and doc_id != document_id:
            continue
        document: dict[str, Any] = {
            "status": "success",
            "document_id": doc_id,
            "document_type": template,
            "data": {
                "emulated": True,
                "message": "EkaScribe emulator: placeholder document, no clinical note was generated.",
                "audio_seconds": round(session.processed_seconds, 2),  # processed, not received
            },
            "publish": {},
        }
        if template in failed:
            document.update(
                status="failure", data={}, errors=[{"type": "generation_failed", "message": EMULATED_FAILURE}]
            )
        items.append({template: document})
    return items


EMULATED_FAILURE = "EkaScribe emulator: this document failed on purpose (outcome option)."


def pending_body(session: EmulatedSession, status: str) -> dict[str, Any]:
    """The 202 ``SessionProcessingResponse``: ``initialized`` before End, ``processing`` after."""
    files = audio_files(session)
    return {
        "session_id": session.session_id,
        "status": status,
        "created_at": iso(session.created_at),
        "expires_at": iso(session.expires_at),
        "upload_url": session.upload_url,
        "audio_files_received": len(files),
        "audio_files": files,
        "additional_data": session.additional_data,
        "transcript": "",
        "patient_details": session.patient_details,
    }


def completed_body(session: EmulatedSession, templates: list[dict[str, Any]]) -> dict[str, Any]:
    """The 200 ``SessionCompletedResponse`` (``completed`` or ``failed``), or the 206
    ``SessionPartialResponse`` (``partial``: the same fields plus ``audio_files_processed`` and
    ``processing_errors``)."""
    files = audio_files(session)
    assert session.completed_at is not None
    body = {
        "session_id": session.session_id,
        "status": session.status,
        "created_at": iso(session.created_at),
        "completed_at": iso(session.completed_at),
        "expires_at": iso(session.expires_at),
        "upload_url": session.upload_url,
        "model_used": session.model,
        "language_detected": language_detected(session),
        "audio_files_received": len(files),
        "audio_files": files,
        "additional_data": session.additional_data,
        "transcript": "" if session.status == "failed" else transcript(session),
        "templates": templates,
        "patient_details": session.patient_details,
    }
    if session.status == "partial":
        body["audio_files_processed"] = len(files)
        body["processing_errors"] = [
            {"type": "template_failed", "message": f"{name}: {EMULATED_FAILURE}"} for name in failed_templates(session)
        ]
    return body


def expired_body(session: EmulatedSession) -> dict[str, Any]:
    """The 410 ``ExpiredSessionResponse`` (documented; Eka's OSS server never sends it)."""
    files = audio_files(session)
    return {
        "session_id": session.session_id,
        "status": "expired",
        "created_at": iso(session.created_at),
        "expired_at": iso(session.expires_at),
        "message": "Session expired before processing was initiated",
        "audio_files_received": len(files),
        "audio_files": files,
        "additional_data": session.additional_data,
        "templates": {},
        "transcript": None,
        "upload_url": session.upload_url,
    }
