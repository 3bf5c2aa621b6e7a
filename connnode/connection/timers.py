"""One timer greenlet per worker for every connection's timers.

A heap of small entries (deadline, sequence, callback, args) replaces a gevent
timer object per connection and per timer: an idle connection then costs an
entry in a heap, not a watcher in the event loop. Callbacks run in a fresh
greenlet so a slow one (a close frame to a client that is not reading) delays
no other.

``cancel`` drops an entry's callback and arguments at once (memory: a
cancelled entry no longer keeps its connection alive) and leaves the emptied
entry in the heap; once cancelled entries make up a quarter of it the heap
is rebuilt without them. Callbacks of entries that are not cancelled still
check their connection's state.
"""
import heapq
import itertools
import logging
import time

import gevent
from gevent.event import Event

log = logging.getLogger(__name__)

#: Rebuild the heap once it holds at least this many cancelled entries and
#: they are at least a quarter of it (amortised O(1) per cancel). Not half:
#: while clients connect, the cancelled hello timeouts stay just under half
#: of the heap (one per client, as many keepalives, plus pending hellos).
_COMPACT_MIN = 64


class TimerEntry:
    """One scheduled call. ``__slots__`` and no tuple: 64 bytes, less than the
    4-tuple it replaces, and its references can be dropped in place."""

    __slots__ = ("deadline", "sequence", "callback", "args")

    def __init__(self, deadline, sequence, callback, args):
        self.deadline = deadline
        self.sequence = sequence
        self.callback = callback
        self.args = args

    def __lt__(self, other):
        if self.deadline != other.deadline:
            return self.deadline < other.deadline
        return self.sequence < other.sequence

    @property
    def cancelled(self):
        return self.callback is None


class Timers:
    def __init__(self, clock=time.monotonic):
        self._clock = clock
        self._heap = []
        self._cancelled = 0
        self._sequence = itertools.count()
        self._wake = Event()
        self._runner = None

    def __len__(self):
        """Entries in the heap, cancelled ones not yet dropped included."""
        return len(self._heap)

    def call_later(self, delay, callback, *args):
        deadline = self._clock() + max(0.0, delay)
        entry = TimerEntry(deadline, next(self._sequence), callback, args)
        heapq.heappush(self._heap, entry)
        if self._heap[0] is entry:
            self._wake.set()
        if self._runner is None:
            self._runner = gevent.spawn(self._run)
        return entry

    def cancel(self, entry):
        """Forget ``entry`` (from ``call_later``); nothing if it already ran or
        was cancelled. Its callback and arguments are released at once."""
        if entry is None or entry.callback is None:
            return
        entry.callback = None
        entry.args = ()
        self._cancelled += 1
        heap = self._heap
        if self._cancelled >= _COMPACT_MIN and self._cancelled * 4 >= len(heap):
            heap[:] = [live for live in heap if live.callback is not None]
            heapq.heapify(heap)
            self._cancelled = 0
            self._wake.set()  # the earliest deadline may have changed

    def _run(self):
        heap = self._heap
        while True:
            self._wake.clear()
            if not heap:
                self._wake.wait()
                continue
            delay = heap[0].deadline - self._clock()
            if delay > 0:
                self._wake.wait(delay)
                continue
            entry = heapq.heappop(heap)
            callback, args = entry.callback, entry.args
            if callback is None:
                self._cancelled -= 1
                continue
            entry.callback = None  # ran: a later cancel() is a no-op
            entry.args = ()
            gevent.spawn(_run_callback, callback, args)


def _run_callback(callback, args):
    try:
        callback(*args)
    except Exception:  # noqa: BLE001 - a timer must never take the worker down
        log.exception("timer callback %r failed", callback)
