"""One fuzzed connection, from its seed to its :class:`Result`, and the plan
of all of them.

``plan`` draws every connection's kind ("session": a hello, a run of valid
frames, a bad frame; "pre_hello": a bad frame first; "handshake:<name>": a
malformed opening handshake) and its own seed from the master generator.
``fuzz_connection`` plays one: the upgrade, ``send_run``'s valid frames
(with the replies and PONGs they must get), the terminal, then
``read_until_close`` records the server's frames until its close frame or the
end of the connection. Nothing here asserts: the test judges the results.
"""
import json
import random
import struct

from tests.wsfuzz.content import encode, hello_message, junk_fields, valid_message
from tests.wsfuzz.frames import MAX_FRAME_BYTES, TERMINAL_NAMES, TERMINAL_WEIGHTS, TERMINALS
from tests.wsfuzz.wire import (
    HANDSHAKES, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT, Closed, FuzzSocket, accept_for,
    fuzz_handshake, valid_upgrade)

#: Valid frames a session sends between its hello and its bad frame.
RUN_LENGTH = (10, 70)


class Result:
    __slots__ = ("index", "kind", "terminal", "frames", "close_code", "ended", "replies",
                 "pongs", "expected_codes", "expected_replies", "echo", "anomalies", "last_frames",
                 "handshake")

    def __init__(self, index, kind):
        self.index, self.kind = index, kind
        self.terminal = None
        self.frames = 0
        self.close_code = None   # int; "empty" for a close frame without a code
        self.ended = None        # "close", "eof", "reset", "timeout", "handshake", "send-<error>"
        self.replies = []        # messageType of each text frame received ("{}" for a ping reply)
        self.pongs = []          # payloads of the PONGs received
        self.expected_codes = None
        self.expected_replies = []
        self.echo = None
        self.anomalies = []
        self.last_frames = []
        self.handshake = None


def send_run(conn, rng, length, expected_replies, pings):
    """``length`` valid frames (counting fragments and control frames);
    appends the replies they must get to ``expected_replies`` and the
    payloads of the WebSocket PINGs sent (each must get a PONG) to ``pings``."""
    sent = 0
    while sent < length:
        r = rng.random()
        if r < 0.05:
            payload = rng.randbytes(rng.randint(0, 125))
            conn.send_frame("ping", OP_PING, payload)
            pings.append(payload)
            sent += 1
            continue
        if r < 0.08:
            conn.send_frame("unsolicited pong", OP_PONG, rng.randbytes(rng.randint(0, 125)))
            sent += 1
            continue
        if r < 0.082:
            # exactly max_frame_bytes: still allowed
            head = b'{"messageType":"nack","version":"big","code":301}'
            payload = head + b" " * (MAX_FRAME_BYTES - len(head))
            conn.send_frame("nack of exactly max_frame_bytes", OP_TEXT, payload)
            sent += 1
            continue
        if r < 0.1 and not conn.pinged:  # the one client ping the node answers
            message = {} if rng.random() < 0.5 else junk_fields(rng, {"messageType": "ping"})
            reply = "{}"
            conn.pinged = True
        else:
            message, reply = valid_message(rng)
        payload = encode(rng, message)
        if rng.random() < 0.15 and payload:
            # fragments split at any byte (UTF-8 sequences included), maybe
            # some empty, a PING between two of them now and then
            count = rng.randint(2, min(8, len(payload) + 1))
            cuts = sorted(rng.randint(0, len(payload)) for _ in range(count - 1))
            bounds = [0, *cuts, len(payload)]
            frames = []
            for i in range(count):
                frames.append(conn.frame(OP_TEXT if i == 0 else OP_CONT,
                                         payload[bounds[i]:bounds[i + 1]], fin=i == count - 1))
                if i < count - 1 and rng.random() < 0.1:
                    ping = rng.randbytes(rng.randint(0, 20))
                    frames.append(conn.frame(OP_PING, ping))
                    pings.append(ping)
            conn.send(b"".join(frames), frames=len(frames), what=f"fragmented {payload[:60]!r}")
            sent += len(frames)
        else:
            conn.send_frame(f"text {payload[:60]!r}", OP_TEXT, payload)
            sent += 1
        if reply:
            expected_replies.append(reply)


def read_until_close(conn, result):
    """Read server frames until the close frame or the end of the connection."""
    try:
        while True:
            fin, rsv, opcode, payload = conn.read_frame()
            if rsv or not fin:
                result.anomalies.append(f"server frame with rsv={rsv} fin={fin}")
            if opcode == OP_TEXT:
                try:
                    reply = json.loads(payload)
                except ValueError:
                    result.anomalies.append(f"server text frame is not JSON: {payload[:100]!r}")
                    continue
                if not isinstance(reply, dict):
                    result.anomalies.append(f"server text is not an object: {payload[:100]!r}")
                    continue
                result.replies.append("{}" if reply == {} else reply.get("messageType"))
                if reply.get("status") not in (None, 200, 400, 401):
                    result.anomalies.append(f"reply {reply}")
            elif opcode == OP_PONG:
                result.pongs.append(payload)
            elif opcode == OP_CLOSE:
                result.close_code = (struct.unpack("!H", payload[:2])[0] if len(payload) >= 2
                                     else "empty")
                result.ended = "close"
                return
            else:
                result.anomalies.append(f"server frame with opcode {opcode:#x}")
    except Closed as closed:
        result.ended = closed.how


def fuzz_connection(port, index, seed, kind):
    rng = random.Random(seed)
    result = Result(index, kind)
    if kind.startswith("handshake:"):
        name = kind.split(":", 1)[1]
        result.handshake = fuzz_handshake(port, rng, name)
        result.terminal = name
        return result
    conn = FuzzSocket(port, rng)
    conn.chunked = rng.random() < 0.1
    pings = []
    try:
        key, request = valid_upgrade(rng, port)
        conn.sock.sendall(request)
        status, headers = conn.read_http_head()
        if (not status.startswith("HTTP/1.1 101 ")
                or headers.get("sec-websocket-accept") != accept_for(key)):
            result.anomalies.append(f"valid handshake answered {status!r} {headers!r}: {request!r}")
            result.ended = "handshake"
            return result
        after_hello = kind == "session"
        if after_hello:
            conn.send_frame("hello", OP_TEXT, encode(rng, hello_message(rng)))
            result.expected_replies.append("hello")
            send_run(conn, rng, rng.randint(*RUN_LENGTH), result.expected_replies, pings)
        name = rng.choices(TERMINAL_NAMES, TERMINAL_WEIGHTS)[0]
        result.terminal = name
        codes, extra_replies, echo = TERMINALS[name][0](conn, rng, after_hello)
        result.expected_codes, result.echo = codes, echo
        if extra_replies is None:
            result.expected_replies = None
        else:
            result.expected_replies += extra_replies
        read_until_close(conn, result)
        if result.ended == "close" and not conn.sent_close:
            try:  # complete the closing handshake, then go
                conn.sock.sendall(conn.frame(OP_CLOSE, struct.pack("!H", 1000)))
            except OSError:
                pass
    except Closed as closed:
        result.ended = closed.how
    except OSError as error:  # the node closed while we were still sending
        result.ended = "send-" + type(error).__name__
        read_until_close(conn, result)
    finally:
        result.frames = conn.frames
        result.last_frames = list(conn.sent_log)
        conn.close()
    if result.ended == "close" and result.pongs != pings:
        result.anomalies.append(f"PINGs {[p.hex() for p in pings]}, PONGs "
                                f"{[p.hex() for p in result.pongs]}")
    return result


def plan(seed, count):
    """(index, seed, kind) of every connection, from the master generator."""
    master = random.Random(seed)
    handshakes = list(HANDSHAKES)
    connections = []
    for index in range(count):
        r = master.random()
        if r < 0.07:
            kind = "handshake:" + handshakes[index % len(handshakes)]
        elif r < 0.18:
            kind = "pre_hello"
        else:
            kind = "session"
        connections.append((index, master.getrandbits(64), kind))
    return connections

