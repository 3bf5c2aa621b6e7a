"""A worker at its connection limit leaves new connections to a sibling.

The workers of one connection node accept from one listening socket, and the
kernel hands a new connection to whichever worker asks first. In the c100k
connect storm (6 workers, ``max_connections`` 19,000 each) that gave 12,869
to 19,094 sockets per worker, and the fullest worker answered 852 upgrades
503 while the others had thousands of places left.

:class:`WorkerLoads` is a small table in memory the master and its workers
share (an anonymous shared mapping the master makes before the first fork):
one record per worker slot, (when it was written, the worker's open
WebSockets). Each worker writes its record every ``REPORT_INTERVAL``.
:class:`LoadShare` is one worker's view: when its server's pool holds
``max_connections`` connections (WebSockets and handshakes) and a sibling
has room (a record fresher than ``STALE_AFTER``, below the limit by more
than a margin), the public server stops accepting and looks again after
``RECHECK`` (``worker.public_server_class``). With no sibling with room (one
worker, or all of them full) it accepts as before and the handshake is
answered 503 (PROTOCOL.md 2.1). A worker that stopped writing (dead, or its
hub blocked) counts as having no room, so nobody waits for it.
"""
import mmap
import struct
import time

RECORD = struct.Struct("=dq")  # monotonic time of the report, open WebSockets
SLOTS = 256  # worker slots (ports router_port + slot) the table covers
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

    def records(self):
        """(slot, written at, count) of every slot ever written."""
        return [(slot, at, count) for slot, (at, count) in enumerate(RECORD.iter_unpack(self._map))
                if at]


class LoadShare:
    """One worker's side: its reports, and whether a sibling has room."""

    __slots__ = ("loads", "slot", "limit", "margin")

    def __init__(self, loads, slot, limit):
        self.loads, self.slot, self.limit = loads, slot, limit
        self.margin = limit // 100

    def report(self, count):
        self.loads.write(self.slot, count)

    def sibling_has_room(self, now=None):
        now = time.monotonic() if now is None else now
        below = self.limit - self.margin
        return any(slot != self.slot and now - at <= STALE_AFTER and count < below
                   for slot, at, count in self.loads.records())
