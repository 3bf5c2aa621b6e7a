"""Fernet subscription tokens and message ids (PROTOCOL.md 4.4, 4.5) and the
uaid storage key H(uaid) (6.1).

Both nodes must agree on these byte layouts exactly: the connection node mints
endpoint tokens at register, the endpoint node reads them on every POST; the
endpoint mints message ids, the connection node reads them back from acks.
``crypto_key`` is a list so keys rotate: the first encrypts, every key decrypts.
"""
import hashlib
import hmac
import logging
import uuid

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

log = logging.getLogger(__name__)

TOPIC_PREFIX = "01"
TIMESTAMP_PREFIX = "02"
LEGACY_PREFIX = "m"


class InvalidTokenError(ValueError):
    """A token or message id that does not decrypt or has the wrong shape."""


def hash_uaid(key_hash, uaid):
    """H(uaid): HMAC-SHA256 hex when ``key_hash`` is set, else the uaid itself."""
    if not key_hash:
        return uaid
    return hmac.new(key_hash.encode("utf-8"), uaid.encode("ascii"), hashlib.sha256).hexdigest()


def _pad(text):
    return text + "=" * (-len(text) % 4)


class TokenCrypto:
    """Mint and read endpoint tokens and message ids with a list of Fernet keys."""

    def __init__(self, keys):
        if not keys:
            log.warning("crypto_key is unset: generated a random key for this process only")
            keys = [Fernet.generate_key().decode("ascii")]
        self._fernet = MultiFernet([Fernet(key) for key in keys])

    # -- endpoint tokens (4.4) ---------------------------------------------
    def endpoint_token(self, uaid, chid, key_raw=None):
        plain = uuid.UUID(uaid).bytes + uuid.UUID(chid).bytes
        if key_raw is not None:
            plain += hashlib.sha256(key_raw).digest()
        return self._fernet.encrypt(plain).decode("ascii").rstrip("=")

    def parse_endpoint_token(self, token, key_bound):
        """(uaid hex, chid dashed, key digest or None); InvalidTokenError otherwise."""
        plain = self._decrypt(token)
        if len(plain) != (64 if key_bound else 32):
            raise InvalidTokenError("token has the wrong length")
        uaid = uuid.UUID(bytes=plain[:16]).hex
        chid = str(uuid.UUID(bytes=plain[16:32]))
        return uaid, chid, (plain[32:] if key_bound else None)

    # -- message ids (4.5) -------------------------------------------------
    def message_id(self, uaid, chid, topic=None, sortkey_timestamp=None):
        chid_hex = uuid.UUID(chid).hex
        if topic is not None:
            text = f"{TOPIC_PREFIX}:{uaid}:{chid_hex}:{topic}"
        else:
            text = f"{TIMESTAMP_PREFIX}:{uaid}:{chid_hex}:{sortkey_timestamp}"
        return self._fernet.encrypt(text.encode("ascii")).decode("ascii")

    def parse_message_id(self, message_id):
        """A MessageId; InvalidTokenError when it is not one of ours."""
        try:
            parts = self._decrypt(message_id).decode("ascii").split(":")
        except UnicodeDecodeError:
            raise InvalidTokenError("message id is not ASCII") from None
        kind = parts[0]
        try:
            if kind == LEGACY_PREFIX and len(parts) == 3:
                return MessageId(kind, uuid.UUID(parts[1]).hex, str(uuid.UUID(parts[2])), None, None)
            if kind == TOPIC_PREFIX and len(parts) == 4:
                return MessageId(kind, uuid.UUID(parts[1]).hex, str(uuid.UUID(parts[2])), parts[3], None)
            if kind == TIMESTAMP_PREFIX and len(parts) == 4 and parts[3].isdigit():
                return MessageId(kind, uuid.UUID(parts[1]).hex, str(uuid.UUID(parts[2])), None, int(parts[3]))
        except ValueError:
            pass
        raise InvalidTokenError("message id has the wrong shape")

    def _decrypt(self, token):
        if not isinstance(token, str) or not token or len(token) > 1024:
            raise InvalidTokenError("not a token")
        try:
            return self._fernet.decrypt(_pad(token).encode("ascii"))
        except (InvalidToken, UnicodeEncodeError, ValueError):
            raise InvalidTokenError("token does not decrypt") from None


class MessageId:
    """The decrypted content of a message id."""

    __slots__ = ("kind", "uaid", "chid", "topic", "sortkey_timestamp")

    def __init__(self, kind, uaid, chid, topic, sortkey_timestamp):
        self.kind = kind
        self.uaid = uaid
        self.chid = chid
        self.topic = topic
        self.sortkey_timestamp = sortkey_timestamp

    @property
    def sort_key(self):
        if self.kind == TOPIC_PREFIX:
            return f"01:{self.chid}:{self.topic}"
        if self.kind == TIMESTAMP_PREFIX:
            return f"02:{self.sortkey_timestamp}:{self.chid}"
        return None
