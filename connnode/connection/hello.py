"""How a hello claims its uaid and writes its router record (PROTOCOL.md 2.4
steps 1-4): the ``HelloRecord`` mixin of ``Session``, with no slots of its
own (the state is the Session's, like ``drain.py``'s).

A known uaid is resumed by writing first: one conditional UpdateItem that
returns the record as it was (``RouterTable.resume_user``), judged
afterwards: missing -> a new user, unusable (104/105) -> dropped and a new
user, refused -> another connection is newer. README Decisions, "a resumed
hello writes first". A new user gets a fresh uaid and its full record
(``register_user``). Either way the uaid is claimed in this worker's
registry before the write, and released when the write is refused.
"""
import logging
import time
import uuid

import gevent

from connnode.connection.closes import Close
from connnode.connection.pending import retry_forever
from connnode.db.dynamo import StorageError
from connnode.db.router import fresh_last_connect

log = logging.getLogger(__name__)


class HelloRecord:
    __slots__ = ()

    def _write_record(self, uaid):
        """2.4 steps 1-4: claim a uaid locally and write its router record.
        Returns (written, resumed, the record before the write); not written
        (the claim released) when another connection is newer."""
        if uaid:
            # A close of this uaid moments ago may still be writing (saves,
            # acks, the msg_limit decision): write the record after them.
            self.ctx.pending.wait_idle(uaid)
            outcome = self._resume(uaid)
            if outcome is not None:
                return outcome
            if self.closing:
                return False, True, {}
        return self._create()

    def _claim(self):
        """Hold ``self.uaid`` in this worker; False when a newer holder has it."""
        claimed, previous = self.ctx.registry.claim(self)
        if previous is not None:
            gevent.spawn(previous.close, Close.SUPERSEDED)
        return claimed

    def _resume(self, uaid):
        """A known user keeps its uaid: (written, True, old record), or None
        for a new user when the record is missing or unusable (2.4 step 1).
        The record is written first and judged from what the write returns
        (one storage call instead of a read and a write; README Decisions)."""
        ctx = self.ctx
        storage = ctx.storage
        self.uaid = uaid
        if not self._claim():
            return False, True, {}
        now = time.time()
        written, stored = storage.router.resume_user(
            uaid, ctx.node_id, self.connected_at, int(now) + ctx.settings.max_ttl)
        if stored is None:
            ctx.registry.release(self)
            return None
        if "router_type" not in stored or "connected_at" not in stored:
            unusable = "104"
        else:
            unusable = None if storage.month_usable(stored) else "105"
        if unusable:
            ctx.registry.release(self)
            self._drop_unusable(uaid, unusable)
            return None
        if not written:
            ctx.registry.release(self)
            return False, True, {}
        self.table = storage.message_table(stored["current_month"])
        self.rotation_pending = stored["current_month"] != storage.rotation.current
        self.reset_pending = int(stored.get("record_version") or 0) < 1
        if not str(stored.get("last_connect", "")).startswith(time.strftime("%Y%m", time.gmtime(now))):
            gevent.spawn(self._refresh_last_connect, now)
        return True, True, stored

    def _refresh_last_connect(self, now):
        """The first hello of a month refreshes ``last_connect`` (2.4 step 1),
        after the reply: it feeds the monthly GSI only."""
        try:
            self.ctx.storage.router.refresh_last_connect(self.uaid, self.ctx.node_id,
                                                         self.connected_at, now)
        except StorageError as exc:
            log.warning("last_connect refresh failed: %s", exc)

    def _create(self):
        """A new user (2.4 step 2): a fresh uaid and its record."""
        ctx = self.ctx
        storage = ctx.storage
        now = time.time()
        self.uaid = uuid.uuid4().hex
        self.table = storage.current_table
        if not self._claim():
            return False, False, {}
        record = {"uaid": self.uaid, "node_id": ctx.node_id, "connected_at": self.connected_at,
                  "expiry": int(now) + ctx.settings.max_ttl, "router_type": "webpush",
                  "last_connect": fresh_last_connect(now), "record_version": 1,
                  "current_month": storage.rotation.current}
        written, old = storage.router.register_user(record)
        if not written:
            ctx.registry.release(self)
        return written, False, old

    def _drop_unusable(self, uaid, code):
        self._metric("ua.expiration", tags={"code": code})
        gevent.spawn(retry_forever, self.ctx.storage.router.drop_user, uaid)
