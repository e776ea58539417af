"""SignalWire: Twilio's Media Streams wire format and cXML, a bearer token on the stream, and
X-SignalWire-Signature (Twilio's HMAC-SHA1, keyed by the project's signing key) on webhooks."""
