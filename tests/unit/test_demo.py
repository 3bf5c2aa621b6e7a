"""Unit tests of connnode.endpoint.demo: the demo page's application server
(aes128gcm encryption checked with http_ece, VAPID checked with the
endpoint's own verifier), its refusals, and its key kept in data_dir."""
import json
import os
import stat
import time

import http_ece
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from connnode.encoding import b64url_decode, b64url_encode
from connnode.endpoint import demo as demo_module
from connnode.endpoint.demo import (KEY_FILE, MAX_SEND_BODY, Demo, encrypt_aes128gcm,
                                    load_or_create_key, own_endpoint_path, parse_send,
                                    vapid_authorization)
from connnode.endpoint.errors import EndpointError
from connnode.endpoint.headers import message_headers
from connnode.endpoint.vapid import parse_authorization, verify
from connnode.settings import Settings
from tests.harness import browser_keys, raw_public

ORIGIN = "http://127.0.0.1:8082"
ENDPOINT = ORIGIN + "/wpush/v2/gAAAAABtoken"


def subscription(endpoint=ENDPOINT, keys=None):
    if keys is None:
        _, _, keys = browser_keys()
    return {"endpoint": endpoint, "keys": keys}


def body(**document):
    return json.dumps(document).encode()


# -- encryption and VAPID ------------------------------------------------------------

@pytest.mark.parametrize("text", [b"", b"hello", "h\u00e9llo \u2603".encode(), b"x" * 4079])
def test_aes128gcm_decrypts_with_http_ece(text):
    private_key, auth, keys = browser_keys()
    payload = encrypt_aes128gcm(text, b64url_decode(keys["p256dh"]), auth)
    assert http_ece.decrypt(payload, private_key=private_key, auth_secret=auth,
                            version="aes128gcm") == text
    assert payload[16:20] == (4096).to_bytes(4, "big") and payload[20] == 65


def test_aes128gcm_refuses_a_bad_key_and_too_much_text():
    _, auth, keys = browser_keys()
    with pytest.raises(ValueError):
        encrypt_aes128gcm(b"x", b"\x04" + b"\x00" * 64, auth)
    with pytest.raises(ValueError):
        encrypt_aes128gcm(b"x" * 4080, b64url_decode(keys["p256dh"]), auth)


def test_vapid_authorization_passes_the_endpoints_own_check():
    key = ec.generate_private_key(ec.SECP256R1())
    header = vapid_authorization(key, ORIGIN, "mailto:demo@127.0.0.1")
    credentials = parse_authorization(header, None)
    assert credentials.public_key_raw == raw_public(key)
    claims = verify(credentials, ORIGIN, time.time())
    assert claims["aud"] == ORIGIN and claims["sub"] == "mailto:demo@127.0.0.1"
    with pytest.raises(EndpointError):
        verify(credentials, "https://push.example.com", time.time())


# -- the kept key --------------------------------------------------------------------

def test_key_is_made_once_private_and_kept(tmp_path):
    first = load_or_create_key(tmp_path / "var")
    path = tmp_path / "var" / KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = load_or_create_key(tmp_path / "var")
    assert raw_public(again) == raw_public(first)
    assert [p.name for p in path.parent.iterdir()] == [KEY_FILE]  # no temporary left


def test_a_key_made_meanwhile_by_another_process_wins(tmp_path, monkeypatch):
    other = load_or_create_key(tmp_path / "other")
    real_link = os.link

    def racing_link(source, target):  # the other process links first
        os.rename(tmp_path / "other" / KEY_FILE, target)
        real_link(source, target)
    monkeypatch.setattr(demo_module.os, "link", racing_link)
    assert raw_public(load_or_create_key(tmp_path / "var")) == raw_public(other)
    assert [p.name for p in (tmp_path / "var").iterdir()] == [KEY_FILE]


def test_a_key_file_of_another_kind_is_refused(tmp_path):
    from cryptography.hazmat.primitives import serialization
    key = ec.generate_private_key(ec.SECP384R1())
    (tmp_path / KEY_FILE).write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    with pytest.raises(ValueError, match="P-256"):
        load_or_create_key(tmp_path)


# -- what /demo/send accepts ---------------------------------------------------------

@pytest.mark.parametrize("endpoint,rest", [
    (ORIGIN + "/wpush/v2/abc", "v2/abc"),
    ("HTTP://127.0.0.1:8082/wpush/v1/abc", "v1/abc"),
    (ORIGIN + "/wpush/abc", "abc"),
    ("http://127.0.0.1:8083/wpush/v2/abc", None),  # another port
    ("https://127.0.0.1:8082/wpush/v2/abc", None),  # another scheme
    ("https://updates.push.services.mozilla.com/wpush/v2/abc", None),
    ("http://user@127.0.0.1:8082/wpush/v2/abc", None),
    (ORIGIN + "/wpush/v2/abc?x=1", None),
    (ORIGIN + "/wpush/v2/abc#x", None),
    (ORIGIN + "/wpush/", None),
    (ORIGIN + "/m/abc", None),
    (ORIGIN + "/wpush//abc", None),
    ("javascript:alert(1)", None),
    ("", None),
])
def test_only_this_nodes_endpoints(endpoint, rest):
    assert own_endpoint_path(endpoint, ORIGIN) == rest


def test_a_good_request():
    _, auth, keys = browser_keys()
    send = parse_send(body(subscription=subscription(keys=keys), text="hi", ttl=0), ORIGIN)
    assert send.rest == "v2/gAAAAABtoken" and send.text == b"hi" and send.ttl == 0
    assert send.auth == auth


@pytest.mark.parametrize("raw", [
    b"", b"not json", b"\xff\xfe", b"[]", b'"text"', b"{}",
    body(subscription="x"),
    body(subscription={"endpoint": 5}),
    body(subscription={"endpoint": ENDPOINT}),
    body(subscription={"endpoint": ENDPOINT, "keys": {"p256dh": "x", "auth": "y"}}),
    body(subscription={"endpoint": ENDPOINT, "keys": {"p256dh": "!!", "auth": "AAAA"}}),
    body(subscription=subscription(keys={"p256dh": b64url_encode(b"\x04" + b"\x00" * 64),
                                         "auth": b64url_encode(b"a" * 16)})),
    body(subscription=subscription(keys={**browser_keys()[2], "auth": b64url_encode(b"a")})),
    body(subscription=subscription("https://push.example.com/wpush/v2/abc")),
    body(subscription=subscription(), text=5),
    body(subscription=subscription(), text="\ud800"),
    body(subscription=subscription(), text="x" * 2049),
    body(subscription=subscription(), ttl=-1),
    body(subscription=subscription(), ttl="60"),
    body(subscription=subscription(), ttl=True),
    body(subscription=subscription(), ttl=86401),
    b"[" * 100000,
    b'{"subscription": "' + b"x" * MAX_SEND_BODY + b'"}',
])
def test_bad_requests_are_400(raw):
    with pytest.raises(EndpointError) as caught:
        parse_send(raw, ORIGIN)
    assert caught.value.status == 400 and caught.value.errno is None


def test_a_foreign_endpoint_is_refused_by_name():
    with pytest.raises(EndpointError, match="not on this push service"):
        parse_send(body(subscription=subscription("https://fcm.googleapis.com/fcm/send/x")),
                   ORIGIN)


# -- Demo.send: what it hands to POST /wpush -----------------------------------------

class RecordingAPI:
    def __init__(self, answer):
        self.answer = answer
        self.calls = []

    def post(self, rest, request):
        self.calls.append((rest, request.headers, request.content_length, request.stream.read()))
        self.remote_addr = request.remote_addr
        return self.answer


def make_demo(tmp_path, answer):
    settings = Settings(hostname="127.0.0.1", endpoint_url=ORIGIN, data_dir=str(tmp_path))
    api = RecordingAPI(answer)
    return Demo(api, settings), api


def test_send_hands_a_valid_webpush_request_to_the_endpoint(tmp_path):
    from io import BytesIO
    demo, api = make_demo(tmp_path, (201, {"Location": ORIGIN + "/m/id", "TTL": "60"}, None))
    private_key, auth, keys = browser_keys()
    raw = body(subscription=subscription(keys=keys), text="over the demo", ttl=60)
    status, headers, answer = demo.send(len(raw), BytesIO(raw))
    assert (status, answer) == (201, {"status": 201, "location": ORIGIN + "/m/id"})
    assert headers["Content-Type"] == "application/json"
    [(rest, sent_headers, length, payload)] = api.calls
    assert rest == "v2/gAAAAABtoken" and length == len(payload)
    assert sent_headers["TTL"] == "60"
    assert message_headers(sent_headers, payload) == {"encoding": "aes128gcm"}
    credentials = parse_authorization(sent_headers["Authorization"], None)
    verify(credentials, ORIGIN, time.time())
    assert b64url_encode(credentials.public_key_raw) == demo.config()["applicationServerKey"]
    assert http_ece.decrypt(payload, private_key=private_key, auth_secret=auth,
                            version="aes128gcm") == b"over the demo"


def test_send_answers_the_endpoints_status(tmp_path):
    from io import BytesIO
    error = {"code": 410, "errno": 106, "error": "Gone", "message": "No such subscription"}
    demo, _ = make_demo(tmp_path, (410, {"Cache-Control": "max-age=86400"}, error))
    raw = body(subscription=subscription(), text="x")
    status, _, answer = demo.send(len(raw), BytesIO(raw))
    assert status == 410 and answer == {"status": 410, "endpoint": error}


def test_send_counts_the_pages_client_and_passes_retry_after(tmp_path):
    from io import BytesIO
    error = {"code": 429, "errno": 115}
    demo, api = make_demo(tmp_path, (429, {"Retry-After": "7"}, error))
    raw = body(subscription=subscription(), text="x")
    status, headers, answer = demo.send(len(raw), BytesIO(raw), "10.1.2.3",
                                        {"X-Forwarded-For": "192.0.2.9", "Cookie": "c"})
    assert (status, headers["Retry-After"], answer["endpoint"]) == (429, "7", error)
    [(_, sent_headers, _, _)] = api.calls
    assert api.remote_addr == "10.1.2.3"
    assert sent_headers["X-Forwarded-For"] == "192.0.2.9" and "Cookie" not in sent_headers


def test_send_refuses_without_calling_the_endpoint(tmp_path):
    from io import BytesIO
    demo, api = make_demo(tmp_path, (201, {}, None))
    raw = body(subscription=subscription("http://127.0.0.1:9/wpush/v2/x"), text="x")
    assert demo.send(len(raw), BytesIO(raw))[0] == 400
    assert demo.send(MAX_SEND_BODY + 1, BytesIO(b"{}"))[0] == 400
    endless = BytesIO(b" " * (10 * MAX_SEND_BODY))
    assert demo.send(None, endless)[0] == 400
    assert endless.tell() <= MAX_SEND_BODY + 1
    assert api.calls == []


def test_config_names_the_key_and_the_origin(tmp_path):
    demo, _ = make_demo(tmp_path, None)
    config = demo.config()
    assert len(b64url_decode(config["applicationServerKey"])) == 65
    assert config["endpointUrl"] == ORIGIN
    assert config["websocketUrl"] == "ws://127.0.0.1:8080/"


# -- the routes: on only with demo_page ------------------------------------------------

def demo_client(tmp_path, demo_page):
    from types import SimpleNamespace

    from connnode.crypto import TokenCrypto
    from connnode.endpoint.app import create_endpoint_app
    from tests.conftest import TEST_CRYPTO_KEY
    settings = Settings(hostname="127.0.0.1", endpoint_url=ORIGIN, data_dir=str(tmp_path),
                        crypto_key=TEST_CRYPTO_KEY, statsd_host="", demo_page=demo_page)
    storage = SimpleNamespace(crypto=TokenCrypto(settings.crypto_keys),
                              health=lambda: (True, {}))
    return create_endpoint_app(storage, None, None, settings).test_client()


@pytest.mark.parametrize("demo_page", [None, False])
def test_off_unless_asked(tmp_path, demo_page):
    client = demo_client(tmp_path, demo_page)
    for path in ("/demo", "/demo/", "/demo/sw.js", "/demo/config.json"):
        assert client.get(path).status_code == 404
    assert client.post("/demo/send", data=b"{}").status_code == 404
    assert not (tmp_path / KEY_FILE).exists()


def test_the_page_and_its_worker(tmp_path):
    client = demo_client(tmp_path, True)
    for path in ("/demo", "/demo/"):
        page = client.get(path)
        assert page.status_code == 200 and page.content_type == "text/html; charset=utf-8"
        assert b'<script src="/demo/demo.js">' in page.data
    worker = client.get("/demo/sw.js")
    assert worker.status_code == 200 and worker.content_type == "text/javascript; charset=utf-8"
    assert worker.headers["Service-Worker-Allowed"] == "/demo/"
    assert worker.headers["Cache-Control"] == "no-cache"
    assert b'addEventListener("push"' in worker.data
    assert client.get("/demo/demo.js").content_type == "text/javascript; charset=utf-8"
    config = client.get("/demo/config.json").get_json()
    assert config["applicationServerKey"] == b64url_encode(
        raw_public(load_or_create_key(tmp_path)))
    assert client.post("/demo", data=b"").status_code == 405
    refused = client.post("/demo/send", data=b"garbage")
    assert refused.status_code == 400 and refused.get_json()["code"] == 400
