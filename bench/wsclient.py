"""A minimal asyncio WebSocket client (RFC 6455), cheap enough to hold
thousands of connections per process.

One :class:`WSConnection` is an ``asyncio.Protocol``: no stream objects, no
task per connection. It sends the opening handshake, checks the 101 answer and
``Sec-WebSocket-Accept``, sends masked text frames, parses the server's frames
(text, continuation, close, ping, pong), answers pings with pongs and close
frames with a close frame. Received text messages are either handed to a
callback (``on_text(conn, payload_bytes)``) or queued for :meth:`recv`.
:func:`adopt` takes over a socket whose handshake was made elsewhere.

    conn = await connect("127.0.0.1", 8080)
    conn.send_text('{"messageType": "hello", "use_webpush": true}')
    reply = json.loads(await conn.recv())
    conn.close()

Not a general client: no TLS, no extensions, no binary messages, no limit on
the size of what the server sends.
"""
import asyncio
import base64
import hashlib
import os
import struct
from collections import deque

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

OP_CONTINUATION, OP_TEXT, OP_BINARY = 0x0, 0x1, 0x2
OP_CLOSE, OP_PING, OP_PONG = 0x8, 0x9, 0xA


class ConnectionClosed(Exception):
    """The connection ended; ``code`` is the server's close code (None when
    TCP ended without a close frame)."""

    def __init__(self, code=None):
        super().__init__(f"connection closed (code {code})")
        self.code = code


class HandshakeError(Exception):
    pass


def mask_bytes(payload, mask):
    """XOR ``payload`` with the 4-byte ``mask`` (one big-integer XOR)."""
    n = len(payload)
    if not n:
        return b""
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")


def client_frame(opcode, payload):
    """A masked, final frame."""
    n = len(payload)
    mask = os.urandom(4)
    if n < 126:
        header = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 65536:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    return header + mask + mask_bytes(payload, mask)


def accept_key(key):
    return base64.b64encode(hashlib.sha1(key + GUID).digest())


class WSConnection(asyncio.Protocol):
    __slots__ = ("host", "port", "path", "subprotocol", "on_text", "transport", "opened",
                 "_key", "_buf", "_open", "_parts", "_messages", "_waiter", "close_code",
                 "closed", "_close_sent", "texts", "user")

    def __init__(self, host, port, path="/", subprotocol="push-notification", on_text=None):
        self.host = host
        self.port = port
        self.path = path
        self.subprotocol = subprotocol
        self.on_text = on_text
        self.transport = None
        self.opened = asyncio.get_running_loop().create_future()
        self._key = None
        self._buf = bytearray()
        self._open = False
        self._parts = None
        self._messages = None
        self._waiter = None
        self.close_code = None
        self.closed = False
        self._close_sent = False
        self.texts = 0        # text messages received
        self.user = None      # free slot for the caller

    # -- asyncio.Protocol ------------------------------------------------------
    def connection_made(self, transport):
        self.transport = transport
        if self._open:  # adopted (see adopt): no handshake; parse what came with it
            self._parse_frames()
            return
        self._key = base64.b64encode(os.urandom(16))
        lines = [f"GET {self.path} HTTP/1.1", f"Host: {self.host}:{self.port}",
                 "Upgrade: websocket", "Connection: Upgrade",
                 f"Sec-WebSocket-Key: {self._key.decode()}", "Sec-WebSocket-Version: 13"]
        if self.subprotocol:
            lines.append(f"Sec-WebSocket-Protocol: {self.subprotocol}")
        transport.write(("\r\n".join(lines) + "\r\n\r\n").encode("ascii"))

    def data_received(self, data):
        buf = self._buf
        buf += data
        if not self._open:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buf[:end]).decode("latin-1")
            del buf[:end + 4]
            error = self._check_handshake(head)
            if error:
                if not self.opened.done():
                    self.opened.set_exception(HandshakeError(error))
                self.transport.abort()
                return
            self._open = True
            if not self.opened.done():
                self.opened.set_result(self)
        self._parse_frames()

    def _check_handshake(self, head):
        lines = head.split("\r\n")
        status = lines[0].split(" ", 2)
        if len(status) < 2 or status[1] != "101":
            return f"no upgrade: {lines[0]!r}"
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if headers.get("sec-websocket-accept", "").encode() != accept_key(self._key):
            return "bad Sec-WebSocket-Accept"
        return None

    def _parse_frames(self):
        buf = self._buf
        while True:
            have = len(buf)
            if have < 2:
                return
            b0, b1 = buf[0], buf[1]
            length = b1 & 0x7F
            pos = 2
            if length == 126:
                if have < 4:
                    return
                length = (buf[2] << 8) | buf[3]
                pos = 4
            elif length == 127:
                if have < 10:
                    return
                length = struct.unpack_from("!Q", buf, 2)[0]
                pos = 10
            masked = b1 & 0x80
            if masked:
                pos += 4
            if have < pos + length:
                return
            payload = bytes(buf[pos:pos + length])
            if masked:
                payload = mask_bytes(payload, bytes(buf[pos - 4:pos]))
            del buf[:pos + length]
            opcode = b0 & 0x0F
            fin = b0 & 0x80
            if opcode == OP_TEXT or opcode == OP_CONTINUATION:
                if not fin:
                    if self._parts is None:
                        self._parts = []
                    self._parts.append(payload)
                    continue
                if self._parts is not None:
                    self._parts.append(payload)
                    payload = b"".join(self._parts)
                    self._parts = None
                self._deliver(payload)
            elif opcode == OP_PING:
                if not self._close_sent:
                    self.transport.write(client_frame(OP_PONG, payload))
            elif opcode == OP_CLOSE:
                self.close_code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                if not self._close_sent:
                    self._close_sent = True
                    self.transport.write(client_frame(OP_CLOSE, payload[:2]))
                self.transport.close()
                return
            # pong and binary: ignored

    def _deliver(self, payload):
        self.texts += 1
        if self.on_text is not None:
            self.on_text(self, payload)
            return
        if self._messages is None:
            self._messages = deque()
        self._messages.append(payload)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def connection_lost(self, exc):
        self.closed = True
        if not self.opened.done():
            self.opened.set_exception(ConnectionClosed(None))
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- the caller's side -------------------------------------------------------
    def send_text(self, text):
        if isinstance(text, str):
            text = text.encode("utf-8")
        self.transport.write(client_frame(OP_TEXT, text))

    async def recv(self):
        """The next text message (str); ConnectionClosed when there is none."""
        while True:
            if self._messages:
                return self._messages.popleft().decode("utf-8")
            if self.closed:
                raise ConnectionClosed(self.close_code)
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    def close(self, code=1000):
        """Send our close frame (once) and end TCP after the write buffer drains."""
        if self.transport is None or self.closed:
            return
        if not self._close_sent and self._open:
            self._close_sent = True
            self.transport.write(client_frame(OP_CLOSE, struct.pack("!H", code)))
        self.transport.close()

    def abort(self):
        if self.transport is not None:
            self.transport.abort()


async def connect(host, port, path="/", subprotocol="push-notification", on_text=None,
                  timeout=30.0, source=None):
    """Open TCP and complete the opening handshake; the WSConnection.
    ``source``: the local address to connect from (e.g. ``127.0.0.10``, any
    port), so that one machine can hold more than one source address's
    ephemeral ports' worth of connections to one server port."""
    loop = asyncio.get_running_loop()
    _, conn = await asyncio.wait_for(loop.create_connection(
        lambda: WSConnection(host, port, path, subprotocol, on_text), host, port,
        local_addr=(source, 0) if source else None), timeout)
    try:
        await asyncio.wait_for(asyncio.shield(conn.opened), timeout)
    except BaseException:
        conn.abort()
        raise
    return conn


async def adopt(sock, on_text=None, leftover=b""):
    """A WSConnection for ``sock``, a WebSocket whose handshake is done (e.g.
    by ``stormclient.hello_storm``); ``leftover``: bytes already read from it
    past the handshake. They are parsed in ``connection_made``, before the
    transport starts reading, so frames keep their order."""
    try:
        host, port = sock.getpeername()[:2]
    except OSError:  # already reset: the transport will find out and close
        host = port = None
    conn = WSConnection(host, port, on_text=on_text)
    conn._open = True
    conn._buf += leftover
    conn.opened.set_result(conn)
    await asyncio.get_running_loop().create_connection(lambda: conn, sock=sock)
    return conn
