"""Validation of the push message headers (PROTOCOL.md 4.7), pure.

POST /wpush checks `TTL`, `Topic` and the encryption headers before it
touches storage (4.6 steps 6-8), and forwards a cleaned copy of the
encryption headers to the browser (4.7.4). Everything here is a function of
header values alone, so it is tested without a web server.

Decisions where PROTOCOL.md is silent:

* Parameter names (4.7.3 grammar) are compared case-insensitively: they are
  returned lowercased. When a name occurs twice the first item wins.
* Surrounding double quotes of a value are all stripped (`"x"`, `"x` and
  `x"` all give `x`).
* A header is "present" when it is sent at all, even with an empty value
  (an empty `Encryption` therefore has no `salt`).
* `TTL: -0` is 0, not negative.
"""
import re

from connnode.endpoint.errors import EndpointError

MAX_TOPIC_LENGTH = 32

_TTL_RE = re.compile(r"(-?)([0-9]+)")
_TOPIC_RE = re.compile(r"[A-Za-z0-9_-]{1,%d}" % MAX_TOPIC_LENGTH)
_B64URL_VALUE_RE = re.compile(r"[A-Za-z0-9_-]+=*")
_ITEM_SPLIT_RE = re.compile(r"[,;]")
# A run of `=` after a base64url character, followed by `;`, `,` or the end.
_PADDING_RE = re.compile(r"(?<=[A-Za-z0-9_-])=+(?=[;,]|\Z)")
_SPACES = " \t"

ENCODINGS = ("aes128gcm", "aesgcm", "aesgcm128")


def _trim(value):
    return value.strip(_SPACES)


def parse_ttl(value, max_ttl):
    """The effective TTL in seconds of a `TTL` header value (4.7.1).

    Raises EndpointError 400/111 (missing), 400/112 (not an integer) or
    400/114 (negative). Values above `max_ttl` become `max_ttl`.
    """
    if value is None:
        raise EndpointError(400, 111)
    match = _TTL_RE.fullmatch(_trim(value))
    if match is None:
        raise EndpointError(400, 112)
    sign, digits = match.groups()
    digits = digits.lstrip("0") or "0"
    if sign and digits != "0":
        raise EndpointError(400, 114)
    # Never convert a huge digit string: more digits than max_ttl means larger.
    if len(digits) > len(str(max_ttl)):
        return max_ttl
    return min(int(digits), max_ttl)


def parse_topic(value):
    """The `Topic` header value (4.7.2), or None when absent. 400/113 if invalid."""
    if value is None:
        return None
    value = _trim(value)
    if not _TOPIC_RE.fullmatch(value):
        raise EndpointError(400, 113)
    return value


def parse_params(value):
    """The `name=value` parameters of a header (4.7.3 grammar) as a dict.

    Items are separated by `,` or `;`; empty items are skipped; names are
    trimmed and lowercased; values are trimmed and stripped of surrounding
    double quotes. The first occurrence of a name wins. An item without `=`
    raises ValueError.
    """
    params = {}
    for item in _ITEM_SPLIT_RE.split(value):
        item = _trim(item)
        if not item:
            continue
        name, sep, val = item.partition("=")
        if not sep:
            raise ValueError("header item without '=': %r" % item)
        name = _trim(name).lower()
        if name not in params:
            params[name] = _trim(val).strip('"')
    return params


def clean_header(value):
    """A header value as forwarded to the browser (4.7.4).

    Removes every `"`, then every run of `=` that follows a base64url
    character and is followed by `;`, `,` or the end of the value.
    """
    return _PADDING_RE.sub("", value.replace('"', ""))


def _lowercase_headers(headers):
    """Lowercase-name view of `headers` (werkzeug Headers or a plain dict).

    Values are trimmed; when a name is repeated the first value wins, as
    werkzeug's `Headers.get` does.
    """
    lowered = {}
    for name, value in headers.items():
        lowered.setdefault(name.lower(), _trim(value))
    return lowered


def _params(value):
    try:
        return parse_params(value)
    except ValueError as exc:
        raise EndpointError(400, 110) from exc


def _require_b64url(params, name):
    value = params.get(name)
    if value is None or not _B64URL_VALUE_RE.fullmatch(value):
        raise EndpointError(400, 110)


def _forbid(params, name):
    if name in params:
        raise EndpointError(400, 110)


def message_headers(headers, body):
    """The `headers` object forwarded with a message (4.7.3, 4.7.4).

    Returns None for an empty body (nothing validated, everything dropped).
    Otherwise validates the encryption headers for the Content-Encoding and
    returns a dict with `encoding` and whichever of `encryption`,
    `crypto_key`, `encryption_key` were sent. Any violation raises
    EndpointError 400/110.
    """
    if not body:
        return None
    hdrs = _lowercase_headers(headers)
    encoding = hdrs.get("content-encoding", "").lower()
    if encoding not in ENCODINGS:
        raise EndpointError(400, 110)
    encryption = hdrs.get("encryption")
    crypto_key = hdrs.get("crypto-key")
    encryption_key = hdrs.get("encryption-key")

    enc_params = _params(encryption) if encryption is not None else None
    ck_params = _params(crypto_key) if crypto_key is not None else None

    if encoding == "aes128gcm":
        if enc_params is not None:
            _forbid(enc_params, "salt")
        if ck_params is not None:
            _forbid(ck_params, "dh")
    else:
        if enc_params is None:
            raise EndpointError(400, 110)
        _require_b64url(enc_params, "salt")
        if encoding == "aesgcm":
            if encryption_key is not None:
                raise EndpointError(400, 110)
            if ck_params is not None:
                _require_b64url(ck_params, "dh")
        else:  # aesgcm128
            if encryption_key is None:
                raise EndpointError(400, 110)
            _require_b64url(_params(encryption_key), "dh")
            if ck_params is not None:
                _forbid(ck_params, "dh")

    forwarded = {"encoding": encoding}
    if encryption is not None:
        forwarded["encryption"] = clean_header(encryption)
    if crypto_key is not None:
        forwarded["crypto_key"] = clean_header(crypto_key)
    if encryption_key is not None:
        forwarded["encryption_key"] = encryption_key
    return forwarded
