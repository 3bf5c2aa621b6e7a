"""Unit tests for connnode.crypto (PROTOCOL.md 4.4, 4.5, 6.1)."""
import base64
import hashlib
import hmac
import logging
import os
import uuid

import pytest
from cryptography.fernet import Fernet

from connnode.crypto import InvalidTokenError, MessageId, TokenCrypto, hash_uaid

K1 = Fernet.generate_key().decode("ascii")
K2 = Fernet.generate_key().decode("ascii")
K3 = Fernet.generate_key().decode("ascii")

UAID = "0252c2d1f973485eb519a639b7d01b80"
CHID = "92d747d3-74f3-4bb4-b5a7-2113dd8f7071"
CHID_HEX = "92d747d374f34bb4b5a72113dd8f7071"
P256_KEY = b"\x04" + bytes(range(64))  # 65 raw bytes, shape of a registered key


def fernet_decrypt(key, token):
    return Fernet(key).decrypt((token + "=" * (-len(token) % 4)).encode("ascii"))


def fernet_encrypt(key, text):
    data = text if isinstance(text, bytes) else text.encode("utf-8")
    return Fernet(key).encrypt(data).decode("ascii")


@pytest.fixture
def crypto():
    return TokenCrypto([K1])


# -- H(uaid) (6.1) ---------------------------------------------------------------

def test_hash_uaid_without_key_is_identity():
    assert hash_uaid("", UAID) == UAID
    assert hash_uaid(None, UAID) == UAID


def test_hash_uaid_with_key_is_hmac_sha256_hex():
    expected = hmac.new(b"s3cret", UAID.encode("ascii"), hashlib.sha256).hexdigest()
    assert hash_uaid("s3cret", UAID) == expected
    assert len(expected) == 64 and expected == expected.lower()


def test_hash_uaid_key_is_utf8():
    expected = hmac.new("clé".encode("utf-8"), UAID.encode("ascii"), hashlib.sha256).hexdigest()
    assert hash_uaid("clé", UAID) == expected


def test_hash_uaid_depends_on_key_and_uaid():
    other = uuid.uuid4().hex
    assert hash_uaid("a", UAID) != hash_uaid("b", UAID)
    assert hash_uaid("a", UAID) != hash_uaid("a", other)
    assert hash_uaid("a", UAID) == hash_uaid("a", UAID)


# -- endpoint tokens (4.4) -----------------------------------------------------------

def test_v1_round_trip(crypto):
    token = crypto.endpoint_token(UAID, CHID)
    assert crypto.parse_endpoint_token(token, key_bound=False) == (UAID, CHID, None)


def test_v1_plaintext_layout(crypto):
    token = crypto.endpoint_token(UAID, CHID)
    plain = fernet_decrypt(K1, token)
    assert plain == uuid.UUID(UAID).bytes + uuid.UUID(CHID).bytes
    assert len(plain) == 32


def test_v2_round_trip_and_digest(crypto):
    token = crypto.endpoint_token(UAID, CHID, key_raw=P256_KEY)
    uaid, chid, digest = crypto.parse_endpoint_token(token, key_bound=True)
    assert (uaid, chid) == (UAID, CHID)
    assert digest == hashlib.sha256(P256_KEY).digest()
    assert len(digest) == 32


def test_v2_plaintext_layout(crypto):
    token = crypto.endpoint_token(UAID, CHID, key_raw=P256_KEY)
    plain = fernet_decrypt(K1, token)
    assert len(plain) == 64
    assert plain[32:] == hashlib.sha256(P256_KEY).digest()


def test_round_trip_normalises_uuid_forms(crypto):
    token = crypto.endpoint_token(str(uuid.UUID(UAID)), CHID_HEX.upper())
    assert crypto.parse_endpoint_token(token, key_bound=False) == (UAID, CHID, None)


@pytest.mark.parametrize("key_raw", [None, P256_KEY])
def test_token_has_no_padding(crypto, key_raw):
    for _ in range(5):
        token = crypto.endpoint_token(uuid.uuid4().hex, str(uuid.uuid4()), key_raw=key_raw)
        assert "=" not in token
        # URL-safe base64 alphabet only, usable as a path segment
        assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def test_v2_token_really_had_padding_stripped(crypto):
    # 64 plain bytes give a Fernet token of 137 bytes: base64 needs one '='
    token = crypto.endpoint_token(UAID, CHID, key_raw=P256_KEY)
    assert len(token) % 4 == 3


def test_padded_token_also_parses(crypto):
    token = crypto.endpoint_token(UAID, CHID, key_raw=P256_KEY)
    padded = token + "=" * (-len(token) % 4)
    assert crypto.parse_endpoint_token(padded, key_bound=True)[:2] == (UAID, CHID)


def test_v1_token_as_v2_rejected(crypto):
    token = crypto.endpoint_token(UAID, CHID)
    with pytest.raises(InvalidTokenError):
        crypto.parse_endpoint_token(token, key_bound=True)


def test_v2_token_as_v1_rejected(crypto):
    token = crypto.endpoint_token(UAID, CHID, key_raw=P256_KEY)
    with pytest.raises(InvalidTokenError):
        crypto.parse_endpoint_token(token, key_bound=False)


@pytest.mark.parametrize("length", [0, 16, 31, 33, 48, 63, 65])
def test_wrong_plaintext_length_rejected(length):
    token = fernet_encrypt(K1, os.urandom(length)).rstrip("=")
    crypto = TokenCrypto([K1])
    for key_bound in (False, True):
        with pytest.raises(InvalidTokenError):
            crypto.parse_endpoint_token(token, key_bound=key_bound)


def test_tampered_token_rejected(crypto):
    token = crypto.endpoint_token(UAID, CHID)
    middle = len(token) // 2
    flipped = "A" if token[middle] != "A" else "B"
    tampered = token[:middle] + flipped + token[middle + 1:]
    with pytest.raises(InvalidTokenError):
        crypto.parse_endpoint_token(tampered, key_bound=False)


def test_truncated_token_rejected(crypto):
    token = crypto.endpoint_token(UAID, CHID)
    for cut in (1, 2, 3, 4, 10):
        with pytest.raises(InvalidTokenError):
            crypto.parse_endpoint_token(token[:-cut], key_bound=False)


def test_foreign_key_rejected():
    token = TokenCrypto([K2]).endpoint_token(UAID, CHID)
    with pytest.raises(InvalidTokenError):
        TokenCrypto([K1]).parse_endpoint_token(token, key_bound=False)


@pytest.mark.parametrize("garbage", [
    "", "abc", "not a token", "gAAAAA", "é" * 40, "x" * 2000, None, 12345, b"gAAAA",
])
def test_garbage_token_rejected(crypto, garbage):
    with pytest.raises(InvalidTokenError):
        crypto.parse_endpoint_token(garbage, key_bound=False)


def test_invalid_token_error_is_value_error():
    assert issubclass(InvalidTokenError, ValueError)


# -- key rotation ---------------------------------------------------------------------

def test_old_token_parses_after_rotation():
    token = TokenCrypto([K1]).endpoint_token(UAID, CHID)
    assert TokenCrypto([K2, K1]).parse_endpoint_token(token, key_bound=False) == (UAID, CHID, None)


def test_new_tokens_use_first_key():
    rotated = TokenCrypto([K2, K1])
    token = rotated.endpoint_token(UAID, CHID)
    with pytest.raises(InvalidTokenError):
        TokenCrypto([K1]).parse_endpoint_token(token, key_bound=False)
    assert TokenCrypto([K2]).parse_endpoint_token(token, key_bound=False)[:2] == (UAID, CHID)
    assert fernet_decrypt(K2, token) == uuid.UUID(UAID).bytes + uuid.UUID(CHID).bytes


def test_new_message_ids_use_first_key():
    rotated = TokenCrypto([K2, K1])
    message_id = rotated.message_id(UAID, CHID, topic="t")
    with pytest.raises(InvalidTokenError):
        TokenCrypto([K1]).parse_message_id(message_id)
    old_id = TokenCrypto([K1]).message_id(UAID, CHID, topic="t")
    assert rotated.parse_message_id(old_id).topic == "t"


def test_every_listed_key_decrypts():
    crypto = TokenCrypto([K3, K2, K1])
    for key in (K1, K2, K3):
        token = TokenCrypto([key]).endpoint_token(UAID, CHID)
        assert crypto.parse_endpoint_token(token, key_bound=False)[0] == UAID


def test_no_keys_generates_a_process_key(caplog):
    with caplog.at_level(logging.WARNING, logger="connnode.crypto"):
        crypto = TokenCrypto([])
    assert any("crypto_key" in record.getMessage() for record in caplog.records)
    token = crypto.endpoint_token(UAID, CHID)
    assert crypto.parse_endpoint_token(token, key_bound=False)[:2] == (UAID, CHID)
    with pytest.raises(InvalidTokenError):
        TokenCrypto([K1]).parse_endpoint_token(token, key_bound=False)


# -- message ids (4.5) ----------------------------------------------------------------

def test_topic_message_id_round_trip(crypto):
    message_id = crypto.message_id(UAID, CHID, topic="news_1-A")
    parsed = crypto.parse_message_id(message_id)
    assert isinstance(parsed, MessageId)
    assert (parsed.kind, parsed.uaid, parsed.chid) == ("01", UAID, CHID)
    assert parsed.topic == "news_1-A"
    assert parsed.sortkey_timestamp is None


def test_timestamp_message_id_round_trip(crypto):
    message_id = crypto.message_id(UAID, CHID, sortkey_timestamp=1718000000123456)
    parsed = crypto.parse_message_id(message_id)
    assert (parsed.kind, parsed.uaid, parsed.chid) == ("02", UAID, CHID)
    assert parsed.topic is None
    assert parsed.sortkey_timestamp == 1718000000123456


def test_topic_message_id_plaintext(crypto):
    message_id = crypto.message_id(UAID, CHID, topic="t1")
    assert fernet_decrypt(K1, message_id) == f"01:{UAID}:{CHID_HEX}:t1".encode("ascii")


def test_timestamp_message_id_plaintext(crypto):
    message_id = crypto.message_id(UAID, CHID, sortkey_timestamp=1718000000123456)
    assert fernet_decrypt(K1, message_id) == f"02:{UAID}:{CHID_HEX}:1718000000123456".encode("ascii")


def test_message_id_keeps_fernet_padding(crypto):
    message_id = crypto.message_id(UAID, CHID, topic="t")
    assert len(message_id) % 4 == 0
    base64.urlsafe_b64decode(message_id)  # exactly as Fernet outputs it


def test_message_id_without_padding_parses(crypto):
    for topic in ("a", "ab", "abc", "abcd"):
        message_id = crypto.message_id(UAID, CHID, topic=topic)
        assert crypto.parse_message_id(message_id.rstrip("=")).topic == topic


def test_message_ids_differ_for_same_text(crypto):
    ids = {crypto.message_id(UAID, CHID, topic="t") for _ in range(10)}
    assert len(ids) == 10
    ids = {crypto.message_id(UAID, CHID, sortkey_timestamp=1) for _ in range(10)}
    assert len(ids) == 10


def test_legacy_message_id(crypto):
    message_id = fernet_encrypt(K1, f"m:{UAID}:{CHID_HEX}")
    parsed = crypto.parse_message_id(message_id)
    assert (parsed.kind, parsed.uaid, parsed.chid) == ("m", UAID, CHID)
    assert parsed.topic is None and parsed.sortkey_timestamp is None
    assert parsed.sort_key is None


def test_legacy_message_id_with_dashed_uuids(crypto):
    message_id = fernet_encrypt(K1, f"m:{uuid.UUID(UAID)}:{CHID}")
    parsed = crypto.parse_message_id(message_id)
    assert (parsed.uaid, parsed.chid) == (UAID, CHID)


def test_message_id_from_second_key(crypto):
    message_id = fernet_encrypt(K2, f"01:{UAID}:{CHID_HEX}:t")
    with pytest.raises(InvalidTokenError):
        crypto.parse_message_id(message_id)
    assert TokenCrypto([K1, K2]).parse_message_id(message_id).topic == "t"


@pytest.mark.parametrize("text", [
    f"01:{UAID}:{CHID_HEX}",                       # 01 with 3 parts
    f"01:{UAID}:{CHID_HEX}:t:extra",               # 01 with 5 parts
    f"02:{UAID}:{CHID_HEX}",                       # 02 with 3 parts
    f"02:{UAID}:{CHID_HEX}:12ab",                  # non-digit timestamp
    f"02:{UAID}:{CHID_HEX}:-5",                    # signed timestamp
    f"02:{UAID}:{CHID_HEX}:",                      # empty timestamp
    f"02:{UAID}:{CHID_HEX}:1:2",                   # 02 with 5 parts
    f"m:{UAID}:{CHID_HEX}:x",                      # legacy with 4 parts
    f"m:{UAID}",                                   # legacy with 2 parts
    f"03:{UAID}:{CHID_HEX}:t",                     # unknown prefix
    f"1:{UAID}:{CHID_HEX}:t",                      # prefix not zero-padded
    f"01:not-a-uuid:{CHID_HEX}:t",                 # bad uaid
    f"02:{UAID}:zz{CHID_HEX[2:]}:1",               # bad chid
    "",                                            # empty text
    "hello",                                       # no colon at all
])
def test_malformed_message_id_rejected(crypto, text):
    with pytest.raises(InvalidTokenError):
        crypto.parse_message_id(fernet_encrypt(K1, text))


def test_non_ascii_message_id_rejected(crypto):
    message_id = fernet_encrypt(K1, f"01:{UAID}:{CHID_HEX}:tøpic".encode("utf-8"))
    with pytest.raises(InvalidTokenError):
        crypto.parse_message_id(message_id)


def test_binary_message_id_rejected(crypto):
    with pytest.raises(InvalidTokenError):
        crypto.parse_message_id(fernet_encrypt(K1, b"\xff\xfe\x00\x01"))


def test_unicode_digit_timestamp_rejected(crypto):
    # '²'.isdigit() is True; the ASCII rule must still reject it
    message_id = fernet_encrypt(K1, f"02:{UAID}:{CHID_HEX}:12²".encode("utf-8"))
    with pytest.raises(InvalidTokenError):
        crypto.parse_message_id(message_id)


def test_endpoint_token_is_not_a_message_id(crypto):
    with pytest.raises(InvalidTokenError):
        crypto.parse_message_id(crypto.endpoint_token(UAID, CHID))


def test_message_id_is_not_an_endpoint_token(crypto):
    message_id = crypto.message_id(UAID, CHID, topic="t")
    for key_bound in (False, True):
        with pytest.raises(InvalidTokenError):
            crypto.parse_endpoint_token(message_id, key_bound=key_bound)


@pytest.mark.parametrize("garbage", ["", "nope", "x" * 2000, None, 7, "ü" * 100])
def test_garbage_message_id_rejected(crypto, garbage):
    with pytest.raises(InvalidTokenError):
        crypto.parse_message_id(garbage)


# -- MessageId.sort_key -----------------------------------------------------------------

def test_sort_key_topic(crypto):
    parsed = crypto.parse_message_id(crypto.message_id(UAID, CHID, topic="news"))
    assert parsed.sort_key == f"01:{CHID}:news"


def test_sort_key_timestamp(crypto):
    parsed = crypto.parse_message_id(crypto.message_id(UAID, CHID, sortkey_timestamp=1718000000123456))
    assert parsed.sort_key == f"02:1718000000123456:{CHID}"


def test_sort_key_direct():
    assert MessageId("01", UAID, CHID, "t", None).sort_key == f"01:{CHID}:t"
    assert MessageId("02", UAID, CHID, None, 5).sort_key == f"02:5:{CHID}"
    assert MessageId("m", UAID, CHID, None, None).sort_key is None
