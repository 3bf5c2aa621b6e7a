"""The Session state machine driven without sockets: frames in, frames out.

Storage is real (dynalite); throttling, which dynalite cannot produce, is
injected by a wrapper that raises ThroughputError for chosen operations."""
import time
import uuid

import gevent
import pytest
import simplejson as json

from connnode.connection import drain as drain_module
from connnode.connection import session as session_module
from connnode.connection.node import Node
from connnode.connection.session import READY, Session
from connnode.db.dynamo import ThroughputError
from connnode.db.storage import Storage
from connnode.notification import Notification
from tests.conftest import make_settings
from tests.fakes import FakeTransport, RecordingMetrics

WAIT = 5.0


class FakeNodeClient:
    def __init__(self):
        self.calls = []

    def put(self, url, json_body=None):
        self.calls.append(("PUT", url))
        return 200

    def delete(self, url):
        self.calls.append(("DELETE", url))
        return 200


class Throttle:
    """Wraps a table object; listed operations raise ThroughputError."""

    def __init__(self, target, *operations):
        self._target = target
        self._operations = set(operations)

    def __getattr__(self, name):
        if name in self._operations:
            def throttled(*args, **kwargs):
                raise ThroughputError(f"{name}: ProvisionedThroughputExceededException")
            return throttled
        return getattr(self._target, name)


@pytest.fixture
def node(dynalite):
    settings = make_settings(dynalite, hello_timeout=0, auto_ping_interval=0, msg_limit=20)
    storage = Storage(settings)
    storage.create_tables()
    return Node(settings, storage, RecordingMetrics(), FakeNodeClient(), "http://127.0.0.1:9")


def connect(node):
    transport = FakeTransport()
    node.connections += 1
    return Session(node.context, transport, int(time.time() * 1000)), transport


def wait_until(predicate, timeout=WAIT):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        gevent.sleep(0.005)


def hello(session, transport, uaid=None, **extra):
    frame = {"messageType": "hello", "use_webpush": True, **extra}
    if uaid:
        frame["uaid"] = uaid
    session.on_text(json.dumps(frame))
    return transport.frames("hello")[-1]


def stored_message(node, uaid, chid, ttl=60, topic=None, data="aGk"):
    skt = None if topic else int(time.time() * 1_000_000)
    version = node.storage.crypto.message_id(uaid, chid, topic=topic, sortkey_timestamp=skt)
    message = Notification(uaid, chid, version, ttl, int(time.time()), topic=topic,
                           sortkey_timestamp=skt, data=data, headers={"encoding": "aes128gcm"})
    node.storage.current_table.store_message(message)
    return message


def close(session, transport):
    transport.close(1000)
    session.on_closed()


# -- hello ------------------------------------------------------------------------

def test_hello_new_user(node):
    session, transport = connect(node)
    reply = hello(session, transport)
    assert reply["status"] == 200 and len(reply["uaid"]) == 32 and reply["broadcasts"] == {}
    assert reply["env"] == "development" and "ping" not in reply
    record = node.storage.router.get_uaid(reply["uaid"])
    assert record["node_id"] == node.node_id and record["connected_at"] == session.connected_at
    assert record["current_month"] == node.storage.rotation.current and record["record_version"] == 1
    assert node.registry.get(reply["uaid"]) is session and session.state == READY
    assert ("ua.command.hello", 1, {"ua_os_family": "Other", "ua_browser_family": "Other",
                                    "host": ""}) in node.metrics.calls


def test_hello_returning_user_keeps_uaid(node):
    first, transport1 = connect(node)
    uaid = hello(first, transport1)["uaid"]
    close(first, transport1)
    second, transport2 = connect(node)
    assert hello(second, transport2, uaid)["uaid"] == uaid


def test_hello_checks_storage_for_a_resumed_user_only(node, monkeypatch):
    from connnode.db.message import MessageTable
    fetched = []
    real = MessageTable.fetch_topic_phase
    monkeypatch.setattr(MessageTable, "fetch_topic_phase",
                        lambda table, uaid: fetched.append(uaid) or real(table, uaid))
    first, transport1 = connect(node)
    uaid = hello(first, transport1)["uaid"]
    gevent.sleep(0.05)
    assert fetched == [] and not first.draining  # a uaid minted by this hello has nothing stored
    close(first, transport1)
    second, transport2 = connect(node)
    assert hello(second, transport2, uaid)["uaid"] == uaid
    wait_until(lambda: fetched == [uaid])


def test_resumed_hello_with_a_small_mailbox_makes_two_storage_calls(node, monkeypatch):
    first, transport1 = connect(node)
    uaid = hello(first, transport1)["uaid"]
    close(first, transport1)
    message = stored_message(node, uaid, str(uuid.uuid4()))
    calls = []
    real_call = node.storage.dynamo.call
    monkeypatch.setattr(node.storage.dynamo, "call",
                        lambda operation, **kw: calls.append(operation) or real_call(operation, **kw))
    second, transport2 = connect(node)
    hello(second, transport2, uaid)
    wait_until(lambda: transport2.frames("notification"))
    assert transport2.frames("notification")[0]["version"] == message.version
    assert calls == ["update_item", "query"]  # the hello write (returns the record), whole mailbox


def test_hello_unknown_uaid_gets_a_new_one(node):
    session, transport = connect(node)
    unknown = uuid.uuid4().hex
    assert hello(session, transport, unknown)["uaid"] != unknown


@pytest.mark.parametrize("record,code", [
    ({"connected_at": 1, "current_month": "x"}, "104"),
    ({"router_type": "webpush", "connected_at": 1}, "105"),
    ({"router_type": "webpush", "connected_at": 1, "current_month": "message_1999_01"}, "105"),
])
def test_hello_unusable_record_is_dropped(node, record, code):
    uaid = uuid.uuid4().hex
    node.storage.dynamo.call("put_item", TableName=node.storage.router.name, Item={
        "uaid": {"S": uaid}, **{k: ({"N": str(v)} if isinstance(v, int) else {"S": v})
                                for k, v in record.items()}})
    session, transport = connect(node)
    assert hello(session, transport, uaid)["uaid"] != uaid
    assert [c for c in node.metrics.calls if c[0] == "ua.expiration"][0][2]["code"] == code
    wait_until(lambda: node.storage.router.get_uaid(uaid) is None)


def test_hello_without_use_webpush_and_duplicate_hello(node):
    session, transport = connect(node)
    session.on_text('{"messageType":"hello"}')
    assert transport.frames("hello")[-1]["reason"] == "Simplepush not supported"
    assert transport.close_code == 1002
    session, transport = connect(node)
    hello(session, transport)
    reply = hello(session, transport)
    assert (reply["status"], reply["reason"], transport.close_code) == (401, "duplicate hello", 1002)


def test_first_frame_must_be_hello(node):
    session, transport = connect(node)
    session.on_text("{}")
    assert transport.close_code == 1002 and transport.sent == []


def test_hello_already_connected_locally(node):
    newer, t_newer = connect(node)
    uaid = hello(newer, t_newer)["uaid"]
    older, t_older = connect(node)
    older.connected_at = newer.connected_at - 1
    reply = hello(older, t_older, uaid)
    assert (reply["status"], reply["reason"], t_older.close_code) == (500, "already_connected", 1000)
    assert node.registry.get(uaid) is newer


def test_hello_already_connected_by_router_condition(node):
    session, transport = connect(node)
    uaid = hello(session, transport)["uaid"]
    node.registry.release(session)  # as if the newer connection were on another node
    older, t_older = connect(node)
    older.connected_at = session.connected_at - 5
    reply = hello(older, t_older, uaid)
    assert reply["reason"] == "already_connected" and t_older.close_code == 1000
    assert node.registry.get(uaid) is None


def test_newer_connection_supersedes_older_in_same_process(node):
    first, t1 = connect(node)
    uaid = hello(first, t1)["uaid"]
    second, t2 = connect(node)
    second.connected_at = first.connected_at + 1
    hello(second, t2, uaid)
    wait_until(lambda: t1.close_code == 1000)
    assert node.registry.get(uaid) is second


def test_hello_evicts_connection_on_other_node(node):
    uaid = uuid.uuid4().hex
    node.storage.router.register_user({
        "uaid": uaid, "node_id": "http://other:8101", "connected_at": 1000,
        "router_type": "webpush", "current_month": node.storage.rotation.current,
        "record_version": 1, "last_connect": 1})
    session, transport = connect(node)
    hello(session, transport, uaid)
    wait_until(lambda: node.node_client.calls)
    assert node.node_client.calls == [("DELETE", f"http://other:8101/notif/{uaid}/1000")]


def test_hello_overload_waits_then_503_and_1011(node, monkeypatch):
    monkeypatch.setattr(session_module, "HELLO_OVERLOAD_WAIT", (0, 0))
    node.storage.router = Throttle(node.storage.router, "register_user")
    session, transport = connect(node)
    reply = hello(session, transport)
    assert (reply["status"], reply["reason"], transport.close_code) == (503, "error - overloaded", 1011)
    assert len(node.registry) == 0


def test_hello_other_storage_error_503_error(node):
    class Broken:
        def __getattr__(self, name):
            def fail(*args, **kwargs):
                from connnode.db.dynamo import StorageError
                raise StorageError("boom")
            return fail
    node.storage.router = Broken()
    session, transport = connect(node)
    reply = hello(session, transport, uuid.uuid4().hex)
    assert (reply["status"], reply["reason"], transport.close_code) == (503, "error", 1011)


# -- register / unregister ---------------------------------------------------------

def test_register_and_unregister(node):
    session, transport = connect(node)
    uaid = hello(session, transport)["uaid"]
    chid = str(uuid.uuid4())
    session.on_text(json.dumps({"messageType": "register", "channelID": chid}))
    reply = transport.frames("register")[-1]
    assert reply["status"] == 200 and "/wpush/v1/" in reply["pushEndpoint"]
    assert node.storage.current_table.all_channels(uaid) == (True, {chid})
    session.on_text(json.dumps({"messageType": "unregister", "channelID": chid, "code": 200}))
    assert transport.frames("unregister")[-1] == {
        "messageType": "unregister", "channelID": chid, "code": 200, "status": 200}
    wait_until(lambda: node.storage.current_table.all_channels(uaid) == (True, set()))
    assert transport.close_code is None


def test_register_overloaded_keeps_connection(node):
    session, transport = connect(node)
    hello(session, transport)
    session.table = Throttle(session.table, "register_channel")
    session.on_text(json.dumps({"messageType": "register", "channelID": str(uuid.uuid4())}))
    assert transport.sent[-1] == {"messageType": "error", "reason": "overloaded", "status": 503}
    assert transport.close_code is None


def test_register_storage_error_500_keeps_connection(node):
    session, transport = connect(node)
    hello(session, transport)

    class BrokenTable:
        def register_channel(self, uaid, chid):
            from connnode.db.dynamo import StorageError
            raise StorageError("table gone")
    session.table = BrokenTable()
    chid = str(uuid.uuid4())
    session.on_text(json.dumps({"messageType": "register", "channelID": chid}))
    assert transport.sent[-1] == {"messageType": "register", "channelID": chid, "status": 500,
                                  "reason": "An unexpected server error occurred"}
    assert transport.close_code is None


def test_register_errors_keep_connection(node):
    session, transport = connect(node)
    hello(session, transport)
    session.on_text('{"messageType":"register"}')
    session.on_text('{"messageType":"register","channelID":"nope"}')
    session.on_text(json.dumps({"messageType": "register", "channelID": str(uuid.uuid4()),
                                "key": "AAAA"}))
    assert [f["status"] for f in transport.frames("register")] == [401, 401, 400]
    assert transport.close_code is None


# -- pings, nack, broadcast ----------------------------------------------------------

def test_client_ping_rules(node):
    session, transport = connect(node)
    hello(session, transport)
    session.on_text("{}")
    assert transport.sent[-1] == {}
    session.on_text('{"messageType":"ping"}')
    assert transport.close_code == 4774


def test_nack_and_broadcast_subscribe(node):
    session, transport = connect(node)
    hello(session, transport)
    count = len(transport.sent)
    session.on_text('{"messageType":"nack","version":"abc","code":301}')
    session.on_text('{"messageType":"nack","code":301}')
    session.on_text('{"messageType":"broadcast_subscribe","broadcasts":{"x":"1"}}')
    assert len(transport.sent) == count and transport.close_code is None
    nacks = [c for c in node.metrics.calls if c[0] == "ua.command.nack"]
    assert len(nacks) == 1 and nacks[0][2]["code"] == 301


# -- delivery ------------------------------------------------------------------------

def test_stored_messages_drained_in_order_and_acked(node):
    session, transport = connect(node)
    uaid = hello(session, transport)["uaid"]
    close(session, transport)
    chid = str(uuid.uuid4())
    messages = [stored_message(node, uaid, chid) for _ in range(3)]
    session, transport = connect(node)
    hello(session, transport, uaid)
    wait_until(lambda: len(transport.frames("notification")) == 3)
    assert [f["version"] for f in transport.frames("notification")] == [m.version for m in messages]
    session.on_text(json.dumps({"messageType": "ack", "updates": [
        {"channelID": chid, "version": m.version} for m in messages]}))
    assert node.storage.current_table.fetch_messages(uaid)[0] == messages[-1].sortkey_timestamp


def test_topic_ack_deletes_with_updateid(node):
    session, transport = connect(node)
    uaid = hello(session, transport)["uaid"]
    close(session, transport)
    chid = str(uuid.uuid4())
    old = stored_message(node, uaid, chid, topic="t")
    session, transport = connect(node)
    hello(session, transport, uaid)
    wait_until(lambda: transport.frames("notification"))
    newer = stored_message(node, uaid, chid, topic="t")
    session.on_text(json.dumps({"messageType": "ack", "updates": [
        {"channelID": chid, "version": old.version}]}))
    _, items = node.storage.current_table.fetch_messages(uaid)
    assert [item.version for item in items] == [newer.version]


def test_msg_limit_resets_user(node):
    session, transport = connect(node)
    uaid = hello(session, transport)["uaid"]
    close(session, transport)
    chid = str(uuid.uuid4())
    for _ in range(21):
        stored_message(node, uaid, chid)
    session, transport = connect(node)
    hello(session, transport, uaid)
    for _ in range(3):
        wait_until(lambda: session.batch or transport.close_code)
        if transport.close_code:
            break
        session.on_text(json.dumps({"messageType": "ack", "updates": [
            {"channelID": c, "version": v} for (c, v) in list(session.batch)]}))
    wait_until(lambda: transport.close_code == 1000)
    assert len(transport.frames("notification")) == 20
    assert node.storage.router.get_uaid(uaid) is None


def test_direct_delivery_and_save_on_close(node):
    session, transport = connect(node)
    uaid = hello(session, transport)["uaid"]
    chid = str(uuid.uuid4())
    skt = int(time.time() * 1_000_000)
    message = Notification(uaid, chid, node.storage.crypto.message_id(uaid, chid, sortkey_timestamp=skt),
                           60, int(time.time()), sortkey_timestamp=skt, data="eA")
    zero = Notification(uaid, chid, "v0", 0, int(time.time()), sortkey_timestamp=skt + 1)
    assert session.deliver_direct(message) and session.deliver_direct(zero)
    assert [f["version"] for f in transport.frames("notification")] == [message.version, "v0"]
    close(session, transport)
    gevent.joinall(node.pending.snapshot(uaid), timeout=WAIT)
    _, items = node.storage.current_table.fetch_timestamp_messages(uaid)
    assert [item.version for item in items] == [message.version]  # TTL 0 never stored


def test_unacked_direct_messages_are_bounded(node):
    session, transport = connect(node)
    uaid = hello(session, transport)["uaid"]
    chid = str(uuid.uuid4())
    for n in range(session_module.MAX_OUTSTANDING_DIRECT):
        assert not session.busy
        session.deliver_direct(Notification(uaid, chid, f"v{n}", 60, int(time.time()),
                                            sortkey_timestamp=n + 1))
    assert session.busy  # the router answers 503 and the endpoint stores instead
    session.on_text(json.dumps({"messageType": "ack", "updates": [
        {"channelID": chid, "version": "v0"}]}))
    assert not session.busy


def test_idle_session_holds_no_containers_of_its_own(node):
    """Memory per idle client: ``direct``/``batch`` share one read-only empty
    mapping and a register count is a plain int until more is counted."""
    session, transport = connect(node)
    uaid = hello(session, transport)["uaid"]
    chid = str(uuid.uuid4())
    session.on_text(json.dumps({"messageType": "register", "channelID": chid}))
    assert transport.frames("register")[-1]["status"] == 200
    assert session.direct is drain_module.NO_ITEMS and session.batch is drain_module.NO_ITEMS
    assert session.stats == {"registers": 1} and session._counts is None
    with pytest.raises(TypeError):
        drain_module.NO_ITEMS["x"] = 1
    assert session.deliver_direct(Notification(uaid, chid, "v1", 60, int(time.time()),
                                               sortkey_timestamp=1))
    assert list(session.direct) == [(chid, "v1")] and not drain_module.NO_ITEMS
    session.on_text(json.dumps({"messageType": "ack", "updates": [{"channelID": chid, "version": "v1"}]}))
    assert session.stats == {"registers": 1, "direct_acked": 1}
    close(session, transport)
    assert session.direct is drain_module.NO_ITEMS and not drain_module.NO_ITEMS

def test_direct_message_queued_behind_hello_reply(node):
    session, transport = connect(node)
    original = node.storage.router.register_user

    def slow_register(record):
        chid = str(uuid.uuid4())
        session.deliver_direct(Notification(record["uaid"], chid, "early", 60, int(time.time()),
                                            sortkey_timestamp=1))
        return original(record)
    node.storage.router.register_user = slow_register
    hello(session, transport)
    assert [f["messageType"] for f in transport.sent[:2]] == ["hello", "notification"]


def test_request_check_busy_and_pending(node):
    session, transport = connect(node)
    hello(session, transport)
    transport.busy = True
    assert session.request_check() == 202
    transport.busy = False
    assert session.request_check() == 200
    assert "ua.notification_check" in node.metrics.names()


def test_storage_check_throughput_error_reschedules(node, monkeypatch):
    session, transport = connect(node)
    hello(session, transport)
    scheduled = []
    monkeypatch.setattr(node.timers, "call_later", lambda delay, *a: scheduled.append(delay))
    session.table = Throttle(session.table, "fetch_topic_phase")
    session.start_check()
    wait_until(lambda: scheduled)
    assert 5 <= scheduled[0] <= 60 and transport.close_code is None


def test_rotation_pending_user_is_moved(node):
    from connnode.db.rotation import shift_month, table_name
    last = table_name(node.settings.message_tablename, *shift_month(*time.gmtime()[:2], -1))
    uaid, chid = uuid.uuid4().hex, str(uuid.uuid4())
    node.storage.router.register_user({
        "uaid": uaid, "connected_at": 1, "router_type": "webpush", "current_month": last,
        "record_version": 1, "last_connect": 1})
    old_table = node.storage.message_table(last)
    old_table.register_channel(uaid, chid)
    skt = int(time.time() * 1_000_000)
    message = Notification(uaid, chid, node.storage.crypto.message_id(uaid, chid, sortkey_timestamp=skt),
                           60, int(time.time()), sortkey_timestamp=skt)
    old_table.store_message(message)
    session, transport = connect(node)
    hello(session, transport, uaid)
    wait_until(lambda: transport.frames("notification"))
    session.on_text(json.dumps({"messageType": "ack", "updates": [
        {"channelID": chid, "version": message.version}]}))
    wait_until(lambda: node.storage.router.get_uaid(uaid)["current_month"] == node.storage.rotation.current)
    assert node.storage.current_table.all_channels(uaid) == (True, {chid})
    assert session.table.name == node.storage.rotation.current


def test_msg_limit_decided_when_the_client_closes_right_after_its_last_ack(node):
    """The drain continuation the 20th ack starts must still find the 21st
    message after the client has gone; the reconnect gets a new uaid."""
    session, transport = connect(node)
    uaid = hello(session, transport)["uaid"]
    close(session, transport)
    chid = str(uuid.uuid4())
    for _ in range(21):
        stored_message(node, uaid, chid)
    session, transport = connect(node)
    hello(session, transport, uaid)
    for _ in range(2):
        wait_until(lambda: session.batch)
        session.on_text(json.dumps({"messageType": "ack", "updates": [
            {"channelID": c, "version": v} for (c, v) in list(session.batch)]}))
    close(session, transport)
    assert len(transport.frames("notification")) == 20
    again, again_transport = connect(node)
    assert hello(again, again_transport, uaid)["uaid"] != uaid
    assert node.storage.router.get_uaid(uaid) is None
