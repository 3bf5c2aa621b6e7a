"""Workers of one node keep their connection counts close, and a worker at
its connection limit leaves new connections to a sibling.

The workers of one connection node accept from one listening socket, and the
kernel hands a new connection to whichever worker asks first: the one that
happens to be idle at that instant. In the c100k connect storm (6 workers,
``max_connections`` 19,000 each) that gave 12,869 to 19,094 sockets per
worker, and the fullest answered 852 upgrades 503 while the others had
thousands of places left. Stopping a worker only at its limit turned those
503s into waiting, but left the storm's last part to the two workers below
the limit (7,541 to 19,063 sockets; 329 s instead of 264 s).

:class:`WorkerLoads` is a small table in memory the master and its workers
share (an anonymous shared mapping the master makes before the first fork):
one record per worker slot, (when it was written, the worker's open
WebSockets). Each accepting worker writes its record every
``REPORT_INTERVAL`` and clears it when it stops accepting (shutdown).
:class:`LoadShare` is one worker's view of it. Among the siblings with a
fresh record (not older than ``STALE_AFTER``), a worker leaves the next
connection to them (its public server stops accepting and looks again after
``RECHECK``, ``worker.public_server_class``):

* when its pool holds ``max_connections`` connections (WebSockets and
  handshakes) and a sibling is below the limit by more than 1 %; with no
  such sibling (one worker, or all full) it accepts, and the handshake is
  answered 503 (PROTOCOL.md 2.1);
* when it holds more than ``spread`` WebSockets above the least loaded
  sibling (2 % of the limit, at least ``SPREAD``).

A worker that stopped writing (dead, or its hub blocked) is left out, so
nobody waits for it for longer than ``STALE_AFTER``.
"""
import mmap
import struct
import time

RECORD = struct.Struct("=dq")  # monotonic time of the report (0: none), open WebSockets
SLOTS = 64  # worker slots (router ports router_port + slot) the table covers
REPORT_INTERVAL = 0.1
STALE_AFTER = 1.0
RECHECK = 0.05
SPREAD = 100


class WorkerLoads:
    """The shared table: make it in the master, before forking."""

    def __init__(self, slots=SLOTS):
        self.slots = slots
        self._map = mmap.mmap(-1, slots * RECORD.size)  # MAP_SHARED, anonymous

    def write(self, slot, count, now=None):
        if 0 <= slot < self.slots:
            RECORD.pack_into(self._map, slot * RECORD.size,
                             time.monotonic() if now is None else now, count)

    def clear(self, slot):
        if 0 <= slot < self.slots:
            RECORD.pack_into(self._map, slot * RECORD.size, 0.0, 0)

    def records(self):
        """(slot, written at, count) of every slot with a record."""
        return [(slot, at, count) for slot, (at, count) in enumerate(RECORD.iter_unpack(self._map))
                if at]


class LoadShare:
    """One worker's side: its reports, and whether to leave the next
    connection to a sibling."""

    __slots__ = ("loads", "slot", "limit", "count", "margin", "spread")

    def __init__(self, loads, slot, limit, count):
        self.loads, self.slot, self.limit = loads, slot, limit
        self.count = count  # () -> this worker's open WebSockets
        self.margin = limit // 100
        self.spread = max(SPREAD, limit // 50)

    def report(self):
        self.loads.write(self.slot, self.count())

    def withdraw(self):
        self.loads.clear(self.slot)

    def leave_to_sibling(self, pool_size, now=None):
        now = time.monotonic() if now is None else now
        siblings = [count for slot, at, count in self.loads.records()
                    if slot != self.slot and now - at <= STALE_AFTER]
        if not siblings:
            return False
        least = min(siblings)
        if self.limit and pool_size >= self.limit:
            return least < self.limit - self.margin
        return self.count() > least + self.spread
