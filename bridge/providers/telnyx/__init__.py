"""Telnyx: Media Streaming (TeXML ``<Start><Stream>``), the streaming auth token on the upgrade,
and Ed25519-signed webhooks."""
