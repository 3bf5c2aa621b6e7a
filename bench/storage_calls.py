"""Latency of single storage calls against dynalite: connnode's storage layer
(get_uaid, register_user, fetch_timestamp_messages) beside the same DynamoDB
request made with the bare botocore client, so the ratio is our overhead
(the storage layer takes the lean request path, connnode/db/lean.py, when
``ddb_lean_calls`` is on, the default). Then the client CPU per call of the
two request paths, bare: the boto3 client against ``LeanClient``, GetItem of
an existing item and PutItem of a message-sized item.

    python -m bench.storage_calls [--calls N] [--cpu-calls N] [--rounds N]

Sequential calls from one greenlet on one in-memory dynalite, after a
warm-up; latency medians in milliseconds; CPU (``time.process_time()``, this
process only: dynalite runs apart) in microseconds per call, median of the
rounds, the two paths alternating within each round.
"""
from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402

from connnode.db.lean import LeanClient  # noqa: E402
from connnode.db.storage import Storage  # noqa: E402
from connnode.embedded import Dynalite  # noqa: E402
from connnode.notification import Notification  # noqa: E402
from connnode.settings import Settings  # noqa: E402

WARM_UP = 50


def timed(function, calls):
    for _ in range(WARM_UP):
        function()
    samples = []
    for _ in range(calls):
        started = time.perf_counter()
        function()
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


def cpu_per_call(function, calls):
    """Microseconds of this process's CPU per call, after a warm-up."""
    for _ in range(WARM_UP):
        function()
    started = time.process_time()
    for _ in range(calls):
        function()
    return (time.process_time() - started) / calls * 1e6


def cpu_rows(client, router, table, uaid, cpu_calls, rounds):
    """CPU per GetItem and PutItem, boto3 client against LeanClient."""
    lean = LeanClient(client)
    get = {"TableName": router.name, "Key": router._key(uaid), "ConsistentRead": True}
    put = {"TableName": table.name, "Item": {
        "uaid": {"S": uaid}, "chidmessageid": {"S": "02:1700000000000000:" + str(uuid.uuid4())},
        "updateid": {"S": "x" * 140}, "ttl": {"N": "3600"}, "timestamp": {"N": "1700000000"},
        "expiry": {"N": "2000000000"}, "data": {"S": "x" * 200},
        "headers": {"M": {"encoding": {"S": "aes128gcm"}}}}}
    assert "Item" in client.get_item(**get) and "Item" in lean.get_item(**get)
    paths = {"boto3": client, "lean": lean}
    samples = {(op, path): [] for op in ("GetItem", "PutItem") for path in paths}
    for _ in range(rounds):
        for path, target in paths.items():
            samples["GetItem", path].append(cpu_per_call(lambda: target.get_item(**get), cpu_calls))
            samples["PutItem", path].append(cpu_per_call(lambda: target.put_item(**put), cpu_calls))
    lean.close()
    return {key: statistics.median(values) for key, values in samples.items()}, samples


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--cpu-calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    calls = args.calls
    dynalite = Dynalite().start()
    try:
        suffix = uuid.uuid4().hex[:8]
        storage = Storage(Settings(aws_ddb_endpoint=dynalite.endpoint, statsd_host="",
                                   router_tablename=f"router_{suffix}",
                                   message_tablename=f"message_{suffix}", hostname="127.0.0.1"))
        storage.create_tables()
        client, router, table = storage.dynamo.client, storage.router, storage.current_table
        uaid, chid = uuid.uuid4().hex, str(uuid.uuid4())
        record = {"uaid": uaid, "node_id": "http://127.0.0.1:8100", "router_type": "webpush",
                  "connected_at": 1, "current_month": table.name, "record_version": 1,
                  "last_connect": 202601010001, "expiry": 2000000000}
        router.register_user(record)
        now = int(time.time())
        for offset in range(10):
            skt = int(time.time() * 1_000_000) + offset
            table.store_message(Notification(
                uaid, chid, storage.crypto.message_id(uaid, chid, sortkey_timestamp=skt), 3600, now,
                sortkey_timestamp=skt, data="x" * 200, headers={"encoding": "aes128gcm"}))
        counter = iter(range(2, 10**9))

        def register():  # the same three attributes as raw_register writes
            router.register_user({"uaid": uaid, "node_id": "http://127.0.0.1:8100",
                                  "router_type": "webpush", "connected_at": next(counter)})

        def raw_register():
            at = str(next(counter))
            client.update_item(
                TableName=router.name, Key={"uaid": {"S": uaid}},
                UpdateExpression="SET #node_id = :node_id, #connected_at = :connected_at, "
                                 "#router_type = :router_type",
                ConditionExpression="(attribute_not_exists(#router_type) OR #router_type = "
                                    ":router_type) AND (attribute_not_exists(#node_id) OR "
                                    "#connected_at < :connected_at)",
                ExpressionAttributeNames={"#node_id": "node_id", "#connected_at": "connected_at",
                                          "#router_type": "router_type"},
                ExpressionAttributeValues={":node_id": {"S": "http://127.0.0.1:8100"},
                                           ":connected_at": {"N": at},
                                           ":router_type": {"S": "webpush"}},
                ReturnValues="ALL_OLD")

        rows = [
            ("get_uaid (GetItem)", lambda: router.get_uaid(uaid),
             lambda: client.get_item(TableName=router.name, Key={"uaid": {"S": uaid}},
                                     ConsistentRead=True)),
            ("register_user (UpdateItem)", register, raw_register),
            ("fetch_timestamp_messages (Query, 10 items)",
             lambda: table.fetch_timestamp_messages(uaid),
             lambda: client.query(
                 TableName=table.name, KeyConditionExpression="uaid = :u AND chidmessageid > :k",
                 ExpressionAttributeValues={":u": {"S": uaid}, ":k": {"S": "01;"}},
                 ConsistentRead=True, Limit=10)),
        ]
        print(f"storage calls against dynalite, {calls} sequential calls each, medians (ms)")
        print(f"  {'call':<44} {'connnode':>9} {'botocore':>9} {'ratio':>7}")
        for name, ours, raw in rows:
            mine, bare = timed(ours, calls), timed(raw, calls)
            print(f"  {name:<44} {mine:>9.2f} {bare:>9.2f} {mine / bare:>7.2f}")
        medians, samples = cpu_rows(client, router, table, uaid, args.cpu_calls, args.rounds)
        print(f"client CPU per call, {args.cpu_calls} sequential calls, "
              f"median of {args.rounds} rounds (us)")
        print(f"  {'call':<12} {'boto3':>8} {'lean':>8} {'lean/boto3':>11}   rounds boto3 | lean")
        for op in ("GetItem", "PutItem"):
            boto3, lean = medians[op, "boto3"], medians[op, "lean"]
            spread = (" ".join(f"{v:.0f}" for v in samples[op, "boto3"]) + " | "
                      + " ".join(f"{v:.0f}" for v in samples[op, "lean"]))
            print(f"  {op:<12} {boto3:>8.0f} {lean:>8.0f} {lean / boto3:>11.2f}   {spread}")
    finally:
        dynalite.stop()


if __name__ == "__main__":
    main()
