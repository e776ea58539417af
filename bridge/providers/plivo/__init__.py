"""Plivo: Audio Streams, answer XML, X-Plivo-Signature-V3 and the derived stream token."""
