"""A conditional write whose first attempt lands but whose answer is lost
(a read timeout, a dropped connection) is retried by the client; the retry
fails its own condition. The hello write must still count as a success
(the 100,000-connection storm met 'already_connected' for brand-new uaids).

A small proxy between the storage client and dynalite forwards every
request and, once, swallows the answer to an UpdateItem."""
import socket
import uuid

import gevent
import pytest
from gevent.server import StreamServer

from connnode.db.storage import Storage
from tests.conftest import make_settings

pytestmark = pytest.mark.timeout(60)


def read_http_message(sock, buffered=b""):
    """One HTTP message (headers and a Content-Length body) from ``sock``:
    (message bytes, bytes read beyond it), or (None, b"") at EOF."""
    data = buffered
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return None, b""
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            return None, b""
        rest += chunk
    return head + b"\r\n\r\n" + rest[:length], rest[length:]


class AnswerDroppingProxy:
    """Forwards to dynalite; the first answer to a request whose target is
    ``operation`` is swallowed and the client's connection closed."""

    def __init__(self, upstream_port, operation="UpdateItem"):
        self.upstream_port = upstream_port
        self.target = f"DynamoDB_20120810.{operation}".encode()
        self.dropped = 0
        self.server = StreamServer(("127.0.0.1", 0), self.handle)
        self.server.start()
        self.endpoint = f"http://127.0.0.1:{self.server.server_port}"

    def handle(self, client, _address):
        upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
        pending = b""
        try:
            while True:
                request, pending = read_http_message(client, pending)
                if request is None:
                    return
                upstream.sendall(request)
                answer, _ = read_http_message(upstream)
                if answer is None:
                    return
                if self.dropped == 0 and self.target in request:
                    self.dropped += 1
                    return  # the write landed; its answer never arrives
                client.sendall(answer)
        finally:
            upstream.close()
            client.close()

    def stop(self):
        self.server.stop()


@pytest.fixture
def stores(dynalite, request_path):
    """(Storage straight to dynalite, Storage through an AnswerDroppingProxy,
    the proxy), on either request path."""
    proxy = AnswerDroppingProxy(int(dynalite.endpoint.rsplit(":", 1)[1]))
    try:
        settings = make_settings(dynalite, **request_path)
        direct = Storage(settings)
        direct.create_tables()
        settings.aws_ddb_endpoint = proxy.endpoint
        yield direct, Storage(settings), proxy
    finally:
        proxy.stop()


def test_a_hello_write_whose_answer_was_lost_is_still_a_success(stores):
    direct, through_proxy, proxy = stores
    uaid = uuid.uuid4().hex
    record = {"uaid": uaid, "node_id": "http://127.0.0.1:8100", "connected_at": 1000,
              "router_type": "webpush", "last_connect": 202401010001,
              "current_month": "message_2024_01", "record_version": 1, "expiry": 2000000000}
    with gevent.Timeout(30):
        assert through_proxy.router.register_user(record) == (True, {})
    assert proxy.dropped == 1
    stored = direct.router.get_uaid(uaid)
    assert (stored["node_id"], stored["connected_at"]) == ("http://127.0.0.1:8100", 1000)


def test_a_resumed_hello_write_whose_answer_was_lost_is_still_a_success(stores):
    direct, through_proxy, proxy = stores
    uaid = uuid.uuid4().hex
    assert direct.router.register_user({
        "uaid": uaid, "connected_at": 1000, "router_type": "webpush",
        "last_connect": 202401010001, "current_month": "message_2024_01",
        "record_version": 1, "expiry": 2000000000})[0]
    with gevent.Timeout(30):
        written, record = through_proxy.router.resume_user(uaid, "http://127.0.0.1:8100", 2000,
                                                           2000000001)
    assert proxy.dropped == 1
    assert written and (record["node_id"], record["connected_at"]) == ("http://127.0.0.1:8100", 2000)
    assert record["current_month"] == "message_2024_01"  # the rest, read back
