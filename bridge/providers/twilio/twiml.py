"""TwiML for a call to one of the clinic's numbers, built with ``xml.etree`` (never by hand).
SignalWire's cXML and Telnyx's TeXML are the same documents for what the bridge asks; their
``<Stream>`` may carry extra attributes (``attributes``: SignalWire's ``authBearerToken``,
Telnyx's ``codec``).

Untrusted or configured text only ever goes into element text or attribute values, where
ElementTree escapes it; characters XML 1.0 cannot carry at all are dropped first.

- ``forward``: ``<Say>`` the consent announcement, ``<Start><Stream track="both_tracks">``
  (the caller is ``inbound``, the dialed clinician ``outbound``), then ``<Dial>`` the
  clinician with the caller's number as caller ID. ``<Start>`` returns at once, so the
  stream runs for as long as the ``<Dial>``.
- ``dictation``: ``<Say>``, then ``<Connect><Stream>``: the call lasts as long as the stream
  (inbound track only), and ends when the bridge closes it.
- ``unavailable``: an apology and ``<Hangup/>`` (a forward route with no number to dial).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Mapping

from bridge.providers.envelope import xml_safe
from bridge.routing import CallRoute, is_e164

#: The ``<Parameter>`` that names the call's route; the stream handler looks it up again.
ROUTE_PARAMETER = "route"
APOLOGY_TEXT = "Sorry, this number cannot take calls right now. Please try again later. Goodbye."


def _render(root: ET.Element) -> bytes:
    body = ET.tostring(root, encoding="unicode", xml_declaration=False)
    return b'<?xml version="1.0" encoding="UTF-8"?>' + body.encode("utf-8")


def _say(parent: ET.Element, route: CallRoute, text: str) -> None:
    say = ET.SubElement(parent, "Say")
    if route.consent_voice:
        say.set("voice", xml_safe(route.consent_voice))
    if route.consent_language:
        say.set("language", xml_safe(route.consent_language))
    say.text = xml_safe(text)


def _stream(
    parent: ET.Element,
    *,
    stream_url: str,
    status_url: str,
    route_key: str | None,
    attributes: Mapping[str, str] | None = None,
) -> ET.Element:
    stream = ET.SubElement(parent, "Stream", url=xml_safe(stream_url))
    stream.set("statusCallback", xml_safe(status_url))
    stream.set("statusCallbackMethod", "POST")
    for name, value in (attributes or {}).items():
        stream.set(name, xml_safe(value))
    if route_key is not None and is_e164(route_key):
        ET.SubElement(stream, "Parameter", name=ROUTE_PARAMETER, value=route_key)
    return stream


def forward(
    route: CallRoute,
    *,
    stream_url: str,
    status_url: str,
    called: str | None,
    caller: str | None,
    attributes: Mapping[str, str] | None = None,
) -> bytes:
    """Announce, fork both parties to the bridge, and dial the clinician."""
    assert route.forward_to is not None
    root = ET.Element("Response")
    if route.consent:
        _say(root, route, route.consent_text)
    start = ET.SubElement(root, "Start")
    stream = _stream(start, stream_url=stream_url, status_url=status_url, route_key=called, attributes=attributes)
    stream.set("track", "both_tracks")
    dial = ET.SubElement(root, "Dial")
    if caller is not None and is_e164(caller):
        dial.set("callerId", caller)
    ET.SubElement(dial, "Number").text = route.forward_to
    return _render(root)


def dictation(
    route: CallRoute,
    *,
    stream_url: str,
    status_url: str,
    called: str | None,
    attributes: Mapping[str, str] | None = None,
) -> bytes:
    """Announce, then the call is the stream (inbound only) until the bridge closes it."""
    root = ET.Element("Response")
    if route.consent:
        _say(root, route, route.consent_text)
    connect = ET.SubElement(root, "Connect")
    _stream(connect, stream_url=stream_url, status_url=status_url, route_key=called, attributes=attributes)
    return _render(root)


def unavailable(route: CallRoute) -> bytes:
    """An apology and a hang-up."""
    root = ET.Element("Response")
    _say(root, route, APOLOGY_TEXT)
    ET.SubElement(root, "Hangup")
    return _render(root)
