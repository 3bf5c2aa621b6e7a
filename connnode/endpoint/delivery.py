"""Hand one validated push message to its user (PROTOCOL.md section 5).

Plain blocking code: it runs in an endpoint worker's request greenlet, where
boto3 and urllib3 calls yield to gevent. The caller (the WebPush view) has
validated the request (4.6 steps 1-11) and holds the router record R, read
with a consistent read, and the Notification it built from the request.

    1. direct:  PUT {node_id}/push/{uaid}      200 -> done (Direct)
                404 / connection error -> clear_node(R); busy or other -> keep R
    2. TTL 0:   never stored                   -> done (Dropped)
    3. store:   store_message into R's current_month table
    4. re-read: get_uaid; gone -> 410/105; error or no node_id -> done (Stored)
    5. wake:    PUT {node_id}/notif/{uaid}     404 / connection error -> clear_node
                                               -> done (Stored)

**Durable direct delivery** (``durable_direct``, on by default; README
"Durable delivery"): a message with TTL > 0 is stored first (step 3), so
that the 201 survives a SIGKILLed connection worker, and then handed over
(step 1) with ``stored_in`` naming its table in the PUT /push body; the CN
deletes the stored copy when the client acks it. A direct hand-over that
failed goes on with steps 4 and 5, as a stored message does. TTL-0 messages
take the order above (nothing is stored). Storage calls per message handed
to a connected client: 2 instead of 1 here (BatchGetItem, PutItem), plus the
CN's share of a batched delete on ack.

`Delivery.deliver` returns the destination; errors that must be answered
are raised as `EndpointError` (503/201 throughput, 503/202 other storage
error, both from `connnode.endpoint.errors.storage_error`; 410/105 record
vanished). The Notification is updated in place: when the store moved a
timestamped sort key (collision rule, 6.3) its `version` is the message id
of the new key, which is what `Location` must carry.

"Router" here means only the router table (R, the user's record) and the
CN's private router API (`/push`, `/notif`).

Metrics counted here: `updates.client.host_gone` (connection error talking to
a CN, at step 1 or 5), `updates.client.deleted` (410/105) and
`notification.message_data` (count = length of `data`, tag
`destination:Direct|Stored`). The view counts the request-level ones.

Decisions where PROTOCOL.md is silent:

* `clear_node` is a best-effort hint: *any* storage error from it (not only
  throughput errors) is logged and ignored, and delivery goes on. A record
  without `connected_at` cannot satisfy clear_node's condition, so it is not
  tried.
* A TTL-0 message that found no connected client is answered 201 with the
  destination `Dropped`; nothing is handed over, so no `message_data`.
* `message_data` is counted for Stored only once the answer is a 201 (not
  for a stored message whose user vanished, 410/105).
"""
import logging

from connnode.db.dynamo import StorageError
from connnode.endpoint.errors import EndpointError, storage_error
from connnode.nodeclient import NodeConnectionError

log = logging.getLogger(__name__)

DIRECT = "Direct"
STORED = "Stored"
DROPPED = "Dropped"


class Delivery:
    """Delivers (or stores) notifications for one endpoint worker.

    ``storage`` provides ``router`` (``get_uaid``, ``clear_node``),
    ``message_table(name)`` (``store_message``) and ``crypto``
    (``message_id``); ``node_client`` provides ``put(url, json_body=None)``
    returning the HTTP status or raising ``NodeConnectionError``.
    """

    def __init__(self, storage, node_client, metrics, durable_direct=True):
        self.storage = storage
        self.node_client = node_client
        self.metrics = metrics
        self.durable_direct = durable_direct

    def deliver(self, notification, record):
        """Deliver or store ``notification`` for the user of ``record``;
        the destination (``DIRECT``, ``STORED`` or ``DROPPED``)."""
        node_id = record.get("node_id")
        stored_first = self.durable_direct and notification.ttl > 0
        if stored_first:
            notification.stored_in = self._store(notification, record)
        if node_id and self._push_direct(node_id, notification, record):
            self._count_data(notification, DIRECT)
            return DIRECT
        if notification.ttl == 0:
            return DROPPED
        if not stored_first:
            self._store(notification, record)
        self._wake(notification.uaid)
        self._count_data(notification, STORED)
        return STORED

    # -- steps ---------------------------------------------------------------
    def _push_direct(self, node_id, notification, record):
        """Step 1: True when the CN took the message (200)."""
        url = f"{node_id}/push/{notification.uaid}"
        try:
            status = self.node_client.put(url, notification.push_body())
        except NodeConnectionError as exc:
            log.info("direct delivery to %s failed: %s", node_id, exc)
            self.metrics.increment("updates.client.host_gone")
            self._clear_node(record)
            return False
        if status == 200:
            return True
        if status == 404:
            self._clear_node(record)
        return False

    def _store(self, notification, record):
        """Step 3, into the record's month table. A collision moves the sort
        key; the table then renews ``notification.version`` to match (6.3)."""
        table = self.storage.message_table(record["current_month"])
        try:
            table.store_message(notification)
        except StorageError as exc:
            raise storage_error(exc, "store_message", log) from None
        return table.name

    def _wake(self, uaid):
        """Steps 4 and 5: re-read the record and ask its node to check storage."""
        try:
            current = self.storage.router.get_uaid(uaid)
        except StorageError as exc:
            log.info("re-read after store failed (message stays stored): %s", exc)
            return
        if current is None:
            self.metrics.increment("updates.client.deleted")
            raise EndpointError(410, 105)
        node_id = current.get("node_id")
        if not node_id:
            return
        try:
            status = self.node_client.put(f"{node_id}/notif/{uaid}")
        except NodeConnectionError as exc:
            log.info("notification check at %s failed: %s", node_id, exc)
            self.metrics.increment("updates.client.host_gone")
            self._clear_node(current)
            return
        if status == 404:
            self._clear_node(current)

    def _clear_node(self, record):
        if "connected_at" not in record or "node_id" not in record:
            return
        try:
            self.storage.router.clear_node(record)
        except StorageError as exc:  # ThroughputError included: a hint, not a duty
            log.info("clear_node ignored: %s", exc)

    def _count_data(self, notification, destination):
        self.metrics.increment("notification.message_data", len(notification.data or ""),
                               tags={"destination": destination})
