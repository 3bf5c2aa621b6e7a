"""Every storage operation of PROTOCOL.md 6.4 against a real dynalite,
checked on the raw items it leaves behind."""
import time
import uuid

import gevent
import pytest

from connnode.crypto import hash_uaid
from connnode.db.dynamo import StorageError, from_item
from connnode.db.message import COLLISION_ATTEMPTS
from connnode.db.rotation import shift_month, table_name
from connnode.db.storage import Storage
from connnode.notification import Notification
from tests.conftest import make_settings


def new_uaid():
    return uuid.uuid4().hex


def new_chid():
    return str(uuid.uuid4())


def raw_item(storage, table, key):
    result = storage.dynamo.call("get_item", TableName=table, Key=key, ConsistentRead=True)
    return from_item(result["Item"]) if "Item" in result else None


def router_item(storage, uaid):
    return raw_item(storage, storage.router.name,
                    {"uaid": {"S": hash_uaid(storage.settings.key_hash, uaid)}})


def message_item(storage, uaid, sort_key, table=None):
    return raw_item(storage, table or storage.rotation.current,
                    {"uaid": {"S": hash_uaid(storage.settings.key_hash, uaid)},
                     "chidmessageid": {"S": sort_key}})


def record(uaid, connected_at, node_id="http://127.0.0.1:8100", **extra):
    base = {"uaid": uaid, "node_id": node_id, "connected_at": connected_at,
            "router_type": "webpush", "last_connect": 202401010001,
            "current_month": "message_2024_01", "record_version": 1, "expiry": 2000000000}
    base.update(extra)
    return base


def timestamped(storage, uaid, chid, ttl=60, timestamp=None, skt=None, data=None, headers=None):
    timestamp = int(time.time()) if timestamp is None else timestamp
    skt = skt or int(time.time() * 1_000_000)
    return Notification(uaid, chid, storage.crypto.message_id(uaid, chid, sortkey_timestamp=skt),
                        ttl=ttl, timestamp=timestamp, sortkey_timestamp=skt, data=data,
                        headers=headers)


def topic_message(storage, uaid, chid, topic, ttl=60, timestamp=None):
    return Notification(uaid, chid, storage.crypto.message_id(uaid, chid, topic=topic),
                        ttl=ttl, timestamp=timestamp or int(time.time()), topic=topic)


# -- router table -------------------------------------------------------------

def test_register_user_new_then_newer_then_older(storage):
    uaid = new_uaid()
    assert storage.router.register_user(record(uaid, 1000)) == (True, {})
    item = router_item(storage, uaid)
    assert item == {**record(uaid, 1000)}

    ok, old = storage.router.register_user(record(uaid, 2000, node_id="http://n2:8100"))
    assert ok and old == record(uaid, 1000)
    assert router_item(storage, uaid)["node_id"] == "http://n2:8100"

    assert storage.router.register_user(record(uaid, 1500)) == (False, {})
    assert router_item(storage, uaid)["connected_at"] == 2000


def test_register_user_recognises_its_own_earlier_success(storage):
    """The same write again (a retry after a timeout whose first attempt
    landed) is success, not already_connected; another node's write of the
    same connected_at is still refused."""
    uaid = new_uaid()
    assert storage.router.register_user(record(uaid, 1000)) == (True, {})
    assert storage.router.register_user(record(uaid, 1000)) == (True, {})
    assert storage.router.register_user(record(uaid, 1000, node_id="http://n2:8100")) == (False, {})
    assert router_item(storage, uaid)["node_id"] == "http://127.0.0.1:8100"


def test_resume_user_writes_only_the_connection_and_returns_the_old_record(storage):
    uaid = new_uaid()
    assert storage.router.resume_user(uaid, "http://n2:8100", 2000, 2000000005) == (False, None)
    assert storage.router.get_uaid(uaid) is None  # a missing record is not created
    storage.router.register_user(record(uaid, 1000))
    written, old = storage.router.resume_user(uaid, "http://n2:8100", 2000, 2000000005)
    assert written and old == record(uaid, 1000)
    assert router_item(storage, uaid) == record(uaid, 2000, node_id="http://n2:8100",
                                                expiry=2000000005)
    # an older connection is refused and sees the record as it is
    assert storage.router.resume_user(uaid, "http://n3:8100", 1500, 1) == \
        (False, record(uaid, 2000, node_id="http://n2:8100", expiry=2000000005))
    # the same write again (a retry whose first attempt landed) is success
    assert storage.router.resume_user(uaid, "http://n2:8100", 2000, 2000000005)[0] is True
    # after clear_node, any connection may take it
    assert storage.router.clear_node(storage.router.get_uaid(uaid))
    assert storage.router.resume_user(uaid, "http://n3:8100", 10, 2000000006)[0] is True


def test_resume_user_refuses_a_record_of_another_router_type(storage):
    uaid = new_uaid()
    storage.router.register_user(record(uaid, 1000, router_type="gcm"))
    written, current = storage.router.resume_user(uaid, "http://n2:8100", 2000, 2000000005)
    assert not written and current["router_type"] == "gcm"


def test_refresh_last_connect_only_while_the_record_names_the_connection(storage):
    uaid = new_uaid()
    storage.router.register_user(record(uaid, 1000))
    assert storage.router.refresh_last_connect(uaid, "http://127.0.0.1:8100", 1000,
                                               now=1718000000) is True
    assert str(router_item(storage, uaid)["last_connect"]).startswith("202406")
    assert storage.router.refresh_last_connect(uaid, "http://127.0.0.1:8100", 999) is False


def test_register_user_after_clear_node_accepts_older_connection(storage):
    uaid = new_uaid()
    storage.router.register_user(record(uaid, 5000))
    assert storage.router.clear_node(storage.router.get_uaid(uaid)) is True
    ok, old = storage.router.register_user(record(uaid, 10))
    assert ok and "node_id" not in old and old["connected_at"] == 5000


def test_register_user_refuses_other_router_type(storage):
    uaid = new_uaid()
    storage.router.register_user(record(uaid, 1, router_type="gcm"))
    storage.router.clear_node(storage.router.get_uaid(uaid))
    assert storage.router.register_user(record(uaid, 2)) == (False, {})


def test_get_uaid_consistent_and_key_only_record_dropped(storage):
    uaid = new_uaid()
    assert storage.router.get_uaid(uaid) is None
    storage.router.register_user(record(uaid, 7))
    assert storage.router.get_uaid(uaid) == record(uaid, 7)
    bare = new_uaid()
    storage.dynamo.call("put_item", TableName=storage.router.name, Item={"uaid": {"S": bare}})
    assert storage.router.get_uaid(bare) is None
    assert router_item(storage, bare) is None


def test_user_and_channels_reads_both_in_one_call(storage):
    uaid, chid = new_uaid(), new_chid()
    current = storage.rotation.current
    assert storage.user_and_channels(uaid) == (None, None)
    storage.router.register_user(record(uaid, 7, current_month=current))
    assert storage.user_and_channels(uaid) == (record(uaid, 7, current_month=current), set())
    storage.current_table.register_channel(uaid, chid)
    assert storage.user_and_channels(uaid) == (record(uaid, 7, current_month=current), {chid})
    calls = []
    real_call = storage.dynamo.call
    storage.dynamo.call = lambda operation, **kw: calls.append(operation) or real_call(operation, **kw)
    storage.user_and_channels(uaid)
    assert calls == ["batch_get_item"]


def test_user_and_channels_of_another_month_leaves_channels_unread(storage):
    year, month = shift_month(*time.gmtime()[:2], -1)
    last = table_name(storage.settings.message_tablename, year, month)
    uaid = new_uaid()
    storage.current_table.register_channel(uaid, new_chid())  # a stale row: not this user's month
    storage.router.register_user(record(uaid, 7, current_month=last))
    assert storage.user_and_channels(uaid) == (record(uaid, 7, current_month=last), None)


def test_user_and_channels_repeats_unprocessed_router_key_as_get_uaid(storage):
    """DynamoDB leaves keys unprocessed when throttled (dynalite never does):
    the router read is repeated alone, the channels are left to the caller."""
    uaid = new_uaid()
    storage.router.register_user(record(uaid, 7, current_month=storage.rotation.current))
    real_call, calls = storage.dynamo.call, []

    def throttled_batch(operation, **kwargs):
        calls.append(operation)
        if operation == "batch_get_item":
            return {"Responses": {}, "UnprocessedKeys": kwargs["RequestItems"]}
        return real_call(operation, **kwargs)

    storage.dynamo.call = throttled_batch
    assert storage.user_and_channels(uaid) == (
        record(uaid, 7, current_month=storage.rotation.current), None)
    assert calls == ["batch_get_item", "get_item"]


def test_user_and_channels_drops_a_key_only_record(storage):
    bare = new_uaid()
    storage.dynamo.call("put_item", TableName=storage.router.name, Item={"uaid": {"S": bare}})
    assert storage.user_and_channels(bare) == (None, None)
    assert router_item(storage, bare) is None


def test_drop_user(storage):
    uaid = new_uaid()
    assert storage.router.drop_user(uaid) is False
    storage.router.register_user(record(uaid, 1))
    assert storage.router.drop_user(uaid) is True
    assert router_item(storage, uaid) is None


def test_clear_node_only_when_node_and_connection_match(storage):
    uaid = new_uaid()
    storage.router.register_user(record(uaid, 100))
    stale = record(uaid, 99)
    assert storage.router.clear_node(stale) is False
    assert router_item(storage, uaid)["node_id"] == "http://127.0.0.1:8100"
    assert storage.router.clear_node(record(uaid, 100)) is True
    assert "node_id" not in router_item(storage, uaid)
    assert storage.router.clear_node(record(uaid, 100)) is False


def test_update_message_month(storage):
    uaid = new_uaid()
    storage.router.register_user(record(uaid, 1))
    now = time.time()
    storage.router.update_message_month(uaid, "message_2030_02", now=now)
    item = router_item(storage, uaid)
    assert item["current_month"] == "message_2030_02"
    assert item["expiry"] == int(now) + storage.settings.max_ttl
    text = str(item["last_connect"])
    assert len(text) == 12 and text[:8] == time.strftime("%Y%m%H", time.gmtime(now))
    assert 0 <= int(text[8:]) <= 10


def test_drop_old_users_deletes_only_that_month(storage):
    now = time.time()
    year, month = shift_month(time.gmtime(now).tm_year, time.gmtime(now).tm_mon, -2)
    old_users = [new_uaid() for _ in range(30)]
    for index, uaid in enumerate(old_users):
        storage.router.register_user(record(uaid, 1, last_connect=int(
            f"{year:04d}{month:02d}{index % 24:02d}{index % 11:04d}")))
    recent = new_uaid()
    storage.router.register_user(record(recent, 1, last_connect=int(
        time.strftime("%Y%m%H", time.gmtime(now)) + "0003")))
    assert storage.router.drop_old_users(2, now=now) == 30
    assert all(router_item(storage, uaid) is None for uaid in old_users)
    assert router_item(storage, recent) is not None


def test_key_hash_applied_once_to_the_key(dynalite):
    store = Storage(make_settings(dynalite, key_hash="s3cret"))
    store.create_tables()
    uaid, chid = new_uaid(), new_chid()
    store.router.register_user(record(uaid, 1))
    hashed = hash_uaid("s3cret", uaid)
    assert len(hashed) == 64 and hashed != uaid
    assert raw_item(store, store.router.name, {"uaid": {"S": uaid}}) is None
    assert raw_item(store, store.router.name, {"uaid": {"S": hashed}})["uaid"] == hashed
    assert store.router.get_uaid(uaid)["uaid"] == uaid
    store.current_table.register_channel(uaid, chid)
    assert store.current_table.all_channels(uaid) == (True, {chid})
    message = timestamped(store, uaid, chid)
    store.current_table.store_message(message)
    _, items = store.current_table.fetch_timestamp_messages(uaid)
    assert [item.version for item in items] == [message.version]
    assert items[0].uaid == uaid


# -- message table: channels -----------------------------------------------------

def test_register_unregister_all_channels_save_channels(storage):
    table = storage.current_table
    uaid, chid1, chid2 = new_uaid(), new_chid(), new_chid()
    assert table.all_channels(uaid) == (False, set())
    now = time.time()
    table.register_channel(uaid, chid1, now=now)
    table.register_channel(uaid, chid2)
    table.register_channel(uaid, chid2)  # idempotent set add
    row = message_item(storage, uaid, " ")
    assert row["chids"] == {chid1, chid2} and row["expiry"] >= int(now) + storage.settings.max_ttl
    assert table.all_channels(uaid) == (True, {chid1, chid2})
    assert table.unregister_channel(uaid, chid1) is True
    assert table.unregister_channel(uaid, chid1) is False
    assert table.all_channels(uaid) == (True, {chid2})
    assert table.unregister_channel(uaid, chid2) is True
    assert table.all_channels(uaid) == (True, set())  # row stays, set attribute removed

    other = storage.message_table(table_name(storage.settings.message_tablename, 2030, 1))
    storage._ensure_message_table(other.name)
    other.save_channels(uaid, {chid1, chid2})
    assert other.all_channels(uaid) == (True, {chid1, chid2})
    other.save_channels(uaid, set())  # skipped: no empty sets in DynamoDB
    assert other.all_channels(uaid) == (True, {chid1, chid2})


# -- message table: messages -----------------------------------------------------

def test_store_message_item_state(storage):
    uaid, chid = new_uaid(), new_chid()
    now = time.time()
    message = timestamped(storage, uaid, chid, ttl=300, timestamp=int(now), data="3q2-7w",
                          headers={"encoding": "aes128gcm"})
    storage.current_table.store_message(message, now=now)
    item = message_item(storage, uaid, f"02:{message.sortkey_timestamp}:{chid}")
    assert item == {"uaid": uaid, "chidmessageid": message.sort_key, "updateid": message.version,
                    "ttl": 300, "timestamp": int(now), "expiry": int(now) + 300,
                    "data": "3q2-7w", "headers": {"encoding": "aes128gcm"}}


def test_store_message_without_data_omits_data_and_headers(storage):
    uaid, chid = new_uaid(), new_chid()
    message = timestamped(storage, uaid, chid, headers={"encoding": "aes128gcm"})
    storage.current_table.store_message(message)
    item = message_item(storage, uaid, message.sort_key)
    assert "data" not in item and "headers" not in item


def test_topic_message_replaces_and_conditional_delete(storage):
    table = storage.current_table
    uaid, chid = new_uaid(), new_chid()
    first = topic_message(storage, uaid, chid, "weather")
    table.store_message(first)
    second = topic_message(storage, uaid, chid, "weather")
    table.store_message(second)
    assert message_item(storage, uaid, f"01:{chid}:weather")["updateid"] == second.version
    assert table.delete_message(uaid, first.sort_key, updateid=first.version) is False
    assert message_item(storage, uaid, first.sort_key)["updateid"] == second.version
    assert table.delete_message(uaid, second.sort_key, updateid=second.version) is True
    assert message_item(storage, uaid, second.sort_key) is None


def test_unconditional_delete(storage):
    uaid, chid = new_uaid(), new_chid()
    message = timestamped(storage, uaid, chid)
    storage.current_table.store_message(message)
    assert storage.current_table.delete_message(uaid, message.sort_key) is True
    assert message_item(storage, uaid, message.sort_key) is None


def test_fetch_messages_topic_phase(storage):
    table = storage.current_table
    uaid, chid = new_uaid(), new_chid()
    table.register_channel(uaid, chid)
    table.update_last_message_read(uaid, 1234)
    topics = [topic_message(storage, uaid, chid, f"t{n}") for n in range(3)]
    for message in topics:
        table.store_message(message)
    table.store_message(timestamped(storage, uaid, chid))
    cursor, items = table.fetch_messages(uaid)
    assert cursor == 1234
    assert [item.sort_key for item in items] == [m.sort_key for m in topics]
    assert [item.topic for item in items] == ["t0", "t1", "t2"]
    assert [item.version for item in items] == [m.version for m in topics]


def put_legacy(storage, table, uaid, chid):
    key = f"{chid}:legacy-id"
    storage.dynamo.call("put_item", TableName=table.name, Item={
        "uaid": {"S": uaid}, "chidmessageid": {"S": key}, "updateid": {"S": "legacy-id"},
        "ttl": {"N": "60"}, "timestamp": {"N": str(int(time.time()))}})
    return key


def test_legacy_messages_are_read_in_the_phase_their_key_sorts_into(storage):
    table = storage.current_table
    uaid = new_uaid()
    early, late = "00" + new_chid()[2:], "f" + new_chid()[1:]  # "00..." < "02" < "f..."
    early_key, late_key = put_legacy(storage, table, uaid, early), put_legacy(storage, table, uaid, late)
    stamped = timestamped(storage, uaid, late)
    table.store_message(stamped)
    assert [m.sort_key for m in table.fetch_messages(uaid)[1]] == [early_key]
    cursor, items = table.fetch_timestamp_messages(uaid)
    assert [m.sort_key for m in items] == [stamped.sort_key, late_key]
    assert cursor == stamped.sortkey_timestamp  # the legacy item does not move it
    assert items[1].legacy_sort_key == late_key and items[1].chid == late


def keys(result):
    cursor, messages = result
    return cursor, [m.sort_key for m in messages]


@pytest.mark.parametrize("stamps", [0, 1, 4, 12])
def test_fetch_topic_phase_answers_as_the_two_queries(storage, stamps):
    """One Query of the partition gives fetch_messages' answer, and, when it
    saw the whole partition, fetch_timestamp_messages' answer at any cursor."""
    table = storage.current_table
    uaid, chid = new_uaid(), new_chid()
    table.register_channel(uaid, chid)
    early, late = "00" + new_chid()[2:], "f" + new_chid()[1:]
    put_legacy(storage, table, uaid, early)
    put_legacy(storage, table, uaid, late)
    table.store_message(topic_message(storage, uaid, chid, "news"))
    base = int(time.time() * 1_000_000)
    stored = [timestamped(storage, uaid, chid, skt=base + n) for n in range(stamps)]
    for message in stored:
        table.store_message(message)
    if stored:
        table.update_last_message_read(uaid, stored[0].sortkey_timestamp)
    cursor, topics, later = table.fetch_topic_phase(uaid)
    assert keys((cursor, topics)) == keys(table.fetch_messages(uaid))
    partition = 1 + 2 + 1 + stamps
    if partition >= 10:
        assert later is None
        return
    for at in (None, base - 1, base, base + stamps - 1):
        assert keys(table.timestamp_phase(uaid, later, at)) == \
            keys(table.fetch_timestamp_messages(uaid, at))


def test_fetch_topic_phase_is_one_query(storage):
    table = storage.current_table
    uaid, chid = new_uaid(), new_chid()
    table.register_channel(uaid, chid)
    table.store_message(timestamped(storage, uaid, chid))
    calls = []
    real_call = storage.dynamo.call
    storage.dynamo.call = lambda operation, **kw: calls.append(operation) or real_call(operation, **kw)
    cursor, topics, later = table.fetch_topic_phase(uaid)
    assert (cursor, topics, calls) == (None, [], ["query"])
    assert len(table.timestamp_phase(uaid, later)[1]) == 1 and calls == ["query"]


def test_fetch_messages_limit_counts_channel_row(storage):
    table = storage.current_table
    uaid, chid = new_uaid(), new_chid()
    table.register_channel(uaid, chid)
    for n in range(12):
        table.store_message(topic_message(storage, uaid, chid, f"t{n:02d}"))
    cursor, items = table.fetch_messages(uaid)
    assert cursor is None and len(items) == 9


def test_fetch_timestamp_messages_paging_by_cursor(storage):
    table = storage.current_table
    uaid, chid = new_uaid(), new_chid()
    table.register_channel(uaid, chid)
    table.store_message(topic_message(storage, uaid, chid, "skipped"))
    base = int(time.time() * 1_000_000)
    stored = [timestamped(storage, uaid, chid, skt=base + n) for n in range(13)]
    for message in stored:
        table.store_message(message)
    cursor, first = table.fetch_timestamp_messages(uaid)
    assert [m.version for m in first] == [m.version for m in stored[:10]]
    assert cursor == stored[9].sortkey_timestamp
    cursor, rest = table.fetch_timestamp_messages(uaid, cursor)
    assert [m.version for m in rest] == [m.version for m in stored[10:]]
    assert cursor == stored[12].sortkey_timestamp
    assert table.fetch_timestamp_messages(uaid, cursor) == (None, [])


def test_update_last_message_read(storage):
    table = storage.current_table
    uaid, chid = new_uaid(), new_chid()
    table.register_channel(uaid, chid)
    table.update_last_message_read(uaid, 1718000000123456)
    row = message_item(storage, uaid, " ")
    assert row["current_timestamp"] == 1718000000123456 and row["chids"] == {chid}
    assert table.fetch_messages(uaid)[0] == 1718000000123456


def test_expiry_on_read_boundary(storage):
    uaid, chid = new_uaid(), new_chid()
    message = timestamped(storage, uaid, chid, ttl=30, timestamp=1_700_000_000)
    storage.current_table.store_message(message)
    _, (read,) = storage.current_table.fetch_timestamp_messages(uaid)
    assert not read.expired(1_700_000_000 + 30 - 1)
    assert read.expired(1_700_000_000 + 30)


# -- concurrency against the real server ---------------------------------------------

def test_register_user_race_newest_wins(storage):
    for _ in range(50):
        uaid = new_uaid()
        offers = [1_000 + n * 7 for n in range(8)]
        jobs = {at: gevent.spawn(storage.router.register_user, record(uaid, at)) for at in offers}
        gevent.joinall(list(jobs.values()), timeout=30, raise_error=True)
        assert router_item(storage, uaid)["connected_at"] == max(offers)
        results = {at: job.value for at, job in jobs.items()}
        assert results[max(offers)][0] is True
        for at, (won, old) in results.items():
            if not won:
                assert old == {}
            else:
                # a winner replaced nothing newer than itself
                assert old.get("connected_at", 0) < at


def test_timestamped_collisions_get_distinct_keys(storage):
    uaid, chid = new_uaid(), new_chid()
    frozen = int(time.time() * 1_000_000)
    messages = [timestamped(storage, uaid, chid, skt=frozen) for _ in range(20)]
    jobs = [gevent.spawn(storage.current_table.store_message, message) for message in messages]
    gevent.joinall(jobs, timeout=30, raise_error=True)
    keys = {message.sort_key for message in messages}
    assert len(keys) == 20
    stored = storage.dynamo.call(
        "query", TableName=storage.rotation.current, KeyConditionExpression="uaid = :u",
        ExpressionAttributeValues={":u": {"S": uaid}}, ConsistentRead=True)["Items"]
    assert len(stored) == 20
    for item in map(from_item, stored):
        parsed = storage.crypto.parse_message_id(item["updateid"])
        assert parsed.sort_key == item["chidmessageid"]
    assert {message.version for message in messages} == {from_item(i)["updateid"] for i in stored}


def test_collision_limit_is_a_storage_error(storage):
    uaid, chid = new_uaid(), new_chid()
    frozen = int(time.time() * 1_000_000)
    for offset in range(COLLISION_ATTEMPTS):
        storage.current_table.store_message(timestamped(storage, uaid, chid, skt=frozen + offset))
    with pytest.raises(StorageError):
        storage.current_table.store_message(timestamped(storage, uaid, chid, skt=frozen))


# -- tables, rotation, preflight, health ---------------------------------------------

def test_create_tables_and_rotation_over_a_year_end(dynalite):
    store = Storage(make_settings(dynalite))
    prefix = store.settings.message_tablename
    new_year_eve = time.mktime((2025, 12, 31, 12, 0, 0, 0, 0, 0)) - time.timezone
    store.create_tables(now=new_year_eve)
    assert store.rotation.current == f"{prefix}_2025_12"
    assert store.rotation.valid == {f"{prefix}_2025_11", f"{prefix}_2025_12", f"{prefix}_2026_01"}
    for name in store.rotation.valid | {store.router.name}:
        assert store.dynamo.table_status(name) == "ACTIVE"
    assert store.rotation.check(now=new_year_eve + 86400) is True
    assert store.rotation.current == f"{prefix}_2026_01"
    assert store.rotation.valid == {f"{prefix}_2025_12", f"{prefix}_2026_01"}


def test_user_on_last_months_table_is_readable(storage):
    year, month = shift_month(*time.gmtime()[:2], -1)
    last = table_name(storage.settings.message_tablename, year, month)
    assert storage.rotation.is_valid(last)
    uaid, chid = new_uaid(), new_chid()
    table = storage.message_table(last)
    table.register_channel(uaid, chid)
    message = timestamped(storage, uaid, chid)
    table.store_message(message)
    storage.router.register_user(record(uaid, 1, current_month=last))
    read = storage.router.get_uaid(uaid)
    assert storage.month_usable(read)
    assert storage.message_table(read["current_month"]).all_channels(uaid) == (True, {chid})
    assert [m.version for m in table.fetch_timestamp_messages(uaid)[1]] == [message.version]


def test_month_outside_valid_set_is_unusable(storage):
    year, month = shift_month(*time.gmtime()[:2], -2)
    too_old = table_name(storage.settings.message_tablename, year, month)
    assert not storage.month_usable(record(new_uaid(), 1, current_month=too_old))
    assert not storage.month_usable({"uaid": new_uaid(), "router_type": "webpush"})
    assert storage.month_usable(record(new_uaid(), 1, current_month=storage.rotation.current))


def test_preflight_and_health(storage):
    storage.preflight()
    assert storage.health() == (True, {"router": {"status": "OK"}, "storage": {"status": "OK"}})


def test_health_reports_missing_table(dynalite):
    store = Storage(make_settings(dynalite))
    store.rotation.current = "no_such_table"
    healthy, report = store.health()
    assert not healthy
    assert report["router"]["status"] == "NOT OK" and report["storage"]["status"] == "NOT OK"
