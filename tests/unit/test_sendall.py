"""connnode/sendall.py: small writes take one non-blocking send, what does
not fit follows through gevent's sendall, other sockets keep their own."""
import socket

import gevent
import gevent.socket
import pytest

from connnode.sendall import sendall


def test_a_small_write_is_one_send_without_getsockopt(monkeypatch):
    ours, theirs = gevent.socket.socketpair()
    calls = []
    real = gevent.socket.socket.getsockopt
    monkeypatch.setattr(gevent.socket.socket, "getsockopt",
                        lambda sock, *args: calls.append(args) or real(sock, *args))
    sendall(ours, b"hello")
    assert theirs.recv(16) == b"hello"
    assert calls == []  # gevent's own sendall would have asked for SO_SNDBUF


def test_what_does_not_fit_follows_whole_and_in_order():
    ours, theirs = gevent.socket.socketpair()
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    data = bytes(range(256)) * 8192  # 2 MiB, far over the buffer
    received = bytearray()

    def read():
        while len(received) < len(data):
            chunk = theirs.recv(65536)
            if not chunk:
                return
            received.extend(chunk)
    reader = gevent.spawn(read)
    sendall(ours, data)
    reader.join(10)
    assert bytes(received) == data


def test_a_closed_peer_raises_as_sendall_does():
    ours, theirs = gevent.socket.socketpair()
    theirs.close()
    with pytest.raises(OSError):
        for _ in range(3):  # the first write may still be accepted by the kernel
            sendall(ours, b"x" * 65536)


def test_other_sockets_use_their_own_sendall():
    """A TLS socket (any socket that is not a plain gevent one) is written
    through its own sendall, never around it."""
    class Wrapped:
        def __init__(self):
            self.sent = []
            self._sock = None  # would be the raw socket under the TLS layer

        def sendall(self, data):
            self.sent.append(data)
    wrapped = Wrapped()
    sendall(wrapped, b"plaintext")
    assert wrapped.sent == [b"plaintext"]
