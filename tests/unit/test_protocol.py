"""Unit tests for connnode.protocol (PROTOCOL.md 2.2-2.15)."""
import base64
import dataclasses
import random

import pytest
import simplejson
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from connnode.connection.closes import Close
from connnode.encoding import load_p256_public_key
from connnode.protocol import (
    MAX_NESTING, MORE_INFO, PING_REPLY, Ack, BroadcastSubscribe, Hello, Nack, Ping,
    MessageViolation, Register, Unregister, broadcast_frame, hello_error, hello_reply,
    overloaded_error,
    parse_client_frame, register_error, register_reply, unregister_error, unregister_reply,
)

UAID = "0252c2d1f973485eb519a639b7d01b80"
CHID = "92d747d3-74f3-4bb4-b5a7-2113dd8f7071"
BAD_FORMAT = "Bad UUID format, use lower case, dashed format"


def frame(obj):
    return simplejson.dumps(obj)


def parse(obj, hello_done=True):
    return parse_client_frame(frame(obj), hello_done)


def violation(text, hello_done=True, code=1002):
    with pytest.raises(MessageViolation) as info:
        parse_client_frame(text, hello_done)
    assert info.value.row.code == code
    return info.value


def p256_key():
    public = ec.generate_private_key(ec.SECP256R1()).public_key()
    return public.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)


def b64(raw, padded=False):
    text = base64.urlsafe_b64encode(raw).decode()
    return text if padded else text.rstrip("=")


# -- frame dispatch (2.2) ----------------------------------------------------

def test_violation_carries_its_close_row():
    exc = MessageViolation(Close.INVALID_JSON)
    assert exc.row == Close.INVALID_JSON and exc.row.code == 1002 and str(exc) == "invalid JSON"


@pytest.mark.parametrize("text", [
    "", " ", "{", "}", "nul", "{'a':1}", '{"a":1,}', "{} x", "{}{}",
    "NaN", '{"a":NaN}', '{"a":Infinity}', '{"a":-Infinity}', '{"a":"\\x"}',
])
@pytest.mark.parametrize("hello_done", [False, True])
def test_invalid_json_is_violation(text, hello_done):
    violation(text, hello_done)


@pytest.mark.parametrize("text", ["[]", '"x"', "1", "1.5", "null", "true", "false", '[{"messageType":"hello"}]'])
@pytest.mark.parametrize("hello_done", [False, True])
def test_non_object_is_violation(text, hello_done):
    violation(text, hello_done)


def test_raw_lone_surrogate_is_invalid_utf8():
    """Text that cannot have come from UTF-8 closes 1007, as 2.2 step 3 says."""
    violation('{"messageType":"nack","version":"\ud800"}', code=1007)
    violation('{"messageType":"hello","use_webpush":true,"x":"\udfff"}', hello_done=False, code=1007)


def test_escaped_lone_surrogate_is_accepted_and_echoed_as_ascii():
    msg = parse_client_frame('{"messageType":"unregister","channelID":"\\ud800"}', True)
    assert msg.chid is None
    assert msg.error.isascii() and '"channelID":"\\ud800"' in msg.error
    assert unregister_reply(msg.echo).isascii()


def test_non_ascii_strings_are_accepted():
    assert parse({"messageType": "nack", "version": "vé😀"}) == Nack("vé😀", 0)


@pytest.mark.parametrize("obj", [
    {}, {"messageType": "ping"}, {"messageType": "register", "channelID": CHID},
    {"messageType": "ack", "updates": []}, {"messageType": "HELLO", "use_webpush": True},
    {"messageType": "Hello"}, {"messageType": " hello"}, {"use_webpush": True},
    {"messageType": None}, {"messageType": True}, {"messageType": ["hello"]},
    {"messageType": {"hello": 1}}, {"messageType": 1},
])
def test_anything_but_hello_before_hello_is_violation(obj):
    violation(frame(obj), hello_done=False)


def test_hello_before_hello():
    assert parse({"messageType": "hello", "use_webpush": True}, hello_done=False) == Hello(None, True)


@pytest.mark.parametrize("text", [
    "{}", " { } ", '{"messageType":"ping"}', '{"messageType":"ping","x":1}',
    '{"messageType":"ping","updates":[{"channelID":"x"}]}',
])
def test_client_ping_after_hello(text):
    assert parse_client_frame(text, True) == Ping()


@pytest.mark.parametrize("obj", [
    {"x": 1}, {"messageType": None}, {"messageType": True}, {"messageType": False},
    {"messageType": 0}, {"messageType": 1.5}, {"messageType": []}, {"messageType": ["ping"]},
    {"messageType": {}}, {"messageType": ""}, {"messageType": "PING"}, {"messageType": "Ping"},
    {"messageType": "Register"}, {"messageType": "ACK"}, {"messageType": "nack "},
    {"messageType": "notification"}, {"messageType": "error"}, {"messageType": "broadcast"},
    {"messageType": "broadcastSubscribe"}, {"channelID": CHID},
])
def test_missing_non_string_or_unknown_message_type_after_hello(obj):
    violation(frame(obj))


def test_duplicate_hello_parses_as_hello():
    assert parse({"messageType": "hello", "use_webpush": True, "uaid": UAID}) == Hello(UAID, True)


def test_duplicate_keys_last_wins():
    text = '{"messageType":"nack","messageType":"hello","use_webpush":false,"use_webpush":1}'
    assert parse_client_frame(text, False) == Hello(None, True)


def test_deep_nesting_is_violation_not_crash():
    violation("[" * 5000 + "]" * 5000)
    violation('{"messageType":"broadcast_subscribe","b":' + "[" * 50000)
    violation('{"messageType":"broadcast_subscribe","b":' + '{"a":' * 3000 + "1" + "}" * 3001)


def test_nesting_limit_is_exact_and_ignores_brackets_in_strings():
    inner = MAX_NESTING - 1  # the frame object itself is one level
    ok = '{"messageType":"broadcast_subscribe","b":' + "[" * inner + "]" * inner + "}"
    assert parse_client_frame(ok, True) == BroadcastSubscribe()
    violation('{"messageType":"broadcast_subscribe","b":' + "[" * (inner + 1) + "]" * (inner + 1) + "}")
    in_string = '{"messageType":"nack","version":"' + "[{" * 500 + '\\"[{"}'
    assert parse_client_frame(in_string, True) == Nack("[{" * 500 + '"[{', 0)
    wide = frame({"messageType": "ack", "updates": [{"channelID": CHID, "version": str(i)} for i in range(500)]})
    assert len(parse_client_frame(wide, True).updates) == 500


def test_huge_numbers():
    violation('{"messageType":"nack","version":"v","code":' + "1" * 5000 + "}")
    msg = parse_client_frame('{"messageType":"unregister","channelID":"%s","x":1e999,"y":1.10}' % CHID, True)
    assert unregister_reply(msg.echo) == (
        '{"messageType":"unregister","channelID":"%s","x":1E+999,"y":1.10,"status":200}' % CHID)


def test_messages_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Hello(None, True).uaid = UAID


def _random_value(rng, depth=0):
    kind = rng.randrange(9 if depth < 4 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.choice([0, -1, 1, 100, 200, 2 ** 70, 0.0, 1.5, -0.0, 1e300])
    if kind == 3:
        return rng.choice(["", "x", CHID, CHID.upper(), UAID, "ping", "hello", "\ud800", "é", "BAAA", "="])
    if kind == 4:
        return "".join(rng.choice('ab"\\{}[]:,-0') for _ in range(rng.randrange(8)))
    if kind == 5:
        return rng.choice(["hello", "register", "unregister", "ack", "nack", "broadcast_subscribe", "ping"])
    if kind == 6:
        return [_random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    keys = ["messageType", "channelID", "key", "uaid", "use_webpush", "updates", "version", "code", "z"]
    return {rng.choice(keys): _random_value(rng, depth + 1) for _ in range(rng.randrange(5))}


def _check_any(text, hello_done):
    try:
        msg = parse_client_frame(text, hello_done)
    except MessageViolation:
        return
    assert isinstance(msg, (Hello, Register, Unregister, Ack, Nack, Ping, BroadcastSubscribe))
    if isinstance(msg, Unregister):
        assert isinstance(simplejson.loads(unregister_reply(msg.echo)), dict)
    error = getattr(msg, "error", None)
    if error is not None:
        assert error.isascii() and isinstance(simplejson.loads(error), dict)


def test_fuzz_any_input_gives_message_or_violation():
    rng = random.Random(20240611)
    for _ in range(4000):
        value = _random_value(rng)
        if rng.random() < 0.7:
            value = {"messageType": _random_value(rng, 3) if rng.random() < 0.2 else rng.choice(
                ["hello", "register", "unregister", "ack", "nack", "broadcast_subscribe", "ping"])}
            for key in rng.sample(["channelID", "key", "uaid", "use_webpush", "updates", "version", "code"], 3):
                value[key] = _random_value(rng)
            if "updates" in value and rng.random() < 0.5:
                value["updates"] = [_random_value(rng, 1) for _ in range(3)]
        text = simplejson.dumps(value)
        for hello_done in (False, True):
            _check_any(text, hello_done)
            cut = rng.randrange(len(text) + 1)
            _check_any(text[:cut] + rng.choice(["", "}", "]", ",", '"', "\\", "\x00", "NaN"]) + text[cut:], hello_done)
    for _ in range(2000):
        garbage = "".join(rng.choice('{}[]":,\\ntrufalse0123456789.eE+-x ') for _ in range(rng.randrange(40)))
        _check_any(garbage, True)


# -- hello (2.4) ---------------------------------------------------------------

@pytest.mark.parametrize("uaid, expected", [
    (UAID, UAID),
    ("ffffffffffffffffffffffffffffffff", "ffffffffffffffffffffffffffffffff"),
    (UAID.upper(), None),
    ("0252c2d1-f973-485e-b519-a639b7d01b80", None),
    (UAID[:-1], None),
    (UAID + "0", None),
    (UAID + "\n", None),
    (" " + UAID, None),
    ("{%s}" % UAID, None),
    ("g" * 32, None),
    ("", None),
    (None, None),
    (123, None),
    (True, None),
    ([UAID], None),
    ({"uaid": UAID}, None),
])
def test_hello_uaid_only_when_valid_uaid_string(uaid, expected):
    assert parse({"messageType": "hello", "use_webpush": True, "uaid": uaid}, False).uaid == expected


def test_hello_without_uaid():
    assert parse({"messageType": "hello", "use_webpush": True, "broadcasts": {}}, False) == Hello(None, True)


@pytest.mark.parametrize("raw", ["false", "null", "0", "0.0", "-0", "0e5", '""'])
def test_use_webpush_falsy(raw):
    text = '{"messageType":"hello","use_webpush":%s}' % raw
    assert parse_client_frame(text, False) == Hello(None, False)


def test_use_webpush_absent_is_falsy():
    assert parse({"messageType": "hello", "uaid": UAID}, False) == Hello(UAID, False)


@pytest.mark.parametrize("raw", ["true", "1", "-1", "0.5", '"false"', '"0"', '" "', "[]", "{}", "[0]"])
def test_use_webpush_truthy(raw):
    text = '{"messageType":"hello","use_webpush":%s}' % raw
    assert parse_client_frame(text, False) == Hello(None, True)


def test_hello_reply():
    assert hello_reply(UAID, 300, "development") == (
        '{"messageType":"hello","uaid":"%s","status":200,"use_webpush":true,'
        '"ping":300,"env":"development","broadcasts":{}}' % UAID)


def test_hello_reply_ping_forms():
    assert simplejson.loads(hello_reply(UAID, 0, "e")) == {
        "messageType": "hello", "uaid": UAID, "status": 200, "use_webpush": True,
        "env": "e", "broadcasts": {}}
    assert '"ping"' not in hello_reply(UAID, 0.0, "e")
    assert '"ping":300,' in hello_reply(UAID, 300.0, "e")
    assert '"ping":2.5,' in hello_reply(UAID, 2.5, "e")


def test_hello_reply_is_ascii():
    assert hello_reply(UAID, 0, "prod-é").endswith('"env":"prod-\\u00e9","broadcasts":{}}')


@pytest.mark.parametrize("status, reason", [
    (401, "Simplepush not supported"), (401, "duplicate hello"), (500, "already_connected"),
    (503, "error - overloaded"), (503, "error"),
])
def test_hello_errors(status, reason):
    assert hello_error(status, reason) == (
        '{"messageType":"hello","status":%d,"reason":"%s","more_info":"%s"}' % (status, reason, MORE_INFO))


# -- register (2.5) ------------------------------------------------------------

def register_401(reason, chid=None):
    frame_obj = {"messageType": "register"}
    if chid is not None:
        frame_obj["channelID"] = chid
    frame_obj.update(status=401, reason=reason, more_info=MORE_INFO)
    return simplejson.dumps(frame_obj, separators=(",", ":"))


def test_register_valid_without_key():
    assert parse({"messageType": "register", "channelID": CHID}) == Register(CHID, CHID, None, None)


def test_register_key_null_is_unrestricted():
    assert parse({"messageType": "register", "channelID": CHID, "key": None}) == Register(CHID, CHID, None, None)


@pytest.mark.parametrize("padded", [False, True])
def test_register_valid_key(padded):
    raw = p256_key()
    msg = parse({"messageType": "register", "channelID": CHID, "key": b64(raw, padded)})
    assert msg == Register(CHID, CHID, raw, None)
    assert len(msg.key) == 65


def test_register_missing_channel_id():
    msg = parse({"messageType": "register", "key": b64(p256_key())})
    assert msg == Register(None, None, None, register_401("Missing ChannelID"))
    assert msg.error == ('{"messageType":"register","status":401,"reason":"Missing ChannelID",'
                         '"more_info":"%s"}' % MORE_INFO)


@pytest.mark.parametrize("raw", [None, 123, True, [CHID], {"id": CHID}, 1.5])
def test_register_non_string_channel_id_is_not_echoed(raw):
    msg = parse({"messageType": "register", "channelID": raw})
    assert msg == Register(raw, None, None, register_401("Invalid UUID specified"))


@pytest.mark.parametrize("raw", [
    "", "oof", CHID[:-1], CHID + "0", CHID + "\n", " " + CHID, "92d747d3-74f3-4bb4-b5a7-2113dd8f707g",
    "92d747d374f3-4bb4-b5a7-2113dd8f7071", "92d747d3-74f3-4bb4-b5a72113dd8f7071",
    "92d747d-374f3-4bb4-b5a7-2113dd8f7071", "0x" + "0" * 30,
])
def test_register_not_a_uuid(raw):
    msg = parse({"messageType": "register", "channelID": raw})
    assert msg == Register(raw, None, None, register_401("Invalid UUID specified", raw))
    assert simplejson.loads(msg.error)["channelID"] == raw


@pytest.mark.parametrize("raw", [CHID.upper(), CHID.replace("-", ""), CHID.upper().replace("-", ""),
                                 "92D747d3-74f3-4bb4-b5a7-2113dd8f7071"])
def test_register_uuid_in_other_form(raw):
    msg = parse({"messageType": "register", "channelID": raw})
    assert msg == Register(raw, None, None, register_401(BAD_FORMAT, raw))


def test_register_channel_id_checked_before_key():
    msg = parse({"messageType": "register", "channelID": "oof", "key": "!!"})
    assert msg.error == register_401("Invalid UUID specified", "oof")
    msg = parse({"messageType": "register", "key": "!!"})
    assert msg.error == register_401("Missing ChannelID")


def _not_on_curve():
    raw = b"\x04" + b"\x01" * 64
    assert load_p256_public_key(raw) is None
    return raw


@pytest.mark.parametrize("key", [
    "", 0, 1, True, False, [], {}, ["BA"], "!!!!", "BA==x", "a b",
    b64(_not_on_curve()),
    b64(b"\x03" + p256_key()[1:]),
    b64(p256_key()[:33]),
    b64(p256_key()[:64]),
    b64(p256_key() + b"\x00"),
    base64.standard_b64encode(b"\xfb" * 65).decode(),  # '+' and '/' are not base64url
])
def test_register_invalid_key(key):
    msg = parse({"messageType": "register", "channelID": CHID, "key": key})
    assert msg == Register(CHID, None, None,
                           '{"messageType":"register","channelID":"%s","status":400,"reason":"Invalid key"}' % CHID)


def test_register_reply():
    assert register_reply(CHID, "https://push.example.com/wpush/v2/gAAA") == (
        '{"messageType":"register","channelID":"%s","status":200,'
        '"pushEndpoint":"https://push.example.com/wpush/v2/gAAA"}' % CHID)


def test_register_error():
    assert register_error(CHID) == (
        '{"messageType":"register","channelID":"%s","status":500,'
        '"reason":"An unexpected server error occurred"}' % CHID)


def test_overloaded_error():
    assert overloaded_error() == '{"messageType":"error","reason":"overloaded","status":503}'


# -- unregister (2.6) ----------------------------------------------------------

@pytest.mark.parametrize("raw", [CHID, CHID.upper(), CHID.replace("-", ""), CHID.upper().replace("-", "")])
def test_unregister_normalises_chid(raw):
    obj = {"messageType": "unregister", "channelID": raw, "code": 200}
    assert parse(obj) == Unregister(CHID, 200, None, obj)


@pytest.mark.parametrize("code, expected", [
    (200, 200), (201, 201), (202, 202), (0, 0), (-5, -5), (True, None), (False, None),
    (200.0, None), ("200", None), (None, None), ([200], None),
])
def test_unregister_code_only_if_integer(code, expected):
    assert parse({"messageType": "unregister", "channelID": CHID, "code": code}).code == expected


def test_unregister_without_code():
    assert parse({"messageType": "unregister", "channelID": CHID}).code is None


def test_unregister_missing_channel_id():
    obj = {"messageType": "unregister", "code": 200}
    expected = '{"messageType":"unregister","status":401,"reason":"Missing ChannelID","more_info":"%s"}' % MORE_INFO
    assert parse(obj) == Unregister(None, 200, expected, obj)


@pytest.mark.parametrize("raw", ["oof", "", CHID + "0", None, 5, True, [CHID], {"a": 1}])
def test_unregister_invalid_channel_id_is_echoed(raw):
    obj = {"messageType": "unregister", "channelID": raw}
    msg = parse(obj)
    assert msg.chid is None and msg.echo == obj
    assert simplejson.loads(msg.error) == {
        "messageType": "unregister", "channelID": raw, "status": 401,
        "reason": "Invalid ChannelID", "more_info": MORE_INFO}


def test_unregister_reply_echoes_client_object():
    msg = parse({"messageType": "unregister", "channelID": CHID.upper(), "code": 200, "extra": [1, {"b": None}]})
    assert unregister_reply(msg.echo) == (
        '{"messageType":"unregister","channelID":"%s","code":200,"extra":[1,{"b":null}],"status":200}'
        % CHID.upper())
    assert "status" not in msg.echo


def test_unregister_reply_overrides_client_status():
    assert unregister_reply({"messageType": "unregister", "status": 7, "channelID": CHID}) == (
        '{"messageType":"unregister","status":200,"channelID":"%s"}' % CHID)


def test_unregister_error_builder():
    assert unregister_error("Missing ChannelID") == (
        '{"messageType":"unregister","status":401,"reason":"Missing ChannelID","more_info":"%s"}' % MORE_INFO)
    assert unregister_error("Invalid ChannelID", None) == (
        '{"messageType":"unregister","channelID":null,"status":401,"reason":"Invalid ChannelID",'
        '"more_info":"%s"}' % MORE_INFO)


# -- ack (2.8) -------------------------------------------------------------------

@pytest.mark.parametrize("text", [
    '{"messageType":"ack"}', '{"messageType":"ack","updates":null}', '{"messageType":"ack","updates":[]}',
    '{"messageType":"ack","updates":{}}', '{"messageType":"ack","updates":{"channelID":"x","version":"v"}}',
    '{"messageType":"ack","updates":"x"}', '{"messageType":"ack","updates":1}',
])
def test_ack_without_usable_updates_list_is_ignored(text):
    assert parse_client_frame(text, True) == Ack((), False)


def test_ack_mixed_elements():
    updates = [
        {"channelID": CHID, "version": "v1", "code": 100},
        {"channelID": CHID, "version": "v2"},
        {"channelID": CHID.upper(), "version": "v3", "code": 101},
        {"channelID": CHID, "version": "v4", "code": True},
        {"channelID": CHID, "version": "v5", "code": 102.0},
        {"channelID": CHID, "version": "v6", "code": "102"},
        {"channelID": CHID, "version": "v7", "code": None},
        {"channelID": CHID},
        {"version": "v"},
        {"channelID": 5, "version": "v"},
        {"channelID": CHID, "version": 5},
        {"channelID": None, "version": None},
        "junk", 5, None, [CHID, "v"],
        {"channelID": "", "version": "", "code": 102},
    ]
    assert parse({"messageType": "ack", "updates": updates}) == Ack((
        (CHID, "v1", 100), (CHID, "v2", 0), (CHID.upper(), "v3", 101), (CHID, "v4", 0),
        (CHID, "v5", 0), (CHID, "v6", 0), (CHID, "v7", 0), ("", "", 102),
    ), True)


def test_ack_non_empty_list_of_invalid_elements_still_counts():
    assert parse({"messageType": "ack", "updates": [None, {}, {"channelID": CHID}]}) == Ack((), True)


# -- nack, ping, broadcast_subscribe (2.9-2.11) ---------------------------------

@pytest.mark.parametrize("code, expected", [
    (301, 301), (302, 302), (303, 303), (None, 0), (True, 0), ("301", 0), (301.0, 0), ([301], 0),
])
def test_nack_code(code, expected):
    assert parse({"messageType": "nack", "version": "v", "code": code}) == Nack("v", expected)


def test_nack_without_code():
    assert parse({"messageType": "nack", "version": "v"}) == Nack("v", 0)


@pytest.mark.parametrize("version", ["", None, 5, True, ["v"], {"v": 1}])
def test_nack_without_usable_version_is_ignored(version):
    assert parse({"messageType": "nack", "version": version, "code": 301}) == Nack(None, 301)


def test_nack_without_version_is_ignored():
    assert parse({"messageType": "nack", "code": 301}) == Nack(None, 301)


@pytest.mark.parametrize("extra", [{}, {"broadcasts": {"remote-settings/monitor_changes": '"0"'}},
                                   {"broadcasts": None}, {"broadcasts": [1, 2]}])
def test_broadcast_subscribe_is_accepted_whatever_its_content(extra):
    assert parse({"messageType": "broadcast_subscribe", **extra}) == BroadcastSubscribe()


# -- broadcasts on (issue 15) ------------------------------------------------------

MONITOR = "remote-settings/monitor_changes"


def parse_on(obj, hello_done=True):
    return parse_client_frame(frame(obj), hello_done, broadcasts=True)


def test_hello_broadcasts_are_pairs_when_broadcasts_are_on():
    message = {"messageType": "hello", "use_webpush": True, "broadcasts": {MONITOR: '"5"', "a/b": "v"}}
    assert parse_on(message, False) == Hello(None, True, ((MONITOR, '"5"'), ("a/b", "v")))
    assert parse(message, False) == Hello(None, True)  # off: content ignored
    for empty in ({}, {"broadcasts": None}, {"broadcasts": {}}):
        assert parse_on({"messageType": "hello", "use_webpush": True, **empty}, False) == Hello(None, True)


def test_broadcast_subscribe_pairs_when_broadcasts_are_on():
    assert parse_on({"messageType": "broadcast_subscribe", "broadcasts": {MONITOR: "1"}}) \
        == BroadcastSubscribe(((MONITOR, "1"),))
    assert parse_on({"messageType": "broadcast_subscribe"}) == BroadcastSubscribe()


@pytest.mark.parametrize("broadcasts", [
    [1, 2], "x", 5, True, {"a": 1}, {"a": None}, {"a": ["v"]}, {"a": {"v": "1"}},
    {"x" * 201: "1"}, {f"id{i}": "1" for i in range(51)},
])
@pytest.mark.parametrize("hello_done", [False, True])
def test_bad_broadcasts_close_1002_when_broadcasts_are_on(broadcasts, hello_done):
    message = {"messageType": "hello" if not hello_done else "broadcast_subscribe",
               "use_webpush": True, "broadcasts": broadcasts}
    with pytest.raises(MessageViolation) as info:
        parse_on(message, hello_done)
    assert info.value.row == Close.BAD_BROADCASTS and info.value.row.code == 1002


def test_broadcast_limits_are_inclusive():
    ok = {f"{i:0>200}": "v" for i in range(50)}
    assert len(parse_on({"messageType": "broadcast_subscribe", "broadcasts": ok}).broadcasts) == 50


def test_hello_reply_carries_the_broadcasts_object_and_the_broadcast_frame():
    reply = simplejson.loads(hello_reply(UAID, 0, "e", {MONITOR: "2", "errors": {"x": "Broadcast not found"}}))
    assert reply["broadcasts"] == {MONITOR: "2", "errors": {"x": "Broadcast not found"}}
    assert simplejson.loads(hello_reply(UAID, 0, "e", {}))["broadcasts"] == {}
    assert broadcast_frame({MONITOR: "2"}) == \
        '{"messageType":"broadcast","broadcasts":{"remote-settings/monitor_changes":"2"}}'


def test_ping_reply():
    assert PING_REPLY == "{}"


def test_server_frames_are_compact():
    for text in (hello_reply(UAID, 300, "e"), hello_error(401, "x"), register_reply(CHID, "u"),
                 register_error(CHID), overloaded_error(), unregister_error("r", CHID),
                 unregister_reply({"messageType": "unregister", "channelID": CHID})):
        assert ", " not in text and ": " not in text and "\n" not in text
        assert isinstance(simplejson.loads(text), dict)

