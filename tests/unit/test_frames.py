"""connection/frames.py: RFC 6455 frames as pure functions over bytes.

No sockets: headers are built here as a client would send them, and every
rule of check_frame / parse_close_payload is checked on plain values.
"""
import os
import struct

import pytest

from connnode.connection.closes import Close
from connnode.connection.frames import (
    MAX_CLOSE_REASON, NO_STATUS_CODE, OP_BINARY, OP_CLOSE, OP_CONTINUATION, OP_PING, OP_PONG,
    OP_TEXT, PING_FRAME, FrameViolation, _frame, _unmask, check_frame, close_frame,
    extended_length_size, parse_close_payload, parse_extended_length, parse_header,
    valid_close_code,
)

MAX = 1000  # max_frame_bytes in the check_frame cases


def client_header(opcode, length, fin=True, mask=True, rsv=0):
    """A client frame's header up to (not including) the mask key."""
    first = (0x80 if fin else 0) | rsv | opcode
    mask_bit = 0x80 if mask else 0
    if length < 126:
        return struct.pack("!BB", first, mask_bit | length)
    if length <= 0xFFFF:
        return struct.pack("!BBH", first, mask_bit | 126, length)
    return struct.pack("!BBQ", first, mask_bit | 127, length)


def read_header(data):
    """Parse a whole header the way the transport does: (fin, rsv, opcode, masked, length)."""
    fin, rsv, opcode, masked, length = parse_header(data[:2])
    size = extended_length_size(length)
    assert len(data) == 2 + size
    if size:
        length = parse_extended_length(data[2:])
    return fin, rsv, opcode, masked, length


def check(opcode, length=2, fin=True, rsv=0, masked=True, in_message=False, size=0, max_frame=MAX):
    check_frame(opcode, 0x80 if fin else 0, rsv, 0x80 if masked else 0, length,
                in_message, size, max_frame)


# -- headers -----------------------------------------------------------------------

def test_parse_header_splits_the_bits():
    assert parse_header(b"\x81\x85") == (0x80, 0, OP_TEXT, 0x80, 5)
    assert parse_header(b"\x01\x05") == (0, 0, OP_TEXT, 0, 5)
    assert parse_header(b"\xf2\xfe") == (0x80, 0x70, OP_BINARY, 0x80, 126)
    assert parse_header(b"\x40\x7f") == (0, 0x40, OP_CONTINUATION, 0, 127)
    assert parse_header(bytearray(b"\x8a\x00")) == (0x80, 0, OP_PONG, 0, 0)


@pytest.mark.parametrize("length, code, extra", [
    (0, 0, 0), (125, 125, 0), (126, 126, 2), (65535, 126, 2), (65536, 127, 8), (2 ** 62, 127, 8),
])
def test_lengths_around_the_encoding_boundaries(length, code, extra):
    header = client_header(OP_TEXT, length)
    assert len(header) == 2 + extra
    assert parse_header(header[:2])[4] == code
    assert extended_length_size(code) == extra
    assert read_header(header) == (0x80, 0, OP_TEXT, 0x80, length)


@pytest.mark.parametrize("length", [0, 1, 125, 126, 65535, 65536])
def test_server_frames_parse_back(length):
    payload = os.urandom(length)
    frame = _frame(OP_TEXT, payload)
    extra = extended_length_size(frame[1] & 0x7F)
    assert read_header(frame[:2 + extra]) == (0x80, 0, OP_TEXT, 0, length)
    assert frame[2 + extra:] == payload


def test_ping_frame_is_an_empty_final_ping():
    assert PING_FRAME == _frame(OP_PING, b"")
    assert parse_header(PING_FRAME) == (0x80, 0, OP_PING, 0, 0)


# -- check_frame: what passes -------------------------------------------------------

@pytest.mark.parametrize("kwargs", [
    dict(opcode=OP_TEXT),
    dict(opcode=OP_TEXT, fin=False),
    dict(opcode=OP_TEXT, length=0),
    dict(opcode=OP_TEXT, length=MAX),  # exactly max_frame_bytes
    dict(opcode=OP_CONTINUATION, in_message=True, size=400, length=600),
    dict(opcode=OP_CONTINUATION, in_message=True, fin=False),
    dict(opcode=OP_PING, length=125),
    dict(opcode=OP_PONG, length=0),
    dict(opcode=OP_CLOSE, length=125),
    dict(opcode=OP_PING, length=125, in_message=True, size=MAX),  # control frames inside a message
    dict(opcode=OP_PING, length=100, max_frame=10),  # max_frame_bytes is for data frames only
], ids=repr)
def test_valid_frames_pass(kwargs):
    assert check(**kwargs) is None


# -- check_frame: every violation row -----------------------------------------------

@pytest.mark.parametrize("kwargs, row", [
    (dict(opcode=OP_TEXT, rsv=0x40), Close.RESERVED_BITS),
    (dict(opcode=OP_TEXT, rsv=0x10), Close.RESERVED_BITS),
    (dict(opcode=0xB), Close.UNKNOWN_CONTROL_OPCODE),
    (dict(opcode=0xF), Close.UNKNOWN_CONTROL_OPCODE),
    (dict(opcode=OP_PING, fin=False), Close.FRAGMENTED_CONTROL),
    (dict(opcode=OP_CLOSE, fin=False), Close.FRAGMENTED_CONTROL),
    (dict(opcode=OP_PING, length=126), Close.CONTROL_TOO_BIG),
    (dict(opcode=OP_PONG, length=65536), Close.CONTROL_TOO_BIG),
    (dict(opcode=OP_TEXT, in_message=True), Close.NESTED_MESSAGE),
    (dict(opcode=OP_CONTINUATION), Close.ORPHAN_CONTINUATION),
    (dict(opcode=0x3), Close.RESERVED_OPCODE),
    (dict(opcode=0x7), Close.RESERVED_OPCODE),
    (dict(opcode=OP_TEXT, masked=False), Close.UNMASKED),
    (dict(opcode=OP_PING, masked=False), Close.UNMASKED),
    (dict(opcode=OP_BINARY), Close.BINARY),
    (dict(opcode=OP_TEXT, length=MAX + 1), Close.TOO_BIG),
    (dict(opcode=OP_TEXT, length=2 ** 62), Close.TOO_BIG),
    (dict(opcode=OP_CONTINUATION, in_message=True, size=400, length=601), Close.TOO_BIG),
    # The first rule broken decides, in the transport's order.
    (dict(opcode=OP_BINARY, rsv=0x20, masked=False), Close.RESERVED_BITS),
    (dict(opcode=0xB, fin=False, length=200), Close.UNKNOWN_CONTROL_OPCODE),
    (dict(opcode=OP_PING, fin=False, length=200), Close.FRAGMENTED_CONTROL),
    (dict(opcode=OP_PING, length=200, masked=False), Close.CONTROL_TOO_BIG),
    (dict(opcode=OP_TEXT, in_message=True, masked=False), Close.NESTED_MESSAGE),
    (dict(opcode=OP_CONTINUATION, masked=False), Close.ORPHAN_CONTINUATION),
    (dict(opcode=0x3, masked=False), Close.RESERVED_OPCODE),
    (dict(opcode=OP_BINARY, masked=False), Close.UNMASKED),
    (dict(opcode=OP_BINARY, length=MAX + 1), Close.BINARY),
    (dict(opcode=OP_TEXT, length=MAX + 1, masked=False), Close.UNMASKED),
    (dict(opcode=OP_BINARY, in_message=True), Close.BINARY),
], ids=repr)
def test_violations_carry_their_row(kwargs, row):
    with pytest.raises(FrameViolation) as caught:
        check(**kwargs)
    assert caught.value.row is row
    assert str(caught.value) == row.reason


@pytest.mark.parametrize("masked, length, skip", [(True, 0, 4), (True, 1001, 1005), (False, 1001, 1001),
                                                  (True, 2 ** 62, 2 ** 62 + 4)])
def test_violation_skip_is_the_unread_rest_of_the_frame(masked, length, skip):
    with pytest.raises(FrameViolation) as caught:
        check(OP_BINARY if masked else OP_TEXT, length=length, masked=masked)
    assert caught.value.skip == skip


def test_violation_rows_close_with_1002_1003_1009():
    codes = {}
    for row in (Close.RESERVED_BITS, Close.UNKNOWN_CONTROL_OPCODE, Close.FRAGMENTED_CONTROL,
                Close.CONTROL_TOO_BIG, Close.NESTED_MESSAGE, Close.ORPHAN_CONTINUATION,
                Close.RESERVED_OPCODE, Close.UNMASKED, Close.BINARY, Close.TOO_BIG):
        codes.setdefault(row.code, []).append(row.reason)
    assert sorted(codes) == [1002, 1003, 1009]
    violation = FrameViolation(Close.INVALID_UTF8)
    assert (violation.row.code, violation.skip) == (1007, 0)


# -- masking ------------------------------------------------------------------------

def test_unmask_matches_the_definition():
    for n in (0, 1, 3, 4, 5, 125, 126, 4096, 65537):
        data = os.urandom(n)
        key = os.urandom(4)
        expected = bytes(b ^ key[i % 4] for i, b in enumerate(data))
        assert _unmask(data, key) == expected


@pytest.mark.parametrize("n", [0, 1, 2, 3, 4, 5, 7, 8, 125, 126, 65535, 65536])
def test_masking_round_trip(n):
    data = os.urandom(n)
    key = os.urandom(4)
    assert _unmask(_unmask(data, key), key) == data
    assert _unmask(b"\x00" * n, key) == (key * n)[:n]
    assert _unmask(data, b"\x00\x00\x00\x00") == data


# -- the peer's close frame -----------------------------------------------------------

@pytest.mark.parametrize("payload, expected", [
    (b"", (NO_STATUS_CODE, Close.NORMAL)),
    (b"\x03", (None, Close.INVALID_CLOSE_FRAME)),
    (struct.pack("!H", 1000), (1000, None)),
    (struct.pack("!H", 1001) + b"bye", (1001, None)),
    (struct.pack("!H", 4000) + "fin ☃".encode(), (4000, None)),
    (struct.pack("!H", 4999), (4999, None)),
    (struct.pack("!H", 3000), (3000, None)),
    (struct.pack("!H", 999), (999, Close.INVALID_CLOSE_FRAME)),
    (struct.pack("!H", 1004), (1004, Close.INVALID_CLOSE_FRAME)),
    (struct.pack("!H", 1005), (1005, Close.INVALID_CLOSE_FRAME)),
    (struct.pack("!H", 1006), (1006, Close.INVALID_CLOSE_FRAME)),
    (struct.pack("!H", 1015), (1015, Close.INVALID_CLOSE_FRAME)),
    (struct.pack("!H", 2999), (2999, Close.INVALID_CLOSE_FRAME)),
    (struct.pack("!H", 5000), (5000, Close.INVALID_CLOSE_FRAME)),
    (struct.pack("!H", 1000) + b"\xff", (1000, Close.INVALID_UTF8_REASON)),
    (struct.pack("!H", 1000) + "☃".encode()[:2], (1000, Close.INVALID_UTF8_REASON)),
    (struct.pack("!H", 1005) + b"\xff", (1005, Close.INVALID_CLOSE_FRAME)),  # the code is checked first
], ids=repr)
def test_parse_close_payload(payload, expected):
    assert parse_close_payload(payload) == expected


def test_close_answers_come_from_the_table():
    assert (Close.NORMAL.code, Close.NORMAL.reason) == (1000, "")
    assert Close.INVALID_CLOSE_FRAME.code == 1002
    assert Close.INVALID_UTF8_REASON.code == 1007


def test_valid_close_codes():
    valid = [code for code in range(0, 6000) if valid_close_code(code)]
    assert valid == [*range(1000, 1004), *range(1007, 1015), *range(3000, 5000)]


# -- close frames we send ---------------------------------------------------------------

def test_close_frame_carries_the_code_and_a_bounded_reason():
    assert close_frame(4774, "too many pings") == b"\x88\x10" + struct.pack("!H", 4774) + b"too many pings"
    frame = close_frame(1000, "é" * 100)  # 200 bytes of UTF-8: cut to 122 on a boundary
    assert frame[1] <= 125
    frame[4:].decode("utf-8")


def test_close_frame_without_a_reason():
    assert close_frame(1000) == b"\x88\x02\x03\xe8"
    assert close_frame(Close.NORMAL.code, Close.NORMAL.reason) == b"\x88\x02\x03\xe8"


@pytest.mark.parametrize("reason, kept", [
    ("a" * 123, "a" * 123),
    ("a" * 124, "a" * 123),
    ("é" * 100, "é" * 61),  # 2-byte characters: 122 bytes, not half of the 62nd
    ("☃" * 50, "☃" * 41),  # 3-byte characters: exactly 123 bytes
    ("a" + "☃" * 50, "a" + "☃" * 40),  # the 41st snowman would end at byte 124
    (b"raw bytes", "raw bytes"),
])
def test_close_frame_cuts_the_reason_on_a_utf8_boundary(reason, kept):
    frame = close_frame(1001, reason)
    fin, rsv, opcode, masked, length = read_header(frame[:2])
    assert (fin, rsv, opcode, masked) == (0x80, 0, OP_CLOSE, 0)
    assert length == len(frame) - 2 <= 2 + MAX_CLOSE_REASON
    assert parse_close_payload(frame[2:]) == (1001, None)
    assert frame[4:].decode("utf-8") == kept
