"""In-process cost of one PUT /push call: connnode's router callable (with a
real Session and Transport behind it) against ``baseline_push.push_app``,
same body, no server around either, and a socket stand-in that takes every
frame at once. What is left of direct-push's gap once pywsgi, the kernel
and the load generator are taken out.

    python -m bench.router_call [calls]

Prints microseconds per call, best of 3 rounds (default 20,000 calls each).
"""
from gevent import monkey

monkey.patch_all()

import io  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402

import simplejson as json  # noqa: E402

from bench import baseline_push, baseline_server  # noqa: E402
from connnode.connection.router_app import create_router_app  # noqa: E402
from connnode.connection.session import READY, Session  # noqa: E402
from connnode.connection.transport import Transport  # noqa: E402

ROUNDS = 3


class SinkSocket:
    """Takes every frame; its file number is an idle socket's (the busy check
    asks the kernel about it)."""

    def __init__(self):
        self.idle, self.peer = socket.socketpair()

    def fileno(self):
        return self.idle.fileno()

    def sendall(self, data):
        pass


class Quiet:
    """Stands in for the node's timers and metrics."""

    def call_later(self, *args):
        return None

    def cancel(self, entry):
        pass

    def increment(self, *args, **kwargs):
        pass


class NodeSettings:
    msg_limit = 100
    hello_timeout = auto_ping_interval = idle_timeout = 0


class Node:
    """Stands in for the node (the router app's view) and its session context."""
    settings = NodeSettings()
    timers = metrics = Quiet()

    def __init__(self):
        self.registry = {}
        self.context = self


class WebSocketStub:
    def __init__(self, sock):
        self.handler = type("Handler", (), {"socket": sock, "rfile": None})()


def main():
    calls = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
    sink = SinkSocket()
    node = Node()
    session = Session(node.context, Transport(WebSocketStub(sink), 65536, 65536, reader=object()), 1)
    session.state, session.uaid = READY, uuid.uuid4().hex
    node.registry[session.uaid] = session
    baseline_server.CLIENTS[session.uaid] = sink
    body = json.dumps({"channelID": str(uuid.uuid4()), "version": "v" * 140, "ttl": 60,
                       "topic": None, "timestamp": 1, "sortkey_timestamp": 2, "data": "x" * 270,
                       "headers": {"encoding": "aes128gcm"}}).encode()
    path, length = "/push/" + session.uaid, str(len(body))

    def start_response(status, headers):
        pass

    def one(app):
        if len(session.direct) >= 50:  # unacked direct messages: stay below the busy cap
            session.direct = {}
        app({"REQUEST_METHOD": "PUT", "PATH_INFO": path, "CONTENT_LENGTH": length,
             "wsgi.input": io.BytesIO(body)}, start_response)

    apps = (("connnode", create_router_app(node)), ("baseline", baseline_push.push_app))
    best = {}
    for name, app in apps:
        for _ in range(1000):
            one(app)
        for _ in range(ROUNDS):
            started = time.perf_counter()
            for _ in range(calls):
                one(app)
            per_call = (time.perf_counter() - started) / calls * 1e6
            best[name] = min(best.get(name, per_call), per_call)
    print(f"PUT /push callable, best of {ROUNDS} x {calls:,} calls (us per call)")
    for name, _ in apps:
        print(f"  {name:<9} {best[name]:6.1f}")
    print(f"  ratio     {best['connnode'] / best['baseline']:6.2f}x")


if __name__ == "__main__":
    main()
