"""The storage sweeper (connnode/db/sweep.py) against a real dynalite: expired
items go, live ones stay; old monthly tables are dropped when empty or past
max_ttl, valid ones never; one pass at a time through the lease."""
import os
import subprocess
import sys
import time

import gevent
import gevent.event
import pytest

from connnode.db import sweep
from connnode.db.dynamo import message_table_definition, to_item
from connnode.db.rotation import shift_month, table_name
from connnode.db.storage import Storage
from connnode.db.sweep import LEASE_KEY, Sweeper, month_of, month_start, run_forever
from tests.conftest import make_settings

pytestmark = pytest.mark.timeout(60)

UAID_A = "a" * 32
UAID_B = "b" * 32
CHID = "deadbeef-0000-4000-8000-00000000beef"
YEAR = 365 * 86400


def months_back(storage, count, now=None):
    year, month = shift_month(*month_of(time.time() if now is None else now), -count)
    return table_name(storage.settings.message_tablename, year, month)


def make_table(storage, name):
    storage.dynamo.ensure_table(name, message_table_definition(5, 5))
    return name


def put(storage, table, **item):
    storage.dynamo.call("put_item", TableName=table, Item=to_item(item))


def get(storage, table, uaid, sort_key=None):
    key = {"uaid": {"S": uaid}}
    if sort_key is not None:
        key["chidmessageid"] = {"S": sort_key}
    return storage.dynamo.call("get_item", TableName=table, Key=key,
                               ConsistentRead=True).get("Item")


def lease_item(storage):
    return get(storage, storage.settings.router_tablename, LEASE_KEY)


def tables(storage):
    names, start = [], None
    while True:
        page = storage.dynamo.call("list_tables", Limit=100,
                                   **({"ExclusiveStartTableName": start} if start else {}))
        names += page["TableNames"]
        start = page.get("LastEvaluatedTableName")
        if not start:
            return set(names)


def message(uaid, sort_key, expiry):
    return {"uaid": uaid, "chidmessageid": sort_key, "updateid": "x", "ttl": 60,
            "timestamp": expiry - 60, "expiry": expiry}


def test_expired_items_go_and_live_ones_stay(storage):
    now = int(time.time())
    router, table = storage.settings.router_tablename, storage.rotation.current
    put(storage, router, uaid=UAID_A, router_type="webpush", connected_at=1, expiry=now - 10)
    put(storage, router, uaid=UAID_B, router_type="webpush", connected_at=1, expiry=now + 1000)
    put(storage, router, uaid="c" * 32, router_type="webpush", connected_at=1)  # no expiry: stays
    stamp_old, stamp_new = f"02:{(now - 100) * 10**6}:{CHID}", f"02:{now * 10**6}:{CHID}"
    for item in (message(UAID_A, stamp_old, now - 5),           # expired timestamped
                 message(UAID_A, f"01:{CHID}:topic", now - 5),  # expired topic message
                 message(UAID_A, f"{CHID}:legacyid", now - 5),  # expired legacy message
                 message(UAID_B, stamp_new, now + 1000)):       # live
        put(storage, table, **item)
    storage.current_table.register_channel(UAID_A, CHID, now=now - storage.settings.max_ttl - 5)
    storage.current_table.register_channel(UAID_B, CHID, now=now)

    result = Sweeper(storage).run_once()

    assert result.taken and not result.lease_lost
    assert result.deleted[router] == 1 and result.deleted[table] == 4
    assert result.dropped == []
    assert get(storage, router, UAID_A) is None
    assert get(storage, router, UAID_B) is not None and get(storage, router, "c" * 32) is not None
    for sort_key in (stamp_old, f"01:{CHID}:topic", f"{CHID}:legacyid", " "):
        assert get(storage, table, UAID_A, sort_key) is None, sort_key
    assert get(storage, table, UAID_B, stamp_new) is not None
    assert storage.current_table.all_channels(UAID_B) == (True, {CHID})
    assert lease_item(storage) is None  # released


def test_many_expired_items_page_and_batch(storage, monkeypatch):
    monkeypatch.setattr(sweep, "SCAN_PAGE", 7)
    now = int(time.time())
    table = storage.rotation.current
    items = [message(UAID_A, f"02:{10**15 + n}:{CHID}", now - 1) for n in range(60)]
    requests = [{"PutRequest": {"Item": to_item(item)}} for item in items]
    for offset in range(0, 60, 25):
        assert not storage.dynamo.call("batch_write_item", RequestItems={
            table: requests[offset:offset + 25]}).get("UnprocessedItems")
    put(storage, table, **message(UAID_B, f"02:{10**15}:{CHID}", now + 1000))
    assert Sweeper(storage).run_once().deleted[table] == 60
    page = storage.dynamo.call("scan", TableName=table, ConsistentRead=True)
    assert [item["uaid"]["S"] for item in page["Items"]] == [UAID_B]


def test_refreshed_item_is_not_deleted(storage):
    """Rewritable items are deleted on the condition that they are still
    expired: one refreshed since the Scan stays."""
    now = int(time.time())
    table = storage.rotation.current
    storage.current_table.register_channel(UAID_A, CHID, now=now)  # expiry now + max_ttl
    key = {"uaid": {"S": UAID_A}, "chidmessageid": {"S": " "}}
    assert Sweeper(storage)._delete_if_expired(table, key, now) == 0
    assert storage.current_table.all_channels(UAID_A) == (True, {CHID})


def test_old_table_dropped_when_empty(dynalite):
    storage = Storage(make_settings(dynalite, max_ttl=YEAR))
    storage.create_tables()
    now = int(time.time())
    empty = make_table(storage, months_back(storage, 4))
    emptied = make_table(storage, months_back(storage, 5))
    put(storage, emptied, **message(UAID_A, f"02:{10**15}:{CHID}", now - 1))

    result = Sweeper(storage).run_once()

    assert sorted(result.dropped) == sorted([empty, emptied])
    assert result.deleted[emptied] == 1
    assert not {empty, emptied} & tables(storage)


def test_old_table_with_live_items_kept_until_past_max_ttl(dynalite):
    patient = Storage(make_settings(dynalite, max_ttl=YEAR))
    patient.create_tables()
    now = int(time.time())
    old = make_table(patient, months_back(patient, 4))
    put(patient, old, **message(UAID_A, f"02:{10**15}:{CHID}", now + 10 * YEAR))

    result = Sweeper(patient).run_once()
    assert result.dropped == [] and result.deleted[old] == 0
    assert old in tables(patient)

    # The same tables under the default max_ttl (30 days): the table left the
    # valid set two months ago, so every item it can hold is past max_ttl.
    settings = make_settings(dynalite, router_tablename=patient.settings.router_tablename,
                             message_tablename=patient.settings.message_tablename)
    assert now >= Sweeper.retired_at(shift_month(*month_of(now), -4)) + settings.max_ttl
    result = Sweeper(Storage(settings)).run_once()
    assert result.dropped == [old]
    assert old not in tables(patient)


def test_valid_and_foreign_tables_are_never_dropped(dynalite):
    settings = make_settings(dynalite, max_ttl=1)
    storage = Storage(settings)
    storage.create_tables()
    prefix = settings.message_tablename
    now = time.time()
    last, current = months_back(storage, 1), months_back(storage, 0)
    upcoming = make_table(storage, months_back(storage, -1))
    foreign = [make_table(storage, name) for name in (
        f"{prefix}_2001_13", f"{prefix}_2001_01_copy", f"{prefix}x_2001_01", f"x{prefix}_2001_01")]
    old = make_table(storage, months_back(storage, 3))
    assert {last, current} <= storage.rotation.valid  # (+ next month's on a month's last day)

    # A Storage whose rotation never ran: the valid set comes from the clock.
    result = Sweeper(Storage(settings)).run_once(now=now + 10 * YEAR)

    assert result.dropped == [old]
    assert {last, current, upcoming, *foreign} <= tables(storage)
    assert Sweeper.retired_at(month_of(now)) > now  # this month's table retires later


class GatedSweeper(Sweeper):
    """Holds its lease until ``go`` is set."""

    def __init__(self, storage, entered, go):
        super().__init__(storage)
        self.entered, self.go = entered, go

    def _sweep(self, now, result):
        self.entered.set()
        assert self.go.wait(timeout=20), "the test never let the sweep go on"
        super()._sweep(now, result)


def test_two_sweeps_at_once_one_takes_the_lease(dynalite):
    # key_hash set: the lease key is still written raw, never hashed
    settings = make_settings(dynalite, key_hash="a-secret")
    first = Storage(settings)
    first.create_tables()
    now = int(time.time())
    expired = message(UAID_A, f"02:{10**15}:{CHID}", now - 1)
    put(first, first.rotation.current, **expired)
    go = gevent.event.Event()
    sweepers = [GatedSweeper(Storage(settings), gevent.event.Event(), go) for _ in range(2)]

    runs = [gevent.spawn(sweeper.run_once) for sweeper in sweepers]
    done = gevent.wait(runs, count=1, timeout=20)
    assert len(done) == 1, "neither sweep returned"
    loser = done[0].get()
    winner_run = runs[1 - runs.index(done[0])]
    winner = sweepers[runs.index(winner_run)]

    assert not loser.taken and loser.deleted == {} and loser.dropped == []
    assert winner.entered.is_set() and not winner_run.ready()
    held = lease_item(first)
    assert held["owner"]["S"] == winner.owner and float(held["lease_until"]["N"]) > time.time()
    assert get(first, first.rotation.current, expired["uaid"], expired["chidmessageid"]) is not None

    go.set()
    result = winner_run.get(timeout=20)
    assert result.taken and result.deleted[first.rotation.current] == 1
    assert lease_item(first) is None


def test_lease_is_released_and_a_stale_one_taken_over(storage):
    router = storage.settings.router_tablename
    first = Sweeper(storage).run_once()
    assert first.taken and lease_item(storage) is None
    assert Sweeper(storage).run_once().taken  # released: the next pass runs

    # A live lease of someone else: nothing is done and the lease stays theirs.
    now = time.time()
    put(storage, storage.rotation.current, **message(UAID_A, f"02:{10**15}:{CHID}", int(now) - 1))
    storage.dynamo.call("put_item", TableName=router, Item={
        "uaid": {"S": LEASE_KEY}, "owner": {"S": "elsewhere"},
        "lease_until": {"N": str(now + 600)}})
    busy = Sweeper(storage).run_once()
    assert not busy.taken and busy.deleted == {}
    assert lease_item(storage)["owner"]["S"] == "elsewhere"

    # The same lease, expired (its holder died): taken over.
    storage.dynamo.call("put_item", TableName=router, Item={
        "uaid": {"S": LEASE_KEY}, "owner": {"S": "elsewhere"},
        "lease_until": {"N": str(now - 1)}})
    taken = Sweeper(storage).run_once()
    assert taken.taken and taken.deleted[storage.rotation.current] == 1
    assert lease_item(storage) is None


def test_lost_lease_stops_the_pass(storage):
    sweeper = Sweeper(storage, lease_seconds=0.0)  # renews before every page
    assert sweeper._take_lease()
    storage.dynamo.call("put_item", TableName=storage.settings.router_tablename, Item={
        "uaid": {"S": LEASE_KEY}, "owner": {"S": "thief"}, "lease_until": {"N": "1"}})
    with pytest.raises(sweep.LeaseLost):
        sweeper._keep_lease()


def test_retired_at_is_the_end_of_the_following_month_plus_grace():
    assert Sweeper.retired_at((2024, 11)) == month_start(2025, 1) + sweep.ROTATION_GRACE
    assert Sweeper.retired_at((2024, 12)) == month_start(2025, 2) + sweep.ROTATION_GRACE


def test_run_forever_keeps_going_after_a_failed_pass():
    class Flaky:
        calls = 0

        def run_once(self):
            self.calls += 1
            if self.calls == 1:
                raise RuntimeError("store not up yet")

    delays = []

    def sleep(seconds):
        delays.append(seconds)
        if len(delays) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_forever(Flaky(), 3600, retry=60, sleep=sleep)
    assert delays == [60, 3600, 3600]


def _cli(settings, *argv, **env):
    environ = dict(os.environ, CONNNODE_AWS_DDB_ENDPOINT=settings.aws_ddb_endpoint,
                   CONNNODE_ROUTER_TABLENAME=settings.router_tablename,
                   CONNNODE_MESSAGE_TABLENAME=settings.message_tablename,
                   CONNNODE_CRYPTO_KEY=settings.crypto_key, **env)
    return subprocess.run([sys.executable, "-m", "connnode.cli", *argv], env=environ,
                          capture_output=True, text=True, timeout=30)


def test_cli_db_sweep_prints_the_counts(storage):
    now = int(time.time())
    put(storage, storage.rotation.current, **message(UAID_A, f"02:{10**15}:{CHID}", now - 1))
    done = _cli(storage.settings, "db", "sweep")
    assert done.returncode == 0, done.stderr
    assert f"{storage.rotation.current}: 1 expired items deleted" in done.stdout
    assert "tables dropped: none" in done.stdout


def test_cli_sweeper_refuses_a_store_that_is_not_embedded(settings):
    done = _cli(settings, "sweeper", CONNNODE_RUN_EMBEDDED="false")
    assert done.returncode == 0
    assert "not the embedded dynalite" in done.stderr and "TTL" in done.stderr
    done = _cli(settings, "sweeper", CONNNODE_RUN_EMBEDDED="true", CONNNODE_SWEEP_INTERVAL="0")
    assert done.returncode == 0 and "disabled" in done.stderr
