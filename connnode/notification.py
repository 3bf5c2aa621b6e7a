"""The Notification: one push message as the nodes pass it around.

One class knows every shape a message takes (PROTOCOL.md 2.7 frame, 3.2
router body, 6.3 storage item and sort key) and the expiry rule, so the
endpoint, the router API, the drain and the storage layer cannot drift apart.
"""
import re
import time

from connnode.encoding import compact_json
from connnode.protocol import is_json_int

CHANNEL_ROW_KEY = " "
_ABSENT = object()
# A DynamoDB table name (3-255 of [a-zA-Z0-9_.-]).
_is_table_name = re.compile(r"[A-Za-z0-9_.-]{3,255}").fullmatch


class Notification:
    __slots__ = ("uaid", "chid", "version", "ttl", "timestamp", "topic",
                 "sortkey_timestamp", "data", "headers", "legacy_sort_key", "stored_in",
                 "tracked")

    def __init__(self, uaid, chid, version, ttl, timestamp, topic=None,
                 sortkey_timestamp=None, data=None, headers=None, legacy_sort_key=None,
                 stored_in=None, tracked=False):
        self.uaid = uaid
        self.chid = chid
        self.version = version
        self.ttl = ttl
        self.timestamp = timestamp
        self.topic = topic
        self.sortkey_timestamp = sortkey_timestamp
        self.data = data or None
        self.headers = headers if self.data else None
        self.legacy_sort_key = legacy_sort_key
        #: The message table already holding this message (durable direct
        #: delivery: stored before the endpoint's 201), or None.
        self.stored_in = stored_in
        #: Lifecycle events are logged for it (connnode/lifecycle.py).
        self.tracked = tracked

    def __repr__(self):
        return f"<Notification {self.sort_key} ttl={self.ttl}>"

    # -- kinds and keys ------------------------------------------------------
    @property
    def is_timestamped(self):
        return self.sortkey_timestamp is not None and self.topic is None and not self.legacy_sort_key

    @property
    def sort_key(self):
        if self.legacy_sort_key:
            return self.legacy_sort_key
        if self.topic is not None:
            return f"01:{self.chid}:{self.topic}"
        return f"02:{self.sortkey_timestamp}:{self.chid}"

    def expired(self, now):
        """True when ``now`` (seconds) >= timestamp + ttl (6.3)."""
        return int(now) >= self.timestamp + (self.ttl or 0)

    # -- the browser's frame (2.7) --------------------------------------------
    def frame(self):
        message = {"messageType": "notification", "channelID": self.chid, "version": self.version}
        if self.data:
            message["data"] = self.data
            message["headers"] = self.headers or {}
        return compact_json(message)

    # -- the private router body (3.2) ----------------------------------------
    def push_body(self):
        body = {"channelID": self.chid, "version": self.version, "ttl": self.ttl,
                "topic": self.topic, "timestamp": self.timestamp,
                "sortkey_timestamp": self.sortkey_timestamp}
        if self.data:
            body["data"] = self.data
            body["headers"] = self.headers or {}
        if self.stored_in is not None:
            body["stored_in"] = self.stored_in
        if self.tracked:
            body["tracked"] = True
        return body

    @classmethod
    def from_push_body(cls, uaid, body, now=None):
        """Build from a PUT /push body; ValueError when it is not usable.

        3.2 requires only ``channelID`` and ``version``. A missing ``ttl`` is
        0 (deliver now, never saved), a missing ``timestamp`` is ``now``,
        and a message with neither ``topic`` nor ``sortkey_timestamp`` gets
        the receipt time in microseconds as its sort key, should it be saved
        at close. ``stored_in`` (ours, durable direct delivery) names the
        message table that already holds the message; ``tracked`` (ours,
        true or absent) asks for its lifecycle events."""
        if not isinstance(body, dict):
            raise ValueError("body is not an object")
        chid, version = body.get("channelID"), body.get("version")
        if not isinstance(chid, str) or not isinstance(version, str):
            raise ValueError("channelID and version must be strings")
        ttl, timestamp = body.get("ttl", 0), body.get("timestamp", _ABSENT)
        topic, skt = body.get("topic"), body.get("sortkey_timestamp")
        if timestamp is _ABSENT or (topic is None and skt is None):
            # Only a minimal body needs the clock (not the endpoint's full one).
            now = time.time() if now is None else now
            if timestamp is _ABSENT:
                timestamp = int(now)
        data, headers = body.get("data"), body.get("headers")
        stored_in = body.get("stored_in")
        if stored_in is not None and not (isinstance(stored_in, str) and _is_table_name(stored_in)):
            raise ValueError("stored_in must be a table name")
        if not is_json_int(ttl) or not is_json_int(timestamp) or (skt is not None and not is_json_int(skt)):
            raise ValueError("ttl, timestamp and sortkey_timestamp must be integers")
        if topic is not None and not isinstance(topic, str):
            raise ValueError("topic must be a string or null")
        if data is not None and not isinstance(data, str):
            raise ValueError("data must be a string")
        if headers is not None and not (isinstance(headers, dict)
                                        and all(isinstance(v, str) for v in headers.values())):
            raise ValueError("headers must be an object of strings")
        if topic is None and skt is None:
            skt = int(now * 1_000_000)
        notification = cls(uaid, chid, version, ttl, timestamp, topic=topic,
                           sortkey_timestamp=skt, data=data, headers=headers, stored_in=stored_in)
        if "tracked" in body:
            notification.tracked = body["tracked"] is True
        return notification

    # -- storage (6.3) -------------------------------------------------------
    def item(self, now, max_ttl):
        """Plain attributes of the stored item, without the uaid key."""
        record = {"chidmessageid": self.sort_key, "updateid": self.version, "ttl": self.ttl,
                  "timestamp": self.timestamp, "expiry": int(now) + min(self.ttl, max_ttl)}
        if self.data:
            record["data"] = self.data
            if self.headers:
                record["headers"] = dict(self.headers)
        if self.tracked:
            record["tracked"] = True
        return record

    @classmethod
    def from_item(cls, uaid, item):
        """Read a stored item (plain attributes). Returns None for the channel row."""
        sort_key = item["chidmessageid"]
        if sort_key == CHANNEL_ROW_KEY:
            return None
        topic = skt = legacy = None
        if sort_key.startswith("01:"):
            _, chid, topic = sort_key.split(":", 2)
        elif sort_key.startswith("02:"):
            _, skt_text, chid = sort_key.split(":", 2)
            skt = int(skt_text)
        else:
            chid, legacy = sort_key.split(":", 1)[0], sort_key
        return cls(uaid, chid, item.get("updateid", ""), int(item.get("ttl", 0)),
                   int(item.get("timestamp", 0)), topic=topic, sortkey_timestamp=skt,
                   data=item.get("data"), headers=item.get("headers"), legacy_sort_key=legacy,
                   tracked=item.get("tracked") is True)

