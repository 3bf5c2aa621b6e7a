"""One WebSocket client's state machine (PROTOCOL.md 2, 7.3, 8).

The Session never touches a socket. The WebSocket layer feeds it client text
frames (``on_text``) and tells it when the connection ends (``on_closed``);
the private router API calls ``deliver_direct``, ``request_check`` and
``terminate``. It talks back through a transport with ``send``, ``ping``,
``close``, ``abort``, ``busy`` and ``closing`` (tests pass a recording fake).

Handlers read top to bottom as blocking code: under gevent a storage call
parks this greenlet only. ``on_text`` runs in the connection's read loop, so
while it blocks (hello, register, the writes of an ack) the next frame is not
read, which is exactly the pause the protocol asks for (2.2). The storage
drain runs in a greenlet of its own, started per check.
"""
import logging
import random
import time

import gevent
from gevent.event import Event

from connnode import protocol
from connnode.db.dynamo import StorageError, ThroughputError
from connnode.db.router import fresh_last_connect
from connnode.useragent import connection_tags

log = logging.getLogger(__name__)

AWAITING_HELLO, HELLO_IN_PROGRESS, READY, CLOSING = range(4)
TOPIC, TIMESTAMP = "topic", "timestamp"
RETRY_FIRST, RETRY_MAX = 0.1, 2.0
# Overload timings (seconds, random integer in [a, b]): hello reply delay (2.4.2),
# storage check retry (8.2), table move retry (7.3).
HELLO_OVERLOAD_WAIT = (4, 8)
CHECK_RETRY_WAIT = (5, 60)
MOVE_RETRY_WAIT = (1, 1800)
BUSY_RETRY = 1
# Outstanding (unacked) direct messages a connection may hold in memory. A
# client that stops acking is "busy" beyond this: PUT /push answers 503 and
# the endpoint stores the message instead, so memory per client stays bounded.
MAX_OUTSTANDING_DIRECT = 100


def ms_time():
    return int(time.time() * 1000)


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


def retry_forever(function, *args):
    """Repeat a storage call until it returns (1.2 "retried until it
    succeeds"), even after the connection that started it has gone."""
    delay = RETRY_FIRST
    while True:
        try:
            return function(*args)
        except StorageError as exc:
            log.warning("retrying %s after %s", getattr(function, "__name__", function), exc)
            gevent.sleep(delay)
            delay = min(delay * 2, RETRY_MAX)


class Session:
    __slots__ = (
        "node", "transport", "connected_at", "user_agent", "host", "state", "uaid",
        "table", "rotation_pending", "reset_pending", "last_ping", "last_activity",
        "queued", "direct", "batch", "batch_phase", "phase", "cursor", "draining",
        "recheck", "sent_in_drain", "drain_generation", "paused", "registers", "_counts",
        "said_hello", "hello_timer",
    )

    def __init__(self, node, transport, connected_at=None, user_agent="", host=""):
        self.node = node
        self.transport = transport
        self.connected_at = connected_at or ms_time()
        self.user_agent = user_agent
        self.host = host
        self.state = AWAITING_HELLO
        self.uaid = None
        self.table = None
        self.rotation_pending = False
        self.reset_pending = False
        self.last_ping = None
        self.last_activity = time.monotonic()
        self.queued = None          # direct messages that arrived before the hello reply
        self.direct = NO_ITEMS      # (chid, version) -> outstanding direct Notification
        self.batch = NO_ITEMS       # (chid, version) -> outstanding stored Notification
        self.batch_phase = None
        self.phase = TOPIC
        self.cursor = None
        self.draining = False
        self.recheck = False
        self.sent_in_drain = 0
        self.drain_generation = 0
        self.paused = None          # an Event while reading is paused (table move)
        # Counters for the close summary (see ``stats``). "registers", the one
        # an idle client usually has, is a plain int: a dict holding one
        # counter costs about 190 bytes per client. The rest, made on first use.
        self.registers = 0
        self._counts = None
        self.said_hello = False
        self.hello_timer = None
        settings = node.settings
        if settings.hello_timeout > 0:
            self.hello_timer = node.timers.call_later(settings.hello_timeout, self._hello_timer_fired)

    def __repr__(self):
        return f"<Session {self.uaid} state={self.state} connected_at={self.connected_at}>"

    # -- small helpers ---------------------------------------------------------
    @property
    def busy(self):
        """Too much unsent output, or too many unacked direct messages (3.1)."""
        return self.transport.busy or len(self.direct) >= MAX_OUTSTANDING_DIRECT

    @property
    def closing(self):
        return self.state >= CLOSING

    def _count(self, name, amount=1):
        if self._counts is None:
            self._counts = {}
        self._counts[name] = self._counts.get(name, 0) + amount

    @property
    def stats(self):
        """The counters for the close summary: name -> count (counted ones only)."""
        stats = dict(self._counts or ())
        if self.registers:
            stats["registers"] = self.registers
        return stats

    def _add_direct(self, key, notification):
        if self.direct is NO_ITEMS:
            self.direct = {}
        self.direct[key] = notification

    def _add_batch(self, key, item):
        if self.batch is NO_ITEMS:
            self.batch = {}
        self.batch[key] = item

    def _metric(self, name, count=1, tags=None):
        """A connection metric, with the user-agent and host tags (10)."""
        base = connection_tags(self.user_agent, self.host)
        self.node.metrics.increment(name, count, {**base, **tags} if tags else base)

    def _send(self, text):
        if self.state < CLOSING:
            self.transport.send(text)

    def close(self, code, reason=""):
        """Enter CLOSING: leave the registry at once, send the close frame."""
        if self.state >= CLOSING:
            return
        self.state = CLOSING
        self.drain_generation += 1
        self.node.registry.release(self)
        self.transport.close(code, reason)

    def terminate(self):
        """DELETE /notif: superseded by a newer connection elsewhere."""
        self.close(1000, "superseded")

    # -- client frames (2.2) ---------------------------------------------------
    def on_text(self, text):
        if self.state >= CLOSING:
            return
        if self.paused is not None:
            self.paused.wait()
        self.last_activity = time.monotonic()
        try:
            message = protocol.parse_client_frame(text, self.state != AWAITING_HELLO)
        except protocol.ProtocolViolation as exc:
            log.debug("protocol violation: %s", exc.reason)
            self.close(1002, exc.reason)
            return
        handler = self._HANDLERS[type(message)]
        handler(self, message)

    # -- hello (2.4) -------------------------------------------------------------
    def _on_hello(self, hello):
        if self.state != AWAITING_HELLO:
            self._send(protocol.hello_error(401, "duplicate hello"))
            self.close(1002, "duplicate hello")
            return
        self.state = HELLO_IN_PROGRESS
        self.said_hello = True
        self._cancel_hello_timer()
        if not hello.use_webpush:
            self._send(protocol.hello_error(401, "Simplepush not supported"))
            self.close(1002, "Simplepush not supported")
            return
        node = self.node
        try:
            record, resumed = self._pick_record(hello.uaid)
            if self.closing:
                return
            claimed, previous = node.registry.claim(self)
            if not claimed:
                self._already_connected()
                return
            if previous is not None:
                gevent.spawn(previous.close, 1000, "superseded")
            written, old = node.storage.router.register_user(record)
        except ThroughputError:
            self._hello_overloaded()
            return
        except StorageError as exc:
            log.warning("hello storage error: %s", exc)
            self._send(protocol.hello_error(503, "error"))
            self.close(1011, "storage error")
            return
        if self.closing:
            return
        if not written:
            node.registry.release(self)
            self._already_connected()
            return
        old_node, old_connected_at = old.get("node_id"), old.get("connected_at")
        if old_node and old_node != node.node_id and old_connected_at is not None:
            gevent.spawn(node.evict_elsewhere, old_node, self.uaid, old_connected_at)
        self.state = READY
        self._send(protocol.hello_reply(self.uaid, node.settings.auto_ping_interval,
                                        node.settings.env))
        self._metric("ua.command.hello")
        queued, self.queued = self.queued, None
        for notification in queued or ():
            self._send_direct_frame(notification)
        self._schedule_keepalive()
        if resumed:
            # A uaid minted by this hello has no stored messages (no endpoint
            # for it exists yet), so its check would be two empty Queries.
            self.start_check()

    def _pick_record(self, uaid):
        """(router record to write, resumed): a resumed user or a new one (2.4 steps 1-2)."""
        node = self.node
        storage = node.storage
        now = time.time()
        base = {"node_id": node.node_id, "connected_at": self.connected_at,
                "expiry": int(now) + node.settings.max_ttl}
        stored = storage.router.get_uaid(uaid) if uaid else None
        if stored is not None:
            if "router_type" not in stored or "connected_at" not in stored:
                self._drop_unusable(uaid, "104")
            elif not storage.month_usable(stored):
                self._drop_unusable(uaid, "105")
            else:
                self.uaid = uaid
                record = dict(stored, **base)
                last_connect = str(stored.get("last_connect", ""))
                if last_connect.startswith(time.strftime("%Y%m", time.gmtime(now))):
                    record.pop("last_connect", None)
                else:
                    record["last_connect"] = fresh_last_connect(now)
                self.table = storage.message_table(stored["current_month"])
                self.rotation_pending = stored["current_month"] != storage.rotation.current
                self.reset_pending = int(stored.get("record_version") or 0) < 1
                return record, True
        self.uaid = node.new_uaid()
        self.table = storage.current_table
        return dict(base, uaid=self.uaid, router_type="webpush", last_connect=fresh_last_connect(now),
                    record_version=1, current_month=storage.rotation.current), False

    def _drop_unusable(self, uaid, code):
        self._metric("ua.expiration", tags={"code": code})
        gevent.spawn(retry_forever, self.node.storage.router.drop_user, uaid)

    def _already_connected(self):
        self._send(protocol.hello_error(500, "already_connected"))
        self.close(1000, "already connected")

    def _hello_overloaded(self):
        gevent.sleep(random.randint(*HELLO_OVERLOAD_WAIT))
        self.node.registry.release(self)
        self._send(protocol.hello_error(503, "error - overloaded"))
        self.close(1011, "overloaded")

    # -- register / unregister (2.5, 2.6) ----------------------------------------
    def _on_register(self, register):
        if register.error is not None:
            self._send(register.error)
            return
        chid = register.chid
        try:
            endpoint = self.node.endpoint_for(self.uaid, chid, register.key)
            self.table.register_channel(self.uaid, chid)
        except ThroughputError:
            self._send(protocol.overloaded_error())
            return
        except Exception:  # noqa: BLE001 - any failure keeps the connection (2.5)
            log.exception("register failed")
            self._send(protocol.register_error(chid))
            return
        self._send(protocol.register_reply(chid, endpoint))
        self._metric("ua.command.register")
        self.registers += 1

    def _on_unregister(self, unregister):
        if unregister.error is not None:
            self._send(unregister.error)
            return
        chid = unregister.chid
        if unregister.code is not None:
            log.info("unregister", extra={"fields": {"code": unregister.code}})
        self._metric("ua.command.unregister")
        self._count("unregisters")
        for key in [key for key in self.direct if key[0] == chid]:
            del self.direct[key]
        self._send(protocol.unregister_reply(unregister.echo))
        gevent.spawn(retry_forever, self.table.unregister_channel, self.uaid, chid)
        stored = [(chid, version, 0) for (batch_chid, version) in self.batch if batch_chid == chid]
        if stored:
            self._acknowledge(stored)

    # -- ack / nack / ping / broadcast (2.8-2.11) --------------------------------
    def _on_ack(self, ack):
        if not ack.nonempty:
            return
        self._metric("ua.command.ack")
        self._acknowledge(ack.updates)

    def _acknowledge(self, updates):
        """Consume acked messages (8.4); block until their writes finished,
        then continue the drain."""
        writes = []
        stored_acked = False
        for chid, version, code in updates:
            key = (chid, version)
            if self.direct.pop(key, None) is not None:
                self._count("direct_acked")
                continue
            notification = self.batch.get(key)
            if notification is None:
                continue
            stored_acked = True
            self._count("stored_acked")
            if notification.is_timestamped:
                del self.batch[key]
            else:
                writes.append(self.node.pending.spawn(self.uaid, self._delete_acked, key, notification))
        if not stored_acked:
            return
        if writes:
            gevent.joinall(writes)
        if not self.batch and self.batch_phase == TIMESTAMP and self.cursor is not None:
            cursor_write = self.node.pending.spawn(
                self.uaid, retry_forever, self.table.update_last_message_read, self.uaid, self.cursor)
            cursor_write.join()
        self._continue()

    def _delete_acked(self, key, notification):
        retry_forever(self.table.delete_message, self.uaid, notification.sort_key,
                      notification.version)
        self.batch.pop(key, None)

    def _on_nack(self, nack):
        if nack.version is None:
            return
        self._metric("ua.command.nack", tags={"code": nack.code})
        self._count("nacks")

    def _on_ping(self, _ping):
        now = time.monotonic()
        if self.last_ping is not None and now - self.last_ping < self.node.settings.min_ping_interval:
            self.close(4774, "too many pings")
            return
        self.last_ping = now
        self._send(protocol.PING_REPLY)

    def _on_broadcast_subscribe(self, _message):
        pass  # no broadcast source is configured (2.11)

    _HANDLERS = {
        protocol.Hello: _on_hello,
        protocol.Register: _on_register,
        protocol.Unregister: _on_unregister,
        protocol.Ack: _on_ack,
        protocol.Nack: _on_nack,
        protocol.Ping: _on_ping,
        protocol.BroadcastSubscribe: _on_broadcast_subscribe,
    }

    # -- direct delivery (3.2, 8.5) --------------------------------------------
    def deliver_direct(self, notification):
        """PUT /push: on the wire (or queued behind the hello reply) before
        this returns True. False when the connection is going away."""
        if self.state >= CLOSING:
            return False
        key = (notification.chid, notification.version)
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
        if notification.topic is not None:
            self._metric("ua.notification.topic")
        return True

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
        barrier = self.node.pending.snapshot(self.uaid)
        gevent.spawn(self._drain, self.drain_generation, barrier)

    def _later(self, delay, callback):
        """A retry that is dropped if the connection closes first (2.12)."""
        self.node.timers.call_later(delay, self._unless_closing, callback)

    def _unless_closing(self, callback):
        if self.state < CLOSING:
            callback()

    def _drain(self, generation, barrier):
        """Fetch and send batches until one waits for acks or storage is empty."""
        node = self.node
        later = None  # the timestamp phase's items, when the topic fetch saw them all
        while True:
            node.pending.wait(barrier)
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
            except ThroughputError:
                self._later(random.randint(*CHECK_RETRY_WAIT), self.start_check)
                return
            except StorageError as exc:
                log.warning("storage check failed: %s", exc)
                self.close(1011, "storage check failed")
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
        node = self.node
        now = time.time()
        deletes = []
        sent = False
        for item in items:
            if item.expired(now):
                if not item.is_timestamped:
                    deletes.append(node.pending.spawn(
                        self.uaid, retry_forever, self.table.delete_message, self.uaid,
                        item.sort_key, item.version))
                continue
            self.sent_in_drain += 1
            if self.sent_in_drain > node.settings.msg_limit:
                self._reset_user()
                return False
            self._add_batch((item.chid, item.version), item)
            self._send(item.frame())
            self._count("stored_retrieved")
            self._metric("ua.message_data", len(item.data or ""), {"source": "Stored"})
            if item.topic is not None:
                self._metric("ua.notification.topic")
            sent = True
        self.batch_phase = self.phase
        if not sent:
            if self.cursor is not None:
                deletes.append(node.pending.spawn(
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
            self._spawn_drain()
        elif self.recheck:
            self.start_check()

    def _reset_user(self):
        self._count("reset")
        retry_forever(self.node.storage.router.drop_user, self.uaid)
        self.close(1000, "user reset")

    # -- monthly move (7.3) -------------------------------------------------------
    def _move_to_current_table(self):
        storage = self.node.storage
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
            self.close(1011, "table rotation failed")
        finally:
            paused, self.paused = self.paused, None
            paused.set()

    # -- timers (2.12) -----------------------------------------------------------
    def _hello_timer_fired(self):
        self.hello_timer = None
        if self.state == AWAITING_HELLO:
            self.close(1000, "no hello")

    def _cancel_hello_timer(self):
        """Memory: the timer heap would otherwise keep this session (through
        the callback) referenced until the hello timeout passes."""
        timer, self.hello_timer = self.hello_timer, None
        self.node.timers.cancel(timer)

    def _schedule_keepalive(self):
        settings = self.node.settings
        intervals = [value for value in (settings.auto_ping_interval, settings.idle_timeout) if value > 0]
        if intervals:
            self.node.timers.call_later(min(intervals), self._keepalive)

    def _keepalive(self):
        """Idle timer and auto-ping, one timer entry per connection."""
        if self.state >= CLOSING:
            return
        settings = self.node.settings
        if settings.idle_timeout > 0 and time.monotonic() - self.last_activity >= settings.idle_timeout:
            self.close(1000, "idle")
            return
        if settings.auto_ping_interval > 0:
            if self.state != READY or self.node.registry.get(self.uaid) is not self:
                self.close(1000, "not the holder")
                return
            self.transport.ping()
            self.node.timers.call_later(settings.auto_ping_timeout, self._pong_deadline)
        self._schedule_keepalive()

    def _pong_deadline(self):
        if self.state < CLOSING and not self.transport.pong_received_since_ping:
            self.state = CLOSING
            self.node.registry.release(self)
            self.transport.abort()

    # -- the end (2.16) -----------------------------------------------------------
    def on_closed(self):
        """The connection has ended (either side): save what must survive."""
        node = self.node
        self.state = CLOSING
        self.drain_generation += 1
        node.registry.release(self)
        self._cancel_hello_timer()
        if self.paused is not None:
            self.paused.set()
        if self.said_hello:
            lifespan = max(0.0, time.time() - self.connected_at / 1000)
            node.metrics.timing("ua.connection.lifespan", lifespan,
                                connection_tags(self.user_agent, self.host))
        now = time.time()
        saving = [n for n in self.direct.values() if n.ttl and not n.expired(now)]
        self.direct = NO_ITEMS
        self.batch = NO_ITEMS
        if saving and self.table is not None:
            self._count("direct_saved", len(saving))
            node.pending.spawn(self.uaid, self._save_and_notify, saving, self.table)
        node.session_ended(self)

    def _save_and_notify(self, notifications, table):
        saved = 0
        for notification in notifications:
            try:
                table.store_message(notification)
                saved += 1
            except StorageError as exc:
                log.warning("could not save a direct message at close: %s", exc)
        if not saved:
            return
        try:
            record = self.node.storage.router.get_uaid(self.uaid)
        except StorageError as exc:
            log.warning("router lookup after close failed: %s", exc)
            return
        if record and record.get("node_id") and record.get("connected_at") != self.connected_at:
            self.node.notify_node(record["node_id"], self.uaid)
