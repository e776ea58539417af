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
    from bridge.providers.exotel.webhooks import ExotelProvider
    from bridge.providers.plivo.webhooks import PlivoProvider
    from bridge.providers.signalwire.webhooks import SignalWireProvider
    from bridge.providers.telnyx.webhooks import TelnyxProvider
    from bridge.providers.twilio.webhooks import TwilioProvider
    from bridge.providers.vobiz.webhooks import VobizProvider

    return [
        TwilioProvider(settings, log=log, rejections=rejections),
        VobizProvider(settings, log=log, rejections=rejections, end_call=end_call),
        PlivoProvider(settings, log=log, rejections=rejections, end_call=end_call),
        SignalWireProvider(settings, log=log, rejections=rejections),
        ExotelProvider(settings, log=log, rejections=rejections),
        TelnyxProvider(settings, log=log, rejections=rejections),
    ]
