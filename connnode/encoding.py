"""Small, pure codecs shared by both nodes: base64url, P-256 public keys and
compact JSON.

PROTOCOL.md 1.2 says every decoder accepts base64url with or without padding;
keeping that rule in one place keeps the WebSocket and HTTP sides in step.
"""
import base64
import binascii
import re

import simplejson
from cryptography.hazmat.primitives.asymmetric import ec

_B64URL_RE = re.compile(r"^[A-Za-z0-9_-]*={0,2}$")

#: ``simplejson.dumps(obj, separators=(",", ":"))`` (same defaults) without
#: building a new encoder on every call, as ``dumps`` with arguments does.
compact_json = simplejson.JSONEncoder(separators=(",", ":")).encode


def b64url_decode(value):
    """Decode base64url text (padding optional). Raises ValueError when malformed."""
    if isinstance(value, bytes):
        value = value.decode("ascii")
    if not isinstance(value, str) or not _B64URL_RE.fullmatch(value):
        raise ValueError("not base64url")
    stripped = value.rstrip("=")
    try:
        return base64.urlsafe_b64decode(stripped + "=" * (-len(stripped) % 4))
    except (binascii.Error, ValueError) as exc:
        raise ValueError("not base64url") from exc


def b64url_encode(raw):
    """Unpadded base64url text of raw bytes."""
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def load_p256_public_key(raw):
    """The P-256 public key of 65 uncompressed SEC1 bytes, or None when invalid."""
    if len(raw) != 65 or raw[0] != 4:
        return None
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), raw)
    except ValueError:
        return None
