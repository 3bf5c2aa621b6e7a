"""Unit tests of connnode/endpoint/deadsubs.py with an injected clock, and of
the cache in POST /wpush (an app over a storage double that counts its calls)."""
import uuid

import pytest

from connnode.crypto import TokenCrypto
from connnode.endpoint.app import create_endpoint_app
from connnode.endpoint.deadsubs import MAX_KEY_LENGTH, DeadSubscriptions
from connnode.settings import Settings
from tests.conftest import TEST_CRYPTO_KEY
from tests.unit.test_endpoint_limits import Clock, Metrics

GONE = (410, 103, "No such subscription")


def test_remembered_until_the_ttl_passes():
    clock = Clock()
    cache = DeadSubscriptions(ttl=60, max_entries=10, clock=clock)
    assert cache.get("v1/a") is None
    cache.remember("v1/a", *GONE)
    clock.advance(59.9)
    assert cache.get("v1/a") == GONE
    clock.advance(0.1)
    assert cache.get("v1/a") is None
    assert len(cache) == 0  # the expired entry is gone, not only hidden


def test_a_hit_does_not_renew_the_entry():
    clock = Clock()
    cache = DeadSubscriptions(ttl=10, max_entries=10, clock=clock)
    cache.remember("a", *GONE)
    for _ in range(9):
        clock.advance(1)
        assert cache.get("a") == GONE
    clock.advance(1)
    assert cache.get("a") is None


def test_least_recently_used_goes_first():
    cache = DeadSubscriptions(ttl=60, max_entries=3, clock=Clock())
    for key in "abc":
        cache.remember(key, *GONE)
    assert cache.get("a") == GONE  # a is used: b is now the oldest
    cache.remember("d", *GONE)
    assert len(cache) == 3
    assert cache.get("b") is None
    assert all(cache.get(key) == GONE for key in "acd")


def test_overlong_keys_are_not_remembered():
    cache = DeadSubscriptions(ttl=60, max_entries=3, clock=Clock())
    cache.remember("x" * (MAX_KEY_LENGTH + 1), *GONE)
    assert len(cache) == 0


def test_off_when_ttl_or_size_is_zero():
    assert DeadSubscriptions.from_settings(Settings(dead_subscription_ttl=0)) is None
    assert DeadSubscriptions.from_settings(Settings(dead_subscription_max_entries=0)) is None
    cache = DeadSubscriptions.from_settings(Settings())
    assert (cache.ttl, cache.max_entries) == (600, 10000)
    with pytest.raises(ValueError):
        DeadSubscriptions(0, 1)


# -- in POST /wpush ---------------------------------------------------------------------

CRYPTO = TokenCrypto([TEST_CRYPTO_KEY])
MONTH = "message_2024_06"


class Storage:
    """Users by uaid -> set of chids (no record: 410/103); every call counted."""

    def __init__(self):
        self.crypto = CRYPTO
        self.users = {}
        self.calls = 0
        self.router = self
        self.name = MONTH

    def user_and_channels(self, uaid):
        self.calls += 1
        if uaid not in self.users:
            return None, None
        return ({"uaid": uaid, "router_type": "webpush", "current_month": MONTH},
                set(self.users[uaid]))

    def month_usable(self, record):
        return True

    def message_table(self, name):
        return self

    def store_message(self, notification):
        self.calls += 1

    def health(self):
        return 200, {}


class NoNodes:
    def put(self, url, json_body=None):
        raise AssertionError("no node to call")


@pytest.fixture
def world():
    clock = Clock()
    storage = Storage()
    metrics = Metrics()
    settings = Settings(endpoint_url="https://push.test", crypto_key=TEST_CRYPTO_KEY,
                        statsd_host="", hostname="push.test", dead_subscription_ttl=30)
    app = create_endpoint_app(storage, metrics, NoNodes(), settings)
    app.api.dead = DeadSubscriptions(30, 100, clock=clock)
    return app.test_client(), storage, metrics, clock


def push(client, token, **headers):
    headers.setdefault("TTL", "0")
    return client.post(f"/wpush/v1/{token}", headers=headers)


def test_a_410_is_repeated_without_storage_until_it_expires(world):
    client, storage, metrics, clock = world
    token = CRYPTO.endpoint_token(uuid.uuid4().hex, str(uuid.uuid4()))
    first = push(client, token)
    assert (first.status_code, first.json["errno"]) == (410, 103)
    assert storage.calls == 1
    again = push(client, token)
    assert again.status_code == 410 and again.json == first.json
    assert again.headers["Cache-Control"] == "max-age=86400"
    assert storage.calls == 1
    assert ("notification.dead_subscription", {"errno": 103}) in metrics.counts
    assert metrics.counts.count(("notification.message.error",
                                 {"code": 410, "router": "webpush", "vapid": "False"})) == 2
    clock.advance(30)
    assert push(client, token).status_code == 410
    assert storage.calls == 2


def test_the_first_errno_is_repeated(world):
    client, storage, _, _ = world
    uaid, chid = uuid.uuid4().hex, str(uuid.uuid4())
    storage.users[uaid] = set()
    token = CRYPTO.endpoint_token(uaid, chid)
    assert push(client, token).json["errno"] == 106
    del storage.users[uaid]  # storage would now say 103
    assert push(client, token).json["errno"] == 106
    assert storage.calls == 1


def test_a_resubscription_is_not_blocked(world):
    client, storage, _, _ = world
    uaid, chid = uuid.uuid4().hex, str(uuid.uuid4())
    dead = CRYPTO.endpoint_token(uaid, chid)
    assert push(client, dead).status_code == 410
    storage.users[uaid] = {chid}  # the same channel registered again: a new token
    fresh = CRYPTO.endpoint_token(uaid, chid)
    assert fresh != dead
    assert push(client, fresh).status_code == 201
    assert push(client, dead).status_code == 410


def test_other_errors_are_not_remembered(world):
    client, storage, _, _ = world
    uaid, chid = uuid.uuid4().hex, str(uuid.uuid4())
    storage.users[uaid] = {chid}
    token = CRYPTO.endpoint_token(uaid, chid)
    assert push(client, token, TTL="-1").status_code == 400
    assert push(client, "junk").status_code == 404
    assert push(client, token).status_code == 201
    assert len(client.application.api.dead) == 0
