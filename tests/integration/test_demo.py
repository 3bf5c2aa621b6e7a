"""The demo page (issue 12) against real nodes: a gunicorn endpoint node with
``demo_page`` on, a connection node, dynalite, and a websocket-client as the
browser. /demo/send must deliver what a real subscription can decrypt, and
refuse anything that is not this node's subscription."""
import uuid

import pytest
import requests

from connnode.encoding import b64url_decode
from connnode.endpoint.demo import KEY_FILE
from tests.harness import ConnectionNode, EndpointNode, PushClient, browser_keys, decrypt

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def nodes(dynalite, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("demo")
    suffix = uuid.uuid4().hex[:8]
    tables = {"router": f"router_{suffix}", "message": f"message_{suffix}"}
    ep = EndpointNode(dynalite, tables, log_path=tmp / "ep.log", demo_page="true",
                      data_dir=tmp / "var")
    cn = ConnectionNode(dynalite, tables, endpoint_url=ep.url, log_path=tmp / "cn.log",
                        hello_timeout=5, close_handshake_timeout=1)
    try:
        ep.start()
        cn.start()
        yield ep, cn, tmp / "var"
    finally:
        cn.stop()
        ep.stop()


def subscribe(ep, cn):
    """A browser's subscription made with the demo key: (client, subscription, keys)."""
    key = requests.get(f"{ep.url}/demo/config.json", timeout=5).json()["applicationServerKey"]
    client = PushClient(cn.ws_url)
    client.hello()
    registered = client.register(key=key)
    assert registered["status"] == 200
    private_key, auth, keys = browser_keys()
    return client, {"endpoint": registered["pushEndpoint"], "keys": keys}, (private_key, auth)


def send(ep, **document):
    return requests.post(f"{ep.url}/demo/send", json=document, timeout=10)


def test_the_page_is_served(nodes):
    ep, _, data_dir = nodes
    page = requests.get(f"{ep.url}/demo", timeout=5)
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    assert "connnode push demo" in page.text
    worker = requests.get(f"{ep.url}/demo/sw.js", timeout=5)
    assert worker.status_code == 200
    assert worker.headers["Content-Type"].startswith("text/javascript")
    config = requests.get(f"{ep.url}/demo/config.json", timeout=5).json()
    assert config["endpointUrl"] == ep.url
    assert len(b64url_decode(config["applicationServerKey"])) == 65
    assert (data_dir / KEY_FILE).is_file()


def test_send_delivers_what_the_subscription_decrypts(nodes):
    ep, cn, _ = nodes
    client, subscription, (private_key, auth) = subscribe(ep, cn)
    try:
        assert "/wpush/v2/" in subscription["endpoint"]
        answer = send(ep, subscription=subscription, text="h\u00e9llo from the demo")
        assert answer.status_code == 201, answer.text
        assert answer.json()["status"] == 201
        assert answer.json()["location"].startswith(ep.url + "/m/")
        frame = client.recv(timeout=10)
        assert frame["messageType"] == "notification"
        assert decrypt(frame, private_key, auth) == "h\u00e9llo from the demo".encode()
        client.ack(frame)
    finally:
        client.close()


def test_the_endpoints_refusal_is_passed_on(nodes):
    ep, cn, _ = nodes
    client, subscription, _ = subscribe(ep, cn)
    client.close()
    # A token of this node that no longer decrypts: the endpoint's own 404/102.
    subscription["endpoint"] = subscription["endpoint"][:-8] + "AAAAAAAA"
    answer = send(ep, subscription=subscription, text="x")
    assert answer.status_code == 404 and answer.json()["endpoint"]["errno"] == 102


def test_foreign_endpoints_and_garbage_are_refused(nodes):
    ep, cn, _ = nodes
    client, subscription, _ = subscribe(ep, cn)
    try:
        token = subscription["endpoint"].split("/wpush/", 1)[1]
        for foreign in (f"https://updates.push.services.mozilla.com/wpush/{token}",
                        f"http://127.0.0.1:{cn.port}/wpush/{token}",
                        f"{cn.router_url()}/wpush/{token}"):
            answer = send(ep, subscription={**subscription, "endpoint": foreign}, text="x")
            assert answer.status_code == 400, foreign
            assert "not on this push service" in answer.json()["message"]
        for raw in (b"", b"garbage", b"{}", b'{"subscription": {}}', b"\x00" * 20000):
            answer = requests.post(f"{ep.url}/demo/send", data=raw, timeout=10)
            assert answer.status_code == 400, raw[:20]
            assert answer.json()["code"] == 400
        with pytest.raises(Exception):
            client.recv(timeout=0.5)  # nothing was delivered
    finally:
        client.close()


def test_the_key_survives_a_restart(nodes):
    ep, cn, data_dir = nodes
    before = (data_dir / KEY_FILE).read_bytes()
    ep.stop()
    ep.start()
    assert (data_dir / KEY_FILE).read_bytes() == before
    client, subscription, (private_key, auth) = subscribe(ep, cn)
    try:
        assert send(ep, subscription=subscription, text="after").status_code == 201
        assert decrypt(client.recv(timeout=10), private_key, auth) == b"after"
    finally:
        client.close()


def test_pywebpush_from_a_shell_with_the_demo_key(nodes):
    """README "Try it in Firefox": the subscription the page shows, sent to
    with pywebpush and the demo key file."""
    from pywebpush import webpush
    ep, cn, data_dir = nodes
    client, subscription, (private_key, auth) = subscribe(ep, cn)
    try:
        page_json = {**subscription, "expirationTime": None}  # PushSubscription.toJSON()
        response = webpush(page_json, "hello from a shell",
                           vapid_private_key=str(data_dir / KEY_FILE),
                           vapid_claims={"sub": "mailto:you@example.com"},
                           content_encoding="aes128gcm", ttl=60, timeout=10)
        assert response.status_code == 201, response.text
        assert decrypt(client.recv(timeout=10), private_key, auth) == b"hello from a shell"
    finally:
        client.close()
