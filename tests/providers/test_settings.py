"""The new providers' settings are read and validated by ``Settings.from_env`` like every other:
each problem on its own line, nothing accepted that a provider could not use."""

from __future__ import annotations

import base64

import pytest

from bridge.config import ConfigError, Settings

BASE = {"EKA_ACCESS_TOKEN": "t"}
KEY = base64.b64encode(bytes(range(32))).decode()


def test_the_provider_settings_are_read() -> None:
    s = Settings.from_env(
        {
            **BASE,
            "PLIVO_AUTH_TOKEN": "plivo-token",
            "PLIVO_RECONNECT_GRACE_S": "0.5",
            "SIGNALWIRE_SIGNING_KEY": "PSK_key",
            "SIGNALWIRE_STREAM_TOKEN": "abcdefghijklmnop1234",
            "EXOTEL_BASIC_AUTH": "key:0123456789abcdefXYZ",
            "EXOTEL_ALLOWED_IPS": "10.1.2.3, 192.168.0.0/16 ,2001:db8::1",
            "TELNYX_STREAM_AUTH_TOKEN": "TelnyxToken0123456789",
            "TELNYX_PUBLIC_KEY": KEY,
        }
    )
    assert (s.plivo_auth_token, s.plivo_reconnect_grace_s) == ("plivo-token", 0.5)
    assert (s.signalwire_signing_key, s.signalwire_stream_token) == ("PSK_key", "abcdefghijklmnop1234")
    assert s.exotel_basic_auth == "key:0123456789abcdefXYZ"
    assert s.exotel_allowed_ips == ("10.1.2.3/32", "192.168.0.0/16", "2001:db8::1/128")
    assert (s.telnyx_stream_auth_token, s.telnyx_public_key) == ("TelnyxToken0123456789", KEY)
    unset = Settings.from_env(BASE)
    assert unset.exotel_allowed_ips == () and unset.plivo_reconnect_grace_s == 3.0 and unset.telnyx_public_key is None


@pytest.mark.parametrize(
    ("name", "value", "problem"),
    [
        ("PLIVO_RECONNECT_GRACE_S", "-1", "out of range"),
        ("SIGNALWIRE_STREAM_TOKEN", "short", "at least 16 letters and digits"),
        ("SIGNALWIRE_STREAM_TOKEN", "has spaces in it 0123456", "at least 16 letters and digits"),
        ("EXOTEL_BASIC_AUTH", "no-colon-here-0123456789", "user:password"),
        ("EXOTEL_BASIC_AUTH", "user:short", "user:password"),
        ("EXOTEL_BASIC_AUTH", ":0123456789abcdefXYZ", "user:password"),
        ("EXOTEL_ALLOWED_IPS", "10.0.0.1,exotel.example.com", "'exotel.example.com' is not an IP address"),
        ("TELNYX_STREAM_AUTH_TOKEN", "tok/with/slashes0123", "at least 16 letters and digits"),
        ("TELNYX_PUBLIC_KEY", "not base64!", "base64 Ed25519 public key"),
        ("TELNYX_PUBLIC_KEY", base64.b64encode(b"16 bytes is not").decode(), "base64 Ed25519 public key"),
    ],
)
def test_bad_values_are_refused_at_start_up(name: str, value: str, problem: str) -> None:
    with pytest.raises(ConfigError) as refused:
        Settings.from_env({**BASE, name: value})
    assert any(name in line and problem in line for line in refused.value.problems), refused.value.problems
