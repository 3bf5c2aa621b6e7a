"""Unit tests of connnode.endpoint.vapid (PROTOCOL.md 4.8)."""
import hashlib
import json
import time

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from py_vapid import Vapid01, Vapid02

from connnode.encoding import b64url_encode
from connnode.endpoint.errors import EndpointError
from connnode.endpoint.vapid import (
    VapidCredentials,
    normalise_origin,
    parse_authorization,
    verify,
)

ORIGIN = "http://127.0.0.1:8082"
NOW = 1700000000.0
SUB = "mailto:admin@example.com"


def claims(**extra):
    base = {"aud": ORIGIN, "exp": int(NOW) + 3600, "sub": SUB}
    base.update(extra)
    return {k: v for k, v in base.items() if v is not None}


def raw_public(private_key):
    return private_key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)


def make_jwt(private_key, payload, header=None, der=False, raw_payload=None):
    """A hand-built ES256 JWT (R||S signature, or DER when `der`)."""
    header = {"typ": "JWT", "alg": "ES256"} if header is None else header
    seg1 = b64url_encode(json.dumps(header).encode())
    seg2 = b64url_encode(raw_payload if raw_payload is not None
                         else json.dumps(payload).encode())
    signing_input = ("%s.%s" % (seg1, seg2)).encode()
    sig = private_key.sign(signing_input, ec.ECDSA(hashes.SHA256()))
    if not der:
        r, s = decode_dss_signature(sig)
        sig = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    return "%s.%s.%s" % (seg1, seg2, b64url_encode(sig))


@pytest.fixture(scope="module")
def key():
    return ec.generate_private_key(ec.SECP256R1())


def creds(key, token, version=2):
    return VapidCredentials("vapid" if version == 2 else "webpush", version,
                            token, raw_public(key))


def check_401(fn, *args, **kwargs):
    with pytest.raises(EndpointError) as exc:
        fn(*args, **kwargs)
    assert (exc.value.status, exc.value.errno) == (401, 109)
    assert exc.value.response()[1]["WWW-Authenticate"] == "vapid"


# --- py-vapid tokens ------------------------------------------------------------

def test_py_vapid_02_roundtrip():
    vapid = Vapid02()
    vapid.generate_keys()
    headers = vapid.sign({"aud": ORIGIN, "sub": SUB})
    cred = parse_authorization(headers["Authorization"], None)
    assert cred.scheme == "vapid" and cred.version == 2
    assert cred.public_key_raw == raw_public(vapid.private_key)
    got = verify(cred, ORIGIN, time.time(),
                 key_digest=hashlib.sha256(cred.public_key_raw).digest())
    assert got["aud"] == ORIGIN and got["sub"] == SUB


def test_py_vapid_02_with_spaces():
    vapid = Vapid02()
    vapid.generate_keys()
    auth = vapid.sign({"aud": ORIGIN, "sub": SUB})["Authorization"]
    token, key = auth[len("vapid "):].split(",")
    spaced = "Vapid  t = %s ,  k = %s " % (token[2:], key[2:])
    cred = parse_authorization(spaced, None)
    assert cred.scheme == "vapid" and cred.version == 2
    assert verify(cred, ORIGIN, time.time())["aud"] == ORIGIN


def test_py_vapid_02_k_before_t_and_padded_key():
    vapid = Vapid02()
    vapid.generate_keys()
    auth = vapid.sign({"aud": ORIGIN, "sub": SUB})["Authorization"]
    token, key = auth[len("vapid "):].split(",")
    swapped = "vapid %s=,%s" % (key, token)  # padding on the key is accepted
    assert verify(parse_authorization(swapped, None), ORIGIN, time.time())


def test_py_vapid_01_webpush_scheme():
    vapid = Vapid01()
    vapid.generate_keys()
    headers = vapid.sign({"aud": ORIGIN, "sub": SUB})
    assert headers["Authorization"].startswith("WebPush ")
    cred = parse_authorization(headers["Authorization"], headers["Crypto-Key"])
    assert cred.scheme == "webpush" and cred.version == 1
    assert verify(cred, ORIGIN, time.time())["sub"] == SUB


def test_py_vapid_01_crypto_key_with_other_items():
    vapid = Vapid01()
    vapid.generate_keys()
    headers = vapid.sign({"aud": ORIGIN, "sub": SUB},
                         crypto_key='dh="BFAKEdhVALUE"')
    assert headers["Crypto-Key"].startswith('dh="BFAKEdhVALUE";p256ecdsa=')
    cred = parse_authorization(headers["Authorization"], headers["Crypto-Key"])
    assert verify(cred, ORIGIN, time.time())


@pytest.mark.parametrize("scheme", ["bearer", "Bearer", "WEBPUSH"])
def test_bearer_and_webpush_schemes(key, scheme):
    token = make_jwt(key, claims())
    crypto_key = "keyid=p256dh;dh=BAAA, p256ecdsa=%s" % b64url_encode(raw_public(key))
    cred = parse_authorization("%s %s" % (scheme, token), crypto_key)
    assert cred.scheme == scheme.lower() and cred.version == 1
    assert cred.jwt == token
    assert verify(cred, ORIGIN, NOW)["aud"] == ORIGIN


# --- hand-built tokens -------------------------------------------------------

def test_der_signature_accepted(key):
    token = make_jwt(key, claims(), der=True)
    assert verify(creds(key, token), ORIGIN, NOW)["exp"] == int(NOW) + 3600


def test_raw_signature_accepted(key):
    assert verify(creds(key, make_jwt(key, claims())), ORIGIN, NOW)


def test_sub_optional(key):
    assert "sub" not in verify(creds(key, make_jwt(key, claims(sub=None))), ORIGIN, NOW)


@pytest.mark.parametrize("aud", [
    ORIGIN, ORIGIN + "/", "HTTP://127.0.0.1:8082", "http://127.0.0.1:8082/",
])
def test_aud_normalised_matches(key, aud):
    assert verify(creds(key, make_jwt(key, claims(aud=aud))), ORIGIN, NOW)


def test_aud_default_port(key):
    token = make_jwt(key, claims(aud="https://Push.Example.com:443/"))
    assert verify(creds(key, token), "https://push.example.com", NOW)
    token = make_jwt(key, claims(aud="http://push.example.com:80"))
    assert verify(creds(key, token), "http://push.example.com/", NOW)


@pytest.mark.parametrize("aud", [
    "http://127.0.0.1:8083", "https://127.0.0.1:8082", "http://localhost:8082",
    "http://127.0.0.1:8082/wpush", "http://127.0.0.1:8082/?", "http://127.0.0.1:8082#x",
    "http://u@127.0.0.1:8082", "ftp://127.0.0.1:8082", "127.0.0.1:8082", "",
    "http://127.0.0.1:99999", "http://127.0.0.1:8082 ", 8082, None, ["http://127.0.0.1:8082"],
])
def test_wrong_aud(key, aud):
    payload = claims()
    payload["aud"] = aud
    check_401(verify, creds(key, make_jwt(key, payload)), ORIGIN, NOW)


def test_missing_aud(key):
    check_401(verify, creds(key, make_jwt(key, claims(aud=None))), ORIGIN, NOW)


def test_missing_exp(key):
    check_401(verify, creds(key, make_jwt(key, claims(exp=None))), ORIGIN, NOW)


@pytest.mark.parametrize("exp", [
    NOW + 25 * 3600, NOW - 61, NOW - 3600, 0, "@", str(int(NOW) + 60), True, False,
    [int(NOW)], {"t": 1},
])
def test_bad_exp(key, exp):
    check_401(verify, creds(key, make_jwt(key, claims(exp=exp))), ORIGIN, NOW)


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e999", "-1e999"])
def test_non_finite_exp(key, literal):
    raw = ('{"aud": "%s", "exp": %s}' % (ORIGIN, literal)).encode()
    check_401(verify, creds(key, make_jwt(key, None, raw_payload=raw)), ORIGIN, NOW)


@pytest.mark.parametrize("exp", [
    NOW - 60, NOW - 30, NOW, NOW + 86400, NOW + 86400.9, int(NOW) + 1.5,
])
def test_exp_within_bounds(key, exp):
    assert verify(creds(key, make_jwt(key, claims(exp=exp))), ORIGIN, NOW)


def test_bad_signature(key):
    token = make_jwt(key, claims())
    other = make_jwt(key, claims(sub="mailto:other@example.com"))
    forged = token.rsplit(".", 1)[0] + "." + other.rsplit(".", 1)[1]
    check_401(verify, creds(key, forged), ORIGIN, NOW)


def test_signature_by_other_key(key):
    other = ec.generate_private_key(ec.SECP256R1())
    check_401(verify, creds(key, make_jwt(other, claims())), ORIGIN, NOW)


@pytest.mark.parametrize("sig", [b"", b"\x00" * 63, b"\x00" * 65, b"\x30\x02\x01",
                                 b"\x01" * 64, b"\x30" * 200])
def test_malformed_signature(key, sig):
    seg1, seg2, _ = make_jwt(key, claims()).split(".")
    token = "%s.%s.%s" % (seg1, seg2, b64url_encode(sig))
    check_401(verify, creds(key, token), ORIGIN, NOW)


def test_tampered_payload(key):
    seg1, _, seg3 = make_jwt(key, claims()).split(".")
    seg2 = b64url_encode(json.dumps(claims(aud="http://evil.example")).encode())
    check_401(verify, creds(key, "%s.%s.%s" % (seg1, seg2, seg3)), ORIGIN, NOW)


@pytest.mark.parametrize("header", [
    {"typ": "JWT", "alg": "HS256"}, {"alg": "none"}, {"alg": "es256"}, {}, ["ES256"],
])
def test_bad_alg(key, header):
    check_401(verify, creds(key, make_jwt(key, claims(), header=header)), ORIGIN, NOW)


@pytest.mark.parametrize("raw", [b"not json", b"[1, 2]", b'"x"', b"\xff\xfe",
                                 b"[" * 1400 + b"]" * 1400])
def test_claims_not_object(key, raw):
    check_401(verify, creds(key, make_jwt(key, None, raw_payload=raw)), ORIGIN, NOW)


@pytest.mark.parametrize("token", [
    "", "a.b", "a.b.c.d", "..", "a..c", "a.b!.c", "abc", "x" * 5000,
])
def test_malformed_jwt(key, token):
    check_401(verify, creds(key, token), ORIGIN, NOW)


def test_oversized_jwt(key):
    token = make_jwt(key, claims(pad="x" * 4000))
    assert len(token) > 4096
    check_401(verify, creds(key, token), ORIGIN, NOW)


# --- keys ------------------------------------------------------------------

def test_key_not_on_curve(key):
    raw = bytearray(raw_public(key))
    raw[-1] ^= 1
    cred = creds(key, make_jwt(key, claims()))._replace(public_key_raw=bytes(raw))
    check_401(verify, cred, ORIGIN, NOW)


@pytest.mark.parametrize("mutate", [
    lambda raw: raw[:-1],             # 64 bytes
    lambda raw: raw + b"\x00",        # 66 bytes
    lambda raw: raw[1:33],            # 32 bytes
    lambda raw: b"\x02" + raw[1:],    # wrong prefix
    lambda raw: b"",
])
def test_key_wrong_shape(key, mutate):
    cred = creds(key, make_jwt(key, claims()))
    check_401(verify, cred._replace(public_key_raw=mutate(cred.public_key_raw)),
              ORIGIN, NOW)


def test_v2_digest_match_and_mismatch(key):
    cred = creds(key, make_jwt(key, claims()))
    digest = hashlib.sha256(cred.public_key_raw).digest()
    assert verify(cred, ORIGIN, NOW, key_digest=digest)
    check_401(verify, cred, ORIGIN, NOW, key_digest=bytes(32))
    check_401(verify, cred, ORIGIN, NOW, key_digest=digest[:31])
    other = raw_public(ec.generate_private_key(ec.SECP256R1()))
    check_401(verify, cred, ORIGIN, NOW,
              key_digest=hashlib.sha256(other).digest())


# --- Authorization parsing ---------------------------------------------------

@pytest.mark.parametrize("auth", [
    "Bearer", "bearer ", "vapid", "vapid   ", "", "   ",
])
def test_scheme_without_credentials(auth):
    check_401(parse_authorization, auth, "p256ecdsa=BAAA")


def test_missing_authorization():
    check_401(parse_authorization, None, None)


@pytest.mark.parametrize("auth", ["Basic dXNlcjpwYXNz", "Digest x=y", "vapidx t=a,k=b",
                                  "JWT a.b.c"])
def test_unknown_scheme(auth):
    check_401(parse_authorization, auth, "p256ecdsa=BAAA")


@pytest.mark.parametrize("rest", [
    "t=a.b.c", "k=BAAA", "t=,k=BAAA", "t=a.b.c,k=", "t=a.b.c,k=BAAA,junk",
    "t=a.b.c,t=x.y.z,k=BAAA", "t=a.b.c,k=not!base64", "t=a.b.c,k=" + "A" * 200,
])
def test_vapid_params_invalid(rest):
    check_401(parse_authorization, "vapid " + rest, None)


def test_vapid_params_lenient_forms():
    cred = parse_authorization("VAPID T=a.b.c, K=BAAA,", None)
    assert cred == VapidCredentials("vapid", 2, "a.b.c", b"\x04\x00\x00")


@pytest.mark.parametrize("crypto_key", [
    None, "", "dh=BAAA", "keyid=a;p256ecdsa", "p256ecdsa=", "p256ecdsa=not!b64",
])
def test_webpush_crypto_key_invalid(crypto_key):
    check_401(parse_authorization, "WebPush a.b.c", crypto_key)


def test_webpush_ignores_k_params():
    check_401(parse_authorization, "webpush t=a.b.c,k=BAAA", None)


# --- origins -------------------------------------------------------------

@pytest.mark.parametrize("url,expected", [
    ("http://127.0.0.1:8082", "http://127.0.0.1:8082"),
    ("http://127.0.0.1:8082/", "http://127.0.0.1:8082"),
    ("HTTPS://Example.COM:443/", "https://example.com"),
    ("http://example.com:80", "http://example.com"),
    ("https://example.com:80", "https://example.com:80"),
    ("http://[::1]:8082/", "http://[::1]:8082"),
])
def test_normalise_origin(url, expected):
    assert normalise_origin(url) == expected


@pytest.mark.parametrize("url", [
    "http://example.com/path", "http://example.com?", "http://example.com/#f",
    "ws://example.com", "example.com", "http://", "http://a:b@example.com",
    "http://example.com:port", "http://exa mple.com", "http://example.com\n", None,
])
def test_normalise_origin_rejects(url):
    with pytest.raises(ValueError):
        normalise_origin(url)


# --- the verification caches ------------------------------------------------------

def test_a_token_is_verified_once_and_its_claims_checked_every_time(key, monkeypatch):
    from connnode.endpoint import vapid

    token = make_jwt(key, claims(exp=int(NOW) + 600, nonce="cache-test"))
    verifications = []
    real = vapid._der_signature
    monkeypatch.setattr(vapid, "_der_signature", lambda sig: verifications.append(1) or real(sig))
    assert verify(creds(key, token), ORIGIN, NOW)["nonce"] == "cache-test"
    assert verify(creds(key, token), ORIGIN, NOW)["nonce"] == "cache-test"
    assert len(verifications) == 1  # the second message reused the verification
    check_401(verify, creds(key, token), ORIGIN, NOW + 600 + 61)  # exp still checked on a hit
    check_401(verify, creds(key, token), "http://other.example", NOW)  # and aud
    other = ec.generate_private_key(ec.SECP256R1())
    check_401(verify, creds(other, token), ORIGIN, NOW)  # another key is another entry


def test_a_failed_verification_is_not_cached(key):
    token = make_jwt(key, claims(nonce="forged"))
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    for _ in range(2):
        check_401(verify, creds(key, forged), ORIGIN, NOW)
    assert verify(creds(key, token), ORIGIN, NOW)["nonce"] == "forged"
