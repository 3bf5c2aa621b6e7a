"""The private router app (PROTOCOL.md 3.2-3.5, 4.11) with fake node objects:
every status row, through Flask's test client."""
import pytest
import simplejson as json

from connnode import __version__
from connnode.connection.router_app import create_router_app

UAID = "6f1c5b2ad9e84d3e9a0b7c4d2e1f0a9b"
CHID = "92d747d3-74f3-4bb4-b5a7-2113dd8f7071"
BODY = {"channelID": CHID, "version": "gAAAAABm3x", "ttl": 200, "topic": None,
        "timestamp": 1718000000, "sortkey_timestamp": 1718000000123456,
        "data": "3q2-7w", "headers": {"encoding": "aes128gcm"}}


class FakeSession:
    def __init__(self, connected_at=1718000000123, busy=False, accepts=True, check=200):
        self.connected_at = connected_at
        self.busy = busy
        self.accepts = accepts
        self.check = check
        self.delivered = []
        self.checks = 0
        self.terminated = 0

    def deliver_direct(self, notification):
        self.delivered.append(notification)
        return self.accepts

    def request_check(self):
        self.checks += 1
        return self.check

    def terminate(self):
        self.terminated += 1


class FakeMetrics:
    def __init__(self):
        self.counted = []

    def increment(self, name, count=1, tags=None):
        self.counted.append((name, count, tags))

    def timing(self, name, seconds, tags=None):
        pass


class FakeStorage:
    def __init__(self, healthy=True):
        self.healthy = healthy

    def health(self):
        if self.healthy is None:
            raise RuntimeError("boom")
        if self.healthy:
            return True, {"router": {"status": "OK"}, "storage": {"status": "OK"}}
        return False, {"router": {"status": "OK"},
                       "storage": {"status": "NOT OK", "error": "table message_2026_11 missing"}}


class FakeNode:
    def __init__(self):
        self.registry = {}
        self.storage = FakeStorage()
        self.metrics = FakeMetrics()
        self.settings = None


@pytest.fixture
def node():
    return FakeNode()


@pytest.fixture
def client(node):
    return create_router_app(node).test_client()


def put_push(client, uaid=UAID, body=BODY, raw=None):
    data = raw if raw is not None else json.dumps(body)
    return client.put(f"/push/{uaid}", data=data, content_type="application/json")


def is_text(response, body):
    return (response.get_data(as_text=True) == body
            and response.mimetype == "text/plain")


# -- 3.2 PUT /push/{uaid} ------------------------------------------------------

def test_push_delivered(client, node):
    session = node.registry[UAID] = FakeSession()
    response = put_push(client)
    assert response.status_code == 200
    assert is_text(response, "Client accepted for delivery")
    [notification] = session.delivered
    assert (notification.uaid, notification.chid, notification.version) == (UAID, CHID, "gAAAAABm3x")
    assert notification.data == "3q2-7w" and notification.headers == {"encoding": "aes128gcm"}
    assert node.metrics.counted == []  # ua.notification.topic is the session's


def test_push_topic_message(client, node):
    session = node.registry[UAID] = FakeSession()
    body = dict(BODY, topic="news", sortkey_timestamp=None)
    del body["data"], body["headers"]
    assert put_push(client, body=body).status_code == 200
    assert session.delivered[0].topic == "news"


def test_push_no_holder(client):
    response = put_push(client)
    assert response.status_code == 404
    assert is_text(response, "Client not connected.")


def test_push_holder_refuses(client, node):
    node.registry[UAID] = FakeSession(accepts=False)
    response = put_push(client)
    assert response.status_code == 404
    assert is_text(response, "Client not connected.")


def test_push_busy(client, node):
    session = node.registry[UAID] = FakeSession(busy=True)
    response = put_push(client)
    assert response.status_code == 503
    assert is_text(response, "Client busy.")
    assert session.delivered == []


@pytest.mark.parametrize("raw", [
    "", "not json", "[1, 2]", '"text"', "{}", b"\xff\xfe",
    json.dumps(dict(BODY, channelID=5)), json.dumps(dict(BODY, version=None)),
    json.dumps({k: v for k, v in BODY.items() if k != "version"}),
    json.dumps(dict(BODY, ttl="200")),
])
def test_push_invalid_body(client, node, raw):
    session = node.registry[UAID] = FakeSession()
    response = put_push(client, raw=raw)
    assert response.status_code == 400
    assert is_text(response, "Invalid body")
    assert session.delivered == []


@pytest.mark.parametrize("uaid", [UAID.upper(), UAID[:-1], UAID + "0",
                                  "6f1c5b2a-d9e8-4d3e-9a0b-7c4d2e1f0a9b", "g" * 32])
def test_push_bad_uaid_is_not_connected(client, node, uaid):
    node.registry[uaid] = FakeSession()
    response = put_push(client, uaid=uaid)
    assert response.status_code == 404
    assert is_text(response, "Client not connected.")


# -- 3.3 PUT /notif/{uaid} -----------------------------------------------------

def test_check_started(client, node):
    session = node.registry[UAID] = FakeSession(check=200)
    response = client.put(f"/notif/{UAID}")
    assert response.status_code == 200
    assert is_text(response, "Notification check started")
    assert session.checks == 1


def test_check_flagged(client, node):
    session = node.registry[UAID] = FakeSession(check=202)
    response = client.put(f"/notif/{UAID}")
    assert response.status_code == 202
    assert is_text(response, "Flagged for Notification check")
    assert session.checks == 1
    assert node.metrics.counted == []


def test_check_no_holder(client, node):
    response = client.put(f"/notif/{UAID}")
    assert response.status_code == 404
    assert is_text(response, "Client not connected.")
    node.registry[UAID.upper()] = FakeSession()
    assert client.put(f"/notif/{UAID.upper()}").status_code == 404


# -- 3.4 DELETE /notif/{uaid}/{connected_at} -----------------------------------

def test_terminate_matching_holder(client, node):
    session = node.registry[UAID] = FakeSession(connected_at=1718000000123)
    response = client.delete(f"/notif/{UAID}/1718000000123")
    assert response.status_code == 200
    assert is_text(response, "Terminated duplicate")
    assert session.terminated == 1


@pytest.mark.parametrize("connected_at", ["1718000000124", "0", "abc", "1718000000123.0",
                                          "-1718000000123", "١٢٣"])
def test_terminate_other_connection(client, node, connected_at):
    session = node.registry[UAID] = FakeSession(connected_at=1718000000123)
    response = client.delete(f"/notif/{UAID}/{connected_at}")
    assert response.status_code == 404
    assert is_text(response, "Client not connected.")
    assert session.terminated == 0


def test_terminate_no_holder(client):
    response = client.delete(f"/notif/{UAID}/1718000000123")
    assert response.status_code == 404
    assert is_text(response, "Client not connected.")


# -- 3.5 other routes, 4.11 ----------------------------------------------------

def test_status(client):
    response = client.get("/status")
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    assert response.get_json() == {"status": "OK", "version": __version__}


@pytest.mark.parametrize("path", ["/health", "/__heartbeat__"])
def test_health_ok(client, node, path):
    node.registry[UAID] = FakeSession()
    response = client.get(path)
    assert response.status_code == 200
    assert response.get_json() == {"status": "OK", "version": __version__,
                                   "router": {"status": "OK"}, "storage": {"status": "OK"},
                                   "clients": 1}


@pytest.mark.parametrize("path", ["/health", "/__heartbeat__"])
def test_health_not_ok(client, node, path):
    node.storage.healthy = False
    response = client.get(path)
    assert response.status_code == 503
    assert response.get_json() == {
        "status": "NOT OK", "version": __version__, "router": {"status": "OK"},
        "storage": {"status": "NOT OK", "error": "table message_2026_11 missing"}, "clients": 0}


def test_health_check_that_raises_is_503(client, node):
    node.storage.healthy = None
    response = client.get("/health")
    assert response.status_code == 503
    body = response.get_json()
    assert body["status"] == "NOT OK" and body["storage"]["status"] == "NOT OK"


def test_lbheartbeat(client, node):
    node.storage = None  # no storage access
    response = client.get("/__lbheartbeat__")
    assert response.status_code == 200
    assert response.get_json() == {}


def test_version(monkeypatch, node):
    monkeypatch.setenv("CONNNODE_COMMIT", "abc123")
    monkeypatch.delenv("CONNNODE_SOURCE", raising=False)
    monkeypatch.delenv("CONNNODE_BUILD", raising=False)
    response = create_router_app(node).test_client().get("/__version__")
    assert response.status_code == 200
    assert response.get_json() == {"source": "", "version": __version__,
                                   "commit": "abc123", "build": ""}


@pytest.mark.parametrize("path", ["/", "/push", "/push/", f"/push/{UAID}/x", "/notif",
                                  f"/notif/{UAID}/1/2", "/wpush/v1/abc", "/status/"])
def test_unknown_path(client, path):
    for method in ("GET", "PUT", "DELETE"):
        response = client.open(path, method=method)
        assert response.status_code == 404, (method, path)
        assert response.mimetype == "text/plain"


@pytest.mark.parametrize("method,path,allow", [
    ("GET", f"/push/{UAID}", "PUT"), ("POST", f"/push/{UAID}", "PUT"),
    ("DELETE", f"/push/{UAID}", "PUT"), ("OPTIONS", f"/push/{UAID}", "PUT"),
    ("GET", f"/notif/{UAID}", "PUT"), ("DELETE", f"/notif/{UAID}", "PUT"),
    ("PUT", f"/notif/{UAID}/1", "DELETE"), ("GET", f"/notif/{UAID}/1", "DELETE"),
    ("POST", "/status", "GET, HEAD"), ("PUT", "/health", "GET, HEAD"),
    ("DELETE", "/__heartbeat__", "GET, HEAD"), ("POST", "/__lbheartbeat__", "GET, HEAD"),
    ("OPTIONS", "/__version__", "GET, HEAD"),
])
def test_known_path_other_method(client, node, method, path, allow):
    node.registry[UAID] = FakeSession(connected_at=1)
    response = client.open(path, method=method)
    assert response.status_code == 405
    assert response.mimetype == "text/plain"
    assert sorted(response.headers["Allow"].split(", ")) == sorted(allow.split(", "))
    assert node.registry[UAID].terminated == 0


def test_head_on_status(client):
    assert client.head("/status").status_code == 200


def test_unexpected_error_is_a_short_500(node):
    class Exploding(FakeSession):
        def deliver_direct(self, notification):
            raise RuntimeError("socket gone")

    node.registry[UAID] = Exploding()
    app = create_router_app(node)
    app.logger.disabled = True
    response = put_push(app.test_client())
    assert response.status_code == 500
    assert response.mimetype == "text/plain"


def test_oversized_body_is_refused(client, node):
    node.registry[UAID] = FakeSession()
    response = put_push(client, raw="x" * (1024 * 1024 + 1))
    assert response.status_code == 413


def test_apps_do_not_share_state():
    first, second = FakeNode(), FakeNode()
    first.registry[UAID] = FakeSession()
    assert put_push(create_router_app(first).test_client()).status_code == 200
    assert put_push(create_router_app(second).test_client()).status_code == 404
