"""In-memory stand-ins for what a Session sees of its process.

``make_context`` builds a ``SessionContext`` (``connnode/connection/context.py``)
from the real pure-gevent parts (``Registry``, ``Timers``, ``PendingWrites``,
``AckedDeletes``) and these fakes, so the Session can be driven frame by
frame without dynalite or a network:

* ``FakeStorage``: the surface a session uses of ``connnode.db.storage.Storage``
  (``router``, ``message_table``, ``current_table``, ``month_usable``,
  ``rotation.current``, ``crypto``), keeping records and items in dicts. Every
  operation is recorded in ``storage.calls``, yields once (as a network call
  would), and can be made to fail: ``storage.fail("register_user",
  ThroughputError("..."))``.
* ``FakeTransport``, ``RecordingMetrics``, ``RecordingPeers``, ``RecordingEnded``.

Results have the shapes of ``connnode/db/router.py`` and ``connnode/db/message.py``;
the pure result builders of ``MessageTable`` are reused, the DynamoDB calls
are replaced by dict operations.
"""
import time

import gevent
import simplejson as json

from connnode.connection.context import SessionContext
from connnode.connection.deletes import AckedDeletes
from connnode.connection.pending import PendingWrites
from connnode.connection.registry import Registry
from connnode.connection.timers import Timers
from connnode.crypto import TokenCrypto
from connnode.db.message import FETCH_LIMIT, MessageTable, _timestamp_bound
from connnode.db.rotation import TableRotation
from connnode.db.router import fresh_last_connect
from connnode.notification import CHANNEL_ROW_KEY
from tests.conftest import TEST_CRYPTO_KEY

NODE_ID = "http://127.0.0.1:8101"


# -- the process around the session ----------------------------------------------

class FakeTransport:
    """The transport surface of a Session: frames sent (parsed), close code."""

    def __init__(self):
        self.sent = []
        self.writes = 0  # send_many calls (a stored batch is one write)
        self.close_code = None
        self.close_reason = None
        self.busy = False
        self.pings = 0
        self.pong_received_since_ping = True
        self.aborted = False

    @property
    def closing(self):
        return self.close_code is not None or self.aborted

    def send(self, text):
        if self.closing:
            return False
        self.sent.append(json.loads(text))
        return True

    send_nowait = send  # the broadcast fan-out's send (transport.py)

    def send_many(self, texts):
        """A stored batch in one write: recorded as its frames, and as one write."""
        self.writes += 1
        return all([self.send(text) for text in texts])

    def ping(self):
        self.pings += 1
        return True

    def close(self, code, reason=""):
        if self.close_code is None:
            self.close_code, self.close_reason = code, reason

    def abort(self):
        self.aborted = True

    def frames(self, message_type=None):
        return [f for f in self.sent if message_type is None or f.get("messageType") == message_type]


class RecordingMetrics:
    def __init__(self):
        self.calls = []

    def increment(self, name, count=1, tags=None):
        self.calls.append((name, count, tags))

    def timing(self, name, seconds, tags=None):
        self.calls.append((name, seconds, tags))

    def names(self):
        return [name for name, _, _ in self.calls]


class RecordingPeers:
    """``Peers`` without a network: the calls to other nodes, in order."""

    def __init__(self):
        self.calls = []

    def evict(self, node_id, uaid, connected_at):
        self.calls.append(("evict", node_id, uaid, connected_at))

    def notify(self, node_id, uaid):
        self.calls.append(("notify", node_id, uaid))


class RecordingEnded:
    """The ``ended(session)`` callback: every session it was called with."""

    def __init__(self):
        self.sessions = []

    def __call__(self, session):
        self.sessions.append(session)


# -- storage ---------------------------------------------------------------------

class _Operations:
    """Shared by the router and the tables: record a call, yield once, and
    raise the failure chosen for that operation name, if any."""

    def __init__(self):
        self.calls = []      # (operation, args)
        self._failures = {}  # operation -> [exception, remaining times or None]

    def fail(self, operation, exception, times=None):
        """Make ``operation`` raise ``exception`` (``times`` calls, or every call)."""
        self._failures[operation] = [exception, times]

    def __call__(self, operation, *args):
        self.calls.append((operation, args))
        gevent.sleep(0)
        failure = self._failures.get(operation)
        if failure is not None:
            exception, times = failure
            if times is not None:
                failure[1] -= 1
                if failure[1] <= 0:
                    del self._failures[operation]
            raise exception


class FakeRouter:
    """The router table: uaid -> record dict (``uaid`` in clear)."""

    def __init__(self, operations, max_ttl):
        self._op = operations
        self.max_ttl = max_ttl
        self.records = {}

    def get_uaid(self, uaid):
        self._op("get_uaid", uaid)
        record = self.records.get(uaid)
        return dict(record) if record is not None else None

    def register_user(self, record):
        """6.4: (True, old attributes or {}) or (False, {}) when the condition
        ``(no router_type OR same router_type) AND (no node_id OR
        connected_at < new connected_at)`` fails."""
        self._op("register_user", dict(record))
        if "router_type" not in record or "connected_at" not in record:
            raise ValueError("register_user needs router_type and connected_at")
        uaid = record["uaid"]
        old = self.records.get(uaid, {})
        same_type = "router_type" not in old or old["router_type"] == record["router_type"]
        older = "node_id" not in old or ("connected_at" in old
                                         and old["connected_at"] < record["connected_at"])
        if not (same_type and older):
            return False, {}
        self.records[uaid] = {**old, **record}
        return True, dict(old)

    def resume_user(self, uaid, node_id, connected_at, expiry):
        """``RouterTable.resume_user``: the write needs a ``webpush`` record
        with no node_id or an older connected_at; refused, the record as it
        is now (a copy) or None, and success when it names this very
        connection (a retried write)."""
        self._op("resume_user", uaid, node_id, connected_at)
        old = self.records.get(uaid)
        if old is None or old.get("router_type") != "webpush" or not (
                "node_id" not in old or ("connected_at" in old and old["connected_at"] < connected_at)):
            if old is None:
                return False, None
            ours = old.get("node_id") == node_id and old.get("connected_at") == connected_at
            return ours, dict(old)
        self.records[uaid] = dict(old, node_id=node_id, connected_at=connected_at, expiry=expiry)
        return True, dict(old)

    def refresh_last_connect(self, uaid, node_id, connected_at, now=None):
        self._op("refresh_last_connect", uaid)
        record = self.records.get(uaid)
        if record is None or record.get("node_id") != node_id or record.get("connected_at") != connected_at:
            return False
        record["last_connect"] = fresh_last_connect(now)
        return True

    def drop_user(self, uaid):
        self._op("drop_user", uaid)
        return self.records.pop(uaid, None) is not None

    def update_message_month(self, uaid, table_name, now=None):
        self._op("update_message_month", uaid, table_name)
        now = time.time() if now is None else now
        record = self.records.setdefault(uaid, {"uaid": uaid})  # UpdateItem creates the item
        record.update(current_month=table_name, last_connect=fresh_last_connect(now),
                      expiry=int(now) + self.max_ttl)


class FakeMessageTable:
    """One month's message table: uaid -> {sort key: plain item attributes}.
    The channel row has the sort key ``" "``, like the real one."""

    def __init__(self, operations, name, max_ttl):
        self._op = operations
        self.name = name
        self.max_ttl = max_ttl
        self.partitions = {}

    def __repr__(self):
        return f"<FakeMessageTable {self.name}>"

    # -- inspection by tests --------------------------------------------------
    def rows(self, uaid):
        """The partition's items in sort-key order (copies)."""
        partition = self.partitions.get(uaid, {})
        return [dict(partition[key]) for key in sorted(partition)]

    def messages(self, uaid):
        """The sort keys of the stored messages (no channel row), in order."""
        return [row["chidmessageid"] for row in self.rows(uaid)
                if row["chidmessageid"] != CHANNEL_ROW_KEY]

    def channel_row(self, uaid):
        row = self.partitions.get(uaid, {}).get(CHANNEL_ROW_KEY)
        return dict(row) if row is not None else None

    def _upsert_channel_row(self, uaid, now=None):
        now = time.time() if now is None else now
        row = self.partitions.setdefault(uaid, {}).setdefault(
            CHANNEL_ROW_KEY, {"chidmessageid": CHANNEL_ROW_KEY})
        row["expiry"] = int(now) + self.max_ttl
        return row

    # -- channels -------------------------------------------------------------
    def register_channel(self, uaid, chid, now=None):
        self._op("register_channel", uaid, chid)
        self._upsert_channel_row(uaid, now).setdefault("chids", set()).add(chid)

    def unregister_channel(self, uaid, chid):
        self._op("unregister_channel", uaid, chid)
        row = self.partitions.setdefault(uaid, {}).setdefault(
            CHANNEL_ROW_KEY, {"chidmessageid": CHANNEL_ROW_KEY})
        chids = row.get("chids", set())
        was_there = chid in chids
        chids.discard(chid)
        if not chids:
            row.pop("chids", None)  # DynamoDB drops an emptied set
        return was_there

    def all_channels(self, uaid):
        """(channel row exists, set of chids)."""
        self._op("all_channels", uaid)
        row = self.channel_row(uaid)
        return (False, set()) if row is None else (True, set(row.get("chids", ())))

    def save_channels(self, uaid, chids, now=None):
        self._op("save_channels", uaid, set(chids))
        if not chids:
            return
        now = time.time() if now is None else now
        self.partitions.setdefault(uaid, {})[CHANNEL_ROW_KEY] = {
            "chidmessageid": CHANNEL_ROW_KEY, "chids": set(chids), "expiry": int(now) + self.max_ttl}

    # -- messages -------------------------------------------------------------
    def store_message(self, notification, now=None):
        self._op("store_message", notification)
        now = time.time() if now is None else now
        item = notification.item(now, self.max_ttl)
        partition = self.partitions.setdefault(notification.uaid, {})
        # The real table moves a taken timestamped key on by 1 us; tests here
        # never collide, so a collision is a bug in the test: say so.
        assert not (notification.is_timestamped and item["chidmessageid"] in partition), \
            "timestamped sort key collision (not modelled by the fake)"
        partition[item["chidmessageid"]] = item

    def delete_message(self, uaid, sort_key, updateid=None):
        """False (nothing deleted) when ``updateid`` is given and does not match."""
        self._op("delete_message", uaid, sort_key, updateid)
        partition = self.partitions.get(uaid, {})
        item = partition.get(sort_key)
        if updateid is not None and (item is None or item.get("updateid") != updateid):
            return False
        partition.pop(sort_key, None)
        return True

    def delete_messages(self, keys):
        """The batched unconditional delete of ``AckedDeletes``; nothing unprocessed."""
        self._op("delete_messages", list(keys))
        for uaid, sort_key in keys:
            self.partitions.get(uaid, {}).pop(sort_key, None)
        return []

    def fetch_topic_phase(self, uaid):
        self._op("fetch_topic_phase", uaid)
        rows = self.rows(uaid)
        page = rows[:FETCH_LIMIT]
        cursor, messages = MessageTable._topic_result(
            uaid, (row for row in page if row["chidmessageid"] < "02"))
        complete = len(rows) < FETCH_LIMIT
        later = [row for row in page if row["chidmessageid"] > "01;"] if complete else None
        return cursor, messages, later

    def timestamp_phase(self, uaid, later, cursor=None):
        self._op("timestamp_phase", uaid, cursor)
        return MessageTable.timestamp_phase(uaid, later, cursor)

    def fetch_timestamp_messages(self, uaid, cursor=None):
        self._op("fetch_timestamp_messages", uaid, cursor)
        bound = _timestamp_bound(cursor)
        page = [row for row in self.rows(uaid) if row["chidmessageid"] > bound][:FETCH_LIMIT]
        return MessageTable._timestamp_result(uaid, page)

    def update_last_message_read(self, uaid, cursor, now=None):
        self._op("update_last_message_read", uaid, cursor)
        self._upsert_channel_row(uaid, now)["current_timestamp"] = int(cursor)


class FakeStorage:
    """``Storage``'s session-facing surface, in memory. ``calls`` records every
    operation (router and tables) as (name, args); ``fail`` injects errors."""

    def __init__(self, message_prefix="message", max_ttl=2592000):
        self._operations = _Operations()
        self.max_ttl = max_ttl
        self.crypto = TokenCrypto([TEST_CRYPTO_KEY])
        self.router = FakeRouter(self._operations, max_ttl)
        self.rotation = TableRotation(message_prefix, lambda name: None)
        self.rotation.check()  # current = this month, valid = {last month, this month}
        self._tables = {}

    @property
    def calls(self):
        return self._operations.calls

    def called(self, operation):
        """The args of every call of ``operation``, in order."""
        return [args for name, args in self.calls if name == operation]

    def fail(self, operation, exception, times=None):
        self._operations.fail(operation, exception, times)

    def message_table(self, name):
        table = self._tables.get(name)
        if table is None:
            table = self._tables[name] = FakeMessageTable(self._operations, name, self.max_ttl)
        return table

    @property
    def current_table(self):
        return self.message_table(self.rotation.current)

    def month_usable(self, record):
        return self.rotation.is_valid(record.get("current_month"))


# -- the context -----------------------------------------------------------------

def make_context(settings, storage=None, node_id=NODE_ID):
    """A SessionContext of fakes and the real registry, timers and barrier.
    Call ``stop_context`` when done (it ends the timer greenlet)."""
    storage = storage or FakeStorage(max_ttl=settings.max_ttl)
    pending = PendingWrites()
    return SessionContext(settings, storage, RecordingMetrics(), Registry(), Timers(), pending,
                          AckedDeletes(storage, pending), node_id, RecordingPeers(),
                          RecordingEnded())


def stop_context(ctx):
    runner = getattr(ctx.timers, "_runner", None)
    if runner is not None:
        runner.kill(block=False)
