"""One WebSocket client's state machine (PROTOCOL.md 2).

The Session never touches a socket. The WebSocket layer feeds it client text
frames (``on_text``) and tells it when the connection ends (``on_closed``);
the private router API calls ``deliver_direct``, ``request_check`` and
``terminate``. It talks back through a transport with ``send``, ``ping``,
``close``, ``abort``, ``busy`` and ``closing`` (tests pass a recording fake).

Handlers read top to bottom as blocking code: under gevent a storage call
parks this greenlet only. ``on_text`` runs in the connection's read loop, so
while it blocks (hello, register, the writes of an ack) the next frame is not
read, which is exactly the pause the protocol asks for (2.2).

This module answers what the client says: hello, register, unregister, ack,
nack, ping, the timers and the close. What the server sends (direct and
stored delivery, acks' storage writes, user reset, the monthly move) is the
``Drain`` mixin's (``drain.py``); how a hello claims its uaid and writes its
router record is the ``HelloRecord`` mixin's (``hello.py``); all work on the
slots declared here.

The session sees its process through a ``SessionContext`` (``context.py``):
settings, storage, metrics, the registry, timers, the write barrier and the
calls to other nodes, never the whole ``Node``. Tests build one with fakes.
"""
import logging
import random
import time

import gevent

from connnode import protocol
from connnode.connection.closes import Close
from connnode.connection.drain import ACKED, NO_ITEMS, TOPIC, Drain
from connnode.connection.hello import HelloRecord
from connnode.connection.pending import retry_forever
from connnode.connection.states import AWAITING_HELLO, CLOSING, HELLO_IN_PROGRESS, READY
from connnode.db.dynamo import StorageError, StorageUnavailable, ThroughputError
from connnode.useragent import connection_tags

log = logging.getLogger(__name__)

# Seconds (random integer in [a, b]) before the hello reply after a
# throughput error (2.4.2).
HELLO_OVERLOAD_WAIT = (4, 8)
# nack codes with a metric tag of their own (2.9: Firefox's 301 handler
# threw, 302 unhandled rejection, 303 internal error).
NACK_CODES = (301, 302, 303)
# Outstanding (unacked) direct messages a connection may hold in memory. A
# client that stops acking is "busy" beyond this: PUT /push answers 503 and
# the endpoint stores the message instead, so memory per client stays bounded.
MAX_OUTSTANDING_DIRECT = 100


def ms_time():
    return int(time.time() * 1000)


class Session(HelloRecord, Drain):
    __slots__ = (
        # the connection and its handshake
        "ctx", "transport", "connected_at", "user_agent", "host", "state", "uaid",
        "said_hello", "hello_timer", "last_ping", "last_activity",
        # the user's storage (2.4, 7.3)
        "table", "rotation_pending", "reset_pending", "paused",
        # direct delivery (8.5): queued behind the hello reply, then outstanding
        "queued", "direct",
        # the drain and the acks of stored messages (8.1-8.4)
        "batch", "batch_phase", "phase", "cursor", "draining", "recheck",
        "sent_in_drain", "drain_generation",
        # stats for the close summary (2.16)
        "registers", "_counts",
        # Megaphone broadcasts (2.11, broadcasts.py): the ids this client is
        # subscribed to, a frozenset shared with every client holding the
        # same one (one reference per client), None for none
        "broadcast_subs",
    )

    def __init__(self, ctx, transport, connected_at=None, user_agent="", host=""):
        self.ctx = ctx
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
        self.broadcast_subs = None
        self.said_hello = False
        self.hello_timer = None
        settings = ctx.settings
        if settings.hello_timeout > 0:
            self.hello_timer = ctx.timers.call_later(settings.hello_timeout, self._hello_timer_fired)

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

    def _metric(self, name, count=1, tags=None):
        """A connection metric, with the user-agent and host tags (10)."""
        base = connection_tags(self.user_agent, self.host)
        self.ctx.metrics.increment(name, count, {**base, **tags} if tags else base)

    def _send(self, text):
        if self.state < CLOSING:
            self.transport.send(text)

    def _send_many(self, texts):
        if texts and self.state < CLOSING:
            self.transport.send_many(texts)

    def close(self, row):
        """Enter CLOSING: leave the registry at once, send the close frame
        of ``row`` (a ``Close`` row, 2.14)."""
        if self.state >= CLOSING:
            return
        self.state = CLOSING
        self.drain_generation += 1
        self.ctx.registry.release(self)
        self.transport.close(row.code, row.reason)

    def terminate(self):
        """DELETE /notif: superseded by a newer connection elsewhere."""
        self.close(Close.SUPERSEDED)

    # -- client frames (2.2) ---------------------------------------------------
    def on_text(self, text):
        if self.state >= CLOSING:
            return
        if self.paused is not None:
            self.paused.wait()
        self.last_activity = time.monotonic()
        try:
            message = protocol.parse_client_frame(text, self.state != AWAITING_HELLO,
                                                  self.ctx.broadcasts is not None)
        except protocol.MessageViolation as violation:
            log.debug("message violation: %s", violation.row.reason)
            self.close(violation.row)
            return
        handler = self._HANDLERS[type(message)]
        handler(self, message)

    # -- hello (2.4) -------------------------------------------------------------
    def _on_hello(self, hello):
        if self.state != AWAITING_HELLO:
            self._send(protocol.hello_error(401, "duplicate hello"))
            self.close(Close.DUPLICATE_HELLO)
            return
        self.state = HELLO_IN_PROGRESS
        self.said_hello = True
        self._cancel_hello_timer()
        if not hello.use_webpush:
            self._send(protocol.hello_error(401, "Simplepush not supported"))
            self.close(Close.SIMPLEPUSH)
            return
        ctx = self.ctx
        # The hello's storage work, its wait for a storage turn included, is
        # bounded: in a connect storm a hello waits its turn instead of
        # racing into timeouts, and past the deadline it is an overload.
        deadline = gevent.Timeout(ctx.settings.hello_storage_timeout or None)
        deadline.start()
        try:
            written, resumed, old = self._write_record(hello.uaid)
        except ThroughputError:
            self._hello_overloaded()
            return
        except gevent.Timeout as exc:
            if exc is not deadline:
                raise
            log.info("hello storage past its deadline")
            self._hello_overloaded(wait=False)
            return
        except StorageUnavailable as exc:
            log.info("hello storage unavailable: %s", exc)
            self._hello_overloaded(wait=False)
            return
        except StorageError as exc:
            log.warning("hello storage error: %s", exc)
            self._send(protocol.hello_error(503, "error"))
            self.close(Close.HELLO_STORAGE_ERROR)
            return
        finally:
            deadline.close()
        if self.closing:
            return
        if not written:
            self._already_connected()
            return
        old_node, old_connected_at = old.get("node_id"), old.get("connected_at")
        if old_node and old_node != ctx.node_id and old_connected_at is not None:
            gevent.spawn(ctx.peers.evict, old_node, self.uaid, old_connected_at)
        self.state = READY
        broadcasts = ctx.broadcasts
        reply = None
        if broadcasts is not None and hello.broadcasts:
            # computed at the reply, after the storage work: a change applied
            # meanwhile is in this delta (the fan-out skipped this session)
            reply = broadcasts.reply(hello.broadcasts, self)
            self.broadcast_subs = broadcasts.subscribe(None, hello.broadcasts)
        self._send(protocol.hello_reply(self.uaid, ctx.settings.auto_ping_interval,
                                        ctx.settings.env, reply))
        self._metric("ua.command.hello")
        queued, self.queued = self.queued, None
        for notification in queued or ():
            self._send_direct_frame(notification)
        self._schedule_keepalive()
        if resumed:
            # A uaid minted by this hello has no stored messages (no endpoint
            # for it exists yet), so its check would be two empty Queries.
            self.start_check()

    def _already_connected(self):
        self._send(protocol.hello_error(500, "already_connected"))
        self.close(Close.ALREADY_CONNECTED)

    def _hello_overloaded(self, wait=True):
        """503 ``error - overloaded`` and close (2.4.2): after 4-8 s for a
        throughput error; at once when the hello's deadline has passed (the
        client has waited already)."""
        if wait:
            gevent.sleep(random.randint(*HELLO_OVERLOAD_WAIT))
        self.ctx.registry.release(self)
        self._send(protocol.hello_error(503, "error - overloaded"))
        self.close(Close.HELLO_OVERLOADED)

    # -- register / unregister (2.5, 2.6) ----------------------------------------
    def _on_register(self, register):
        if register.error is not None:
            self._send(register.error)
            return
        chid = register.chid
        try:
            endpoint = self.ctx.endpoint_for(self.uaid, chid, register.key)
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
        for key, notification in [(key, n) for key, n in self.direct.items() if key[0] == chid]:
            if notification is not ACKED:
                self._forget_direct(key, notification)
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

    def _on_nack(self, nack):
        if nack.version is None:
            return
        # The code is the client's: only the codes of 2.9 get a tag of their
        # own, anything else counts as 0 (a bounded set of metric names).
        code = nack.code if nack.code in NACK_CODES else 0
        self._metric("ua.command.nack", tags={"code": code})
        self.ctx.tracker.nacked(self, nack.version, nack.code)  # connnode/lifecycle.py
        self._count("nacks")

    def _on_ping(self, _ping):
        now = time.monotonic()
        if self.last_ping is not None and now - self.last_ping < self.ctx.settings.min_ping_interval:
            self.close(Close.TOO_MANY_PINGS)
            return
        self.last_ping = now
        self._send(protocol.PING_REPLY)

    def _on_broadcast_subscribe(self, message):
        broadcasts = self.ctx.broadcasts
        if broadcasts is None or not message.broadcasts:
            return  # broadcasts are off (no megaphone_api_url), or nothing named (2.11)
        reply = broadcasts.reply(message.broadcasts, self)
        self.broadcast_subs = broadcasts.subscribe(self.broadcast_subs, message.broadcasts)
        if reply:
            self._send(protocol.broadcast_frame(reply))

    def send_broadcast(self, frame):
        """A server-side broadcast change (``Broadcasts.fan_out``): never
        waits for a client that does not read, so the fan-out never stalls."""
        if self.state < CLOSING:
            self.transport.send_nowait(frame)

    _HANDLERS = {
        protocol.Hello: _on_hello,
        protocol.Register: _on_register,
        protocol.Unregister: _on_unregister,
        protocol.Ack: _on_ack,
        protocol.Nack: _on_nack,
        protocol.Ping: _on_ping,
        protocol.BroadcastSubscribe: _on_broadcast_subscribe,
    }

    # -- timers (2.12) -----------------------------------------------------------
    def _hello_timer_fired(self):
        self.hello_timer = None
        if self.state == AWAITING_HELLO:
            self.close(Close.NO_HELLO)

    def _cancel_hello_timer(self):
        """Memory: the timer heap would otherwise keep this session (through
        the callback) referenced until the hello timeout passes."""
        timer, self.hello_timer = self.hello_timer, None
        self.ctx.timers.cancel(timer)

    def _schedule_keepalive(self):
        settings = self.ctx.settings
        intervals = [value for value in (settings.auto_ping_interval, settings.idle_timeout) if value > 0]
        if intervals:
            self.ctx.timers.call_later(min(intervals), self._keepalive)

    def _keepalive(self):
        """Idle timer and auto-ping, one timer entry per connection."""
        if self.state >= CLOSING:
            return
        settings = self.ctx.settings
        if settings.idle_timeout > 0 and time.monotonic() - self.last_activity >= settings.idle_timeout:
            self.close(Close.IDLE)
            return
        if settings.auto_ping_interval > 0:
            if self.state != READY or self.ctx.registry.get(self.uaid) is not self:
                self.close(Close.NOT_HOLDER)
                return
            self.transport.ping()
            self.ctx.timers.call_later(settings.auto_ping_timeout, self._pong_deadline)
        self._schedule_keepalive()

    def _pong_deadline(self):
        if self.state < CLOSING and not self.transport.pong_received_since_ping:
            self.state = CLOSING
            self.ctx.registry.release(self)
            self.transport.abort()

    # -- the end (2.16) -----------------------------------------------------------
    def on_closed(self):
        """The connection has ended (either side): save what must survive."""
        ctx = self.ctx
        self.state = CLOSING
        self.drain_generation += 1
        ctx.registry.release(self)
        self._cancel_hello_timer()
        if self.paused is not None:
            self.paused.set()
        if self.said_hello:
            lifespan = max(0.0, time.time() - self.connected_at / 1000)
            ctx.metrics.timing("ua.connection.lifespan", lifespan,
                                connection_tags(self.user_agent, self.host))
        now = time.time()
        # Durable direct messages (stored_in set) are in storage already.
        saving = [n for n in self.direct.values()
                  if n is not ACKED and n.stored_in is None and n.ttl and not n.expired(now)]
        self.direct = NO_ITEMS
        self.batch = NO_ITEMS
        if saving and self.table is not None:
            self._count("direct_saved", len(saving))
            ctx.pending.spawn(self.uaid, self._save_and_notify, saving, self.table)
        ctx.ended(self)

    def _save_and_notify(self, notifications, table):
        saved = 0
        for notification in notifications:
            try:
                table.store_message(notification)
                saved += 1
                if notification.tracked:
                    self.ctx.tracker.message("saved", notification, table=table.name)
            except StorageError as exc:
                log.warning("could not save a direct message at close: %s", exc)
        if not saved:
            return
        try:
            record = self.ctx.storage.router.get_uaid(self.uaid)
        except StorageError as exc:
            log.warning("router lookup after close failed: %s", exc)
            return
        if record and record.get("node_id") and record.get("connected_at") != self.connected_at:
            self.ctx.peers.notify(record["node_id"], self.uaid)
