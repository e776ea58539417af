"""eka-phone-bridge: telephony media streams in, EkaScribe stream sessions out."""

__version__ = "0.1.0"
