"""The reading half of a Transport (PROTOCOL.md 2.2, 2.12): a bounded frame
reader that returns complete text messages, answers PINGs, records PONGs,
answers the peer's close frame and closes with the code of any violation;
after our close frame, it discards frames until the peer's close arrives.

``FrameReader`` is a mixin of ``transport.Transport`` with no slots of its
own (memory per connection is unchanged); it reads ``_reader``, ``_flags``,
``_max_frame`` and ``_skip`` and calls ``close``/``_send_frame`` of the
Transport. The bytes come from the socket here; what they mean is decided by
the pure functions of ``frames.py``. The state bits of ``Transport._flags``
live here because both halves use them.
"""
import logging
import struct

from connnode.connection.closes import Close
from connnode.connection.frames import (
    MAX_CONTROL_PAYLOAD, NO_STATUS_CODE, OP_CLOSE, OP_PING, OP_PONG, FrameViolation, _frame,
    _unmask, check_frame, extended_length_size, parse_close_payload, parse_extended_length,
    parse_header,
)

log = logging.getLogger(__name__)

_DISCARD_CHUNK = 16384

# Transport._flags bits.
_CLOSING = 0x01      # our close frame is sent (or queued), or the socket is dropped
_PEER_CLOSED = 0x02  # the peer's close frame arrived
_DEAD = 0x04         # EOF, socket error, or aborted: nothing more can be read or sent
_PONG_SEEN = 0x08    # a PONG arrived since the last ping()
_PINGED = 0x10       # ping() was called at least once
_TORN_DOWN = 0x20    # serve_connection has finished with the socket
_STOP_SENDING = _CLOSING | _PEER_CLOSED | _DEAD


class _EndOfStream(Exception):
    """The peer closed TCP (possibly in the middle of a frame)."""


class FrameReader:
    """Reading a WebSocket's frames (see the module docstring)."""

    __slots__ = ()

    # The bytes come from the socket here; what they mean is decided by the
    # pure functions of frames.py.

    def _read_exact(self, n):
        data = self._reader.read(n)
        if len(data) != n:
            raise _EndOfStream()
        return data

    def _read_header(self):
        """Read a frame's first two bytes: ``(fin, rsv, opcode, masked,
        length_code)`` (:func:`~connnode.connection.frames.parse_header`)."""
        head = self._reader.read(2)
        if len(head) != 2:
            raise _EndOfStream()
        return parse_header(head)

    def _next_frame(self, in_message, size):
        """Read one frame, checking everything before the payload is read.

        ``in_message``: a fragmented text message is open; ``size``: its
        bytes so far. Returns (opcode, fin, unmasked payload).
        """
        fin, rsv, opcode, masked, length = self._read_header()
        if length > 125:  # 126 or 127: the real length follows
            length = parse_extended_length(self._read_exact(extended_length_size(length)))
        check_frame(opcode, fin, rsv, masked, length, in_message, size, self._max_frame)
        mask = self._read_exact(4)
        payload = self._read_exact(length) if length else b""
        return opcode, fin, _unmask(payload, mask)

    def next_message(self):
        """The next complete text message, or None once reading has ended.

        Answers PINGs, records PONGs, answers the peer's close frame, and on
        any violation sends the matching close code and ends. Never holds
        more than ``max_frame_bytes`` of message payload. Ends as soon as
        closing has begun (our close frame sent from anywhere); the rest of
        the close handshake is :meth:`finish`'s job.

        A plain method, not a generator, for memory: an idle connection's
        greenlet sits blocked in here, and a generator resumed from the
        caller's ``for`` loop adds a C-level interpreter frame to the C stack
        greenlet saves (copies to the heap) for every idle connection.
        """
        parts = None
        size = 0
        try:
            while not self._flags & _STOP_SENDING:
                opcode, fin, payload = self._next_frame(parts is not None, size)
                if opcode == OP_PING:
                    self._send_frame(_frame(OP_PONG, payload))
                    continue
                if opcode == OP_PONG:
                    self._flags |= _PONG_SEEN
                    continue
                if opcode == OP_CLOSE:
                    self._on_peer_close(payload)
                    return None
                if self._flags & _CLOSING:
                    # Closed from another greenlet while this frame arrived.
                    return None
                if not fin:
                    if parts is None:
                        parts = []
                    parts.append(payload)
                    size += len(payload)
                    continue
                if parts is not None:
                    parts.append(payload)
                    payload = b"".join(parts)
                try:
                    return payload.decode("utf-8")
                except UnicodeDecodeError:
                    raise FrameViolation(Close.INVALID_UTF8)
        except FrameViolation as violation:
            # No local for the row: this frame stays alive for every idle client.
            log.debug("closing the connection: %s", violation.row.reason)
            self._skip = violation.skip
            self.close(violation.row.code, violation.row.reason)
        except (_EndOfStream, OSError, ValueError):
            # EOF, reset, or the socket was closed under us (abort()).
            self._flags |= _DEAD
        return None

    def _on_peer_close(self, payload):
        """The peer's close frame: answer it (echoing a valid code) and end."""
        self._flags |= _PEER_CLOSED
        code, row = parse_close_payload(payload)
        self.peer_close_code = code
        if row is None:
            self.close(code)  # the echo: the one close not in the table
        else:
            self.close(row.code, row.reason)

    def _discard(self, n):
        read = self._reader.read
        while n > 0:
            chunk = read(min(n, _DISCARD_CHUNK))
            if not chunk:
                raise _EndOfStream()
            n -= len(chunk)

    def _await_peer_close(self):
        """After our close frame: discard frames until the peer's close frame.

        Bounded by the close timer, which aborts the socket (waking this
        read) when ``close_handshake_timeout`` or the safety limit passes.
        """
        try:
            self._discard(self._skip)
            self._skip = 0
            while True:
                _fin, _rsv, opcode, masked, length = self._read_header()
                if length > 125:
                    length = parse_extended_length(self._read_exact(extended_length_size(length)))
                if opcode == OP_CLOSE and masked and length <= MAX_CONTROL_PAYLOAD:
                    mask = self._read_exact(4)
                    payload = _unmask(self._read_exact(length), mask) if length else b""
                    self._flags |= _PEER_CLOSED
                    self.peer_close_code = (struct.unpack("!H", payload[:2])[0] if len(payload) >= 2
                                            else NO_STATUS_CODE)
                    return
                if opcode >= 0x8 and length > MAX_CONTROL_PAYLOAD:
                    return  # framing is not trustworthy; tear down now
                self._discard(length + (4 if masked else 0))
        except (_EndOfStream, OSError, ValueError):
            self._flags |= _DEAD
