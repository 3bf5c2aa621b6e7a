"""Rate limits of POST /wpush: token buckets per client IP, per VAPID public
key and per subscription, kept in the endpoint worker's memory.

Why it exists: the endpoint node is the one public write path, and every
POST that reaches storage costs a DynamoDB read and milliseconds of CPU.
Anyone who holds an endpoint URL can send to it. A publisher over its budget
is answered 429 (RFC 8030 section 8.4) with ``Retry-After`` before any
storage call: a dict lookup and a little arithmetic per limit.

The three limits and where POST /wpush checks them (``connnode/endpoint/app.py``):

* **ip**: every POST, first of all (before the token is decrypted). The
  address is the socket's peer (``REMOTE_ADDR``); ``X-Forwarded-For`` is read
  only when that peer is one of ``trusted_proxies`` (see ``ClientAddress``).
  An IPv6 client counts by its /64, the block one host usually holds.
* **key**: a POST whose VAPID signature was verified, by the raw public key
  (a forged signature cannot spend a real key's budget).
* **subscription**: after the token was decrypted and VAPID (if any) checked,
  by uaid + chid.

Each limit is a ``TokenBucketTable``: ``rate`` tokens a second up to ``burst``;
a POST takes one. Memory is bounded: at most ``max_buckets`` buckets a
table. A bucket untouched for ``burst / rate`` seconds is full, which is the
same as having no bucket, so when the table is full those are dropped first;
if it is still too full the least recently touched buckets go (they start
again with a full burst: a leak of at most one burst each, only when more
than ``max_buckets`` keys are active at once). A sweep (O(n log n) at worst, a
few ms for 10,000 buckets) runs at most once per
``max_buckets / 8`` new keys.

Per worker: each gunicorn worker (and each host) keeps its own tables, so
with N workers behind one port a client can get up to N times the rate;
``README.md`` ("Rate limits and dead subscriptions") says how to move to a
shared limiter.

The clock is injectable (``clock``, seconds, monotonic) for unit tests.
"""
import ipaddress
import math
import re
import socket
import time

from connnode.endpoint.errors import rate_limited

IP, KEY, SUBSCRIPTION = "ip", "key", "subscription"

SHRINK_FRACTION = 8  # a full table sheds at least 1/8 of its buckets
MEMO_SIZE = 4096  # addresses whose trusted-network membership is remembered

# What an X-Forwarded-For entry must look like to be used (an IPv4 or IPv6
# address; a full parse would cost microseconds on every request).
_ADDRESS_RE = re.compile(r"[0-9A-Fa-f:.]{2,45}")
_V4_MAPPED = bytes(10) + b"\xff\xff"


class TokenBucketTable:
    """Token buckets by key: ``rate`` tokens/s refill, at most ``burst``."""

    __slots__ = ("rate", "burst", "max_buckets", "full_after", "clock", "_buckets")

    def __init__(self, rate, burst, max_buckets, clock=time.monotonic):
        if not rate > 0 or burst < 1 or max_buckets < 1:
            raise ValueError("a token bucket needs rate > 0, burst >= 1, max_buckets >= 1")
        self.rate = float(rate)
        self.burst = float(burst)
        self.max_buckets = int(max_buckets)
        self.full_after = self.burst / self.rate
        self.clock = clock
        self._buckets = {}  # key -> [tokens after the last touch, time of the last touch]

    def __len__(self):
        return len(self._buckets)

    def take(self, key):
        """Take a token for ``key``: 0.0 when one was there, else the seconds
        until one will be (nothing is taken then)."""
        now = self.clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_buckets:
                self._shrink(now)
            self._buckets[key] = [self.burst - 1.0, now]
            return 0.0
        tokens = bucket[0] + (now - bucket[1]) * self.rate
        if tokens > self.burst:
            tokens = self.burst
        bucket[1] = now
        if tokens >= 1.0:
            bucket[0] = tokens - 1.0
            return 0.0
        bucket[0] = tokens
        return (1.0 - tokens) / self.rate

    def _shrink(self, now):
        """Drop the full buckets, then the least recently touched ones until
        at most ``max_buckets - max_buckets / 8`` remain."""
        buckets = self._buckets
        full_after = self.full_after
        for key in [key for key, (_, last) in buckets.items() if now - last >= full_after]:
            del buckets[key]
        keep = self.max_buckets - max(1, self.max_buckets // SHRINK_FRACTION)
        excess = len(buckets) - keep
        if excess > 0:
            oldest = sorted(buckets.items(), key=lambda item: item[1][1])[:excess]
            for key, _ in oldest:
                del buckets[key]


def _networks(entries):
    """(frozenset of single addresses as REMOTE_ADDR shows them, tuple of
    wider networks) of ``trusted_proxies`` entries."""
    singles, wider = set(), []
    for entry in entries:
        network = ipaddress.ip_network(entry, strict=False)
        if network.num_addresses == 1:
            singles.add(str(network.network_address))
        else:
            wider.append(network)
    return frozenset(singles), tuple(wider)


class ClientAddress:
    """The address a request counts against: the socket's peer, or, when the
    peer is a trusted proxy, the right-most ``X-Forwarded-For`` entry that is
    not itself a trusted proxy (entries to its left were written by the
    client and are ignored). An entry that does not look like an address
    ends the walk: the last trusted hop's address counts. Trusted single
    addresses are compared as text (write them as the proxy writes them);
    networks cost an address parse per hop."""

    def __init__(self, trusted_proxies=()):
        self.singles, self.wider = _networks(trusted_proxies)
        self.enabled = bool(self.singles or self.wider)
        self._memo = {}  # address -> in one of the wider networks (bounded)

    def trusted(self, address):
        if address in self.singles:
            return True
        if not self.wider:
            return False
        known = self._memo.get(address)
        if known is None:
            try:
                parsed = ipaddress.ip_address(address)
            except ValueError:
                known = False
            else:
                known = any(parsed in network for network in self.wider)
            if len(self._memo) >= MEMO_SIZE:
                self._memo.clear()
            self._memo[address] = known
        return known

    def of(self, peer, forwarded_for):
        """The client address of a request from ``peer`` (REMOTE_ADDR)
        carrying ``forwarded_for`` (the X-Forwarded-For value or None)."""
        if not self.enabled or not forwarded_for or not self.trusted(peer):
            return peer
        address = peer
        for entry in reversed(forwarded_for.split(",")):
            entry = entry.strip()
            if not _ADDRESS_RE.fullmatch(entry):
                return address
            address = entry
            if not self.trusted(entry):
                return entry
        return address


def bucket_key(address):
    """The IP bucket of an address: IPv4 as is, IPv6 by its /64 (an IPv4
    address mapped into IPv6 as that IPv4 address)."""
    if not address or ":" not in address:
        return address or ""
    try:
        packed = socket.inet_pton(socket.AF_INET6, address.split("%", 1)[0])
    except (OSError, ValueError):
        return address
    if packed[:12] == _V4_MAPPED:
        return socket.inet_ntop(socket.AF_INET, packed[12:])
    return packed[:8].hex() + "::/64"


def _table(rate, burst, max_buckets, clock):
    return TokenBucketTable(rate, burst, max_buckets, clock) if rate > 0 else None


class RateLimits:
    """The three tables of one endpoint worker (a rate of 0 turns a limit
    off) and the refusal: ``check_*`` raise the 429 ``EndpointError`` and
    count ``notification.rate_limited`` (tag ``limit``)."""

    def __init__(self, metrics, ip=(0, 1), key=(0, 1), subscription=(0, 1),
                 max_buckets=10000, trusted_proxies=(), clock=time.monotonic):
        """``ip``, ``key``, ``subscription``: (rate per second, burst)."""
        self.metrics = metrics
        self.ip = _table(*ip, max_buckets, clock)
        self.key = _table(*key, max_buckets, clock)
        self.subscription = _table(*subscription, max_buckets, clock)
        self.address = ClientAddress(trusted_proxies)

    @classmethod
    def from_settings(cls, settings, metrics, clock=time.monotonic):
        return cls(metrics,
                   ip=(settings.rate_limit_ip_rate, settings.rate_limit_ip_burst),
                   key=(settings.rate_limit_key_rate, settings.rate_limit_key_burst),
                   subscription=(settings.rate_limit_subscription_rate,
                                 settings.rate_limit_subscription_burst),
                   max_buckets=settings.rate_limit_max_buckets,
                   trusted_proxies=settings.trusted_proxies, clock=clock)

    def check_ip(self, peer, headers):
        """``peer``: REMOTE_ADDR; ``headers``: the request's (for
        X-Forwarded-For, read only from a trusted proxy)."""
        if self.ip is None:
            return
        address = self.address
        if address.enabled:
            peer = address.of(peer, headers.get("X-Forwarded-For"))
        wait = self.ip.take(bucket_key(peer))
        if wait:
            self._refuse(IP, wait)

    def check_key(self, public_key_raw):
        if self.key is not None:
            wait = self.key.take(public_key_raw)
            if wait:
                self._refuse(KEY, wait)

    def check_subscription(self, uaid, chid):
        if self.subscription is not None:
            wait = self.subscription.take(uaid + chid)
            if wait:
                self._refuse(SUBSCRIPTION, wait)

    def _refuse(self, limit, wait):
        self.metrics.increment("notification.rate_limited", tags={"limit": limit})
        raise rate_limited(max(1, math.ceil(wait)), limit)
