"""connection/handler.py: ConnectionHandler, the HTTP side of a WebSocket
(503s, subprotocol, bad keys, the opening-handshake deadline), over real
sockets with ``wsserver.py``'s server and clients.
"""
import socket
import struct
import time

import gevent
import pytest

from tests.unit.wsserver import (WAIT, RawClient, client_frame, make_server,  # noqa: F401
                                 server)


def test_any_path_and_any_host_are_upgraded(server):
    client = RawClient(server.port, path="/some/where?x=1", host="push.example.com:443")
    assert client.status == 101
    server.session()
    client.send_text("hi")
    assert client.recv_frame() == (0x1, b"echo:hi")


def test_503_when_max_connections_reached(make_server):
    # Counted through this server's own session factory, as Node.connections
    # counts them in the node (other tests' connections may still be closing).
    server = make_server(max_connections=1, current_connections=lambda: server.app.open_sessions())
    first = RawClient(server.port)
    assert first.status == 101
    session = server.session()
    second = RawClient(server.port)
    assert second.status == 503
    assert "sec-websocket-accept" not in second.headers
    assert second.read_to_eof() == b"Too many connections"
    # Plain HTTP requests are not affected by the limit.
    plain = socket.create_connection(("127.0.0.1", server.port), timeout=WAIT)
    plain.sendall(b"GET /status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert plain.recv(100).startswith(b"HTTP/1.1 404")
    plain.close()
    # Once the first one is gone, upgrades are accepted again.
    first.send(client_frame(0x8, struct.pack("!H", 1000)))
    first.recv_close_code()
    first.assert_eof()
    assert session.closed.wait(WAIT)
    deadline = time.monotonic() + WAIT
    while server.app.open_sessions() and time.monotonic() < deadline:
        gevent.sleep(0.01)
    assert RawClient(server.port).status == 101


def test_503_uses_the_configured_counter(make_server):
    server = make_server(max_connections=5, current_connections=lambda: 5)
    assert RawClient(server.port).status == 503
    server = make_server(max_connections=5, current_connections=lambda: 4)
    assert RawClient(server.port).status == 101


@pytest.mark.parametrize("offered, selected", [
    ("push-notification", "push-notification"),
    ("chat, push-notification", "push-notification"),
    (None, None),
    ("chat", None),
    ("push-notification-v2", None),
])
def test_subprotocol_selection(server, offered, selected):
    client = RawClient(server.port, protocols=offered)
    assert client.status == 101
    assert client.headers.get("sec-websocket-protocol") == selected


def test_bad_key_is_a_400_not_a_500(server):
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=WAIT)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Key: !!!not base64!!!\r\nSec-WebSocket-Version: 13\r\n\r\n")
    assert sock.recv(100).startswith(b"HTTP/1.1 400")
    sock.close()


def test_slow_handshake_is_closed_after_the_timeout(make_server):
    server = make_server(open_handshake_timeout=0.3)
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=WAIT)
    started = time.monotonic()
    sock.sendall(b"GET / HT")
    assert sock.recv(100) == b""
    assert 0.25 <= time.monotonic() - started < 3
    sock.close()


def test_handshake_timeout_is_total_not_per_recv(make_server):
    server = make_server(open_handshake_timeout=0.3)
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=WAIT)
    sock.setblocking(False)
    started = time.monotonic()
    request = b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"y" * 200
    closed_after = None
    for byte in request:  # one byte every 20 ms: each read is quick, the total is not
        try:
            sock.send(bytes([byte]))
            gevent.sleep(0.02)
            if sock.recv(100) == b"":
                closed_after = time.monotonic() - started
                break
        except BlockingIOError:
            continue
        except OSError:
            closed_after = time.monotonic() - started
            break
    sock.close()
    assert closed_after is not None
    assert 0.25 <= closed_after < 1.0


def test_plain_requests_are_served_by_the_app(server):
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=WAIT)
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert sock.recv(100).startswith(b"HTTP/1.1 404")
    sock.close()


# -- malformed opening handshakes (PROTOCOL.md 2.1) ----------------------------------

GOOD = {"Host": "x", "Upgrade": "websocket", "Connection": "Upgrade",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version": "13"}


def handshake(port, request_line="GET / HTTP/1.1", **changes):
    """Send a handshake with ``changes`` (None drops a header); the status
    code, the headers and the body of the answer, read to EOF."""
    headers = dict(GOOD)
    for name, value in changes.items():
        name = name.replace("_", "-")
        if value is None:
            headers.pop(name, None)
        else:
            headers[name] = value
    lines = [request_line] + [f"{name}: {value}" for name, value in headers.items()]
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode().split("\r\n")
    parsed = {line.split(":", 1)[0].lower(): line.split(":", 1)[1].strip()
              for line in header_lines}
    return int(status_line.split()[1]), parsed, body


@pytest.mark.parametrize("request_line, changes, status, reason", [
    ("GET / HTTP/1.0", {}, 400, b"HTTP/1.1 required"),
    ("GET / HTTP/1.1", {"Upgrade": None}, 400, b"Upgrade: websocket required"),
    ("GET / HTTP/1.1", {"Upgrade": "h2c"}, 400, b"Upgrade: websocket required"),
    ("GET / HTTP/1.1", {"Connection": None}, 400, b"Connection: Upgrade required"),
    ("GET / HTTP/1.1", {"Connection": "keep-alive"}, 400, b"Connection: Upgrade required"),
    ("GET / HTTP/1.1", {"Sec-WebSocket-Version": "8"}, 426, b"Sec-WebSocket-Version 13 required"),
    ("GET / HTTP/1.1", {"Sec-WebSocket-Version": None}, 426, b"Sec-WebSocket-Version 13 required"),
    ("GET / HTTP/1.1", {"Sec-WebSocket-Key": None}, 400, b"Invalid Sec-WebSocket-Key"),
    ("GET / HTTP/1.1", {"Sec-WebSocket-Key": "not base64!"}, 400, b"Invalid Sec-WebSocket-Key"),
    ("GET / HTTP/1.1", {"Sec-WebSocket-Key": "c2hvcnQ="}, 400, b"Invalid Sec-WebSocket-Key"),
])
def test_malformed_handshake_gets_a_plain_status_and_one_info_line(server, caplog, request_line,
                                                                  changes, status, reason):
    caplog.set_level("DEBUG")
    code, headers, body = handshake(server.port, request_line, **changes)
    assert (code, body) == (status, reason)
    assert "sec-websocket-accept" not in headers
    if status == 426:
        assert headers["sec-websocket-version"] == "13"
    refusals = [r for r in caplog.records if r.getMessage() == "WebSocket handshake refused"]
    assert len(refusals) == 1 and refusals[0].levelname == "INFO"
    assert refusals[0].fields == {"status": status, "reason": reason.decode()}
    assert not [r for r in caplog.records if r.levelno > 20 or r.exc_info]


def raw_request(port, data):
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
        sock.sendall(data)
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    return answer


@pytest.mark.parametrize("data", [
    b"GET / HTTP/1\r\nHost: x\r\n\r\n",
    b"GET / HTTP/9.9\r\nHost: x\r\n\r\n",
    b"GARBAGE\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
    + b"".join(b"X-H%d: v\r\n" % n for n in range(2000)) + b"\r\n",
])
def test_unparseable_requests_get_400_and_one_json_friendly_line(server, caplog, capfd, data):
    caplog.set_level("DEBUG")
    answer = raw_request(server.port, data)
    assert answer.startswith(b"HTTP/1.1 400")
    assert "Traceback" not in capfd.readouterr().err
    lines = [r for r in caplog.records if r.getMessage() == "bad HTTP request"]
    assert len(lines) == 1 and lines[0].levelname == "INFO"
    assert lines[0].fields["reason"].isascii() and len(lines[0].fields["reason"]) <= 200


def test_a_header_line_without_colon_refuses_the_upgrade(server):
    lines = ["GET / HTTP/1.1"] + [f"{name}: {value}" for name, value in GOOD.items()]
    data = ("\r\n".join(lines) + "\r\nNoColonHere\r\n\r\n").encode()
    assert raw_request(server.port, data).startswith(b"HTTP/1.1 400")


# -- the hand-off of an upgraded connection (memory per idle client) ---------------

def _pipelined_client(port):
    """A handshake and a text frame sent in one write: the frame reaches the
    server in the same read as the headers (pywsgi's buffer holds it)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
                 + client_frame(0x1, b"early"))
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 101")
    return sock


def _recv_frame(sock):
    first, second = sock.recv(1)[0], sock.recv(1)[0]
    length = second & 0x7F
    payload = b""
    while len(payload) < length:
        payload += sock.recv(length - len(payload))
    return first & 0x0F, payload


def test_an_upgraded_connection_is_served_from_a_greenlet_of_its_own(make_server):
    """The node's app (``serve_websocket``): the deep pywsgi greenlet ends and
    a fresh one in the server's pool serves the connection, with the bytes
    the client sent right after its handshake."""
    from connnode.connection.handler import _UpgradedConnection

    server = make_server(serving_app=True)
    sock = _pipelined_client(server.port)
    assert _recv_frame(sock) == (0x1, b"echo:early")
    greenlets = list(server.server.pool)
    assert len(greenlets) == 1 and isinstance(greenlets[0], _UpgradedConnection)
    sock.sendall(client_frame(0x1, b"later"))
    assert _recv_frame(sock) == (0x1, b"echo:later")
    sock.close()


def test_stopping_the_server_closes_handed_off_connections_1001(make_server):
    server = make_server(serving_app=True)
    client = RawClient(server.port)
    assert client.status == 101
    server.session()
    server.server.stop(timeout=1)  # kills the pool's greenlets, as a worker's stop does
    assert client.recv_close_code() == 1001


def test_with_the_pool_full_the_connection_is_served_in_place(make_server):
    from connnode.connection.handler import _UpgradedConnection

    server = make_server(serving_app=True, pool_size=1)
    sock = _pipelined_client(server.port)
    assert _recv_frame(sock) == (0x1, b"echo:early")
    greenlets = list(server.server.pool)
    assert len(greenlets) == 1 and not isinstance(greenlets[0], _UpgradedConnection)
    sock.close()


def test_a_finished_websocket_is_collected_without_closing_it_again(server, monkeypatch):
    """gevent-websocket's ``WebSocket.__del__`` calls ``close()`` even on a
    closed object (a class built and a failed frame write per connection):
    the handler's WebSocket objects skip it."""
    from geventwebsocket.websocket import WebSocket

    seen = []
    serve = server.app.__call__
    server.server.application = lambda environ, start: (
        seen.append(environ.get("wsgi.websocket")) or serve(environ, start))
    client = RawClient(server.port)
    assert client.status == 101
    server.session()
    ws, = seen
    closes = []
    monkeypatch.setattr(WebSocket, "close", lambda self, *args, **kwargs: closes.append(args))
    ws.__del__()
    assert closes == []
    assert isinstance(ws, WebSocket)  # still gevent-websocket's object otherwise

