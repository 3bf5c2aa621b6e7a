"""Baseline of idle-memory: the floor of this runtime for one idle WebSocket.

A bare gevent ``StreamServer`` in its own process: it does the WebSocket
opening handshake by hand, then each connection is one greenlet blocked in
``recv`` on its socket. So that the benchmark's clients run unchanged, text
frames get canned answers (a hello reply with a fresh uaid, a register reply);
pings are answered, a close frame is echoed. Nothing else: no Flask, no
gevent-websocket, no session objects, no storage.

    python -m bench.baseline_server [port]

prints ``{"port": ..., "pid": ...}`` once it listens, then serves until
SIGTERM. ``baseline_push`` reuses :func:`serve_websocket` and the registry.
"""
from gevent import monkey

monkey.patch_all()

import base64  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import struct  # noqa: E402
import sys  # noqa: E402
import uuid  # noqa: E402

import gevent  # noqa: E402
import gevent.event  # noqa: E402
from gevent.server import StreamServer  # noqa: E402

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

#: uaid -> socket of the connection that said hello (used by baseline_push).
CLIENTS = {}


def server_frame(opcode, payload):
    n = len(payload)
    if n < 126:
        return struct.pack("!BB", 0x80 | opcode, n) + payload
    if n < 65536:
        return struct.pack("!BBH", 0x80 | opcode, 126, n) + payload
    return struct.pack("!BBQ", 0x80 | opcode, 127, n) + payload


def unmask(payload, mask):
    n = len(payload)
    if not n:
        return b""
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")


def answer(sock, text):
    """Canned answer to a client text frame; the uaid given out by a hello."""
    message = json.loads(text)
    kind = message.get("messageType")
    if kind == "hello":
        uaid = uuid.uuid4().hex
        CLIENTS[uaid] = sock
        reply = {"messageType": "hello", "uaid": uaid, "status": 200, "use_webpush": True,
                 "ping": 300, "env": "development", "broadcasts": {}}
    elif kind == "register":
        reply = {"messageType": "register", "channelID": message.get("channelID"), "status": 200,
                 "pushEndpoint": "http://127.0.0.1:8082/wpush/v1/baseline"}
    else:
        return None
    sock.sendall(server_frame(0x1, json.dumps(reply, separators=(",", ":")).encode()))
    return reply.get("uaid")


def handshake(sock):
    """Read the upgrade request and answer 101; False if the client went away."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            return False
        data += chunk
    key = b""
    for line in data.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"sec-websocket-key":
            key = value.strip()
    accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
    sock.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                 b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept +
                 b"\r\nSec-WebSocket-Protocol: push-notification\r\n\r\n")
    return True


def serve_websocket(sock, _address):
    uaid = None
    try:
        if not handshake(sock):
            return
        buf = b""
        while True:
            chunk = sock.recv(4096)
            if not chunk:
                return
            buf += chunk
            while len(buf) >= 2:
                length = buf[1] & 0x7F
                pos = 2
                if length == 126:
                    if len(buf) < 4:
                        break
                    length = struct.unpack_from("!H", buf, 2)[0]
                    pos = 4
                elif length == 127:
                    if len(buf) < 10:
                        break
                    length = struct.unpack_from("!Q", buf, 2)[0]
                    pos = 10
                if len(buf) < pos + 4 + length:
                    break
                opcode = buf[0] & 0x0F
                payload = unmask(buf[pos + 4:pos + 4 + length], buf[pos:pos + 4])
                buf = buf[pos + 4 + length:]
                if opcode == 0x1:
                    uaid = answer(sock, payload) or uaid
                elif opcode == 0x9:
                    sock.sendall(server_frame(0xA, payload))
                elif opcode == 0x8:
                    sock.sendall(server_frame(0x8, payload[:2]))
                    return
    except OSError:
        pass
    finally:
        if uaid and CLIENTS.get(uaid) is sock:
            del CLIENTS[uaid]
        sock.close()


def listener(port):
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(2048)
    return sock


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def serve_forever(servers, info):
    for server in servers:
        server.start()
    print(json.dumps(dict(info, pid=os.getpid())), flush=True)
    stop = gevent.event.Event()
    gevent.signal_handler(signal.SIGTERM, stop.set)
    gevent.signal_handler(signal.SIGINT, stop.set)
    stop.wait()
    for server in servers:
        server.stop(timeout=1)


def main():
    raise_nofile()
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    server = StreamServer(listener(port), serve_websocket)
    serve_forever([server], {"port": server.server_port})


if __name__ == "__main__":
    main()
