"""connection/loadshare.py and the public server's use of it
(worker.public_server_class): a worker at its connection limit leaves new
connections to a sibling with room, over real sockets and a real fork."""
import os
import socket
import time

import gevent
from gevent import pywsgi
from gevent.event import Event
from gevent.pool import Pool

from connnode.connection.loadshare import STALE_AFTER, LoadShare, WorkerLoads
from connnode.connection.worker import public_server_class

WAIT = 5.0


def test_the_table_is_shared_with_forked_workers():
    loads = WorkerLoads()
    pid = os.fork()
    if pid == 0:  # the worker
        LoadShare(loads, 3, 100, lambda: 42).report()
        os._exit(0)
    assert os.waitpid(pid, 0)[1] == 0
    assert [(slot, count) for slot, _, count in loads.records()] == [(3, 42)]


def share_with(loads, limit, count, slot=0):
    share = LoadShare(loads, slot, limit, lambda: count)
    share.report()
    return share


def test_at_the_limit_a_sibling_below_it_by_the_margin_takes_the_next_connection():
    loads = WorkerLoads()
    me = share_with(loads, 1000, 1000)  # margin 10 (1 %)
    assert not me.leave_to_sibling(1000)  # its own record does not count
    now = time.monotonic()
    loads.write(1, 990, now)
    assert not me.leave_to_sibling(1000, now)  # within the margin: as good as full
    loads.write(1, 989, now)
    assert me.leave_to_sibling(1000, now)
    assert not me.leave_to_sibling(999, now)  # below its own limit


def test_stale_and_withdrawn_siblings_are_left_out():
    loads = WorkerLoads()
    me = share_with(loads, 1000, 1000)
    now = time.monotonic()
    loads.write(1, 0, now)
    assert me.leave_to_sibling(1000, now)
    assert not me.leave_to_sibling(1000, now + STALE_AFTER + 0.1)  # stopped reporting
    LoadShare(loads, 1, 1000, lambda: 0).withdraw()  # stopped accepting (shutdown)
    assert not me.leave_to_sibling(1000, now)


class FakeShare:
    def __init__(self):
        self.leave = True

    def leave_to_sibling(self, pool_size):
        return self.leave and pool_size >= 1


def test_the_public_server_stops_accepting_while_its_share_says_so():
    release = Event()

    def app(environ, start_response):
        if environ["PATH_INFO"] == "/hold":
            release.wait(WAIT)
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]

    share = FakeShare()
    server = public_server_class(pywsgi.WSGIServer, share)(
        ("127.0.0.1", 0), app, spawn=Pool(10), log=None, error_log=None)
    server.start()
    try:
        held = socket.create_connection(("127.0.0.1", server.server_port), timeout=WAIT)
        held.sendall(b"GET /hold HTTP/1.1\r\nHost: x\r\n\r\n")
        deadline = time.monotonic() + WAIT
        while len(server.pool) < 1 and time.monotonic() < deadline:
            gevent.sleep(0.01)
        assert len(server.pool) == 1  # the share says: leave the next one
        waiting = socket.create_connection(("127.0.0.1", server.server_port), timeout=WAIT)
        waiting.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        waiting.setblocking(False)
        gevent.sleep(0.3)  # six rechecks, each told to leave it (a bounded wait for nothing)
        try:
            answer = waiting.recv(100)
        except BlockingIOError:
            answer = None
        assert answer is None  # left in the queue for a sibling
        share.leave = False  # e.g. every sibling full: this worker takes it after all
        waiting.setblocking(True)
        waiting.settimeout(WAIT)
        assert waiting.recv(100).startswith(b"HTTP/1.1 200")
        release.set()
        assert held.recv(100).startswith(b"HTTP/1.1 200")
        held.close()
        waiting.close()
    finally:
        release.set()
        server.stop(timeout=0)


def test_the_public_server_accepts_one_connection_per_wakeup():
    cls = public_server_class(pywsgi.WSGIServer)
    assert issubclass(cls, pywsgi.WSGIServer) and cls.max_accept == 1
    assert pywsgi.WSGIServer.max_accept == 100  # gevent's own is left alone
