"""The connection states of PROTOCOL.md 2.3, shared by the session and its
delivery half (``drain.py``). CLOSED is the Session's end: ``on_closed``."""

AWAITING_HELLO, HELLO_IN_PROGRESS, READY, CLOSING = range(4)
