"""A plain-HTTP/1.1 keep-alive client for the hot calls between our processes.

Why: an endpoint POST makes two or three small HTTP calls (BatchGetItem and,
with durable delivery, PutItem to the store; PUT /push to a connection
node), and a connection node's hello makes its storage calls and the
DELETE /notif to the node that held the uaid. Through urllib3 and
``http.client`` each call costs more client CPU than the request itself:
py-spy on an endpoint worker at saturation (``bench.cpu_ratio``) put 36 % of
its samples in ``urllib3.connectionpool.urlopen``, of which the socket
calls were about a third; the rest is urllib3's pool and URL handling,
``http.client``'s line-by-line reading and its header parsing through the
``email`` package.

What it does: ``WirePool`` keeps idle connections to one ``host:port``
(last in, first out, so the warm ones are reused) and ``request()`` writes
a whole request with one ``sendall`` and reads the answer with as few
``recv`` calls as it takes (usually one): the head is split with
``bytes.find``, the body taken by ``Content-Length``, chunked, or up to the
close. Before it reuses a connection it asks the kernel, without waiting,
whether the peer has closed it (one ``recv`` with ``MSG_PEEK |
MSG_DONTWAIT`` on the underlying socket), which replaces urllib3's
``poll()`` (a timer under gevent). A connection that failed, timed out,
answered ``Connection: close`` or was interrupted (a ``gevent.Timeout``)
is closed, never pooled. ``maxsize`` bounds the idle connections kept; with
``block=True`` it also bounds the connections in use, and a caller waits up
to ``pool_timeout`` for one (``PoolTimeout``).

What it does not do: TLS, proxies, redirects, retries, ``Expect:
100-continue``, content codings. Callers keep urllib3 for ``https://``
(DynamoDB itself, a node behind TLS); this is for plain HTTP on a trusted
network (the local store stand-in, node to node). Errors are this module's
``WireError`` subclasses, which callers map to their own (botocore's
exceptions in connnode/db/lean.py, ``NodeConnectionError`` in
connnode/nodeclient.py). Sizes are bounded: a head of at most
``MAX_HEAD`` bytes, a body of at most ``MAX_BODY``.

Sockets are looked up at call time, so under gevent's monkey patching
(the workers) they are gevent sockets and a blocked call yields.
"""
import socket
import time

from gevent.lock import BoundedSemaphore

from connnode.sendall import sendall

MAX_HEAD = 64 * 1024
#: DynamoDB's largest answer (a BatchGetItem) is 16 MB.
MAX_BODY = 32 * 1024 * 1024
RECV_SIZE = 64 * 1024
_PEEK = socket.MSG_PEEK | socket.MSG_DONTWAIT
_NO_BODY_STATUSES = frozenset({204, 304})


class WireError(Exception):
    """A call that did not get a whole HTTP answer."""


class ConnectFailed(WireError):
    """The connection was refused, or the host name did not resolve."""


class ConnectTimedOut(WireError):
    """No connection within the connect timeout."""


class ReadTimedOut(WireError):
    """The answer did not come within the read timeout (or the deadline)."""


class ConnectionLost(WireError):
    """The connection broke, or the peer's answer was not HTTP/1.x."""


class PoolTimeout(WireError):
    """``block=True``: no connection came free within ``pool_timeout``."""


class Response:
    """An answer: ``status``, ``headers`` (lower-case names) and ``data``."""

    __slots__ = ("status", "headers", "data")

    def __init__(self, status, headers, data):
        self.status, self.headers, self.data = status, headers, data


class WirePool:
    def __init__(self, host, port, maxsize=10, connect_timeout=None, read_timeout=None,
                 block=False, pool_timeout=None, host_header=None):
        self.host, self.port = host, port
        self.maxsize = maxsize
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.pool_timeout = pool_timeout
        self._idle = []
        self._slots = BoundedSemaphore(maxsize) if block else None
        self._host_line = f"Host: {host_header or f'{host}:{port}'}\r\n".encode("latin-1")

    def request(self, method, path, body=b"", headers=b"", total_timeout=None):
        """One call: ``headers`` is the header block without ``Host`` and
        ``Content-Length`` (``b"Name: value\\r\\n"`` lines);
        ``total_timeout`` bounds the call from the moment it has a
        connection slot (connecting included)."""
        slots = self._slots
        if slots is not None and not slots.acquire(timeout=self.pool_timeout):
            raise PoolTimeout(f"no free connection to {self.host}:{self.port} "
                              f"in {self.pool_timeout} s")
        try:
            deadline = None if total_timeout is None else time.monotonic() + total_timeout
            return self._request(method, path, body, headers, deadline)
        finally:
            if slots is not None:
                slots.release()

    def close(self):
        idle, self._idle = self._idle, []
        for sock in idle:
            sock.close()

    # -- one call ----------------------------------------------------------------------------
    def _request(self, method, path, body, headers, deadline):
        message = b"".join((method.encode("ascii"), b" ", path.encode("ascii"), b" HTTP/1.1\r\n",
                            self._host_line, headers,
                            b"Content-Length: %d\r\n\r\n" % len(body), body))
        sock = self._checkout(deadline)
        keep = False
        try:
            try:
                sendall(sock, message)
            except socket.timeout:
                raise ReadTimedOut(f"{self.host}:{self.port}: send timed out") from None
            except OSError as exc:
                raise ConnectionLost(f"{self.host}:{self.port}: {exc}") from None
            response, keep = _read_response(sock, method, self.read_timeout, deadline,
                                            f"{self.host}:{self.port}")
        finally:
            if keep and len(self._idle) < self.maxsize:
                self._idle.append(sock)
            else:
                sock.close()
        return response

    def _checkout(self, deadline):
        idle = self._idle
        while idle:
            sock = idle.pop()
            if _still_open(sock):
                return sock
            sock.close()
        timeout = self.connect_timeout
        if deadline is not None:
            left = deadline - time.monotonic()
            timeout = left if timeout is None else min(timeout, left)
            if timeout <= 0:
                raise ConnectTimedOut(f"{self.host}:{self.port}: deadline passed")
        try:
            sock = socket.create_connection((self.host, self.port), timeout)
        except socket.timeout:
            raise ConnectTimedOut(f"{self.host}:{self.port}: connect timed out") from None
        except OSError as exc:  # refused, unreachable, gaierror
            raise ConnectFailed(f"{self.host}:{self.port}: {exc}") from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock


def _still_open(sock):
    """Whether a pooled connection is still usable: the peer has not closed
    it and sent nothing unasked (either makes the peek return at once)."""
    raw = getattr(sock, "_sock", None)  # gevent's socket wraps a non-blocking one
    if raw is not None:
        return _peek_would_block(raw)
    # a standard-library socket (a process without gevent's patching, e.g.
    # the CLI): with a timeout set, its recv would first wait for data
    timeout = sock.gettimeout()
    sock.settimeout(0.0)
    try:
        return _peek_would_block(sock)
    finally:
        sock.settimeout(timeout)


def _peek_would_block(raw):
    try:
        raw.recv(1, _PEEK)
    except BlockingIOError:
        return True
    except OSError:
        return False
    return False


def _read_response(sock, method, read_timeout, deadline, peer):
    """``(Response, keep_alive)`` read from ``sock``."""
    buf = bytearray()
    while True:
        head_end = buf.find(b"\r\n\r\n")
        if head_end < 0:
            if len(buf) > MAX_HEAD:
                raise ConnectionLost(f"{peer}: answer head over {MAX_HEAD} bytes")
            _recv_more(sock, buf, read_timeout, deadline, peer)
            continue
        head = bytes(buf[:head_end])
        del buf[:head_end + 4]
        status, version, headers = _parse_head(head, peer)
        if status >= 200:
            break
        # 1xx: an interim answer (we never ask for one); the real one follows
    connection = headers.get("connection", "").lower()
    keep = (version == b"HTTP/1.1" and "close" not in connection) or (
        version == b"HTTP/1.0" and "keep-alive" in connection)
    if method == "HEAD" or status in _NO_BODY_STATUSES:
        return Response(status, headers, b""), keep
    if "chunked" in headers.get("transfer-encoding", "").lower():
        data = _read_chunked(sock, buf, read_timeout, deadline, peer)
    elif "content-length" in headers:
        try:
            length = int(headers["content-length"])
        except ValueError:
            raise ConnectionLost(f"{peer}: bad Content-Length") from None
        if not 0 <= length <= MAX_BODY:
            raise ConnectionLost(f"{peer}: Content-Length {length} out of bounds")
        while len(buf) < length:
            _recv_more(sock, buf, read_timeout, deadline, peer)
        data = bytes(buf[:length])
        del buf[:length]
    else:  # the body runs to the close
        while True:
            try:
                _recv_more(sock, buf, read_timeout, deadline, peer)
            except _Closed:
                break
            if len(buf) > MAX_BODY:
                raise ConnectionLost(f"{peer}: body over {MAX_BODY} bytes")
        return Response(status, headers, bytes(buf)), False
    return Response(status, headers, data), keep and not buf


class _Closed(ConnectionLost):
    """The peer closed the connection."""


def _recv_more(sock, buf, read_timeout, deadline, peer):
    """Append what the next ``recv`` brings to ``buf`` (a bytearray)."""
    timeout = read_timeout
    if deadline is not None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise ReadTimedOut(f"{peer}: deadline passed")
        timeout = left if timeout is None else min(timeout, left)
    sock.settimeout(timeout)
    try:
        chunk = sock.recv(RECV_SIZE)
    except socket.timeout:
        raise ReadTimedOut(f"{peer}: read timed out") from None
    except OSError as exc:
        raise ConnectionLost(f"{peer}: {exc}") from None
    if not chunk:
        raise _Closed(f"{peer}: connection closed by the peer")
    buf += chunk


def _parse_head(head, peer):
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or parts[0] not in (b"HTTP/1.1", b"HTTP/1.0"):
        raise ConnectionLost(f"{peer}: not an HTTP/1.x answer: {lines[0][:80]!r}")
    try:
        status = int(parts[1])
    except ValueError:
        raise ConnectionLost(f"{peer}: bad status line {lines[0][:80]!r}") from None
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep:
            raise ConnectionLost(f"{peer}: bad header line {line[:80]!r}")
        name = name.strip().lower().decode("latin-1")
        value = value.strip().decode("latin-1")
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return status, parts[0], headers


def _read_chunked(sock, buf, read_timeout, deadline, peer):
    """The decoded body; ``buf`` keeps what followed it."""
    body = bytearray()
    while True:
        line = _read_line(sock, buf, read_timeout, deadline, peer)
        try:
            size = int(line.split(b";", 1)[0], 16)
        except ValueError:
            raise ConnectionLost(f"{peer}: bad chunk size") from None
        if size < 0 or len(body) + size > MAX_BODY:
            raise ConnectionLost(f"{peer}: chunked body over {MAX_BODY} bytes")
        if size == 0:  # the last chunk, then trailers up to an empty line
            while _read_line(sock, buf, read_timeout, deadline, peer):
                pass
            return bytes(body)
        while len(buf) < size + 2:
            _recv_more(sock, buf, read_timeout, deadline, peer)
        body += buf[:size]
        del buf[:size + 2]


def _read_line(sock, buf, read_timeout, deadline, peer):
    """The next CRLF-terminated line taken off ``buf``, without its CRLF."""
    end = buf.find(b"\r\n")
    while end < 0:
        if len(buf) > MAX_HEAD:
            raise ConnectionLost(f"{peer}: line over {MAX_HEAD} bytes")
        _recv_more(sock, buf, read_timeout, deadline, peer)
        end = buf.find(b"\r\n")
    line = bytes(buf[:end])
    del buf[:end + 2]
    return line
