"""Our X-Twilio-Signature validator, against Twilio's published vector and Twilio's own library.

``twilio.request_validator.RequestValidator`` (the official helper, a test-only dependency)
is the reference: on many generated requests, both must compute the same signature and
reach the same verdict.
"""

from __future__ import annotations

from urllib.parse import quote, urlsplit

from hypothesis import given, settings
from hypothesis import strategies as st
from twilio.request_validator import RequestValidator, add_port, remove_port

from bridge.providers.twilio.signature import (
    body_sha256,
    compute_signature,
    port_variants,
    signing_string,
    validate,
)

DOC_URL = "https://example.com/myapp.php?foo=1&bar=2"
DOC_PARAMS = {
    "CallSid": "CA1234567890ABCDE",
    "Caller": "+14158675310",
    "Digits": "1234",
    "From": "+14158675310",
    "To": "+18005551212",
}
DOC_SIGNATURE = "L/OH5YylLD5NRKLltdqwSvS0BnU="


def test_twilio_published_test_vector() -> None:
    assert compute_signature("12345", DOC_URL, DOC_PARAMS) == DOC_SIGNATURE
    assert validate("12345", DOC_URL, DOC_PARAMS, DOC_SIGNATURE)
    assert RequestValidator("12345").validate(DOC_URL, DOC_PARAMS, DOC_SIGNATURE)


def test_published_vector_fails_on_any_change() -> None:
    assert not validate("12346", DOC_URL, DOC_PARAMS, DOC_SIGNATURE)
    assert not validate("12345", DOC_URL + "&x=1", DOC_PARAMS, DOC_SIGNATURE)
    assert not validate("12345", DOC_URL, {**DOC_PARAMS, "Digits": "1235"}, DOC_SIGNATURE)
    assert not validate("12345", DOC_URL, {**DOC_PARAMS, "Extra": ""}, DOC_SIGNATURE)
    assert not validate("12345", DOC_URL, DOC_PARAMS, DOC_SIGNATURE.lower())
    assert not validate("12345", DOC_URL, DOC_PARAMS, None)
    assert not validate("12345", DOC_URL, DOC_PARAMS, "")
    assert not validate("", DOC_URL, DOC_PARAMS, DOC_SIGNATURE)


def test_stream_upgrade_vector_and_trailing_slash() -> None:
    # spec A.7: token 12345, wss://example.com/media, no parameters.
    signature = compute_signature("12345", "wss://example.com/media")
    assert signature == "7PR3qMkpDyEJtMrVOY/LDyNq8J8="
    assert validate("12345", "wss://example.com/media", None, signature, either_slash=True)
    assert validate("12345", "wss://example.com/media/", None, signature, either_slash=True)
    slash = compute_signature("12345", "wss://example.com/media/")
    assert validate("12345", "wss://example.com/media", None, slash, either_slash=True)
    # A webhook's URL is taken exactly: a trailing-slash difference breaks it.
    assert not validate("12345", "wss://example.com/media", None, slash)
    # wss's default port is 443 (Twilio's helper would add :80 here).
    with_port = compute_signature("12345", "wss://example.com:443/media")
    assert validate("12345", "wss://example.com/media", None, with_port, either_slash=True)
    port_80 = compute_signature("12345", "wss://example.com:80/media")
    assert not validate("12345", "wss://example.com/media", None, port_80)


def test_port_rules() -> None:
    params = {"CallSid": "CA1"}
    plain = compute_signature("tok", "https://h.example/voice", params)
    ported = compute_signature("tok", "https://h.example:443/voice", params)
    # Twilio may sign with or without the default port: either is accepted, whichever we see.
    for url in ("https://h.example/voice", "https://h.example:443/voice"):
        assert validate("tok", url, params, plain)
        assert validate("tok", url, params, ported)
    assert port_variants("http://h:8000/x?a=1") == ["http://h/x?a=1", "http://h:8000/x?a=1"]
    assert port_variants("https://u:p@h/x") == ["https://u:p@h/x", "https://u:p@h:443/x"]
    assert port_variants("ws://[::1]:9/x") == ["ws://[::1]/x", "ws://[::1]:9/x"]


def test_json_body_is_checked_through_body_sha256() -> None:
    body = b'{"StreamEvent":"stream-started","CallSid":"CA1"}'
    url = f"https://h.example/twilio/stream-status?bodySHA256={body_sha256(body)}"
    signature = compute_signature("tok", url)
    assert validate("tok", url, None, signature, body=body)
    assert not validate("tok", url, None, signature, body=body + b" ")  # body changed
    bare = "https://h.example/twilio/stream-status"
    assert not validate("tok", bare, None, compute_signature("tok", bare), body=body)  # no hash at all
    assert RequestValidator("tok").validate(url, body.decode(), signature)


def test_repeated_parameters_sort_by_name_then_value() -> None:
    pairs = [("b", "2"), ("a", "z"), ("a", "y"), ("a", "y")]
    assert signing_string("U", pairs) == "Uaya" + "zb2"


# --- the official library as the oracle -------------------------------------------------------

hosts = st.from_regex(r"[a-z][a-z0-9-]{0,15}(\.[a-z][a-z0-9]{1,8}){1,2}", fullmatch=True)
unreserved = st.text(alphabet="abcXYZ019-._~", min_size=1, max_size=8)
text = st.text(st.characters(exclude_categories=("Cs",)), max_size=30)


@st.composite
def urls(draw: st.DrawFn) -> str:
    scheme = draw(st.sampled_from(["http", "https"]))
    port = draw(st.one_of(st.none(), st.integers(1, 65535)))
    segments = draw(st.lists(st.one_of(unreserved, text.map(lambda t: quote(t, safe=""))), max_size=4))
    path = "/" + "/".join(segments) if segments or draw(st.booleans()) else ""
    query = draw(st.lists(st.tuples(unreserved, text.map(lambda t: quote(t, safe=""))), max_size=3))
    url = f"{scheme}://{draw(hosts)}{'' if port is None else f':{port}'}{path}"
    return url + ("?" + "&".join(f"{k}={v}" for k, v in query) if query else "")


names = st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=12)
params_st = st.dictionaries(names, text, max_size=8)


@settings(max_examples=300, deadline=None)
@given(token=text.filter(bool), url=urls(), params=params_st)
def test_matches_official_signature_and_verdicts(token: str, url: str, params: dict[str, str]) -> None:
    official = RequestValidator(token)
    assert compute_signature(token, url, params) == official.compute_signature(url, params)
    parsed = urlsplit(url)
    for signed_url in (remove_port(parsed), add_port(parsed)):  # how Twilio may have signed it
        signature = official.compute_signature(signed_url, params)
        assert validate(token, url, params, signature) is True
        assert official.validate(url, params, signature) is True
        mutated = signature[:-2] + ("A" if signature[-2] != "A" else "B") + signature[-1]
        assert validate(token, url, params, mutated) is official.validate(url, params, mutated) is False
    assert validate(token + "x", url, params, compute_signature(token, url, params)) is False


@settings(max_examples=200, deadline=None)
@given(token=text.filter(bool), url=urls(), params=params_st, signature=st.one_of(text, st.just("")))
def test_same_verdict_as_official_on_arbitrary_signatures(
    token: str, url: str, params: dict[str, str], signature: str
) -> None:
    assert validate(token, url, params, signature) is RequestValidator(token).validate(url, params, signature)


class _MultiDict(dict):  # the official helper reads repeated fields through getall()
    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        super().__init__(pairs)
        self.pairs = pairs

    def getall(self, name: str) -> list[str]:
        return [v for k, v in self.pairs if k == name]


@settings(max_examples=150, deadline=None)
@given(
    token=text.filter(bool),
    url=urls(),
    pairs=st.lists(st.tuples(st.sampled_from(["To", "From", "a", "A", "b"]), text), max_size=8),
    body=st.binary(max_size=64),
)
def test_repeated_fields_and_json_bodies_match_official(
    token: str, url: str, pairs: list[tuple[str, str]], body: bytes
) -> None:
    official = RequestValidator(token)
    assert compute_signature(token, url, pairs) == official.compute_signature(url, _MultiDict(pairs))
    # JSON-body variant: bodySHA256 in the URL, no parameters signed.
    text_body = body.decode("latin-1")
    hashed = f"{url}{'&' if '?' in url else '?'}bodySHA256={body_sha256(text_body.encode())}"
    signature = official.compute_signature(hashed, {})
    assert validate(token, hashed, None, signature, body=text_body.encode()) is True
    assert official.validate(hashed, text_body, signature) is True
    tampered = text_body.encode() + b"!"
    assert validate(token, hashed, None, signature, body=tampered) is False
    assert official.validate(hashed, tampered.decode("latin-1"), signature) is False
