"""The endpoint node as application servers see it (PROTOCOL.md 4, 5): real
dynalite, a real gunicorn endpoint node and connection node, pywebpush and
http_ece as the application server and the browser's decryption, a
websocket-client as the browser, and a UDP socket as the StatsD server."""
import hashlib
import json
import os
import signal
import subprocess
import time
import uuid

import pytest
import requests
import websocket
from cryptography.fernet import Fernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from py_vapid import Vapid02

from connnode.crypto import InvalidTokenError, TokenCrypto
from connnode.db.storage import Storage
from connnode.encoding import b64url_decode, b64url_encode
from tests.conftest import TEST_CRYPTO_KEY, make_settings
from tests.harness import (ConnectionNode, EndpointNode, PushClient, StatsdSink,
                           application_server_key, browser_keys, decrypt, raw_public,
                           send_webpush)

pytestmark = pytest.mark.timeout(120)

MAX_TTL = 2592000
MORE_INFO = "http://autopush.readthedocs.io/en/latest/http.html#error-codes"
SUB = "mailto:test@example.com"
DIRECT_FRAME_WITHIN = 0.2


# -- helpers -------------------------------------------------------------------------

class Service:
    """Tables of their own, a storage handle on them, an endpoint node and a
    connection node that hands out endpoints of that endpoint node."""

    def __init__(self, dynalite, tmp_path, crypto_key=TEST_CRYPTO_KEY, ep_options=None):
        self.dynalite = dynalite
        self.tmp_path = tmp_path
        suffix = uuid.uuid4().hex[:8]
        self.tables = {"router": f"router_{suffix}", "message": f"message_{suffix}"}
        self.storage = Storage(make_settings(dynalite, router_tablename=self.tables["router"],
                                             message_tablename=self.tables["message"],
                                             crypto_key=crypto_key))
        self.storage.create_tables()
        self.ep = EndpointNode(dynalite, self.tables, log_path=tmp_path / "ep.log",
                               crypto_key=crypto_key, **(ep_options or {}))
        self.cns = []
        self.cn = self.connection_node(crypto_key=crypto_key)

    def connection_node(self, **options):
        options.setdefault("hello_timeout", 5)
        options.setdefault("close_handshake_timeout", 1)
        node = ConnectionNode(self.dynalite, self.tables, endpoint_url=self.ep.url,
                              log_path=self.tmp_path / f"cn{len(self.cns)}.log", **options)
        self.cns.append(node)
        return node

    def start(self):
        self.ep.start()
        self.cn.start()
        return self

    def stop(self):
        stop_together(*self.cns, self.ep)

    @property
    def url(self):
        return self.ep.url

    def stored(self, uaid):
        """Every stored message of the uaid in the current table (both phases)."""
        table = self.storage.current_table
        _, topics = table.fetch_messages(uaid)
        _, stamped = table.fetch_timestamp_messages(uaid)
        return topics + stamped


def stop_together(*nodes, timeout=30.0):
    """SIGTERM every running node first, then wait for each: graceful stops
    overlap instead of adding up."""
    running = [node for node in nodes if node.process is not None]
    for node in running:
        if node.process.poll() is None:
            node.process.send_signal(signal.SIGTERM)
    for node in running:
        try:
            node.process.wait(timeout)
        except subprocess.TimeoutExpired:
            node.kill()
        node.process = None


@pytest.fixture(scope="module")
def statsd():
    sink = StatsdSink()
    yield sink
    sink.close()


@pytest.fixture(scope="module")
def svc(dynalite, tmp_path_factory, statsd):
    service = Service(dynalite, tmp_path_factory.mktemp("ep"),
                      ep_options={"statsd_host": "127.0.0.1", "statsd_port": statsd.port})
    service.start()
    yield service
    service.stop()


@pytest.fixture
def client(svc):
    clients = []

    def make(node=None):
        made = PushClient((node or svc.cn).ws_url)
        clients.append(made)
        return made
    yield make
    for made in clients:
        made.close()


def make_jwt(private_key, claims, header=None):
    header = {"typ": "JWT", "alg": "ES256"} if header is None else header
    signing_input = (b64url_encode(json.dumps(header).encode()) + "."
                     + b64url_encode(json.dumps(claims).encode()))
    r, s = decode_dss_signature(private_key.sign(signing_input.encode(),
                                                 ec.ECDSA(hashes.SHA256())))
    return signing_input + "." + b64url_encode(r.to_bytes(32, "big") + s.to_bytes(32, "big"))


def vapid_header(private_key, claims, public_key=None):
    key = public_key if public_key is not None else b64url_encode(raw_public(private_key))
    return f"vapid t={make_jwt(private_key, claims)}, k={key}"


def claims_for(svc, **changes):
    claims = {"aud": svc.url, "exp": int(time.time()) + 3600, "sub": SUB}
    claims.update(changes)
    return {name: value for name, value in claims.items() if value is not None}


def post(endpoint, body=b"", ttl="60", encoding="aes128gcm", **headers):
    if ttl is not None:
        headers["TTL"] = ttl
    if body and encoding:
        headers["Content-Encoding"] = encoding
    headers = {name.replace("_", "-"): value for name, value in headers.items()}
    return requests.post(endpoint, data=body, headers=headers, timeout=10)


def assert_error(response, status, errno):
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/json"
    body = response.json()
    assert body == {"code": status, "errno": errno, "error": body["error"],
                    "message": body["message"], "more_info": MORE_INFO}
    assert isinstance(body["error"], str) and body["error"]
    if status == 410:
        assert response.headers["Cache-Control"] == "max-age=86400"
    if status == 401:
        assert response.headers["WWW-Authenticate"] == "vapid"
    assert response.headers["Strict-Transport-Security"] == "max-age=31536000;includeSubDomains"
    assert response.headers["Access-Control-Allow-Origin"] == "*"


def message_id(response, svc):
    location = response.headers["Location"]
    assert location.startswith(svc.url + "/m/")
    return location[len(svc.url) + 3:]


def connected(client, key=None):
    """A connected client with one registered channel: (client, chid, endpoint)."""
    made = client()
    made.hello()
    reply = made.register(key=key)
    assert reply["status"] == 200
    return made, reply["channelID"], reply["pushEndpoint"]


def offline(client, key=None):
    """A uaid with one registered channel and no connection: (uaid, chid, endpoint)."""
    made, chid, endpoint = connected(client, key)
    made.close()
    return made.uaid, chid, endpoint


def reconnect(client, uaid, node=None):
    made = client(node)
    assert made.hello(uaid)["uaid"] == uaid
    return made


def assert_no_frame(push_client, wait=0.3):
    with pytest.raises(websocket.WebSocketTimeoutException):
        push_client.recv(timeout=wait)


def record_of(svc, uaid):
    return svc.storage.router.get_uaid(uaid)


@pytest.fixture(scope="module")
def v1(svc):
    """An offline v1 subscription for validation tests: (uaid, chid, endpoint)."""
    made = PushClient(svc.cn.ws_url)
    try:
        made.hello()
        reply = made.register()
    finally:
        made.close()
    return made.uaid, reply["channelID"], reply["pushEndpoint"]


@pytest.fixture(scope="module")
def vapid_key():
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def v2(svc, vapid_key):
    """An offline v2 subscription bound to ``vapid_key``."""
    made = PushClient(svc.cn.ws_url)
    try:
        made.hello()
        reply = made.register(key=b64url_encode(raw_public(vapid_key)))
    finally:
        made.close()
    assert "/wpush/v2/" in reply["pushEndpoint"]
    return made.uaid, reply["channelID"], reply["pushEndpoint"]


# -- pywebpush + http_ece ---------------------------------------------------------------

@pytest.fixture
def vapid02():
    vapid = Vapid02()
    vapid.generate_keys()
    return vapid


def test_pywebpush_to_connected_client(svc, client, vapid02, statsd):
    browser, chid, endpoint = connected(client, key=application_server_key(vapid02))
    assert endpoint.startswith(svc.url + "/wpush/v2/")
    private_key, auth, keys = browser_keys()
    statsd.drain()
    response = send_webpush(svc.url, endpoint, keys, vapid02, "Mary had a little lamb")
    assert response.status_code == 201, response.text
    frame = browser.recv(timeout=DIRECT_FRAME_WITHIN)
    assert frame["channelID"] == chid
    assert frame["version"] == message_id(response, svc)
    assert decrypt(frame, private_key, auth) == b"Mary had a little lamb"
    assert response.headers["TTL"] == "60"
    lines = statsd.wait_for(
        "notification.auth;scheme=vapid;vapid=2:1|c", "updates.vapid.draft02:1|c",
        "updates.notification.encoding.aes128gcm:1|c",
        "notification.message_data;destination=Direct:",
        "notification.message.success;destination=Direct;router=webpush;vapid=True:1|c",
        "notification.request_time:")
    assert not any(line.startswith("notification.message.error") for line in lines)


def test_pywebpush_to_offline_client_is_stored_then_delivered(svc, client, vapid02, statsd):
    uaid, chid, endpoint = offline(client, key=application_server_key(vapid02))
    private_key, auth, keys = browser_keys()
    statsd.drain()
    response = send_webpush(svc.url, endpoint, keys, vapid02, "stored for later")
    assert response.status_code == 201, response.text
    statsd.wait_for("notification.message.success;destination=Stored;router=webpush;vapid=True")
    assert "node_id" not in record_of(svc, uaid)
    assert [m.version for m in svc.stored(uaid)] == [message_id(response, svc)]
    browser = reconnect(client, uaid)
    frame = browser.recv()
    assert frame["channelID"] == chid and frame["version"] == message_id(response, svc)
    assert decrypt(frame, private_key, auth) == b"stored for later"


# -- errno table (4.12) ---------------------------------------------------------------------

def swap_version(endpoint, old, new):
    assert f"/wpush/{old}/" in endpoint
    return endpoint.replace(f"/wpush/{old}/", f"/wpush/{new}/")


def test_102_tokens_and_routes(svc, v1, v2):
    _, _, endpoint = v1
    _, _, endpoint2 = v2
    token = endpoint.rsplit("/", 1)[1]
    assert_error(post(f"{svc.url}/wpush/v1/not-a-token"), 404, 102)
    assert_error(post(swap_version(endpoint, "v1", "v3")), 404, 102)
    assert_error(post(swap_version(endpoint, "v1", "v2")), 404, 102)  # 32 bytes on v2
    assert_error(post(swap_version(endpoint2, "v2", "v1")), 404, 102)  # 64 bytes on v1
    assert_error(post(f"{svc.url}/wpush/v1/{token}/extra"), 404, 102)
    other = TokenCrypto([Fernet.generate_key().decode()]).endpoint_token(uuid.uuid4().hex,
                                                                         str(uuid.uuid4()))
    assert_error(post(f"{svc.url}/wpush/v1/{other}"), 404, 102)  # another crypto_key
    # /wpush/{token} is v1
    assert post(f"{svc.url}/wpush/{token}").status_code == 201


def test_103_no_router_record(svc):
    token = svc.storage.crypto.endpoint_token(uuid.uuid4().hex, str(uuid.uuid4()))
    assert_error(post(f"{svc.url}/wpush/v1/{token}"), 410, 103)


def test_104_body_size(svc, v1, client):
    browser, _, endpoint = connected(client)
    body = os.urandom(5630)
    response = post(endpoint, body)
    assert response.status_code == 201
    assert b64url_decode(browser.recv(timeout=DIRECT_FRAME_WITHIN)["data"]) == body
    assert_error(post(v1[2], os.urandom(5631)), 413, 104)

    def chunks():
        for _ in range(10):
            yield b"x" * 1000
    response = requests.post(v1[2], data=chunks(), timeout=10,
                             headers={"TTL": "60", "Content-Encoding": "aes128gcm"})
    assert_error(response, 413, 104)


def test_106_unregistered_channel(svc, v1):
    uaid = v1[0]
    token = svc.storage.crypto.endpoint_token(uaid, str(uuid.uuid4()))
    assert_error(post(f"{svc.url}/wpush/v1/{token}"), 410, 106)


@pytest.mark.parametrize("month, errno_tag", [("message_1999_01", "103"), (None, "102")])
def test_106_unusable_record_is_dropped(svc, statsd, month, errno_tag):
    uaid, chid = uuid.uuid4().hex, str(uuid.uuid4())
    record = {"uaid": uaid, "router_type": "webpush", "connected_at": 1}
    if month:
        record["current_month"] = month
    assert svc.storage.router.register_user(record)[0]
    statsd.drain()
    token = svc.storage.crypto.endpoint_token(uaid, chid)
    assert_error(post(f"{svc.url}/wpush/v1/{token}"), 410, 106)
    assert record_of(svc, uaid) is None
    statsd.wait_for(f"updates.drop_user;errno={errno_tag}:1|c")
    # the same URL is now answered 410/106 from the dead-subscription cache;
    # a new token of the same channel asks storage, which has no record left
    token = svc.storage.crypto.endpoint_token(uaid, chid)
    assert_error(post(f"{svc.url}/wpush/v1/{token}"), 410, 103)


@pytest.mark.parametrize("headers, errno", [
    ({"ttl": None}, 111),
    ({"ttl": "abc"}, 112),
    ({"ttl": "1.5"}, 112),
    ({"ttl": ""}, 112),
    ({"ttl": "-1"}, 114),
    ({"Topic": "has space"}, 113),
    ({"Topic": "x" * 33}, 113),
    ({"encoding": None}, 110),
    ({"encoding": "gzip"}, 110),
    ({"encoding": "aesgcm"}, 110),  # no Encryption salt
    ({"encoding": "aes128gcm", "Encryption": "salt=abc"}, 110),
    ({"encoding": "aesgcm", "Encryption": "salt=abc", "Crypto_Key": "dh=@@"}, 110),
    ({"encoding": "aesgcm128", "Encryption": "salt=abc"}, 110),  # no Encryption-Key
])
def test_400_header_errors(v1, headers, errno):
    assert_error(post(v1[2], b"body", **headers), 400, errno)


def test_validation_order(svc, v1, v2):
    """Earlier steps of 4.6 win over later ones."""
    bad_everything = {"ttl": "-1", "Topic": "!", "encoding": "gzip"}
    assert_error(post(swap_version(v1[2], "v1", "v3"), b"x" * 6000, **bad_everything), 404, 102)
    assert_error(post(v2[2], b"x" * 6000, **bad_everything), 401, 109)
    assert_error(post(v1[2], b"x" * 6000, **bad_everything), 413, 104)
    assert_error(post(v1[2], b"x", **bad_everything), 400, 114)
    assert_error(post(v1[2], b"x", ttl="5", Topic="!", encoding="gzip"), 400, 113)
    token = svc.storage.crypto.endpoint_token(uuid.uuid4().hex, str(uuid.uuid4()))
    assert_error(post(f"{svc.url}/wpush/v1/{token}", b"x", encoding="gzip"), 400, 110)
    assert_error(post(f"{svc.url}/wpush/v1/{token}", b"", encoding="gzip"), 410, 103)


def test_null_errno_paths_methods_and_message_ids(svc, v1):
    assert_error(requests.get(f"{svc.url}/nowhere"), 404, None)
    assert_error(requests.post(f"{svc.url}/wpush"), 404, None)
    response = requests.get(v1[2])
    assert_error(response, 405, None)
    assert set(response.headers["Allow"].replace(" ", "").split(",")) == {"POST", "OPTIONS"}
    assert_error(requests.put(f"{svc.url}/m/abc"), 405, None)
    assert_error(requests.delete(f"{svc.url}/m/not-a-message-id"), 400, None)
    assert_error(requests.delete(v1[2].replace("/wpush/v1/", "/m/")), 400, None)  # a token


def test_options_cors_and_status_routes(svc, v1):
    response = requests.options(v1[2])
    assert response.status_code == 200 and response.content == b""
    assert response.headers["Access-Control-Allow-Methods"] == "POST"
    assert response.headers["Access-Control-Allow-Headers"] == (
        "content-encoding,encryption,crypto-key,ttl,encryption-key,content-type,"
        "authorization,topic,urgency")
    assert response.headers["Access-Control-Expose-Headers"] == "location,www-authenticate"
    response = requests.options(f"{svc.url}/m/whatever")
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Methods"] == "DELETE"
    assert requests.get(f"{svc.url}/status").json()["status"] == "OK"
    health = requests.get(f"{svc.url}/health").json()
    assert health["status"] == "OK" and health["router"] == {"status": "OK"}
    assert requests.get(f"{svc.url}/__heartbeat__").status_code == 200
    assert requests.get(f"{svc.url}/__lbheartbeat__").json() == {}
    assert set(requests.get(f"{svc.url}/__version__").json()) == {
        "source", "version", "commit", "build"}
    assert "Strict-Transport-Security" in requests.get(f"{svc.url}/status").headers


# -- VAPID (4.8) -------------------------------------------------------------------------

def test_v2_requires_the_registering_key(svc, v2, vapid_key):
    _, _, endpoint = v2
    response = post(endpoint, Authorization=vapid_header(vapid_key, claims_for(svc)))
    assert response.status_code == 201, response.text
    other = ec.generate_private_key(ec.SECP256R1())
    assert_error(post(endpoint, Authorization=vapid_header(other, claims_for(svc))), 401, 109)
    assert_error(post(endpoint), 401, 109)


def test_v1_validates_an_authorization_that_is_present(svc, v1, statsd):
    _, _, endpoint = v1
    assert_error(post(endpoint, Authorization="Bearer"), 401, 109)
    assert_error(post(endpoint, Authorization="vapid t=abc,k=def"), 401, 109)
    assert_error(post(endpoint, Authorization="Basic dXNlcjpwYXNz"), 401, 109)
    # draft-01 form: webpush scheme, key in Crypto-Key p256ecdsa
    key = ec.generate_private_key(ec.SECP256R1())
    statsd.drain()
    response = post(endpoint, Authorization="WebPush " + make_jwt(key, claims_for(svc)),
                    Crypto_Key="p256ecdsa=" + b64url_encode(raw_public(key)))
    assert response.status_code == 201, response.text
    statsd.wait_for("notification.auth;scheme=webpush;vapid=1:1|c", "updates.vapid.draft01:1|c")


def _claims_cases():
    now = int(time.time())
    return {
        "wrong aud": {"aud": "https://other.example.com"},
        "missing exp": {"exp": None},
        "exp 25 h ahead": {"exp": now + 25 * 3600},
        "expired": {"exp": now - 3600},
        "string exp": {"exp": "@"},
    }


@pytest.mark.parametrize("case", sorted(_claims_cases()))
def test_vapid_claims_rejected(svc, v1, case):
    key = ec.generate_private_key(ec.SECP256R1())
    claims = claims_for(svc, **_claims_cases()[case])
    assert_error(post(v1[2], Authorization=vapid_header(key, claims)), 401, 109)


def test_vapid_bad_signature_and_bad_key(svc, v1):
    key, other = (ec.generate_private_key(ec.SECP256R1()) for _ in range(2))
    signed_by_other = vapid_header(other, claims_for(svc),
                                   public_key=b64url_encode(raw_public(key)))
    assert_error(post(v1[2], Authorization=signed_by_other), 401, 109)
    not_on_curve = b64url_encode(b"\x04" + b"\x01" * 64)
    assert_error(post(v1[2], Authorization=vapid_header(key, claims_for(svc),
                                                        public_key=not_on_curve)), 401, 109)
    assert_error(post(v1[2], Authorization=vapid_header(key, claims_for(svc),
                                                        public_key="!!notbase64")), 401, 109)


def test_vapid_without_sub_and_aud_with_slash_accepted(svc, v1):
    key = ec.generate_private_key(ec.SECP256R1())
    response = post(v1[2], Authorization=vapid_header(key, claims_for(svc, sub=None)))
    assert response.status_code == 201, response.text
    response = post(v1[2], Authorization=vapid_header(key, claims_for(svc, aud=svc.url + "/")))
    assert response.status_code == 201, response.text


# -- message content -----------------------------------------------------------------------

def test_aesgcm_headers_are_cleaned(client):
    browser, _, endpoint = connected(client)
    dh = b64url_encode(raw_public(ec.generate_private_key(ec.SECP256R1()))) + "="
    response = post(endpoint, b"\xc3\x28\xa0\xa1\xe2\x28\xa1", encoding="AESGCM",
                    Encryption='keyid="http://example.org/bob/keys/123";'
                               'salt="XZwpw6o37R-6qoZjw6KwAw=="',
                    Crypto_Key=f'keyid="a1"; dh="{dh}"')
    assert response.status_code == 201, response.text
    frame = browser.recv(timeout=DIRECT_FRAME_WITHIN)
    assert frame["data"] == "wyigoeIooQ"
    assert frame["headers"] == {
        "encoding": "aesgcm",
        "encryption": "keyid=http://example.org/bob/keys/123;salt=XZwpw6o37R-6qoZjw6KwAw",
        "crypto_key": f"keyid=a1; dh={dh.rstrip('=')}",
    }


def test_empty_body_has_neither_data_nor_headers(client):
    browser, chid, endpoint = connected(client)
    response = post(endpoint, b"", encoding=None, Encryption="salt=@@", Crypto_Key="dh")
    assert response.status_code == 201, response.text
    frame = browser.recv(timeout=DIRECT_FRAME_WITHIN)
    assert set(frame) == {"messageType", "channelID", "version"}
    assert frame["channelID"] == chid


def test_ttl_zero_offline_is_not_stored_and_ttl_is_capped(svc, client):
    uaid, _, endpoint = offline(client)
    response = post(endpoint, b"now or never", ttl="0")
    assert response.status_code == 201 and response.headers["TTL"] == "0"
    assert "Location" in response.headers
    assert svc.stored(uaid) == []
    response = post(endpoint, b"later", ttl="99999999999999999999")
    assert response.status_code == 201 and response.headers["TTL"] == str(MAX_TTL)
    assert [m.ttl for m in svc.stored(uaid)] == [MAX_TTL]


def test_ttl_zero_connected_is_delivered(client):
    browser, _, endpoint = connected(client)
    assert post(endpoint, b"now", ttl="0").status_code == 201
    assert b64url_decode(browser.recv(timeout=DIRECT_FRAME_WITHIN)["data"]) == b"now"


# -- topics, DELETE, unregister -----------------------------------------------------------

def test_topic_replaces_stored_message(svc, client):
    uaid, chid, endpoint = offline(client)
    first = post(endpoint, b"first", Topic="weather")
    second = post(endpoint, b"second", Topic="weather")
    assert first.status_code == second.status_code == 201
    stored = svc.stored(uaid)
    assert [(m.topic, m.version) for m in stored] == [("weather", message_id(second, svc))]
    # DELETE of the replaced message's id leaves the newer one
    assert requests.delete(first.headers["Location"]).status_code == 204
    assert len(svc.stored(uaid)) == 1
    browser = reconnect(client, uaid)
    frame = browser.recv()
    assert b64url_decode(frame["data"]) == b"second"
    assert frame["version"] == message_id(second, svc)
    assert_no_frame(browser)


@pytest.mark.parametrize("topic", [None, "news"])
def test_delete_location_removes_stored_message(svc, client, topic):
    uaid, _, endpoint = offline(client)
    headers = {"Topic": topic} if topic else {}
    response = post(endpoint, b"regret", **headers)
    assert response.status_code == 201
    assert len(svc.stored(uaid)) == 1
    location = response.headers["Location"]
    if topic:
        assert location.endswith("=")  # Fernet padding, kept in the id (4.5)
    deleted = requests.delete(location.rstrip("="))  # a client that dropped it
    assert deleted.status_code == 204 and deleted.content == b""
    assert svc.stored(uaid) == []
    assert requests.delete(location).status_code == 204  # nothing left: still 204
    browser = reconnect(client, uaid)
    assert_no_frame(browser)


def test_unregister_then_410(svc, client):
    browser, chid, endpoint = connected(client)
    browser.send({"messageType": "unregister", "channelID": chid})
    assert browser.recv()["status"] == 200
    deadline = time.monotonic() + 5
    while chid in svc.storage.current_table.all_channels(browser.uaid)[1]:
        assert time.monotonic() < deadline, "unregister_channel did not happen"
        time.sleep(0.02)
    assert_error(post(endpoint, b"late"), 410, 106)


# -- stale node, key rotation ----------------------------------------------------------------

def test_stale_node_is_cleared_and_message_stored(svc, client):
    doomed = svc.connection_node(crypto_key=TEST_CRYPTO_KEY).start()
    browser, chid, endpoint = connected(lambda: client(doomed))
    uaid = browser.uaid
    assert record_of(svc, uaid)["node_id"] == doomed.router_url()
    doomed.kill()
    response = post(endpoint, b"while you were away")
    assert response.status_code == 201, response.text
    assert "node_id" not in record_of(svc, uaid)
    assert [m.version for m in svc.stored(uaid)] == [message_id(response, svc)]
    again = reconnect(client, uaid)
    frame = again.recv()
    assert frame["channelID"] == chid and b64url_decode(frame["data"]) == b"while you were away"


def test_key_rotation(dynalite, tmp_path):
    k1, k2 = TEST_CRYPTO_KEY, Fernet.generate_key().decode()
    service = Service(dynalite, tmp_path, crypto_key=k1).start()
    try:
        browser = PushClient(service.cn.ws_url)
        browser.hello()
        old_endpoint = browser.register()["pushEndpoint"]
        uaid = browser.uaid
        browser.close()
        token = old_endpoint.rsplit("/", 1)[1]
        TokenCrypto([k1]).parse_endpoint_token(token, False)
        stop_together(service.cn, service.ep)
        for node in (service.cn, service.ep):
            node.env["CONNNODE_CRYPTO_KEY"] = f"{k2},{k1}"
        service.ep.start()
        service.cn.start()
        browser = PushClient(service.cn.ws_url)
        try:
            assert browser.hello(uaid)["uaid"] == uaid
            response = post(old_endpoint, b"old key still works")
            assert response.status_code == 201, response.text
            frame = browser.recv(timeout=DIRECT_FRAME_WITHIN)
            assert b64url_decode(frame["data"]) == b"old key still works"
            TokenCrypto([k2]).parse_message_id(frame["version"])
            new_endpoint = browser.register()["pushEndpoint"]
            new_token = new_endpoint.rsplit("/", 1)[1]
            TokenCrypto([k2]).parse_endpoint_token(new_token, False)
            with pytest.raises(InvalidTokenError):
                TokenCrypto([k1]).parse_endpoint_token(new_token, False)
        finally:
            browser.close()
    finally:
        service.stop()


def test_key_bound_token_digest_is_the_registered_key(svc, v2, vapid_key):
    """The v2 token carries SHA-256 of the key (4.4): read it back."""
    token = v2[2].rsplit("/", 1)[1]
    _, _, digest = svc.storage.crypto.parse_endpoint_token(token, True)
    assert digest == hashlib.sha256(raw_public(vapid_key)).digest()
