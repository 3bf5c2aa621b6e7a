"""The reconnect storm's clients as plain non-blocking sockets on one epoll.

Why not ``wsclient`` (asyncio): in the storm the clients share the machine's
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
closes them). Only what the storm needs: no TLS, no extensions, text frames
from the server (pings answered, a close frame ends the client).
"""
import base64
import errno
import json
import os
import select
import socket
import struct
import time

from bench.wsclient import OP_PING, OP_PONG, OP_TEXT, accept_key, client_frame

RECV_SIZE = 65536
MAX_BUFFERED = 1 << 20  # a client that gets more than this unparsed is failed

CONNECTING, UPGRADING, HELLO_SENT, WAITING = range(4)


def server_frames(buf):
    """Complete frames at the start of ``buf``: ([(opcode, payload)], rest)."""
    frames, at, end = [], 0, len(buf)
    while end - at >= 2:
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


def _hello(uaid):
    return client_frame(OP_TEXT, json.dumps({"messageType": "hello", "use_webpush": True,
                                             "broadcasts": {}, "uaid": uaid}).encode())


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
                code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if code:
                    fail(client, f"connect: {os.strerror(code)}")
                    continue
                request, client.accept = _handshake(host, port)
                sock.send(request)  # a few hundred bytes into an empty buffer
                client.stage = UPGRADING
                poller.modify(sock, select.EPOLLIN)
                continue
            try:
                data = sock.recv(RECV_SIZE)
            except BlockingIOError:
                continue
            except OSError as exc:
                data, why = b"", repr(exc)
            else:
                why = "connection closed"
            if not data or len(client.buf) + len(data) > MAX_BUFFERED:
                fail(client, why if not data else "too much unparsed data")
                continue
            buf = client.buf + data
            if client.stage == UPGRADING:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    client.buf = buf
                    continue
                head = buf[:end]
                if not head.startswith(b"HTTP/1.1 101") or client.accept not in head:
                    fail(client, f"handshake: {head[:60]!r}")
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
