"""Lifecycle events (connnode/lifecycle.py): the Tracker's decision and its
lines, the ``tracked`` flag's travel in the Notification's shapes, and the
connection-node stages on a Session of fakes (tests/fakes.py)."""
import logging
import time
import uuid

import pytest
import simplejson as json
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from connnode.crypto import hash_uaid
from connnode.encoding import b64url_encode
from connnode.lifecycle import OFF, Tracker, parse_tracking_keys
from connnode.logs import JsonFormatter
from connnode.notification import Notification
from connnode.settings import Settings, SettingsError
from tests.conftest import TEST_CRYPTO_KEY
from tests.fakes import make_context, stop_context
from tests.unit.test_session import ack, connect, direct, end, hello, known_user, next_skt, \
    send, wait_until


def raw_key():
    return ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        Encoding.X962, PublicFormat.UncompressedPoint)


class Lines(logging.Handler):
    """The lifecycle logger's lines, formatted as the nodes write them."""

    def __init__(self):
        super().__init__()
        self.lines = []
        self.setFormatter(JsonFormatter())

    def emit(self, record):
        self.lines.append(json.loads(self.format(record)))

    def stages(self):
        return [line["fields"]["stage"] for line in self.lines]


@pytest.fixture
def lines():
    handler = Lines()
    logger = logging.getLogger("connnode.lifecycle")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


# -- the decision ----------------------------------------------------------------------

def test_off_by_default():
    tracker = Tracker.from_settings(Settings(hostname="h"))
    assert tracker.on is False
    assert not tracker.enabled_for(None) and not tracker.enabled_for(raw_key())
    assert OFF.on is False


def test_tracking_keys_select_their_messages_only():
    key, other = raw_key(), raw_key()
    settings = Settings(hostname="h", tracking_keys=f" {b64url_encode(key)}= ,")
    tracker = Tracker.from_settings(settings)
    assert tracker.on
    assert tracker.enabled_for(key)
    assert not tracker.enabled_for(other) and not tracker.enabled_for(None)


def test_track_all_tracks_unsigned_messages_too():
    tracker = Tracker.from_settings(Settings(hostname="h", track_all="true"))
    assert tracker.on and tracker.enabled_for(None) and tracker.enabled_for(raw_key())


@pytest.mark.parametrize("bad", ["abc", "!!!", b64url_encode(b"\x04" + bytes(63)),
                                 b64url_encode(b"\x02" + bytes(64))])
def test_bad_tracking_keys_stop_start_up(bad):
    with pytest.raises(SettingsError, match="tracking_keys"):
        Settings(hostname="h", tracking_keys=bad)


def test_parse_tracking_keys_empty_and_many():
    keys = [b64url_encode(raw_key()) for _ in range(2)]
    assert parse_tracking_keys("") == ()
    assert parse_tracking_keys(" , ".join(keys)) == tuple(keys)


# -- the lines ----------------------------------------------------------------------------

def test_event_is_one_json_line_with_id_hash_and_stage(lines):
    tracker = Tracker(track_all=True, key_hash="secret")
    uaid = uuid.uuid4().hex
    tracker.event("accepted", "gAAAA-id", uaid, chid="c", destination="direct")
    (line,) = lines.lines
    assert line["logger"] == "connnode.lifecycle" and line["message"] == "message accepted"
    assert line["fields"] == {"stage": "accepted", "message_id": "gAAAA-id", "chid": "c",
                              "uaid_hash": hash_uaid("secret", uaid), "destination": "direct"}
    assert uaid not in json.dumps(line)


def test_message_event_takes_the_notification(lines):
    note = Notification(uuid.uuid4().hex, str(uuid.uuid4()), "v1", 60, 1, sortkey_timestamp=5)
    Tracker(track_all=True).message("saved", note, table="t")
    assert lines.lines[0]["fields"] == {"stage": "saved", "message_id": "v1", "chid": note.chid,
                                        "uaid_hash": note.uaid, "table": "t"}


def test_events_show_at_a_warning_log_level():
    root = logging.getLogger()
    old_root = root.level
    root.setLevel(logging.WARNING)
    try:
        assert logging.getLogger("connnode.lifecycle").isEnabledFor(logging.INFO)
    finally:
        root.setLevel(old_root)


# -- the flag's travel -----------------------------------------------------------------

def test_tracked_travels_in_the_push_body_and_the_stored_item():
    uaid, chid = uuid.uuid4().hex, str(uuid.uuid4())
    plain = Notification(uaid, chid, "v", 60, 10, sortkey_timestamp=7)
    assert "tracked" not in plain.push_body() and "tracked" not in plain.item(10, 100)
    assert Notification.from_push_body(uaid, plain.push_body()).tracked is False
    tracked = Notification(uaid, chid, "v", 60, 10, sortkey_timestamp=7, tracked=True)
    assert tracked.push_body()["tracked"] is True
    assert Notification.from_push_body(uaid, tracked.push_body()).tracked is True
    item = tracked.item(10, 100)
    assert item["tracked"] is True
    assert Notification.from_item(uaid, item).tracked is True
    assert Notification.from_push_body(uaid, dict(plain.push_body(), tracked="yes")).tracked is False


# -- the connection node's stages (a Session on fakes) -----------------------------------

@pytest.fixture
def ctx():
    context = make_context(Settings(
        crypto_key=TEST_CRYPTO_KEY, hostname="127.0.0.1", statsd_host="",
        endpoint_url="https://push.example.com", hello_timeout=0, auto_ping_interval=0))
    assert context.tracker is OFF  # a connection node needs no setting: the flag decides
    yield context
    stop_context(context)


def tracked_direct(uaid, chid, ttl=60):
    message = direct(uaid, chid, ttl=ttl)
    message.tracked = True
    return message


def by_stage(lines, stage):
    return [line["fields"] for line in lines.lines if line["fields"]["stage"] == stage]


def test_direct_message_delivered_acked_nacked_and_saved(ctx, lines):
    session, transport = connect(ctx)
    uaid = hello(session, transport)["uaid"]
    chid = str(uuid.uuid4())
    first, second, third = (tracked_direct(uaid, chid) for _ in range(3))
    untracked = direct(uaid, chid)
    for message in (first, second, third, untracked):
        assert session.deliver_direct(message)
    assert [f["message_id"] for f in by_stage(lines, "delivered")] == \
        [first.version, second.version, third.version]
    assert by_stage(lines, "delivered")[0]["via"] == "direct"
    ack(session, first, untracked)
    send(session, messageType="nack", version=second.version, code=302)
    assert by_stage(lines, "acked") == [{"stage": "acked", "message_id": first.version,
                                         "uaid_hash": uaid, "chid": chid, "code": 100}]
    assert by_stage(lines, "nacked")[0]["code"] == 302
    assert by_stage(lines, "nacked")[0]["message_id"] == second.version
    end(session, transport)
    wait_until(lambda: len(by_stage(lines, "saved")) == 2)
    assert {f["message_id"] for f in by_stage(lines, "saved")} == {second.version, third.version}
    saved = ctx.storage.current_table.fetch_timestamp_messages(uaid)[1]
    assert all(message.tracked for message in saved if message.version != untracked.version)


def test_stored_messages_delivered_acked_and_expired(ctx, lines):
    uaid = known_user(ctx)
    chid = str(uuid.uuid4())
    ctx.storage.current_table.register_channel(uaid, chid)
    old = Notification(uaid, chid, "old-version", 1, int(time.time()) - 10,
                       sortkey_timestamp=next_skt(), tracked=True)
    skt = next_skt()
    live = Notification(uaid, chid, ctx.storage.crypto.message_id(uaid, chid, sortkey_timestamp=skt),
                        60, int(time.time()), sortkey_timestamp=skt, data="aGk", tracked=True)
    for message in (old, live):
        ctx.storage.current_table.store_message(message)
    session, transport = connect(ctx)
    hello(session, transport, uaid)
    wait_until(lambda: transport.frames("notification"))
    assert by_stage(lines, "expired")[0]["message_id"] == "old-version"
    assert by_stage(lines, "delivered") == [{"stage": "delivered", "message_id": live.version,
                                             "uaid_hash": uaid, "chid": chid, "via": "stored"}]
    ack(session, live)
    assert by_stage(lines, "acked")[0]["message_id"] == live.version


def test_untracked_messages_write_nothing(ctx, lines):
    session, transport = connect(ctx)
    uaid = hello(session, transport)["uaid"]
    message = direct(uaid, str(uuid.uuid4()))
    session.deliver_direct(message)
    send(session, messageType="nack", version=message.version, code=301)
    ack(session, message)
    end(session, transport)
    assert lines.lines == []


# -- the router's GET /status/<uaid> (what `connnode diagnose` asks) ---------------------

def test_router_status_route_says_whether_this_worker_holds_the_uaid():
    from connnode.connection.router_app import create_router_app
    from tests.unit.test_router_app import UAID, FakeNode, FakeSession

    node = FakeNode()
    node.node_id = "http://127.0.0.1:8101"
    client = create_router_app(node).test_client()
    assert client.get(f"/status/{UAID}").status_code == 404
    assert client.get("/status/not-a-uaid").status_code == 404
    session = node.registry[UAID] = FakeSession(connected_at=1234)
    session.state, session.direct, session.batch = 2, {"a": 1}, {}
    response = client.get(f"/status/{UAID}")
    assert response.status_code == 200 and response.mimetype == "application/json"
    assert json.loads(response.get_data()) == {
        "held": True, "node_id": "http://127.0.0.1:8101", "connected_at": 1234, "state": "ready",
        "outstanding_direct": 1, "outstanding_stored": 0}
    assert client.put(f"/status/{UAID}").status_code == 405
