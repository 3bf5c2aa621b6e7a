"""NodeClient against small gevent servers: statuses, connection errors,
timeouts, keep-alive reuse."""
import socket
import time

import gevent
import gevent.event
import pytest
import simplejson as json
from gevent import pywsgi

from connnode.nodeclient import NodeClient, NodeConnectionError
from connnode.settings import Settings


class Recorder:
    """A WSGI app that remembers each request and answers with ``status``."""

    def __init__(self, status="200 OK"):
        self.status = status
        self.requests = []

    def __call__(self, environ, start_response):
        body = environ["wsgi.input"].read()
        self.requests.append({
            "method": environ["REQUEST_METHOD"], "path": environ["PATH_INFO"],
            "peer_port": environ["REMOTE_PORT"], "body": body,
            "content_type": environ.get("CONTENT_TYPE")})
        start_response(self.status, [("Content-Type", "text/plain")])
        return [b"ok"]


@pytest.fixture
def server():
    app = Recorder()
    srv = pywsgi.WSGIServer(("127.0.0.1", 0), app, log=None)
    srv.start()
    app.url = f"http://127.0.0.1:{srv.server_port}"
    yield app
    srv.stop(timeout=1)


TRANSPORT = {"wire_http_calls": True}


@pytest.fixture(autouse=True, params=[True, False], ids=["wire", "urllib3"])
def wire_http_calls(request, monkeypatch):
    """Every test runs against both transports (connnode/wire.py, urllib3)."""
    monkeypatch.setitem(TRANSPORT, "wire_http_calls", request.param)
    return request.param


def client(**overrides):
    return NodeClient(Settings(hostname="127.0.0.1", **{**TRANSPORT, **overrides}))


def free_port():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


def test_put_with_json_body(server):
    status = client().put(server.url + "/push/" + "a" * 32, {"channelID": "x", "version": "v"})
    assert status == 200
    request = server.requests[0]
    assert request["method"] == "PUT"
    assert request["path"] == "/push/" + "a" * 32
    assert request["content_type"] == "application/json"
    assert json.loads(request["body"]) == {"channelID": "x", "version": "v"}


def test_put_without_body_and_delete(server):
    nodes = client()
    assert nodes.put(server.url + "/notif/" + "b" * 32) == 200
    assert nodes.delete(server.url + "/notif/" + "b" * 32 + "/1718000000123") == 200
    assert [(r["method"], r["body"]) for r in server.requests] == [("PUT", b""), ("DELETE", b"")]


@pytest.mark.parametrize("status", ["404 Not Found", "503 Service Unavailable",
                                    "202 Accepted", "301 Moved Permanently"])
def test_any_http_status_is_returned(server, status):
    server.status = status
    assert client().put(server.url + "/push/x", {}) == int(status.split()[0])


def test_keep_alive_reuses_one_connection(server):
    nodes = client()
    for _ in range(3):
        assert nodes.put(server.url + "/notif/x") == 200
    ports = {request["peer_port"] for request in server.requests}
    assert len(server.requests) == 3 and len(ports) == 1


def test_connection_refused():
    started = time.monotonic()
    with pytest.raises(NodeConnectionError):
        client().put(f"http://127.0.0.1:{free_port()}/push/x", {})
    assert time.monotonic() - started < 1.0


def test_dns_failure():
    with pytest.raises(NodeConnectionError):
        client().delete("http://no-such-node.invalid:8100/notif/x/1")


def test_server_that_never_answers_times_out():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)  # the kernel completes the handshake; nobody reads
    try:
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/push/x"
        started = time.monotonic()
        with pytest.raises(NodeConnectionError):
            client(router_request_timeout=0.3).put(url, {})
        elapsed = time.monotonic() - started
        assert 0.25 < elapsed < 1.0
    finally:
        listener.close()


def test_reset_by_peer():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)

    def accept_and_close():
        conn, _ = listener.accept()
        conn.recv(1024)
        conn.close()

    worker = gevent.spawn(accept_and_close)
    try:
        with pytest.raises(NodeConnectionError):
            client().put(f"http://127.0.0.1:{listener.getsockname()[1]}/push/x", {})
    finally:
        worker.join(timeout=2)
        listener.close()


def test_default_timeouts_follow_settings():
    nodes = client()
    assert nodes.timeout.connect_timeout == 0.5
    assert nodes.timeout.total == 3.0


def test_a_burst_above_the_pool_waits_for_connections_instead_of_opening_more(server,
                                                                                  monkeypatch):
    """More concurrent calls than pooled connections: they take turns on the
    pool's connections (no extra connection opened and thrown away)."""
    from connnode import nodeclient
    monkeypatch.setattr(nodeclient, "POOL_MAXSIZE", 2)
    made = client()
    calls = [gevent.spawn(made.put, server.url + "/notif/" + "a" * 32) for _ in range(20)]
    gevent.joinall(calls, timeout=10)
    assert [call.value for call in calls] == [200] * 20
    assert len({request["peer_port"] for request in server.requests}) <= 2


def test_no_free_connection_in_time_is_busy_not_a_connection_error(monkeypatch):
    """A pool whose connections are all held past router_request_timeout
    answers 503 (store the message, keep the record), not a dead node."""
    from connnode import nodeclient
    monkeypatch.setattr(nodeclient, "POOL_MAXSIZE", 1)
    release = gevent.event.Event()

    def slow(environ, start_response):
        release.wait(5)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]
    srv = pywsgi.WSGIServer(("127.0.0.1", 0), slow, log=None)
    srv.start()
    try:
        made = client(router_request_timeout=2)
        made.pool_timeout = 0.2  # shorter than the holder's call, for the test
        url = f"http://127.0.0.1:{srv.server_port}/notif/" + "a" * 32
        holder = gevent.spawn(made.put, url)
        gevent.sleep(0.05)  # the holder has the one connection
        assert made.put(url) == 503
        release.set()
        holder.join(5)
    finally:
        srv.stop(timeout=1)
