"""The WebSocket wire format of the connection node (PROTOCOL.md section 2).

``parse_client_frame`` turns one client text frame into a small immutable
message or raises ``MessageViolation`` carrying its close row (1002, or 1007
for text that cannot have come from UTF-8); register/unregister
validation errors come back as ready-to-send reply text on the message. The
builders produce every other server frame as compact JSON (notification
frames live in ``notification.py``). Keeping this pure (no sockets, storage or
gevent) makes every reason string and field rule testable without a socket,
and lets the session state machine deal only in typed messages.

Decisions where the spec is silent:

* JSON is strict: ``NaN``/``Infinity`` are rejected; non-integer numbers are
  kept as ``Decimal`` so that any number (``1e999`` too) echoes back exactly in
  an unregister reply. A duplicate key keeps its last value. Integers longer
  than Python's int-string limit (4300 digits) are rejected.
* Objects and arrays nested deeper than ``MAX_NESTING`` are a violation, so
  parsing and re-encoding never depend on the caller's stack depth.
* ``text`` must be a ``str``; one holding a lone surrogate cannot have come
  from UTF-8 and is a violation. Escaped surrogates (``"\\ud800"``) are valid
  JSON and are accepted; frames we build are ASCII-only, so echoing them is safe.
* A "UUID" is 32 hex digits of any case, undashed or dashed 8-4-4-4-12.
* Integers: only JSON integer tokens count; ``true``, ``200.0`` and ``"200"``
  do not.
* ``broadcasts`` (hello, broadcast_subscribe; issue 15) is checked only when
  the caller says broadcasts are on (``parse_client_frame(...,
  broadcasts=True)``): then anything but an object of at most
  ``MAX_BROADCASTS`` ids (strings of at most ``MAX_BROADCAST_ID`` chars) with
  string versions is ``Close.BAD_BROADCASTS`` (1002). Absent or ``null`` is
  no broadcasts. While broadcasts are off the content is ignored, as PROTOCOL
  2.4 and 2.11 say. Pairs come back in the client's order, duplicates
  resolved by JSON's last-key rule.
"""
import re
import uuid
from dataclasses import dataclass

import simplejson

from connnode.connection.closes import Close
from connnode.encoding import b64url_decode, compact_json, load_p256_public_key

MORE_INFO = "http://autopush.readthedocs.io/en/latest/api/websocket.html#private-http-endpoint"
PING_REPLY = "{}"
MAX_NESTING = 64
MAX_BROADCASTS = 50
MAX_BROADCAST_ID = 200

#: A uaid as the wire and the router API carry it: 32 lowercase hex digits (1.1).
is_uaid = re.compile(r"[0-9a-f]{32}").fullmatch
_UUID_RE = re.compile(
    r"[0-9a-fA-F]{32}|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)
_SURROGATE_RE = re.compile("[\ud800-\udfff]")
_JSON_STRING_RE = re.compile(r'"(?:[^"\\]|\\.)*"')
_ABSENT = object()


class MessageViolation(Exception):
    """A text message breaks PROTOCOL 2.2; the session closes with ``row``
    (a ``Close`` row). Frames that break RFC 6455 are the transport's
    ``FrameViolation``."""

    def __init__(self, row):
        super().__init__(row.reason)
        self.row = row


@dataclass(slots=True, frozen=True)
class Hello:
    """``uaid``: a valid uaid string (1.1) or None. After hello it is a duplicate."""

    uaid: str | None
    use_webpush: bool
    #: (id, version) pairs the client named; empty when none (or broadcasts off).
    broadcasts: tuple[tuple[str, str], ...] = ()


@dataclass(slots=True, frozen=True)
class Register:
    """2.5: ``error`` (reply text) or ``chid`` is set, never both. ``key``: the
    65 raw bytes, None when unrestricted. ``channel_id_raw``: as sent, or None.
    """

    channel_id_raw: object
    chid: str | None
    key: bytes | None
    error: str | None


@dataclass(slots=True, frozen=True)
class Unregister:
    """2.6: canonical ``chid`` or ``error`` (reply text). ``code``: a JSON
    integer or None. ``echo``: the client's object, for ``unregister_reply``.
    """

    chid: str | None
    code: int | None
    error: str | None
    echo: dict


@dataclass(slots=True, frozen=True)
class Ack:
    """2.8: (chid, version, code) of each usable element of ``updates``.

    ``nonempty``: ``updates`` was a non-empty list, so ``ua.command.ack`` counts
    the frame even if no element was usable; else the frame is ignored. Chids
    are kept as sent: clients echo the notification's canonical chid.
    """

    updates: tuple[tuple[str, str, int], ...]
    nonempty: bool


@dataclass(slots=True, frozen=True)
class Nack:
    """``version`` is None when missing, empty or not a string: ignore it (2.9)."""

    version: str | None
    code: int


@dataclass(slots=True, frozen=True)
class Ping:
    """A client ping: ``{}`` or ``messageType`` "ping" after hello (2.10)."""


@dataclass(slots=True, frozen=True)
class BroadcastSubscribe:
    """2.11: the (id, version) pairs to subscribe to; ignored (and empty)
    while broadcasts are off."""

    broadcasts: tuple[tuple[str, str], ...] = ()


def parse_client_frame(text: str, hello_done: bool, broadcasts: bool = False):
    """One client text frame -> message, or raise MessageViolation (2.2 steps 3-6).

    ``broadcasts``: the node has a broadcast source, so ``broadcasts`` fields
    are read and checked (else ignored)."""
    if _SURROGATE_RE.search(text):
        raise MessageViolation(Close.INVALID_UTF8)
    try:
        obj = simplejson.loads(text, use_decimal=True, allow_nan=False)
    except (ValueError, RecursionError) as exc:
        raise MessageViolation(Close.INVALID_JSON) from exc
    if not isinstance(obj, dict):
        raise MessageViolation(Close.NOT_AN_OBJECT)
    if _nesting_exceeds(text, MAX_NESTING):
        raise MessageViolation(Close.TOO_DEEP)
    message_type = obj.get("messageType")
    if not hello_done:
        if message_type != "hello":
            raise MessageViolation(Close.HELLO_FIRST)
        return _parse_hello(obj, broadcasts)
    if not obj or message_type == "ping":
        return Ping()
    if not isinstance(message_type, str) or message_type not in _PARSERS:
        raise MessageViolation(Close.UNKNOWN_MESSAGE_TYPE)
    if message_type in ("hello", "broadcast_subscribe"):
        return _PARSERS[message_type](obj, broadcasts)
    return _PARSERS[message_type](obj)


def _nesting_exceeds(text, limit):
    """Whether valid JSON ``text`` nests deeper than ``limit``. Call it only
    after a successful parse: the string regex is then linear.
    """
    if text.count("[") + text.count("{") <= limit:
        return False
    depth = 0
    for char in _JSON_STRING_RE.sub("", text):
        if char in "[{":
            depth += 1
            if depth > limit:
                return True
        elif char in "]}":
            depth -= 1
    return False


def _parse_hello(obj, broadcasts=False):
    uaid = obj.get("uaid")
    if not (isinstance(uaid, str) and is_uaid(uaid)):
        uaid = None
    pairs = _broadcast_pairs(obj.get("broadcasts")) if broadcasts else ()
    return Hello(uaid=uaid, use_webpush=_json_truthy(obj.get("use_webpush")), broadcasts=pairs)


def _parse_broadcast_subscribe(obj, broadcasts=False):
    return BroadcastSubscribe(_broadcast_pairs(obj.get("broadcasts")) if broadcasts else ())


def _broadcast_pairs(value):
    """A ``broadcasts`` object -> ((id, version), ...), or MessageViolation."""
    if value is None:
        return ()
    if not isinstance(value, dict) or len(value) > MAX_BROADCASTS:
        raise MessageViolation(Close.BAD_BROADCASTS)
    for broadcast_id, version in value.items():
        if len(broadcast_id) > MAX_BROADCAST_ID or not isinstance(version, str):
            raise MessageViolation(Close.BAD_BROADCASTS)
    return tuple(value.items())


def _json_truthy(value):
    """2.4 literally: absent, false, null, any numeric 0 and "" are falsy;
    ``[]`` and ``{}`` are truthy. (``in`` uses ``==``: ``Decimal("-0.0") == 0``.)
    """
    return value not in (None, False, 0, "")


def _parse_register(obj):
    if "channelID" not in obj:
        return Register(None, None, None, _error_frame("register", 401, "Missing ChannelID"))
    raw = obj["channelID"]
    sent = raw if isinstance(raw, str) else _ABSENT
    chid = _canonical_uuid(raw)
    if chid is None:
        reason = "Invalid UUID specified"
    elif chid != raw:
        reason = "Bad UUID format, use lower case, dashed format"
    else:
        reason = None
    if reason:
        return Register(raw, None, None, _error_frame("register", 401, reason, sent))
    key = obj.get("key")
    if key is not None:
        key = _decode_key(key)
        if key is None:
            error = _dumps({"messageType": "register", "channelID": chid,
                            "status": 400, "reason": "Invalid key"})
            return Register(raw, None, None, error)
    return Register(raw, chid, key, None)


def _decode_key(value):
    """65 raw bytes of an uncompressed P-256 public key in base64url, or None."""
    if not isinstance(value, str):
        return None
    try:
        raw = b64url_decode(value)
    except ValueError:
        return None
    return raw if load_p256_public_key(raw) is not None else None


def _parse_unregister(obj):
    code = obj.get("code")
    code = code if is_json_int(code) else None
    if "channelID" not in obj:
        return Unregister(None, code, unregister_error("Missing ChannelID"), obj)
    chid = _canonical_uuid(obj["channelID"])
    if chid is None:
        return Unregister(None, code, unregister_error("Invalid ChannelID", obj["channelID"]), obj)
    return Unregister(chid, code, None, obj)


def _parse_ack(obj):
    updates = obj.get("updates")
    if not isinstance(updates, list) or not updates:
        return Ack((), False)
    usable = tuple(
        (item["channelID"], item["version"], _int_or_zero(item.get("code")))
        for item in updates
        if isinstance(item, dict)
        and isinstance(item.get("channelID"), str)
        and isinstance(item.get("version"), str)
    )
    return Ack(usable, True)


def _parse_nack(obj):
    version = obj.get("version")
    if not (isinstance(version, str) and version):
        version = None
    return Nack(version, _int_or_zero(obj.get("code")))


_PARSERS = {
    "hello": _parse_hello,
    "register": _parse_register,
    "unregister": _parse_unregister,
    "ack": _parse_ack,
    "nack": _parse_nack,
    "broadcast_subscribe": _parse_broadcast_subscribe,
}


def _canonical_uuid(value):
    """Lowercase dashed form of a UUID string (any case, dashed or not), or None."""
    if isinstance(value, str) and _UUID_RE.fullmatch(value):
        return str(uuid.UUID(hex=value))
    return None


def is_json_int(value):
    """A JSON integer token: ``true``, ``200.0`` and ``"200"`` are not."""
    return isinstance(value, int) and not isinstance(value, bool)


def _int_or_zero(value):
    return value if is_json_int(value) else 0


# -- server frames ---------------------------------------------------------

def _dumps(obj):
    # simplejson defaults kept on purpose: ensure_ascii (output is ASCII even
    # when echoing lone surrogates), use_decimal (echoes parsed Decimals),
    # allow_nan=False (never emits non-JSON numbers).
    return compact_json(obj)


def _error_frame(message_type, status, reason, channel_id=_ABSENT):
    frame = {"messageType": message_type}
    if channel_id is not _ABSENT:
        frame["channelID"] = channel_id
    frame.update(status=status, reason=reason, more_info=MORE_INFO)
    return _dumps(frame)


def hello_reply(uaid: str, ping_interval: float, env: str, broadcasts=None) -> str:
    """2.4.1; ``ping`` only when ``ping_interval`` > 0, an integer when whole.
    ``broadcasts``: the reply's broadcasts object (delta and ``errors``), ``{}``
    when None."""
    frame = {"messageType": "hello", "uaid": uaid, "status": 200, "use_webpush": True}
    if ping_interval > 0:
        frame["ping"] = int(ping_interval) if float(ping_interval).is_integer() else float(ping_interval)
    frame.update(env=env, broadcasts=broadcasts or {})
    return _dumps(frame)


def broadcast_frame(broadcasts: dict) -> str:
    """``{"messageType":"broadcast","broadcasts":{...}}`` (2.11, issue 15)."""
    return _dumps({"messageType": "broadcast", "broadcasts": broadcasts})


def hello_error(status: int, reason: str) -> str:
    """A row of 2.4.2, e.g. ``hello_error(401, "duplicate hello")``."""
    return _error_frame("hello", status, reason)


def register_reply(chid: str, push_endpoint: str) -> str:
    return _dumps({"messageType": "register", "channelID": chid,
                   "status": 200, "pushEndpoint": push_endpoint})


def register_error(chid: str) -> str:
    """2.5: register_channel failed with anything but a throughput error."""
    return _dumps({"messageType": "register", "channelID": chid, "status": 500,
                   "reason": "An unexpected server error occurred"})


def overloaded_error() -> str:
    """2.5: register_channel hit a throughput error; the connection stays."""
    return _dumps({"messageType": "error", "reason": "overloaded", "status": 503})


def unregister_reply(echo: dict) -> str:
    """2.6: the client's object with ``"status": 200`` added."""
    return _dumps({**echo, "status": 200})


def unregister_error(reason: str, channel_id_raw=_ABSENT) -> str:
    """2.6: 401 with ``reason``; ``channelID`` echoed as sent (any JSON value) when given."""
    return _error_frame("unregister", 401, reason, channel_id_raw)
