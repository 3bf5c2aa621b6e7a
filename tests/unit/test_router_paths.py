"""The private router app behind a real gevent pywsgi server: request lines
as other nodes (or a confused proxy) send them, paths exactly as written."""
import socket

import gevent
import pytest
import simplejson as json
from gevent import pywsgi

from connnode.connection.router_app import create_router_app
from tests.unit.test_router_app import BODY, UAID, FakeNode, FakeSession


@pytest.fixture
def router():
    node = FakeNode()
    node.registry[UAID] = FakeSession()
    server = pywsgi.WSGIServer(("127.0.0.1", 0), create_router_app(node), log=None)
    server.start()
    yield node, server.server_port
    server.stop(timeout=1)


def request(port, line, body=b""):
    """The status line the server answers ``line`` with (one request, then close)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(line.encode() + b"\r\nHost: router\r\nConnection: close\r\n"
                     + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        answer = b""
        with gevent.Timeout(5):
            while chunk := sock.recv(4096):
                answer += chunk
    return answer.split(b"\r\n", 1)[0].decode()


@pytest.mark.parametrize("line", [
    f"PUT //push/{UAID} HTTP/1.1",
    f"PUT /push//{UAID} HTTP/1.1",
    f"PUT //notif/{UAID} HTTP/1.1",
    f"DELETE //notif/{UAID}/1718000000123 HTTP/1.1",
    "GET //status HTTP/1.1",
])
def test_paths_with_doubled_slashes_are_404(router, line):
    node, port = router
    assert request(port, line, json.dumps(BODY).encode()).split(" ", 2)[1] == "404"
    session = node.registry[UAID]
    assert (session.delivered, session.checks, session.terminated) == ([], 0, 0)


def test_exact_push_path_still_delivers(router):
    node, port = router
    assert request(port, f"PUT /push/{UAID} HTTP/1.1", json.dumps(BODY).encode()).startswith(
        "HTTP/1.1 200")
    assert len(node.registry[UAID].delivered) == 1


def test_minimal_push_body_is_accepted(router):
    """PROTOCOL.md 3.2: a JSON object with string channelID and version."""
    node, port = router
    body = json.dumps({"channelID": BODY["channelID"], "version": "v1"}).encode()
    assert request(port, f"PUT /push/{UAID} HTTP/1.1", body).startswith("HTTP/1.1 200")
    (delivered,) = node.registry[UAID].delivered
    assert (delivered.chid, delivered.version, delivered.ttl) == (BODY["channelID"], "v1", 0)
