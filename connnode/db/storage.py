"""The storage facade a process builds once: the boto3 client, the router
table, the monthly message tables and their rotation, the preflight check
(PROTOCOL.md 6.5, 6.6, 7) and the health check (4.11).
"""
import logging
import secrets
import time

from connnode.crypto import TokenCrypto
from connnode.db.broadcasts import PREFLIGHT_ID, BroadcastTable, broadcast_table_definition
from connnode.db.dynamo import (Dynamo, StorageError, make_client, message_table_definition,
                                router_table_definition)
from connnode.db.message import MessageTable
from connnode.db.rotation import TableRotation
from connnode.db.router import RouterTable
from connnode.notification import Notification

log = logging.getLogger(__name__)

HEALTHY_STATUSES = ("CREATING", "UPDATING", "ACTIVE")


class Storage:
    def __init__(self, settings, dynamo=None, crypto=None, own_greenlet=False, call_timeout=0.0):
        """``own_greenlet``, ``call_timeout``: see :class:`Dynamo` (the
        connection node sets the first, the endpoint node the second)."""
        self.settings = settings
        self.dynamo = dynamo or Dynamo(make_client(settings), own_greenlet=own_greenlet,
                                       call_timeout=call_timeout,
                                       concurrency=settings.ddb_max_pool_connections,
                                       lean=settings.ddb_lean_calls,
                                       wire=settings.wire_http_calls)
        self._health_dynamo = dynamo  # an injected double answers health too
        self.crypto = crypto or TokenCrypto(settings.crypto_keys)
        self.router = RouterTable(self.dynamo, settings.router_tablename,
                                  settings.key_hash, settings.max_ttl)
        self.rotation = TableRotation(settings.message_tablename, self._ensure_message_table)
        self.broadcasts = BroadcastTable(self.dynamo, settings.broadcast_tablename)
        self._tables = {}

    def message_table(self, name):
        table = self._tables.get(name)
        if table is None:
            table = self._tables[name] = MessageTable(
                self.dynamo, name, self.settings.key_hash, self.settings.max_ttl, self.crypto)
        return table

    @property
    def current_table(self):
        return self.message_table(self.rotation.current)

    def _ensure_message_table(self, name):
        self.dynamo.ensure_table(name, message_table_definition(
            self.settings.message_read_throughput, self.settings.message_write_throughput))

    def create_tables(self, now=None):
        """Router table; broadcasts table; last, current and (on a month's
        last day) next month's tables."""
        self.dynamo.ensure_table(self.settings.router_tablename, router_table_definition(
            self.settings.router_read_throughput, self.settings.router_write_throughput))
        self.dynamo.ensure_table(self.settings.broadcast_tablename, broadcast_table_definition())
        self.rotation.check(now)

    def wait_ready(self, timeout=60.0, now=None):
        """``create_tables``, retried while DynamoDB is not reachable yet (a
        node started beside the embedded dynalite may come up first)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.create_tables(now)
            except StorageError as exc:
                if time.monotonic() >= deadline:
                    raise
                log.info("DynamoDB not ready (%s); retrying", exc)
                time.sleep(0.5)

    def preflight(self):
        """Exercise every kind of write once with a throw-away uaid (6.6);
        raises StorageError on the first failure."""
        for name in (self.settings.router_tablename, self.rotation.current,
                     self.settings.broadcast_tablename):
            if self.dynamo.table_status(name) != "ACTIVE":
                raise StorageError(f"table {name} is not ACTIVE")
        uaid = "deadbeef00000000deadbeef" + secrets.token_hex(4)
        chid = "deadbeef-0000-4000-8000-00000000beef"
        now = int(time.time())
        skt = int(time.time() * 1_000_000)
        message = Notification(uaid, chid, self.crypto.message_id(uaid, chid, sortkey_timestamp=skt),
                               ttl=60, timestamp=now, sortkey_timestamp=skt)
        table = self.current_table
        table.store_message(message)
        table.delete_message(uaid, message.sort_key)
        record = {"uaid": uaid, "node_id": "mynode:2020", "connected_at": 0,
                  "router_type": "webpush"}
        ok, _ = self.router.register_user(record)
        read = self.router.get_uaid(uaid)
        if not ok or not read or read.get("node_id") != "mynode:2020":
            raise StorageError("preflight: router record did not read back")
        self.router.clear_node(read)
        self.router.drop_user(uaid)
        self.broadcasts.set(PREFLIGHT_ID, "preflight")
        self.broadcasts.all()
        self.broadcasts.delete(PREFLIGHT_ID)

    def health(self):
        """(healthy, {"router": {...}, "storage": {...}}) for /health (4.11)."""
        if self._health_dynamo is None:
            # A client of its own with one quick attempt: /health answers
            # within about 2 s when DynamoDB hangs, not after the data path's retries.
            self._health_dynamo = Dynamo(make_client(
                self.settings, max_attempts=1, connect_timeout=1, read_timeout=1, pool=2))
        report = {}
        for key, name in (("router", self.settings.router_tablename),
                          ("storage", self.rotation.current)):
            try:
                status = self._health_dynamo.table_status(name)
                if status in HEALTHY_STATUSES:
                    report[key] = {"status": "OK"}
                else:
                    report[key] = {"status": "NOT OK", "error": f"table {name} {status or 'missing'}"}
            except StorageError as exc:
                report[key] = {"status": "NOT OK", "error": str(exc)[:200]}
        return all(entry["status"] == "OK" for entry in report.values()), report

    def user_and_channels(self, uaid):
        """``get_uaid(uaid)`` and ``all_channels(uaid)`` of the current month's
        table in one BatchGetItem (both reads consistent): the endpoint's two
        reads per message in one round trip (PROTOCOL.md 4.6 steps 9-11).

        Returns (record or None, chids or None). chids is None when they were
        not read: there is no record, or the record's ``current_month`` is not
        the current table (then the caller reads that table's row with
        ``all_channels``), or DynamoDB left a key unprocessed (throttling;
        the unprocessed router read is repeated as ``get_uaid``, which raises
        ``ThroughputError`` if it is throttled too).
        """
        router, table = self.router, self.current_table
        router_key, channel_key = router._key(uaid), table._channel_key(uaid)
        result = self.dynamo.call("batch_get_item", RequestItems={
            router.name: {"Keys": [router_key], "ConsistentRead": True},
            table.name: {"Keys": [channel_key], "ConsistentRead": True},
        })
        responses, unprocessed = result.get("Responses", {}), result.get("UnprocessedKeys") or {}
        if router.name in unprocessed:
            record = router.get_uaid(uaid)
        else:
            items = responses.get(router.name) or [None]
            record = router.record_from_item(uaid, items[0])
        if record is None or record.get("current_month") != table.name or table.name in unprocessed:
            return record, None
        rows = responses.get(table.name) or [None]
        return record, table.channels_from_item(rows[0])[1]

    def month_usable(self, record):
        """The record names a message table that is valid now (7.2)."""
        return self.rotation.is_valid(record.get("current_month"))
