"""The fuzzer's side of the wire: a hand-written RFC 6455 client and the
malformed opening handshakes.

:class:`FuzzSocket` is one raw TCP connection: it builds frames byte by byte
(any opcode, RSV bits, FIN, masked or not, any declared length), sends them
whole or in small pieces, keeps the last frames sent for the report, and
reads the server's HTTP answer and frames back; every wait is a socket
timeout. ``upgrade_request``/``valid_upgrade``/``accept_for`` make and check
the opening handshake. ``HANDSHAKES`` are the malformed ones, each with the
statuses the node may answer it with; ``fuzz_handshake`` sends one and
records the status, and ``check_handshakes`` sorts the results into
deviations and requests we cut short ourselves.
"""
import base64
import collections
import hashlib
import socket
import struct

SOCKET_TIMEOUT = 10.0

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


def mask_payload(payload, key):
    n = len(payload)
    if not n:
        return b""
    stream = (key * ((n >> 2) + 1))[:n]
    xored = int.from_bytes(payload, "little") ^ int.from_bytes(stream, "little")
    return xored.to_bytes(n, "little")


class Closed(Exception):
    """The connection ended: ``how`` is "eof", "reset" or "timeout"."""

    def __init__(self, how):
        super().__init__(how)
        self.how = how


class FuzzSocket:
    """One TCP connection speaking hand-made RFC 6455 (client side)."""

    def __init__(self, port, rng):
        self.rng = rng
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=SOCKET_TIMEOUT)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        self.frames = 0
        self.chunked = False     # send in pieces of 1-40 bytes
        self.pinged = False      # the run sent its one client ping
        self.sent_close = False  # we sent a close frame
        self.sent_log = collections.deque(maxlen=6)  # (description, bytes) of the last frames

    # sending

    def frame(self, opcode, payload=b"", fin=True, rsv=0, masked=True, length=None):
        """The bytes of one frame. ``length`` overrides the declared length."""
        n = len(payload) if length is None else length
        b0 = (0x80 if fin else 0) | (rsv << 4) | opcode
        mask_bit = 0x80 if masked else 0
        if n < 126:
            header = struct.pack("!BB", b0, mask_bit | n)
        elif n <= 0xFFFF:
            header = struct.pack("!BBH", b0, mask_bit | 126, n)
        else:
            header = struct.pack("!BBQ", b0, mask_bit | 127, n)
        if masked:
            key = self.rng.randbytes(4)
            return header + key + mask_payload(payload, key)
        return header + payload

    def send(self, data, frames=1, what=""):
        self.frames += frames
        self.sent_log.append((what, bytes(data[:160]), len(data)))
        if self.chunked and len(data) < 4096:
            # in small pieces (TCP_NODELAY: separate segments), so the node
            # reads headers, masks and payloads in parts
            at = 0
            while at < len(data):
                step = self.rng.randint(1, 40)
                self.sock.sendall(data[at:at + step])
                at += step
        else:
            self.sock.sendall(data)

    def send_frame(self, what, opcode, payload=b"", **kwargs):
        self.sent_close |= opcode == OP_CLOSE
        self.send(self.frame(opcode, payload, **kwargs), what=what)

    # receiving

    def _fill(self):
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            raise Closed("timeout") from None
        except OSError:
            raise Closed("reset") from None
        if not data:
            raise Closed("eof")
        self.buf += data

    def read_exact(self, n):
        while len(self.buf) < n:
            self._fill()
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    def read_http_head(self):
        """(status line, headers) of the response; raises Closed if the
        connection ends before its blank line."""
        while b"\r\n\r\n" not in self.buf:
            self._fill()
            if len(self.buf) > 65536:
                break
        head, _, rest = bytes(self.buf).partition(b"\r\n\r\n")
        self.buf = bytearray(rest)
        lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return lines[0], headers

    def read_frame(self):
        b0, b1 = self.read_exact(2)
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack("!H", self.read_exact(2))[0]
        elif n == 127:
            n = struct.unpack("!Q", self.read_exact(8))[0]
        if b1 & 0x80:
            raise AssertionError("the server masked a frame")
        if n > 1 << 20:
            raise AssertionError(f"server frame of {n} bytes")
        return b0 & 0x80, b0 & 0x70, b0 & 0x0F, self.read_exact(n)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def upgrade_request(key, path="/", host="127.0.0.1", version="13", http="HTTP/1.1",
                    upgrade="websocket", connection="Upgrade", protocol="push-notification",
                    method="GET", extra=(), lower=False):
    """An opening handshake; any header given as None is left out."""
    headers = [("Host", host), ("Upgrade", upgrade), ("Connection", connection),
               ("Sec-WebSocket-Key", key), ("Sec-WebSocket-Version", version),
               ("Sec-WebSocket-Protocol", protocol), *extra]
    lines = [f"{method} {path} {http}"]
    for name, value in headers:
        if value is not None:
            lines.append(f"{name.lower() if lower else name}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def accept_for(key):
    return base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()


def valid_upgrade(rng, port):
    key = base64.b64encode(rng.randbytes(16)).decode()
    extra = []
    if rng.random() < 0.3:
        extra.append(("Origin", rng.choice(["null", "https://example.com", "moz-extension://x"])))
        extra.append(("User-Agent", "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) "
                                    "Gecko/20100101 Firefox/128.0"))
    request = upgrade_request(
        key, path=rng.choice(["/", "/", "/", "/?v=1", "/some/path", "/%7Efoo"]),
        host=rng.choice([f"127.0.0.1:{port}", "127.0.0.1", "push.example.com:443"]),
        upgrade=rng.choice(["websocket", "websocket", "WebSocket"]),
        connection=rng.choice(["Upgrade", "Upgrade", "keep-alive, Upgrade", "upgrade"]),
        protocol=rng.choice(["push-notification", "push-notification", None,
                             "chat, push-notification", "push-notification-x"]),
        extra=extra, lower=rng.random() < 0.2)
    return key, request



# -- malformed opening handshakes ---------------------------------------------------------
# name -> (request builder, half_close, statuses the node may answer with).
# With half_close we shut our sending side after the request, so that a node
# waiting for more header bytes sees EOF rather than its open_handshake_timeout.
# "closed" stands for a connection closed without an answer.
#
# PROTOCOL.md 2.1: a malformed handshake gets 400, or 426 with
# ``Sec-WebSocket-Version: 13`` for a wrong version, or is closed. Two
# answers outside that are not wrong: ``GET /`` with no headers is not an
# upgrade, so it gets the 404 of any other request, and a request with
# LF-only line endings is a valid upgrade to pywsgi (101). Requests whose
# head never ends (no blank line before our EOF) are not judged at all (see
# ``check_handshakes``).

def _key(rng):
    return base64.b64encode(rng.randbytes(16)).decode()


def _with_line(line):
    """A valid upgrade request with one more raw header line."""
    return lambda r: upgrade_request(_key(r)).replace(b"\r\n\r\n", b"\r\n" + line + b"\r\n\r\n")


GARBAGE_LINES = [b"GARBAGE\r\n\r\n", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
                 b"GET\r\n\r\n", b"\r\n\r\n", b"\x00\x00\x00\x00\r\n\r\n",
                 b"GET / HTTP/1.1 extra words\r\n\r\n"]
BAD_KEYS = ["not base64!!", "====", "abc", "AAAA*AAA"]
BAD_VERSIONS = ["8", "7", "12", "14", "abc", "13, 8"]
ODD_HTTP_VERSIONS = ["HTTP/1", "HTTP/", "HTTP/1.x", "HTTP/-1.1", "HTTP/1.1.1", "HTTP/1.-1", "http/1.1",
                     "HTTP/01.01"]
B64 = base64.b64encode

HANDSHAKES = {
    "missing_key": (lambda r: upgrade_request(None), False, {"400"}),
    "empty_key": (lambda r: upgrade_request(""), False, {"400"}),
    "bad_base64_key": (lambda r: upgrade_request(r.choice(BAD_KEYS)), False, {"400"}),
    "short_key": (lambda r: upgrade_request(B64(r.randbytes(10)).decode()), False, {"400"}),
    "long_key": (lambda r: upgrade_request(B64(r.randbytes(32)).decode()), False, {"400"}),
    "two_keys": (lambda r: upgrade_request(_key(r), extra=[("Sec-WebSocket-Key", _key(r))]),
                 False, {"400"}),
    "wrong_version": (lambda r: upgrade_request(_key(r), version=r.choice(BAD_VERSIONS)),
                      False, {"426"}),
    "missing_version": (lambda r: upgrade_request(_key(r), version=None), False, {"426"}),
    "http_1_0": (lambda r: upgrade_request(_key(r), http="HTTP/1.0"), False, {"400"}),
    "http_9_9": (lambda r: upgrade_request(_key(r), http="HTTP/9.9"), False, {"400"}),
    "odd_http_version": (lambda r: upgrade_request(_key(r), http=r.choice(ODD_HTTP_VERSIONS)), False,
                         {"400"}),
    # no headers at all: not an upgrade, so the 404 of any other request will do
    "http_0_9_line": (lambda r: b"GET /\r\n\r\n", True, {"400", "404", "closed"}),
    "missing_upgrade": (lambda r: upgrade_request(_key(r), upgrade=None), False, {"400"}),
    "upgrade_not_websocket": (lambda r: upgrade_request(_key(r), upgrade="h2c"), False, {"400"}),
    "missing_connection": (lambda r: upgrade_request(_key(r), connection=None), False, {"400"}),
    "connection_close": (lambda r: upgrade_request(_key(r), connection="close"), False, {"400"}),
    # only a GET opens a WebSocket: any other method is a plain request (404, 2.1)
    "post_upgrade": (lambda r: upgrade_request(_key(r), method="POST"), False, {"404"}),
    "garbage_request_line": (lambda r: r.choice(GARBAGE_LINES + [r.randbytes(r.randint(1, 300))
                                                                 + b"\r\n\r\n"]),
                             True, {"400", "closed"}),
    # pywsgi answers a request line of 8 KiB or more with its own 414
    "long_request_line": (lambda r: b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n", True,
                          {"400", "414", "closed"}),
    "header_without_colon": (_with_line(b"NoColonHere"), False, {"400"}),
    # bytes 0x80-0xFF are legal in a header value (obs-text, RFC 7230 3.2.6)
    "non_latin_header": (_with_line(b"X-Junk: \xff\xfe\xc0"), False, {"400", "101"}),
    "huge_header": (lambda r: upgrade_request(_key(r), extra=[("X-Big", "b" * 70000)]), True,
                    {"400", "closed"}),
    "many_headers": (lambda r: upgrade_request(_key(r), extra=[(f"X-H{i}", "v")
                                                               for i in range(2000)]),
                     True, {"400", "closed"}),
    "truncated_headers": (lambda r: upgrade_request(_key(r))[:r.randint(1, 120)], True,
                          {"400", "closed"}),
    # LF-only line endings: pywsgi reads them as a valid upgrade
    "bare_lf_lines": (lambda r: upgrade_request(_key(r)).replace(b"\r\n", b"\n"), True,
                      {"400", "101", "closed"}),
}


def fuzz_handshake(port, rng, name):
    """Send one malformed opening handshake; the status code seen ("closed"
    when the node closed without answering, "timeout" when it did neither).

    ``cut_short``: we shut our side before the request's head ended (no
    blank line), so pywsgi took our EOF for the end of the headers and
    answered whatever it parsed to a half-closed socket."""
    build, half_close, _ = HANDSHAKES[name]
    request = build(rng)
    cut_short = half_close and b"\r\n\r\n" not in request and b"\n\n" not in request
    conn = FuzzSocket(port, rng)
    try:
        try:
            conn.sock.sendall(request)
            if half_close:
                conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the node may answer and close before reading it all
        answer = {"request": request[:120], "size": len(request), "cut_short": cut_short}
        try:
            status, headers = conn.read_http_head()
        except Closed as closed:
            return {"status": "timeout" if closed.how == "timeout" else "closed", "line": None,
                    **answer}
        parts = status.split(" ", 2)
        code = parts[1] if len(parts) > 1 else status
        if code == "426" and headers.get("sec-websocket-version") != "13":
            code = "426-without-version-13"
        return {"status": code, "line": status, **answer}
    finally:
        conn.close()


def check_handshakes(results):
    """Sort the malformed-handshake results, ``(index, name, answer)`` each,
    into ``(deviations, cut_short)``, both ``{(name, status): (count, first
    index, its answer)}``.

    Deviations: the answers ``HANDSHAKES`` does not allow, and any 500.
    Cut short: the other answers to requests we cut short (see
    ``fuzz_handshake``), recorded but not judged.
    """
    deviations, cut_short = {}, {}
    for index, name, answer in results:
        status = answer["status"]
        if answer["cut_short"] and status != "500":
            found = cut_short
        elif status not in HANDSHAKES[name][2]:
            found = deviations
        else:
            continue
        count, first, example = found.get((name, status), (0, index, answer))
        found[(name, status)] = (count + 1, first, example)
    return deviations, cut_short
