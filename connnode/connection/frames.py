"""RFC 6455 frames as pure functions over bytes: no socket, no state.

The connection node reads and writes WebSocket frames itself (see
``handler.py`` for why gevent-websocket's frame code is bypassed). This
module is the part of that which needs no I/O, in the manner of
python-websockets' ``frames.py``, so every rule can be tested on plain bytes:

* reading: :func:`parse_header` splits a frame's first two bytes,
  :func:`extended_length_size` / :func:`parse_extended_length` handle the
  16- and 64-bit lengths, :func:`check_frame` enforces RFC 6455 and our
  limits *before* any payload is read (a header may claim 2**63 bytes), and
  :func:`parse_close_payload` reads a peer's close frame;
* writing: :func:`close_frame` and :func:`_frame` build the (never masked,
  never fragmented) server frames, and :func:`_unmask` unmasks client
  payloads on whole big integers rather than byte by byte in Python.

A broken rule raises :class:`FrameViolation`, which carries the row of
``closes.py`` to close with (1002 / 1003 / 1007 / 1009) and how many bytes
of the offending frame are still unread. ``transport.py`` does the reading
and calls these functions once per frame: they allocate nothing beyond what
the read loop needs (the header tuple replaces the one the loop used to
build itself; the violation and its ``skip`` exist only on a violation).
"""
import struct

from connnode.connection.closes import Close

OP_CONTINUATION = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA

#: Largest payload of a control frame (RFC 6455 5.5).
MAX_CONTROL_PAYLOAD = 125
#: Largest close reason: a control payload less the 2-byte code.
MAX_CLOSE_REASON = MAX_CONTROL_PAYLOAD - 2
#: The code a peer's close frame stands for when it carries none (RFC 6455 7.1.5).
NO_STATUS_CODE = 1005

#: An empty PING, the only one the server sends.
PING_FRAME = b"\x89\x00"

_unpack_u16 = struct.Struct("!H").unpack
_unpack_u64 = struct.Struct("!Q").unpack


class FrameViolation(Exception):
    """The client broke RFC 6455 or our limits; ``row`` is the close to send.

    ``row`` is a :class:`~connnode.connection.closes.CloseRow`. ``skip`` is
    the number of bytes of the offending frame still unread (mask and
    payload), so the close handshake can resynchronise on the frame boundary
    and still find the client's close frame.
    """

    def __init__(self, row, skip=0):
        super().__init__(row.reason)
        self.row = row
        self.skip = skip


# -- reading -------------------------------------------------------------------

def parse_header(head):
    """The first two bytes of a frame: ``(fin, rsv, opcode, masked, length_code)``.

    ``fin``, ``rsv`` (the three reserved bits) and ``masked`` are the bits
    themselves (0 when clear); ``length_code`` is the 7-bit length: the
    payload length when below 126, else 126 / 127 for a 2- / 8-byte length
    that follows (:func:`extended_length_size`).
    """
    b0 = head[0]
    b1 = head[1]
    return b0 & 0x80, b0 & 0x70, b0 & 0x0F, b1 & 0x80, b1 & 0x7F


def extended_length_size(length_code):
    """Bytes of extended length after a header with this ``length_code``: 0, 2 or 8."""
    if length_code < 126:
        return 0
    return 2 if length_code == 126 else 8


def parse_extended_length(data):
    """The payload length in the 2 or 8 bytes after the header (network order)."""
    return (_unpack_u16 if len(data) == 2 else _unpack_u64)(data)[0]


def _violation(row, masked, length):
    # The bytes of the frame still unread once its header is: mask + payload.
    return FrameViolation(row, length + 4 if masked else length)


def check_frame(opcode, fin, rsv, masked, length, in_message, message_size, max_frame):
    """Check a client frame from its header alone, before its payload is read.

    ``in_message``: a fragmented text message is open; ``message_size``: its
    payload bytes so far; ``max_frame``: ``max_frame_bytes``. Raises
    :class:`FrameViolation` for the first rule broken, in this order:
    reserved bits, control frames (opcode, fragmentation, size), data
    opcodes against the fragmentation state, masking, binary, size.
    """
    if rsv:
        raise _violation(Close.RESERVED_BITS, masked, length)
    if opcode >= 0x8:
        if opcode > OP_PONG:
            raise _violation(Close.UNKNOWN_CONTROL_OPCODE, masked, length)
        if not fin:
            raise _violation(Close.FRAGMENTED_CONTROL, masked, length)
        if length > MAX_CONTROL_PAYLOAD:
            raise _violation(Close.CONTROL_TOO_BIG, masked, length)
    elif opcode == OP_TEXT:
        if in_message:
            raise _violation(Close.NESTED_MESSAGE, masked, length)
    elif opcode == OP_CONTINUATION:
        if not in_message:
            raise _violation(Close.ORPHAN_CONTINUATION, masked, length)
    elif opcode != OP_BINARY:
        raise _violation(Close.RESERVED_OPCODE, masked, length)
    if not masked:
        raise _violation(Close.UNMASKED, masked, length)
    if opcode == OP_BINARY:
        raise _violation(Close.BINARY, masked, length)
    if opcode < 0x8 and message_size + length > max_frame:
        raise _violation(Close.TOO_BIG, masked, length)


def valid_close_code(code):
    """Close codes a peer may put on the wire (RFC 6455 7.4, IANA registry)."""
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999


def parse_close_payload(payload):
    """A peer's close frame (unmasked payload): ``(peer_code, row)``.

    ``peer_code`` is the code it carries (1005 when empty, None when the
    payload is a single byte). ``row`` is the close row to answer with, or
    None to echo ``peer_code`` (RFC 6455 5.5.1): an empty frame is answered
    with 1000, a 1-byte one or an invalid code with 1002, a reason that is
    not UTF-8 with 1007.
    """
    if not payload:
        return NO_STATUS_CODE, Close.NORMAL
    if len(payload) < 2:
        return None, Close.INVALID_CLOSE_FRAME
    code = struct.unpack("!H", payload[:2])[0]
    if not valid_close_code(code):
        return code, Close.INVALID_CLOSE_FRAME
    try:
        payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        return code, Close.INVALID_UTF8_REASON
    return code, None


def _unmask(data, mask):
    """XOR ``data`` with the 4-byte ``mask``, on whole big integers (C speed)."""
    n = len(data)
    if not n:
        return b""
    key = (mask * ((n >> 2) + 1))[:n]
    return (int.from_bytes(data, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")


# -- writing -------------------------------------------------------------------

def _frame(opcode, payload):
    """A final, unmasked server frame."""
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", 0x80 | opcode, n)
    elif n <= 0xFFFF:
        header = struct.pack("!BBH", 0x80 | opcode, 126, n)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 127, n)
    return header + payload


def close_frame(code, reason=""):
    """A close frame carrying ``code`` (2 bytes, network order) and ``reason``.

    The reason is cut to the 123 bytes a control frame leaves, on a UTF-8
    character boundary.
    """
    data = reason.encode("utf-8") if isinstance(reason, str) else bytes(reason or b"")
    if len(data) > MAX_CLOSE_REASON:
        data = data[:MAX_CLOSE_REASON].decode("utf-8", "ignore").encode("utf-8")
    return _frame(OP_CLOSE, struct.pack("!H", code) + data)
