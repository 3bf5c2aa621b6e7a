"""connection/transport.py: one WebSocket's I/O (Transport, serve_connection,
the take-over from pywsgi through handler.py's stand-ins), over real sockets.

The server and clients are ``wsserver.py``'s: ConnectionHandler in a gevent
pywsgi server on 127.0.0.1, a fake session, websocket-client and a raw
socket client. The frame rules themselves are tested without sockets in
test_frames.py.
"""
import struct
import time
import tracemalloc

import gevent
import pytest
import websocket as wsclient
from gevent.event import Event

from connnode.connection import handler as cnhandler
from connnode.connection import transport as cntransport
from connnode.connection.closes import Close
from tests.unit.wsserver import (WAIT, RawClient, client_frame, make_server,  # noqa: F401
                                 recv_close_code, server, ws_connect)


# -- taking over from pywsgi ------------------------------------------------------

def test_socket_reader_exact_reads_across_chunks_and_read_ahead():
    from gevent import socket as gsocket
    left, right = gsocket.socketpair()
    try:
        reader = cnhandler.SocketReader(left, b"ab")
        assert reader.read(1) == b"a"  # from the bytes sent ahead
        right.sendall(b"cd")
        assert reader.read(3) == b"bcd"  # ahead + one recv
        sender = gevent.spawn(lambda: [right.sendall(part) or gevent.sleep(0.01)
                                       for part in (b"ef", b"gh", b"ijk")])
        assert reader.read(6) == b"efghij"  # several recvs, the rest kept
        sender.join(WAIT)
        assert reader.read(1) == b"k"
        right.close()
        assert reader.read(4) == b""  # EOF
    finally:
        left.close()


def test_upgraded_connection_keeps_no_http_leftovers_and_ends_cleanly(server):
    handler_class = server.server.handler_class
    logged, errors = [], []
    handler_class.log_request = lambda self: logged.append(self.format_request())
    handler_class.handle_error = lambda self, *exc_info: errors.append(exc_info)
    client = RawClient(server.port)
    transport = server.session().transport
    ws = transport._ws
    handler = ws.handler
    # Memory: gevent-websocket's stream and validator, the request's input
    # object and response headers are gone; the log's strings are shared.
    assert ws.stream is None and ws.raw_read is None and ws.utf8validator is None
    assert handler.wsgi_input is cnhandler._FINISHED_INPUT and handler.response_headers == ()
    assert handler._orig_status is cnhandler._SWITCHING_PROTOCOLS
    assert handler.requestline == "GET / HTTP/1.1"
    client.send(client_frame(0x8, struct.pack("!H", 1000)))
    assert client.recv_close_code() == 1000
    client.assert_eof()
    deadline = time.monotonic() + WAIT
    while not logged and time.monotonic() < deadline:
        gevent.sleep(0.01)
    assert errors == []
    assert len(logged) == 1 and '"GET / HTTP/1.1" 101 ' in logged[0]


# -- messages --------------------------------------------------------------------

def test_text_round_trip(server):
    ws = ws_connect(server)
    session = server.session()
    ws.send("hello")
    assert ws.recv() == "echo:hello"
    ws.send("héllo ☃")
    assert ws.recv() == "echo:héllo ☃"
    assert session.next_text() == "hello"
    assert session.next_text() == "héllo ☃"
    ws.close()
    assert session.closed.wait(WAIT)
    assert session.closed_calls == 1
    assert session.transport.peer_close_code == 1000


def test_send_many_writes_its_frames_in_one_write(server, monkeypatch):
    client = RawClient(server.port)
    session = server.session()
    sent = []
    real = cntransport.sendall
    monkeypatch.setattr(cntransport, "sendall", lambda sock, data: (sent.append(data), real(sock, data))[1])
    assert session.transport.send_many(["one", "twö", "x" * 300])
    assert len(sent) == 1
    assert [client.recv_frame() for _ in range(3)] == [
        (0x1, b"one"), (0x1, "twö".encode()), (0x1, b"x" * 300)]


def test_fragmented_message_is_reassembled(server):
    client = RawClient(server.port)
    session = server.session()
    client.send(client_frame(0x1, b"hel", fin=False))
    client.send(client_frame(0x9, b"mid"))  # control frames may interleave
    client.send(client_frame(0x0, "lo ☃".encode()[:4], fin=False))
    client.send(client_frame(0x0, "lo ☃".encode()[4:]))
    assert client.recv_frame() == (0xA, b"mid")
    assert session.next_text() == "hello ☃"
    assert client.recv_frame() == (0x1, "echo:hello ☃".encode())


def test_frame_of_exactly_max_frame_bytes_is_accepted(make_server):
    server = make_server(max_frame_bytes=2000)
    client = RawClient(server.port)
    session = server.session()
    client.send(client_frame(0x1, b"m" * 2000))
    assert session.next_text() == "m" * 2000


@pytest.mark.parametrize("code", [1000, 1002, 4774])
def test_close_codes_reach_the_client(server, code):
    ws = ws_connect(server)
    session = server.session()
    ws.send(f"close:{code}")
    assert recv_close_code(ws) == code  # websocket-client answers with its close frame
    assert session.closed.wait(WAIT)
    assert session.closed_calls == 1
    assert session.transport.close_code == code


def test_exception_in_on_text_closes_1011(server):
    ws = ws_connect(server)
    session = server.session()
    ws.send("boom")
    assert recv_close_code(ws) == 1011
    assert session.closed.wait(WAIT)
    assert session.closed_calls == 1


def test_unexpected_error_and_shutdown_close_with_their_rows(make_server):
    server = make_server()
    client = RawClient(server.port)
    server.session()
    client.send_text("boom")
    assert client.recv_frame() == (0x8, struct.pack("!H", 1011) + b"internal error")
    server = make_server()
    client = RawClient(server.port)
    session = server.session()
    server.stop()  # kills the connection's greenlet (GreenletExit)
    row = Close.SHUTTING_DOWN
    assert client.recv_frame() == (0x8, struct.pack("!H", row.code) + row.reason.encode())
    client.assert_eof()  # not waiting for the client's answer
    assert session.closed_calls == 1


# -- violations -------------------------------------------------------------------

def test_binary_message_closes_1003(server):
    client = RawClient(server.port)
    session = server.session()
    client.send(client_frame(0x2, b"\x00\x01\x02"))
    assert client.recv_close_code() == 1003
    client.send(client_frame(0x8, struct.pack("!H", 1000)))
    client.assert_eof()
    assert session.closed.wait(WAIT)
    assert session.closed_calls == 1


def test_frame_over_max_frame_bytes_closes_1009(make_server):
    server = make_server(max_frame_bytes=1000)
    client = RawClient(server.port)
    session = server.session()
    client.send(client_frame(0x1, b"x" * 1001))
    assert client.recv_close_code() == 1009
    # The rest of the oversized frame is skipped, so the client's close
    # frame is still found and the handshake completes.
    client.send(client_frame(0x8, struct.pack("!H", 1009)))
    client.assert_eof()
    assert session.closed_calls == 1
    assert session.transport.peer_close_code == 1009
    assert session.texts.qsize() == 0


def test_fragmented_message_over_max_frame_bytes_closes_1009(make_server):
    server = make_server(max_frame_bytes=1000)
    client = RawClient(server.port)
    session = server.session()
    client.send(client_frame(0x1, b"a" * 400, fin=False))
    client.send(client_frame(0x0, b"b" * 400, fin=False))
    client.send(client_frame(0x0, b"c" * 201))
    assert client.recv_close_code() == 1009
    assert session.texts.qsize() == 0


def test_header_claiming_2_pow_62_bytes_allocates_nothing(make_server):
    server = make_server(max_frame_bytes=65536)
    client = RawClient(server.port)
    server.session()
    tracemalloc.start()
    try:
        started = time.monotonic()
        client.send(client_frame(0x1, b"", length=2 ** 62)[:10] + b"\x00" * 4 + b"z" * 100)
        assert client.recv_close_code() == 1009
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.monotonic() - started < 2
    assert peak < 2_000_000


@pytest.mark.parametrize("payload", [b"\xff\xfe", b"abc\xc3", "☃".encode()[:2] + b"x"])
def test_invalid_utf8_closes_1007(server, payload):
    client = RawClient(server.port)
    session = server.session()
    client.send(client_frame(0x1, payload))
    assert client.recv_close_code() == 1007
    assert session.texts.qsize() == 0


def test_invalid_utf8_split_across_fragments_closes_1007(server):
    client = RawClient(server.port)
    server.session()
    client.send(client_frame(0x1, b"ok\xe2", fin=False))
    client.send(client_frame(0x0, b"\x98"))  # the snowman is missing its last byte
    assert client.recv_close_code() == 1007


@pytest.mark.parametrize("frames", [
    pytest.param([client_frame(0x1, b"hi", rsv=0x40)], id="reserved-bit"),
    pytest.param([client_frame(0x3, b"hi")], id="reserved-data-opcode"),
    pytest.param([client_frame(0xB, b"")], id="reserved-control-opcode"),
    pytest.param([client_frame(0x1, b"hi", mask=False)], id="unmasked"),
    pytest.param([client_frame(0x9, b"p", fin=False)], id="fragmented-ping"),
    pytest.param([client_frame(0x9, b"p" * 126)], id="control-over-125"),
    pytest.param([client_frame(0x0, b"hi")], id="continuation-without-start"),
    pytest.param([client_frame(0x1, b"a", fin=False), client_frame(0x1, b"b")], id="text-inside-fragmented"),
    pytest.param([client_frame(0x8, b"\x03")], id="one-byte-close"),
    pytest.param([client_frame(0x8, struct.pack("!H", 1005))], id="reserved-close-code"),
    pytest.param([client_frame(0x8, struct.pack("!H", 999))], id="close-code-999"),
])
def test_protocol_errors_close_1002(server, frames):
    client = RawClient(server.port)
    session = server.session()
    for frame in frames:
        client.send(frame)
    assert client.recv_close_code() == 1002
    assert session.texts.qsize() == 0


@pytest.mark.parametrize("frame, row", [
    pytest.param(client_frame(0x2, b"bin"), Close.BINARY, id="binary"),
    pytest.param(client_frame(0x1, b"\xff"), Close.INVALID_UTF8, id="invalid-utf8"),
    pytest.param(client_frame(0x1, b"x", mask=False), Close.UNMASKED, id="unmasked"),
    pytest.param(client_frame(0x8, b"\x03"), Close.INVALID_CLOSE_FRAME, id="one-byte-close"),
    pytest.param(client_frame(0x8, b""), Close.NORMAL, id="empty-close"),
])
def test_closes_carry_the_code_and_reason_of_their_row(server, frame, row):
    client = RawClient(server.port)
    server.session()
    client.send(frame)
    assert client.recv_frame() == (0x8, struct.pack("!H", row.code) + row.reason.encode())


# -- the peer's close frame -----------------------------------------------------------

@pytest.mark.parametrize("payload, answer", [
    (struct.pack("!H", 4000) + b"done", 4000),
    (struct.pack("!H", 1001), 1001),
    (b"", 1000),
])
def test_peer_close_is_answered_and_tcp_torn_down(server, payload, answer):
    client = RawClient(server.port)
    session = server.session()
    client.send(client_frame(0x8, payload))
    assert client.recv_close_code() == answer
    client.assert_eof()  # no second (code-less) close frame from gevent-websocket
    assert session.closed.wait(WAIT)
    assert session.closed_calls == 1


def test_close_reason_with_invalid_utf8_closes_1007(server):
    client = RawClient(server.port)
    server.session()
    client.send(client_frame(0x8, struct.pack("!H", 1000) + b"\xff"))
    assert client.recv_close_code() == 1007


# -- ping / pong --------------------------------------------------------------------

def test_server_ping_and_client_pong_is_recorded(server):
    ws = ws_connect(server)
    session = server.session()
    transport = session.transport
    assert transport.pong_received_since_ping  # no ping sent yet
    assert transport.ping()
    assert transport.ping_sent_at is not None
    assert not transport.pong_received_since_ping
    opcode, data = ws.recv_data(control_frame=True)  # websocket-client answers with a PONG
    assert opcode == wsclient.ABNF.OPCODE_PING and data == b""
    ws.send("mark:after-pong")  # TCP order: the PONG is processed before this message
    assert session.next_text() == "mark:after-pong"
    assert transport.pong_received_since_ping


def test_client_ping_gets_pong(server):
    ws = ws_connect(server)
    server.session()
    ws.ping(b"are you there")
    assert ws.recv_data(control_frame=True) == (wsclient.ABNF.OPCODE_PONG, b"are you there")


# -- closing from elsewhere, abort, safety ------------------------------------------

def test_close_from_another_greenlet_ends_the_read_loop(server):
    client = RawClient(server.port)
    session = server.session()
    transport = session.transport
    gevent.spawn(transport.close, 1000, "superseded").join(WAIT)
    assert transport.closing
    assert not transport.send("too late")
    opcode, payload = client.recv_frame()
    assert (opcode, payload) == (0x8, struct.pack("!H", 1000) + b"superseded")
    # The read loop waits for our close to be answered; data still in flight is dropped.
    client.send_text("ignored")
    client.send(client_frame(0x8, struct.pack("!H", 1000)))
    assert session.closed.wait(WAIT)
    client.assert_eof()
    assert session.closed_calls == 1
    assert session.texts.qsize() == 0


def _stuck_sender(transport, size=8_000_000):
    big = "q" * size
    sender = gevent.spawn(transport.send, big)
    gevent.sleep(0)
    assert not sender.ready()  # stuck in sendall, holding the send lock
    return sender, big.encode()


def test_ping_does_not_block_behind_a_stuck_sender(server):
    client = RawClient(server.port, rcvbuf=4096)
    transport = server.session().transport
    sender, big = _stuck_sender(transport)
    started = time.monotonic()
    assert transport.ping()
    assert time.monotonic() - started < 0.1
    assert client.recv_frame() == (0x1, big)
    assert client.recv_frame() == (0x9, b"")
    sender.join(WAIT)
    assert sender.value is True


def test_send_nowait_does_not_block_behind_a_stuck_sender(server):
    # the broadcast fan-out's send: frames stay whole and in order
    client = RawClient(server.port, rcvbuf=4096)
    transport = server.session().transport
    sender, big = _stuck_sender(transport)
    started = time.monotonic()
    assert transport.send_nowait('{"messageType":"broadcast"}')
    assert time.monotonic() - started < 0.1
    assert client.recv_frame() == (0x1, big)
    assert client.recv_frame() == (0x1, b'{"messageType":"broadcast"}')
    sender.join(WAIT)
    transport.close(1000)
    assert transport.send_nowait("{}") is False


def test_close_does_not_block_behind_a_stuck_sender(server):
    client = RawClient(server.port, rcvbuf=4096)
    transport = server.session().transport
    sender, big = _stuck_sender(transport)
    started = time.monotonic()
    assert transport.ping()  # queued, then cancelled: nothing follows a close frame
    transport.close(4000, "stuck")
    assert time.monotonic() - started < 0.1
    assert not transport.send("after close")
    # The frame being written stays intact and our close frame follows it.
    assert client.recv_frame() == (0x1, big)
    assert client.recv_frame() == (0x8, struct.pack("!H", 4000) + b"stuck")
    sender.join(WAIT)
    assert sender.value is True


def test_send_lock_exists_only_while_in_use_and_frames_never_interleave(server):
    client = RawClient(server.port, rcvbuf=4096)
    transport = server.session().transport
    assert transport.send("hello")
    assert client.recv_frame() == (0x1, b"hello")
    assert transport._lock is None  # memory: an idle connection holds no lock object
    sender, big = _stuck_sender(transport)
    assert transport._lock is not None
    second = gevent.spawn(transport.send, "second")
    gevent.sleep(0.05)
    assert not second.ready()  # waits for the stuck frame
    assert client.recv_frame() == (0x1, big)
    assert client.recv_frame() == (0x1, b"second")
    sender.join(WAIT)
    second.join(WAIT)
    assert sender.value is True and second.value is True
    assert transport._lock is None


def test_close_is_idempotent(server):
    client = RawClient(server.port)
    transport = server.session().transport
    transport.close(4774)
    transport.close(1000)
    assert client.recv_close_code() == 4774
    client.send(client_frame(0x8, struct.pack("!H", 4774)))
    client.assert_eof()


def test_abort_drops_tcp_without_a_close_frame(server):
    ws = ws_connect(server)
    session = server.session()
    session.transport.abort()
    with pytest.raises(wsclient.WebSocketConnectionClosedException):
        ws.recv()
    assert session.closed.wait(WAIT)
    assert session.closed_calls == 1
    assert not session.transport.send("x")


def test_safety_abort_when_the_client_never_answers_the_close(monkeypatch, server):
    monkeypatch.setattr(cntransport, "CLOSE_SAFETY_SECONDS", 0.3)
    client = RawClient(server.port)
    session = server.session()
    started = time.monotonic()
    session.transport.close(1000)
    assert client.recv_close_code() == 1000
    client.assert_eof()  # no answer from us: the server drops TCP
    elapsed = time.monotonic() - started
    assert 0.25 <= elapsed < 3
    assert session.closed.wait(WAIT)
    assert session.closed_calls == 1


def test_close_handshake_timeout_limits_the_wait(make_server):
    server = make_server(close_handshake_timeout=0.2, close_safety=30)
    client = RawClient(server.port)
    session = server.session()
    started = time.monotonic()
    session.transport.close(1000)
    assert client.recv_close_code() == 1000
    client.assert_eof()
    assert 0.15 <= time.monotonic() - started < 3


def test_safety_abort_covers_a_slow_on_closed(make_server):
    server = make_server(close_safety=0.3)
    client = RawClient(server.port)
    session = server.session()
    session.release_on_closed = Event()
    started = time.monotonic()
    client.send(client_frame(0x2, b"binary"))
    assert client.recv_close_code() == 1003
    client.send(client_frame(0x8, struct.pack("!H", 1003)))  # unread: on_closed is busy
    assert session.closed.wait(WAIT)
    client.assert_eof()  # torn down while on_closed is still running
    assert 0.25 <= time.monotonic() - started < 3
    assert not session.release_on_closed.is_set()
    session.release_on_closed.set()


def test_completed_handshake_tears_down_before_on_closed(server):
    client = RawClient(server.port)
    session = server.session()
    session.release_on_closed = Event()
    started = time.monotonic()
    client.send(client_frame(0x8, struct.pack("!H", 1000)))
    assert client.recv_close_code() == 1000
    client.assert_eof()  # at once, not after the (blocked) on_closed
    assert time.monotonic() - started < 1
    assert session.closed.wait(WAIT)
    assert not session.release_on_closed.is_set()
    session.release_on_closed.set()


# -- sending ------------------------------------------------------------------------

def test_busy_when_the_client_stops_reading(make_server):
    server = make_server(send_high_water=65536, max_frame_bytes=65536)
    client = RawClient(server.port, rcvbuf=4096)
    transport = server.session().transport
    assert not transport.busy
    chunk = "b" * 32768
    sender = gevent.spawn(lambda: [transport.send(chunk) for _ in range(100)])
    deadline = time.monotonic() + WAIT
    while not transport.busy and time.monotonic() < deadline:
        gevent.sleep(0.01)
    assert transport.busy
    kernel_seen = transport._kernel_unsent()
    assert kernel_seen > 0  # TIOCOUTQ sees the bytes stuck in the kernel
    received = 0
    while received < 100:
        opcode, payload = client.recv_frame()
        assert (opcode, payload) == (0x1, chunk.encode())
        received += 1
    sender.join(WAIT)
    assert sender.value == [True] * 100
    deadline = time.monotonic() + WAIT
    while transport.busy and time.monotonic() < deadline:
        gevent.sleep(0.01)
    assert not transport.busy


def test_busy_asks_the_kernel_only_when_its_bound_could_pass_high_water(make_server, monkeypatch):
    server = make_server(send_high_water=65536, max_frame_bytes=65536)
    client = RawClient(server.port)  # held open: its kernel acks what is sent
    transport = server.session().transport
    readings = []
    real = cntransport.Transport._kernel_unsent
    monkeypatch.setattr(cntransport.Transport, "_kernel_unsent",
                        lambda self: readings.append(real(self)) or readings[-1])
    for _ in range(10):
        assert transport.send("a" * 1000)
        assert not transport.busy
    assert readings == []  # 10,000 bytes written: the queue cannot hold more than that
    assert transport.send("b" * 60000)
    deadline = time.monotonic() + WAIT
    while transport.busy and time.monotonic() < deadline:  # the client has acked it all
        gevent.sleep(0.01)
    asked = len(readings)
    assert asked >= 1
    assert not transport.busy and len(readings) == asked  # the fresh reading is the new bound
    client.sock.close()


def test_concurrent_sends_produce_intact_frames(server):
    # A small receive buffer makes each sendall block half way through its
    # frame, which is when a second sender could slip its bytes in.
    client = RawClient(server.port, rcvbuf=4096)
    transport = server.session().transport
    messages = {str(i) * 1 + ":" + chr(0x41 + i) * 200_000 for i in range(20)}
    start = Event()

    def push(text):
        start.wait()
        return transport.send(text)

    senders = [gevent.spawn(push, text) for text in messages]
    gevent.sleep(0)
    start.set()
    got = set()
    for _ in range(20):
        opcode, payload = client.recv_frame()
        assert opcode == 0x1
        got.add(payload.decode())
    gevent.joinall(senders, timeout=WAIT)
    assert all(s.value for s in senders)
    assert got == messages

