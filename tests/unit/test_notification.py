"""Unit tests for connnode.notification (PROTOCOL.md 2.7, 3.2, 6.3)."""
import copy
from decimal import Decimal

import pytest
import simplejson

from connnode.notification import CHANNEL_ROW_KEY, Notification

UAID = "0252c2d1f973485eb519a639b7d01b80"
CHID = "92d747d3-74f3-4bb4-b5a7-2113dd8f7071"
VERSION = "gAAAAABm3x-message-id=="
TS = 1718000000
SKT = 1718000000123456
MAX_TTL = 2592000
HEADERS = {"encoding": "aes128gcm"}


def topic_note(**kw):
    args = dict(ttl=200, timestamp=TS, topic="news", data="3q2-7w", headers=dict(HEADERS))
    args.update(kw)
    return Notification(UAID, CHID, VERSION, **args)


def timed_note(**kw):
    args = dict(ttl=200, timestamp=TS, sortkey_timestamp=SKT)
    args.update(kw)
    return Notification(UAID, CHID, VERSION, **args)


def push_body(**kw):
    body = {"channelID": CHID, "version": VERSION, "ttl": 200, "topic": None,
            "timestamp": TS, "sortkey_timestamp": SKT,
            "data": "3q2-7w", "headers": dict(HEADERS)}
    body.update(kw)
    return body


# -- kinds and sort keys (6.3) ---------------------------------------------------------

def test_topic_sort_key():
    assert topic_note().sort_key == f"01:{CHID}:news"


def test_timestamp_sort_key():
    assert timed_note().sort_key == f"02:{SKT}:{CHID}"


def test_legacy_sort_key_wins():
    legacy = f"{CHID}:{VERSION}"
    note = Notification(UAID, CHID, VERSION, 0, TS, legacy_sort_key=legacy)
    assert note.sort_key == legacy
    # even if the other fields are somehow set
    note = Notification(UAID, CHID, VERSION, 0, TS, topic="t", sortkey_timestamp=1,
                        legacy_sort_key=legacy)
    assert note.sort_key == legacy


def test_topic_beats_timestamp_in_sort_key():
    note = topic_note(sortkey_timestamp=SKT)
    assert note.sort_key == f"01:{CHID}:news"


def test_is_timestamped():
    assert timed_note().is_timestamped
    assert not topic_note().is_timestamped
    assert not topic_note(sortkey_timestamp=SKT).is_timestamped
    legacy = Notification(UAID, CHID, VERSION, 0, TS, sortkey_timestamp=SKT,
                          legacy_sort_key=f"{CHID}:x")
    assert not legacy.is_timestamped
    assert not Notification(UAID, CHID, VERSION, 0, TS, legacy_sort_key=f"{CHID}:x").is_timestamped


def test_sortkey_timestamp_zero_is_timestamped():
    assert timed_note(sortkey_timestamp=0).is_timestamped


def test_repr_mentions_sort_key():
    assert f"02:{SKT}:{CHID}" in repr(timed_note())


def test_empty_data_drops_headers():
    note = topic_note(data="", headers=dict(HEADERS))
    assert note.data is None
    assert note.headers is None


# -- expiry (6.3) ------------------------------------------------------------------------

def test_expiry_boundary():
    note = timed_note(ttl=200)
    assert not note.expired(TS + 200 - 1)
    assert note.expired(TS + 200)
    assert note.expired(TS + 201)
    assert not note.expired(TS)


def test_expiry_whole_seconds():
    note = timed_note(ttl=200)
    assert not note.expired(TS + 199.999)
    assert note.expired(TS + 200.0)
    assert note.expired(TS + 200.5)


def test_ttl_zero_expires_immediately():
    note = timed_note(ttl=0)
    assert not note.expired(TS - 1)
    assert note.expired(TS)


def test_missing_ttl_counts_as_zero():
    note = timed_note(ttl=None)
    assert not note.expired(TS - 1)
    assert note.expired(TS)


# -- frame (2.7) ---------------------------------------------------------------------------

def test_frame_with_data():
    frame = topic_note().frame()
    message = simplejson.loads(frame)
    assert message == {"messageType": "notification", "channelID": CHID, "version": VERSION,
                       "data": "3q2-7w", "headers": HEADERS}


def test_frame_without_data_has_neither_data_nor_headers():
    for data in (None, ""):
        message = simplejson.loads(timed_note(data=data, headers=dict(HEADERS)).frame())
        assert set(message) == {"messageType", "channelID", "version"}
        assert message == {"messageType": "notification", "channelID": CHID, "version": VERSION}


def test_frame_never_has_internal_fields():
    message = simplejson.loads(topic_note(sortkey_timestamp=SKT).frame())
    for internal in ("ttl", "topic", "timestamp", "sortkey_timestamp", "uaid", "updateid"):
        assert internal not in message


def test_frame_with_data_but_no_headers_has_empty_headers():
    message = simplejson.loads(topic_note(headers=None).frame())
    assert message["headers"] == {}
    assert message["data"] == "3q2-7w"


def test_frame_is_compact_json():
    frame = timed_note().frame()
    assert "\n" not in frame
    assert ", " not in frame and ": " not in frame


# -- router body (3.2) ---------------------------------------------------------------------

def test_push_body_with_data():
    assert topic_note().push_body() == {
        "channelID": CHID, "version": VERSION, "ttl": 200, "topic": "news",
        "timestamp": TS, "sortkey_timestamp": None,
        "data": "3q2-7w", "headers": HEADERS}


def test_push_body_without_data():
    body = timed_note().push_body()
    assert body == {"channelID": CHID, "version": VERSION, "ttl": 200, "topic": None,
                    "timestamp": TS, "sortkey_timestamp": SKT}


def test_push_body_is_json_serialisable_and_round_trips():
    for note in (topic_note(), timed_note()):
        body = simplejson.loads(simplejson.dumps(note.push_body()))
        back = Notification.from_push_body(UAID, body)
        assert back.push_body() == note.push_body()
        assert back.sort_key == note.sort_key
        assert back.uaid == UAID


def test_from_push_body_fields():
    note = Notification.from_push_body(UAID, push_body())
    assert (note.uaid, note.chid, note.version) == (UAID, CHID, VERSION)
    assert (note.ttl, note.timestamp) == (200, TS)
    assert note.topic is None and note.sortkey_timestamp == SKT
    assert note.data == "3q2-7w" and note.headers == HEADERS
    assert note.is_timestamped


def test_from_push_body_topic_message():
    note = Notification.from_push_body(UAID, push_body(topic="news", sortkey_timestamp=None))
    assert note.topic == "news"
    assert note.sort_key == f"01:{CHID}:news"


def test_from_push_body_without_data_or_headers():
    body = push_body()
    del body["data"], body["headers"]
    note = Notification.from_push_body(UAID, body)
    assert note.data is None and note.headers is None


def test_from_push_body_headers_without_data_dropped():
    body = push_body()
    del body["data"]
    note = Notification.from_push_body(UAID, body)
    assert note.data is None and note.headers is None


def test_from_push_body_null_data_and_headers_accepted():
    note = Notification.from_push_body(UAID, push_body(data=None, headers=None))
    assert note.data is None and note.headers is None


def test_from_push_body_missing_ttl_is_zero_and_timestamp_now():
    body = push_body()
    del body["ttl"], body["timestamp"]
    note = Notification.from_push_body(UAID, body, now=1718000123.5)
    assert note.ttl == 0 and note.timestamp == 1718000123


@pytest.mark.parametrize("body", [
    None, [], "body", 42, ["channelID", CHID],
])
def test_from_push_body_rejects_non_dict(body):
    with pytest.raises(ValueError):
        Notification.from_push_body(UAID, body)


BAD_BODIES = {
    "null channelID": {"channelID": None},
    "int channelID": {"channelID": 5},
    "list channelID": {"channelID": [CHID]},
    "null version": {"version": None},
    "int version": {"version": 7},
    "bool ttl": {"ttl": True},
    "float ttl": {"ttl": 200.0},
    "string ttl": {"ttl": "200"},
    "null ttl": {"ttl": None},
    "float timestamp": {"timestamp": 1718000000.5},
    "bool timestamp": {"timestamp": False},
    "string timestamp": {"timestamp": "1718000000"},
    "float sortkey_timestamp": {"sortkey_timestamp": 1.5},
    "bool sortkey_timestamp": {"sortkey_timestamp": True},
    "string sortkey_timestamp": {"sortkey_timestamp": "1718"},
    "int topic": {"topic": 3},
    "int data": {"data": 12},
    "list data": {"data": ["3q2-7w"]},
    "dict data": {"data": {"x": "y"}},
    "headers not an object": {"headers": "aes128gcm"},
    "headers list": {"headers": [["encoding", "aes128gcm"]]},
    "headers int value": {"headers": {"encoding": 1}},
    "headers null value": {"headers": {"encoding": None}},
    "headers nested value": {"headers": {"encoding": {"a": "b"}}},
}


@pytest.mark.parametrize("change", list(BAD_BODIES.values()), ids=list(BAD_BODIES))
def test_from_push_body_rejects(change):
    with pytest.raises(ValueError):
        Notification.from_push_body(UAID, push_body(**change))


@pytest.mark.parametrize("key", ["channelID", "version"])
def test_from_push_body_rejects_absent_required_key(key):
    body = push_body()
    del body[key]
    with pytest.raises(ValueError):
        Notification.from_push_body(UAID, body)


def test_from_push_body_takes_only_channel_and_version():
    """PROTOCOL 3.2 asks only for string channelID and version: the rest
    defaults (TTL 0, receipt time, a timestamped sort key at receipt)."""
    note = Notification.from_push_body(UAID, {"channelID": CHID, "version": "v1"},
                                       now=1718000000.25)
    assert (note.chid, note.version, note.ttl, note.timestamp) == (CHID, "v1", 0, 1718000000)
    assert note.topic is None and note.sortkey_timestamp == 1718000000250000
    assert note.sort_key == f"02:1718000000250000:{CHID}" and note.stored_in is None


@pytest.mark.parametrize("body", [
    {"topic": None, "sortkey_timestamp": None},
    {},
])
def test_from_push_body_without_sort_key_gets_one(body):
    full = push_body()
    full.update(body)
    for name in ("topic", "sortkey_timestamp"):
        if name not in body:
            full.pop(name)
    note = Notification.from_push_body(UAID, full, now=5.0)
    assert note.sortkey_timestamp == 5_000_000 and note.is_timestamped


def test_push_body_carries_the_table_of_a_stored_message():
    note = Notification.from_push_body(UAID, push_body())
    assert "stored_in" not in note.push_body()
    note.stored_in = "message_2026_11"
    back = Notification.from_push_body(UAID, note.push_body())
    assert back.stored_in == "message_2026_11"


@pytest.mark.parametrize("table", [5, "", "ab", "a b", "x" * 256, ["message_2026_11"]])
def test_from_push_body_rejects_a_bad_table_name(table):
    with pytest.raises(ValueError):
        Notification.from_push_body(UAID, dict(push_body(), stored_in=table))


def test_from_push_body_does_not_alias_input_headers():
    body = push_body()
    original = copy.deepcopy(body)
    Notification.from_push_body(UAID, body)
    assert body == original


# -- storage item (6.3) ----------------------------------------------------------------------

def test_item_timestamped_with_data():
    now = TS + 5
    item = timed_note(data="3q2-7w", headers=dict(HEADERS)).item(now, MAX_TTL)
    assert item == {"chidmessageid": f"02:{SKT}:{CHID}", "updateid": VERSION, "ttl": 200,
                    "timestamp": TS, "expiry": now + 200,
                    "data": "3q2-7w", "headers": HEADERS}


def test_item_topic_with_data():
    item = topic_note().item(TS, MAX_TTL)
    assert item["chidmessageid"] == f"01:{CHID}:news"
    assert item["data"] == "3q2-7w" and item["headers"] == HEADERS
    assert "uaid" not in item


def test_item_without_data_has_no_data_or_headers():
    item = timed_note(data="", headers=dict(HEADERS)).item(TS, MAX_TTL)
    assert set(item) == {"chidmessageid", "updateid", "ttl", "timestamp", "expiry"}


def test_item_with_data_but_no_headers_omits_headers():
    item = timed_note(data="3q2-7w", headers=None).item(TS, MAX_TTL)
    assert item["data"] == "3q2-7w"
    assert "headers" not in item
    item = timed_note(data="3q2-7w", headers={}).item(TS, MAX_TTL)
    assert "headers" not in item  # DynamoDB-friendly: nothing empty stored


def test_item_expiry_capped_by_max_ttl():
    now = TS + 10
    assert timed_note(ttl=MAX_TTL * 2).item(now, MAX_TTL)["expiry"] == now + MAX_TTL
    assert timed_note(ttl=MAX_TTL).item(now, MAX_TTL)["expiry"] == now + MAX_TTL
    assert timed_note(ttl=60).item(now, MAX_TTL)["expiry"] == now + 60
    assert timed_note(ttl=60).item(now, 30)["expiry"] == now + 30


def test_item_expiry_uses_whole_seconds():
    assert timed_note(ttl=60).item(TS + 0.9, MAX_TTL)["expiry"] == TS + 60


def test_item_ttl_is_not_capped():
    # the ttl attribute is the message's TTL; only expiry is capped
    assert timed_note(ttl=MAX_TTL * 2).item(TS, MAX_TTL)["ttl"] == MAX_TTL * 2


def test_item_headers_are_a_copy():
    note = timed_note(data="x", headers={"encoding": "aes128gcm"})
    item = note.item(TS, MAX_TTL)
    item["headers"]["encoding"] = "changed"
    assert note.headers == {"encoding": "aes128gcm"}


# -- reading items back (6.3) ------------------------------------------------------------------

def test_from_item_channel_row_is_none():
    row = {"uaid": UAID, "chidmessageid": CHANNEL_ROW_KEY, "chids": {CHID}, "expiry": Decimal(1)}
    assert CHANNEL_ROW_KEY == " "
    assert Notification.from_item(UAID, row) is None


def test_from_item_topic():
    item = {"uaid": UAID, "chidmessageid": f"01:{CHID}:news", "updateid": VERSION,
            "ttl": Decimal(200), "timestamp": Decimal(TS), "expiry": Decimal(TS + 200),
            "data": "3q2-7w", "headers": {"encoding": "aes128gcm"}}
    note = Notification.from_item(UAID, item)
    assert (note.uaid, note.chid, note.version) == (UAID, CHID, VERSION)
    assert note.topic == "news" and note.sortkey_timestamp is None
    assert note.legacy_sort_key is None
    assert note.ttl == 200 and type(note.ttl) is int
    assert note.timestamp == TS and type(note.timestamp) is int
    assert note.data == "3q2-7w" and note.headers == HEADERS
    assert note.sort_key == item["chidmessageid"]
    assert not note.is_timestamped


def test_from_item_topic_keeps_colons_in_topic():
    note = Notification.from_item(UAID, {"chidmessageid": f"01:{CHID}:a:b", "updateid": VERSION,
                                         "ttl": 1, "timestamp": TS})
    assert note.topic == "a:b"
    assert note.chid == CHID


def test_from_item_timestamp():
    item = {"chidmessageid": f"02:{SKT}:{CHID}", "updateid": VERSION,
            "ttl": Decimal(60), "timestamp": Decimal(TS)}
    note = Notification.from_item(UAID, item)
    assert note.chid == CHID
    assert note.sortkey_timestamp == SKT and type(note.sortkey_timestamp) is int
    assert note.topic is None and note.legacy_sort_key is None
    assert note.is_timestamped
    assert note.sort_key == item["chidmessageid"]
    assert note.data is None and note.headers is None


def test_from_item_legacy():
    legacy = f"{CHID}:gAAAAABlegacy-id=="
    item = {"chidmessageid": legacy, "updateid": "gAAAAABlegacy-id==",
            "ttl": Decimal(60), "timestamp": Decimal(TS), "data": "abc",
            "headers": {"encoding": "aesgcm", "encryption": "salt=x"}}
    note = Notification.from_item(UAID, item)
    assert note.chid == CHID
    assert note.legacy_sort_key == legacy
    assert note.sort_key == legacy
    assert note.topic is None and note.sortkey_timestamp is None
    assert not note.is_timestamped
    assert note.version == "gAAAAABlegacy-id=="
    assert note.data == "abc"


def test_from_item_missing_ttl_counts_as_zero():
    note = Notification.from_item(UAID, {"chidmessageid": f"02:{SKT}:{CHID}",
                                         "updateid": VERSION, "timestamp": Decimal(TS)})
    assert note.ttl == 0
    assert note.expired(TS)
    assert not note.expired(TS - 1)


def test_item_from_item_round_trip():
    for note in (topic_note(), timed_note(), timed_note(data="x", headers={"encoding": "aes128gcm"})):
        back = Notification.from_item(UAID, note.item(TS, MAX_TTL))
        assert back.sort_key == note.sort_key
        assert back.push_body() == note.push_body()
        assert back.frame() == note.frame()
