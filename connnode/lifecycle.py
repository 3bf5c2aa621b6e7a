"""Message lifecycle events (issue 13, README "Message lifecycle events"):
one JSON log line (logger ``connnode.lifecycle``) per step of a tracked
message, so "where did my push go?" has an answer in the logs.

Stages and where they are emitted:

    accepted  endpoint node, answered 201 (``destination``: direct | stored)
    dropped   endpoint node, TTL 0 and no connected holder (nothing stored)
    deleted   endpoint node, DELETE /m of the message (``found``)
    delivered connection node, the frame was written (``via``: direct | stored)
    acked     connection node, the client acked it (``code``)
    nacked    connection node, the client nacked it (``code``)
    expired   connection node, read from storage past its TTL, not sent
    saved     connection node, an unacked direct message stored at close

Every line's ``fields`` hold ``stage``, ``message_id`` (the id of the
``Location`` URL, the frame's ``version``), ``uaid_hash`` (the uaid as logs
show it: its HMAC when ``key_hash`` is set), ``chid`` and the stage's own
fields.

Which messages are tracked is decided once, on the endpoint node, from
settings: none by default; those signed by a VAPID public key listed in
``tracking_keys``; or all with ``track_all``. The decision travels with the
message as ``tracked`` (``Notification.tracked``: ``"tracked": true`` in the
PUT /push body, a ``tracked`` attribute in the stored item), since the
connection node never sees the VAPID key. With tracking off, the endpoint
pays one attribute check per POST (``Tracker.on``) and the connection node
one (``notification.tracked``) per frame, ack or expiry; nothing else runs.
"""
import logging

from connnode.crypto import hash_uaid
from connnode.encoding import b64url_decode

log = logging.getLogger("connnode.lifecycle")
# Only tracked messages write these lines, and tracking is asked for
# explicitly: they show at a higher CONNNODE_LOG_LEVEL too.
log.setLevel(logging.INFO)

STAGES = ("accepted", "dropped", "deleted", "delivered", "acked", "nacked", "expired", "saved")


def parse_tracking_keys(text):
    """``KEY1,KEY2`` (base64url raw P-256 public keys, padding optional) ->
    a tuple of the keys without padding; ValueError for one that is not."""
    keys = []
    for entry in text.split(","):
        entry = entry.strip().rstrip("=")
        if not entry:
            continue
        try:
            raw = b64url_decode(entry)
        except ValueError:
            raw = b""
        if len(raw) != 65 or raw[0] != 4:
            raise ValueError(f"{entry[:16]!r}...: not a base64url uncompressed P-256 public key")
        keys.append(entry)
    return tuple(keys)


class Tracker:
    """Decides which messages are tracked and writes their events.

    ``on`` is False when this node tracks nothing by its own settings: the
    endpoint checks it (one attribute) before any tracking work. Connection
    nodes look at each message's ``tracked`` instead (the endpoint decided)."""

    __slots__ = ("keys", "track_all", "key_hash", "on")

    def __init__(self, keys=(), track_all=False, key_hash=""):
        self.keys = frozenset(b64url_decode(key) for key in keys)
        self.track_all = bool(track_all)
        self.key_hash = key_hash
        self.on = self.track_all or bool(self.keys)

    @classmethod
    def from_settings(cls, settings):
        return cls(getattr(settings, "tracking_keys", ()) or (),
                   getattr(settings, "track_all", False), getattr(settings, "key_hash", ""))

    def enabled_for(self, vapid_key):
        """Whether a message signed by ``vapid_key`` (raw public key bytes,
        or None for an unsigned message) is tracked."""
        return self.track_all or (vapid_key is not None and vapid_key in self.keys)

    def uaid_hash(self, uaid):
        return hash_uaid(self.key_hash, uaid) if uaid else uaid

    def event(self, stage, message_id, uaid, **fields):
        """One lifecycle line. Callers have checked that the message is tracked."""
        fields["stage"] = stage
        fields["message_id"] = message_id
        fields["uaid_hash"] = self.uaid_hash(uaid)
        log.info("message %s", stage, extra={"fields": fields})

    def message(self, stage, notification, **fields):
        """``event`` for a Notification (its version, uaid and chid)."""
        self.event(stage, notification.version, notification.uaid, chid=notification.chid,
                   **fields)

    def nacked(self, session, version, code):
        """A nack names only the version: find the outstanding message it
        means (direct first, then the stored batch) and log it if tracked.
        Nacks are rare (a client's error), so this runs for every one."""
        for notification in (*session.direct.values(), *session.batch.values()):
            if getattr(notification, "version", None) == version:
                if notification.tracked:
                    self.message("nacked", notification, code=code)
                return


#: A Tracker that tracks nothing (tests, tools that build a context by hand).
OFF = Tracker()
