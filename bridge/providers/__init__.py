"""The telephony providers: each one a package (webhooks, stream parser, signatures, answer
documents, simulator) behind the interface in ``base.py``, speaking the provider-neutral
events of ``events.py``. This is the one place that lists them."""

from __future__ import annotations

from collections import Counter

from bridge.config import Settings
from bridge.logging import Logger
from bridge.providers.base import EndCall, Provider


def build_providers(settings: Settings, *, log: Logger, rejections: Counter[str], end_call: EndCall) -> list[Provider]:
    """Every provider this service speaks, ready to serve."""
    from bridge.providers.exotel.webhooks import ExotelProvider, ExotelSettings
    from bridge.providers.plivo.webhooks import PlivoProvider, PlivoSettings
    from bridge.providers.signalwire.webhooks import SignalWireProvider, SignalWireSettings
    from bridge.providers.telnyx.webhooks import TelnyxProvider, TelnyxSettings
    from bridge.providers.twilio.webhooks import TwilioProvider, TwilioSettings
    from bridge.providers.vobiz.webhooks import VobizProvider, VobizSettings

    # Each provider is given the settings it reads, and only those.
    return [
        TwilioProvider(TwilioSettings.of(settings), log=log, rejections=rejections),
        VobizProvider(VobizSettings.of(settings), log=log, rejections=rejections, end_call=end_call),
        PlivoProvider(PlivoSettings.of(settings), log=log, rejections=rejections, end_call=end_call),
        SignalWireProvider(SignalWireSettings.of(settings), log=log, rejections=rejections),
        ExotelProvider(ExotelSettings.of(settings), log=log, rejections=rejections),
        TelnyxProvider(TelnyxSettings.of(settings), log=log, rejections=rejections),
    ]
