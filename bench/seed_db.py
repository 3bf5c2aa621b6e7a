"""Put known users and stored messages into dynalite with the storage layer
(``connnode.db``), as a finished session history would have left them.

    python -m bench.seed_db '<json config>'

Config: ``endpoint``, ``router``, ``message`` (table prefix), ``key``
(crypto key), ``node_id`` (the router URL the records name), ``users``,
``messages`` (stored per user), ``out`` (file for the list of uaids),
``create`` (create the tables).

Each user gets a router record (the attributes a hello writes, connected_at
one minute ago), a channel row with one chid, and ``messages`` timestamped
messages of that chid (TTL one hour, a 100-byte payload) in the current
month's table: the items the storage layer writes (``Notification.item``,
``to_item``), put with BatchWriteItem 25 at a time (``concurrency`` calls in
flight, default 20) so that seeding stays quick. Prints one JSON line.
"""
from gevent import monkey

monkey.patch_all()

import base64  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402

from gevent.pool import Pool  # noqa: E402

from connnode.crypto import hash_uaid  # noqa: E402
from connnode.db.dynamo import to_item  # noqa: E402
from connnode.db.router import fresh_last_connect  # noqa: E402
from connnode.notification import CHANNEL_ROW_KEY, Notification  # noqa: E402
from connnode.settings import Settings  # noqa: E402

PAYLOAD = base64.urlsafe_b64encode(os.urandom(100)).decode("ascii").rstrip("=")


def storage_for(config):
    from connnode.db.storage import Storage

    pool = {"ddb_max_pool_connections": config["pool"]} if config.get("pool") else {}
    settings = Settings(aws_ddb_endpoint=config["endpoint"], router_tablename=config["router"],
                        message_tablename=config["message"], crypto_key=config["key"],
                        hostname="127.0.0.1", statsd_host="", **pool)
    storage = Storage(settings)
    if config.get("create"):
        storage.create_tables()
    else:
        storage.rotation.check()  # learn the current month's table
    return storage


def router_record(storage, uaid, node_id, connected_at):
    return {"uaid": uaid, "node_id": node_id, "connected_at": connected_at,
            "router_type": "webpush", "last_connect": fresh_last_connect(),
            "record_version": 1, "current_month": storage.rotation.current,
            "expiry": int(time.time()) + storage.settings.max_ttl}


def user_items(storage, node_id, messages):
    """(uaid, [(table name, item)]) of one user: router record, channel row,
    ``messages`` timestamped messages of its one chid."""
    uaid = uuid.uuid4().hex
    chid = str(uuid.uuid4())
    key = hash_uaid(storage.settings.key_hash, uaid)
    record = router_record(storage, uaid, node_id, int(time.time() * 1000) - 60000)
    record["uaid"] = key
    table = storage.current_table
    now = int(time.time())
    items = [(storage.router.name, to_item(record)),
             (table.name, to_item({"uaid": key, "chidmessageid": CHANNEL_ROW_KEY, "chids": {chid},
                                   "expiry": now + storage.settings.max_ttl}))]
    skt = int(time.time() * 1_000_000)
    for i in range(messages):
        stamp = skt + i
        message = Notification(
            uaid, chid, storage.crypto.message_id(uaid, chid, sortkey_timestamp=stamp),
            ttl=3600, timestamp=now, sortkey_timestamp=stamp, data=PAYLOAD,
            headers={"encoding": "aes128gcm"})
        item = message.item(now, storage.settings.max_ttl)
        item["uaid"] = key
        items.append((table.name, to_item(item)))
    return uaid, items


def batch_write(storage, pairs):
    """BatchWriteItem of up to 25 (table, item) pairs, unprocessed ones retried."""
    requests = {}
    for name, item in pairs:
        requests.setdefault(name, []).append({"PutRequest": {"Item": item}})
    for attempt in range(20):
        result = storage.dynamo.call("batch_write_item", RequestItems=requests)
        requests = result.get("UnprocessedItems") or {}
        if not requests:
            return
        time.sleep(min(0.05 * 2 ** attempt, 1.0))
    raise RuntimeError("batch_write_item left items unprocessed")


def main():
    config = json.loads(sys.argv[1])
    storage = storage_for(config)
    started = time.monotonic()
    uaids, pairs = [], []
    for _ in range(config["users"]):
        uaid, items = user_items(storage, config["node_id"], config.get("messages", 1))
        uaids.append(uaid)
        pairs.extend(items)
    pool = Pool(config.get("concurrency", 20))
    for offset in range(0, len(pairs), 25):
        pool.spawn(batch_write, storage, pairs[offset:offset + 25])
    pool.join(raise_error=True)
    with open(config["out"], "w") as handle:
        json.dump(uaids, handle)
    print(json.dumps({"users": len(uaids), "elapsed": time.monotonic() - started}), flush=True)


if __name__ == "__main__":
    main()
