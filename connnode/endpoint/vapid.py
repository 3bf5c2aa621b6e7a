"""VAPID (RFC 8292) checks of POST /wpush, with `cryptography` only.

PROTOCOL.md 4.8: the `Authorization` header carries an ES256 JWT and the
application server's P-256 public key (in the header itself for the `vapid`
scheme, in `Crypto-Key: p256ecdsa=...` for the draft `webpush`/`bearer`
schemes). `parse_authorization` is 4.6 step 3 (header shape), `verify` is the
key check, the v2 key binding and step 4 (signature and claims). Every
failure is EndpointError 401/109. Inputs are bounded so that a hostile header
costs little.

Decisions where PROTOCOL.md is silent:

* `vapid` parameters: names are case-insensitive, empty items are skipped,
  a non-empty item without `=` or a repeated name fails.
* `aud` must be an http or https origin without user info; `exp` must be
  finite (`1e999`, `NaN` and `Infinity` fail).
* A signature of any length other than 64 bytes must be well-formed DER.
"""
import functools
import hashlib
import hmac
import json
import math
import re
from typing import NamedTuple
from urllib.parse import urlsplit

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from connnode.encoding import b64url_decode, load_p256_public_key
from connnode.endpoint.errors import EndpointError
from connnode.endpoint.headers import parse_params

MAX_JWT_LENGTH = 4096
MAX_KEY_LENGTH = 128  # base64url text of a 65-byte key is 87 characters
MAX_DER_SIGNATURE = 80  # a DER ECDSA P-256 signature is at most 72 bytes
EXP_LEEWAY = 60
EXP_MAX_AHEAD = 86400
#: Entries of each verification cache (public keys, verified tokens): a
#: token is at most MAX_JWT_LENGTH characters, so at most ~4 MB.
VERIFIED_CACHE = 1024

_DEFAULT_PORTS = {"http": 80, "https": 443}
_URL_CHARS_RE = re.compile(r"[\x21-\x7e]+")


class VapidCredentials(NamedTuple):
    scheme: str  # lowercased
    version: int  # 2 for `vapid`, 1 for `webpush`/`bearer`
    jwt: str
    public_key_raw: bytes


def _fail(reason):
    return EndpointError(401, 109, "Invalid VAPID authorization: " + reason)


def normalise_origin(url):
    """`scheme://host[:port]` of an http(s) origin (4.8 `aud` rules).

    Scheme and host are lowercased and the default port removed; the path
    must be empty or `/`. Query, fragment, user info, other schemes or odd
    characters raise ValueError.
    """
    if not isinstance(url, str) or not _URL_CHARS_RE.fullmatch(url):
        raise ValueError("not an origin")
    if "?" in url or "#" in url:
        raise ValueError("origin with query or fragment")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise ValueError("origin scheme must be http or https")
    if parts.path not in ("", "/") or "@" in parts.netloc:
        raise ValueError("not an origin")
    host = parts.hostname  # lowercased, IPv6 brackets removed
    if not host:
        raise ValueError("origin without host")
    port = parts.port  # raises ValueError when not a number in range
    if ":" in host:
        host = "[%s]" % host
    if port is None or port == _DEFAULT_PORTS[scheme]:
        return "%s://%s" % (scheme, host)
    return "%s://%s:%d" % (scheme, host, port)


def _vapid_params(rest):
    params = {}
    for item in rest.replace(" ", "").split(","):
        if not item:
            continue
        name, sep, value = item.partition("=")
        name = name.lower()
        if not sep or name in params:
            raise _fail("malformed vapid parameters")
        params[name] = value
    return params


def parse_authorization(authorization, crypto_key_header):
    """The credentials of an `Authorization` header (4.8 parsing).

    `crypto_key_header` is the `Crypto-Key` header value (or None); it is
    only used by the `webpush` and `bearer` schemes. Raises EndpointError
    401/109 when the header does not parse or the key is not base64url.
    """
    if not isinstance(authorization, str):
        raise _fail("missing Authorization")
    scheme, _, rest = authorization.strip(" \t").partition(" ")
    scheme = scheme.lower()
    rest = rest.strip(" \t")
    if not rest:
        raise _fail("no credentials")
    if scheme == "vapid":
        params = _vapid_params(rest)
        token, key = params.get("t"), params.get("k")
    elif scheme in ("webpush", "bearer"):
        token = rest
        if crypto_key_header is None:
            raise _fail("missing Crypto-Key")
        try:
            key = parse_params(crypto_key_header).get("p256ecdsa")
        except ValueError:
            raise _fail("unparseable Crypto-Key") from None
    else:
        raise _fail("unknown scheme")
    if not token or not key:
        raise _fail("missing token or key")
    if len(key) > MAX_KEY_LENGTH:
        raise _fail("key too long")
    try:
        key_raw = b64url_decode(key)
    except ValueError:
        raise _fail("key is not base64url") from None
    return VapidCredentials(scheme, 2 if scheme == "vapid" else 1, token, key_raw)


def _reject_constant(name):
    raise ValueError("non-finite JSON number: " + name)


def _json_object(raw):
    try:
        value = json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _der_signature(sig):
    if len(sig) == 64:
        return encode_dss_signature(
            int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")
        )
    if len(sig) > MAX_DER_SIGNATURE:
        return None
    try:
        r, s = decode_dss_signature(sig)
    except ValueError:
        return None
    return encode_dss_signature(r, s)


def _check_exp(exp, now):
    if isinstance(exp, bool) or not isinstance(exp, (int, float)):
        raise _fail("exp is not a number")
    if isinstance(exp, float) and not math.isfinite(exp):
        raise _fail("exp is not finite")
    exp = math.trunc(exp)
    if exp < now - EXP_LEEWAY:
        raise _fail("token expired")
    if exp > now + EXP_MAX_AHEAD:
        raise _fail("exp more than 24 h ahead")


def verify(credentials, expected_origin, now, key_digest=None):
    """Check the key, the v2 key binding and the JWT; return the claims dict.

    `expected_origin` is the EP's `endpoint_url` (normalised here; a bad one
    raises ValueError, a configuration error). `now` is seconds since the
    epoch. `key_digest` is the v2 token's last 32 bytes, or None for v1.
    Any failure of the credentials raises EndpointError 401/109.
    """
    expected = normalise_origin(expected_origin)

    if _public_key(credentials.public_key_raw) is None:
        raise _fail("public key is not a P-256 point")
    if key_digest is not None:
        digest = hashlib.sha256(credentials.public_key_raw).digest()
        if not hmac.compare_digest(digest, key_digest):
            raise _fail("key does not match the subscription")
    claims = dict(_signed_claims(credentials.jwt, credentials.public_key_raw))
    if "exp" not in claims:
        raise _fail("missing exp")
    _check_exp(claims["exp"], now)
    aud = claims.get("aud")
    try:
        aud_ok = isinstance(aud, str) and normalise_origin(aud) == expected
    except ValueError:
        aud_ok = False
    if not aud_ok:
        raise _fail("aud does not match")
    return claims


@functools.lru_cache(maxsize=VERIFIED_CACHE)
def _public_key(raw):
    """The key object of a P-256 point (None: not one); cached, as a
    publisher sends the same key with every message."""
    return load_p256_public_key(raw)


@functools.lru_cache(maxsize=VERIFIED_CACHE)
def _signed_claims(jwt, public_key_raw):
    """The claims object of ``jwt`` once its ES256 signature by the key
    checks out (EndpointError otherwise; failures are not cached).

    Cached: a publisher signs one JWT and sends it with every message until
    it nears ``exp`` (pywebpush and the web-push libraries do), so the ECDSA
    verification (~60-100 us) is paid once per token and key. Only
    successes are held, keyed by the exact token text and key bytes, so a
    hit is the same verification with the same result; ``exp`` and ``aud``
    are still checked on every message by ``verify``.
    """
    if not isinstance(jwt, str) or len(jwt) > MAX_JWT_LENGTH:
        raise _fail("JWT too long")
    segments = jwt.split(".")
    if len(segments) != 3 or not all(segments):
        raise _fail("JWT is not three segments")
    try:
        header_raw, payload_raw, sig = [b64url_decode(s) for s in segments]
    except ValueError:
        raise _fail("JWT segment is not base64url") from None

    header = _json_object(header_raw)
    if header is None or header.get("alg") != "ES256":
        raise _fail("JWT alg is not ES256")
    der = _der_signature(sig)
    if der is None:
        raise _fail("malformed signature")
    signing_input = ("%s.%s" % (segments[0], segments[1])).encode("ascii")
    try:
        _public_key(public_key_raw).verify(der, signing_input, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise _fail("bad signature") from None

    claims = _json_object(payload_raw)
    if claims is None:
        raise _fail("claims are not a JSON object")
    return claims
