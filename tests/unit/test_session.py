"""The Session state machine on a SessionContext of fakes (``tests/fakes.py``):
frames in, frames out, storage state checked in memory. No dynalite, no
network; ``tests/integration/test_session.py`` runs the same machine on
real storage."""
import hashlib
import time
import uuid

import gevent
import gevent.event
import pytest
import simplejson as json
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from connnode.connection import session as session_module
from connnode.connection.broadcasts import Broadcasts
from connnode.connection.closes import Close
from connnode.connection.drain import NO_ITEMS
from connnode.connection.session import Session
from connnode.connection.states import CLOSING, READY
from connnode.db.dynamo import StorageError, StorageUnavailable, ThroughputError
from connnode.encoding import b64url_encode
from connnode.notification import Notification
from connnode.settings import Settings
from tests.conftest import TEST_CRYPTO_KEY
from tests.fakes import NODE_ID, FakeRouter, FakeTransport, _Operations, make_context, stop_context

WAIT = 2.0
ENDPOINT_URL = "https://push.example.com"
OTHER_NODE = "http://10.0.0.2:8101"


def wait_until(predicate, timeout=WAIT):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        gevent.sleep(0.005)


@pytest.fixture
def make_ctx():
    """Build a context with settings overrides; its timers stop at teardown."""
    built = []

    def build(**overrides):
        options = {"crypto_key": TEST_CRYPTO_KEY, "hostname": "127.0.0.1", "statsd_host": "",
                   "endpoint_url": ENDPOINT_URL, "hello_timeout": 0, "auto_ping_interval": 0,
                   "msg_limit": 20}
        options.update(overrides)
        ctx = make_context(Settings(**options))
        built.append(ctx)
        return ctx

    yield build
    for ctx in built:
        stop_context(ctx)


@pytest.fixture
def ctx(make_ctx):
    return make_ctx()


def connect(ctx, connected_at=None):
    transport = FakeTransport()
    return Session(ctx, transport, connected_at or int(time.time() * 1000)), transport


def hello(session, transport, uaid=None, **extra):
    frame = {"messageType": "hello", "use_webpush": True, **extra}
    if uaid:
        frame["uaid"] = uaid
    session.on_text(json.dumps(frame))
    return transport.frames("hello")[-1]


def send(session, **frame):
    session.on_text(json.dumps(frame))


def ack(session, *notifications):
    send(session, messageType="ack",
         updates=[{"channelID": n["channelID"] if isinstance(n, dict) else n.chid,
                   "version": n["version"] if isinstance(n, dict) else n.version, "code": 100}
                  for n in notifications])


def known_user(ctx, uaid=None, **fields):
    """A router record as a previous connection left it (node_id cleared)."""
    uaid = uaid or uuid.uuid4().hex
    record = {"uaid": uaid, "router_type": "webpush", "connected_at": 1000,
              "current_month": ctx.storage.rotation.current, "record_version": 1,
              "last_connect": 1, "expiry": int(time.time()) + 3600}
    record.update(fields)
    ctx.storage.router.records[uaid] = record
    return uaid


_skt = int(time.time() * 1_000_000)


def next_skt():
    global _skt
    _skt += 1
    return _skt


def stored(ctx, uaid, chid, topic=None, ttl=60, data="aGk"):
    """Store one message in the current table as the endpoint would."""
    skt = None if topic else next_skt()
    version = ctx.storage.crypto.message_id(uaid, chid, topic=topic, sortkey_timestamp=skt)
    message = Notification(uaid, chid, version, ttl, int(time.time()), topic=topic,
                           sortkey_timestamp=skt, data=data, headers={"encoding": "aes128gcm"})
    ctx.storage.current_table.store_message(message)
    return message


def direct(uaid, chid, ttl=60, stored_in=None):
    """A message as PUT /push hands it over."""
    skt = next_skt()
    return Notification(uaid, chid, f"v{skt}", ttl, int(time.time()), sortkey_timestamp=skt,
                        data="eA", stored_in=stored_in)


def end(session, transport):
    """The client's close: the transport closes, then the session ends."""
    transport.close(1000)
    session.on_closed()


def settled(ctx, uaid):
    """No storage write of ``uaid`` is pending."""
    return not ctx.pending.snapshot(uaid)


# -- the fake's router condition (what the hello tests rely on) ----------------------

def test_fake_register_user_condition_matches_router_table():
    router = FakeRouter(_Operations(), 60)
    base = {"uaid": "u", "router_type": "webpush", "connected_at": 10}
    assert router.register_user(dict(base)) == (True, {})  # new item
    assert router.register_user(dict(base, node_id="a")) == (True, base)  # no node_id yet
    assert router.register_user(dict(base, node_id="b", connected_at=10)) == (False, {})  # not older
    assert router.register_user(dict(base, node_id="b", router_type="gcm", connected_at=11)) \
        == (False, {})
    written, old = router.register_user(dict(base, node_id="b", connected_at=11))
    assert written and old["node_id"] == "a" and router.records["u"]["node_id"] == "b"
    with pytest.raises(ValueError):
        router.register_user({"uaid": "u", "connected_at": 12})


# -- hello (2.4) ---------------------------------------------------------------------

def test_hello_new_uaid_replies_and_writes_the_record(ctx):
    session, transport = connect(ctx)
    reply = hello(session, transport)
    uaid = reply["uaid"]
    assert reply == {"messageType": "hello", "uaid": uaid, "status": 200, "use_webpush": True,
                     "env": "development", "broadcasts": {}}
    assert len(uaid) == 32 and int(uaid, 16) >= 0
    record = ctx.storage.router.records[uaid]
    assert record["node_id"] == NODE_ID and record["connected_at"] == session.connected_at
    assert record["router_type"] == "webpush" and record["record_version"] == 1
    assert record["current_month"] == ctx.storage.rotation.current
    assert session.state == READY and ctx.registry.get(uaid) is session
    assert session.table is ctx.storage.current_table
    assert "ua.command.hello" in ctx.metrics.names()
    assert not session.draining  # a uaid minted by this hello has nothing stored: no check
    assert ctx.peers.calls == [] and transport.close_code is None


def test_hello_ping_field_when_auto_ping_is_on(make_ctx):
    ctx = make_ctx(auto_ping_interval=300)
    session, transport = connect(ctx)
    assert hello(session, transport)["ping"] == 300


def test_hello_resumes_known_uaid_and_drains_after_the_reply(ctx):
    uaid = known_user(ctx)
    chid = str(uuid.uuid4())
    ctx.storage.current_table.register_channel(uaid, chid)
    messages = [stored(ctx, uaid, chid, topic="t"), stored(ctx, uaid, chid)]
    session, transport = connect(ctx)
    reply = hello(session, transport, uaid)
    assert reply["uaid"] == uaid and reply["status"] == 200
    wait_until(lambda: len(transport.frames("notification")) == 1)  # topic phase first
    assert transport.sent[0]["messageType"] == "hello"
    assert transport.sent[1] == {"messageType": "notification", "channelID": chid,
                                 "version": messages[0].version, "data": "aGk",
                                 "headers": {"encoding": "aes128gcm"}}
    record = ctx.storage.router.records[uaid]
    assert record["node_id"] == NODE_ID and record["connected_at"] == session.connected_at
    assert ctx.peers.calls == []  # the old record named no node


def test_resumed_hello_writes_once_and_keeps_the_rest_of_the_record(ctx):
    month = time.strftime("%Y%m", time.gmtime())
    uaid = known_user(ctx, last_connect=int(month + "010007"), record_version=1)
    before = dict(ctx.storage.router.records[uaid])
    session, transport = connect(ctx)
    assert hello(session, transport, uaid)["uaid"] == uaid
    assert [name for name, _ in ctx.storage.calls][:1] == ["resume_user"]
    assert "get_uaid" not in [name for name, _ in ctx.storage.calls]
    record = ctx.storage.router.records[uaid]
    assert {k: record[k] for k in ("current_month", "record_version", "last_connect", "router_type")} \
        == {k: before[k] for k in ("current_month", "record_version", "last_connect", "router_type")}
    assert (record["node_id"], record["connected_at"]) == (NODE_ID, session.connected_at)
    assert not ctx.storage.called("refresh_last_connect")  # already this month's


def test_first_hello_of_a_month_refreshes_last_connect(ctx):
    uaid = known_user(ctx, last_connect=202001010007)
    session, transport = connect(ctx)
    assert hello(session, transport, uaid)["uaid"] == uaid
    wait_until(lambda: ctx.storage.called("refresh_last_connect"))
    month = time.strftime("%Y%m", time.gmtime())
    assert str(ctx.storage.router.records[uaid]["last_connect"]).startswith(month)


@pytest.mark.parametrize("fields,code", [
    ({"connected_at": None}, "104"),
    ({"router_type": None}, "104"),
    ({"current_month": None}, "105"),
    ({"current_month": "message_1999_01"}, "105"),
])
def test_resumed_hello_with_an_unusable_record_drops_it_and_mints_a_uaid(ctx, fields, code):
    uaid = known_user(ctx)
    for name, value in fields.items():
        if value is None:
            del ctx.storage.router.records[uaid][name]
        else:
            ctx.storage.router.records[uaid][name] = value
    session, transport = connect(ctx)
    new = hello(session, transport, uaid)["uaid"]
    assert new != uaid and ctx.registry.get(new) is session and ctx.registry.get(uaid) is None
    assert [tags["code"] for name, _, tags in ctx.metrics.calls if name == "ua.expiration"] == [code]
    wait_until(lambda: uaid not in ctx.storage.router.records)
    assert ctx.storage.router.records[new]["node_id"] == NODE_ID


def test_resumed_hello_retried_after_its_write_succeeded_is_resumed(ctx):
    """botocore's retry of a write whose first attempt succeeded is refused
    by its own condition; the record names this connection: success."""
    uaid = known_user(ctx)
    session, transport = connect(ctx)
    real = ctx.storage.router.resume_user

    def retried(*args):
        real(*args)        # the first attempt: written, its answer lost
        return real(*args)  # the retry: refused, the record read back
    ctx.storage.router.resume_user = retried
    reply = hello(session, transport, uaid)
    assert (reply["status"], reply["uaid"]) == (200, uaid)
    assert ctx.registry.get(uaid) is session


def test_hello_evicts_the_previous_connection_on_another_node(ctx):
    uaid = known_user(ctx, node_id=OTHER_NODE, connected_at=1000)
    session, transport = connect(ctx)
    assert hello(session, transport, uaid)["uaid"] == uaid
    wait_until(lambda: ctx.peers.calls)
    assert ctx.peers.calls == [("evict", OTHER_NODE, uaid, 1000)]


def test_hello_with_unknown_uaid_gets_a_new_one(ctx):
    unknown = uuid.uuid4().hex
    session, transport = connect(ctx)
    uaid = hello(session, transport, unknown)["uaid"]
    assert uaid != unknown and uaid in ctx.storage.router.records


def test_hello_already_connected_when_the_record_is_newer(ctx):
    session, transport = connect(ctx)
    uaid = known_user(ctx, node_id=OTHER_NODE, connected_at=session.connected_at + 5)
    reply = hello(session, transport, uaid)
    assert (reply["status"], reply["reason"]) == (500, "already_connected")
    assert transport.close_code == Close.ALREADY_CONNECTED.code
    assert ctx.registry.get(uaid) is None
    assert ctx.storage.router.records[uaid]["node_id"] == OTHER_NODE  # untouched


def test_duplicate_hello_is_401_and_1002(ctx):
    session, transport = connect(ctx)
    uaid = hello(session, transport)["uaid"]
    reply = hello(session, transport)
    assert (reply["status"], reply["reason"]) == (401, "duplicate hello")
    assert (transport.close_code, transport.close_reason) == (
        Close.DUPLICATE_HELLO.code, Close.DUPLICATE_HELLO.reason)
    assert transport.close_code == 1002
    assert ctx.registry.get(uaid) is None and session.state == CLOSING


@pytest.mark.parametrize("extra", [{}, {"use_webpush": False}, {"use_webpush": 0},
                                   {"use_webpush": ""}, {"use_webpush": None}])
def test_hello_without_use_webpush_is_401_and_1002(ctx, extra):
    session, transport = connect(ctx)
    session.on_text(json.dumps({"messageType": "hello", **extra}))
    assert transport.sent == [{"messageType": "hello", "status": 401,
                               "reason": "Simplepush not supported",
                               "more_info": transport.sent[0]["more_info"]}]
    assert transport.close_code == Close.SIMPLEPUSH.code == 1002
    assert ctx.storage.router.records == {} and len(ctx.registry) == 0


@pytest.mark.parametrize("operation,resume", [("resume_user", True), ("register_user", False)])
def test_hello_storage_error_is_503_error_and_1011(ctx, operation, resume):
    ctx.storage.fail(operation, StorageError("boom"))
    session, transport = connect(ctx)
    reply = hello(session, transport, uuid.uuid4().hex if resume else None)
    assert (reply["status"], reply["reason"]) == (503, "error")
    assert transport.close_code == Close.HELLO_STORAGE_ERROR.code == 1011
    assert ctx.storage.router.records == {} and len(ctx.registry) == 0


@pytest.mark.parametrize("operation,resume", [("resume_user", True), ("register_user", False)])
@pytest.mark.parametrize("error, wait", [
    # 2.4.2: a throughput error answers after its wait (0 here, for the test)
    (ThroughputError("ProvisionedThroughputExceededException"), (0, 0)),
    # Timeouts and closed connections to the store (retries spent) are a
    # congested store in a connect storm (issue 16): the overload answer at
    # once, never 503 "error"; a 60 s wait would hang the test.
    (StorageUnavailable("update_item: Read timeout"), (60, 60)),
], ids=["throughput", "unavailable"])
def test_hello_overloaded_storage_is_503_overloaded_and_1011(ctx, monkeypatch, operation, resume,
                                                             error, wait):
    monkeypatch.setattr(session_module, "HELLO_OVERLOAD_WAIT", wait)
    ctx.storage.fail(operation, error)
    session, transport = connect(ctx)
    reply = hello(session, transport, uuid.uuid4().hex if resume else None)
    assert (reply["status"], reply["reason"]) == (503, "error - overloaded")
    assert transport.close_code == Close.HELLO_OVERLOADED.code == 1011
    assert ctx.storage.router.records == {} and len(ctx.registry) == 0


@pytest.mark.parametrize("operation,resume", [("resume_user", True), ("register_user", False)])
def test_hello_past_its_storage_deadline_is_503_overloaded_at_once(make_ctx, operation, resume):
    """A storage call that does not come back (a store buried by a connect
    storm, or a long wait for a storage turn) ends the hello at
    hello_storage_timeout with the overload answer, never a 500."""
    ctx = make_ctx(hello_storage_timeout=0.2)
    stuck = gevent.event.Event()
    setattr(ctx.storage.router, operation, lambda *args: stuck.wait(30))
    session, transport = connect(ctx)
    started = time.monotonic()
    reply = hello(session, transport, uuid.uuid4().hex if resume else None)
    assert time.monotonic() - started < 1.0
    assert (reply["status"], reply["reason"]) == (503, "error - overloaded")
    assert transport.close_code == Close.HELLO_OVERLOADED.code == 1011
    assert len(ctx.registry) == 0
    stuck.set()


def test_direct_message_during_hello_is_queued_behind_the_reply(ctx):
    session, transport = connect(ctx)
    chid = str(uuid.uuid4())
    real = ctx.storage.router.register_user

    def register_user(record):  # a PUT /push arrives while the record is written
        assert session.deliver_direct(direct(record["uaid"], chid))
        return real(record)
    ctx.storage.router.register_user = register_user
    hello(session, transport)
    assert [f["messageType"] for f in transport.sent] == ["hello", "notification"]


# -- frame dispatch (2.2) -----------------------------------------------------------

@pytest.mark.parametrize("text", ["{}", '{"messageType":"ping"}',
                                  '{"messageType":"register","channelID":"x"}',
                                  '{"use_webpush":true}'])
def test_first_frame_not_hello_closes_1002(ctx, text):
    session, transport = connect(ctx)
    session.on_text(text)
    assert transport.close_code == Close.HELLO_FIRST.code == 1002
    assert transport.close_reason == Close.HELLO_FIRST.reason and transport.sent == []
    assert ctx.storage.calls == []


@pytest.mark.parametrize("after_hello", [False, True])
def test_invalid_json_closes_1002(ctx, after_hello):
    session, transport = connect(ctx)
    if after_hello:
        hello(session, transport)
    sent = len(transport.sent)
    session.on_text('{"messageType": "hello",')
    assert (transport.close_code, transport.close_reason) == (1002, Close.INVALID_JSON.reason)
    assert len(transport.sent) == sent
    session.on_text("{}")  # nothing is handled once closing
    assert len(transport.sent) == sent


def test_unknown_message_type_after_hello_closes_1002(ctx):
    session, transport = connect(ctx)
    hello(session, transport)
    send(session, messageType="Register", channelID=str(uuid.uuid4()))
    assert transport.close_code == Close.UNKNOWN_MESSAGE_TYPE.code == 1002


# -- register / unregister (2.5, 2.6) -----------------------------------------------

def test_register_replies_with_a_v1_endpoint_under_endpoint_url(ctx):
    session, transport = connect(ctx)
    uaid = hello(session, transport)["uaid"]
    chid = str(uuid.uuid4())
    send(session, messageType="register", channelID=chid)
    reply = transport.sent[-1]
    assert (reply["messageType"], reply["channelID"], reply["status"]) == ("register", chid, 200)
    prefix = f"{ENDPOINT_URL}/wpush/v1/"
    assert reply["pushEndpoint"].startswith(prefix)
    token = reply["pushEndpoint"][len(prefix):]
    assert ctx.storage.crypto.parse_endpoint_token(token, key_bound=False) == (uaid, chid, None)
    assert ctx.storage.current_table.all_channels(uaid) == (True, {chid})
    assert "ua.command.register" in ctx.metrics.names() and session.registers == 1


def test_register_with_a_key_gets_a_v2_endpoint(ctx):
    session, transport = connect(ctx)
    uaid = hello(session, transport)["uaid"]
    chid = str(uuid.uuid4())
    key = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        Encoding.X962, PublicFormat.UncompressedPoint)
    send(session, messageType="register", channelID=chid, key=b64url_encode(key))
    prefix = f"{ENDPOINT_URL}/wpush/v2/"
    endpoint = transport.sent[-1]["pushEndpoint"]
    assert endpoint.startswith(prefix)
    assert ctx.storage.crypto.parse_endpoint_token(endpoint[len(prefix):], key_bound=True) == (
        uaid, chid, hashlib.sha256(key).digest())


def test_register_validation_errors_keep_the_connection(ctx):
    session, transport = connect(ctx)
    uaid = hello(session, transport)["uaid"]
    chid = str(uuid.uuid4())
    send(session, messageType="register")
    send(session, messageType="register", channelID="nope")
    send(session, messageType="register", channelID=chid.upper())
    send(session, messageType="register", channelID=chid, key="AAAA")
    replies = [(f["status"], f["reason"]) for f in transport.frames("register")]
    assert replies == [(401, "Missing ChannelID"), (401, "Invalid UUID specified"),
                       (401, "Bad UUID format, use lower case, dashed format"),
                       (400, "Invalid key")]
    assert transport.close_code is None and session.state == READY
    assert ctx.storage.called("register_channel") == []
    send(session, messageType="register", channelID=chid)  # still served
    assert transport.sent[-1]["status"] == 200
    assert ctx.storage.current_table.all_channels(uaid) == (True, {chid})


@pytest.mark.parametrize("error,expected", [
    (ThroughputError("slow"), lambda chid: {"messageType": "error", "reason": "overloaded",
                                            "status": 503}),
    (StorageError("gone"), lambda chid: {"messageType": "register", "channelID": chid,
                                         "status": 500,
                                         "reason": "An unexpected server error occurred"}),
])
def test_register_storage_failure_keeps_the_connection(ctx, error, expected):
    session, transport = connect(ctx)
    hello(session, transport)
    ctx.storage.fail("register_channel", error)
    chid = str(uuid.uuid4())
    send(session, messageType="register", channelID=chid)
    assert transport.sent[-1] == expected(chid)
    assert transport.close_code is None and session.registers == 0


def test_unregister_replies_at_once_and_removes_the_channel(ctx):
    session, transport = connect(ctx)
    uaid = hello(session, transport)["uaid"]
    chid, other = str(uuid.uuid4()), str(uuid.uuid4())
    send(session, messageType="register", channelID=chid)
    send(session, messageType="register", channelID=other)
    send(session, messageType="unregister", channelID=chid.replace("-", "").upper(), code=200)
    assert transport.sent[-1] == {"messageType": "unregister",
                                  "channelID": chid.replace("-", "").upper(), "code": 200,
                                  "status": 200}
    wait_until(lambda: ctx.storage.current_table.all_channels(uaid) == (True, {other}))
    assert ctx.storage.called("unregister_channel") == [(uaid, chid)]  # canonical chid
    assert "ua.command.unregister" in ctx.metrics.names() and transport.close_code is None


def test_unregister_is_retried_until_it_succeeds(ctx):
    session, transport = connect(ctx)
    uaid = hello(session, transport)["uaid"]
    chid = str(uuid.uuid4())
    send(session, messageType="register", channelID=chid)
    ctx.storage.fail("unregister_channel", StorageError("blip"), times=1)
    send(session, messageType="unregister", channelID=chid)
    assert transport.sent[-1]["status"] == 200
    wait_until(lambda: ctx.storage.current_table.all_channels(uaid) == (True, set()))
    assert len(ctx.storage.called("unregister_channel")) == 2


def test_unregister_forgets_outstanding_direct_messages_of_its_channel(ctx):
    session, transport = connect(ctx)
    uaid = hello(session, transport)["uaid"]
    chid, other = str(uuid.uuid4()), str(uuid.uuid4())
    gone, kept = direct(uaid, chid), direct(uaid, other)
    assert session.deliver_direct(gone) and session.deliver_direct(kept)
    send(session, messageType="unregister", channelID=chid)
    assert list(session.direct) == [(other, kept.version)]
    end(session, transport)
    wait_until(lambda: settled(ctx, uaid))
    assert ctx.storage.current_table.messages(uaid) == [kept.sort_key]


def test_unregister_acks_outstanding_stored_messages_of_its_channel(ctx):
    uaid = known_user(ctx)
    chid = str(uuid.uuid4())
    message = stored(ctx, uaid, chid, topic="t")
    session, transport = connect(ctx)
    hello(session, transport, uaid)
    wait_until(lambda: transport.frames("notification"))
    send(session, messageType="unregister", channelID=chid)
    assert ctx.storage.current_table.messages(uaid) == []
    assert ctx.storage.called("delete_message") == [(uaid, message.sort_key, message.version)]


# -- ping, nack, broadcast (2.9-2.11) ---------------------------------------------------

def test_ping_is_answered_with_an_empty_object(ctx):
    session, transport = connect(ctx)
    hello(session, transport)
    session.on_text("{}")
    assert transport.sent[-1] == {}
    session.last_ping -= ctx.settings.min_ping_interval  # the interval has passed
    send(session, messageType="ping", extra="ignored")
    assert transport.sent[-2:] == [{}, {}] and transport.close_code is None


def test_too_many_pings_closes_4774_without_reply(ctx):
    session, transport = connect(ctx)
    hello(session, transport)
    session.on_text("{}")
    sent = len(transport.sent)
    send(session, messageType="ping")
    assert transport.close_code == Close.TOO_MANY_PINGS.code == 4774
    assert len(transport.sent) == sent


def test_nack_and_broadcast_subscribe_get_no_reply(ctx):
    session, transport = connect(ctx)
    hello(session, transport)
    sent = len(transport.sent)
    send(session, messageType="nack", version="abc", code=301)
    send(session, messageType="nack", version="abc", code=999)
    send(session, messageType="nack", code=301)
    send(session, messageType="broadcast_subscribe", broadcasts={"x": "1"})
    assert len(transport.sent) == sent and transport.close_code is None
    assert [c[2]["code"] for c in ctx.metrics.calls if c[0] == "ua.command.nack"] == [301, 0]


# -- Megaphone broadcasts (issue 15) -------------------------------------------------

MONITOR = "remote-settings/monitor_changes"


@pytest.fixture
def bctx(make_ctx):
    """A context with broadcasts on: MONITOR at version "5"."""
    ctx = make_ctx()
    ctx.broadcasts = Broadcasts({MONITOR: "5"})
    return ctx


def test_hello_broadcasts_delta_errors_and_empty(bctx):
    session, transport = connect(bctx)
    reply = hello(session, transport, broadcasts={MONITOR: "4", "x/y": "1"})
    assert reply["broadcasts"] == {MONITOR: "5", "errors": {"x/y": "Broadcast not found"}}
    assert session.broadcast_subs == {MONITOR}
    other, other_transport = connect(bctx)
    assert hello(other, other_transport, broadcasts={MONITOR: "5"})["broadcasts"] == {}
    assert other.broadcast_subs is session.broadcast_subs  # one shared set
    third, third_transport = connect(bctx)
    assert hello(third, third_transport)["broadcasts"] == {} and third.broadcast_subs is None


def test_broadcast_subscribe_replies_only_with_a_delta(bctx):
    bctx.broadcasts.apply({"a/b": "1"})
    session, transport = connect(bctx)
    hello(session, transport)
    sent = len(transport.sent)
    send(session, messageType="broadcast_subscribe", broadcasts={MONITOR: "5"})
    assert len(transport.sent) == sent and session.broadcast_subs == {MONITOR}
    send(session, messageType="broadcast_subscribe", broadcasts={"a/b": "0", "x/y": "1"})
    assert transport.sent[-1] == {"messageType": "broadcast",
                                  "broadcasts": {"a/b": "1", "errors": {"x/y": "Broadcast not found"}}}
    assert session.broadcast_subs == {MONITOR, "a/b"} and transport.close_code is None


def test_a_change_reaches_the_subscribed_session(bctx):
    session, transport = connect(bctx)
    hello(session, transport, broadcasts={MONITOR: "5"})
    other, other_transport = connect(bctx)
    hello(other, other_transport)
    bctx.broadcasts.fan_out(bctx.registry, bctx.broadcasts.apply({MONITOR: "6"}))
    assert transport.frames("broadcast") == [{"messageType": "broadcast", "broadcasts": {MONITOR: "6"}}]
    assert other_transport.frames("broadcast") == []


@pytest.mark.parametrize("frame", [
    {"messageType": "broadcast_subscribe", "broadcasts": [MONITOR]},
    {"messageType": "broadcast_subscribe", "broadcasts": {MONITOR: 5}},
])
def test_bad_broadcasts_close_1002(bctx, frame):
    session, transport = connect(bctx)
    hello(session, transport)
    send(session, **frame)
    assert (transport.close_code, transport.close_reason) == (1002, Close.BAD_BROADCASTS.reason)


def test_bad_hello_broadcasts_close_1002(bctx):
    session, transport = connect(bctx)
    send(session, messageType="hello", use_webpush=True, broadcasts={"x" * 201: "1"})
    assert transport.close_code == 1002 and transport.frames("hello") == []


def test_broadcasts_off_hello_is_empty_and_content_ignored(ctx):
    assert ctx.broadcasts is None
    session, transport = connect(ctx)
    assert hello(session, transport, broadcasts={MONITOR: "4"})["broadcasts"] == {}
    send(session, messageType="broadcast_subscribe", broadcasts=[1])
    assert transport.close_code is None and session.broadcast_subs is None


# -- direct delivery (3.2, 8.5) ---------------------------------------------------------

def test_ack_of_a_direct_message_forgets_it_without_storage_writes(ctx):
    session, transport = connect(ctx)
    uaid = hello(session, transport)["uaid"]
    chid = str(uuid.uuid4())
    message = direct(uaid, chid)
    assert session.deliver_direct(message)
    assert transport.sent[-1] == {"messageType": "notification", "channelID": chid,
                                  "version": message.version, "data": "eA", "headers": {}}
    assert list(session.direct) == [(chid, message.version)]
    calls = len(ctx.storage.calls)
    ack(session, message)
    assert session.direct == {} and session.stats["direct_acked"] == 1
    assert "ua.command.ack" in ctx.metrics.names()
    assert ctx.storage.calls[calls:] == [] and len(transport.sent) == 2  # no write, no reply
    end(session, transport)
    assert ctx.storage.called("store_message") == []  # nothing left to save


def test_ack_of_a_durable_direct_message_deletes_the_stored_copy(ctx):
    session, transport = connect(ctx)
    uaid = hello(session, transport)["uaid"]
    chid = str(uuid.uuid4())
    table = ctx.storage.current_table
    message = direct(uaid, chid, stored_in=table.name)
    table.store_message(message)
    assert session.deliver_direct(message)
    ack(session, message)
    wait_until(lambda: table.messages(uaid) == [] and session.direct == {})
    assert ctx.storage.called("delete_messages") == [([(uaid, message.sort_key)],)]


def test_deliver_direct_refused_once_closing(ctx):
    session, transport = connect(ctx)
    uaid = hello(session, transport)["uaid"]
    session.close(Close.NORMAL)
    assert not session.deliver_direct(direct(uaid, str(uuid.uuid4())))
    assert transport.frames("notification") == []


# -- stored delivery (8.2-8.4) -----------------------------------------------------------

def test_stored_drain_deletes_acked_topic_messages_then_advances_the_cursor(ctx):
    uaid = known_user(ctx)
    chid_a, chid_b = str(uuid.uuid4()), str(uuid.uuid4())
    table = ctx.storage.current_table
    table.register_channel(uaid, chid_a)
    topics = sorted([stored(ctx, uaid, chid_a, topic="t1"), stored(ctx, uaid, chid_b, topic="t2")],
                    key=lambda m: m.sort_key)  # the order of the drain
    stamped = [stored(ctx, uaid, chid_a) for _ in range(3)]
    session, transport = connect(ctx)
    hello(session, transport, uaid)

    # The topic phase: both topic messages; each ack deletes its message
    # (conditionally on its version) before the next frame is read.
    wait_until(lambda: len(transport.frames("notification")) == 2)
    assert [f["version"] for f in transport.frames("notification")] == [m.version for m in topics]
    ack(session, topics[0])
    assert topics[0].sort_key not in table.messages(uaid)
    assert ctx.storage.called("delete_message") == [(uaid, topics[0].sort_key, topics[0].version)]
    assert list(session.batch) == [(topics[1].chid, topics[1].version)]  # still waiting
    ack(session, topics[1])
    assert table.messages(uaid) == [m.sort_key for m in stamped]

    # The timestamp phase follows; its acks write nothing until the batch is
    # empty, then the cursor moves to the last timestamp.
    wait_until(lambda: len(transport.frames("notification")) == 5)
    assert [f["version"] for f in transport.frames("notification")[2:]] == [
        m.version for m in stamped]
    ack(session, *stamped[:2])
    assert "current_timestamp" not in table.channel_row(uaid)
    ack(session, stamped[2])
    assert table.channel_row(uaid)["current_timestamp"] == stamped[-1].sortkey_timestamp
    assert table.messages(uaid) == [m.sort_key for m in stamped]  # left to TTL
    wait_until(lambda: not session.draining)
    assert len(transport.frames("notification")) == 5 and session.batch == {}
    assert session.stats["stored_acked"] == 5 and transport.close_code is None


def test_stored_drain_pages_timestamped_messages_by_cursor(ctx):
    uaid = known_user(ctx)
    chid = str(uuid.uuid4())
    table = ctx.storage.current_table
    messages = [stored(ctx, uaid, chid) for _ in range(12)]
    session, transport = connect(ctx)
    hello(session, transport, uaid)
    wait_until(lambda: len(transport.frames("notification")) == 10)  # one fetch's worth
    assert transport.writes == 1  # a batch goes out in one write
    ack(session, *transport.frames("notification"))
    assert table.channel_row(uaid)["current_timestamp"] == messages[9].sortkey_timestamp
    wait_until(lambda: len(transport.frames("notification")) == 12)
    assert transport.writes == 2
    ack(session, *transport.frames("notification")[10:])
    assert table.channel_row(uaid)["current_timestamp"] == messages[11].sortkey_timestamp
    wait_until(lambda: not session.draining)
    assert [f["version"] for f in transport.frames("notification")] == [m.version for m in messages]
    assert [args[1] for args in ctx.storage.called("fetch_timestamp_messages")][-3:] == [
        None, messages[9].sortkey_timestamp, messages[11].sortkey_timestamp]


def test_expired_stored_messages_are_skipped_and_topic_ones_deleted(ctx):
    uaid = known_user(ctx)
    chid = str(uuid.uuid4())
    table = ctx.storage.current_table
    old_topic = stored(ctx, uaid, chid, topic="old", ttl=0)
    old_stamped = stored(ctx, uaid, chid, ttl=0)
    live = stored(ctx, uaid, chid)
    session, transport = connect(ctx)
    hello(session, transport, uaid)
    wait_until(lambda: transport.frames("notification"))
    assert [f["version"] for f in transport.frames("notification")] == [live.version]
    wait_until(lambda: old_topic.sort_key not in table.messages(uaid))
    assert old_stamped.sort_key in table.messages(uaid)  # timestamped: left to TTL


def test_msg_limit_exceeded_in_a_batch_drops_the_user_and_closes_1000(make_ctx):
    ctx = make_ctx(msg_limit=3)
    uaid = known_user(ctx)
    chid = str(uuid.uuid4())
    for _ in range(4):
        stored(ctx, uaid, chid)
    session, transport = connect(ctx)
    hello(session, transport, uaid)
    wait_until(lambda: transport.close_code is not None)
    assert (transport.close_code, transport.close_reason) == (1000, Close.USER_RESET.reason)
    assert len(transport.frames("notification")) == 3  # the fourth is not sent
    assert uaid not in ctx.storage.router.records
    assert session.stats["reset"] == 1 and ctx.registry.get(uaid) is None


def test_msg_limit_reached_with_more_waiting_after_the_acks_resets_the_user(make_ctx):
    ctx = make_ctx(msg_limit=2)
    uaid = known_user(ctx)
    chid = str(uuid.uuid4())
    topics = [stored(ctx, uaid, chid, topic=f"t{n}") for n in range(2)]
    stored(ctx, uaid, chid)
    session, transport = connect(ctx)
    hello(session, transport, uaid)
    wait_until(lambda: len(transport.frames("notification")) == 2)
    ack(session, *topics)
    wait_until(lambda: transport.close_code is not None)
    assert transport.close_code == Close.USER_RESET.code == 1000
    assert len(transport.frames("notification")) == 2
    assert uaid not in ctx.storage.router.records


def test_outdated_record_version_resets_the_user_after_the_drain(ctx):
    uaid = known_user(ctx, record_version=0)
    session, transport = connect(ctx)
    assert hello(session, transport, uaid)["uaid"] == uaid
    wait_until(lambda: transport.close_code is not None)
    assert (transport.close_code, transport.close_reason) == (1000, Close.USER_RESET.reason)
    assert uaid not in ctx.storage.router.records


def test_storage_check_failure_closes_1011(ctx):
    uaid = known_user(ctx)
    ctx.storage.fail("fetch_topic_phase", StorageError("boom"))
    session, transport = connect(ctx)
    hello(session, transport, uaid)
    wait_until(lambda: transport.close_code is not None)
    assert transport.close_code == Close.CHECK_FAILED.code == 1011


@pytest.mark.parametrize("error", [ThroughputError("slow"), StorageUnavailable("read timeout")])
def test_an_overloaded_store_postpones_the_check_instead_of_closing(ctx, monkeypatch, error):
    from connnode.connection import drain

    monkeypatch.setattr(drain, "CHECK_RETRY_WAIT", (0, 0))
    uaid = known_user(ctx)
    message = stored(ctx, uaid, str(uuid.uuid4()))
    ctx.storage.fail("fetch_topic_phase", error, times=1)
    session, transport = connect(ctx)
    hello(session, transport, uaid)
    wait_until(lambda: transport.frames("notification"))
    assert [f["version"] for f in transport.frames("notification")] == [message.version]
    assert transport.close_code is None


def test_request_check_answers_202_while_busy_then_200(ctx):
    session, transport = connect(ctx)
    hello(session, transport)
    transport.busy = True
    assert session.request_check() == 202
    transport.busy = False
    assert session.request_check() == 200
    assert "ua.notification_check" in ctx.metrics.names()


# -- timers (2.12) ----------------------------------------------------------------------

def test_hello_timer_closes_1000(make_ctx):
    ctx = make_ctx(hello_timeout=0.05)
    session, transport = connect(ctx)
    wait_until(lambda: transport.close_code is not None)
    assert (transport.close_code, transport.close_reason) == (
        Close.NO_HELLO.code, Close.NO_HELLO.reason)
    assert transport.sent == [] and session.state == CLOSING


def test_hello_cancels_the_hello_timer(make_ctx):
    ctx = make_ctx(hello_timeout=30)
    session, transport = connect(ctx)
    timer = session.hello_timer
    assert timer is not None and not timer.cancelled
    hello(session, transport)
    assert session.hello_timer is None and timer.cancelled


# -- the end (2.16) ------------------------------------------------------------------------

def test_close_saves_unacked_direct_messages_with_ttl_and_notifies_the_new_holder(ctx):
    session, transport = connect(ctx)
    uaid = hello(session, transport)["uaid"]
    chid = str(uuid.uuid4())
    keep, zero = direct(uaid, chid, ttl=60), direct(uaid, chid, ttl=0)
    durable = direct(uaid, chid, stored_in=ctx.storage.current_table.name)
    for message in (keep, zero, durable):
        assert session.deliver_direct(message)
    # Meanwhile the user reconnected to another node.
    ctx.storage.router.records[uaid].update(node_id=OTHER_NODE,
                                            connected_at=session.connected_at + 1)
    end(session, transport)
    assert session.direct is NO_ITEMS and session.stats["direct_saved"] == 1
    wait_until(lambda: ctx.peers.calls)
    assert ctx.storage.current_table.messages(uaid) == [keep.sort_key]  # not TTL 0, not durable
    assert ctx.peers.calls == [("notify", OTHER_NODE, uaid)]
    assert ctx.ended.sessions == [session]


def test_close_saves_but_does_not_notify_when_the_record_names_this_connection(ctx):
    session, transport = connect(ctx)
    uaid = hello(session, transport)["uaid"]
    message = direct(uaid, str(uuid.uuid4()))
    assert session.deliver_direct(message)
    end(session, transport)
    wait_until(lambda: settled(ctx, uaid))
    assert ctx.storage.current_table.messages(uaid) == [message.sort_key]
    assert ctx.storage.called("get_uaid")[-1] == (uaid,)  # looked, and found itself
    assert ctx.peers.calls == []


def test_close_with_nothing_to_save_writes_nothing(ctx):
    session, transport = connect(ctx)
    uaid = hello(session, transport)["uaid"]
    assert session.deliver_direct(direct(uaid, str(uuid.uuid4()), ttl=0))
    calls = len(ctx.storage.calls)
    end(session, transport)
    assert settled(ctx, uaid)  # no save was started
    assert ctx.storage.calls[calls:] == [] and ctx.peers.calls == []


def test_ended_is_called_once_after_a_server_close(ctx):
    session, transport = connect(ctx)
    uaid = hello(session, transport)["uaid"]
    session.terminate()  # DELETE /notif: superseded
    assert transport.close_code == Close.SUPERSEDED.code == 1000
    assert ctx.registry.get(uaid) is None and ctx.ended.sessions == []
    session.on_closed()  # the transport reports the end
    assert ctx.ended.sessions == [session]
    assert "ua.connection.lifespan" in ctx.metrics.names()


def test_ended_without_hello_records_no_lifespan(ctx):
    session, transport = connect(ctx)
    end(session, transport)
    assert ctx.ended.sessions == [session]
    assert "ua.connection.lifespan" not in ctx.metrics.names()
