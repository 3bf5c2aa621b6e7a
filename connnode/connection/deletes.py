"""Deletes of acked durable direct messages, batched (durable delivery).

With ``durable_direct`` on, the endpoint stores every message with TTL > 0
before its 201 and then hands it to the holder; the connection node deletes
the stored copy once the client acks it. Every ack of a direct message thus
costs one delete. ``AckedDeletes`` gathers the deletes that arrive within
``FLUSH_DELAY`` (50 ms), from every connection of the worker, and sends
them as BatchWriteItems of up to 25 keys per table: at 200 acks/s that is
~20 calls/s instead of 200 (a botocore call costs ~1 ms of CPU here;
gathering only one loop turn's deletes sent one call per ack).

An ack must never be lost: a batch is retried (unprocessed keys and storage
errors alike, with backoff) until every key is gone, and its greenlet is
registered under each uaid in the pending-write barrier, so a fetch of that
uaid (a drain, a reconnect's hello) waits for it and a graceful shutdown
waits for all of them. Only a crash loses a delete, and then the message is
delivered again: at-least-once, never zero times.

Only timestamped keys come here; a topic message can be replaced by a newer
one under the same key, so its delete keeps the ``updateid`` condition and
goes alone (``Drain._forget_direct``).
"""
import logging

import gevent

from connnode.connection.pending import RETRY_FIRST, RETRY_MAX
from connnode.db.dynamo import StorageError

log = logging.getLogger(__name__)

BATCH_SIZE = 25  # BatchWriteItem's limit
#: Seconds a delete waits for others to share its BatchWriteItem. The
#: barrier holds a reconnect of the uaid meanwhile, so nobody sees the
#: message again because of the wait.
FLUSH_DELAY = 0.05


class AckedDeletes:
    __slots__ = ("_storage", "_pending", "_queued", "_flush")

    def __init__(self, storage, pending):
        self._storage = storage
        self._pending = pending
        self._queued = {}   # table name -> [(uaid, sort key), ...] not yet sent
        self._flush = None  # the greenlet that will send what is queued

    def add(self, uaid, table_name, sort_key):
        """Queue one delete; the greenlet that will have done it when it ends."""
        self._queued.setdefault(table_name, []).append((uaid, sort_key))
        flush = self._flush
        if flush is None:
            # Every delete queued until it runs goes in the same batches.
            flush = self._flush = gevent.spawn_later(FLUSH_DELAY, self._send_queued)
        return self._pending.register(uaid, flush)

    def _send_queued(self):
        queued, self._queued, self._flush = self._queued, {}, None
        for table_name, keys in queued.items():
            table = self._storage.message_table(table_name)
            for offset in range(0, len(keys), BATCH_SIZE):
                _delete_until_done(table, keys[offset:offset + BATCH_SIZE])


def _delete_until_done(table, keys):
    delay = RETRY_FIRST
    while keys:
        try:
            keys = table.delete_messages(keys)
        except StorageError as exc:
            log.warning("retrying %d acked deletes after %s", len(keys), exc)
        if keys:
            gevent.sleep(delay)
            delay = min(delay * 2, RETRY_MAX)
