"""Schemes more than one provider speaks, shared rather than copied: the Twilio-style HMAC-SHA1
request signature (Twilio, SignalWire), the V3 nonce signature family (Plivo, Vobiz), and the
TwiML-family webhooks (Twilio, SignalWire's cXML, Telnyx's TeXML)."""
