"""A worker at its connection limit leaves new connections to a sibling.

The workers of one connection node accept from one listening socket, and the
kernel hands a new connection to whichever worker asks first: the one that
happens to be idle at that instant. In the c100k connect storm (6 workers,
``max_connections`` 19,000 each) that gave 12,869 to 19,094 sockets per
worker, and the fullest answered 852 upgrades 503 while the others had
thousands of places left.

:class:`WorkerLoads` is a small table in memory the master and its workers
share (an anonymous shared mapping the master makes before the first fork):
one record per worker slot, (when it was written, the worker's open
WebSockets). Each accepting worker writes its record every
``REPORT_INTERVAL`` and clears it when it stops accepting (shutdown).
:class:`LoadShare` is one worker's view of it: when the worker's pool holds
``max_connections`` connections (WebSockets and handshakes) and a sibling
with a fresh record (not older than ``STALE_AFTER``) is below the limit by
more than 1 %, the worker leaves the next connection in the accept queue for
it (its public server stops accepting and looks again after ``RECHECK``,
``worker.public_server_class``). With no such sibling (one worker, or all
of them full) it accepts, and the handshake is answered 503 (PROTOCOL.md
2.1). A worker that stopped writing (dead, or its hub blocked) is left out,
so nobody waits for it for longer than ``STALE_AFTER``.

Tried and dropped: also keeping the workers' counts within 2 % of the limit
of each other. In one c100k run the counts came out even (16,313 to 16,932)
and the connect storm took 508 s, against 330 s with the limit rule alone;
but that run overlapped the previous run's bare calls for its first minutes,
so the figure is not a clean comparison. The reason to drop it stands
without one: the kernel gives a connection to a worker that is waiting in
``accept``, and a spread rule makes every accept wait for the least loaded
worker, whatever that worker is busy with.
"""
import mmap
import struct
import time

RECORD = struct.Struct("=dq")  # monotonic time of the report (0: none), open WebSockets
SLOTS = 64  # worker slots (router ports router_port + slot) the table covers
REPORT_INTERVAL = 0.1
STALE_AFTER = 1.0
RECHECK = 0.05


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

    __slots__ = ("loads", "slot", "limit", "count", "margin")

    def __init__(self, loads, slot, limit, count):
        self.loads, self.slot, self.limit = loads, slot, limit
        self.count = count  # () -> this worker's open WebSockets
        self.margin = limit // 100

    def report(self):
        self.loads.write(self.slot, self.count())

    def withdraw(self):
        self.loads.clear(self.slot)

    def leave_to_sibling(self, pool_size, now=None):
        if pool_size < self.limit or not self.limit:
            return False
        now = time.monotonic() if now is None else now
        below = self.limit - self.margin
        return any(slot != self.slot and now - at <= STALE_AFTER and count < below
                   for slot, at, count in self.loads.records())
