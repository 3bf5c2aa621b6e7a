"""``sendall`` for small writes on gevent sockets, without a syscall per call
that a small write does not need.

Why: gevent's ``socket.sendall`` sizes its chunks from ``SO_SNDBUF``, read
with a ``getsockopt`` system call on every call, before the ``send`` itself.
Our writes are small (a WebSocket frame, a router answer, a storage or
node-to-node request) and nearly always fit the socket buffer whole, and
syscalls are dear on these VMs: py-spy on a connection worker under the
``direct-push`` load found 14.8 % of its samples in that ``getsockopt``,
about as much as in the ``send`` calls themselves.

``sendall(sock, data)`` tries one non-blocking ``send`` on the socket gevent
wraps; whatever did not fit goes through gevent's ``sendall`` (which waits
for the socket, honours its timeout and raises as before). Only plain gevent
sockets take the short path: a TLS socket's wrapped socket carries
ciphertext, so anything else is handed to its own ``sendall``.
``FastSendallHandler`` gives a pywsgi handler the same for its answers.
"""
from gevent import socket as gevent_socket

_GEVENT_SOCKET = gevent_socket.socket


def sendall(sock, data):
    if sock.__class__ is not _GEVENT_SOCKET:
        return sock.sendall(data)
    try:
        sent = sock._sock.send(data)
    except BlockingIOError:
        sent = 0
    if sent < len(data):
        sock.sendall(memoryview(data)[sent:])
    return None


class FastSendallHandler:
    """A mixin for ``gevent.pywsgi.WSGIHandler`` subclasses: the handler's
    writes use :func:`sendall`, with pywsgi's own bookkeeping
    (``WSGIHandler._sendall``: the status noted on a socket error, the
    response length counted)."""

    def _sendall(self, data):
        try:
            sendall(self.socket, data)
        except OSError as ex:
            self.status = f"socket error: {ex}"
            if self.code > 0:
                self.code = -self.code
            raise
        self.response_length += len(data)
