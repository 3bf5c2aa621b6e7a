"""connection/websocket.py: the WebSocket I/O layer, over real sockets.

A gevent pywsgi server with ConnectionHandler runs in the test process on a
free 127.0.0.1 port; its WSGI app hands each WebSocket to serve_connection
with a fake session that records what it gets and echoes. Clients are
websocket-client and a raw socket client for frames no library will send.
Every wait is bounded (socket timeouts, Event/Queue timeouts).
"""
import base64
import os
import socket
import struct
import time
import tracemalloc
from types import SimpleNamespace

import gevent
import pytest
import websocket as wsclient
from gevent import pywsgi
from gevent.event import Event
from gevent.pool import Pool
from gevent.queue import Queue

from connnode.connection import websocket as cnws
from connnode.connection.websocket import ConnectionHandler, serve_connection

WAIT = 5.0


# -- server side ---------------------------------------------------------------

class FakeSession:
    """Records on_text/on_closed; echoes, and obeys a few commands."""

    def __init__(self, transport):
        self.transport = transport
        self.texts = Queue()
        self.closed_calls = 0
        self.closed = Event()
        self.release_on_closed = None

    def on_text(self, text):
        self.texts.put(text)
        if text == "boom":
            raise RuntimeError("boom")
        if text.startswith("close:"):
            self.transport.close(int(text[6:]), "bye")
        elif text.startswith("mark:"):
            pass
        else:
            self.transport.send("echo:" + text)

    def on_closed(self):
        self.closed_calls += 1
        self.closed.set()
        if self.release_on_closed is not None:
            self.release_on_closed.wait(WAIT)

    def next_text(self):
        return self.texts.get(timeout=WAIT)


class App:
    """A tiny WSGI app: WebSocket -> serve_connection, anything else -> 404."""

    def __init__(self, settings, close_safety):
        self.settings = settings
        self.close_safety = close_safety
        self.sessions = Queue()

    def app_protocol(self, path):
        return "push-notification"

    def factory(self, transport):
        session = FakeSession(transport)
        self.sessions.put(session)
        return session

    def __call__(self, environ, start_response):
        ws = environ.get("wsgi.websocket")
        if ws is None:
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found"]
        serve_connection(ws, self.factory, self.settings, close_safety=self.close_safety)
        return []


class Server:
    def __init__(self, max_frame_bytes=1024, send_high_water=65536, close_handshake_timeout=0.0,
                 close_safety=None, max_connections=0, open_handshake_timeout=5.0,
                 current_connections=None):
        settings = SimpleNamespace(max_frame_bytes=max_frame_bytes, send_high_water=send_high_water,
                                   close_handshake_timeout=close_handshake_timeout)
        self.app = App(settings, close_safety)
        attrs = {"max_connections": max_connections, "open_handshake_timeout": open_handshake_timeout}
        if current_connections is not None:
            attrs["current_connections"] = staticmethod(current_connections)
        handler = type("TestHandler", (ConnectionHandler,), attrs)
        # A pool, so that stop() kills the connections this server still holds.
        self.server = pywsgi.WSGIServer(("127.0.0.1", 0), self.app, handler_class=handler,
                                        spawn=Pool(), log=None, error_log=None)
        self.server.start()
        self.port = self.server.server_port
        self.url = f"ws://127.0.0.1:{self.port}/"

    def session(self):
        return self.app.sessions.get(timeout=WAIT)

    def stop(self):
        self.server.stop(timeout=0)


@pytest.fixture
def make_server():
    servers = []

    def make(**kwargs):
        server = Server(**kwargs)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture
def server(make_server):
    return make_server()


# -- raw client ----------------------------------------------------------------

def client_frame(opcode, payload=b"", fin=True, mask=True, rsv=0, length=None):
    """A client frame, optionally malformed (unmasked, reserved bits, lying length)."""
    n = len(payload) if length is None else length
    first = (0x80 if fin else 0) | rsv | opcode
    mask_bit = 0x80 if mask else 0
    if n < 126:
        header = struct.pack("!BB", first, mask_bit | n)
    elif n <= 0xFFFF:
        header = struct.pack("!BBH", first, mask_bit | 126, n)
    else:
        header = struct.pack("!BBQ", first, mask_bit | 127, n)
    if not mask:
        return header + payload
    key = os.urandom(4)
    return header + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


class RawClient:
    def __init__(self, port, path="/", host="127.0.0.1", protocols=None, rcvbuf=None):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(WAIT)
        self.sock.connect(("127.0.0.1", port))
        self.buf = b""
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [f"GET {path} HTTP/1.1", f"Host: {host}", "Upgrade: websocket",
                 "Connection: Upgrade", f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13"]
        if protocols is not None:
            lines.append(f"Sec-WebSocket-Protocol: {protocols}")
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        while b"\r\n\r\n" not in self.buf:
            chunk = self.sock.recv(4096)
            assert chunk, "connection closed during the handshake"
            self.buf += chunk
        head, rest = self.buf.split(b"\r\n\r\n", 1)
        self.buf = bytearray(rest)
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        self.status = int(status_line.split()[1])
        self.headers = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            self.headers[name.strip().lower()] = value.strip()

    def send(self, data):
        self.sock.sendall(data)

    def send_text(self, text):
        self.send(client_frame(0x1, text.encode()))

    def _recv_exact(self, n):
        while len(self.buf) < n:
            chunk = self.sock.recv(262144)
            if not chunk:
                raise EOFError
            self.buf += chunk
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    def recv_frame(self):
        """(opcode, payload) of the next server frame; EOFError when TCP closes."""
        b0, b1 = self._recv_exact(2)
        assert not b1 & 0x80, "server frames are never masked"
        assert b0 & 0x80, "server frames are never fragmented"
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack("!H", self._recv_exact(2))[0]
        elif n == 127:
            n = struct.unpack("!Q", self._recv_exact(8))[0]
        return b0 & 0x0F, self._recv_exact(n)

    def recv_close_code(self):
        opcode, payload = self.recv_frame()
        assert opcode == 0x8, (opcode, payload)
        return struct.unpack("!H", payload[:2])[0]

    def read_to_eof(self):
        data = bytes(self.buf)
        while True:
            chunk = self.sock.recv(65536)
            if not chunk:
                return data
            data += chunk

    def assert_eof(self):
        """The server closed TCP and sent nothing more."""
        with pytest.raises(EOFError):
            self.recv_frame()

    def close(self):
        self.sock.close()


def ws_connect(server, **kwargs):
    return wsclient.create_connection(server.url, timeout=WAIT, **kwargs)


def recv_close_code(ws):
    opcode, data = ws.recv_data()
    assert opcode == wsclient.ABNF.OPCODE_CLOSE
    return struct.unpack("!H", data[:2])[0]


# -- pure helpers ----------------------------------------------------------------

def test_socket_reader_exact_reads_across_chunks_and_read_ahead():
    from gevent import socket as gsocket
    left, right = gsocket.socketpair()
    try:
        reader = cnws.SocketReader(left, b"ab")
        assert reader.read(1) == b"a"  # from the bytes sent ahead
        right.sendall(b"cd")
        assert reader.read(3) == b"bcd"  # ahead + one recv
        sender = gevent.spawn(lambda: [right.sendall(part) or gevent.sleep(0.01)
                                       for part in (b"ef", b"gh", b"ijk")])
        assert reader.read(6) == b"efghij"  # several recvs, the rest kept
        sender.join(WAIT)
        assert reader.read(1) == b"k"
        right.close()
        assert reader.read(4) == b""  # EOF
    finally:
        left.close()

def test_upgraded_connection_keeps_no_http_leftovers_and_ends_cleanly(server):
    handler_class = server.server.handler_class
    logged, errors = [], []
    handler_class.log_request = lambda self: logged.append(self.format_request())
    handler_class.handle_error = lambda self, *exc_info: errors.append(exc_info)
    client = RawClient(server.port)
    transport = server.session().transport
    ws = transport._ws
    handler = ws.handler
    # Memory: gevent-websocket's stream and validator, the request's input
    # object and response headers are gone; the log's strings are shared.
    assert ws.stream is None and ws.raw_read is None and ws.utf8validator is None
    assert handler.wsgi_input is cnws._FINISHED_INPUT and handler.response_headers == ()
    assert handler._orig_status is cnws._SWITCHING_PROTOCOLS
    assert handler.requestline == "GET / HTTP/1.1"
    client.send(client_frame(0x8, struct.pack("!H", 1000)))
    assert client.recv_close_code() == 1000
    client.assert_eof()
    deadline = time.monotonic() + WAIT
    while not logged and time.monotonic() < deadline:
        gevent.sleep(0.01)
    assert errors == []
    assert len(logged) == 1 and '"GET / HTTP/1.1" 101 ' in logged[0]

def test_unmask_matches_the_definition():
    for n in (0, 1, 3, 4, 5, 125, 126, 4096, 65537):
        data = os.urandom(n)
        key = os.urandom(4)
        expected = bytes(b ^ key[i % 4] for i, b in enumerate(data))
        assert cnws._unmask(data, key) == expected


def test_close_frame_carries_the_code_and_a_bounded_reason():
    assert cnws.close_frame(4774, "too many pings") == b"\x88\x10" + struct.pack("!H", 4774) + b"too many pings"
    frame = cnws.close_frame(1000, "é" * 100)  # 200 bytes of UTF-8: cut to 122 on a boundary
    assert frame[1] <= 125
    frame[4:].decode("utf-8")


# -- messages --------------------------------------------------------------------

def test_text_round_trip(server):
    ws = ws_connect(server)
    session = server.session()
    ws.send("hello")
    assert ws.recv() == "echo:hello"
    ws.send("héllo ☃")
    assert ws.recv() == "echo:héllo ☃"
    assert session.next_text() == "hello"
    assert session.next_text() == "héllo ☃"
    ws.close()
    assert session.closed.wait(WAIT)
    assert session.closed_calls == 1
    assert session.transport.peer_close_code == 1000


def test_fragmented_message_is_reassembled(server):
    client = RawClient(server.port)
    session = server.session()
    client.send(client_frame(0x1, b"hel", fin=False))
    client.send(client_frame(0x9, b"mid"))  # control frames may interleave
    client.send(client_frame(0x0, "lo ☃".encode()[:4], fin=False))
    client.send(client_frame(0x0, "lo ☃".encode()[4:]))
    assert client.recv_frame() == (0xA, b"mid")
    assert session.next_text() == "hello ☃"
    assert client.recv_frame() == (0x1, "echo:hello ☃".encode())


def test_frame_of_exactly_max_frame_bytes_is_accepted(make_server):
    server = make_server(max_frame_bytes=2000)
    client = RawClient(server.port)
    session = server.session()
    client.send(client_frame(0x1, b"m" * 2000))
    assert session.next_text() == "m" * 2000


@pytest.mark.parametrize("code", [1000, 1002, 4774])
def test_close_codes_reach_the_client(server, code):
    ws = ws_connect(server)
    session = server.session()
    ws.send(f"close:{code}")
    assert recv_close_code(ws) == code  # websocket-client answers with its close frame
    assert session.closed.wait(WAIT)
    assert session.closed_calls == 1
    assert session.transport.close_code == code


def test_exception_in_on_text_closes_1011(server):
    ws = ws_connect(server)
    session = server.session()
    ws.send("boom")
    assert recv_close_code(ws) == 1011
    assert session.closed.wait(WAIT)
    assert session.closed_calls == 1


# -- violations -------------------------------------------------------------------

def test_binary_message_closes_1003(server):
    client = RawClient(server.port)
    session = server.session()
    client.send(client_frame(0x2, b"\x00\x01\x02"))
    assert client.recv_close_code() == 1003
    client.send(client_frame(0x8, struct.pack("!H", 1000)))
    client.assert_eof()
    assert session.closed.wait(WAIT)
    assert session.closed_calls == 1


def test_frame_over_max_frame_bytes_closes_1009(make_server):
    server = make_server(max_frame_bytes=1000)
    client = RawClient(server.port)
    session = server.session()
    client.send(client_frame(0x1, b"x" * 1001))
    assert client.recv_close_code() == 1009
    # The rest of the oversized frame is skipped, so the client's close
    # frame is still found and the handshake completes.
    client.send(client_frame(0x8, struct.pack("!H", 1009)))
    client.assert_eof()
    assert session.closed_calls == 1
    assert session.transport.peer_close_code == 1009
    assert session.texts.qsize() == 0


def test_fragmented_message_over_max_frame_bytes_closes_1009(make_server):
    server = make_server(max_frame_bytes=1000)
    client = RawClient(server.port)
    session = server.session()
    client.send(client_frame(0x1, b"a" * 400, fin=False))
    client.send(client_frame(0x0, b"b" * 400, fin=False))
    client.send(client_frame(0x0, b"c" * 201))
    assert client.recv_close_code() == 1009
    assert session.texts.qsize() == 0


def test_header_claiming_2_pow_62_bytes_allocates_nothing(make_server):
    server = make_server(max_frame_bytes=65536)
    client = RawClient(server.port)
    server.session()
    tracemalloc.start()
    try:
        started = time.monotonic()
        client.send(client_frame(0x1, b"", length=2 ** 62)[:10] + b"\x00" * 4 + b"z" * 100)
        assert client.recv_close_code() == 1009
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.monotonic() - started < 2
    assert peak < 2_000_000


@pytest.mark.parametrize("payload", [b"\xff\xfe", b"abc\xc3", "☃".encode()[:2] + b"x"])
def test_invalid_utf8_closes_1007(server, payload):
    client = RawClient(server.port)
    session = server.session()
    client.send(client_frame(0x1, payload))
    assert client.recv_close_code() == 1007
    assert session.texts.qsize() == 0


def test_invalid_utf8_split_across_fragments_closes_1007(server):
    client = RawClient(server.port)
    server.session()
    client.send(client_frame(0x1, b"ok\xe2", fin=False))
    client.send(client_frame(0x0, b"\x98"))  # the snowman is missing its last byte
    assert client.recv_close_code() == 1007


@pytest.mark.parametrize("frames", [
    pytest.param([client_frame(0x1, b"hi", rsv=0x40)], id="reserved-bit"),
    pytest.param([client_frame(0x3, b"hi")], id="reserved-data-opcode"),
    pytest.param([client_frame(0xB, b"")], id="reserved-control-opcode"),
    pytest.param([client_frame(0x1, b"hi", mask=False)], id="unmasked"),
    pytest.param([client_frame(0x9, b"p", fin=False)], id="fragmented-ping"),
    pytest.param([client_frame(0x9, b"p" * 126)], id="control-over-125"),
    pytest.param([client_frame(0x0, b"hi")], id="continuation-without-start"),
    pytest.param([client_frame(0x1, b"a", fin=False), client_frame(0x1, b"b")], id="text-inside-fragmented"),
    pytest.param([client_frame(0x8, b"\x03")], id="one-byte-close"),
    pytest.param([client_frame(0x8, struct.pack("!H", 1005))], id="reserved-close-code"),
    pytest.param([client_frame(0x8, struct.pack("!H", 999))], id="close-code-999"),
])
def test_protocol_errors_close_1002(server, frames):
    client = RawClient(server.port)
    session = server.session()
    for frame in frames:
        client.send(frame)
    assert client.recv_close_code() == 1002
    assert session.texts.qsize() == 0


# -- the peer's close frame -----------------------------------------------------------

@pytest.mark.parametrize("payload, answer", [
    (struct.pack("!H", 4000) + b"done", 4000),
    (struct.pack("!H", 1001), 1001),
    (b"", 1000),
])
def test_peer_close_is_answered_and_tcp_torn_down(server, payload, answer):
    client = RawClient(server.port)
    session = server.session()
    client.send(client_frame(0x8, payload))
    assert client.recv_close_code() == answer
    client.assert_eof()  # no second (code-less) close frame from gevent-websocket
    assert session.closed.wait(WAIT)
    assert session.closed_calls == 1


def test_close_reason_with_invalid_utf8_closes_1007(server):
    client = RawClient(server.port)
    server.session()
    client.send(client_frame(0x8, struct.pack("!H", 1000) + b"\xff"))
    assert client.recv_close_code() == 1007


# -- ping / pong --------------------------------------------------------------------

def test_server_ping_and_client_pong_is_recorded(server):
    ws = ws_connect(server)
    session = server.session()
    transport = session.transport
    assert transport.pong_received_since_ping  # no ping sent yet
    assert transport.ping()
    assert transport.ping_sent_at is not None
    assert not transport.pong_received_since_ping
    opcode, data = ws.recv_data(control_frame=True)  # websocket-client answers with a PONG
    assert opcode == wsclient.ABNF.OPCODE_PING and data == b""
    ws.send("mark:after-pong")  # TCP order: the PONG is processed before this message
    assert session.next_text() == "mark:after-pong"
    assert transport.pong_received_since_ping


def test_client_ping_gets_pong(server):
    ws = ws_connect(server)
    server.session()
    ws.ping(b"are you there")
    assert ws.recv_data(control_frame=True) == (wsclient.ABNF.OPCODE_PONG, b"are you there")


# -- closing from elsewhere, abort, safety ------------------------------------------

def test_close_from_another_greenlet_ends_the_read_loop(server):
    client = RawClient(server.port)
    session = server.session()
    transport = session.transport
    gevent.spawn(transport.close, 1000, "superseded").join(WAIT)
    assert transport.closing
    assert not transport.send("too late")
    opcode, payload = client.recv_frame()
    assert (opcode, payload) == (0x8, struct.pack("!H", 1000) + b"superseded")
    # The read loop waits for our close to be answered; data still in flight is dropped.
    client.send_text("ignored")
    client.send(client_frame(0x8, struct.pack("!H", 1000)))
    assert session.closed.wait(WAIT)
    client.assert_eof()
    assert session.closed_calls == 1
    assert session.texts.qsize() == 0


def _stuck_sender(transport, size=8_000_000):
    big = "q" * size
    sender = gevent.spawn(transport.send, big)
    gevent.sleep(0)
    assert not sender.ready()  # stuck in sendall, holding the send lock
    return sender, big.encode()


def test_ping_does_not_block_behind_a_stuck_sender(server):
    client = RawClient(server.port, rcvbuf=4096)
    transport = server.session().transport
    sender, big = _stuck_sender(transport)
    started = time.monotonic()
    assert transport.ping()
    assert time.monotonic() - started < 0.1
    assert client.recv_frame() == (0x1, big)
    assert client.recv_frame() == (0x9, b"")
    sender.join(WAIT)
    assert sender.value is True


def test_close_does_not_block_behind_a_stuck_sender(server):
    client = RawClient(server.port, rcvbuf=4096)
    transport = server.session().transport
    sender, big = _stuck_sender(transport)
    started = time.monotonic()
    assert transport.ping()  # queued, then cancelled: nothing follows a close frame
    transport.close(4000, "stuck")
    assert time.monotonic() - started < 0.1
    assert not transport.send("after close")
    # The frame being written stays intact and our close frame follows it.
    assert client.recv_frame() == (0x1, big)
    assert client.recv_frame() == (0x8, struct.pack("!H", 4000) + b"stuck")
    sender.join(WAIT)
    assert sender.value is True


def test_send_lock_exists_only_while_in_use_and_frames_never_interleave(server):
    client = RawClient(server.port, rcvbuf=4096)
    transport = server.session().transport
    assert transport.send("hello")
    assert client.recv_frame() == (0x1, b"hello")
    assert transport._lock is None  # memory: an idle connection holds no lock object
    sender, big = _stuck_sender(transport)
    assert transport._lock is not None
    second = gevent.spawn(transport.send, "second")
    gevent.sleep(0.05)
    assert not second.ready()  # waits for the stuck frame
    assert client.recv_frame() == (0x1, big)
    assert client.recv_frame() == (0x1, b"second")
    sender.join(WAIT)
    second.join(WAIT)
    assert sender.value is True and second.value is True
    assert transport._lock is None

def test_close_is_idempotent(server):
    client = RawClient(server.port)
    transport = server.session().transport
    transport.close(4774)
    transport.close(1000)
    assert client.recv_close_code() == 4774
    client.send(client_frame(0x8, struct.pack("!H", 4774)))
    client.assert_eof()


def test_abort_drops_tcp_without_a_close_frame(server):
    ws = ws_connect(server)
    session = server.session()
    session.transport.abort()
    with pytest.raises(wsclient.WebSocketConnectionClosedException):
        ws.recv()
    assert session.closed.wait(WAIT)
    assert session.closed_calls == 1
    assert not session.transport.send("x")


def test_safety_abort_when_the_client_never_answers_the_close(monkeypatch, server):
    monkeypatch.setattr(cnws, "CLOSE_SAFETY_SECONDS", 0.3)
    client = RawClient(server.port)
    session = server.session()
    started = time.monotonic()
    session.transport.close(1000)
    assert client.recv_close_code() == 1000
    client.assert_eof()  # no answer from us: the server drops TCP
    elapsed = time.monotonic() - started
    assert 0.25 <= elapsed < 3
    assert session.closed.wait(WAIT)
    assert session.closed_calls == 1


def test_close_handshake_timeout_limits_the_wait(make_server):
    server = make_server(close_handshake_timeout=0.2, close_safety=30)
    client = RawClient(server.port)
    session = server.session()
    started = time.monotonic()
    session.transport.close(1000)
    assert client.recv_close_code() == 1000
    client.assert_eof()
    assert 0.15 <= time.monotonic() - started < 3


def test_safety_abort_covers_a_slow_on_closed(make_server):
    server = make_server(close_safety=0.3)
    client = RawClient(server.port)
    session = server.session()
    session.release_on_closed = Event()
    started = time.monotonic()
    client.send(client_frame(0x2, b"binary"))
    assert client.recv_close_code() == 1003
    client.send(client_frame(0x8, struct.pack("!H", 1003)))  # unread: on_closed is busy
    assert session.closed.wait(WAIT)
    client.assert_eof()  # torn down while on_closed is still running
    assert 0.25 <= time.monotonic() - started < 3
    assert not session.release_on_closed.is_set()
    session.release_on_closed.set()


def test_completed_handshake_tears_down_before_on_closed(server):
    client = RawClient(server.port)
    session = server.session()
    session.release_on_closed = Event()
    started = time.monotonic()
    client.send(client_frame(0x8, struct.pack("!H", 1000)))
    assert client.recv_close_code() == 1000
    client.assert_eof()  # at once, not after the (blocked) on_closed
    assert time.monotonic() - started < 1
    assert session.closed.wait(WAIT)
    assert not session.release_on_closed.is_set()
    session.release_on_closed.set()


# -- sending ------------------------------------------------------------------------

def test_busy_when_the_client_stops_reading(make_server):
    server = make_server(send_high_water=65536, max_frame_bytes=65536)
    client = RawClient(server.port, rcvbuf=4096)
    transport = server.session().transport
    assert not transport.busy
    chunk = "b" * 32768
    sender = gevent.spawn(lambda: [transport.send(chunk) for _ in range(100)])
    deadline = time.monotonic() + WAIT
    while not transport.busy and time.monotonic() < deadline:
        gevent.sleep(0.01)
    assert transport.busy
    kernel_seen = transport._kernel_unsent()
    assert kernel_seen > 0  # TIOCOUTQ sees the bytes stuck in the kernel
    received = 0
    while received < 100:
        opcode, payload = client.recv_frame()
        assert (opcode, payload) == (0x1, chunk.encode())
        received += 1
    sender.join(WAIT)
    assert sender.value == [True] * 100
    deadline = time.monotonic() + WAIT
    while transport.busy and time.monotonic() < deadline:
        gevent.sleep(0.01)
    assert not transport.busy


def test_busy_asks_the_kernel_only_when_its_bound_could_pass_high_water(make_server, monkeypatch):
    server = make_server(send_high_water=65536, max_frame_bytes=65536)
    client = RawClient(server.port)  # held open: its kernel acks what is sent
    transport = server.session().transport
    readings = []
    real = cnws.Transport._kernel_unsent
    monkeypatch.setattr(cnws.Transport, "_kernel_unsent",
                        lambda self: readings.append(real(self)) or readings[-1])
    for _ in range(10):
        assert transport.send("a" * 1000)
        assert not transport.busy
    assert readings == []  # 10,000 bytes written: the queue cannot hold more than that
    assert transport.send("b" * 60000)
    deadline = time.monotonic() + WAIT
    while transport.busy and time.monotonic() < deadline:  # the client has acked it all
        gevent.sleep(0.01)
    asked = len(readings)
    assert asked >= 1
    assert not transport.busy and len(readings) == asked  # the fresh reading is the new bound
    client.sock.close()


def test_concurrent_sends_produce_intact_frames(server):
    # A small receive buffer makes each sendall block half way through its
    # frame, which is when a second sender could slip its bytes in.
    client = RawClient(server.port, rcvbuf=4096)
    transport = server.session().transport
    messages = {str(i) * 1 + ":" + chr(0x41 + i) * 200_000 for i in range(20)}
    start = Event()

    def push(text):
        start.wait()
        return transport.send(text)

    senders = [gevent.spawn(push, text) for text in messages]
    gevent.sleep(0)
    start.set()
    got = set()
    for _ in range(20):
        opcode, payload = client.recv_frame()
        assert opcode == 0x1
        got.add(payload.decode())
    gevent.joinall(senders, timeout=WAIT)
    assert all(s.value for s in senders)
    assert got == messages


# -- the handler -----------------------------------------------------------------------

def test_any_path_and_any_host_are_upgraded(server):
    client = RawClient(server.port, path="/some/where?x=1", host="push.example.com:443")
    assert client.status == 101
    server.session()
    client.send_text("hi")
    assert client.recv_frame() == (0x1, b"echo:hi")


def test_503_when_max_connections_reached(make_server):
    baseline = cnws.open_websockets()  # other tests' connections may still be closing
    server = make_server(max_connections=1, current_connections=lambda: cnws.open_websockets() - baseline)
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
    while cnws.open_websockets() > baseline and time.monotonic() < deadline:
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
