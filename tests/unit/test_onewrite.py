"""One write per request (connnode/onewrite.py): the node client's and the
boto3 client's requests reach a small gevent server intact, each put on the
wire by a single sendall."""
import gevent.socket
import pytest
import simplejson as json
from gevent import pywsgi

from connnode.db.dynamo import make_client
from connnode.nodeclient import NodeClient
from connnode.onewrite import FLUSH_BYTES
from connnode.settings import Settings


class Recorder:
    def __init__(self, body=b"{}", content_type="application/x-amz-json-1.0"):
        self.body = body
        self.content_type = content_type
        self.bodies = []

    def __call__(self, environ, start_response):
        self.bodies.append(environ["wsgi.input"].read())
        start_response("200 OK", [("Content-Type", self.content_type)])
        return [self.body]


@pytest.fixture
def server():
    app = Recorder()
    srv = pywsgi.WSGIServer(("127.0.0.1", 0), app, log=None)
    srv.start()
    app.url = f"http://127.0.0.1:{srv.server_port}"
    yield app
    srv.stop(timeout=1)


@pytest.fixture
def writes(monkeypatch, server):
    """Payloads of every sendall made to ``server`` by this process's gevent sockets."""
    seen = []
    real = gevent.socket.socket.sendall
    port = int(server.url.rsplit(":", 1)[1])

    def counting(sock, data, *args):
        if sock.getpeername()[1] == port:
            seen.append(bytes(data))
        return real(sock, data, *args)

    monkeypatch.setattr(gevent.socket.socket, "sendall", counting)
    return seen


def settings(**overrides):
    """The urllib3 transport, which is what connnode/onewrite.py changes
    (connnode/wire.py writes once by construction: tests/unit/test_wire.py)."""
    return Settings(statsd_host="", hostname="127.0.0.1", wire_http_calls=False, **overrides)


def test_node_client_put_is_one_write(server, writes):
    client = NodeClient(settings())
    assert client.put(f"{server.url}/push/abc", {"version": "v1"}) == 200
    assert client.put(f"{server.url}/push/abc", {"version": "v2"}) == 200  # a kept-alive connection
    assert len(writes) == 2
    assert all(write.startswith(b"PUT /push/abc HTTP/1.1\r\n") for write in writes)
    assert writes[1].endswith(b'\r\n\r\n{"version":"v2"}')
    assert server.bodies == [b'{"version":"v1"}', b'{"version":"v2"}']


def test_node_client_put_without_body_is_one_write(server, writes):
    assert NodeClient(settings()).put(f"{server.url}/notif/abc") == 200
    assert len(writes) == 1 and server.bodies == [b""]


def test_a_body_over_the_flush_size_arrives_whole(server, writes):
    big = {"data": "x" * (FLUSH_BYTES + 10)}
    assert NodeClient(settings()).put(f"{server.url}/push/abc", big) == 200
    assert len(writes) == 2  # the header block first, then the body alone
    assert json.loads(server.bodies[0]) == big


def test_boto3_request_is_one_write(server, writes):
    client = make_client(settings(aws_ddb_endpoint=server.url))
    assert "Item" not in client.get_item(TableName="router", Key={"uaid": {"S": "x"}},
                                         ConsistentRead=True)
    assert len(writes) == 1
    assert writes[0].startswith(b"POST / HTTP/1.1\r\n")
    assert writes[0].endswith(server.bodies[0]) and b'"ConsistentRead": true' in server.bodies[0]


def test_a_connection_used_moments_ago_is_not_polled_an_idle_one_is(monkeypatch):
    import socket
    import time

    import urllib3.connection

    from connnode import onewrite

    polls = []
    monkeypatch.setattr(urllib3.connection, "wait_for_read",
                        lambda sock, timeout=None: polls.append(timeout) or True)  # "readable": dropped
    conn = onewrite.one_write_pools()["http"].ConnectionCls("127.0.0.1", 9)
    assert conn.is_connected is False and polls == []  # no socket yet
    conn.sock, peer = socket.socketpair()
    try:
        conn._used_at = time.monotonic()
        assert conn.is_connected is True and polls == []  # used moments ago: no poll
        conn._used_at = time.monotonic() - onewrite.RECHECK_IDLE - 0.1
        assert conn.is_connected is False and polls == [0.0]  # idle: urllib3's check decides
    finally:
        conn.sock.close()
        peer.close()
