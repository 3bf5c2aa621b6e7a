"""The bad frames that end a fuzzed connection ("terminals").

Each ``t_*`` function sends one or more frames a node must not accept:
wrong types, unknown or missing ``messageType``, non-object and truncated
JSON, deep nesting, invalid UTF-8, binary frames, broken fragmentation,
reserved opcodes and RSV bits, unmasked frames, frames over
``MAX_FRAME_BYTES`` (sent or only declared), bad close frames, oversized
control frames, a second client ping, a duplicate hello, random bytes, half
a frame, silence. Each returns the close codes PROTOCOL.md 2.14 lets the
node answer with, the replies it must send before closing, and the code of
a valid close frame we sent (which the node echoes). ``TERMINALS`` weighs
them for the draw in ``runner.fuzz_connection``.
"""
import socket
import struct

from tests.wsfuzz.content import (
    canonical_chid, encode, hello_message, junk_fields, other_type, rand_string, rand_value,
    valid_message)
from tests.wsfuzz.wire import OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT

#: The node's ``max_frame_bytes`` (the test starts it with this value).
MAX_FRAME_BYTES = 65536
#: Codes a client may put in a close frame (RFC 6455 7.4): the node echoes them.
VALID_PEER_CODES = [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014,
                    3000, 3999, 4000, 4999]
BAD_PEER_CODES = [0, 1, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535]
KNOWN_TYPES = {"hello", "register", "unregister", "ack", "nack", "broadcast_subscribe", "ping"}


# Each terminal takes (conn, rng, after_hello) and sends one or more frames;
# it returns (codes the node may close with, extra replies expected before
# the close, echo code or None). None as codes: any allowed code, or none.

def _text(conn, what, payload, **kwargs):
    conn.send_frame(what, OP_TEXT, payload, **kwargs)


def _sentinel(conn):
    """After a frame the node may accept: a binary frame, which must close 1003."""
    conn.send_frame("sentinel binary", OP_BINARY, b"\x00")


def t_wrong_type_message_type(conn, rng, after):
    message = {"messageType": other_type(rng, "str")}
    if rng.random() < 0.5:
        message["channelID"] = canonical_chid(rng)
    _text(conn, "messageType of a wrong type", encode(rng, junk_fields(rng, message)))
    return {1002}, [], None


def t_wrong_types_everywhere(conn, rng, after):
    """A known messageType with every field of a wrong type."""
    kind = rng.choice(["ack", "nack", "register", "unregister", "broadcast_subscribe"])
    message = {"messageType": kind, "updates": other_type(rng, "list"),
               "version": other_type(rng, "str"), "code": other_type(rng, "int"),
               "broadcasts": other_type(rng, "dict"), "key": other_type(rng, "str"),
               "uaid": other_type(rng, "str"), "use_webpush": other_type(rng, "bool")}
    if kind in ("register", "unregister"):
        message["channelID"] = other_type(rng, "str")
    _text(conn, f"{kind} with wrong types", encode(rng, message))
    if not after:
        return {1002}, [], None
    _sentinel(conn)
    replies = [kind] if kind in ("register", "unregister") else []
    return {1003}, replies, None


def t_unknown_message_type(conn, rng, after):
    name = rng.choice(["Hello", "HELLO", "hello ", " hello", "PING", "Ping", "notification",
                       "error", "register\u0000", "регистр", "", "ack\n", "nack2", "broadcast",
                       "subscribe",
                       "unregister ", rand_string(rng)])
    if name in KNOWN_TYPES:
        name += "?"
    message = junk_fields(rng, {"messageType": name})
    _text(conn, f"unknown messageType {name!r}", encode(rng, message))
    return {1002}, [], None


def t_missing_message_type(conn, rng, after):
    message = {rng.choice(["x", "type", "message_type", "MessageType"]): rand_value(rng)}
    _text(conn, "no messageType", encode(rng, message))
    return {1002}, [], None


def t_non_object(conn, rng, after):
    payload = rng.choice([b"[]", b"[1,2]", b'"hello"', b"1", b"null", b"true", b"-0", b"1e999",
                          b'[{"messageType":"hello","use_webpush":true}]', b""])
    _text(conn, f"non-object JSON {payload!r}", payload)
    return {1002}, [], None


def t_not_json(conn, rng, after):
    payload = rng.choice([b"not json", b"{'messageType': 'hello'}", b"{messageType:hello}", b"{,}",
                          b'{"messageType":"ack",}', b"\x00", b"{}{}", b'{"a":1}}', b"{\"a\"\x01:1}",
                          b'{"messageType":"nack","version":"\\x41"}', b'{"a":"\\ud80"}'])
    _text(conn, f"not JSON {payload!r}", payload)
    return {1002}, [], None


def t_truncated_json(conn, rng, after):
    message, _ = valid_message(rng, storage_writes=False)
    text = encode(rng, message).decode("utf-8").strip()
    cut = text[:rng.randint(1, len(text) - 1)]
    _text(conn, f"truncated JSON {cut[:60]!r}", cut.encode("utf-8"))
    return {1002}, [], None


def t_deep_nesting(conn, rng, after):
    depth = rng.choice([1000, 10000, 10000, 30000])
    shape = rng.random()
    if shape < 0.4:
        payload = b"[" * depth + b"]" * depth
        codes = {1002}
    elif shape < 0.7:
        payload = b'{"a":' * depth + b"1" + b"}" * depth
        codes = {1002} if not after else {1002, 1003}  # an object: maybe accepted
    else:
        field = rng.choice([b'{"messageType":"ack","updates":',
                            b'{"messageType":"nack","version":"v","code":',
                            b'{"messageType":"broadcast_subscribe","broadcasts":'])
        payload = field + b"[" * depth + b"]" * depth + b"}"
        codes = {1002} if not after else {1002, 1003}
    if len(payload) > MAX_FRAME_BYTES:
        codes = {1009}
    _text(conn, f"nested {depth} deep: {payload[:40]!r}", payload)
    if 1003 in codes:
        _sentinel(conn)
    return codes, [], None


def t_odd_numbers(conn, rng, after):
    """JSON the Python parser may or may not take: huge integers, NaN."""
    value = rng.choice([b"1" * 5000, b"-" + b"9" * 4400, b"NaN", b"Infinity", b"-Infinity",
                        b"1e99999", b"0." + b"0" * 5000 + b"1"])
    payload = b'{"messageType":"nack","version":"v","code":' + value + b"}"
    _text(conn, f"nack code {value[:20]!r}...", payload)
    if not after:
        return {1002}, [], None
    _sentinel(conn)
    return {1002, 1003}, [], None


def t_invalid_utf8(conn, rng, after):
    message, _ = valid_message(rng, storage_writes=False)
    data = encode(rng, message)
    bad = rng.choice([b"\xff", b"\xfe", b"\xc0\xaf", b"\xe0\x80\xaf", b"\xed\xa0\x80",
                      b"\xf4\x90\x80\x80",
                      b"\x80", b"\xf8\x88\x80\x80\x80", b"\xc3", b"\xe2\x82", b"\xf0\x9f\x98"])
    truncated = bad in (b"\xc3", b"\xe2\x82", b"\xf0\x9f\x98")  # at the very end
    at = len(data) if truncated else rng.randint(0, len(data))
    payload = data[:at] + bad + data[at:]
    if rng.random() < 0.3 and len(payload) > 2:  # split over fragments
        cut = rng.randint(1, len(payload) - 1)
        conn.send(conn.frame(OP_TEXT, payload[:cut], fin=False)
                  + conn.frame(OP_CONT, payload[cut:]),
                  frames=2, what=f"fragmented invalid UTF-8 {bad!r}")
    else:
        _text(conn, f"invalid UTF-8 {bad!r} at {at}", payload)
    return {1007}, [], None


def t_binary(conn, rng, after):
    payload = rng.randbytes(rng.randint(0, 200))
    if rng.random() < 0.3:
        payload = encode(rng, hello_message(rng) if not after else valid_message(rng, False)[0])
    conn.send_frame(f"binary {len(payload)} bytes", OP_BINARY, payload, fin=rng.random() < 0.8)
    return {1003}, [], None


def t_nested_message(conn, rng, after):
    conn.send(conn.frame(OP_TEXT, b'{"messageType":', fin=False) + conn.frame(OP_TEXT, b'"nack"}'),
              frames=2, what="text frame inside a fragmented message")
    return {1002}, [], None


def t_binary_in_message(conn, rng, after):
    conn.send(conn.frame(OP_TEXT, b'{"messageType":', fin=False)
              + conn.frame(OP_BINARY, b'"nack"}'),
              frames=2, what="binary frame inside a fragmented message")
    return {1002, 1003}, [], None


def t_orphan_continuation(conn, rng, after):
    conn.send_frame("orphan continuation", OP_CONT, b'{"messageType":"nack"}',
                    fin=rng.random() < 0.5)
    return {1002}, [], None


def t_fragmented_control(conn, rng, after):
    opcode = rng.choice([OP_PING, OP_PONG, OP_CLOSE])
    payload = struct.pack("!H", 1000) if opcode == OP_CLOSE else b"p"
    conn.send_frame(f"fragmented control {opcode:#x}", opcode, payload, fin=False)
    return {1002}, [], None


def t_fragmented_too_big(conn, rng, after):
    parts = rng.randint(2, 4)
    size = MAX_FRAME_BYTES // parts + 200
    frames = [conn.frame(OP_TEXT, b" " * size, fin=False)]
    frames += [conn.frame(OP_CONT, b" " * size, fin=False) for _ in range(parts - 2)]
    frames.append(conn.frame(OP_CONT, b" " * size))
    conn.send(b"".join(frames), frames=parts, what=f"{parts} fragments of {size} bytes")
    return {1009}, [], None


def t_reserved_opcode(conn, rng, after):
    opcode = rng.choice([3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF])
    conn.send_frame(f"reserved opcode {opcode:#x}", opcode, b'{"messageType":"nack"}')
    return {1002}, [], None


def t_rsv_bits(conn, rng, after):
    rsv = rng.randint(1, 7)
    if rng.random() < 0.3:
        conn.send(conn.frame(OP_TEXT, b'{"messageType":', fin=False)
                  + conn.frame(OP_CONT, b'"nack"}', rsv=rsv), frames=2,
                  what=f"continuation with RSV {rsv}")
    else:
        opcode = rng.choice([OP_TEXT, OP_TEXT, OP_PING, OP_PONG, OP_CLOSE])
        payload = struct.pack("!H", 1000) if opcode == OP_CLOSE else b'{"messageType":"nack"}'
        conn.send_frame(f"opcode {opcode:#x} with RSV {rsv}", opcode, payload, rsv=rsv)
    return {1002}, [], None


def t_unmasked(conn, rng, after):
    opcode = rng.choice([OP_TEXT, OP_TEXT, OP_PING, OP_CLOSE, OP_BINARY])
    payload = (struct.pack("!H", 1000) if opcode == OP_CLOSE
               else b'{"messageType":"nack","version":"v"}')
    conn.send_frame(f"unmasked opcode {opcode:#x}", opcode, payload, masked=False)
    return {1002}, [], None


def t_declared_too_big(conn, rng, after):
    """A header declaring a length over the limit; the payload never follows."""
    length = rng.choice([MAX_FRAME_BYTES + 1, 70000, 2**20, 2**31, 2**32 + 5, 2**62, 2**63 - 1,
                         2**63, 2**64 - 1])
    opcode = OP_TEXT if rng.random() < 0.8 else OP_CONT
    if opcode == OP_CONT:
        conn.send(conn.frame(OP_TEXT, b"{", fin=False) + conn.frame(OP_CONT, length=length),
                  frames=2, what=f"continuation declaring {length} bytes")
    else:
        conn.send_frame(f"text declaring {length} bytes", OP_TEXT, length=length)
    return ({1009} if length < 2**63 else {1002, 1009}), [], None


def t_sent_too_big(conn, rng, after):
    size = rng.choice([MAX_FRAME_BYTES + 1, MAX_FRAME_BYTES + 100, 100000])
    conn.send_frame(f"text of {size} bytes", OP_TEXT, b"{" + b" " * (size - 2) + b"}")
    return {1009}, [], None


def t_bad_close_code(conn, rng, after):
    code = rng.choice(BAD_PEER_CODES)
    conn.send_frame(f"close with code {code}", OP_CLOSE,
                    struct.pack("!H", code) + b"bye"[:rng.randint(0, 3)])
    return {1002}, [], None


def t_close_one_byte(conn, rng, after):
    conn.send_frame("close with a 1-byte payload", OP_CLOSE, bytes([rng.randint(0, 255)]))
    return {1002}, [], None


def t_close_bad_reason(conn, rng, after):
    code = rng.choice([1000, 1001, 3000, 4000])
    reason = rng.choice([b"\xff", b"bye \xc3", b"\xed\xa0\x80", b"ok\xc0\xaf"])
    conn.send_frame(f"close {code} with invalid UTF-8 reason {reason!r}", OP_CLOSE,
                    struct.pack("!H", code) + reason)
    return {1007}, [], None


def t_valid_close(conn, rng, after):
    """A valid close (the node echoes its code), sometimes with frames after
    it, which the node must ignore."""
    code = rng.choice(VALID_PEER_CODES)
    reason = rng.choice([b"", b"bye", "au revoir é".encode(), b"r" * 123])
    conn.send_frame(f"close {code}", OP_CLOSE, struct.pack("!H", code) + reason)
    if rng.random() < 0.3:
        # The node may close TCP with this frame unread: the RST it sends
        # then can destroy its close frame before we read it.
        conn.send_frame("text after our close", OP_TEXT, b'{"messageType":"register"}')
        return {code, "reset"}, [], code
    return {code}, [], code


def t_close_mid_message(conn, rng, after):
    """A close frame between the fragments of a message (control frames may
    come between fragments, RFC 6455 5.4): echoed."""
    code = rng.choice(VALID_PEER_CODES)
    conn.sent_close = True
    conn.send(conn.frame(OP_TEXT, b'{"messageType":', fin=False)
              + conn.frame(OP_CLOSE, struct.pack("!H", code)), frames=2,
              what=f"close {code} inside a fragmented message")
    return {code}, [], code


def t_empty_close(conn, rng, after):
    conn.send_frame("close without payload", OP_CLOSE)
    return {1000}, [], None


def t_control_too_big(conn, rng, after):
    opcode = rng.choice([OP_PING, OP_PONG, OP_CLOSE])
    size = rng.choice([126, 127, 200, 1000, 65535])
    payload = struct.pack("!H", 1000) + b"r" * (size - 2) if opcode == OP_CLOSE else b"p" * size
    conn.send_frame(f"control {opcode:#x} of {size} bytes", opcode, payload)
    return {1002}, [], None


def t_ping_too_often(conn, rng, after):
    if not after:
        _text(conn, "client ping before hello", b"{}")
        return {1002}, [], None
    # A first ping (unless the run had one: then this one is the second).
    first = not conn.pinged
    for _ in range(2 if first else 1):
        _text(conn, "client ping", rng.choice([b"{}", b'{"messageType":"ping"}']))
    return {4774}, (["{}"] if first else []), None


def t_duplicate_hello(conn, rng, after):
    if not after:
        message = {"messageType": "hello", "use_webpush": rng.choice([None, False, 0, ""])}
        if rng.random() < 0.3:
            del message["use_webpush"]
        _text(conn, f"hello with use_webpush {message.get('use_webpush', '<missing>')!r}",
              encode(rng, message))
        return {1002}, ["hello"], None
    _text(conn, "duplicate hello", encode(rng, hello_message(rng)))
    return {1002}, ["hello"], None


def t_random_bytes(conn, rng, after):
    """Arbitrary bytes, then our end shut: anything but a 1011 will do."""
    conn.send(rng.randbytes(rng.randint(1, 64)), what="random bytes")
    conn.sock.shutdown(socket.SHUT_WR)
    return None, None, None


def t_truncated_frame(conn, rng, after):
    """Half a frame, then our end shut: the node sees EOF mid-frame."""
    whole = conn.frame(OP_TEXT, encode(rng, valid_message(rng, False)[0]))
    conn.send(whole[:rng.randint(1, len(whole) - 1)], what="half a frame")
    conn.sock.shutdown(socket.SHUT_WR)
    return None, None, None


def t_silence(conn, rng, after):
    """Nothing more: before hello, the hello timer closes with 1000."""
    if after:  # no idle timer after hello: end with an orderly close instead
        return t_valid_close(conn, rng, after)
    return {1000}, [], None


# name -> (terminal, weight)
TERMINALS = {
    "wrong_type_message_type": (t_wrong_type_message_type, 6),
    "wrong_types_everywhere": (t_wrong_types_everywhere, 6),
    "unknown_message_type": (t_unknown_message_type, 6),
    "missing_message_type": (t_missing_message_type, 3),
    "non_object": (t_non_object, 4),
    "not_json": (t_not_json, 4),
    "truncated_json": (t_truncated_json, 6),
    "deep_nesting": (t_deep_nesting, 4),
    "odd_numbers": (t_odd_numbers, 3),
    "invalid_utf8": (t_invalid_utf8, 6),
    "binary": (t_binary, 5),
    "nested_message": (t_nested_message, 3),
    "binary_in_message": (t_binary_in_message, 2),
    "orphan_continuation": (t_orphan_continuation, 4),
    "fragmented_control": (t_fragmented_control, 3),
    "fragmented_too_big": (t_fragmented_too_big, 2),
    "reserved_opcode": (t_reserved_opcode, 4),
    "rsv_bits": (t_rsv_bits, 4),
    "unmasked": (t_unmasked, 4),
    "declared_too_big": (t_declared_too_big, 5),
    "sent_too_big": (t_sent_too_big, 2),
    "bad_close_code": (t_bad_close_code, 6),
    "close_one_byte": (t_close_one_byte, 3),
    "close_bad_reason": (t_close_bad_reason, 3),
    "valid_close": (t_valid_close, 4),
    "empty_close": (t_empty_close, 2),
    "close_mid_message": (t_close_mid_message, 2),
    "control_too_big": (t_control_too_big, 4),
    "ping_too_often": (t_ping_too_often, 4),
    "duplicate_hello": (t_duplicate_hello, 4),
    "random_bytes": (t_random_bytes, 3),
    "truncated_frame": (t_truncated_frame, 3),
    "silence": (t_silence, 1),
}
TERMINAL_NAMES = list(TERMINALS)
TERMINAL_WEIGHTS = [TERMINALS[name][1] for name in TERMINAL_NAMES]
