"""The router table (PROTOCOL.md 6.2, 6.4): where each uaid is connected and
which message table it uses.

Records go in and come out as plain dicts with ``uaid`` in clear; H(uaid) is
applied here, exactly once, on the key attribute.
"""
import random
import time

from connnode.crypto import hash_uaid
from connnode.db.dynamo import ConditionFailed, attr_names, from_item, to_attr


def fresh_last_connect(now=None):
    """``YYYYMMHH`` + a random integer in [0, 10] as 4 digits (6.2)."""
    moment = time.gmtime(now)
    return int(time.strftime("%Y%m%H", moment) + f"{random.randint(0, 10):04d}")


def last_connect_values(year, month):
    """The 264 GSI keys of one month (24 hours x 11 random values)."""
    return [int(f"{year:04d}{month:02d}{hour:02d}{rand:04d}")
            for hour in range(24) for rand in range(11)]


class RouterTable:
    def __init__(self, dynamo, name, key_hash="", max_ttl=2592000):
        self.dynamo = dynamo
        self.name = name
        self.key_hash = key_hash
        self.max_ttl = max_ttl

    def _key(self, uaid):
        return {"uaid": {"S": hash_uaid(self.key_hash, uaid)}}

    def get_uaid(self, uaid):
        """The record (``uaid`` in clear) or None. A record holding nothing but
        its key is dropped and reported as not found."""
        result = self.dynamo.call("get_item", TableName=self.name, Key=self._key(uaid),
                                  ConsistentRead=True)
        return self.record_from_item(uaid, result.get("Item"))

    def record_from_item(self, uaid, item):
        """``get_uaid``'s answer for a router item as read (None: no item)."""
        if not item:
            return None
        if set(item) == {"uaid"}:
            self.drop_user(uaid)
            return None
        record = from_item(item)
        record["uaid"] = uaid
        return record

    def register_user(self, record):
        """Conditional write of a hello (6.4). Returns (True, old attributes or
        {}) or (False, {}) when a newer connection already owns the record.

        Idempotent: a retry (botocore's, after a read timeout) of a write
        whose first attempt succeeded fails its own condition (connected_at
        is now equal); the record then names this very connection (same
        node_id and connected_at), which is success. The old attributes of
        that first attempt are lost: (True, {})."""
        attributes = {name: value for name, value in record.items() if name != "uaid"}
        if "router_type" not in attributes or "connected_at" not in attributes:
            raise ValueError("register_user needs router_type and connected_at")
        names = attr_names(*attributes, "node_id")
        values = {f":{name}": to_attr(value) for name, value in attributes.items()}
        update = "SET " + ", ".join(f"#{name} = :{name}" for name in attributes)
        condition = ("(attribute_not_exists(#router_type) OR #router_type = :router_type) AND "
                     "(attribute_not_exists(#node_id) OR #connected_at < :connected_at)")
        try:
            result = self.dynamo.call(
                "update_item", TableName=self.name, Key=self._key(record["uaid"]),
                UpdateExpression=update, ConditionExpression=condition,
                ExpressionAttributeNames=names, ExpressionAttributeValues=values,
                ReturnValues="ALL_OLD")
        except ConditionFailed:
            current = self.get_uaid(record["uaid"])
            if current and current.get("node_id") == record.get("node_id") \
                    and current.get("connected_at") == record["connected_at"]:
                return True, {}
            return False, {}
        old = from_item(result.get("Attributes", {}))
        if old:
            old["uaid"] = record["uaid"]
        return True, old

    def resume_user(self, uaid, node_id, connected_at, expiry):
        """A resumed hello's write, without reading first: one conditional
        UpdateItem that moves ``uaid`` to this connection and returns the
        record as it was (see the README's Decisions, "a resumed hello
        writes first").

        Returns (True, the record before the write) or (False, the record
        as it is now, None when there is none). The write needs an existing
        ``webpush`` record whose connection is older than ``connected_at``;
        it touches nothing but ``node_id``, ``connected_at`` and ``expiry``.
        When it is refused the record is read back: one that names this very
        connection is the success of an earlier attempt of this write
        (botocore's retry after a read timeout), (True, that record)."""
        values = {":node_id": to_attr(node_id), ":connected_at": to_attr(connected_at),
                  ":expiry": to_attr(expiry), ":router_type": to_attr("webpush")}
        try:
            result = self.dynamo.call(
                "update_item", TableName=self.name, Key=self._key(uaid),
                UpdateExpression="SET #node_id = :node_id, #connected_at = :connected_at, "
                                 "#expiry = :expiry",
                ConditionExpression="#router_type = :router_type AND "
                                    "(attribute_not_exists(#node_id) OR #connected_at < :connected_at)",
                ExpressionAttributeNames=attr_names("node_id", "connected_at", "expiry",
                                                    "router_type"),
                ExpressionAttributeValues=values, ReturnValues="ALL_OLD")
        except ConditionFailed:
            current = self.get_uaid(uaid)
            ours = current is not None and current.get("node_id") == node_id \
                and current.get("connected_at") == connected_at
            return ours, current
        old = from_item(result.get("Attributes", {}))
        old["uaid"] = uaid
        return True, old

    def refresh_last_connect(self, uaid, node_id, connected_at, now=None):
        """SET a fresh ``last_connect`` (6.2) while the record still names
        this connection; False when it no longer does."""
        try:
            self.dynamo.call(
                "update_item", TableName=self.name, Key=self._key(uaid),
                UpdateExpression="SET #last_connect = :last_connect",
                ConditionExpression="#node_id = :node AND #connected_at = :conn",
                ExpressionAttributeNames=attr_names("last_connect", "node_id", "connected_at"),
                ExpressionAttributeValues={":last_connect": to_attr(fresh_last_connect(now)),
                                           ":node": to_attr(node_id),
                                           ":conn": to_attr(int(connected_at))})
        except ConditionFailed:
            return False
        return True

    def drop_user(self, uaid):
        key = self._key(uaid)
        found = self.dynamo.call("get_item", TableName=self.name, Key=key, ConsistentRead=True)
        if "Item" not in found:
            return False
        self.dynamo.call("delete_item", TableName=self.name, Key=key)
        return True

    def clear_node(self, record):
        """REMOVE node_id if the record still names that node and connection."""
        try:
            self.dynamo.call(
                "update_item", TableName=self.name, Key=self._key(record["uaid"]),
                UpdateExpression="REMOVE #node_id",
                ConditionExpression="#node_id = :node AND #connected_at = :conn",
                ExpressionAttributeNames=attr_names("node_id", "connected_at"),
                ExpressionAttributeValues={":node": to_attr(record["node_id"]),
                                           ":conn": to_attr(int(record["connected_at"]))})
        except ConditionFailed:
            return False
        return True

    def update_message_month(self, uaid, table_name, now=None):
        now = time.time() if now is None else now
        self.dynamo.call(
            "update_item", TableName=self.name, Key=self._key(uaid),
            UpdateExpression="SET #current_month = :curmonth, #last_connect = :last_connect, "
                             "#expiry = :expiry",
            ExpressionAttributeNames=attr_names("current_month", "last_connect", "expiry"),
            ExpressionAttributeValues={":curmonth": to_attr(table_name),
                                       ":last_connect": to_attr(fresh_last_connect(now)),
                                       ":expiry": to_attr(int(now) + self.max_ttl)})

    def drop_old_users(self, months_ago=2, now=None):
        """Maintenance: delete records whose last_connect lies in the month
        ``months_ago`` before now. Returns the number of records deleted."""
        moment = time.gmtime(time.time() if now is None else now)
        index = moment.tm_year * 12 + moment.tm_mon - 1 - months_ago
        deleted = 0
        for value in last_connect_values(index // 12, index % 12 + 1):
            keys = []
            start = None
            while True:
                kwargs = {"ExclusiveStartKey": start} if start else {}
                page = self.dynamo.call(
                    "query", TableName=self.name, IndexName="AccessIndex",
                    KeyConditionExpression="#last_connect = :v",
                    ExpressionAttributeNames=attr_names("last_connect"),
                    ExpressionAttributeValues={":v": to_attr(value)}, **kwargs)
                keys.extend({"uaid": item["uaid"]} for item in page.get("Items", []))
                start = page.get("LastEvaluatedKey")
                if not start:
                    break
            for offset in range(0, len(keys), 25):
                deleted += self._batch_delete(keys[offset:offset + 25])
        return deleted

    def _batch_delete(self, keys):
        requests = [{"DeleteRequest": {"Key": key}} for key in keys]
        for attempt in range(10):
            result = self.dynamo.call("batch_write_item", RequestItems={self.name: requests})
            requests = result.get("UnprocessedItems", {}).get(self.name, [])
            if not requests:
                return len(keys)
            time.sleep(min(0.1 * 2 ** attempt, 2.0))
        return len(keys) - len(requests)
