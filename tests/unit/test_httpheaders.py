"""connnode/httpheaders.py: the header block of a request read as pywsgi
and gunicorn read it (and refused where http.client refuses it), and a real
pywsgi server built on it answering requests end to end."""
import io

import gevent.socket
import pytest
from gevent import pywsgi

from connnode.httpheaders import MAX_HEADERS, MAX_LINE, FastHeadersHandler, RequestHeaders


def read(raw):
    return RequestHeaders.read(io.BufferedReader(io.BytesIO(raw)))


def test_names_are_case_insensitive_and_the_first_value_wins():
    headers = read(b"Content-Type: text/plain\r\nX-A: 1\r\nx-a: 2\r\nTTL:  60 \r\n\r\nbody")
    assert headers.status == ""
    assert headers.get("content-type") == headers.typeheader == "text/plain"
    assert headers.get("X-A") == headers.getheader("x-a") == "1"
    assert headers.get("ttl") == "60"
    assert headers.get("missing", "d") == "d" and "missing" not in headers
    assert headers.items() == [("Content-Type", "text/plain"), ("X-A", "1"), ("x-a", "2"),
                               ("TTL", "60")]
    assert headers.headers == ["Content-Type: text/plain\r\n", "X-A: 1\r\n", "x-a: 2\r\n",
                               "TTL: 60\r\n"]


def test_delete_removes_every_value():
    headers = read(b"Content-Length: 5\r\ncontent-length: 6\r\nA: b\r\n\r\n")
    del headers["content-length"]
    assert headers.items() == [("A", "b")]


def test_folded_lines_continue_the_header():
    assert read(b"X-Long: one\r\n  two\r\n\ttwo more\r\n\r\n").get("x-long") == "one two two more"


def test_the_body_is_left_in_the_reader():
    rfile = io.BufferedReader(io.BytesIO(b"A: b\r\n\r\nthe body"))
    RequestHeaders.read(rfile)
    assert rfile.read() == b"the body"


@pytest.mark.parametrize("raw, status", [
    (b"X: " + b"a" * MAX_LINE + b"\r\n\r\n", "Line too long"),
    (b"".join(b"X-%d: v\r\n" % i for i in range(MAX_HEADERS + 1)) + b"\r\n",
     "More than 100 headers"),
    (b"no colon here\r\n\r\n", "Malformed header line"),
    (b": no name\r\n\r\n", "Malformed header line"),
    (b"Name : space before the colon\r\n\r\n", "Malformed header line"),
])
def test_malformed_heads_are_refused(raw, status):
    assert read(raw).status == status


class Handler(FastHeadersHandler, pywsgi.WSGIHandler):
    pass


def app(environ, start_response):
    body = environ["wsgi.input"].read()
    answer = f"{environ['REQUEST_METHOD']} {environ.get('HTTP_TTL')} " \
             f"{environ.get('CONTENT_TYPE')} {body.decode()}".encode()
    start_response("200 OK", [("Content-Length", str(len(answer)))])
    return [answer]


@pytest.fixture
def server():
    srv = pywsgi.WSGIServer(("127.0.0.1", 0), app, handler_class=Handler, log=None)
    srv.start()
    yield srv
    srv.stop(timeout=1)


def exchange(server, raw):
    sock = gevent.socket.create_connection(("127.0.0.1", server.server_port))
    sock.sendall(raw)
    data = b""
    with gevent.Timeout(5):
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    sock.close()
    return data


def test_pywsgi_serves_requests_with_it(server):
    answer = exchange(server, b"POST /x HTTP/1.1\r\nHost: a\r\nTTL: 60\r\nContent-Type: text/plain"
                              b"\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello")
    assert answer.startswith(b"HTTP/1.1 200 OK") and answer.endswith(b"POST 60 text/plain hello")


def test_pywsgi_answers_a_malformed_head_400(server):
    answer = exchange(server, b"PUT /x HTTP/1.1\r\nHost: a\r\nbroken\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400")
