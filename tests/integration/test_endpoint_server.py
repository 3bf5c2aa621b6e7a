"""The endpoint node's worker (connnode/endpoint/server.py): gevent's pywsgi
under gunicorn, with gunicorn's keep-alive timeout and a graceful stop that
does not wait for idle kept-alive connections. A real gunicorn endpoint
node, raw sockets."""
import socket
import time
import uuid

import pytest

from tests.harness import EndpointNode

REQUEST = b"GET /__lbheartbeat__ HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


def tables():
    suffix = uuid.uuid4().hex[:8]
    return {"router": f"router_{suffix}", "message": f"message_{suffix}"}


def kept_alive(node):
    """A connection that made one request and keeps it alive (HTTP/1.1)."""
    sock = socket.create_connection(("127.0.0.1", node.port), timeout=30)
    sock.sendall(REQUEST)
    answer = b""
    while b"\r\n\r\n" not in answer:
        chunk = sock.recv(4096)
        assert chunk, "closed before the answer"
        answer += chunk
    assert answer.startswith(b"HTTP/1.1 200")
    return sock


def seconds_until_closed(sock, limit):
    """Seconds until the server closes ``sock`` (EOF or reset), at most ``limit``."""
    started = time.monotonic()
    sock.settimeout(limit)
    try:
        while sock.recv(4096):
            pass
    except ConnectionResetError:
        pass
    except socket.timeout:
        pytest.fail(f"still open after {limit} s")
    return time.monotonic() - started


@pytest.fixture
def node(dynalite, tmp_path, request):
    made = EndpointNode(dynalite, tables(), log_path=tmp_path / "ep.log")
    made.env["GUNICORN_CMD_ARGS"] = request.param
    made.start()
    yield made
    made.stop()


@pytest.mark.parametrize("node", ["--keep-alive 1"], indirect=True)
def test_a_silent_kept_alive_connection_is_closed_after_keepalive_seconds(node):
    sock = kept_alive(node)
    try:
        assert 0.5 <= seconds_until_closed(sock, 15) < 10
    finally:
        sock.close()


@pytest.mark.parametrize("node", ["--keep-alive 120 --graceful-timeout 60"], indirect=True)
def test_a_graceful_stop_closes_idle_connections_instead_of_waiting(node):
    """Idle for up to 120 s by its keep-alive, graceful stop allowed 60 s:
    the worker closes the connection and exits at once."""
    sock = kept_alive(node)
    try:
        started = time.monotonic()
        process = node.process
        node.stop(timeout=30)
        assert process.returncode == 0 and time.monotonic() - started < 15
        assert seconds_until_closed(sock, 5) < 5
    finally:
        sock.close()
