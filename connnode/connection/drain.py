"""Delivery and acknowledgement (PROTOCOL.md section 8, and 7.3): the half of a
Session that serves what the server sends rather than what the client says.

``Drain`` is a mixin of ``Session``, with no slots of its own: every bit of
state it reads and writes lives in the Session's slots (the "drain", "acks"
and "direct" blocks there), so a connection costs the same memory as one
object. The split follows autopush-rs's ``on_client_msg`` / ``on_server_notif``:
session.py answers client frames (hello, register, unregister, ping, timers,
close); this module

* delivers direct messages from PUT /push (3.2, 8.5) and consumes their acks;
* starts storage checks (PUT /notif, after the hello), fetches, sends and
  waits for acks of stored batches (8.2, 8.3), deletes what was acked (8.4);
* resets a user past ``msg_limit`` and moves a user to the current month's
  table (7.3).

Storage writes that must survive the connection run through
``retry_forever`` under the pending-write barrier (``pending.py``).

Durable delivery (README "Durable delivery"): a direct message that names
``stored_in`` is in storage already. Its ack deletes it (``deletes.py``,
batched), a drain never sends it a second time while it is outstanding
(it joins the batch instead), and nothing saves it again at close.
"""
import logging
import random
import time

import gevent
from gevent.event import Event

from connnode.connection.closes import Close
from connnode.connection.pending import retry_forever
from connnode.connection.states import CLOSING, HELLO_IN_PROGRESS, READY
from connnode.db.dynamo import StorageError, StorageUnavailable, ThroughputError

log = logging.getLogger(__name__)

TOPIC, TIMESTAMP = "topic", "timestamp"
# Seconds (random integer in [a, b]) before a storage check is retried after
# a throughput error (8.2), and before a table move is (7.3).
CHECK_RETRY_WAIT = (5, 60)
MOVE_RETRY_WAIT = (1, 1800)
BUSY_RETRY = 1


class _NoItems(dict):
    """The one shared, always-empty mapping a Session's ``direct`` and
    ``batch`` start as (and return to at close). Memory: an idle client
    then holds no dicts of its own (about 70 bytes each); the first write
    goes through ``Session._add_direct`` / ``_add_batch``, which give the
    session its own dict. Reads, ``pop`` and ``del`` of missing keys behave
    as on any empty dict; adding to it is refused."""

    __slots__ = ()

    def _refuse(self, *_args, **_kwargs):
        raise TypeError("the shared empty mapping is read-only")

    __setitem__ = setdefault = update = __ior__ = _refuse


NO_ITEMS = _NoItems()

#: Stands in ``Session.direct`` for an acked durable message whose delete
#: is still in flight (see ``Drain._forget_direct``).
ACKED = object()


class Drain:
    """Direct and stored delivery, acks, user reset and the monthly move of
    one Session (see the module docstring). Holds no state of its own."""

    __slots__ = ()

    def _add_direct(self, key, notification):
        if self.direct is NO_ITEMS:
            self.direct = {}
        self.direct[key] = notification

    def _add_batch(self, key, item):
        if self.batch is NO_ITEMS:
            self.batch = {}
        self.batch[key] = item

    # -- direct delivery (3.2, 8.5) --------------------------------------------
    def deliver_direct(self, notification):
        """PUT /push: on the wire (or queued behind the hello reply) before
        this returns True. False when the connection is going away."""
        if self.state >= CLOSING:
            return False
        key = (notification.chid, notification.version)
        if key in self.batch:
            # Durable delivery: a drain found the stored copy first and sent
            # it; the client acks it as a stored message (no second frame).
            return True
        self._add_direct(key, notification)
        if self.state == HELLO_IN_PROGRESS:
            if self.queued is None:
                self.queued = []
            self.queued.append(notification)
            return True
        if not self._send_direct_frame(notification):
            self.direct.pop(key, None)
            return False
        return True

    def _send_direct_frame(self, notification):
        if not self.transport.send(notification.frame()):
            return False
        if notification.tracked:  # lifecycle events (connnode/lifecycle.py)
            self.ctx.tracker.message("delivered", notification, via="direct")
        if notification.topic is not None:
            self._metric("ua.notification.topic")
        return True

    # -- acks (8.4, 8.5) -----------------------------------------------------------
    def _acknowledge(self, updates):
        """Consume acked messages (8.4); block until the writes of acked
        stored messages finished, then continue the drain. A durable direct
        message's delete runs in the background (the barrier holds it)."""
        writes = []
        stored_acked = False
        for chid, version, code in updates:
            key = (chid, version)
            direct = self.direct.get(key)
            if direct is not None:
                if direct is not ACKED:
                    self._count("direct_acked")
                    if direct.tracked:
                        self.ctx.tracker.message("acked", direct, code=code)
                    self._forget_direct(key, direct)
                continue
            notification = self.batch.get(key)
            if notification is None:
                continue
            stored_acked = True
            self._count("stored_acked")
            if notification.tracked:
                self.ctx.tracker.message("acked", notification, code=code)
            if notification.is_timestamped:
                del self.batch[key]
            else:
                writes.append(self.ctx.pending.spawn(self.uaid, self._delete_acked, key, notification))
        if not stored_acked:
            return
        if writes:
            gevent.joinall(writes)
        if not self.batch and self.batch_phase == TIMESTAMP and self.cursor is not None:
            # The next fetch reads past the cursor held in memory, so it need
            # not wait for the cursor's write: it starts first (its barrier
            # leaves the write out) and the two round trips overlap. This
            # frame's handling, and so the read loop, still waits for the
            # write (2.2).
            self._continue()
            self.ctx.pending.spawn(self.uaid, retry_forever, self.table.update_last_message_read,
                                   self.uaid, self.cursor).join()
            return
        self._continue()

    def _delete_acked(self, key, notification):
        retry_forever(self.table.delete_message, self.uaid, notification.sort_key,
                      notification.version)
        self.batch.pop(key, None)

    def _forget_direct(self, key, notification):
        """An acked (or unregistered) direct message leaves ``direct``. A
        durable one is deleted from its table first; until the delete has
        finished its key stays, marked ``ACKED``, so that a drain that read
        storage before the delete does not send it again."""
        if notification.stored_in is None:
            del self.direct[key]
            return
        self.direct[key] = ACKED
        ctx = self.ctx
        if notification.topic is not None:
            # A newer message with the same topic may have replaced it: only
            # a conditional delete is safe, and BatchWriteItem has none.
            table = ctx.storage.message_table(notification.stored_in)
            job = ctx.pending.spawn(self.uaid, retry_forever, table.delete_message, self.uaid,
                                    notification.sort_key, notification.version)
        else:
            job = ctx.deletes.add(self.uaid, notification.stored_in, notification.sort_key)
        job.link(lambda _job: self._deleted(key))

    def _deleted(self, key):
        if self.direct.get(key) is ACKED:
            del self.direct[key]

    # -- stored delivery (8.2, 8.3) ----------------------------------------------
    def request_check(self):
        """PUT /notif: 200 when a check started; 202 when it was only flagged
        because the holder is pending, busy, or has a batch outstanding (the
        connection-node issue asks for 202 there; the check runs once it is acked)."""
        if self.state != READY or self.busy or self.batch:
            self.recheck = True
            if self.state == READY:
                self.start_check()
            return 202
        self._metric("ua.notification_check")
        self.start_check()
        return 200

    def start_check(self):
        if self.state >= CLOSING:
            return
        if self.busy:
            self._later(BUSY_RETRY, self.start_check)
            return
        if self.batch:
            self.recheck = True
            return
        self.recheck = False
        self.draining = True
        self.phase = TOPIC
        self._spawn_drain()

    def _spawn_drain(self):
        self.drain_generation += 1
        barrier = self.ctx.pending.snapshot(self.uaid)
        gevent.spawn(self._drain, self.drain_generation, barrier)

    def _later(self, delay, callback):
        """A retry that is dropped if the connection closes first (2.12)."""
        self.ctx.timers.call_later(delay, self._unless_closing, callback)

    def _unless_closing(self, callback):
        if self.state < CLOSING:
            callback()

    def _drain(self, generation, barrier):
        """Fetch and send batches until one waits for acks or storage is empty."""
        ctx = self.ctx
        later = None  # the timestamp phase's items, when the topic fetch saw them all
        while True:
            ctx.pending.wait(barrier)
            barrier = None
            if self.state >= CLOSING or generation != self.drain_generation:
                return
            try:
                if self.phase == TOPIC:
                    cursor, items, later = self.table.fetch_topic_phase(self.uaid)
                elif later is not None:
                    cursor, items = self.table.timestamp_phase(self.uaid, later, self.cursor)
                    later = None
                else:
                    cursor, items = self.table.fetch_timestamp_messages(self.uaid, self.cursor)
            except (ThroughputError, StorageUnavailable) as exc:
                # An unreachable store (timeouts in a storm) is an overload
                # like throttling: try later rather than close the client,
                # who would reconnect into the same storm (README Decisions).
                if isinstance(exc, StorageUnavailable):
                    log.info("storage check postponed: %s", exc)
                self._later(random.randint(*CHECK_RETRY_WAIT), self.start_check)
                return
            except StorageError as exc:
                log.warning("storage check failed: %s", exc)
                self.close(Close.CHECK_FAILED)
                return
            if self.state >= CLOSING or generation != self.drain_generation:
                return
            if self.busy:
                self._later(BUSY_RETRY, self.start_check)
                return
            if cursor is not None:
                self.cursor = cursor
            if not items:
                if self.phase == TOPIC:
                    self.phase = TIMESTAMP
                    continue
                self._drain_complete()
                return
            if not self._send_batch(items):
                return
            if self.batch:
                return  # wait for acks; _acknowledge continues
            if not self.draining:
                if self.recheck:
                    self.start_check()
                return

    def _send_batch(self, items):
        """Send a fetched batch (8.3 step 4-5). False when the drain must stop."""
        ctx = self.ctx
        now = time.time()
        deletes = []
        frames = []  # written together after the loop (Session._send_many)
        sent = False
        for item in items:
            key = (item.chid, item.version)
            direct = self.direct.get(key)
            if direct is not None:
                # Durable delivery stored it before handing it over: the
                # client has it already. Acked (delete in flight): pass it.
                # Outstanding: no second frame; it is acked as a stored
                # message from now on, so the cursor never passes it unacked.
                if direct is not ACKED:
                    del self.direct[key]
                    self._add_batch(key, item)
                    sent = True
                continue
            if item.expired(now):
                if item.tracked:
                    ctx.tracker.message("expired", item, ttl=item.ttl)
                if not item.is_timestamped:
                    deletes.append(ctx.pending.spawn(
                        self.uaid, retry_forever, self.table.delete_message, self.uaid,
                        item.sort_key, item.version))
                continue
            self.sent_in_drain += 1
            if self.sent_in_drain > ctx.settings.msg_limit:
                self._send_many(frames)
                self._reset_user()
                return False
            self._add_batch(key, item)
            frames.append(item.frame())
            if item.tracked:
                ctx.tracker.message("delivered", item, via="stored")
            self._count("stored_retrieved")
            self._metric("ua.message_data", len(item.data or ""), {"source": "Stored"})
            if item.topic is not None:
                self._metric("ua.notification.topic")
            sent = True
        self._send_many(frames)
        self.batch_phase = self.phase
        if not sent:
            if self.cursor is not None:
                # After any cursor write still in flight (an ack's): the
                # cursor never moves back.
                ctx.pending.wait(ctx.pending.snapshot(self.uaid))
                deletes.append(ctx.pending.spawn(
                    self.uaid, retry_forever, self.table.update_last_message_read, self.uaid,
                    self.cursor))
            gevent.joinall(deletes)
            return self.state < CLOSING
        return True

    def _drain_complete(self):
        self.draining = False
        self.phase = TOPIC
        self.sent_in_drain = 0
        if self.recheck:
            self.recheck = False
            self._later(BUSY_RETRY, self.start_check)
        elif self.reset_pending:
            self._reset_user()
        elif self.rotation_pending:
            self._move_to_current_table()

    def _continue(self):
        """8.3 "Continue": after a batch was fully acked."""
        if self.state >= CLOSING or self.batch:
            return
        if self.draining:
            if self.sent_in_drain >= self.ctx.settings.msg_limit:
                self.ctx.pending.spawn(self.uaid, self._decide_at_limit, self.table, self.phase,
                                       self.cursor)
            else:
                self._spawn_drain()
        elif self.recheck:
            self.start_check()

    def _decide_at_limit(self, table, phase, cursor):
        """The continuation of a drain that has sent ``msg_limit`` messages,
        all acked: if one more is waiting, the user is reset (8.3 step 4).
        It runs under the write barrier and to its end even if the client
        closes right after its last ack, so that a reconnect's hello (which
        waits for the barrier) sees the reset instead of the same uaid."""
        try:
            more = _next_live_message(table, self.uaid, phase, cursor, self.direct)
        except StorageError as exc:
            log.warning("msg_limit check failed: %s", exc)
            more = None
        if more:
            self._count("reset")
            retry_forever(self.ctx.storage.router.drop_user, self.uaid)
            self.close(Close.USER_RESET)
        elif self.state < CLOSING:
            self._spawn_drain()  # the drain goes on (or completes) as usual

    def _reset_user(self):
        self._count("reset")
        retry_forever(self.ctx.storage.router.drop_user, self.uaid)
        self.close(Close.USER_RESET)

    # -- monthly move (7.3) -------------------------------------------------------
    def _move_to_current_table(self):
        storage = self.ctx.storage
        self.paused = Event()
        try:
            current = storage.current_table
            _, chids = self.table.all_channels(self.uaid)
            if chids:
                current.save_channels(self.uaid, chids)
            storage.router.update_message_month(self.uaid, current.name)
            self.table = current
            self.rotation_pending = False
        except ThroughputError:
            self._later(random.randint(*MOVE_RETRY_WAIT), self.start_check)
        except StorageError as exc:
            log.warning("table move failed: %s", exc)
            self.close(Close.ROTATION_FAILED)
        finally:
            paused, self.paused = self.paused, None
            paused.set()


#: Pages of expired messages ``_next_live_message`` reads past at most.
LIVE_SEARCH_PAGES = 10


def _next_live_message(table, uaid, phase, cursor, outstanding):
    """Whether a drain that continues in ``phase`` from ``cursor`` would
    send an unexpired message: one not in ``outstanding`` (the direct
    messages the client holds already). Bounded to ``LIVE_SEARCH_PAGES``
    fetches."""
    now = time.time()

    def sendable(items):
        return any(not item.expired(now) and (item.chid, item.version) not in outstanding
                   for item in items)

    later = None
    if phase == TOPIC:
        topic_cursor, items, later = table.fetch_topic_phase(uaid)
        if sendable(items):
            return True
        if topic_cursor is not None:
            cursor = topic_cursor
    for _ in range(LIVE_SEARCH_PAGES):
        if later is not None:
            new_cursor, items = table.timestamp_phase(uaid, later, cursor)
            later = None
        else:
            new_cursor, items = table.fetch_timestamp_messages(uaid, cursor)
        if sendable(items):
            return True
        if not items or new_cursor is None or new_cursor == cursor:
            return False
        cursor = new_cursor
    return False
