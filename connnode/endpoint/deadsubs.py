"""The dead-subscription cache: endpoints that answered 410 are refused again
from memory, without a storage call.

Why it exists: publishers often keep sending to subscriptions that answered
410 (no router record, 103; channel not registered or record unusable, 106;
record gone while routing, 105). Each such POST would cost the endpoint a
DynamoDB read to learn the same answer again. This cache, one per endpoint
worker, remembers the answer for ``dead_subscription_ttl`` seconds and
repeats it (same status, errno and message) for the same endpoint path.

* The key is the endpoint path after ``/wpush/`` (``v1/<token>``,
  ``v2/<token>`` or ``<token>``), checked before the token is even
  decrypted. A re-subscription, even of the same channel id, gets a new
  Fernet token (a fresh IV each time), so the cache can never block a live
  subscription. Keys longer than ``MAX_KEY_LENGTH`` are not remembered (a
  real token is under 200 characters), which bounds an entry's size.
* Only storage answers are remembered (status ``DEAD_STATUS``, 410): a 404
  is decided from the URL alone at the cost of one decrypt, and caching
  junk tokens would only push real entries out.
* A repeat does not renew an entry: it expires ``ttl`` seconds after the
  answer that storage gave.
* Bounded: an LRU of ``max_entries`` (a hit counts as a use); the least
  recently used entry goes first. About 0.5 KB an entry at most.
* A known-dead endpoint is answered 410 before the later checks of 4.6
  (VAPID, body, headers): whatever the rest of the request, storage would
  answer 410.

The clock is injectable (``clock``, seconds, monotonic) for unit tests.
"""
import time
from collections import OrderedDict

MAX_KEY_LENGTH = 300


class DeadSubscriptions:
    """``key`` -> (status, errno, message) for ``ttl`` seconds, at most
    ``max_entries`` of them."""

    __slots__ = ("ttl", "max_entries", "clock", "_entries")

    def __init__(self, ttl, max_entries, clock=time.monotonic):
        if not ttl > 0 or max_entries < 1:
            raise ValueError("the dead-subscription cache needs ttl > 0 and max_entries >= 1")
        self.ttl = float(ttl)
        self.max_entries = int(max_entries)
        self.clock = clock
        self._entries = OrderedDict()  # key -> (expires at, (status, errno, message))

    @classmethod
    def from_settings(cls, settings, clock=time.monotonic):
        """The cache, or None when ``dead_subscription_ttl`` or
        ``dead_subscription_max_entries`` is 0 (off)."""
        if settings.dead_subscription_ttl <= 0 or settings.dead_subscription_max_entries < 1:
            return None
        return cls(settings.dead_subscription_ttl, settings.dead_subscription_max_entries, clock)

    def __len__(self):
        return len(self._entries)

    def get(self, key):
        """(status, errno, message) remembered for ``key``, or None."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        if self.clock() >= entry[0]:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return entry[1]

    def remember(self, key, status, errno, message):
        if len(key) > MAX_KEY_LENGTH:
            return
        entries = self._entries
        entries[key] = (self.clock() + self.ttl, (status, errno, message))
        entries.move_to_end(key)
        while len(entries) > self.max_entries:
            entries.popitem(last=False)
