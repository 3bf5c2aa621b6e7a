"""The worker's broadcast state (``connnode/connection/broadcasts.py``) and
the Megaphone poller (``megaphone.py``) without sockets: delta rules, shared
subscription sets, apply, fan-out in slices, poll failures."""
import json
import sys

import gevent
import pytest
import urllib3

from connnode.connection import broadcasts as broadcasts_module
from connnode.connection.broadcasts import NOT_FOUND, Broadcasts
from connnode.connection.megaphone import MegaphonePoller
from connnode.connection.states import CLOSING, HELLO_IN_PROGRESS, READY
from connnode.settings import Settings

MONITOR = "remote-settings/monitor_changes"


class FakeSession:
    __slots__ = ("state", "broadcast_subs", "frames")

    def __init__(self, subs=None, state=READY):
        self.state = state
        self.broadcast_subs = subs
        self.frames = []

    def send_broadcast(self, frame):
        self.frames.append(json.loads(frame))


def test_delta_rules():
    b = Broadcasts({MONITOR: "5", "a/b": "1"})
    assert b.delta([(MONITOR, "5")]) == ({}, {})
    assert b.delta([(MONITOR, "4"), ("a/b", "1"), ("x/y", "1")]) == ({MONITOR: "5"}, {"x/y": NOT_FOUND})
    assert b.reply([(MONITOR, "5")]) == {}
    assert b.reply([(MONITOR, "4"), ("x/y", "1")]) == {MONITOR: "5", "errors": {"x/y": NOT_FOUND}}
    assert b.reply([("x/y", "1")]) == {"errors": {"x/y": NOT_FOUND}}


def test_an_empty_registry_reports_every_id_as_not_found():
    # autopush-rs's missing_broadcasts, with no broadcast known yet
    assert Broadcasts().reply([(MONITOR, "1")]) == {"errors": {MONITOR: NOT_FOUND}}


def test_subscriptions_are_shared_and_hold_known_ids_only():
    b = Broadcasts({MONITOR: "5", "a/b": "1"})
    first = b.subscribe(None, [(MONITOR, "5"), ("x/y", "1")])
    second = b.subscribe(None, [(MONITOR, "0")])
    assert first == frozenset({MONITOR}) and first is second
    assert b.subscribe(None, [("x/y", "1")]) is None
    assert b.subscribe(first, [(MONITOR, "9")]) is first
    both = b.subscribe(first, [("a/b", "1")])
    assert both == {MONITOR, "a/b"} and b.subscribe(None, [("a/b", "1"), (MONITOR, "1")]) is both


def test_shared_sets_are_bounded(monkeypatch):
    monkeypatch.setattr(broadcasts_module, "MAX_SHARED_SETS", 1)
    b = Broadcasts({"a": "1", "b": "1"})
    a = b.subscribe(None, [("a", "1")])
    assert b.subscribe(None, [("a", "1")]) is a
    assert b.subscribe(None, [("b", "1")]) == {"b"}
    assert len(b._sets) == 1


def test_apply_returns_changes_and_interns():
    b = Broadcasts({MONITOR: "5"})
    assert b.change_count == 0
    assert b.apply({MONITOR: "5"}) == [] and b.change_count == 0
    version = "".join(["v", "6"])
    assert b.apply({MONITOR: version, "new/one": "1"}) == [MONITOR, "new/one"]
    assert b.change_count == 1 and b.versions[MONITOR] is sys.intern("v6")
    assert b.apply({}) == [] and b.versions == {MONITOR: "v6", "new/one": "1"}  # kept


def test_fan_out_reaches_only_subscribed_ready_sessions_once():
    b = Broadcasts({MONITOR: "1", "a/b": "1"})
    monitor = b.subscribe(None, [(MONITOR, "1")])
    both = b.subscribe(None, [(MONITOR, "1"), ("a/b", "1")])
    only_ab = b.subscribe(None, [("a/b", "1")])
    sessions = [FakeSession(monitor), FakeSession(both), FakeSession(only_ab), FakeSession(None),
                FakeSession(monitor, HELLO_IN_PROGRESS), FakeSession(monitor, CLOSING)]
    changed = b.apply({MONITOR: "2", "a/b": "1"})
    assert b.fan_out(sessions, changed) == 2
    assert [s.frames for s in sessions] == [
        [{"messageType": "broadcast", "broadcasts": {MONITOR: "2"}}],
        [{"messageType": "broadcast", "broadcasts": {MONITOR: "2"}}],
        [], [], [], []]
    assert b.fan_out(sessions, []) == 0
    changed = b.apply({MONITOR: "3", "a/b": "2"})
    b.fan_out(sessions, changed)
    assert sessions[1].frames[-1] == {"messageType": "broadcast", "broadcasts": {MONITOR: "3", "a/b": "2"}}
    assert sessions[2].frames == [{"messageType": "broadcast", "broadcasts": {"a/b": "2"}}]
    assert len(sessions[0].frames) == 2


def test_fan_out_yields_between_slices(monkeypatch):
    b = Broadcasts({MONITOR: "1"}, slice_size=500)
    subs = b.subscribe(None, [(MONITOR, "1")])
    sessions = [FakeSession(subs) for _ in range(1250)]
    seen = []  # sessions served when another greenlet got to run
    monkeypatch.setattr(broadcasts_module.gevent, "sleep",
                        lambda seconds=0: seen.append(sum(1 for s in sessions if s.frames)))
    assert b.fan_out(sessions, b.apply({MONITOR: "2"})) == 1250
    assert seen == [500, 1000]


def test_a_reply_during_a_fan_out_is_not_followed_by_the_same_change(monkeypatch):
    b = Broadcasts({MONITOR: "1", "a/b": "1"}, slice_size=1)
    subs = b.subscribe(None, [(MONITOR, "1"), ("a/b", "1")])
    early, late = FakeSession(subs), FakeSession(subs)
    replies = []

    def meanwhile(seconds=0):
        # between slices: "late" says broadcast_subscribe with the old MONITOR
        if not replies:
            replies.append(b.reply([(MONITOR, "1")], late))
    monkeypatch.setattr(broadcasts_module.gevent, "sleep", meanwhile)
    b.fan_out([early, late], b.apply({MONITOR: "2", "a/b": "2"}))
    assert replies == [{MONITOR: "2"}]
    assert early.frames == [{"messageType": "broadcast", "broadcasts": {MONITOR: "2", "a/b": "2"}}]
    assert late.frames == [{"messageType": "broadcast", "broadcasts": {"a/b": "2"}}]
    assert b._covered is None
    b.reply([(MONITOR, "1")], late)  # no fan-out: nothing recorded
    assert b._covered is None


def test_fan_out_lets_other_greenlets_run():
    b = Broadcasts({MONITOR: "1"}, slice_size=100)
    subs = b.subscribe(None, [(MONITOR, "1")])
    sessions = [FakeSession(subs) for _ in range(1000)]
    progress = []
    other = gevent.spawn(lambda: progress.append(sum(1 for s in sessions if s.frames)))
    b.fan_out(sessions, b.apply({MONITOR: "2"}))
    other.join(timeout=1)
    assert progress and progress[0] < 1000


# -- the poller ------------------------------------------------------------------------

class FakeResponse:
    def __init__(self, status, body):
        self.status = status
        self.data = body if isinstance(body, bytes) else json.dumps(body).encode()


class FakePool:
    def __init__(self):
        self.answers = []
        self.requests = []

    def request(self, method, url, **kwargs):
        self.requests.append((method, url, kwargs["headers"]))
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


class Metrics:
    def __init__(self):
        self.calls = []

    def increment(self, name, count=1, tags=None):
        self.calls.append((name, count, tags))


def make_poller(sessions=()):
    settings = Settings(megaphone_api_url="http://mp.example/v1/broadcasts",
                        megaphone_api_token="tok", megaphone_poll_interval=1,
                        statsd_host="", hostname="127.0.0.1")
    pool, metrics, b = FakePool(), Metrics(), Broadcasts()
    return MegaphonePoller(settings, b, metrics, lambda: sessions, pool=pool), pool, metrics, b


def test_poll_applies_versions_and_fans_out():
    session = FakeSession()
    poller, pool, metrics, b = make_poller([session])
    pool.answers.append(FakeResponse(200, {"code": 200, "broadcasts": {MONITOR: "1"}}))
    assert poller.poll_once() == [MONITOR]
    assert pool.requests == [("GET", "http://mp.example/v1/broadcasts",
                              {"Authorization": "Bearer tok", "Accept": "application/json",
                               "Connection": "close"})]
    session.broadcast_subs = b.subscribe(None, [(MONITOR, "1")])
    pool.answers.append(FakeResponse(200, {"code": 200, "broadcasts": {MONITOR: "2"}}))
    assert poller.poll_once() == [MONITOR]
    assert session.frames == [{"messageType": "broadcast", "broadcasts": {MONITOR: "2"}}]
    assert metrics.calls == []


@pytest.mark.parametrize("answer, reason", [
    (urllib3.exceptions.MaxRetryError(None, "u", urllib3.exceptions.NewConnectionError(None, "refused")),
     "connect"),
    (urllib3.exceptions.MaxRetryError(None, "u", urllib3.exceptions.ConnectTimeoutError()), "timeout"),
    (urllib3.exceptions.ReadTimeoutError(None, "u", "slow"), "timeout"),
    (urllib3.exceptions.ProtocolError("reset"), "other"),
    (FakeResponse(500, {"code": 500}), "other"),
    (FakeResponse(200, b"not json"), "other"),
    (FakeResponse(200, {"code": 200, "broadcasts": {MONITOR: 5}}), "other"),
    (FakeResponse(200, [1]), "other"),
])
def test_a_failed_poll_keeps_the_versions_and_counts_its_reason(answer, reason, caplog):
    poller, pool, metrics, b = make_poller()
    pool.answers.append(FakeResponse(200, {"code": 200, "broadcasts": {MONITOR: "1"}}))
    poller.poll_once()
    pool.answers.extend([answer, answer])
    assert poller.poll_once() == [] and poller.poll_once() == []
    assert b.versions == {MONITOR: "1"}
    assert metrics.calls == [("megaphone.poll.error", 1, {"reason": reason})] * 2
    assert len([r for r in caplog.records if "megaphone poll failed" in r.getMessage()]) == 1
