"""Baseline of direct-push: the least a process can do for PUT /push.

One process holds the WebSockets (``baseline_server``'s hand-made handshake,
one greenlet per connection; a hello registers the socket under a fresh uaid
in a dict) and serves, on a second port, a bare WSGI callable on gevent's
``pywsgi`` (TCP_NODELAY, no access log, like the connection node's router
listener): ``PUT /push/<uaid>`` parses the JSON body, looks the socket up by
uaid, sends the same notification frame the connection node sends (PROTOCOL
2.7) and answers 200 ``Client accepted for delivery`` (404 when the uaid is
unknown). No Flask, no session, no send lock.

    python -m bench.baseline_push

prints ``{"port": ..., "router_port": ..., "pid": ...}`` once both listen.
"""
from bench.baseline_server import (CLIENTS, StreamServer, listener, raise_nofile,  # noqa: I001
                                   serve_forever, serve_websocket, server_frame)

import simplejson as json  # noqa: E402
from gevent import pywsgi, socket  # noqa: E402

OK = [b"Client accepted for delivery"]
MISSING = [b"Client not connected."]
TEXT_OK = [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(OK[0])))]
TEXT_MISSING = [("Content-Type", "text/plain; charset=utf-8"),
                ("Content-Length", str(len(MISSING[0])))]


def push_app(environ, start_response):
    path = environ["PATH_INFO"]
    if environ["REQUEST_METHOD"] != "PUT" or not path.startswith("/push/"):
        start_response("404 Not Found", TEXT_MISSING)
        return MISSING
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body = json.loads(environ["wsgi.input"].read(length))
    sock = CLIENTS.get(path[6:])
    if sock is None:
        start_response("404 Not Found", TEXT_MISSING)
        return MISSING
    message = {"messageType": "notification", "channelID": body["channelID"],
               "version": body["version"]}
    if body.get("data"):
        message["data"] = body["data"]
        message["headers"] = body.get("headers") or {}
    sock.sendall(server_frame(0x1, json.dumps(message, separators=(",", ":")).encode()))
    start_response("200 OK", TEXT_OK)
    return OK


class QuietHandler(pywsgi.WSGIHandler):
    def log_request(self):
        pass


class NoDelayServer(pywsgi.WSGIServer):
    handler_class = QuietHandler

    def handle(self, sock, address):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().handle(sock, address)


def main():
    raise_nofile()
    websockets = StreamServer(listener(0), serve_websocket)
    router = NoDelayServer(listener(0), push_app, log=None, environ={"SERVER_NAME": "127.0.0.1"})
    serve_forever([websockets, router], {"port": websockets.server_port,
                                         "router_port": router.server_port})


if __name__ == "__main__":
    main()
