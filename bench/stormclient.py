"""The storms' clients as plain non-blocking sockets on one epoll: the
reconnect storm's (``storm``, ``clients.cmd_storm``) and c100k's connect and
reconnect storms (``hello_storm``, ``c100k``'s ``storm_hello``).

Why not ``wsclient`` (asyncio): in a storm the clients share the machine's
two cores with the node and the store, and asyncio's per-connection cost
(``create_connection``, a transport, futures and a task per client) made the
4 client processes use 3.0-3.2 core-seconds for 5,000 reconnects, about as
much as the node under test. Here one client is a socket and a few fields,
moved along by epoll events, for about 1.2. A real client does what these
do: it waits for the 101 (and checks ``Sec-WebSocket-Accept``) before it sends
hello, masks its frames with a fresh key, and reads the server's frames.

    storm(host, port, uaids, at, expect=1, timeout=120.0)

opens one connection per uaid at monotonic time ``at`` and returns the same
answer as ``clients.cmd_storm``, plus the sockets (left open; the caller
closes them).

    hello_storm(host, port, at, count=0, uaids=None, source=None, concurrency=300, ...)

is a storm with retries: every client tries (TCP, upgrade, hello) until its
hello is answered 200 or the deadline has passed, at most ``concurrency``
attempts in flight; failed attempts are counted by kind. It returns the
figures and the connected clients' open sockets, for the caller to adopt
(``wsclient.adopt``).

Only what the storms need: no TLS, no extensions, text frames from the
server (pings answered; a close frame ends the client).
"""
import base64
import errno
import heapq
import json
import os
import random
import select
import socket
import struct
import time

from bench.wsclient import OP_CLOSE, OP_PING, OP_PONG, OP_TEXT, accept_key, client_frame

RECV_SIZE = 65536
MAX_BUFFERED = 1 << 20  # a client that gets more than this unparsed is failed
SCAN_EVERY = 0.1  # hello_storm looks for attempts past their timeout this often (s)

CONNECTING, UPGRADING, HELLO_SENT, WAITING = range(4)


def server_frames(buf, limit=None):
    """Complete frames at the start of ``buf`` (at most ``limit``):
    ([(opcode, payload)], rest)."""
    frames, at, end = [], 0, len(buf)
    while end - at >= 2 and (limit is None or len(frames) < limit):
        opcode, length = buf[at] & 0x0F, buf[at + 1] & 0x7F
        head = 2
        if length == 126:
            if end - at < 4:
                break
            length, head = struct.unpack_from("!H", buf, at + 2)[0], 4
        elif length == 127:
            if end - at < 10:
                break
            length, head = struct.unpack_from("!Q", buf, at + 2)[0], 10
        if end - at < head + length:
            break
        frames.append((opcode, buf[at + head:at + head + length]))
        at += head + length
    return frames, buf[at:]


class StormClient:
    __slots__ = ("sock", "uaid", "stage", "buf", "accept", "t_hello", "got")

    def __init__(self, sock, uaid):
        self.sock, self.uaid, self.stage, self.buf = sock, uaid, CONNECTING, b""
        self.accept, self.t_hello, self.got = None, None, 0


def _handshake(host, port):
    key = base64.b64encode(os.urandom(16))
    request = (b"GET / HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n"
               b"Sec-WebSocket-Protocol: push-notification\r\n\r\n") % (host.encode(), port, key)
    return request, accept_key(key)


def hello_text(uaid, broadcasts):
    message = {"messageType": "hello", "use_webpush": True, "broadcasts": broadcasts or {}}
    if uaid:
        message["uaid"] = uaid
    return json.dumps(message)


def _hello(uaid):
    return client_frame(OP_TEXT, hello_text(uaid, None).encode())


def connect_error(sock):
    """Why a non-blocking connect failed, or None once it is connected."""
    code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    return f"connect: {os.strerror(code)}" if code else None


def receive(sock):
    """What a readable socket has: None (nothing after all), or (data, why),
    data empty and ``why`` the reason when the peer has gone."""
    try:
        return sock.recv(RECV_SIZE), "connection closed"
    except BlockingIOError:
        return None
    except OSError as exc:
        return b"", repr(exc)


def upgrade_refused(head, accept):
    """None when ``head`` (the answer's header block) is a 101 with the
    expected ``Sec-WebSocket-Accept``; else (kind, detail)."""
    lines = head.split(b"\r\n")
    status = lines[0].split(b" ", 2)
    if len(status) < 2 or status[1] != b"101":
        kind = "http_503" if len(status) > 1 and status[1] == b"503" else "handshake_refused"
        return kind, f"no upgrade: {lines[0][:100]!r}"
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"sec-websocket-accept" and value.strip() == accept:
            return None
    return "handshake_refused", "bad Sec-WebSocket-Accept"


def linger_zero(sock):
    """Make ``close`` reset the connection (SO_LINGER 0): no TIME_WAIT holds
    the source port, as when a network blip kills it."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass


def storm(host, port, uaids, at, expect=1, timeout=120.0):
    delay = at - time.monotonic()
    if delay > 0:
        time.sleep(delay)
    poller = select.epoll()
    clients, results, errors, changed = {}, [], [], 0
    socks = []

    def leave(client):
        """The client is done or failed: no more events (``clients`` holds
        only those still under way)."""
        poller.unregister(client.sock)
        del clients[client.sock.fileno()]

    def fail(client, why):
        if len(errors) < 5:
            errors.append(why)
        leave(client)
        client.sock.close()

    for uaid in uaids:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        code = sock.connect_ex((host, port))
        if code not in (0, errno.EINPROGRESS):
            sock.close()
            if len(errors) < 5:
                errors.append(f"connect: {os.strerror(code)}")
            continue
        clients[sock.fileno()] = StormClient(sock, uaid)
        socks.append(sock)
        poller.register(sock, select.EPOLLOUT)
    deadline = at + timeout
    while clients and time.monotonic() < deadline:
        for fd, events in poller.poll(min(1.0, max(0.0, deadline - time.monotonic()))):
            client = clients.get(fd)
            if client is None:
                continue
            sock = client.sock
            if client.stage == CONNECTING:
                why = connect_error(sock)
                if why:
                    fail(client, why)
                    continue
                request, client.accept = _handshake(host, port)
                sock.send(request)  # a few hundred bytes into an empty buffer
                client.stage = UPGRADING
                poller.modify(sock, select.EPOLLIN)
                continue
            received = receive(sock)
            if received is None:
                continue
            data, why = received
            if not data or len(client.buf) + len(data) > MAX_BUFFERED:
                fail(client, why if not data else "too much unparsed data")
                continue
            buf = client.buf + data
            if client.stage == UPGRADING:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    client.buf = buf
                    continue
                refused = upgrade_refused(buf[:end], client.accept)
                if refused:
                    fail(client, f"handshake: {refused[1]}")
                    continue
                buf = buf[end + 4:]
                sock.send(_hello(client.uaid))
                client.stage = HELLO_SENT
            frames, client.buf = server_frames(buf)
            for opcode, payload in frames:
                if opcode == OP_PING:
                    sock.send(client_frame(OP_PONG, payload))
                    continue
                if opcode != OP_TEXT:
                    fail(client, f"frame opcode {opcode}")
                    break
                try:
                    message = json.loads(payload)
                except ValueError:
                    message = {"unparsable": payload[:60].decode("latin-1")}
                if client.stage == HELLO_SENT:
                    if message.get("messageType") != "hello" or message.get("status") != 200:
                        fail(client, f"hello failed: {message}")
                        break
                    client.t_hello = time.monotonic() - at
                    changed += message.get("uaid") != client.uaid
                    client.stage = WAITING
                elif message.get("messageType") == "notification":
                    client.got += 1
                if client.stage == WAITING and client.got >= expect:
                    results.append((client.t_hello, time.monotonic() - at))
                    leave(client)
                    break
    if clients and len(errors) < 5:
        errors.append(f"{len(clients)} clients not done within {timeout:g} s")
    poller.close()
    return {"hello": [r[0] for r in results], "done": [r[1] for r in results],
            "failed": len(uaids) - len(results), "errors": errors,
            "uaid_changed": changed}, socks


# -- hello_storm: a storm with retries ------------------------------------------------------

class HelloClient:
    """One attempt of a client: its socket and where it is."""

    __slots__ = ("index", "sock", "fd", "stage", "buf", "accept", "started", "limit", "expires")

    def __init__(self, index, sock, started, limit):
        self.index, self.sock, self.fd, self.stage = index, sock, sock.fileno(), CONNECTING
        self.buf, self.accept = b"", None
        self.started, self.limit, self.expires = started, limit, started + limit


def hello_kind(reply, broadcasts):
    """What a hello reply (a dict) says: None (connected) or the failure kind."""
    status, reason = reply.get("status"), reply.get("reason")
    if reply.get("messageType") == "hello" and status == 200:
        if broadcasts and (reply.get("broadcasts") or {}).get("errors"):
            return "broadcast_unknown"
        return None
    if status == 503:
        return "overloaded" if reason == "error - overloaded" else "storage_error_503"
    if status == 500 and reason == "already_connected":
        return "already_connected"
    return f"hello_{status}"


def hello_storm(host, port, at, count=0, uaids=None, source=None, concurrency=300,
                broadcasts=None, deadline=600.0, timeout=60.0, backoff=(0.2, 1.0)):
    """At monotonic time ``at``, one client per ``uaids`` entry (hello with
    it) or ``count`` new clients (hello without a uaid), connecting from
    ``(source, 0)`` when given (a list: client i from ``source[i % len]``),
    hello naming ``broadcasts``. At most
    ``concurrency`` attempts in flight; a failed attempt is counted by kind,
    its socket reset, and the client tries again after ``backoff`` s (not
    holding a slot meanwhile) until ``deadline`` s after ``at`` (then it gave
    up). Each phase of an attempt (TCP connect, upgrade, hello reply) has
    ``min(timeout, max(time left, 1 s))``, as ``wsclient.connect`` gave the
    first two: ``connect_timeout`` for those, ``hello_timeout`` for the last.

    Returns (answer, connected): the answer is ``c100k``'s ``storm_hello``
    figures (``latency``: the successful attempt's TCP connect -> hello
    reply, s; ``done``: ``at`` -> reply, s); ``connected`` is (socket, the
    reply's uaid, bytes received after the reply) per client, the sockets
    open and no longer on this storm's epoll."""
    total = len(uaids) if uaids else count
    sources = [source] if isinstance(source, str) else source
    end = at + deadline
    delay = at - time.monotonic()
    if delay > 0:
        time.sleep(delay)
    poller = select.epoll()
    waiting = [(at, i) for i in range(total)]  # a heap: (when to try, client index)
    flying = {}  # fd -> HelloClient, the attempts in flight
    kinds, samples, latencies, done, connected = {}, {}, [], [], []
    counts = {"changed": 0, "gave_up": 0}

    def failed(index, kind, detail):
        """Count the failed attempt; the client tries again after the backoff."""
        kinds[kind] = kinds.get(kind, 0) + 1
        if len(samples.setdefault(kind, [])) < 3:
            samples[kind].append(detail[:300])
        heapq.heappush(waiting, (time.monotonic() + random.uniform(*backoff), index))

    def fail(client, kind, detail=""):
        if flying.get(client.fd) is client:
            del flying[client.fd]
            poller.unregister(client.fd)
        linger_zero(client.sock)
        client.sock.close()
        failed(client.index, kind, detail)

    def send(client, data, lost):
        try:
            if client.sock.send(data) == len(data):
                return True
            fail(client, "other", "short send")
        except OSError as exc:
            fail(client, lost, repr(exc))
        return False

    def start(index, now):
        try:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        except OSError as exc:  # out of descriptors
            return failed(index, "connect_error", repr(exc))
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client = HelloClient(index, sock, now, min(timeout, max(end - now, 1.0)))
        try:
            if sources:
                sock.bind((sources[index % len(sources)], 0))
            code = sock.connect_ex((host, port))
        except OSError as exc:
            return fail(client, "connect_error", repr(exc))
        if code not in (0, errno.EINPROGRESS):
            return fail(client, "connect_error", f"connect: {os.strerror(code)}")
        flying[client.fd] = client
        poller.register(client.fd, select.EPOLLOUT)

    def replied(client, payload, rest):
        try:
            reply = json.loads(payload)
            kind = hello_kind(reply, broadcasts)
        except (ValueError, AttributeError) as exc:
            return fail(client, "other", f"{exc!r}: {payload[:200]!r}")
        if kind:
            return fail(client, kind, json.dumps(reply))
        now = time.monotonic()
        latencies.append(round(now - client.started, 5))
        done.append(round(now - at, 4))
        del flying[client.fd]
        poller.unregister(client.fd)
        uaid = uaids[client.index] if uaids else None
        counts["changed"] += bool(uaid) and reply.get("uaid") != uaid
        connected.append((client.sock, reply.get("uaid"), rest))

    def step(client):
        """The socket is ready: move the attempt along."""
        sock = client.sock
        if client.stage == CONNECTING:
            why = connect_error(sock)
            if why:
                return fail(client, "connect_error", why)
            request, client.accept = _handshake(host, port)
            if send(client, request, "handshake_lost"):
                client.stage, client.expires = UPGRADING, time.monotonic() + client.limit
                poller.modify(client.fd, select.EPOLLIN)
            return
        received = receive(sock)
        if received is None:
            return
        data, why = received
        if not data:
            return fail(client, "handshake_lost" if client.stage == UPGRADING
                        else "closed_before_reply", why)
        if len(client.buf) + len(data) > MAX_BUFFERED:
            return fail(client, "other", "too much unparsed data")
        buf = client.buf + data
        if client.stage == UPGRADING:
            end_of_head = buf.find(b"\r\n\r\n")
            if end_of_head < 0:
                client.buf = buf
                return
            refused = upgrade_refused(buf[:end_of_head], client.accept)
            if refused:
                return fail(client, *refused)
            buf = buf[end_of_head + 4:]
            uaid = uaids[client.index] if uaids else None
            if not send(client, client_frame(OP_TEXT, hello_text(uaid, broadcasts).encode()),
                        "closed_before_reply"):
                return
            client.stage, client.expires = HELLO_SENT, time.monotonic() + client.limit
        while True:  # frame by frame: what follows the reply is the caller's
            frames, buf = server_frames(buf, 1)
            if not frames:
                client.buf = buf
                return
            opcode, payload = frames[0]
            if opcode == OP_TEXT:
                return replied(client, payload, buf)
            if opcode == OP_PING:
                if not send(client, client_frame(OP_PONG, payload), "closed_before_reply"):
                    return
            elif opcode == OP_CLOSE:
                return fail(client, "closed_before_reply", f"close frame {payload[:2].hex()}")
            elif opcode != OP_PONG:
                return fail(client, "other", f"frame opcode {opcode}")

    next_scan = 0.0
    while flying or waiting:
        now = time.monotonic()
        while waiting and waiting[0][0] <= now and (now >= end or len(flying) < concurrency):
            index = heapq.heappop(waiting)[1]
            if now >= end:
                counts["gave_up"] += 1
            else:
                start(index, now)
        if now >= next_scan:
            for client in [c for c in flying.values() if c.expires <= now]:
                fail(client, "hello_timeout" if client.stage == HELLO_SENT else "connect_timeout")
            next_scan = now + SCAN_EVERY
        wait = SCAN_EVERY
        if waiting and (now >= end or len(flying) < concurrency):
            wait = min(wait, max(0.0, waiting[0][0] - now))
        for fd, _ in poller.poll(wait):
            client = flying.get(fd)
            if client is None:
                continue
            try:
                step(client)
            except Exception as exc:  # noqa: BLE001 - counted, never fatal
                if flying.get(fd) is client:
                    fail(client, "other", repr(exc))
    poller.close()
    return {"connected": len(connected), "gave_up": counts["gave_up"], "kinds": kinds,
            "samples": samples, "latency": latencies, "done": done,
            "uaid_changed": counts["changed"], "uaids": [uaid for _, uaid, _ in connected]}, connected
