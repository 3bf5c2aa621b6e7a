"""The storage sweeper: DynamoDB's TTL and old-table clean-up, emulated for the
embedded store.

Why it exists: on AWS, TTL on ``expiry`` (PROTOCOL.md 6.2, 6.3, 6.5) removes
expired items by itself. dynalite has no TTL, and nothing ever drops the old
monthly message tables (7.1), so a ``make run`` left running for months keeps
every expired message, channel row and router record on disk forever. One
pass of :class:`Sweeper` does what TTL and an operator would:

1. deletes every item whose numeric ``expiry`` lies in the past, in the router
   table and in every message table of our prefix (paginated Scan with
   ``expiry < :now``, keys only). Channel rows (sort key ``" "``) carry an
   ``expiry`` of their own (6.3: now + max_ttl at every channel write) and
   are removed like any other item: 6.3 says TTL on ``expiry`` "removes
   items eventually", with no exception for them, so that is what TTL does.
   Keys that are never written twice (timestamped ``02:`` messages, whose
   writes are conditional on the key being free, and read-only legacy
   messages) go in BatchWriteItem deletes of 25. Items that a writer may
   refresh in place (router records at hello, channel rows, topic messages)
   are deleted one by one with the condition ``expiry < :now``: a batch
   delete has no condition and could remove an item refreshed between the
   Scan and the delete; DynamoDB's TTL does not delete an item whose
   ``expiry`` was moved into the future either.
2. drops message tables (``<message_tablename>_YYYY_MM``) older than the valid
   set once they are empty, or once every item they can hold is past
   max_ttl. A table stays writable while it is valid, that is to the end of
   the month *after* its own (7.1 "last month's"; 7.3 moves users out of it
   only when they connect), so "past max_ttl" counts from that end, plus
   :data:`ROTATION_GRACE` for nodes whose rotation timer (7.2) has not yet
   moved on. Tables of the valid set (last, this and any later month) and
   names that do not match the pattern are never dropped.

Only one pass runs at a time across processes: a lease item in the router
table under the key :data:`LEASE_KEY`, written raw (never through H(uaid)).
A uaid is 32 hex digits and H(uaid) 64, so no user's key can be it; it has
no ``last_connect`` (so it is not in ``AccessIndex``) and no ``expiry`` (so
the sweep itself never deletes it). A pass that cannot take the lease does
nothing and says so; the lease is renewed while a long pass runs and released
at its end.
"""
import calendar
import logging
import os
import re
import secrets
import socket
import time

from connnode.db.dynamo import ConditionFailed, StorageError, attr_names
from connnode.db.rotation import shift_month
from connnode.notification import CHANNEL_ROW_KEY

log = logging.getLogger(__name__)

LEASE_KEY = "sweeper-lease"
LEASE_SECONDS = 300.0
BATCH_SIZE = 25
BATCH_ATTEMPTS = 10
SCAN_PAGE = 500
#: Seconds a table stays protected after it left the valid set: a node's
#: rotation timer runs every table_rotation_interval (60 s), and clocks differ.
ROTATION_GRACE = 86400
#: Error codes that mean "this table is gone or changing": skip it this pass.
TABLE_GONE = ("ResourceNotFoundException", "ResourceInUseException")


class LeaseLost(StorageError):
    """Another sweeper took the lease (ours expired during a pass)."""


def month_start(year, month):
    return calendar.timegm((year, month, 1, 0, 0, 0))


def month_of(seconds):
    moment = time.gmtime(seconds)
    return moment.tm_year, moment.tm_mon


def _number(value):
    return {"N": f"{value:.3f}" if isinstance(value, float) else str(value)}


class SweepResult:
    """What one pass did. ``taken``: the pass held the lease (else it did
    nothing). ``deleted``: items deleted per table. ``dropped``: tables dropped."""

    def __init__(self, owner):
        self.owner = owner
        self.taken = False
        self.lease_lost = False
        self.deleted = {}
        self.dropped = []
        self.seconds = 0.0

    @property
    def total_deleted(self):
        return sum(self.deleted.values())

    def as_dict(self):
        return {"taken": self.taken, "owner": self.owner, "lease_lost": self.lease_lost,
                "deleted": dict(self.deleted), "total_deleted": self.total_deleted,
                "dropped": list(self.dropped), "seconds": round(self.seconds, 3)}

    def __repr__(self):
        return f"<SweepResult {self.as_dict()}>"


class Sweeper:
    """One pass at a time, across processes: ``run_once()``."""

    def __init__(self, storage, lease_seconds=LEASE_SECONDS, owner=None, clock=time.time):
        self.dynamo = storage.dynamo
        self.settings = storage.settings
        self.rotation = storage.rotation
        self.router_table = storage.settings.router_tablename
        self.prefix = storage.settings.message_tablename
        self.pattern = re.compile(re.escape(self.prefix) + r"_(\d{4})_(\d{2})")
        self.lease_seconds = lease_seconds
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self.clock = clock
        self._lease_until = 0.0

    # -- one pass ------------------------------------------------------------
    def run_once(self, now=None):
        """Sweep once if the lease is free. ``now`` (seconds) decides what is
        expired; the lease always runs on the real clock."""
        started = time.monotonic()
        result = SweepResult(self.owner)
        if not self._take_lease():
            log.info("storage sweep skipped: another sweeper holds the lease",
                     extra={"fields": result.as_dict()})
            return result
        result.taken = True
        try:
            self._sweep(int(self.clock() if now is None else now), result)
        except LeaseLost:
            result.lease_lost = True
            log.warning("storage sweep stopped: the lease was taken over")
        finally:
            if not result.lease_lost:
                self._release_lease()
            result.seconds = time.monotonic() - started
        log.info("storage sweep", extra={"fields": result.as_dict()})
        return result

    def _sweep(self, now, result):
        deleted = self.delete_expired(self.router_table, ("uaid",), now)
        result.deleted[self.router_table] = deleted
        oldest_valid = self.oldest_valid_month(now)
        for name, month in self.message_tables():
            old = month < oldest_valid and not self.rotation.is_valid(name)
            try:
                if old and now >= self.retired_at(month) + self.settings.max_ttl:
                    if self._drop(name):  # every item it can hold is past max_ttl
                        result.dropped.append(name)
                    continue
                result.deleted[name] = self.delete_expired(name, ("uaid", "chidmessageid"), now)
                if old and self._is_empty(name) and self._drop(name):
                    result.dropped.append(name)
            except StorageError as exc:
                if isinstance(exc, LeaseLost) or exc.code not in TABLE_GONE:
                    raise
                log.info("storage sweep: table %s skipped (%s)", name, exc.code)

    # -- tables --------------------------------------------------------------
    def oldest_valid_month(self, now):
        """(year, month) of the oldest table that may still be valid for some
        node: last month as of ``ROTATION_GRACE`` seconds ago. A ``now`` in
        the future (tests) never shrinks the protected set."""
        return shift_month(*month_of(min(now, self.clock()) - ROTATION_GRACE), -1)

    @staticmethod
    def retired_at(month):
        """When the table of ``month`` stopped being valid for every node: the
        end of the month after its own, plus the grace."""
        return month_start(*shift_month(*month, 2)) + ROTATION_GRACE

    def message_tables(self):
        """[(name, (year, month))] of every table named ``<prefix>_YYYY_MM``, oldest first."""
        found = []
        start = None
        while True:
            kwargs = {"ExclusiveStartTableName": start} if start else {}
            page = self.dynamo.call("list_tables", Limit=100, **kwargs)
            for name in page.get("TableNames", []):
                match = self.pattern.fullmatch(name)
                if match and 1 <= int(match.group(2)) <= 12:
                    found.append((name, (int(match.group(1)), int(match.group(2)))))
            start = page.get("LastEvaluatedTableName")
            if not start:
                return sorted(found, key=lambda entry: entry[1])

    def _is_empty(self, name):
        page = self.dynamo.call("scan", TableName=name, Limit=1, ConsistentRead=True,
                                ProjectionExpression="#uaid",
                                ExpressionAttributeNames=attr_names("uaid"))
        return not page.get("Items") and not page.get("LastEvaluatedKey")

    def _drop(self, name):
        if self.rotation.is_valid(name) or not self.pattern.fullmatch(name):
            return False  # belt and braces: callers already checked
        self._keep_lease()
        self.dynamo.call("delete_table", TableName=name)
        log.info("storage sweep: dropped table %s", name)
        return True

    # -- items ---------------------------------------------------------------
    def delete_expired(self, table, key_names, now):
        """Delete the items of ``table`` whose ``expiry`` < ``now``; the count."""
        query = {"TableName": table, "FilterExpression": "#expiry < :now",
                 "ProjectionExpression": ", ".join(f"#{name}" for name in key_names),
                 "ExpressionAttributeNames": attr_names("expiry", *key_names),
                 "ExpressionAttributeValues": {":now": _number(now)}, "Limit": SCAN_PAGE}
        deleted = 0
        start = None
        while True:
            self._keep_lease()
            kwargs = {"ExclusiveStartKey": start} if start else {}
            page = self.dynamo.call("scan", **query, **kwargs)
            batch = []
            for key in page.get("Items", []):
                if self._never_rewritten(key):
                    batch.append(key)
                else:
                    deleted += self._delete_if_expired(table, key, now)
            for offset in range(0, len(batch), BATCH_SIZE):
                deleted += self._batch_delete(table, batch[offset:offset + BATCH_SIZE])
            start = page.get("LastEvaluatedKey")
            if not start:
                return deleted

    @staticmethod
    def _never_rewritten(key):
        """Timestamped messages (their key is written only while free) and
        legacy ones (never written): safe to delete without a condition."""
        sort_key = key.get("chidmessageid", {}).get("S")
        return (sort_key is not None and sort_key != CHANNEL_ROW_KEY
                and not sort_key.startswith("01:"))

    def _delete_if_expired(self, table, key, now):
        try:
            self.dynamo.call("delete_item", TableName=table, Key=key,
                             ConditionExpression="#expiry < :now",
                             ExpressionAttributeNames=attr_names("expiry"),
                             ExpressionAttributeValues={":now": _number(now)})
        except ConditionFailed:
            return 0  # refreshed (or deleted) since the Scan read it
        return 1

    def _batch_delete(self, table, keys):
        requests = [{"DeleteRequest": {"Key": key}} for key in keys]
        for attempt in range(BATCH_ATTEMPTS):
            result = self.dynamo.call("batch_write_item", RequestItems={table: requests})
            requests = result.get("UnprocessedItems", {}).get(table, [])
            if not requests:
                break
            time.sleep(min(0.05 * 2 ** attempt, 2.0))
        if requests:
            log.warning("storage sweep: %d deletes left unprocessed in %s", len(requests), table)
        return len(keys) - len(requests)

    # -- the lease -----------------------------------------------------------
    def _lease_names(self):
        return attr_names("uaid", "owner", "lease_until")

    def _take_lease(self):
        now = self.clock()
        until = now + self.lease_seconds
        try:
            self.dynamo.call(
                "put_item", TableName=self.router_table,
                Item={"uaid": {"S": LEASE_KEY}, "owner": {"S": self.owner},
                      "lease_until": _number(until), "taken_at": _number(now)},
                ConditionExpression="attribute_not_exists(#uaid) OR #lease_until < :now",
                ExpressionAttributeNames=attr_names("uaid", "lease_until"),
                ExpressionAttributeValues={":now": _number(now)})
        except ConditionFailed:
            return False
        self._lease_until = until
        return True

    def _keep_lease(self):
        """Renew the lease once half of it is used; LeaseLost if it is not ours."""
        now = self.clock()
        if now < self._lease_until - self.lease_seconds / 2:
            return
        until = now + self.lease_seconds
        try:
            self.dynamo.call(
                "update_item", TableName=self.router_table, Key={"uaid": {"S": LEASE_KEY}},
                UpdateExpression="SET #lease_until = :until",
                ConditionExpression="#owner = :owner",
                ExpressionAttributeNames=attr_names("owner", "lease_until"),
                ExpressionAttributeValues={":until": _number(until), ":owner": {"S": self.owner}})
        except ConditionFailed:
            raise LeaseLost("the sweeper lease is held by another process") from None
        self._lease_until = until

    def _release_lease(self):
        try:
            self.dynamo.call("delete_item", TableName=self.router_table,
                             Key={"uaid": {"S": LEASE_KEY}},
                             ConditionExpression="#owner = :owner",
                             ExpressionAttributeNames=attr_names("owner"),
                             ExpressionAttributeValues={":owner": {"S": self.owner}})
        except ConditionFailed:
            log.warning("storage sweep: the lease was no longer ours at release")
        except StorageError:
            log.exception("storage sweep: releasing the lease failed (it expires by itself)")
        self._lease_until = 0.0


def run_forever(sweeper, interval, retry=60.0, sleep=time.sleep):
    """A pass every ``interval`` seconds, forever; a failed pass is logged and
    tried again after ``min(interval, retry)`` seconds (the store may not be
    up yet)."""
    while True:
        try:
            sweeper.run_once()
            delay = interval
        except StorageError as exc:  # e.g. the store or its tables are not up yet
            log.warning("storage sweep failed: %s", exc)
            delay = min(interval, retry)
        except Exception:  # noqa: BLE001 - a failed pass must not stop the sweeper
            log.exception("storage sweep failed")
            delay = min(interval, retry)
        sleep(delay)
