"""Every reason the connection node closes a WebSocket, with its close code
(PROTOCOL.md 2.14), in one table.

"Why did this client get 1011?" is answered here: each row names one reason,
its code and the reason text sent in the close frame (free-form; clients must
not depend on it). The session, the node and the transport close only with a
row of this table (``session.close(Close.DUPLICATE_HELLO)``), and the two
violation types carry theirs:

* ``connnode.protocol.MessageViolation``: a text message that breaks 2.2
  (bad JSON, wrong first message, unknown messageType);
* ``connnode.connection.frames.FrameViolation``: a frame that breaks RFC 6455
  or our limits (binary, oversized, invalid UTF-8, unmasked, bad opcodes).

The one close not in the table is the echo of a peer's own close code
(RFC 6455 5.5.1), which the transport sends back as it came.
"""
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class CloseRow:
    """One reason to close: the status code and the close frame's reason text."""

    code: int
    reason: str


class Close:
    """The rows of PROTOCOL.md 2.14, grouped by code."""

    # 1000: a normal end, decided by the server.
    NORMAL = CloseRow(1000, "")
    NO_HELLO = CloseRow(1000, "no hello")                      # hello timer (2.12)
    IDLE = CloseRow(1000, "idle")                              # idle timer (2.12)
    NOT_HOLDER = CloseRow(1000, "not the holder")              # auto-ping found no hello / not holder
    SUPERSEDED = CloseRow(1000, "superseded")                  # newer connection, DELETE /notif (3.4)
    ALREADY_CONNECTED = CloseRow(1000, "already connected")    # hello 500 already_connected (2.4.2)
    USER_RESET = CloseRow(1000, "user reset")                  # msg_limit or record_version (8.3)

    # 1001: the node is going away.
    SHUTTING_DOWN = CloseRow(1001, "server shutting down")     # SIGTERM, reload (2.16)

    # 1002: the client broke the protocol (messages, 2.2; frames, RFC 6455).
    INVALID_JSON = CloseRow(1002, "invalid JSON")
    NOT_AN_OBJECT = CloseRow(1002, "not a JSON object")
    TOO_DEEP = CloseRow(1002, "JSON nested too deep")
    HELLO_FIRST = CloseRow(1002, "first message must be hello")
    UNKNOWN_MESSAGE_TYPE = CloseRow(1002, "missing or unknown messageType")
    DUPLICATE_HELLO = CloseRow(1002, "duplicate hello")        # hello 401 (2.15)
    BAD_BROADCASTS = CloseRow(1002, "bad broadcasts")          # hello / broadcast_subscribe (2.11)
    SIMPLEPUSH = CloseRow(1002, "Simplepush not supported")    # hello 401 (2.15)
    RESERVED_BITS = CloseRow(1002, "reserved bits set")
    UNKNOWN_CONTROL_OPCODE = CloseRow(1002, "unknown control opcode")
    FRAGMENTED_CONTROL = CloseRow(1002, "fragmented control frame")
    CONTROL_TOO_BIG = CloseRow(1002, "control frame over 125 bytes")
    NESTED_MESSAGE = CloseRow(1002, "new message inside a fragmented one")
    ORPHAN_CONTINUATION = CloseRow(1002, "continuation without a message")
    RESERVED_OPCODE = CloseRow(1002, "reserved opcode")
    UNMASKED = CloseRow(1002, "unmasked client frame")
    INVALID_CLOSE_FRAME = CloseRow(1002, "invalid close frame")

    # 1003, 1007, 1009: data the node does not take.
    BINARY = CloseRow(1003, "binary messages are not accepted")
    INVALID_UTF8 = CloseRow(1007, "invalid UTF-8 in a text message")
    INVALID_UTF8_REASON = CloseRow(1007, "invalid UTF-8 in the close reason")
    TOO_BIG = CloseRow(1009, "message over max_frame_bytes")

    # 1011: the server failed.
    HELLO_STORAGE_ERROR = CloseRow(1011, "storage error")      # hello 503 error (2.4.2)
    HELLO_OVERLOADED = CloseRow(1011, "overloaded")            # hello 503 after the wait (2.4.2)
    CHECK_FAILED = CloseRow(1011, "storage check failed")      # 8.2
    ROTATION_FAILED = CloseRow(1011, "table rotation failed")  # 7.3
    INTERNAL_ERROR = CloseRow(1011, "internal error")          # unexpected exception (2.2)

    # 4774: the client pings too often (2.10).
    TOO_MANY_PINGS = CloseRow(4774, "too many pings")


def rows():
    """Every row of the table, in order: name -> CloseRow."""
    return {name: row for name, row in vars(Close).items() if isinstance(row, CloseRow)}
