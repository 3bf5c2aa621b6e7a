"""connnode/wire.py against scripted raw-socket servers: each answer shape
(length, chunked, up to the close, interim 1xx, no body), when a connection
is kept or dropped, bounds, timeouts and the blocking pool."""
import time

import gevent
import gevent.socket
import pytest
from gevent.server import StreamServer

from connnode import wire


class Scripted:
    """A server that reads whole requests and answers each with the next of
    ``answers`` (bytes, or a callable ``(sock) -> keep going``); it records
    (connection number, request bytes)."""

    def __init__(self, *answers):
        self.answers = list(answers)
        self.requests = []
        self.connections = 0
        self.server = StreamServer(("127.0.0.1", 0), self.handle)
        self.server.start()
        self.port = self.server.server_port

    def handle(self, sock, _address):
        self.connections += 1
        number, buf = self.connections, b""
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    chunk = sock.recv(65536)
                    if not chunk:
                        return
                    buf += chunk
                head, buf = buf.split(b"\r\n\r\n", 1)
                length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                                  if line.lower().startswith(b"content-length")))
                while len(buf) < length:
                    buf += sock.recv(65536)
                self.requests.append((number, head + b"\r\n\r\n" + buf[:length]))
                buf = buf[length:]
                answer = self.answers.pop(0)
                if callable(answer):
                    if not answer(sock):
                        return
                else:
                    sock.sendall(answer)
        finally:
            sock.close()

    def pool(self, **kwargs):
        return wire.WirePool("127.0.0.1", self.port, **kwargs)

    def stop(self):
        self.server.stop(timeout=1)


@pytest.fixture
def servers():
    made = []

    def make(*answers):
        made.append(Scripted(*answers))
        return made[-1]
    yield make
    for server in made:
        server.stop()


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Thing: a\r\n\r\nok"


def test_a_request_is_one_write_with_host_and_length(servers, monkeypatch):
    server = servers(OK)
    writes = []
    real = wire.sendall
    monkeypatch.setattr(wire, "sendall", lambda sock, data: writes.append(bytes(data)) or real(
        sock, data))
    response = server.pool(host_header="node:1").request("PUT", "/push/a", b'{"x":1}',
                                                         b"Content-Type: application/json\r\n")
    assert (response.status, response.data, response.headers["x-thing"]) == (200, b"ok", "a")
    assert writes == [b"PUT /push/a HTTP/1.1\r\nHost: node:1\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 7\r\n\r\n{\"x\":1}"]
    assert server.requests[0][1] == writes[0]


def test_keep_alive_reuses_the_connection(servers):
    server = servers(OK, OK, OK)
    pool = server.pool()
    assert [pool.request("GET", "/").status for _ in range(3)] == [200, 200, 200]
    assert [number for number, _ in server.requests] == [1, 1, 1]


def test_a_chunked_answer_is_decoded_and_the_connection_kept(servers):
    chunked = (b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n")
    server = servers(chunked, OK)
    pool = server.pool()
    response = pool.request("GET", "/")
    assert (response.status, response.data) == (201, b"hello world")
    assert pool.request("GET", "/").data == b"ok"
    assert [number for number, _ in server.requests] == [1, 1]


def test_an_answer_up_to_the_close_is_read_whole_and_not_pooled(servers):
    def until_close(sock):
        sock.sendall(b"HTTP/1.1 200 OK\r\n\r\npart one, ")
        gevent.sleep(0.05)
        sock.sendall(b"part two")
        return False
    server = servers(until_close, OK)
    pool = server.pool()
    assert pool.request("GET", "/").data == b"part one, part two"
    assert pool.request("GET", "/").data == b"ok"
    assert [number for number, _ in server.requests] == [1, 2]


@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA",  # bytes nobody asked for
])
def test_connections_that_cannot_be_reused_are_not_pooled(servers, answer):
    server = servers(answer, OK)
    pool = server.pool()
    assert pool.request("GET", "/").data == b"ok"
    assert pool.request("GET", "/").data == b"ok"
    assert [number for number, _ in server.requests] == [1, 2]


def test_an_interim_answer_is_skipped(servers):
    server = servers(b"HTTP/1.1 100 Continue\r\n\r\n" + OK)
    assert server.pool().request("PUT", "/", b"x").data == b"ok"


def test_no_body_statuses(servers):
    server = servers(b"HTTP/1.1 204 No Content\r\n\r\n", OK)
    pool = server.pool()
    assert (pool.request("DELETE", "/").status, pool.request("GET", "/").status) == (204, 200)
    assert [number for number, _ in server.requests] == [1, 1]


def test_a_pooled_connection_the_peer_closed_is_replaced_before_use(servers):
    def answer_then_close(sock):
        sock.sendall(OK)
        return False
    server = servers(answer_then_close, OK)
    pool = server.pool()
    assert pool.request("GET", "/").status == 200
    deadline = time.monotonic() + 5
    while server.connections < 1 or len(server.requests) < 1:  # bounded: the close is seen
        assert time.monotonic() < deadline
        gevent.sleep(0.01)
    gevent.sleep(0.05)  # the server's close reaches our side
    assert pool.request("GET", "/").status == 200
    assert [number for number, _ in server.requests] == [1, 2]


@pytest.mark.parametrize("answer, message", [
    (b"SSH-2.0-OpenSSH\r\n\r\n", "not an HTTP/1.x answer"),
    (b"HTTP/1.1 abc OK\r\n\r\n", "bad status line"),
    (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", "bad header line"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", "bad Content-Length"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (wire.MAX_BODY + 1), "out of bounds"),
    (b"HTTP/1.1 200 OK\r\nX: " + b"a" * (wire.MAX_HEAD + 10), "head over"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "bad chunk size"),
])
def test_malformed_answers_are_connection_lost(servers, answer, message):
    server = servers(answer)
    with pytest.raises(wire.ConnectionLost, match=message):
        server.pool().request("GET", "/")


def test_a_close_before_the_answer_is_connection_lost(servers):
    server = servers(lambda sock: False)
    with pytest.raises(wire.ConnectionLost, match="closed by the peer"):
        server.pool().request("GET", "/")


def test_refused_is_connect_failed():
    sock = gevent.socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    with pytest.raises(wire.ConnectFailed):
        wire.WirePool("127.0.0.1", port, connect_timeout=1).request("GET", "/")


def test_a_silent_server_is_a_read_timeout(servers):
    server = servers(lambda sock: gevent.sleep(5))
    started = time.monotonic()
    with pytest.raises(wire.ReadTimedOut):
        server.pool(read_timeout=0.2).request("GET", "/")
    assert 0.15 < time.monotonic() - started < 1.0


def test_the_total_timeout_bounds_a_trickling_answer(servers):
    def trickle(sock):
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
        for _ in range(100):
            sock.sendall(b"x")
            gevent.sleep(0.05)
        return False
    server = servers(trickle)
    started = time.monotonic()
    with pytest.raises(wire.ReadTimedOut, match="deadline passed|timed out"):
        server.pool(read_timeout=1).request("GET", "/", total_timeout=0.3)
    assert 0.25 < time.monotonic() - started < 1.0


def test_an_interrupted_call_drops_its_connection(servers):
    def slow(sock):
        gevent.sleep(0.3)
        sock.sendall(OK)
        return True
    server = servers(slow, OK)
    pool = server.pool()
    with pytest.raises(gevent.Timeout):
        with gevent.Timeout(0.05):
            pool.request("GET", "/")
    assert pool.request("GET", "/").data == b"ok"  # not the first call's late answer
    assert [number for number, _ in server.requests] == [1, 2]


def slow_ok(sock):
    """An answer after 20 ms, so that concurrent calls overlap."""
    gevent.sleep(0.02)
    sock.sendall(OK)
    return True


def test_a_blocking_pool_makes_callers_take_turns(servers):
    server = servers(*[slow_ok] * 10)
    pool = server.pool(maxsize=2, block=True, pool_timeout=5)
    calls = [gevent.spawn(pool.request, "GET", "/") for _ in range(10)]
    gevent.joinall(calls, timeout=10)
    assert [call.value.status for call in calls] == [200] * 10
    assert server.connections == 2


def test_a_blocking_pool_with_no_free_connection_in_time_is_a_pool_timeout(servers):
    server = servers(lambda sock: gevent.sleep(2))
    pool = server.pool(maxsize=1, block=True, pool_timeout=0.1)
    holder = gevent.spawn(pool.request, "GET", "/")
    gevent.sleep(0.05)
    with pytest.raises(wire.PoolTimeout):
        pool.request("GET", "/")
    holder.kill()


def test_idle_connections_beyond_maxsize_are_closed(servers):
    server = servers(*[slow_ok] * 4)
    pool = server.pool(maxsize=1)
    calls = [gevent.spawn(pool.request, "GET", "/") for _ in range(4)]
    gevent.joinall(calls, timeout=10)
    assert [call.value.status for call in calls] == [200] * 4
    assert server.connections == 4 and len(pool._idle) == 1



@pytest.mark.parametrize("kind", ["gevent", "standard"])
def test_the_liveness_peek_answers_at_once(kind):
    """gevent's sockets (the workers) and standard ones (the CLI, unpatched):
    an open connection is usable, a closed one is not, and neither check
    waits for the socket's timeout."""
    from gevent import monkey

    pair = gevent.socket.socketpair if kind == "gevent" else monkey.get_original(
        "socket", "socketpair")
    ours, theirs = pair()
    ours.settimeout(5)
    started = time.monotonic()
    assert wire._still_open(ours) is True
    theirs.sendall(b"unasked")
    assert wire._still_open(ours) is False
    theirs.close()
    assert wire._still_open(ours) is False
    assert time.monotonic() - started < 1.0
    assert ours.gettimeout() == 5
    ours.close()
