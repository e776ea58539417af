"""The bridge service: its dependencies, built once, and the endpoints that use them."""

from __future__ import annotations

import asyncio
import secrets
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import structlog
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from bridge.after_call.call_records import CallRecords
from bridge.after_call.delivery import ATTEMPT_TIMEOUT_S, ResultDelivery
from bridge.after_call.eka_webhook import PATH as EKA_WEBHOOK_PATH
from bridge.after_call.eka_webhook import EkaWebhook
from bridge.after_call.ledger import Ledger, open_store
from bridge.after_call.result_poller import LONG_POLL_TIMEOUT_S, ResultPoller
from bridge.after_call.sweeper import Sweeper
from bridge.config import Settings
from bridge.eka.auth import TokenProvider
from bridge.eka.client import EkaClient
from bridge.eka.retry import Backoff
from bridge.fleet import relay
from bridge.fleet.events import FleetEvents
from bridge.fleet.membership import Membership
from bridge.fleet.relay import RelayToOwner
from bridge.live.call import Call, CallSettings
from bridge.live.limits import LIMIT_REACHED, NO_START, StreamLimits
from bridge.live.registry import CallRegistry
from bridge.logging import Logger
from bridge.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from bridge.metrics import Metrics
from bridge.providers import build_providers
from bridge.providers.base import Provider, Refused, StreamEndpoint
from bridge.providers.events import MAX_ID_CHARS, Media, ProtocolError, StreamEvent, StreamStart, bounded
from bridge.server.inline_ws import EXTENSION as INLINE_TEXT
from bridge.server.request_timeout import RequestTimeoutProtocol

#: How long shutdown waits for calls that are still finalizing (End Session in flight).
SHUTDOWN_GRACE_S = 30.0
#: Beyond a call's finish budget (flush wait + settle + End), for the rest of its wind-down.
FINALIZE_MARGIN_S = 30.0
#: Close code sent to a telephony socket that the bridge ends because it is shutting down.
GOING_AWAY = 1001
#: Close codes (RFC 6455) for a stream refused after it was accepted.
POLICY_VIOLATION = 1008  # no ``start`` in time, or a second stream for a live call
UNSUPPORTED_DATA = 1003  # a ``start`` whose format the audio path does not take
REFUSAL_CLOSE_CODES = {"unsupported_format": UNSUPPORTED_DATA, "duplicate_call": POLICY_VIOLATION}


class Bridge:
    """Holds the shared parts (HTTP client, token, Eka client, call registry, ledger, metrics,
    the background sweeper, result poller and result delivery) for all calls.

    ``eka_transport`` lets a test route Eka traffic through a given httpx transport;
    by default the real network stack is used.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        log: Logger | None = None,
        eka_transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.settings = settings
        self.log = log if log is not None else structlog.get_logger("bridge")
        self.calls = CallRegistry()
        self.ledger = Ledger(
            open_store(database_url=settings.database_url, sqlite_path=settings.ledger_path),
            boot_id=secrets.token_hex(8),
            keep_results=bool(settings.result_webhook_url),
            lease_ttl_s=settings.lease_ttl_s,
            internal_url=settings.internal_url,
        )
        self.draining = False
        #: Refused requests and malformed messages by ``endpoint:reason`` (for metrics).
        self.rejections: Counter[str] = Counter()
        self.metrics = Metrics(active_calls=lambda: len(self.calls.active), rejections=self.rejections)
        self._build_eka_parts(settings, eka_transport)
        self.records = CallRecords(
            self.ledger,
            api_key=settings.api_key,
            deliveries=bool(settings.result_webhook_url),
            rejections=self.rejections,
            log=self.log.bind(call_sid=None, stream_sid=None, session_id=None),
        )
        self.eka_webhook = (
            EkaWebhook(
                settings.eka_webhook_signing_key,
                notify=self._eka_notified,
                rejections=self.rejections,
                log=self.log,
            )
            if settings.eka_webhook_signing_key
            else None
        )
        background = self.log.bind(call_sid=None, stream_sid=None, session_id=None)
        self.membership = Membership(
            self.ledger, metrics=self.metrics, log=background, on_member_lost=self._member_lost
        )
        self.fleet = FleetEvents(settings.database_url, self.ledger.boot_id, log=background)
        self.fleet.on("end_call", self._fleet_end_call)
        self.fleet.on("eka_result", self._fleet_eka_result)
        self.call_settings = CallSettings.of(settings)
        self.providers = build_providers(settings, log=self.log, rejections=self.rejections, end_call=self.end_call)
        self._admitting = 0  # streams past the capacity check but not yet in self.calls
        self._tasks: set[asyncio.Task[Any]] = set()  # finalizations not owned by a socket handler
        provider_routes: list[BaseRoute] = []
        for provider in self.providers:
            provider.announce()
            provider_routes += provider.routes(self._stream_endpoint(provider))
        self.app = Starlette(
            routes=[
                Route("/healthz", self.healthz),
                Route("/readyz", self.readyz),
                *provider_routes,
                Route("/metrics", self.metrics_endpoint),
                Route("/calls", self.records.recent),
                Route("/calls/{call_sid}", self.records.one),
                Route("/fleet", self.records.fleet),
                WebSocketRoute(relay.PATH, self._relayed_stream),
                *(
                    [Route(EKA_WEBHOOK_PATH, self.eka_webhook.receive, methods=["POST"])]
                    if self.eka_webhook is not None
                    else []
                ),
            ],
            lifespan=self._lifespan,
        )

    @asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        """Open the ledger and start the background workers; on the way out, let calls finish,
        stop the workers, close the ledger and the HTTP clients. Every part exists already."""
        s = self.settings
        await self.ledger.open()
        workers = [
            asyncio.create_task(self.membership.run(), name="lease"),
            asyncio.create_task(self.metrics.watch_loop_lag(), name="loop-lag"),
            asyncio.create_task(self.fleet.run(), name="fleet-events"),
            asyncio.create_task(self.sweeper.run(), name="sweeper"),
            asyncio.create_task(self.results.run(), name="results"),
        ]
        if self.delivery is not None:
            workers.append(asyncio.create_task(self.delivery.run(), name="deliveries"))
        self.log.info(
            "bridge_ready",
            eka_base_url=s.eka_base_url,
            development=s.development,
            ledger=self.ledger.where,
            process=self.ledger.boot_id,
            internal_url=self.ledger.internal_url,
            result_delivery=bool(self.delivery),
            eka_webhook=bool(s.eka_webhook_signing_key),
            calls_api=bool(s.api_key),
        )
        try:
            yield
        finally:
            await self._settle_calls()
            for worker in workers:
                worker.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            await self.ledger.close()
            for client in self._http_clients:
                await client.aclose()

    def _build_eka_parts(self, s: Settings, transport: httpx.AsyncBaseTransport | None) -> None:
        """The Eka client and the workers that use it, each ready to use; the lifespan only
        opens the ledger and starts the workers. HTTP clients connect lazily."""
        timeout = httpx.Timeout(s.http_timeout_s, connect=min(10.0, s.http_timeout_s))
        # Result polls get their own connection pool (and a read timeout above Eka's ~14 s long
        # poll), so they can never hold up a call's Create or End Session.
        polling = httpx.Timeout(max(LONG_POLL_TIMEOUT_S, s.http_timeout_s), connect=min(10.0, s.http_timeout_s))
        background = self.log.bind(call_sid=None, stream_sid=None, session_id=None)
        http = httpx.AsyncClient(timeout=timeout, transport=transport)
        results_http = httpx.AsyncClient(timeout=polling, transport=transport)
        self._http_clients = [http, results_http]
        backoff = Backoff(s.backoff_base_s, s.backoff_max_s)
        tokens = TokenProvider(
            http,
            base_url=s.eka_base_url,
            client_id=s.eka_client_id,
            client_secret=s.eka_client_secret,
            static_token=s.eka_access_token,
            budget_s=s.create_budget_s,
            backoff=backoff,
            log=self.log,
            observe=self.metrics.eka_request,
        )
        eka_options: dict[str, Any] = dict(
            base_url=s.eka_base_url,
            create_budget_s=s.create_budget_s,
            end_budget_s=s.end_budget_s,
            backoff=backoff,
            observe=self.metrics.eka_request,
        )
        self.eka = EkaClient(http, tokens, log=self.log, **eka_options)
        self.sweeper = Sweeper(
            self.ledger,
            self.eka,
            # An orphan's socket died with its process; the server flushed it on disconnect,
            # without a signal: never End it before the settle time has passed.
            grace_s=s.sweep_grace_s,
            settle_s=s.flush_settle_s,
            interval_s=s.sweep_interval_s,
            metrics=self.metrics,
            log=background,
        )
        self.delivery: ResultDelivery | None = None  # only with a result webhook configured
        if s.result_webhook_url and s.result_webhook_secret:
            delivery_http = httpx.AsyncClient(timeout=ATTEMPT_TIMEOUT_S)
            self._http_clients.append(delivery_http)
            self.delivery = ResultDelivery(
                self.ledger,
                delivery_http,
                url=s.result_webhook_url,
                secret=s.result_webhook_secret,
                backoff=Backoff(s.result_webhook_backoff_s, s.result_webhook_backoff_max_s),
                give_up_s=s.result_webhook_give_up_s,
                metrics=self.metrics,
                log=background,
            )
        self.results = ResultPoller(
            self.ledger,
            EkaClient(results_http, tokens, log=background, **eka_options),
            interval_s=s.result_poll_s,
            deadline_s=s.result_deadline_s,
            fallback_interval_s=s.webhook_fallback_poll_s if s.eka_webhook_signing_key else None,
            metrics=self.metrics,
            log=background,
            on_recorded=self.delivery.wake if self.delivery else lambda: None,
        )

    # -- shutdown: drain, then finalize what is left ----------------------------------------

    async def drain(self, timeout_s: float) -> None:
        """Stop taking calls (readiness answers 503) and wait up to ``timeout_s`` for active ones."""
        self.draining = True
        self.log.warning("draining", active_calls=len(self.calls.active), drain_s=timeout_s)
        try:
            await self.calls.wait_idle(timeout_s)
        except TimeoutError:
            pass

    async def finalize_all(self, reason: str = "shutdown") -> None:
        """End every active call now: its socket is closed, its audio flushed, its session ended."""
        self.draining = True
        calls = list(self.calls.active)
        if calls:
            self.log.warning("finalizing_calls", active_calls=len(calls), reason=reason)
        for call in calls:
            call.end_request = reason
            if self.calls.take_detached(call):  # waiting for a reconnect that will not come now
                self._spawn(self._finish(call, reason))
                continue
            websocket = self.calls.sockets.get(call)
            if websocket is not None:
                await close_quietly(websocket, GOING_AWAY)
        try:
            await self.calls.wait_idle(self.settings.finalize_budget_s + FINALIZE_MARGIN_S)
        except TimeoutError:
            self.log.error("finalize_timed_out", active_calls=len(self.calls.active))

    async def _settle_calls(self) -> None:
        """Give calls that are still finalizing a bounded time before the HTTP client closes."""
        if not self.calls.active:
            return
        self.log.warning("shutdown_waiting_for_calls", active=len(self.calls.active))
        try:
            await self.calls.wait_idle(SHUTDOWN_GRACE_S)
        except TimeoutError:
            self.log.error("shutdown_left_calls_open", active=len(self.calls.active))

    def http_protocol(self) -> type[RequestTimeoutProtocol]:
        """uvicorn's HTTP protocol for this bridge: a request must arrive within
        ``BRIDGE_REQUEST_TIMEOUT_S``; slower ones are closed and counted (``http:request_timeout``)."""

        def count() -> None:
            self.rejections["http:request_timeout"] += 1

        return RequestTimeoutProtocol.with_timeout(self.settings.request_timeout_s, count)

    async def healthz(self, request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "active_calls": len(self.calls.active)})

    async def readyz(self, request: Request) -> JSONResponse:
        """Ready for new calls; 503 while draining so load balancers send calls elsewhere."""
        if self.draining:
            return JSONResponse({"status": "draining", "active_calls": len(self.calls.active)}, 503)
        return JSONResponse({"status": "ready", "active_calls": len(self.calls.active)})

    async def metrics_endpoint(self, request: Request) -> Response:
        """Prometheus text format, from this bridge's own registry."""
        return Response(self.metrics.exposition(), media_type=METRICS_CONTENT_TYPE)

    async def _eka_notified(self, session_id: str) -> bool:
        """Eka's webhook says a session is processed: the process following it fetches it now,
        this one or another of the fleet."""
        follower = await self.ledger.result_follower(session_id)
        if follower is not None and follower != self.ledger.boot_id:
            await self.fleet.publish("eka_result", session_id=session_id)
            return True
        return await self.results.notified(session_id)

    async def _fleet_eka_result(self, event: dict[str, Any]) -> None:
        session_id = str(event.get("session_id", ""))[:128]
        if await self.ledger.result_follower(session_id) == self.ledger.boot_id:
            await self.results.notified(session_id)

    async def _fleet_end_call(self, event: dict[str, Any]) -> None:
        provider, call_id = str(event.get("provider", "")), str(event.get("call_id", ""))[:64]
        if await self._end_local_call(provider, call_id, str(event.get("reason", "hangup"))[:40]):
            self.log.info("fleet_end_call", provider=provider, call_sid=call_id, stream_sid=None, session_id=None)

    def _member_lost(self) -> None:
        """A process of the fleet died: its result polls and deliveries move now, its sessions
        once the settle time has passed (the sweeper's claim waits for it)."""
        self.results.wake()
        if self.delivery is not None:
            self.delivery.wake()
        asyncio.get_running_loop().call_later(self.settings.flush_settle_s + 0.1, self.sweeper.wake)

    def provider(self, name: str) -> Provider:
        return next(p for p in self.providers if p.name == name)

    def _stream_endpoint(self, provider: Provider) -> StreamEndpoint:
        async def serve(websocket: WebSocket) -> None:
            await self._serve_stream(websocket, provider)

        return serve

    async def _serve_stream(self, websocket: WebSocket, provider: Provider, *, relayed: bool = False) -> None:
        """One provider media stream: read it to its end, whatever EkaScribe does meanwhile.

        A stream whose ``start`` names a call waiting out its reconnect grace period
        (Vobiz: new streamId, same callId) joins that call instead of starting one; one whose
        call another process of the fleet carries is relayed there. ``relayed``: a stream
        another process relays here (its provider's check was made there).
        """
        try:  # draining, signature/token, capacity: an HTTP status before accept, no Eka call
            if self.draining and not relayed:
                raise Refused(503, "draining")
            if not relayed:
                provider.check_upgrade(websocket)
            if len(self.calls.active) + self._admitting >= self.settings.max_calls:
                raise Refused(503, "too_many_calls")
        except Refused as refused:
            provider.reject("stream", refused.reason, status=refused.status, conn=websocket)
            await refuse(websocket, refused.status, refused.reason)
            return
        self._admitting += 1
        try:
            await websocket.accept()
            call = self._new_call(provider)
            await self.calls.add(call, websocket)
        finally:
            self._admitting -= 1
        reason = "socket_closed"
        limits = StreamLimits(
            media_idle_s=self.settings.media_idle_s,
            max_call_s=self.settings.max_call_s,
            start_timeout_s=self.settings.start_timeout_s,
        )

        parse = provider.parse

        def media_now(text: str) -> bool:
            """A started call's media, applied as the server parses it (see bridge/server/inline_ws.py);
            anything else, or anything while this handler is busy, takes the ASGI path below."""
            if not limits.receiving or call.start is None:
                return False
            try:
                event = parse(text)
            except ProtocolError as error:
                call.protocol_error(error)
                return True
            if type(event) is not Media:
                return False
            try:
                call.on_media(event)  # what ``_apply`` does for media, one frame shorter: 50 a second a track
            except Exception as exc:
                self._failed_message(call, exc)
            limits.media_seen()
            return True

        inline = websocket.scope.get("extensions", {}).get(INLINE_TEXT)
        if inline is not None:
            inline["register"](media_now)
        try:
            while True:
                message = await limits.receive(websocket)
                if message["type"] == LIMIT_REACHED:
                    reason = message["reason"]
                    call.log.warning("call_limit_reached", reason=reason)
                    if reason == NO_START:  # a socket that never says which call it is
                        provider.reject("stream", NO_START, status=POLICY_VIOLATION, conn=websocket)
                    await close_quietly(websocket, POLICY_VIOLATION if reason == NO_START else 1000)
                    break
                if message["type"] == "websocket.disconnect":
                    if message.get("code") == 1009:  # the server refused a message over ws_max_bytes
                        provider.reject("stream", "message_too_big", status=1009, conn=websocket)
                    break
                text = message.get("text")
                if text is None:
                    call.protocol_error(ProtocolError("binary_frame"))
                    continue
                frames = call.media_frames
                handled = await self._handle(call, text, provider, websocket)
                if isinstance(handled, RelayToOwner):
                    if await self._relay(websocket, handled, provider, call):
                        reason = "relayed"
                        break
                    self._apply(call, handled.start)  # the owner is unreachable: the call carries on here
                else:
                    call = handled
                if call.media_frames != frames:
                    limits.media_seen()
                if call.refused is not None:  # an unsupported format, or a call already live
                    code = REFUSAL_CLOSE_CODES.get(call.refused, POLICY_VIOLATION)
                    provider.reject("stream", call.refused, status=code, conn=websocket)
                    await close_quietly(websocket, code, call.refused)
                    reason = "refused"
                    break
                if call.start is not None:
                    limits.started()
                if call.stopped:
                    reason = "stop"
                    await close_quietly(websocket, 1000)
                    break
        except WebSocketDisconnect:
            pass
        except Exception:
            reason = "error"
            call.log.exception("telephony_socket_error")
        finally:
            if inline is not None:
                inline["register"](None)
            limits.close()
            reason = call.end_request or reason
            if reason == "relayed":
                pass  # the owner carried the call; this socket's placeholder is forgotten
            elif call.start is not None and call in self.calls.active and not self.calls.owns(call, websocket):
                call.log.info("stream_superseded")  # a newer socket carries the call on
            elif reason == "socket_closed" and provider.reconnect_grace_s > 0 and call.start is not None:
                # No end signal on this provider: the call may come back on a new socket.
                call.log.info("stream_detached", grace_s=provider.reconnect_grace_s)
                self.calls.detach(call, provider.reconnect_grace_s, self._grace_expired)
            else:
                # Shielded: if this handler is cancelled, the call still finalizes in the background.
                await asyncio.shield(self._finish(call, reason))

    async def _relayed_stream(self, websocket: WebSocket) -> None:
        """A stream another process of the fleet relays here, because this one owns its call."""
        provider = next((p for p in self.providers if p.name == websocket.path_params["provider"]), None)
        if provider is None or not relay.authentic(websocket, self.ledger.relay_token):
            self.rejections["fleet_relay:unauthorized"] += 1
            await refuse(websocket, 403, "unauthorized")
            return
        await self._serve_stream(websocket, provider, relayed=True)

    async def _relay(self, websocket: WebSocket, target: RelayToOwner, provider: Provider, call: Call) -> bool:
        """Pipe this stream to the process that owns its call; False if it cannot be reached."""
        await self.calls.forget(call)  # this socket's placeholder never started a call here
        call.log.info("stream_relayed_to_owner", call_sid=target.start.call_id, owner=target.owner_url)
        self.metrics.fleet_relays.inc()
        if await relay.pipe(websocket, target, provider.name, self.ledger.relay_token, self.settings.ws_max_bytes):
            return True
        call.log.warning("fleet_owner_unreachable", call_sid=target.start.call_id, owner=target.owner_url)
        await self.calls.add(call, websocket)
        return False

    def _new_call(self, provider: Provider) -> Call:
        return Call(
            provider=provider.name,
            settings=self.call_settings,
            eka=self.eka,
            log=self.log,
            ledger=self.ledger,
            session_overrides=provider.session_overrides,
            l16_byte_order=provider.l16_byte_order,
            metrics=self.metrics,
        )

    async def _handle(self, call: Call, text: str, provider: Provider, websocket: WebSocket) -> Call | RelayToOwner:
        """Apply one message; returns the call this socket feeds from now on, or where to relay
        the stream (its call lives in another process)."""
        try:
            event = provider.parse(text)
        except ProtocolError as error:
            call.protocol_error(error)
            return call
        if isinstance(event, StreamStart) and call.start is None:
            waiting = self.calls.find(provider.name, event.call_id)
            if waiting is not None and self.calls.resume(waiting, websocket):
                await self.calls.forget(call)  # this socket's placeholder never started a call
                waiting.bad_messages.update(call.bad_messages)
                waiting.resume(event)
                return waiting
            if waiting is not None and provider.reconnect_grace_s > 0 and not waiting.finished:
                # The provider reconnected before the old socket's end reached us: the newest
                # stream carries the call on, in the same session; the old one is closed.
                old = self.calls.take_over(waiting, websocket)
                if old is not None:
                    await self.calls.forget(call)
                    waiting.bad_messages.update(call.bad_messages)
                    waiting.resume(event)
                    await close_quietly(old, 1000)
                    return waiting
            if waiting is not None:  # live on another socket: a second stream never opens a second session
                call.refused = "duplicate_call"
                return call
            try:
                owner = await self.ledger.owner_of_call(provider.name, event.call_id)
            except Exception:  # the ledger is away: carry the call here rather than lose it
                call.log.exception("fleet_owner_lookup_failed")
                owner = None
            if owner is not None:  # another process of the fleet carries this call
                return RelayToOwner(owner, event, text)
        self._apply(call, event)
        return call

    def _apply(self, call: Call, event: StreamEvent) -> None:
        try:
            call.handle(event)
            if isinstance(event, StreamStart) and call.start is event:
                self.calls.started(call)
        except Exception as exc:
            self._failed_message(call, exc)

    @staticmethod
    def _failed_message(call: Call, exc: Exception) -> None:
        """A bug on one message must not cost the rest of the call: counted, the first logged
        (with its traceback: this runs inside the handler's ``except``)."""
        call.protocol_error(ProtocolError("internal_error", type(exc).__name__))
        if call.bad_messages["internal_error"] == 1:
            call.log.exception("stream_message_failed")

    def _grace_expired(self, call: Call) -> None:
        self._spawn(self._finish(call, "socket_closed"))

    async def end_call(self, provider: str, call_id: str, reason: str) -> bool:
        """End a call now (a hang-up webhook), wherever in the fleet it runs."""
        call_id = bounded(call_id, MAX_ID_CHARS)  # as the stream's ``start`` had it
        if await self._end_local_call(provider, call_id, reason):
            return True
        if await self.ledger.owner_of_call(provider, call_id) is None:
            return False
        await self.fleet.publish("end_call", provider=provider, call_id=call_id, reason=reason)
        return True

    async def _end_local_call(self, provider: str, call_id: str, reason: str) -> bool:
        """End a call this process carries: attached or waiting to reconnect."""
        call = self.calls.find(provider, call_id)
        if call is None or call.finished:
            return False
        if self.calls.take_detached(call):
            self._spawn(self._finish(call, reason))
            return True
        websocket = self.calls.sockets.get(call)
        call.end_request = reason
        if websocket is not None:
            await close_quietly(websocket, 1000)  # if it is already closing, the handler ends the call
        return True

    def _spawn(self, work: Any) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _finish(self, call: Call, reason: str) -> None:
        """Finalize a call and release its slot, whatever happens on the way."""
        summary: dict[str, Any] = {"end_reason": reason, "end_status": "error"}
        try:
            summary = await call.finish(reason)
            self.rejections.update({f"message:{r}": n for r, n in (summary.get("bad_messages") or {}).items()})
            self.metrics.call_finished(call.provider, summary)
        except Exception:  # a bug: counted and logged, and the call still leaves the registry
            self.rejections["call:finish_failed"] += 1
            call.log.exception("call_finish_failed")
        finally:
            await self.calls.done(call, summary)
        self.results.wake()  # its sessions are ended: follow them to their results
        if self.delivery is not None:  # the call's results may all be in already
            self.delivery.wake()


async def close_quietly(websocket: WebSocket, code: int, reason: str = "") -> None:
    """Close a telephony socket; one that is already closing or gone is not an error."""
    try:
        await websocket.close(code, reason)
    except Exception:  # RuntimeError (closing), WebSocketDisconnect or OSError (gone)
        pass


async def refuse(websocket: WebSocket, status: int, reason: str) -> None:
    """Answer the upgrade with a plain HTTP error, before accepting: no socket, no Eka session."""
    response = PlainTextResponse(reason, status_code=status)
    try:
        await websocket.send_denial_response(response)
    except RuntimeError:  # a server without the denial extension: uvicorn then answers 403
        await websocket.close(1008)


def create_app(settings: Settings, **kwargs: Any) -> Starlette:
    return Bridge(settings, **kwargs).app
