"""Random JSON content, and the valid client messages the fuzzer sends.

Strings, scalars and nested values (odd Unicode, lone surrogates, huge and
empty strings), values of the wrong type for a field, random extra fields,
several JSON encodings of one message, channel IDs and keys good and bad;
then the messages a node must answer without closing the connection (ack,
nack, broadcast_subscribe, register and unregister with random content) and
the hellos it must accept. Every function takes the connection's
``random.Random`` so that a connection's bytes depend on its seed alone.
"""
import base64
import json
import string
import uuid


# -- random JSON content ------------------------------------------------------------

ODD_CHARS = ["é", "中", "😀", "\u0000", "\u2028", "\ufeff", "\U0010ffff", "\x7f", "\"", "\\",
             "\n", "\u200b", "𝕏"]
LONE_SURROGATES = ["\ud800", "\udfff", "\udbff", "a\udc00b"]


def rand_string(rng):
    r = rng.random()
    if r < 0.3:
        return "".join(rng.choice(string.printable) for _ in range(rng.randint(0, 40)))
    if r < 0.45:
        return str(uuid.UUID(int=rng.getrandbits(128)))
    if r < 0.6:
        return "".join(rng.choice(ODD_CHARS + list("abc")) for _ in range(rng.randint(1, 20)))
    if r < 0.65:
        return rng.choice(LONE_SURROGATES)
    if r < 0.7:
        return "x" * rng.randint(200, 3000)
    if r < 0.8:
        return ""
    return "%032x" % rng.getrandbits(128)


def rand_scalar(rng):
    return rng.choice([
        None, True, False, 0, 1, -1, 100, 2**31, 2**64 + 1, -(2**63), 1.5, -0.0, 1e308, 5e-324,
        rand_string(rng), rand_string(rng)])


def rand_value(rng, depth=0):
    r = rng.random()
    if depth >= 3 or r < 0.6:
        return rand_scalar(rng)
    if r < 0.8:
        return [rand_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {rand_string(rng): rand_value(rng, depth + 1) for _ in range(rng.randint(0, 4))}


def other_type(rng, kind):
    """A value that is not of ``kind`` ("str", "list", "dict", "int", "bool")."""
    pool = {
        "str": [None, 0, 7, -1.5, True, False, [], ["x"], {}, {"a": 1}],
        "list": [None, 0, 3, "updates", "", True, {}, {"channelID": "x"}, 2.5],
        "dict": [None, 0, "x", "", True, [], [1, 2], 1e10],
        "int": [None, "200", "", True, 1.5, [], {}, [200]],
        "bool": [None, "", "true", [], {}, 0.0],
    }[kind]
    return rng.choice(pool)


def junk_fields(rng, message):
    """Random extra keys (never ``messageType``)."""
    if rng.random() < 0.3:
        for _ in range(rng.randint(1, 3)):
            key = rand_string(rng)
            if key != "messageType":
                message[key] = rand_value(rng)
    return message


def encode(rng, message):
    """JSON text bytes, compact or spaced, ASCII-escaped or raw UTF-8."""
    separators = rng.choice([(",", ":"), (", ", ": ")])
    ascii_only = rng.random() < 0.5
    try:
        data = json.dumps(message, ensure_ascii=ascii_only, separators=separators).encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: only its \\u escape is UTF-8
        data = json.dumps(message, ensure_ascii=True, separators=separators).encode("utf-8")
    if rng.random() < 0.05:
        data = b" \t\r\n" + data + b"\n "
    return data


def canonical_chid(rng):
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def bad_chid(rng):
    chid = canonical_chid(rng)
    return rng.choice([
        rand_string(rng), chid.upper(), chid.replace("-", ""), "{%s}" % chid, "urn:uuid:" + chid,
        chid[:-1], chid + "0", " " + chid, other_type(rng, "str"), rng.choice(LONE_SURROGATES),
        chid[:8] + "\u0000" + chid[9:]])


def bad_key(rng):
    point = b"\x04" + rng.randbytes(64)  # on the curve with negligible probability
    return rng.choice([
        "", "AAAA", rand_string(rng), base64.urlsafe_b64encode(point).decode(),
        base64.urlsafe_b64encode(point).decode().rstrip("="), base64.b64encode(point[:33]).decode(),
        "!" * 87, 0, False, [], {"x": 1}, 1.5])


# -- valid messages: answered without closing ---------------------------------------------
# Each returns (message object, reply it must get: None, "register", "unregister").

def msg_ack(rng):
    r = rng.random()
    message = {"messageType": "ack"}
    if r < 0.15:
        pass
    elif r < 0.35:
        message["updates"] = other_type(rng, "list")
    else:
        updates = []
        for _ in range(rng.randint(0, 6)):
            if rng.random() < 0.2:
                updates.append(rand_value(rng))
                continue
            update = {}
            if rng.random() < 0.85:
                update["channelID"] = canonical_chid(rng) if rng.random() < 0.6 else rand_value(rng)
            if rng.random() < 0.85:
                update["version"] = rand_string(rng) if rng.random() < 0.7 else rand_value(rng)
            if rng.random() < 0.8:
                update["code"] = (rng.choice([100, 101, 102]) if rng.random() < 0.5
                                  else rand_value(rng))
            updates.append(junk_fields(rng, update))
        message["updates"] = updates
    return junk_fields(rng, message), None


def msg_nack(rng):
    message = {"messageType": "nack"}
    r = rng.random()
    if r < 0.1:
        pass
    elif r < 0.2:
        message["version"] = ""
    elif r < 0.7:
        message["version"] = rand_string(rng)
    else:
        message["version"] = other_type(rng, "str")
    if rng.random() < 0.8:
        message["code"] = rng.choice([301, 302, 303]) if rng.random() < 0.5 else rand_value(rng)
    return junk_fields(rng, message), None


def msg_broadcast_subscribe(rng):
    message = {"messageType": "broadcast_subscribe"}
    if rng.random() < 0.9:
        message["broadcasts"] = (rand_value(rng) if rng.random() < 0.5
                                 else {"remote-settings/monitor_changes": '"0"'})
    return junk_fields(rng, message), None


def msg_register(rng, storage_writes):
    """Almost always an error reply (401 / 400, no storage); rarely a real register."""
    message = {"messageType": "register"}
    r = rng.random()
    if r < 0.15:
        pass  # Missing ChannelID
    elif r < 0.6:
        message["channelID"] = bad_chid(rng)
    elif r < 0.97 or not storage_writes:
        message["channelID"] = canonical_chid(rng)
        message["key"] = bad_key(rng)
    else:
        message["channelID"] = canonical_chid(rng)
    return junk_fields(rng, message), "register"


def msg_unregister(rng, storage_writes):
    message = {"messageType": "unregister"}
    r = rng.random()
    if r < 0.15:
        pass
    elif r < 0.95 or not storage_writes:
        message["channelID"] = rng.choice([rand_string(rng), other_type(rng, "str"),
                                           rng.choice(LONE_SURROGATES), "not-a-uuid"])
        try:  # a random string may parse as a UUID: that one is a real unregister
            uuid.UUID(message["channelID"])
            message["channelID"] = "z" + message["channelID"]
        except (ValueError, TypeError, AttributeError):
            pass
    else:
        chid = canonical_chid(rng)
        message["channelID"] = rng.choice([chid, chid.upper(), chid.replace("-", "")])
    if rng.random() < 0.7:
        message["code"] = rng.choice([200, 201, 202]) if rng.random() < 0.5 else rand_value(rng)
    return junk_fields(rng, message), "unregister"


def valid_message(rng, storage_writes=True):
    r = rng.random()
    if r < 0.3:
        return msg_ack(rng)
    if r < 0.5:
        return msg_nack(rng)
    if r < 0.6:
        return msg_broadcast_subscribe(rng)
    if r < 0.8:
        return msg_register(rng, storage_writes)
    return msg_unregister(rng, storage_writes)


def hello_message(rng):
    """A hello the node must accept (use_webpush truthy), often with odd fields."""
    message = {"messageType": "hello", "use_webpush": True, "broadcasts": {}}
    if rng.random() < 0.3:
        message["use_webpush"] = rng.choice([True, 1, "yes", "false", [0], {"a": 1}, 0.5, -1])
        if rng.random() < 0.5:
            message["uaid"] = rng.choice([
                None, 0, [], {}, "", "%031x" % rng.getrandbits(124),
                ("%032x" % rng.getrandbits(128)).upper(),
                canonical_chid(rng), "%032x" % rng.getrandbits(128), rand_string(rng)])
        if rng.random() < 0.5:
            message["broadcasts"] = rand_value(rng)
        if rng.random() < 0.3:
            message["channelIDs"] = rand_value(rng)
        junk_fields(rng, message)
    return message

