"""One monthly message table (PROTOCOL.md 6.3, 6.4): a uaid's channel row and
its stored messages.

Sort keys put the channel row (" ") first, topic messages ("01:") next and
timestamped ones ("02:") last, so the two drain phases are two range Queries.
"""
import time

from connnode.crypto import hash_uaid
from connnode.db.dynamo import ConditionFailed, StorageError, attr_names, from_item, to_attr, to_item
from connnode.notification import CHANNEL_ROW_KEY, Notification

FETCH_LIMIT = 10
# PROTOCOL.md 6.3 says 10 attempts; with the +1 step, N writers racing on one
# microsecond need N attempts for the last of them, and the foundation issue
# requires 20 such writers to all succeed. 32 keeps the loop bounded.
COLLISION_ATTEMPTS = 32


def _timestamp_bound(cursor):
    """Lower bound (exclusive) of the timestamp phase's keys (6.4): ``;``
    sorts after ``:`` and ``z`` after every hex digit."""
    return f"02:{cursor}:z" if cursor is not None else "01;"


class MessageTable:
    def __init__(self, dynamo, name, key_hash="", max_ttl=2592000, message_ids=None):
        self.dynamo = dynamo
        self.name = name
        self.key_hash = key_hash
        self.max_ttl = max_ttl
        self.message_ids = message_ids  # TokenCrypto, to renew ids on a key collision

    def __repr__(self):
        return f"<MessageTable {self.name}>"

    def _hashed(self, uaid):
        return {"S": hash_uaid(self.key_hash, uaid)}

    def _channel_key(self, uaid):
        return {"uaid": self._hashed(uaid), "chidmessageid": {"S": CHANNEL_ROW_KEY}}

    # -- channels ------------------------------------------------------------
    def register_channel(self, uaid, chid, now=None):
        now = time.time() if now is None else now
        self.dynamo.call(
            "update_item", TableName=self.name, Key=self._channel_key(uaid),
            UpdateExpression="ADD #chids :chids SET #expiry = :expiry",
            ExpressionAttributeNames=attr_names("chids", "expiry"),
            ExpressionAttributeValues={":chids": {"SS": [chid]},
                                       ":expiry": to_attr(int(now) + self.max_ttl)})

    def unregister_channel(self, uaid, chid):
        """True if the chid was registered."""
        result = self.dynamo.call(
            "update_item", TableName=self.name, Key=self._channel_key(uaid),
            UpdateExpression="DELETE #chids :chids",
            ExpressionAttributeNames=attr_names("chids"),
            ExpressionAttributeValues={":chids": {"SS": [chid]}},
            ReturnValues="UPDATED_OLD")
        old = from_item(result.get("Attributes", {}))
        return chid in old.get("chids", ())

    def all_channels(self, uaid):
        """(channel row exists, set of chids)."""
        result = self.dynamo.call("get_item", TableName=self.name, Key=self._channel_key(uaid),
                                  ConsistentRead=True)
        return self.channels_from_item(result.get("Item"))

    @staticmethod
    def channels_from_item(item):
        """``all_channels``'s answer for a channel row as read (None: no row)."""
        if item is None:
            return False, set()
        return True, from_item(item).get("chids", set())

    def save_channels(self, uaid, chids, now=None):
        if not chids:
            return
        now = time.time() if now is None else now
        item = {"uaid": hash_uaid(self.key_hash, uaid), "chidmessageid": CHANNEL_ROW_KEY,
                "chids": set(chids), "expiry": int(now) + self.max_ttl}
        self.dynamo.call("put_item", TableName=self.name, Item=to_item(item))

    # -- messages ------------------------------------------------------------
    def store_message(self, notification, now=None):
        """Put the message. A timestamped key that is taken moves one
        microsecond on (with a renewed message id) until it is free (6.3)."""
        now = time.time() if now is None else now
        if not notification.is_timestamped:
            self._put(notification, now)
            return
        for _ in range(COLLISION_ATTEMPTS):
            try:
                self._put(notification, now, ConditionExpression="attribute_not_exists(#sk)",
                          ExpressionAttributeNames={"#sk": "chidmessageid"})
                return
            except ConditionFailed:
                notification.sortkey_timestamp += 1
                if self.message_ids is None:
                    raise StorageError("sort key collision and no key to renew the message id")
                notification.version = self.message_ids.message_id(
                    notification.uaid, notification.chid,
                    sortkey_timestamp=notification.sortkey_timestamp)
        raise StorageError(f"no free sort key after {COLLISION_ATTEMPTS} attempts")

    def _put(self, notification, now, **kwargs):
        item = notification.item(now, self.max_ttl)
        item["uaid"] = hash_uaid(self.key_hash, notification.uaid)
        self.dynamo.call("put_item", TableName=self.name, Item=to_item(item), **kwargs)

    def delete_message(self, uaid, sort_key, updateid=None, old=False):
        """Delete one message; with ``updateid`` only if it was not replaced.
        Returns False when the condition failed (a newer message stays).
        With ``old``: the deleted item's attributes ({} for none) instead of True."""
        kwargs = {"ReturnValues": "ALL_OLD"} if old else {}
        if updateid is not None:
            kwargs.update({"ConditionExpression": "#updateid = :updateid",
                           "ExpressionAttributeNames": attr_names("updateid"),
                           "ExpressionAttributeValues": {":updateid": to_attr(updateid)}})
        try:
            result = self.dynamo.call(
                "delete_item", TableName=self.name,
                Key={"uaid": self._hashed(uaid), "chidmessageid": {"S": sort_key}}, **kwargs)
        except ConditionFailed:
            return False
        return from_item(result.get("Attributes") or {}) if old else True

    def delete_messages(self, keys):
        """Delete up to 25 messages, unconditionally, in one BatchWriteItem:
        ``keys`` are (uaid, sort_key) pairs. Returns the pairs DynamoDB left
        unprocessed (to be sent again). Only for keys no newer message can
        take over (timestamped keys): a batch delete has no condition."""
        by_key = {}  # (stored uaid, sort key) -> (uaid, sort key); a batch must not repeat an item
        for uaid, sort_key in keys:
            by_key.setdefault((hash_uaid(self.key_hash, uaid), sort_key), (uaid, sort_key))
        if not by_key:
            return []
        requests = [{"DeleteRequest": {"Key": {"uaid": {"S": stored}, "chidmessageid": {"S": sk}}}}
                    for stored, sk in by_key]
        result = self.dynamo.call("batch_write_item", RequestItems={self.name: requests})
        unprocessed = result.get("UnprocessedItems", {}).get(self.name, [])
        return [by_key[(key["uaid"]["S"], key["chidmessageid"]["S"])]
                for key in (request["DeleteRequest"]["Key"] for request in unprocessed)]

    def fetch_topic_phase(self, uaid):
        """The topic-phase fetch of a check: ``fetch_messages``' answer and,
        when the user's whole partition came back, what the timestamp phase
        would read next (else None): (cursor, topic messages, later items).

        One Query of the partition from its start (``uaid = :u``, Limit 10,
        consistent). Its keys below ``"02"`` are exactly what
        ``fetch_messages`` returns (they are a prefix of the partition); when
        the partition holds fewer than 10 items the Query saw all of it, and
        its keys above ``"01;"`` are the candidates of the timestamp phase,
        which ``timestamp_phase`` cuts at a cursor. A reconnect thus checks an
        empty or small mailbox with one Query instead of two.
        """
        result = self.dynamo.call(
            "query", TableName=self.name, KeyConditionExpression="#uaid = :u",
            ExpressionAttributeNames={"#uaid": "uaid"},
            ExpressionAttributeValues={":u": self._hashed(uaid)},
            ConsistentRead=True, Limit=FETCH_LIMIT)
        items = [from_item(item) for item in result.get("Items", [])]
        cursor, messages = self._topic_result(uaid, (i for i in items if i["chidmessageid"] < "02"))
        complete = len(items) < FETCH_LIMIT and "LastEvaluatedKey" not in result
        later = [item for item in items if item["chidmessageid"] > "01;"] if complete else None
        return cursor, messages, later

    def fetch_messages(self, uaid):
        """Topic phase: (current_timestamp of the channel row or None,
        topic and legacy messages in key order)."""
        return self._topic_result(uaid, self._query(uaid, "#uaid = :u AND #sk < :k", "02"))

    @staticmethod
    def _topic_result(uaid, items):
        cursor = None
        messages = []
        for item in items:
            if item["chidmessageid"] == CHANNEL_ROW_KEY:
                cursor = item.get("current_timestamp")
            else:
                messages.append(Notification.from_item(uaid, item))
        return cursor, messages

    def fetch_timestamp_messages(self, uaid, cursor=None):
        """Timestamp phase: (sortkey_timestamp of the last timestamped item or
        None, the items in key order)."""
        return self._timestamp_result(
            uaid, self._query(uaid, "#uaid = :u AND #sk > :k", _timestamp_bound(cursor)))

    @classmethod
    def timestamp_phase(cls, uaid, later, cursor=None):
        """``fetch_timestamp_messages``' answer, cut from the ``later`` items
        of a complete ``fetch_topic_phase`` (no Query)."""
        bound = _timestamp_bound(cursor)
        return cls._timestamp_result(uaid, [i for i in later if i["chidmessageid"] > bound])

    @staticmethod
    def _timestamp_result(uaid, items):
        messages = [Notification.from_item(uaid, item) for item in items]
        stamps = [message.sortkey_timestamp for message in messages if message.is_timestamped]
        return (stamps[-1] if stamps else None), messages

    def _query(self, uaid, condition, bound):
        result = self.dynamo.call(
            "query", TableName=self.name, KeyConditionExpression=condition,
            ExpressionAttributeNames={"#uaid": "uaid", "#sk": "chidmessageid"},
            ExpressionAttributeValues={":u": self._hashed(uaid), ":k": {"S": bound}},
            ConsistentRead=True, Limit=FETCH_LIMIT)
        return [from_item(item) for item in result.get("Items", [])]

    def update_last_message_read(self, uaid, cursor, now=None):
        now = time.time() if now is None else now
        self.dynamo.call(
            "update_item", TableName=self.name, Key=self._channel_key(uaid),
            UpdateExpression="SET #current_timestamp = :timestamp, #expiry = :expiry",
            ExpressionAttributeNames=attr_names("current_timestamp", "expiry"),
            ExpressionAttributeValues={":timestamp": to_attr(int(cursor)),
                                       ":expiry": to_attr(int(now) + self.max_ttl)})
