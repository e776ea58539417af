"""The telephony providers: each one a package (webhooks, stream parser, signatures,
answer documents, simulator) behind the interface in ``base.py``, speaking the
provider-neutral events of ``events.py``."""
