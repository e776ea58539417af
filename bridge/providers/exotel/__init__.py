"""Exotel: the Stream/Voicebot applet's AgentStream protocol, Basic auth and an IP allowlist."""
