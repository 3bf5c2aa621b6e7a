"""The gevent-websocket handler the connection node runs under gunicorn.

:class:`ConnectionHandler` is ``worker.wsgi_handler`` (``worker.py``): the
HTTP side of a WebSocket, up to the upgrade. It answers 503 above
``max_connections`` (counted by ``Node.connections``, wired by
``worker.configure_handler``) and while the node shuts down, enforces the
opening-handshake deadline (:class:`HandshakeTimeout`), selects the
subprotocol only on an exact match, and never lets gevent-websocket send a
broken close frame. Once upgraded, the connection belongs to
``transport.serve_connection`` (called by the app), which first calls
:func:`release_http_state`: the pywsgi stand-ins below free the handler's
HTTP state (its 8 KiB buffered reader, the environ, the parsed headers),
and :class:`SocketReader` reads the frames straight from the socket. This
module imports no transport code (transport.py imports it).

gevent-websocket 0.10.1 is used only for the HTTP upgrade and as the holder of
the stream; its frame code is bypassed (frames are ``frames.py``'s and
``transport.py``'s job) because, on Python 3, it:

* never puts the status code into close frames (``WebSocket.close`` sends the
  reason alone, so clients read garbage codes);
* reads frames of any declared length (a header may claim 2**63 bytes) and
  unmasks byte by byte in Python;
* lets two greenlets interleave frames on one socket;
* matches the subprotocol by substring (``push-notification-x`` would select
  ``push-notification``), answers bad keys with a 500 and writes ``str``
  bodies for its 4xx answers (a ``TypeError`` on Python 3).
"""
import base64
import binascii
import logging
import sys

from gevent import socket as _gsocket
from gevent.greenlet import Greenlet
from gevent.timeout import Timeout
from geventwebsocket.handler import WebSocketHandler
from geventwebsocket.websocket import WebSocket

from connnode.connection.closes import Close
from connnode.connection.frames import close_frame
from connnode.httpheaders import FastHeadersHandler
from connnode.sendall import FastSendallHandler


log = logging.getLogger(__name__)

#: The close frame sent when an app returns without closing (1000, no reason).
_NORMAL_CLOSE_FRAME = close_frame(Close.NORMAL.code, Close.NORMAL.reason)


_BAD_REQUEST = "400 Bad Request"
_SHUTTING_DOWN = ("503 Service Unavailable", (), "Shutting down")
_TOO_MANY = ("503 Service Unavailable", (), "Too many connections")


_BAD_REQUEST_ANSWER = (b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n"
                       b"Content-Type: text/plain\r\nContent-Length: 11\r\n\r\nBad Request")
_MAX_LOGGED_REASON = 200


def _printable(text):
    """Client-supplied text fit for one log line: control and non-ASCII
    characters escaped, at most ``_MAX_LOGGED_REASON`` characters."""
    return text.encode("ascii", "backslashreplace").decode("ascii")[:_MAX_LOGGED_REASON].translate(
        {code: f"\\x{code:02x}" for code in range(32)})


def _is_handshake(environ):
    """Whether a GET means to open a WebSocket: it names the websocket
    upgrade or carries a WebSocket handshake header."""
    return (environ.get("HTTP_UPGRADE", "").strip().lower() == "websocket"
            or "HTTP_SEC_WEBSOCKET_KEY" in environ or "HTTP_SEC_WEBSOCKET_VERSION" in environ)


def _handshake_refusal(environ, request_version):
    """PROTOCOL.md 2.1 / RFC 6455 4.2.1: (status line, extra headers, reason)
    for a malformed opening handshake, or None when it is well formed."""
    if request_version != "HTTP/1.1":
        return _BAD_REQUEST, (), "HTTP/1.1 required"
    if environ.get("HTTP_UPGRADE", "").strip().lower() != "websocket":
        return _BAD_REQUEST, (), "Upgrade: websocket required"
    connection = environ.get("HTTP_CONNECTION", "").lower()
    if "upgrade" not in (token.strip() for token in connection.split(",")):
        return _BAD_REQUEST, (), "Connection: Upgrade required"
    if environ.get("HTTP_SEC_WEBSOCKET_VERSION", "").strip() != "13":
        return "426 Upgrade Required", (("Sec-WebSocket-Version", "13"),), \
            "Sec-WebSocket-Version 13 required"
    key = environ.get("HTTP_SEC_WEBSOCKET_KEY", "").strip()
    try:
        valid_key = len(base64.b64decode(key, validate=True)) == 16
    except (binascii.Error, ValueError):
        valid_key = False
    if not valid_key:
        return _BAD_REQUEST, (), "Invalid Sec-WebSocket-Key"
    return None


class HandshakeTimeout(OSError):
    """The opening handshake did not complete within ``open_handshake_timeout``.

    An ``OSError`` so that gevent's request loop treats it as a dropped
    client (it closes the connection without an answer).
    """


def _ignore_start_response(status, headers, exc_info=None):
    return lambda data: None


class ConnectionHandler(FastHeadersHandler, FastSendallHandler, WebSocketHandler):
    """The connection node's gevent-websocket handler (``worker.wsgi_handler``).

    Class attributes are set once per worker at start-up.
    """

    #: WebSockets per process; 0 = unlimited. Above it, upgrades get a 503.
    max_connections = 0
    #: Seconds for the request line and headers to arrive (0 disables).
    open_handshake_timeout = 5.0
    #: Number of open WebSockets in this process (``Node.connections``, set
    #: by ``worker.configure_handler``).
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
        """A request pywsgi could not parse (bad request line or version,
        more than 100 headers...): 400 and one INFO line. gevent prints a
        traceback for anything but a ValueError (an IndexError for
        ``GET / HTTP/1``, an HTTPException for too many headers)."""
        if isinstance(ex, HandshakeTimeout):
            # Slow client: drop the connection without an answer.
            return None
        log.info("bad HTTP request", extra={"fields": {
            "status": 400, "reason": _printable(f"{type(ex).__name__}: {ex}")}})
        return "400", _BAD_REQUEST_ANSWER

    def log_error(self, msg, *args):
        """pywsgi's complaints about client input ("Invalid http version",
        "Invalid HTTP method"...), as one JSON line at INFO with the
        client's bytes escaped, instead of plain text on the error log."""
        try:
            message = msg % args if args else msg
        except (TypeError, ValueError):
            message = f"{msg!r} {args!r}"
        log.info("bad HTTP request", extra={"fields": {"reason": _printable(message)}})

    # Upgrade.

    @property
    def logger(self):
        """gevent-websocket's own logger writes plain-text warnings for bad
        handshakes; ours are answered (and logged) before it sees them."""
        return log

    def upgrade_websocket(self):
        environ = self.environ
        if environ.get("REQUEST_METHOD") != "GET" or not _is_handshake(environ):
            return None  # a plain HTTP request: the app answers it
        refusal = _handshake_refusal(environ, self.request_version)
        if refusal is None:
            handler = type(self)
            if not handler.accepting():
                refusal = _SHUTTING_DOWN
            elif handler.max_connections and handler.max_connections > 0 \
                    and handler.current_connections() >= handler.max_connections:
                refusal = _TOO_MANY
        if refusal is not None:
            return self._refuse(refusal)
        return super().upgrade_websocket()

    def _refuse(self, refusal):
        """Answer a refused handshake with its plain status and close; one
        log line at INFO, never a traceback (garbage from the internet must
        not flood the logs)."""
        status, headers, reason = refusal
        log.info("WebSocket handshake refused", extra={"fields": {
            "status": int(status[:3]), "reason": reason}})
        body = reason.encode("ascii")
        self.start_response(status, [("Content-Type", "text/plain"), ("Connection", "close"),
                                     ("Content-Length", str(len(body))), *headers])
        self.close_connection = True
        return [body]

    def upgrade_connection(self):
        result = self._upgrade_with_exact_protocol()
        if type(self.websocket) is WebSocket:
            self.websocket.__class__ = _FinishedWebSocket
        return result

    def _upgrade_with_exact_protocol(self):
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
        if getattr(self, "prevent_wsgi_call", False):
            return
        ws = self.websocket
        if getattr(self.application, "serve_websocket", None) is not None and self._hand_off(ws):
            return
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
            _close_if_open(ws, self.socket)
            self.environ["wsgi.websocket"] = None
            self.websocket = None

    def _hand_off(self, ws):
        """Serve the upgraded connection from a greenlet of its own, started at
        the bottom of the stack, and let this one (pywsgi's, deep) end.

        Memory per idle client: the connection then waits in ``recv`` without
        pywsgi's frames, this handler (about 30 attributes), the
        gevent-websocket object, the request's environ and address, and the
        pool greenlet with its arguments, and one interpreter level of the
        C stack greenlet saves (about 1 KB a client, ``bench/idle_memory``). The
        socket is detached from pywsgi's socket object (which pywsgi then
        closes harmlessly) into a new one owned by the new greenlet; bytes the
        client sent ahead stay with it. The new greenlet joins the server's
        pool in place of this one, so the worker's graceful stop still waits
        for it and ``server.stop`` still kills it (1001). Without a pool, or
        with the pool full, the connection is served here as before.
        """
        pool = getattr(self.server, "pool", None)
        if pool is None or not hasattr(pool, "full") or pool.full():
            return False
        sock = self.socket
        timeout = sock.gettimeout()
        ahead = _buffered_ahead(sock, self.rfile)
        new_sock = _gsocket.socket(fileno=sock.detach())
        new_sock.settimeout(timeout)
        upgraded = Upgraded(new_sock, ahead)
        environ = dict(self.environ)
        environ["wsgi.websocket"] = upgraded
        upgraded.environ = environ
        # pywsgi: nothing left to read, answer or close on this connection.
        ws.closed = True
        self.websocket = None
        self.environ["wsgi.websocket"] = None
        self.wsgi_input = _FINISHED_INPUT
        self.close_connection = True
        self.socket = None
        pool.start(_UpgradedConnection(self.application, upgraded), blocking=False)
        return True

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


class _FinishedWebSocket(WebSocket):
    """gevent-websocket's ``WebSocket`` without its ``__del__``.

    Ours are closed by the time they are collected (``_close_if_open``, or the
    hand-off), and the inherited ``__del__`` still calls ``close()``, which for
    a closed object builds a new class (``current_app``'s stand-in app) and
    tries to send a close frame that fails: 4.8 % of the worker's samples in
    the reconnect storm, for nothing.
    """

    __slots__ = ()

    def __del__(self):
        pass


# -- taking over the connection from pywsgi ----------------------------------

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


class Upgraded(SocketReader):
    """An upgraded connection handed off by :meth:`ConnectionHandler._hand_off`:
    its :class:`SocketReader`, standing in as well for the gevent-websocket
    object and its handler (what ``Transport`` and :func:`release_http_state`
    use of them): one object per connection instead of three. ``closed``
    is the WebSocket's (``Transport.finish`` sets it)."""

    __slots__ = ("environ",)

    def __init__(self, sock, pending=b""):
        super().__init__(sock, pending)
        self.environ = None

    @property
    def handler(self):
        return self

    @property
    def socket(self):
        return self._sock

    @property
    def rfile(self):
        return self


class _UpgradedConnection(Greenlet):
    """The greenlet serving a handed-off connection: ``app.serve_websocket``
    from the bottom of a fresh stack. ``_run`` is a method, not a ``run``
    argument: no instance dict per connection."""

    def __init__(self, app, upgraded):
        Greenlet.__init__(self, None, app, upgraded)

    def _run(self, app, upgraded):
        try:
            app.serve_websocket(upgraded.environ)
        finally:
            _close_if_open(upgraded, upgraded.socket)
            try:
                upgraded.socket.close()
            except OSError:
                pass


def _close_if_open(ws, sock):
    """The app returned without serve_connection: close properly (1000)."""
    if not ws.closed:
        try:
            sock.sendall(_NORMAL_CLOSE_FRAME)
        except OSError:
            pass
        ws.closed = True


def _buffered_ahead(sock, rfile):
    """The bytes pywsgi's reader holds beyond the request (frames the client
    sent right after its handshake), without blocking."""
    timeout = sock.gettimeout()
    sock.settimeout(0)
    try:
        ahead = rfile.peek() if hasattr(rfile, "peek") else b""
    except OSError:
        ahead = b""
    finally:
        sock.settimeout(timeout)
    return bytes(ahead or b"")


def release_http_state(ws):
    """Swap the handler's buffered reader for a :class:`SocketReader` (taking
    over any bytes it already buffered) and empty the request's environ; the
    session has read what it needs from it. Saves about 10 KB per client.
    A handed-off connection (:class:`Upgraded`) is its own SocketReader
    already: only its environ is emptied."""
    if type(ws) is Upgraded:
        if ws.environ is not None:
            ws.environ.clear()
        return ws.rfile
    handler = ws.handler
    sock = handler.socket
    rfile = handler.rfile
    reader = SocketReader(sock, _buffered_ahead(sock, rfile))
    handler.rfile = reader
    handler.wsgi_input = _FINISHED_INPUT
    # gevent-websocket's frame code is never used (see handler.py's docstring):
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

