"""A WebSocket server and raw clients for test_transport.py and test_handler.py.

A gevent pywsgi server with ConnectionHandler runs in the test process on a
free 127.0.0.1 port; its WSGI app hands each WebSocket to serve_connection
with a fake session that records what it gets and echoes. Clients are
websocket-client and a raw socket client for frames no library will send.
Every wait is bounded (socket timeouts, Event/Queue timeouts).

Test modules import the ``make_server`` and ``server`` fixtures from here.
"""
import base64
import os
import socket
import struct
from types import SimpleNamespace

import pytest
import websocket as wsclient
from gevent import pywsgi
from gevent.event import Event
from gevent.pool import Pool
from gevent.queue import Queue

from connnode.connection.handler import ConnectionHandler
from connnode.connection.transport import serve_connection

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
        self.made = []  # every session the factory made

    def app_protocol(self, path):
        return "push-notification"

    def factory(self, transport):
        session = FakeSession(transport)
        self.made.append(session)
        self.sessions.put(session)
        return session

    def open_sessions(self):
        """Sessions made and not yet closed: counted like ``Node.connections``
        (up in the session factory, down in ``on_closed``)."""
        return sum(1 for session in self.made if not session.closed_calls)

    def __call__(self, environ, start_response):
        ws = environ.get("wsgi.websocket")
        if ws is None:
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found"]
        serve_connection(ws, self.factory, self.settings, close_safety=self.close_safety)
        return []


class ServingApp(App):
    """The same app with ``serve_websocket``, as the node's PublicApp has:
    the handler hands its upgraded connections off to greenlets of their own."""

    def serve_websocket(self, environ):
        serve_connection(environ["wsgi.websocket"], self.factory, self.settings,
                         close_safety=self.close_safety)


class Server:
    def __init__(self, max_frame_bytes=1024, send_high_water=65536, close_handshake_timeout=0.0,
                 close_safety=None, max_connections=0, open_handshake_timeout=5.0,
                 current_connections=None, serving_app=False, pool_size=None):
        settings = SimpleNamespace(max_frame_bytes=max_frame_bytes, send_high_water=send_high_water,
                                   close_handshake_timeout=close_handshake_timeout)
        self.app = (ServingApp if serving_app else App)(settings, close_safety)
        attrs = {"max_connections": max_connections, "open_handshake_timeout": open_handshake_timeout}
        if current_connections is not None:
            attrs["current_connections"] = staticmethod(current_connections)
        handler = type("TestHandler", (ConnectionHandler,), attrs)
        # A pool, so that stop() kills the connections this server still holds.
        self.server = pywsgi.WSGIServer(("127.0.0.1", 0), self.app, handler_class=handler,
                                        spawn=Pool(pool_size), log=None, error_log=None)
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

