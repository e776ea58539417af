"""``GET /calls/{call_sid}`` and ``GET /calls?since=…``: what the ledger knows of calls, for
operators and the clinic's systems, behind ``BRIDGE_API_KEY``. The ledger is the fleet's, so
any process answers for every call; ``GET /fleet`` lists the processes and their leases.

A record holds ids, timings and statuses, never a transcript or a template. Without
``BRIDGE_API_KEY`` the endpoints answer 404, as if they did not exist: no key, no API.
"""

from __future__ import annotations

import hmac
import json
from collections import Counter
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from bridge.after_call.delivery import iso
from bridge.after_call.ledger import Ledger
from bridge.after_call.result_poller import call_status
from bridge.logging import Logger

#: Calls per page of ``GET /calls``: ``limit`` defaults to this and may not exceed MAX_LIMIT.
DEFAULT_LIMIT = 100
MAX_LIMIT = 500
#: Summary fields copied to the top of a record.
SUMMARY_FIELDS = ("end_reason", "end_status", "failure", "duration_s", "audio_relayed_s", "upstream_drops")


def parse_since(value: str | None) -> float:
    """Unix seconds (``1767225600``, ``1767225600.5``) or ISO-8601 (``2026-01-01T00:00:00Z``;
    without an offset, UTC). Raises ValueError."""
    if value is None or not value.strip():
        return 0.0
    value = value.strip()
    try:
        return float(value)
    except ValueError:
        pass
    moment = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def record(row: dict[str, Any], *, deliveries: bool) -> dict[str, Any]:
    """One call as the API shows it."""
    summary = row.get("summary")
    fields = json.loads(summary) if summary else {}
    sessions = [
        {
            "session_id": s["session_id"],
            "part": s["part"],
            "state": s["state"],
            "end_status": s["end_status"],
            "created_at": iso(s["created_at"]),
            "ended_at": iso(s["ended_at"]),
            "result_status": s["result_status"],
            "result_at": iso(s["result_at"]),
            "result_via": s["result_via"],
            "result_polls": s["result_polls"],
        }
        for s in row["sessions"]
    ]
    statuses = [s["result_status"] for s in sessions]
    if not sessions:
        result = None
    elif None in statuses:
        result = "pending"
    else:
        result = call_status(statuses)
    delivery = row.get("delivery")
    if not deliveries:
        delivery_view: dict[str, Any] = {"status": "not_configured"}
    elif delivery is None:
        delivery_view = {"status": "waiting_for_result" if sessions else "none"}
    else:
        delivery_view = {
            "delivery_id": delivery["delivery_id"],
            "status": delivery["state"],
            "attempts": delivery["attempts"],
            "created_at": iso(delivery["created_at"]),
            "delivered_at": iso(delivery["delivered_at"]),
            "last_error": delivery["last_error"],
        }
    return {
        "call_sid": row["call_sid"],
        "provider": row["provider"],
        "process": row["boot_id"],  # the bridge process that carried it (see GET /fleet)
        "started_at": iso(row["started_at"]),
        "finished_at": iso(row["finished_at"]),
        **{name: fields.get(name) for name in SUMMARY_FIELDS},
        "session_ids": [s["session_id"] for s in sessions],
        "sessions": sessions,
        "result_status": result,
        "delivery": delivery_view,
    }


class CallRecords:
    def __init__(
        self, ledger: Ledger, *, api_key: str | None, deliveries: bool, rejections: Counter[str], log: Logger
    ) -> None:
        self._ledger = ledger
        self._key = api_key.encode() if api_key else None
        self._deliveries = deliveries
        self._rejections = rejections
        self._log = log

    async def one(self, request: Request) -> Response:
        if (refused := self._refused(request)) is not None:
            return refused
        rows = await self._ledger.call_records(call_sid=request.path_params["call_sid"][:128])
        if not rows:
            return JSONResponse({"error": "call_not_found"}, status_code=404)
        return JSONResponse(record(rows[0], deliveries=self._deliveries))

    async def recent(self, request: Request) -> Response:
        """Calls started at or after ``since`` (default: all), oldest first, ``limit`` per page;
        ``next_since`` is the ``since`` of the next page (null on the last)."""
        if (refused := self._refused(request)) is not None:
            return refused
        try:
            since = parse_since(request.query_params.get("since"))
            limit = int(request.query_params.get("limit", DEFAULT_LIMIT))
            if not 1 <= limit <= MAX_LIMIT:
                raise ValueError
        except (ValueError, OverflowError):
            return JSONResponse(
                {"error": f"since must be unix seconds or ISO-8601; limit 1-{MAX_LIMIT}"}, status_code=400
            )
        rows = await self._ledger.call_records(since=since, limit=limit)
        next_since = rows[-1]["started_at"] + 1e-6 if len(rows) == limit else None
        return JSONResponse({"calls": [record(r, deliveries=self._deliveries) for r in rows], "next_since": next_since})

    async def fleet(self, request: Request) -> Response:
        """The processes sharing this ledger: live (lease not expired) or lately dead."""
        if (refused := self._refused(request)) is not None:
            return refused
        members = [
            {
                "process": m["boot_id"],
                "internal_url": m["internal_url"],
                "started_at": iso(m["started_at"]),
                "lease_until": iso(m["lease_until"]),
                "live": m["live"],
                "this_process": m["self"],
            }
            for m in await self._ledger.members()
        ]
        return JSONResponse({"members": members, "live": sum(1 for m in members if m["live"])})

    def _refused(self, request: Request) -> Response | None:
        """None when the request carries the key; else the answer (404 when there is no API)."""
        if self._key is None:
            return JSONResponse({"error": "not_found"}, status_code=404)
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), self._key):
            return None
        reason = "key_missing" if not given else "key_invalid"
        self._rejections[f"calls_api:{reason}"] += 1
        client = request.client.host if request.client else None
        self._log.warning("calls_api_rejected", reason=reason, client=client)
        return JSONResponse(
            {"error": "unauthorized"}, status_code=401, headers={"WWW-Authenticate": 'Bearer realm="bridge"'}
        )
