"""Vobiz: Audio Streams, answer XML, X-Vobiz-Signature-V3 and the stream token."""
