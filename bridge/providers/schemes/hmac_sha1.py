"""The Twilio-style HMAC-SHA1 request signature, shared by Twilio (``X-Twilio-Signature``, keyed
by the auth token) and SignalWire (``X-SignalWire-Signature``, keyed by the project's signing
key): compute it, and verify it the way those providers sign (spec part A.7).

The signed string is the full URL the provider requested (scheme through query string, still
URL-encoded) followed by every POST parameter, sorted by name, as ``name + value`` with no
delimiters. The signature is ``base64(HMAC-SHA1(key, that string))``.

Twilio is not consistent about ports: it may sign with or without the default port, so
both forms are accepted, as the official helper library does. A JSON body is not signed as
parameters: Twilio adds a ``bodySHA256`` query parameter (hex SHA-256 of the raw body), the
URL with it is signed with an empty parameter set, and the hash must match the body.
SignalWire signs a JSON body differently: ``hex(HMAC-SHA1(key, url + raw body))``
(:func:`validate_hex`, as its own SDK checks it).

A WebSocket upgrade to a Media Stream is signed over the ``wss://`` URL written in
``<Stream url>`` with no parameters; Twilio's own docs suggest trying a trailing ``/`` when
that fails, so :func:`validate` can accept either (``either_slash=True``).

Every comparison is constant-time (``hmac.compare_digest``), and every candidate URL is
checked even after a match, so timing does not tell which form matched.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterable, Mapping
from urllib.parse import parse_qs, urlsplit

#: Default ports per scheme; Twilio may sign with or without them.
DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}

Params = Mapping[str, str] | Iterable[tuple[str, str]]


def signing_string(url: str, params: Params | None = None) -> str:
    """``url`` plus the parameters sorted by name (values of a repeated name sorted too).

    Repeated identical name/value pairs count once, as in Twilio's helper library.
    """
    pairs = params.items() if isinstance(params, Mapping) else (params or ())
    grouped: dict[str, set[str]] = {}
    for name, value in pairs:
        grouped.setdefault(name, set()).add(str(value))
    return url + "".join(name + value for name in sorted(grouped) for value in sorted(grouped[name]))


def compute_signature(auth_token: str, url: str, params: Params | None = None) -> str:
    """The signature: base64 HMAC-SHA1 over the URL plus the sorted POST parameters."""
    data = signing_string(url, params)
    digest = hmac.new(auth_token.encode("utf-8"), data.encode("utf-8"), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def body_sha256(body: bytes) -> str:
    """The ``bodySHA256`` query parameter Twilio adds for a JSON body: hex SHA-256."""
    return hashlib.sha256(body).hexdigest()


def port_variants(url: str) -> list[str]:
    """``url`` without its port, and with its port (the scheme's default if it had none)."""
    parts = urlsplit(url)
    userinfo, _, hostport = parts.netloc.rpartition("@")
    prefix = userinfo + "@" if userinfo else ""
    host = hostport
    port: str | None = None
    if hostport.startswith("["):  # [IPv6] or [IPv6]:port
        end = hostport.find("]")
        if end != -1:
            host, rest = hostport[: end + 1], hostport[end + 1 :]
            port = rest[1:] if rest.startswith(":") else None
    elif ":" in hostport:
        host, _, port = hostport.rpartition(":")
    if not port:
        default = DEFAULT_PORTS.get(parts.scheme.lower())
        port = str(default) if default is not None else None
    without = parts._replace(netloc=prefix + host).geturl()
    if port is None:
        return [without]
    return [without, parts._replace(netloc=f"{prefix}{host}:{port}").geturl()]


def slash_variants(url: str) -> list[str]:
    """``url`` with and without a trailing ``/`` on its path."""
    parts = urlsplit(url)
    path = parts.path.rstrip("/")
    return [parts._replace(path=path).geturl(), parts._replace(path=path + "/").geturl()]


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode("utf-8", "surrogatepass"), b.encode("utf-8", "surrogatepass"))


def validate(
    auth_token: str,
    url: str,
    params: Params | None,
    signature: str | None,
    *,
    body: bytes | None = None,
    either_slash: bool = False,
) -> bool:
    """True if ``signature`` is the provider's for this request, keyed by ``auth_token``.

    ``params``: the POST form parameters (a mapping or name/value pairs, repeats allowed).
    ``body``: the raw body of a JSON request instead; then ``url`` must carry ``bodySHA256``
    matching it, and the URL is checked with no parameters.
    ``either_slash``: also accept the URL signed with or without a trailing ``/`` (streams).
    """
    if not auth_token or not signature:
        return False
    body_ok = True
    if body is not None:
        claimed = parse_qs(urlsplit(url).query, keep_blank_values=True).get("bodySHA256") or []
        body_ok = bool(claimed) and _same(body_sha256(body), claimed[0])
        params = None
    urls = slash_variants(url) if either_slash else [url]
    candidates = [variant for u in urls for variant in port_variants(u)]
    matched = False
    for candidate in candidates:  # all of them, always: no early exit
        matched |= _same(compute_signature(auth_token, candidate, params), signature)
    return body_ok and matched


def compute_hex(key: str, url: str, body: bytes) -> str:
    """SignalWire's signature of a JSON body: lowercase hex HMAC-SHA1 over ``url + raw body``."""
    return hmac.new(key.encode("utf-8"), url.encode("utf-8") + body, hashlib.sha1).hexdigest()


def validate_hex(key: str, url: str, body: bytes, signature: str | None) -> bool:
    """True if ``signature`` is :func:`compute_hex` of this body, with or without the default port."""
    if not key or not signature:
        return False
    matched = False
    for candidate in port_variants(url):  # all of them, always: no early exit
        matched |= _same(compute_hex(key, candidate, body), signature.strip())
    return matched
