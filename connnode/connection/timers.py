"""One timer greenlet per worker for every connection's timers.

A heap of (deadline, sequence, callback, args) entries replaces a gevent timer
object per connection and per timer: an idle connection then costs a tuple in
a heap, not a watcher in the event loop. Callbacks run in a fresh greenlet so
a slow one (a close frame to a client that is not reading) delays no other.
Entries are not removed on cancel; callbacks check their connection's state.
"""
import heapq
import itertools
import logging
import time

import gevent
from gevent.event import Event

log = logging.getLogger(__name__)


class Timers:
    def __init__(self, clock=time.monotonic):
        self._clock = clock
        self._heap = []
        self._sequence = itertools.count()
        self._wake = Event()
        self._runner = None

    def __len__(self):
        return len(self._heap)

    def call_later(self, delay, callback, *args):
        deadline = self._clock() + max(0.0, delay)
        entry = (deadline, next(self._sequence), callback, args)
        heapq.heappush(self._heap, entry)
        if self._heap[0] is entry:
            self._wake.set()
        if self._runner is None:
            self._runner = gevent.spawn(self._run)
        return entry

    def _run(self):
        while True:
            self._wake.clear()
            if not self._heap:
                self._wake.wait()
                continue
            delay = self._heap[0][0] - self._clock()
            if delay > 0:
                self._wake.wait(delay)
                continue
            _, _, callback, args = heapq.heappop(self._heap)
            gevent.spawn(_run_callback, callback, args)


def _run_callback(callback, args):
    try:
        callback(*args)
    except Exception:  # noqa: BLE001 - a timer must never take the worker down
        log.exception("timer callback %r failed", callback)
