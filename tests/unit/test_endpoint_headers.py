"""Unit tests of connnode.endpoint.headers and errors (PROTOCOL.md 4.3, 4.7)."""
import pytest

from connnode.endpoint.errors import MORE_INFO, EndpointError, error_response
from connnode.endpoint.headers import (
    clean_header,
    message_headers,
    parse_params,
    parse_topic,
    parse_ttl,
)

MAX_TTL = 2592000
BODY = b"\xc3\x28\xa0\xa1\xe2\x28\xa1"
SALT = "XZwpw6o37R-6qoZjw6KwAw"
DH = "BNoRDbb84JGm8g5Z5CFxurSqsXWJ11ItfXEWYVLE85Y7CYkDjXsIEc4aqxYaQ1G8BptXCkO" \
     "GdYbKpuJkMGD7qWU"


def errno_of(excinfo):
    return excinfo.value.status, excinfo.value.errno


# --- errors (4.3) ---------------------------------------------------------

@pytest.mark.parametrize("status,extra", [
    (401, {"WWW-Authenticate": "vapid"}),
    (410, {"Cache-Control": "max-age=86400"}),
    (503, {"Retry-After": "120"}),
    (400, {}),
    (404, {}),
    (413, {}),
    (500, {}),
])
def test_error_response_headers(status, extra):
    got_status, headers, body = EndpointError(status, 999).response()
    assert got_status == status
    assert headers == dict({"Content-Type": "application/json"}, **extra)
    assert body["code"] == status


def test_error_response_body():
    status, _, body = EndpointError(410, 106, "No such subscription").response()
    assert status == 410
    assert body == {
        "code": 410, "errno": 106, "error": "Gone",
        "message": "No such subscription", "more_info": MORE_INFO,
    }
    assert MORE_INFO == "http://autopush.readthedocs.io/en/latest/http.html#error-codes"


def test_error_response_null_errno_and_default_message():
    _, _, body = error_response(405)
    assert body["errno"] is None
    assert body["error"] == "Method Not Allowed"
    assert body["message"]
    err = EndpointError(413, 104)
    assert err.message and err.response()[2]["error"] == "Request Entity Too Large"
    assert "413" in str(err)


# --- TTL (4.7.1) -------------------------------------------------------------

def test_ttl_missing():
    with pytest.raises(EndpointError) as exc:
        parse_ttl(None, MAX_TTL)
    assert errno_of(exc) == (400, 111)


@pytest.mark.parametrize("value", ["", " ", "1.5", "abc", "+5", "1e3", "0x10",
                                   "--1", "1 2", "\u0661", "5s", "-"])
def test_ttl_not_integer(value):
    with pytest.raises(EndpointError) as exc:
        parse_ttl(value, MAX_TTL)
    assert errno_of(exc) == (400, 112)


@pytest.mark.parametrize("value", ["-1", "-60", " -1 ", "-" + "9" * 10000])
def test_ttl_negative(value):
    with pytest.raises(EndpointError) as exc:
        parse_ttl(value, MAX_TTL)
    assert errno_of(exc) == (400, 114)


@pytest.mark.parametrize("value,expected", [
    ("0", 0), ("-0", 0), ("60", 60), (" 60 ", 60), ("\t60", 60),
    ("007", 7), ("2592000", MAX_TTL), ("2592001", MAX_TTL),
    ("99999999999", MAX_TTL), ("0000000000000000000000042", 42),
    ("9" * 100000, MAX_TTL),
])
def test_ttl_valid(value, expected):
    assert parse_ttl(value, MAX_TTL) == expected


def test_ttl_small_max():
    assert parse_ttl("100", 10) == 10
    assert parse_ttl("10", 10) == 10
    assert parse_ttl("9", 10) == 9


# --- Topic (4.7.2) -----------------------------------------------------------

@pytest.mark.parametrize("value", ["a", "Z", "abc-DEF_123", "x" * 32, " t "])
def test_topic_valid(value):
    assert parse_topic(value) == value.strip()


def test_topic_absent():
    assert parse_topic(None) is None


@pytest.mark.parametrize("value", ["", "  ", "x" * 33, "a b", "a.b", "a=", "a/b",
                                   "caf\u00e9", "a+b"])
def test_topic_invalid(value):
    with pytest.raises(EndpointError) as exc:
        parse_topic(value)
    assert errno_of(exc) == (400, 113)


# --- parameter grammar and cleaning ----------------------------------------------

def test_parse_params_separators_and_trimming():
    assert parse_params('keyid="p256dh"; dh=abc,salt = "xyz==" ;;, ') == {
        "keyid": "p256dh", "dh": "abc", "salt": "xyz==",
    }


def test_parse_params_lowercases_names_first_wins():
    assert parse_params("DH=a;Dh=b;P256ECDSA=k") == {"dh": "a", "p256ecdsa": "k"}


def test_parse_params_value_keeps_inner_equals():
    assert parse_params("salt=ab==") == {"salt": "ab=="}
    assert parse_params("x=a=b") == {"x": "a=b"}


def test_parse_params_empty():
    assert parse_params("") == {}
    assert parse_params(" ; , ") == {}


@pytest.mark.parametrize("value", ["salt", "dh=a;junk", "a=1,b"])
def test_parse_params_item_without_equals(value):
    with pytest.raises(ValueError):
        parse_params(value)


@pytest.mark.parametrize("raw,cleaned", [
    ('keyid="http://example.org/bob/keys/123";salt="XZwpw6o37R-6qoZjw6KwAw=="',
     "keyid=http://example.org/bob/keys/123;salt=XZwpw6o37R-6qoZjw6KwAw"),
    ('keyid="a1"; dh="JcqK-OLkJZlJ3sJJWstJCA"',
     "keyid=a1; dh=JcqK-OLkJZlJ3sJJWstJCA"),
    ("dh=abc=,p256ecdsa=def==", "dh=abc,p256ecdsa=def"),
    ("salt=abc==;rs=4096", "salt=abc;rs=4096"),
    ("salt=abc== ;x=y", "salt=abc== ;x=y"),  # `=` run not followed by ; , or end
    ("a==b", "a==b"),
    ("", ""),
])
def test_clean_header(raw, cleaned):
    assert clean_header(raw) == cleaned


# --- crypto headers (4.7.3, 4.7.4) ---------------------------------------------

def check_110(headers, body=BODY):
    with pytest.raises(EndpointError) as exc:
        message_headers(headers, body)
    assert errno_of(exc) == (400, 110)


def test_empty_body_drops_headers_without_validation():
    assert message_headers({}, b"") is None
    assert message_headers({"Content-Encoding": "bogus", "Encryption": "junk",
                            "Crypto-Key": "junk", "Encryption-Key": "x"}, b"") is None


@pytest.mark.parametrize("headers", [
    {},
    {"Content-Encoding": ""},
    {"Content-Encoding": "gzip"},
    {"Content-Encoding": "aes256gcm"},
    {"Encryption": "salt=" + SALT},
])
def test_missing_or_unknown_encoding(headers):
    check_110(headers)


def test_aes128gcm_minimal():
    assert message_headers({"Content-Encoding": "aes128gcm"}, BODY) == {
        "encoding": "aes128gcm"}


def test_encoding_case_insensitive_and_trimmed():
    assert message_headers({"content-encoding": " AES128GCM "}, BODY) == {
        "encoding": "aes128gcm"}


def test_aes128gcm_allows_other_params_and_forwards_cleaned():
    got = message_headers({
        "Content-Encoding": "aes128gcm",
        "Encryption": 'keyid="a1";rs=4096',
        "Crypto-Key": 'keyid="a1";p256ecdsa="' + DH + '=="',
        "Encryption-Key": "keyid=x; dh=abc==",
    }, BODY)
    assert got == {
        "encoding": "aes128gcm",
        "encryption": "keyid=a1;rs=4096",
        "crypto_key": "keyid=a1;p256ecdsa=" + DH,
        "encryption_key": "keyid=x; dh=abc==",
    }


@pytest.mark.parametrize("headers", [
    {"Encryption": "salt=" + SALT},
    {"Encryption": "keyid=a; SALT=" + SALT},
    {"Crypto-Key": "dh=" + DH},
    {"Crypto-Key": "p256ecdsa=abc; dh=" + DH},
    {"Encryption": "garbage"},
    {"Crypto-Key": "p256ecdsa=abc;garbage"},
])
def test_aes128gcm_violations(headers):
    check_110(dict(headers, **{"Content-Encoding": "aes128gcm"}))


def test_aesgcm_valid():
    got = message_headers({
        "Content-Encoding": "aesgcm",
        "Encryption": 'keyid="http://example.org/bob/keys/123";salt="%s=="' % SALT,
        "Crypto-Key": 'keyid="a1"; dh="%s"' % DH,
    }, BODY)
    assert got == {
        "encoding": "aesgcm",
        "encryption": "keyid=http://example.org/bob/keys/123;salt=" + SALT,
        "crypto_key": "keyid=a1; dh=" + DH,
    }


def test_aesgcm_crypto_key_optional():
    got = message_headers({"Content-Encoding": "aesgcm",
                           "Encryption": "salt=" + SALT}, BODY)
    assert got == {"encoding": "aesgcm", "encryption": "salt=" + SALT}


def test_aesgcm_crypto_key_with_vapid_key_and_dh():
    got = message_headers({"Content-Encoding": "aesgcm",
                           "Encryption": "salt=" + SALT,
                           "Crypto-Key": "dh=%s;p256ecdsa=%s" % (DH, DH)}, BODY)
    assert got["crypto_key"] == "dh=%s;p256ecdsa=%s" % (DH, DH)


@pytest.mark.parametrize("headers", [
    {},                                                    # Encryption required
    {"Encryption": ""},                                    # ... with a salt
    {"Encryption": "keyid=a"},
    {"Encryption": "salt="},
    {"Encryption": "salt=abc$"},
    {"Encryption": "salt=ab=c"},
    {"Encryption": "salt=a+b/"},                           # standard base64
    {"Encryption": "salt"},                                # unparseable
    {"Encryption": "salt=" + SALT, "Encryption-Key": "dh=" + DH},
    {"Encryption": "salt=" + SALT, "Encryption-Key": ""},
    {"Encryption": "salt=" + SALT, "Crypto-Key": "keyid=a"},  # no dh
    {"Encryption": "salt=" + SALT, "Crypto-Key": "p256ecdsa=" + DH},
    {"Encryption": "salt=" + SALT, "Crypto-Key": "dh=not!b64"},
    {"Encryption": "salt=" + SALT, "Crypto-Key": "dh"},
])
def test_aesgcm_violations(headers):
    check_110(dict(headers, **{"Content-Encoding": "aesgcm"}))


def test_aesgcm128_valid():
    got = message_headers({
        "Content-Encoding": "aesgcm128",
        "Encryption": "salt=%s==" % SALT,
        "Encryption-Key": 'keyid=p256dh; dh="%s"' % DH,
        "Crypto-Key": "p256ecdsa=%s" % DH,
    }, BODY)
    assert got == {
        "encoding": "aesgcm128",
        "encryption": "salt=" + SALT,
        "encryption_key": 'keyid=p256dh; dh="%s"' % DH,
        "crypto_key": "p256ecdsa=" + DH,
    }


def test_aesgcm128_without_crypto_key():
    got = message_headers({"Content-Encoding": "aesgcm128",
                           "Encryption": "salt=" + SALT,
                           "Encryption-Key": "dh=" + DH}, BODY)
    assert got == {"encoding": "aesgcm128", "encryption": "salt=" + SALT,
                   "encryption_key": "dh=" + DH}


@pytest.mark.parametrize("headers", [
    {"Encryption-Key": "dh=" + DH},                        # Encryption required
    {"Encryption": "keyid=a", "Encryption-Key": "dh=" + DH},
    {"Encryption": "salt=" + SALT},                        # Encryption-Key required
    {"Encryption": "salt=" + SALT, "Encryption-Key": "keyid=a"},
    {"Encryption": "salt=" + SALT, "Encryption-Key": "dh=a.b"},
    {"Encryption": "salt=" + SALT, "Encryption-Key": "dh"},
    {"Encryption": "salt=" + SALT, "Encryption-Key": "dh=" + DH,
     "Crypto-Key": "dh=" + DH},
    {"Encryption": "salt=" + SALT, "Encryption-Key": "dh=" + DH,
     "Crypto-Key": "junk"},
])
def test_aesgcm128_violations(headers):
    check_110(dict(headers, **{"Content-Encoding": "aesgcm128"}))


def test_plain_dict_names_are_case_insensitive():
    got = message_headers({"CONTENT-ENCODING": "aesgcm",
                           "encryption": "salt=" + SALT,
                           "cRyPtO-kEy": "dh=" + DH}, BODY)
    assert got == {"encoding": "aesgcm", "encryption": "salt=" + SALT,
                   "crypto_key": "dh=" + DH}


def test_werkzeug_headers():
    from werkzeug.datastructures import Headers

    headers = Headers([("Content-Encoding", "aesgcm"),
                       ("Encryption", "salt=" + SALT),
                       ("Crypto-Key", "dh=" + DH), ("TTL", "60")])
    got = message_headers(headers, BODY)
    assert got == {"encoding": "aesgcm", "encryption": "salt=" + SALT,
                   "crypto_key": "dh=" + DH}
