"""One WebSocket connection as the Session sees it, and the loop that serves it.

The Session (``session.py``) is a state machine that never touches a socket;
this module owns the socket side of one WebSocket (PROTOCOL.md 2.1, 2.2, 2.12,
2.14, 2.16):

* :class:`Transport` is the connection as the Session sees it: ``send`` text
  frames under one send lock, ``ping``, ``close`` with a real status code,
  ``abort``, the ``busy`` back-pressure flag and the close deadlines. Its
  reading half, ``next_message`` (a bounded frame reader enforcing the close
  codes 1002 / 1003 / 1007 / 1009 itself), is the ``FrameReader`` mixin of
  ``reader.py``; every close code comes from ``closes.py``.
* :func:`serve_connection` runs one WebSocket to its end: read loop, session
  callbacks, close handshake and the close-handshake safety abort.

No greenlet is kept per connection besides the one serving it: the close
deadlines are one-shot hub timers armed only once our close frame is sent.

:func:`serve_connection` first takes the connection over from pywsgi
(``handler.release_http_state``): the Transport then reads through a
``SocketReader``, not pywsgi's buffered reader.
"""
import fcntl
import logging
import select
import socket
import struct
import termios
import time

import gevent
from gevent.lock import Semaphore
from gevent.monkey import get_original

from connnode.connection.closes import Close
from connnode.connection.frames import OP_TEXT, PING_FRAME, _frame, close_frame
from connnode.connection.handler import release_http_state
from connnode.connection.reader import (
    _CLOSING, _DEAD, _PEER_CLOSED, _PINGED, _PONG_SEEN, _STOP_SENDING, _TORN_DOWN, FrameReader,
)
from connnode.sendall import sendall

log = logging.getLogger(__name__)

#: Seconds after our close frame by which the TCP connection is torn down in
#: every case, on top of ``close_handshake_timeout`` (PROTOCOL 2.12). Tests
#: may monkeypatch it, or pass ``close_safety`` to :func:`serve_connection`.
CLOSE_SAFETY_SECONDS = 10.0

_TIOCOUTQ = getattr(termios, "TIOCOUTQ", None)
_INT_ZERO = b"\0\0\0\0"
_poll = get_original("select", "poll")  # the real one: poll(0) never yields
_POLLOUT = select.POLLOUT

class Transport(FrameReader):
    """One WebSocket connection as the Session sees it.

    ``send``/``ping``/``close``/``abort`` may be called from any greenlet;
    ``next_message`` is called by the connection's own greenlet
    (:func:`serve_connection`). Nothing here raises on a dead socket: sends
    answer ``False`` and the read loop ends.
    """

    __slots__ = (
        "_ws", "_sock", "_reader", "_lock", "_flags", "_pending", "_unsent_bound", "_max_frame",
        "_high_water", "_close_wait", "_safety", "_timer", "_skip", "_closer",
        "ping_sent_at", "close_code", "peer_close_code",
    )

    def __init__(self, ws, max_frame_bytes: int, send_high_water: int, *,
                 close_handshake_timeout: float = 0.0, close_safety: float | None = None,
                 reader=None):
        self._ws = ws
        self._sock = ws.handler.socket
        # The object, not its bound ``read`` (memory: a bound method per
        # connection). By default the SocketReader _release_http_state put in.
        self._reader = ws.handler.rfile if reader is None else reader
        self._lock = None  # the send lock, made while in use (see _acquire_send_lock)
        self._flags = 0
        self._pending = 0
        self._unsent_bound = 0
        self._max_frame = max_frame_bytes
        self._high_water = send_high_water
        self._close_wait = close_handshake_timeout or 0.0
        self._safety = CLOSE_SAFETY_SECONDS if close_safety is None else close_safety
        self._timer = None
        self._skip = 0
        self._closer = None
        #: ``time.monotonic()`` of the last ``ping()``, or None.
        self.ping_sent_at = None
        #: The code of the close frame we sent, or None.
        self.close_code = None
        #: The code in the peer's close frame (1005 when it had none), or None.
        self.peer_close_code = None

    # -- state -------------------------------------------------------------

    @property
    def closing(self) -> bool:
        """Our close frame is sent or queued, the peer closed, or TCP is gone."""
        return bool(self._flags & _STOP_SENDING)

    @property
    def pong_received_since_ping(self) -> bool:
        flags = self._flags
        return not flags & _PINGED or bool(flags & _PONG_SEEN)

    @property
    def busy(self) -> bool:
        """More than ``send_high_water`` bytes are not yet on the wire."""
        pending, high_water = self._pending, self._high_water
        if pending + self._unsent_bound <= high_water:
            return False
        if pending > high_water:
            return True
        # The kernel's queue grows only by what we write, so the last reading
        # plus the bytes written since bounds it: most checks (every PUT /push
        # asks) need no system call.
        self._unsent_bound = self._kernel_unsent()
        return pending + self._unsent_bound > high_water

    def _kernel_unsent(self):
        """Bytes the kernel holds in the socket's send queue (0 if unknown)."""
        if _TIOCOUTQ is None:
            return 0
        try:
            return struct.unpack("i", fcntl.ioctl(self._sock.fileno(), _TIOCOUTQ, _INT_ZERO))[0]
        except (OSError, ValueError):
            return 0

    # -- sending -----------------------------------------------------------

    def send(self, text: str) -> bool:
        """Send one text frame under the send lock.

        Blocks while the socket buffer is full (a client that does not
        read): callers that must not wait check :attr:`busy` first.
        Returns False, without raising, if the connection is closing or
        closed or the socket is dead.
        """
        if self._flags & _STOP_SENDING:
            return False
        return self._send_frame(_frame(OP_TEXT, text.encode("utf-8")))

    def send_many(self, texts) -> bool:
        """Send text frames in one write (a stored batch): one system call
        instead of one per frame, and the client reads the batch at once and
        acks it with one frame. As :meth:`send` otherwise."""
        if self._flags & _STOP_SENDING:
            return False
        return self._send_frame(b"".join([_frame(OP_TEXT, text.encode("utf-8")) for text in texts]))

    def send_nowait(self, text: str) -> bool:
        """Send one text frame without waiting (the broadcast fan-out, which
        visits thousands of sessions in a row): now if the send lock is free
        and the socket writable, else from a short-lived greenlet behind the
        frames already queued. False if closing, closed or dead."""
        if self._flags & _STOP_SENDING:
            return False
        return self._send_nowait(_frame(OP_TEXT, text.encode("utf-8")), _STOP_SENDING) is not False

    def ping(self) -> bool:
        """Send an empty PING; ``pong_received_since_ping`` is False until a PONG.

        Never blocks: behind a stuck sender the PING is handed to a
        short-lived greenlet, so a caller timing the PONG still gets to
        abort a client that reads nothing.
        """
        if self._flags & _STOP_SENDING:
            return False
        self._flags = (self._flags | _PINGED) & ~_PONG_SEEN
        self.ping_sent_at = time.monotonic()
        return self._send_nowait(PING_FRAME, _STOP_SENDING) is not False

    def _send_frame(self, frame, stop=_STOP_SENDING):
        """Write one whole frame under the send lock. Never raises on I/O errors.

        Frames are dropped if a ``stop`` flag is set once the lock is held:
        by default once closing has begun, even if they were already
        waiting for the lock, since nothing may follow our close frame.
        """
        size = len(frame)
        self._pending += size
        try:
            self._acquire_send_lock()
            try:
                if self._flags & stop:
                    return False
                try:
                    sendall(self._sock, frame)
                    self._unsent_bound += size
                except OSError:
                    self._flags |= _DEAD
                    return False
                except BaseException:
                    # Killed half way through a frame: the stream is corrupt.
                    self._flags |= _DEAD
                    self._shutdown()
                    raise
                return True
            finally:
                self._release_send_lock()
        finally:
            self._pending -= size

    # The send lock exists only while someone holds or waits for it. Memory:
    # a gevent Semaphore costs about 160 bytes, and an idle connection
    # (nothing being sent) would keep one for its whole life.

    def _acquire_send_lock(self, blocking=True):
        lock = self._lock
        if lock is None:
            lock = self._lock = Semaphore(1)
        return lock.acquire(blocking)

    def _release_send_lock(self):
        lock = self._lock
        lock.release()
        if lock.counter == 1 and not lock.linkcount():
            # Free, and no greenlet is waiting on this object: drop it. The
            # next sender makes a new one (no switch can happen in between).
            self._lock = None

    def _send_nowait(self, frame, stop):
        """Send a small control frame now if the lock is free and the socket
        writable (sendall then returns at once), else from a short-lived
        greenlet. ``stop``: flags that cancel the frame if set by then.

        Returns False if the socket is dead, the greenlet if one was
        spawned, else True."""
        if self._acquire_send_lock(blocking=False):
            if self._writable():
                try:
                    sendall(self._sock, frame)
                    self._unsent_bound += len(frame)
                    return True
                except OSError:
                    self._flags |= _DEAD
                    return False
                finally:
                    self._release_send_lock()
            self._release_send_lock()
        return gevent.spawn(self._send_frame, frame, stop)

    def _writable(self):
        """Non-blocking check that the socket accepts data now."""
        try:
            poller = _poll()
            poller.register(self._sock.fileno(), _POLLOUT)
            return bool(poller.poll(0))
        except (OSError, ValueError):
            return False

    def close(self, code: int, reason: str = "") -> None:
        """Send our close frame once and mark the connection closing.

        Never waits for the peer: if the frame cannot be written at once
        (another greenlet holds the send lock, or the socket is not
        writable), a short-lived greenlet sends it as soon as it can. From
        now on the close deadlines run (PROTOCOL 2.12); the read loop ends
        when the peer's close frame arrives or the socket dies.
        """
        flags = self._flags
        if flags & _CLOSING:
            return
        self._flags = flags | _CLOSING
        self.close_code = code
        if flags & _DEAD:
            return
        self._arm_close_timer()
        sent = self._send_nowait(close_frame(code, reason), _DEAD)
        if sent is not True and sent is not False:
            self._closer = sent

    def abort(self) -> None:
        """Drop TCP without a close frame (the client sees 1006)."""
        self._flags |= _CLOSING | _DEAD
        self._shutdown()

    def _shutdown(self):
        sock = self._sock
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        try:
            sock.close()
        except OSError:
            pass

    # -- close deadlines -----------------------------------------------------

    def _arm_close_timer(self):
        """One-shot hub timer started with our close frame (no greenlet)."""
        if self._timer is not None:
            return
        waiting = self._close_wait > 0
        self._start_timer(self._close_wait if waiting else self._safety, waiting)

    def _start_timer(self, seconds, waiting):
        timer = gevent.get_hub().loop.timer(max(seconds, 0.0))
        self._timer = timer
        timer.start(self._on_close_timer, waiting)

    def _on_close_timer(self, waiting):
        # Runs in the hub: must not block.
        try:
            flags = self._flags
            if flags & _TORN_DOWN:
                return
            if waiting and flags & (_PEER_CLOSED | _DEAD):
                # The handshake finished in time; teardown is still pending
                # (the session's on_closed is running): the safety limit rules.
                self._timer.close()
                self._start_timer(self._safety, False)
                return
            log.debug("close handshake deadline passed: aborting the connection")
            self.abort()
        except Exception:  # pragma: no cover - a hub callback must not raise
            log.exception("close timer failed")

    def _stop_timer(self):
        timer = self._timer
        if timer is not None:
            self._timer = None
            timer.stop()
            timer.close()

    def handshake_done(self):
        """Nothing is left to exchange: TCP is gone, or both close frames
        have crossed (the peer's arrived and ours is written)."""
        flags = self._flags
        return bool(flags & _DEAD or (flags & _PEER_CLOSED and flags & _CLOSING and self._closer is None))

    def finish(self, wait=True):
        """End of the connection: complete the close handshake, then tear down TCP.

        If our close frame went out and the peer's has not arrived, wait for
        it (``wait``), bounded by the close timer. Then shut the socket down,
        stop the timer, and mark the gevent-websocket object closed so that
        it never sends its own (code-less) close frame.
        """
        flags = self._flags
        try:
            if wait:
                if flags & _CLOSING and not flags & (_PEER_CLOSED | _DEAD):
                    self._await_peer_close()
                closer = self._closer
                if closer is not None:
                    # Our close frame is still queued behind other frames:
                    # let it out first (bounded by the close timer's abort).
                    closer.join()
        finally:
            self._flags |= _TORN_DOWN | _CLOSING | _DEAD
            self._stop_timer()
            self._shutdown()
            self._ws.closed = True


def serve_connection(ws, session_factory, settings, close_safety: float | None = None):
    """Run one WebSocket to its end.

    Builds the :class:`Transport`, calls ``session = session_factory(transport)``,
    then ``session.on_text(text)`` for each message (it may block: the
    protocol's "stop reading while a hello/register/ack is in flight"). When
    reading ends for any reason (an exception in ``on_text`` is logged and
    closes with 1011) ``session.on_closed()`` runs exactly once; then the TCP
    connection is torn down: after our close frame the peer's close frame is
    awaited up to ``settings.close_handshake_timeout`` (0 = no separate
    limit), and the socket is aborted in every case if it is not torn down
    ``CLOSE_SAFETY_SECONDS`` (or ``close_safety``) + close_handshake_timeout
    seconds after our close frame (PROTOCOL 2.12). When the close handshake
    is already complete (or TCP is gone) when reading ends, the socket is
    torn down before ``on_closed`` runs rather than after it.
    """
    reader = release_http_state(ws)
    transport = Transport(
        ws, settings.max_frame_bytes, settings.send_high_water,
        close_handshake_timeout=settings.close_handshake_timeout,
        close_safety=close_safety, reader=reader,
    )
    session = None
    wait = True
    try:
        session = session_factory(transport)
        # The factory (often a closure) is not needed again: do not keep it
        # alive, in this frame, for the life of the connection.
        session_factory = None
        while True:
            text = transport.next_message()
            if text is None:
                break
            session.on_text(text)
            del text  # not kept alive while this greenlet waits, idle, for the next
    except Exception:
        log.exception("unexpected error while serving a WebSocket; closing with 1011")
        transport.close(Close.INTERNAL_ERROR.code, Close.INTERNAL_ERROR.reason)
    except BaseException:
        # Killed (GreenletExit on worker shutdown): say goodbye, do not linger.
        wait = False
        transport.close(Close.SHUTTING_DOWN.code, Close.SHUTTING_DOWN.reason)
        raise
    finally:
        try:
            if transport.handshake_done():
                # Free the client at once; on_closed may take a while
                # (it saves outstanding messages, PROTOCOL 2.16).
                transport.finish(wait=False)
            if session is not None:
                try:
                    session.on_closed()
                except Exception:
                    log.exception("session.on_closed failed")
        finally:
            transport.finish(wait)
