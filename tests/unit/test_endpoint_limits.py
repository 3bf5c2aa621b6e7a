"""Unit tests of connnode/endpoint/limits.py (token buckets, client address,
the 429) with an injected clock, and of where POST /wpush checks the limits
(an app over a storage double that counts its calls)."""
import time
import uuid

import pytest
from py_vapid import Vapid02

from connnode.crypto import TokenCrypto
from connnode.endpoint.app import create_endpoint_app
from connnode.endpoint.errors import RATE_LIMITED_ERRNO, RATE_LIMITED_STATUS, EndpointError
from connnode.endpoint.limits import (ClientAddress, RateLimits, TokenBucketTable,
                                      bucket_key)
from connnode.settings import Settings
from tests.conftest import TEST_CRYPTO_KEY


class Clock:
    def __init__(self, now=1000.0):
        self.now = now

    def __call__(self):
        return self.now

    def advance(self, seconds):
        self.now += seconds


class Metrics:
    def __init__(self):
        self.counts = []

    def increment(self, name, count=1, tags=None):
        self.counts.append((name, tags))

    def timing(self, name, seconds, tags=None):
        pass


# -- TokenBucketTable ------------------------------------------------------------------

def test_burst_then_refused_with_the_wait_for_one_token():
    clock = Clock()
    table = TokenBucketTable(rate=2, burst=3, max_buckets=10, clock=clock)
    assert [table.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert table.take("a") == pytest.approx(0.5)
    clock.advance(0.2)
    assert table.take("a") == pytest.approx(0.3)  # a refusal takes nothing


def test_buckets_refill_at_the_rate_up_to_the_burst():
    clock = Clock()
    table = TokenBucketTable(rate=2, burst=3, max_buckets=10, clock=clock)
    for _ in range(3):
        table.take("a")
    clock.advance(0.5)
    assert table.take("a") == 0.0
    assert table.take("a") > 0
    clock.advance(100)  # refills to the burst, not beyond
    assert [table.take("a") for _ in range(4)][:3] == [0.0, 0.0, 0.0]
    assert table.take("a") > 0


def test_keys_have_buckets_of_their_own():
    table = TokenBucketTable(rate=1, burst=1, max_buckets=10, clock=Clock())
    assert table.take("a") == 0.0
    assert table.take("a") > 0
    assert table.take("b") == 0.0


def test_fractional_rate():
    clock = Clock()
    table = TokenBucketTable(rate=0.1, burst=1, max_buckets=10, clock=clock)
    table.take("a")
    assert table.take("a") == pytest.approx(10.0)
    clock.advance(9.9)
    assert table.take("a") == pytest.approx(0.1)
    clock.advance(0.1)
    assert table.take("a") == 0.0


@pytest.mark.parametrize("rate, burst, size", [(0, 1, 1), (-1, 1, 1), (1, 0.5, 1), (1, 1, 0)])
def test_bad_parameters(rate, burst, size):
    with pytest.raises(ValueError):
        TokenBucketTable(rate, burst, size)


def test_full_buckets_are_dropped_first_when_the_table_is_full():
    clock = Clock()
    table = TokenBucketTable(rate=1, burst=2, max_buckets=4, clock=clock)
    for key in "abc":
        table.take(key)
    clock.advance(2)  # a, b, c are full again: the same as absent
    table.take("d")
    table.take("d")
    table.take("e")  # the table is full: a, b, c go
    assert len(table) == 2
    assert table.take("d") > 0  # the active bucket kept its state


def test_least_recently_touched_go_when_every_bucket_is_active():
    clock = Clock()
    table = TokenBucketTable(rate=1, burst=10, max_buckets=8, clock=clock)
    for key in "abcdefgh":
        table.take(key)
        clock.advance(0.01)
    table.take("a")  # a is now the most recently touched
    table.take("z")
    assert len(table) <= 8
    kept = {key for key in "abcdefghz" if key in table._buckets}
    assert "b" not in kept and {"a", "h", "z"} <= kept


def test_memory_stays_bounded_under_many_keys():
    clock = Clock()
    table = TokenBucketTable(rate=1, burst=5, max_buckets=100, clock=clock)
    for n in range(10_000):
        table.take(n)
        clock.advance(0.0001)
    assert len(table) <= 100


# -- client address ----------------------------------------------------------------------

def test_forwarded_for_ignored_without_trusted_proxies():
    assert ClientAddress(()).of("203.0.113.9", "198.51.100.1") == "203.0.113.9"


def test_forwarded_for_ignored_from_an_untrusted_peer():
    address = ClientAddress(("127.0.0.1/32",))
    assert address.of("203.0.113.9", "198.51.100.1") == "203.0.113.9"


def test_forwarded_for_from_a_trusted_peer_names_the_client():
    address = ClientAddress(("127.0.0.1/32", "10.0.0.0/8"))
    assert address.of("127.0.0.1", "198.51.100.1") == "198.51.100.1"
    # spoofed entries left of the proxy's own are ignored; trusted hops skipped
    assert address.of("127.0.0.1", "1.2.3.4, 198.51.100.1, 10.1.2.3") == "198.51.100.1"
    assert address.of("10.9.9.9", " 198.51.100.7 ") == "198.51.100.7"


def test_forwarded_for_malformed_or_missing():
    address = ClientAddress(("127.0.0.1/32",))
    assert address.of("127.0.0.1", None) == "127.0.0.1"
    assert address.of("127.0.0.1", "") == "127.0.0.1"
    assert address.of("127.0.0.1", "not-an-ip") == "127.0.0.1"
    assert address.of("127.0.0.1", "198.51.100.1, junk") == "127.0.0.1"


def test_forwarded_for_all_trusted():
    address = ClientAddress(("10.0.0.0/8",))
    assert address.of("10.0.0.1", "10.0.0.2, 10.0.0.3") == "10.0.0.2"


def test_ipv6_clients_count_by_their_64():
    assert bucket_key("192.0.2.1") == "192.0.2.1"
    assert bucket_key("2001:db8:1:2::1") == bucket_key("2001:db8:1:2:ffff::9")
    assert bucket_key("2001:db8:1:2::1") != bucket_key("2001:db8:1:3::1")
    assert bucket_key("::ffff:192.0.2.1") == "192.0.2.1"
    assert bucket_key(None) == "" and bucket_key("") == ""


# -- RateLimits: the refusal --------------------------------------------------------------

def limits(clock, **tables):
    metrics = Metrics()
    return RateLimits(metrics, clock=clock, **tables), metrics


def test_refusal_is_429_with_errno_retry_after_and_a_metric():
    clock = Clock()
    rl, metrics = limits(clock, ip=(0.5, 2))
    rl.check_ip("192.0.2.1", {})
    rl.check_ip("192.0.2.1", {})
    with pytest.raises(EndpointError) as info:
        rl.check_ip("192.0.2.1", {})
    status, headers, body = info.value.response()
    assert (status, body["errno"], body["code"]) == (RATE_LIMITED_STATUS, RATE_LIMITED_ERRNO,
                                                     RATE_LIMITED_STATUS)
    assert headers["Retry-After"] == "2"
    assert headers["Content-Type"] == "application/json"
    assert metrics.counts == [("notification.rate_limited", {"limit": "ip"})]


def test_retry_after_is_at_least_one_second():
    rl, _ = limits(Clock(), subscription=(100, 1))
    rl.check_subscription("u", "c")
    with pytest.raises(EndpointError) as info:
        rl.check_subscription("u", "c")
    assert info.value.headers == {"Retry-After": "1"}


def test_each_limit_tags_its_refusal():
    rl, metrics = limits(Clock(), key=(1, 1), subscription=(1, 1))
    rl.check_key(b"k")
    rl.check_subscription("u", "c")
    for check, args in ((rl.check_key, (b"k",)), (rl.check_subscription, ("u", "c"))):
        with pytest.raises(EndpointError):
            check(*args)
    assert [tags["limit"] for _, tags in metrics.counts] == ["key", "subscription"]


def test_a_rate_of_zero_turns_a_limit_off():
    rl, metrics = limits(Clock(), ip=(0, 1), key=(0, 1), subscription=(0, 1))
    for _ in range(100):
        rl.check_ip("192.0.2.1", {})
        rl.check_key(b"k")
        rl.check_subscription("u", "c")
    assert metrics.counts == []


def test_spoofed_forwarded_for_spends_the_peers_budget():
    rl, _ = limits(Clock(), ip=(1, 1))
    rl.check_ip("203.0.113.9", {"X-Forwarded-For": "198.51.100.1"})
    with pytest.raises(EndpointError):
        rl.check_ip("203.0.113.9", {"X-Forwarded-For": "198.51.100.2"})


def test_trusted_proxy_clients_have_budgets_of_their_own():
    rl = RateLimits(Metrics(), ip=(1, 1), trusted_proxies=("127.0.0.1/32",), clock=Clock())
    rl.check_ip("127.0.0.1", {"X-Forwarded-For": "198.51.100.1"})
    rl.check_ip("127.0.0.1", {"X-Forwarded-For": "198.51.100.2"})
    with pytest.raises(EndpointError):
        rl.check_ip("127.0.0.1", {"X-Forwarded-For": "198.51.100.1"})


def test_from_settings_defaults():
    rl = RateLimits.from_settings(Settings(), Metrics())
    assert (rl.ip.rate, rl.ip.burst) == (1000, 2000)
    assert (rl.key.rate, rl.key.burst) == (1000, 2000)
    assert (rl.subscription.rate, rl.subscription.burst) == (20, 200)
    assert rl.ip.max_buckets == 10000 and not rl.address.enabled


# -- where POST /wpush checks them ------------------------------------------------------

CRYPTO = TokenCrypto([TEST_CRYPTO_KEY])
MONTH = "message_2024_06"


class CountingStorage:
    """The storage calls POST /wpush makes, counted; every user is offline
    with the one registered channel ``chid``."""

    def __init__(self, chid):
        self.crypto = CRYPTO
        self.calls = 0
        self.chid = chid
        self.router = self

    def user_and_channels(self, uaid):
        self.calls += 1
        return {"uaid": uaid, "router_type": "webpush", "current_month": MONTH}, {self.chid}

    def month_usable(self, record):
        return True

    def message_table(self, name):
        return self

    name = MONTH

    def store_message(self, notification):
        self.calls += 1

    def get_uaid(self, uaid):
        self.calls += 1
        return None  # the re-read after the store: 410/105

    def all_channels(self, uaid):
        self.calls += 1
        return True, {self.chid}

    def health(self):
        return 200, {}


class NoNodes:
    def put(self, url, json_body=None):
        raise AssertionError("no node to call")


def app_with(clock, **options):
    settings = Settings(endpoint_url="https://push.test", crypto_key=TEST_CRYPTO_KEY,
                        statsd_host="", hostname="push.test", **options)
    chid = str(uuid.uuid4())
    storage = CountingStorage(chid)
    metrics = Metrics()
    app = create_endpoint_app(storage, metrics, NoNodes(), settings)
    app.api.limits = RateLimits.from_settings(settings, metrics, clock=clock)
    app.api.dead = None
    return app, storage, chid


def test_subscription_limit_refuses_before_storage():
    clock = Clock()
    app, storage, chid = app_with(clock, rate_limit_subscription_rate=1,
                                  rate_limit_subscription_burst=2)
    client = app.test_client()
    uaid = uuid.uuid4().hex
    token = CRYPTO.endpoint_token(uaid, chid)
    answers = [client.post(f"/wpush/v1/{token}", headers={"TTL": "0"}).status_code
               for _ in range(3)]
    assert answers == [201, 201, RATE_LIMITED_STATUS]
    assert storage.calls == 2
    # another subscription of the same user has a budget of its own
    other = CRYPTO.endpoint_token(uaid, str(uuid.uuid4()))
    assert client.post(f"/wpush/v1/{other}", headers={"TTL": "0"}).status_code == 410
    clock.advance(1)
    assert client.post(f"/wpush/v1/{token}", headers={"TTL": "0"}).status_code == 201


def test_ip_limit_comes_before_the_token():
    app, storage, _ = app_with(Clock(), rate_limit_ip_rate=1, rate_limit_ip_burst=1)
    client = app.test_client()
    assert client.post("/wpush/v1/junk", headers={"TTL": "0"}).status_code == 404
    response = client.post("/wpush/v1/junk", headers={"TTL": "0"})
    assert response.status_code == RATE_LIMITED_STATUS
    assert response.json["errno"] == RATE_LIMITED_ERRNO
    assert response.headers["Retry-After"] == "1"
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert storage.calls == 0


def signed(vapid):
    return vapid.sign({"aud": "https://push.test", "exp": int(time.time()) + 600,
                       "sub": "mailto:ops@example.com"})["Authorization"]


def test_key_limit_counts_verified_signatures_only():
    app, storage, chid = app_with(Clock(), rate_limit_key_rate=1, rate_limit_key_burst=2)
    client = app.test_client()
    vapid, other = Vapid02(), Vapid02()
    vapid.generate_keys()
    other.generate_keys()

    def send(authorization):
        token = CRYPTO.endpoint_token(uuid.uuid4().hex, chid)
        return client.post(f"/wpush/v1/{token}",
                           headers={"TTL": "0", "Authorization": authorization})
    # a forged token naming the key is refused 401 and spends none of its budget
    header = signed(vapid)
    forged = header.replace("t=", "t=x", 1)
    assert [send(forged).status_code for _ in range(3)] == [401, 401, 401]
    assert [send(signed(vapid)).status_code for _ in range(2)] == [201, 201]
    calls = storage.calls
    response = send(signed(vapid))
    assert response.status_code == RATE_LIMITED_STATUS
    assert "key limit" in response.json["message"]
    assert storage.calls == calls
    assert send(signed(other)).status_code == 201  # another key, another budget


def test_defaults_refuse_nothing_of_a_200_user_load():
    """200 subscriptions fed round-robin from one address with one VAPID key
    at 700 POSTs/s (more than one endpoint worker sustains) for 60 s, after
    each subscription got a burst of 10 at once: no 429."""
    clock = Clock()
    rl = RateLimits.from_settings(Settings(), Metrics(), clock=clock)
    users = [(uuid.uuid4().hex, str(uuid.uuid4())) for _ in range(200)]

    def send(uaid, chid):
        rl.check_ip("192.0.2.1", {})
        rl.check_key(b"the publisher's key")
        rl.check_subscription(uaid, chid)
    for uaid, chid in users:
        for _ in range(10):
            send(uaid, chid)
    for n in range(700 * 60):
        clock.advance(1 / 700)
        send(*users[n % len(users)])
