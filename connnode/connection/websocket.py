"""The thin I/O layer between a gevent-websocket connection and its Session.

The Session (``session.py``) is a state machine that never touches a socket;
this module owns the socket side of one WebSocket (PROTOCOL.md 2.1, 2.2, 2.12,
2.14, 2.16):

* :class:`Transport` is the connection as the Session sees it: ``send`` text
  frames under one send lock, ``ping``, ``close`` with a real status code,
  ``abort``, the ``busy`` back-pressure flag, and ``next_message``, a bounded
  frame reader that returns complete text messages and enforces the close
  codes 1002 / 1003 / 1007 / 1009 itself.
* :func:`serve_connection` runs one WebSocket to its end: read loop, session
  callbacks, close handshake and the close-handshake safety abort.
* :class:`ConnectionHandler` is the gevent-websocket handler the connection
  node runs under gunicorn: 503 above ``max_connections``, opening-handshake
  deadline, exact subprotocol matching, no broken close frames.

gevent-websocket 0.10.1 is used only for the HTTP upgrade and as the holder of
the stream; its frame code is bypassed because, on Python 3, it:

* never puts the status code into close frames (``WebSocket.close`` sends the
  reason alone, so clients read garbage codes);
* reads frames of any declared length (a header may claim 2**63 bytes) and
  unmasks byte by byte in Python;
* lets two greenlets interleave frames on one socket;
* matches the subprotocol by substring (``push-notification-x`` would select
  ``push-notification``), answers bad keys with a 500 and writes ``str``
  bodies for its 4xx answers (a ``TypeError`` on Python 3).

No greenlet is kept per connection besides the one serving it: the close
deadlines are one-shot hub timers armed only once our close frame is sent.
"""
import base64
import binascii
import fcntl
import logging
import select
import socket
import struct
import sys
import termios
import time

import gevent
from gevent.lock import Semaphore
from gevent.monkey import get_original
from gevent.timeout import Timeout
from geventwebsocket.handler import WebSocketHandler

log = logging.getLogger(__name__)

#: Seconds after our close frame by which the TCP connection is torn down in
#: every case, on top of ``close_handshake_timeout`` (PROTOCOL 2.12). Tests
#: may monkeypatch it, or pass ``close_safety`` to :func:`serve_connection`.
CLOSE_SAFETY_SECONDS = 10.0

#: The subprotocol the connection node selects when a client offers it.
SUBPROTOCOL = "push-notification"

OP_CONTINUATION = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_UNSUPPORTED_DATA = 1003
CLOSE_INVALID_PAYLOAD = 1007
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL_ERROR = 1011

_MAX_CONTROL_PAYLOAD = 125
_MAX_CLOSE_REASON = _MAX_CONTROL_PAYLOAD - 2
_DISCARD_CHUNK = 16384
_PING_FRAME = b"\x89\x00"
_TIOCOUTQ = getattr(termios, "TIOCOUTQ", None)
_INT_ZERO = b"\0\0\0\0"
_poll = get_original("select", "poll")  # the real one: poll(0) never yields
_POLLOUT = select.POLLOUT

# Transport._flags bits.
_CLOSING = 0x01      # our close frame is sent (or queued), or the socket is dropped
_PEER_CLOSED = 0x02  # the peer's close frame arrived
_DEAD = 0x04         # EOF, socket error, or aborted: nothing more can be read or sent
_PONG_SEEN = 0x08    # a PONG arrived since the last ping()
_PINGED = 0x10       # ping() was called at least once
_TORN_DOWN = 0x20    # serve_connection has finished with the socket
_STOP_SENDING = _CLOSING | _PEER_CLOSED | _DEAD


class ProtocolViolation(Exception):
    """The client broke RFC 6455 or our limits; ``code`` is the close code to send.

    ``skip`` is the number of bytes of the offending frame still unread
    (mask and payload), so the close handshake can resynchronise on the
    frame boundary and still find the client's close frame.
    """

    def __init__(self, code, reason, skip=0):
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.skip = skip


class _EndOfStream(Exception):
    """The peer closed TCP (possibly in the middle of a frame)."""


class HandshakeTimeout(OSError):
    """The opening handshake did not complete within ``open_handshake_timeout``.

    An ``OSError`` so that gevent's request loop treats it as a dropped
    client (it closes the connection without an answer).
    """


def _unmask(data, mask):
    """XOR ``data`` with the 4-byte ``mask``, on whole big integers (C speed)."""
    n = len(data)
    if not n:
        return b""
    key = (mask * ((n >> 2) + 1))[:n]
    return (int.from_bytes(data, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")


def _frame(opcode, payload):
    """A final, unmasked server frame."""
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", 0x80 | opcode, n)
    elif n <= 0xFFFF:
        header = struct.pack("!BBH", 0x80 | opcode, 126, n)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 127, n)
    return header + payload


def close_frame(code, reason=""):
    """A close frame carrying ``code`` (2 bytes, network order) and ``reason``.

    The reason is cut to the 123 bytes a control frame leaves, on a UTF-8
    character boundary.
    """
    data = reason.encode("utf-8") if isinstance(reason, str) else bytes(reason or b"")
    if len(data) > _MAX_CLOSE_REASON:
        data = data[:_MAX_CLOSE_REASON].decode("utf-8", "ignore").encode("utf-8")
    return _frame(OP_CLOSE, struct.pack("!H", code) + data)


def valid_close_code(code):
    """Close codes a peer may put on the wire (RFC 6455 7.4, IANA registry)."""
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999


class Transport:
    """One WebSocket connection as the Session sees it.

    ``send``/``ping``/``close``/``abort`` may be called from any greenlet;
    ``next_message`` is called by the connection's own greenlet
    (:func:`serve_connection`). Nothing here raises on a dead socket: sends
    answer ``False`` and the read loop ends.
    """

    __slots__ = (
        "_ws", "_sock", "_reader", "_lock", "_flags", "_pending", "_unsent_bound", "_max_frame",
        "_high_water", "_close_wait", "_safety", "_timer", "_skip", "_closer",
        "ping_sent_at", "close_code", "peer_close_code",
    )

    def __init__(self, ws, max_frame_bytes: int, send_high_water: int, *,
                 close_handshake_timeout: float = 0.0, close_safety: float | None = None,
                 reader=None):
        self._ws = ws
        self._sock = ws.handler.socket
        # The object, not its bound ``read`` (memory: a bound method per
        # connection). By default the SocketReader _release_http_state put in.
        self._reader = ws.handler.rfile if reader is None else reader
        self._lock = None  # the send lock, made while in use (see _acquire_send_lock)
        self._flags = 0
        self._pending = 0
        self._unsent_bound = 0
        self._max_frame = max_frame_bytes
        self._high_water = send_high_water
        self._close_wait = close_handshake_timeout or 0.0
        self._safety = CLOSE_SAFETY_SECONDS if close_safety is None else close_safety
        self._timer = None
        self._skip = 0
        self._closer = None
        #: ``time.monotonic()`` of the last ``ping()``, or None.
        self.ping_sent_at = None
        #: The code of the close frame we sent, or None.
        self.close_code = None
        #: The code in the peer's close frame (1005 when it had none), or None.
        self.peer_close_code = None

    # -- state -------------------------------------------------------------

    @property
    def closing(self) -> bool:
        """Our close frame is sent or queued, the peer closed, or TCP is gone."""
        return bool(self._flags & _STOP_SENDING)

    @property
    def pong_received_since_ping(self) -> bool:
        flags = self._flags
        return not flags & _PINGED or bool(flags & _PONG_SEEN)

    @property
    def busy(self) -> bool:
        """More than ``send_high_water`` bytes are not yet on the wire."""
        pending, high_water = self._pending, self._high_water
        if pending + self._unsent_bound <= high_water:
            return False
        if pending > high_water:
            return True
        # The kernel's queue grows only by what we write, so the last reading
        # plus the bytes written since bounds it: most checks (every PUT /push
        # asks) need no system call.
        self._unsent_bound = self._kernel_unsent()
        return pending + self._unsent_bound > high_water

    def _kernel_unsent(self):
        """Bytes the kernel holds in the socket's send queue (0 if unknown)."""
        if _TIOCOUTQ is None:
            return 0
        try:
            return struct.unpack("i", fcntl.ioctl(self._sock.fileno(), _TIOCOUTQ, _INT_ZERO))[0]
        except (OSError, ValueError):
            return 0

    # -- sending -----------------------------------------------------------

    def send(self, text: str) -> bool:
        """Send one text frame under the send lock.

        Blocks while the socket buffer is full (a client that does not
        read): callers that must not wait check :attr:`busy` first.
        Returns False, without raising, if the connection is closing or
        closed or the socket is dead.
        """
        if self._flags & _STOP_SENDING:
            return False
        return self._send_frame(_frame(OP_TEXT, text.encode("utf-8")))

    def ping(self) -> bool:
        """Send an empty PING; ``pong_received_since_ping`` is False until a PONG.

        Never blocks: behind a stuck sender the PING is handed to a
        short-lived greenlet, so a caller timing the PONG still gets to
        abort a client that reads nothing.
        """
        if self._flags & _STOP_SENDING:
            return False
        self._flags = (self._flags | _PINGED) & ~_PONG_SEEN
        self.ping_sent_at = time.monotonic()
        return self._send_nowait(_PING_FRAME, _STOP_SENDING) is not False

    def _send_frame(self, frame, stop=_STOP_SENDING):
        """Write one whole frame under the send lock. Never raises on I/O errors.

        Frames are dropped if a ``stop`` flag is set once the lock is held:
        by default once closing has begun, even if they were already
        waiting for the lock, since nothing may follow our close frame.
        """
        size = len(frame)
        self._pending += size
        try:
            self._acquire_send_lock()
            try:
                if self._flags & stop:
                    return False
                try:
                    self._sock.sendall(frame)
                    self._unsent_bound += size
                except OSError:
                    self._flags |= _DEAD
                    return False
                except BaseException:
                    # Killed half way through a frame: the stream is corrupt.
                    self._flags |= _DEAD
                    self._shutdown()
                    raise
                return True
            finally:
                self._release_send_lock()
        finally:
            self._pending -= size

    # The send lock exists only while someone holds or waits for it. Memory:
    # a gevent Semaphore costs about 160 bytes, and an idle connection
    # (nothing being sent) would keep one for its whole life.

    def _acquire_send_lock(self, blocking=True):
        lock = self._lock
        if lock is None:
            lock = self._lock = Semaphore(1)
        return lock.acquire(blocking)

    def _release_send_lock(self):
        lock = self._lock
        lock.release()
        if lock.counter == 1 and not lock.linkcount():
            # Free, and no greenlet is waiting on this object: drop it. The
            # next sender makes a new one (no switch can happen in between).
            self._lock = None

    def _send_nowait(self, frame, stop):
        """Send a small control frame now if the lock is free and the socket
        writable (sendall then returns at once), else from a short-lived
        greenlet. ``stop``: flags that cancel the frame if set by then.

        Returns False if the socket is dead, the greenlet if one was
        spawned, else True."""
        if self._acquire_send_lock(blocking=False):
            if self._writable():
                try:
                    self._sock.sendall(frame)
                    self._unsent_bound += len(frame)
                    return True
                except OSError:
                    self._flags |= _DEAD
                    return False
                finally:
                    self._release_send_lock()
            self._release_send_lock()
        return gevent.spawn(self._send_frame, frame, stop)

    def _writable(self):
        """Non-blocking check that the socket accepts data now."""
        try:
            poller = _poll()
            poller.register(self._sock.fileno(), _POLLOUT)
            return bool(poller.poll(0))
        except (OSError, ValueError):
            return False

    def close(self, code: int, reason: str = "") -> None:
        """Send our close frame once and mark the connection closing.

        Never waits for the peer: if the frame cannot be written at once
        (another greenlet holds the send lock, or the socket is not
        writable), a short-lived greenlet sends it as soon as it can. From
        now on the close deadlines run (PROTOCOL 2.12); the read loop ends
        when the peer's close frame arrives or the socket dies.
        """
        flags = self._flags
        if flags & _CLOSING:
            return
        self._flags = flags | _CLOSING
        self.close_code = code
        if flags & _DEAD:
            return
        self._arm_close_timer()
        sent = self._send_nowait(close_frame(code, reason), _DEAD)
        if sent is not True and sent is not False:
            self._closer = sent

    def abort(self) -> None:
        """Drop TCP without a close frame (the client sees 1006)."""
        self._flags |= _CLOSING | _DEAD
        self._shutdown()

    def _shutdown(self):
        sock = self._sock
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        try:
            sock.close()
        except OSError:
            pass

    # -- close deadlines -----------------------------------------------------

    def _arm_close_timer(self):
        """One-shot hub timer started with our close frame (no greenlet)."""
        if self._timer is not None:
            return
        waiting = self._close_wait > 0
        self._start_timer(self._close_wait if waiting else self._safety, waiting)

    def _start_timer(self, seconds, waiting):
        timer = gevent.get_hub().loop.timer(max(seconds, 0.0))
        self._timer = timer
        timer.start(self._on_close_timer, waiting)

    def _on_close_timer(self, waiting):
        # Runs in the hub: must not block.
        try:
            flags = self._flags
            if flags & _TORN_DOWN:
                return
            if waiting and flags & (_PEER_CLOSED | _DEAD):
                # The handshake finished in time; teardown is still pending
                # (the session's on_closed is running): the safety limit rules.
                self._timer.close()
                self._start_timer(self._safety, False)
                return
            log.debug("close handshake deadline passed: aborting the connection")
            self.abort()
        except Exception:  # pragma: no cover - a hub callback must not raise
            log.exception("close timer failed")

    def _stop_timer(self):
        timer = self._timer
        if timer is not None:
            self._timer = None
            timer.stop()
            timer.close()

    # -- reading ------------------------------------------------------------

    def _read_exact(self, n):
        data = self._reader.read(n)
        if len(data) != n:
            raise _EndOfStream()
        return data

    def _read_header(self):
        """Read a frame header up to (not including) the mask key.

        Returns (first byte, masked, payload length).
        """
        head = self._reader.read(2)
        if len(head) != 2:
            raise _EndOfStream()
        b0 = head[0]
        b1 = head[1]
        length = b1 & 0x7F
        if length == 126:
            length = struct.unpack("!H", self._read_exact(2))[0]
        elif length == 127:
            length = struct.unpack("!Q", self._read_exact(8))[0]
        return b0, b1 & 0x80, length

    def _next_frame(self, in_message, size):
        """Read one frame, checking everything before the payload is read.

        ``in_message``: a fragmented text message is open; ``size``: its
        bytes so far. Returns (opcode, fin, unmasked payload).
        """
        b0, masked, length = self._read_header()
        opcode = b0 & 0x0F
        fin = b0 & 0x80
        skip = length + (4 if masked else 0)
        if b0 & 0x70:
            raise ProtocolViolation(CLOSE_PROTOCOL_ERROR, "reserved bits set", skip)
        if opcode >= 0x8:
            if opcode > OP_PONG:
                raise ProtocolViolation(CLOSE_PROTOCOL_ERROR, "unknown control opcode", skip)
            if not fin:
                raise ProtocolViolation(CLOSE_PROTOCOL_ERROR, "fragmented control frame", skip)
            if length > _MAX_CONTROL_PAYLOAD:
                raise ProtocolViolation(CLOSE_PROTOCOL_ERROR, "control frame over 125 bytes", skip)
        elif opcode == OP_TEXT:
            if in_message:
                raise ProtocolViolation(CLOSE_PROTOCOL_ERROR, "new message inside a fragmented one", skip)
        elif opcode == OP_CONTINUATION:
            if not in_message:
                raise ProtocolViolation(CLOSE_PROTOCOL_ERROR, "continuation without a message", skip)
        elif opcode != OP_BINARY:
            raise ProtocolViolation(CLOSE_PROTOCOL_ERROR, "reserved opcode", skip)
        if not masked:
            raise ProtocolViolation(CLOSE_PROTOCOL_ERROR, "unmasked client frame", skip)
        if opcode == OP_BINARY:
            raise ProtocolViolation(CLOSE_UNSUPPORTED_DATA, "binary messages are not accepted", skip)
        if opcode < 0x8 and size + length > self._max_frame:
            raise ProtocolViolation(CLOSE_TOO_BIG, "message over max_frame_bytes", skip)
        mask = self._read_exact(4)
        payload = self._read_exact(length) if length else b""
        return opcode, fin, _unmask(payload, mask)

    def next_message(self):
        """The next complete text message, or None once reading has ended.

        Answers PINGs, records PONGs, answers the peer's close frame, and on
        any violation sends the matching close code and ends. Never holds
        more than ``max_frame_bytes`` of message payload. Ends as soon as
        closing has begun (our close frame sent from anywhere); the rest of
        the close handshake is :meth:`finish`'s job.

        A plain method, not a generator, for memory: an idle connection's
        greenlet sits blocked in here, and a generator resumed from the
        caller's ``for`` loop adds a C-level interpreter frame to the C stack
        greenlet saves (copies to the heap) for every idle connection.
        """
        parts = None
        size = 0
        try:
            while not self._flags & _STOP_SENDING:
                opcode, fin, payload = self._next_frame(parts is not None, size)
                if opcode == OP_PING:
                    self._send_frame(_frame(OP_PONG, payload))
                    continue
                if opcode == OP_PONG:
                    self._flags |= _PONG_SEEN
                    continue
                if opcode == OP_CLOSE:
                    self._on_peer_close(payload)
                    return None
                if self._flags & _CLOSING:
                    # Closed from another greenlet while this frame arrived.
                    return None
                if not fin:
                    if parts is None:
                        parts = []
                    parts.append(payload)
                    size += len(payload)
                    continue
                if parts is not None:
                    parts.append(payload)
                    payload = b"".join(parts)
                try:
                    return payload.decode("utf-8")
                except UnicodeDecodeError:
                    raise ProtocolViolation(CLOSE_INVALID_PAYLOAD, "invalid UTF-8 in a text message")
        except ProtocolViolation as violation:
            log.debug("closing the connection: %s", violation.reason)
            self._skip = violation.skip
            self.close(violation.code, violation.reason)
        except (_EndOfStream, OSError, ValueError):
            # EOF, reset, or the socket was closed under us (abort()).
            self._flags |= _DEAD
        return None

    def _on_peer_close(self, payload):
        """The peer's close frame: answer it (echoing a valid code) and end."""
        self._flags |= _PEER_CLOSED
        if not payload:
            self.peer_close_code = 1005
            self.close(CLOSE_NORMAL)
            return
        if len(payload) < 2:
            self.close(CLOSE_PROTOCOL_ERROR, "invalid close frame")
            return
        code = self.peer_close_code = struct.unpack("!H", payload[:2])[0]
        if not valid_close_code(code):
            self.close(CLOSE_PROTOCOL_ERROR, "invalid close frame")
            return
        try:
            payload[2:].decode("utf-8")
        except UnicodeDecodeError:
            self.close(CLOSE_INVALID_PAYLOAD, "invalid UTF-8 in the close reason")
            return
        self.close(code)

    def _discard(self, n):
        read = self._reader.read
        while n > 0:
            chunk = read(min(n, _DISCARD_CHUNK))
            if not chunk:
                raise _EndOfStream()
            n -= len(chunk)

    def _await_peer_close(self):
        """After our close frame: discard frames until the peer's close frame.

        Bounded by the close timer, which aborts the socket (waking this
        read) when ``close_handshake_timeout`` or the safety limit passes.
        """
        try:
            self._discard(self._skip)
            self._skip = 0
            while True:
                b0, masked, length = self._read_header()
                opcode = b0 & 0x0F
                if opcode == OP_CLOSE and masked and length <= _MAX_CONTROL_PAYLOAD:
                    mask = self._read_exact(4)
                    payload = _unmask(self._read_exact(length), mask) if length else b""
                    self._flags |= _PEER_CLOSED
                    self.peer_close_code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                    return
                if opcode >= 0x8 and length > _MAX_CONTROL_PAYLOAD:
                    return  # framing is not trustworthy; tear down now
                self._discard(length + (4 if masked else 0))
        except (_EndOfStream, OSError, ValueError):
            self._flags |= _DEAD

    def handshake_done(self):
        """Nothing is left to exchange: TCP is gone, or both close frames
        have crossed (the peer's arrived and ours is written)."""
        flags = self._flags
        return bool(flags & _DEAD or (flags & _PEER_CLOSED and flags & _CLOSING and self._closer is None))

    def finish(self, wait=True):
        """End of the connection: complete the close handshake, then tear down TCP.

        If our close frame went out and the peer's has not arrived, wait for
        it (``wait``), bounded by the close timer. Then shut the socket down,
        stop the timer, and mark the gevent-websocket object closed so that
        it never sends its own (code-less) close frame.
        """
        flags = self._flags
        try:
            if wait:
                if flags & _CLOSING and not flags & (_PEER_CLOSED | _DEAD):
                    self._await_peer_close()
                closer = self._closer
                if closer is not None:
                    # Our close frame is still queued behind other frames:
                    # let it out first (bounded by the close timer's abort).
                    closer.join()
        finally:
            self._flags |= _TORN_DOWN | _CLOSING | _DEAD
            self._stop_timer()
            self._shutdown()
            self._ws.closed = True


class SocketReader:
    """Exact reads straight from the socket, for an upgraded connection.

    pywsgi reads requests through an 8 KiB ``BufferedReader`` that would live
    as long as the WebSocket: most of an idle client's memory. After the
    upgrade the connection reads through this instead; only bytes the client
    sent ahead (rare, at most ``RECV_CHUNK`` at a time) are kept between reads.
    It also stands in for the handler's ``rfile`` so the buffer can be freed.
    """

    __slots__ = ("_sock", "_pending", "closed")
    RECV_CHUNK = 2048

    def __init__(self, sock, pending=b""):
        # The socket, not its bound ``recv``: a bound method per connection
        # costs memory; the attribute lookup at call time costs nothing much.
        self._sock = sock
        self._pending = pending
        self.closed = False

    def read(self, n):
        data = self._pending
        if len(data) >= n:
            self._pending = data[n:]
            return data[:n]
        self._pending = b""
        # No list of parts until a second chunk is needed: an idle
        # connection waits in the first recv, and whatever this frame holds
        # meanwhile is held per client.
        parts = None
        have = len(data)
        while have < n:
            try:
                chunk = self._sock.recv(max(n - have, self.RECV_CHUNK))
            except OSError:
                chunk = b""
            if not chunk:
                break
            have += len(chunk)
            if not data:
                data = chunk
            else:
                if parts is None:
                    parts = [data]
                parts.append(chunk)
        if parts is not None:
            data = b"".join(parts)
        if have > n:
            self._pending = data[n:]
            data = data[:n]
        return data

    def close(self):
        self.closed = True


class _NoHeaders(dict):
    """Stands in for a finished request's parsed headers."""

    def get(self, key, default=None):
        return default


_NO_HEADERS = _NoHeaders()


class _FinishedInput:
    """Stands in for the upgrade request's ``wsgi.input``. pywsgi only calls
    its ``_discard()`` once the connection ends, and an upgrade has no body
    to discard (the bytes after the headers are WebSocket frames)."""

    __slots__ = ()

    def _discard(self):
        pass


_FINISHED_INPUT = _FinishedInput()
_SWITCHING_PROTOCOLS = "101 Switching Protocols"
_SWITCHING_PROTOCOLS_BYTES = _SWITCHING_PROTOCOLS.encode("latin-1")


def _release_http_state(ws):
    """Swap the handler's buffered reader for a :class:`SocketReader` (taking
    over any bytes it already buffered) and empty the request's environ; the
    session has read what it needs from it. Saves about 10 KB per client."""
    handler = ws.handler
    sock = handler.socket
    rfile = handler.rfile
    timeout = sock.gettimeout()
    sock.settimeout(0)
    try:
        ahead = rfile.peek() if hasattr(rfile, "peek") else b""
    except OSError:
        ahead = b""
    finally:
        sock.settimeout(timeout)
    reader = SocketReader(sock, bytes(ahead or b""))
    handler.rfile = reader
    handler.wsgi_input = _FINISHED_INPUT
    # gevent-websocket's frame code is never used (see the module docstring):
    # drop its stream, the bound methods it keeps and its UTF-8 validator, as
    # its own WebSocket.close() does. Memory: about 0.3 KB per client. The
    # Transport reads through ``reader`` (``handler.rfile``) and writes to
    # ``handler.socket``.
    ws.stream = ws.raw_read = ws.raw_write = None
    ws.utf8validator = None
    if ws.environ is not None:
        ws.environ.clear()
    handler.headers = _NO_HEADERS  # the parsed request headers
    # The response is sent: pywsgi touches its headers no more.
    handler.response_headers = ()
    # What pywsgi's request log reads at the end (request line, status) stays,
    # as values shared by all connections rather than copies per client.
    if handler._orig_status == _SWITCHING_PROTOCOLS:
        handler._orig_status = _SWITCHING_PROTOCOLS
        handler.status = _SWITCHING_PROTOCOLS_BYTES
    handler.requestline = _shared(handler.requestline)
    handler.command = _shared(handler.command)
    handler.request_version = _shared(handler.request_version)
    return reader


def _shared(value):
    """An equal string shared with every other connection (``sys.intern``)."""
    return sys.intern(value) if type(value) is str else value


def serve_connection(ws, session_factory, settings, close_safety: float | None = None):
    """Run one WebSocket to its end.

    Builds the :class:`Transport`, calls ``session = session_factory(transport)``,
    then ``session.on_text(text)`` for each message (it may block: the
    protocol's "stop reading while a hello/register/ack is in flight"). When
    reading ends for any reason (an exception in ``on_text`` is logged and
    closes with 1011) ``session.on_closed()`` runs exactly once; then the TCP
    connection is torn down: after our close frame the peer's close frame is
    awaited up to ``settings.close_handshake_timeout`` (0 = no separate
    limit), and the socket is aborted in every case if it is not torn down
    ``CLOSE_SAFETY_SECONDS`` (or ``close_safety``) + close_handshake_timeout
    seconds after our close frame (PROTOCOL 2.12). When the close handshake
    is already complete (or TCP is gone) when reading ends, the socket is
    torn down before ``on_closed`` runs rather than after it.
    """
    reader = _release_http_state(ws)
    transport = Transport(
        ws, settings.max_frame_bytes, settings.send_high_water,
        close_handshake_timeout=settings.close_handshake_timeout,
        close_safety=close_safety, reader=reader,
    )
    session = None
    wait = True
    try:
        session = session_factory(transport)
        # The factory (often a closure) is not needed again: do not keep it
        # alive, in this frame, for the life of the connection.
        session_factory = None
        while True:
            text = transport.next_message()
            if text is None:
                break
            session.on_text(text)
            del text  # not kept alive while this greenlet waits, idle, for the next
    except Exception:
        log.exception("unexpected error while serving a WebSocket; closing with 1011")
        transport.close(CLOSE_INTERNAL_ERROR, "internal error")
    except BaseException:
        # Killed (GreenletExit on worker shutdown): say goodbye, do not linger.
        wait = False
        transport.close(CLOSE_GOING_AWAY, "shutting down")
        raise
    finally:
        try:
            if transport.handshake_done():
                # Free the client at once; on_closed may take a while
                # (it saves outstanding messages, PROTOCOL 2.16).
                transport.finish(wait=False)
            if session is not None:
                try:
                    session.on_closed()
                except Exception:
                    log.exception("session.on_closed failed")
        finally:
            transport.finish(wait)


# -- the HTTP side -----------------------------------------------------------

_open_websockets = 0


def open_websockets() -> int:
    """WebSockets currently open in this process through ConnectionHandler."""
    return _open_websockets


def _ignore_start_response(status, headers, exc_info=None):
    return lambda data: None


class ConnectionHandler(WebSocketHandler):
    """The connection node's gevent-websocket handler (``worker.wsgi_handler``).

    Class attributes are set once per worker at start-up.
    """

    #: WebSockets per process; 0 = unlimited. Above it, upgrades get a 503.
    max_connections = 0
    #: Seconds for the request line and headers to arrive (0 disables).
    open_handshake_timeout = 5.0
    #: Number of open WebSockets in this process (e.g. :func:`open_websockets`).
    current_connections = staticmethod(lambda: 0)
    #: False once the worker is shutting down: upgrades then get a 503.
    accepting = staticmethod(lambda: True)

    _handshake_deadline = None

    # Opening-handshake deadline: one timer from the first byte we wait for
    # to the end of the headers, not a per-recv timeout.

    def read_requestline(self):
        timeout = self.open_handshake_timeout
        if timeout and timeout > 0:
            self._handshake_deadline = Timeout.start_new(timeout, HandshakeTimeout)
        return super().read_requestline()

    def read_request(self, raw_requestline):
        try:
            return super().read_request(raw_requestline)
        finally:
            self._cancel_handshake_deadline()

    def handle_one_request(self):
        try:
            return super().handle_one_request()
        finally:
            self._cancel_handshake_deadline()

    def _cancel_handshake_deadline(self):
        deadline = self._handshake_deadline
        if deadline is not None:
            self._handshake_deadline = None
            deadline.close()

    def _handle_client_error(self, ex):
        if isinstance(ex, HandshakeTimeout):
            # Slow client: drop the connection without an answer.
            return None
        return super()._handle_client_error(ex)

    # Upgrade.

    def _is_upgrade_request(self):
        environ = self.environ
        return (environ.get("REQUEST_METHOD") == "GET"
                and environ.get("HTTP_UPGRADE", "").lower() == "websocket")

    def upgrade_websocket(self):
        handler = type(self)
        if self._is_upgrade_request():
            refusal = None
            if not handler.accepting():
                refusal = b"Shutting down"
            elif handler.max_connections and handler.max_connections > 0 \
                    and handler.current_connections() >= handler.max_connections:
                refusal = b"Too many connections"
            if refusal:
                self.start_response("503 Service Unavailable", [
                    ("Content-Type", "text/plain"), ("Connection", "close")])
                return [refusal]
        result = super().upgrade_websocket()
        if result:
            # gevent-websocket answers its errors with str bodies.
            result = [part.encode("utf-8") if isinstance(part, str) else part for part in result]
        return result

    def upgrade_connection(self):
        key = self.environ.get("HTTP_SEC_WEBSOCKET_KEY", "").strip()
        if key:
            try:
                base64.b64decode(key, validate=True)
            except (binascii.Error, ValueError):
                self.start_response("400 Bad Request", [("Content-Type", "text/plain")])
                return [b"Invalid Sec-WebSocket-Key"]
        offered = self.environ.get("HTTP_SEC_WEBSOCKET_PROTOCOL")
        if offered is None:
            return super().upgrade_connection()
        app_protocol = getattr(self.application, "app_protocol", None)
        allowed = app_protocol(self.environ.get("PATH_INFO", "")) if app_protocol else None
        tokens = [token.strip() for token in offered.split(",")]
        if allowed and allowed in tokens:
            return super().upgrade_connection()
        # gevent-websocket matches by substring; hide the offer from it so
        # that nothing is selected unless the exact token was offered.
        self.environ["HTTP_SEC_WEBSOCKET_PROTOCOL"] = ""
        try:
            return super().upgrade_connection()
        finally:
            self.environ["HTTP_SEC_WEBSOCKET_PROTOCOL"] = offered

    def run_websocket(self):
        """Run the app for an upgraded connection: its ``serve_websocket(environ)``
        if it has one, else the WSGI app with ``environ["wsgi.websocket"]``.

        Replaces gevent-websocket's version, which keeps a ``Client`` object
        per connection in ``server.clients`` and, on the way out, sends its
        own close frame without a status code.
        """
        global _open_websockets
        if getattr(self, "prevent_wsgi_call", False):
            return
        ws = self.websocket
        _open_websockets += 1
        try:
            app = self.application
            if getattr(app, "serve_websocket", None) is not None:
                # A plain method call, for memory: calling an object with
                # ``__call__`` goes through C (tp_call) and adds an
                # interpreter frame to the C stack that greenlet saves for
                # every idle connection blocked below this point. Called as
                # ``app.serve_websocket(...)``, not through a local: no bound
                # method object stays alive in this frame (64 bytes a client).
                app.serve_websocket(self.environ)
            else:
                self._run_wsgi_websocket()
        finally:
            _open_websockets -= 1
            if not ws.closed:
                # The app returned without serve_connection: close properly.
                try:
                    self.socket.sendall(close_frame(CLOSE_NORMAL))
                except OSError:
                    pass
                ws.closed = True
            self.environ["wsgi.websocket"] = None
            self.websocket = None

    def _run_wsgi_websocket(self):
        """Hand an upgraded connection to a plain WSGI app."""
        result = self.application(self.environ, _ignore_start_response)
        try:
            for _ in result:
                pass
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
