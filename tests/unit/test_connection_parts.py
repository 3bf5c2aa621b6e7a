"""Registry, timers and the pending-write barrier of the connection node."""
import gevent
from gevent.event import Event

from connnode.connection.pending import PendingWrites
from connnode.connection.registry import Registry
from connnode.connection.timers import Timers


class Holder:
    def __init__(self, uaid, connected_at):
        self.uaid = uaid
        self.connected_at = connected_at


def test_registry_newest_connection_holds():
    registry = Registry()
    old, new, older = Holder("u", 10), Holder("u", 20), Holder("u", 5)
    assert registry.claim(old) == (True, None)
    assert registry.claim(new) == (True, old)
    assert registry.claim(older) == (False, None)
    assert registry.claim(Holder("u", 20)) == (False, None)  # same connected_at: the holder stays
    registry.release(old)  # not the holder: nothing happens
    assert registry.get("u") is new and len(registry) == 1
    registry.release(new)
    assert registry.get("u") is None and len(registry) == 0


def test_timers_fire_in_deadline_order_from_one_greenlet():
    timers = Timers()
    fired = []
    done = Event()
    timers.call_later(0.03, fired.append, "late")
    timers.call_later(0.01, fired.append, "early")
    timers.call_later(0.05, done.set)
    assert done.wait(2)
    assert fired == ["early", "late"]


def test_timer_callback_failure_does_not_stop_the_others():
    timers = Timers()
    done = Event()
    timers.call_later(0, lambda: 1 / 0)
    timers.call_later(0.01, done.set)
    assert done.wait(2)


def test_cancelled_timer_never_fires_and_lets_go_of_its_callback():
    timers = Timers()
    fired = []
    done = Event()
    held = [object()]
    entry = timers.call_later(0.01, fired.append, held)
    timers.call_later(0.03, done.set)
    timers.cancel(entry)
    # Memory: nothing of the callback or its arguments is kept by the heap.
    assert entry.cancelled and entry.callback is None and entry.args == ()
    timers.cancel(entry)  # twice, or None: nothing happens
    timers.cancel(None)
    assert done.wait(2)
    assert fired == []
    ran = timers.call_later(0, fired.append, "ran")
    gevent.sleep(0.02)
    timers.cancel(ran)  # after it ran: nothing happens
    assert fired == ["ran"] and len(timers) == 0


def test_cancelled_timers_are_dropped_from_the_heap_in_bulk():
    timers = Timers()
    done = Event()
    live = [timers.call_later(60, lambda: None) for _ in range(300)]
    # Fewer than half: the heap is rebuilt before they outnumber live entries.
    doomed = [timers.call_later(60, lambda: None) for _ in range(120)]
    assert len(timers) == 420
    for entry in doomed:
        timers.cancel(entry)
    assert len(timers) < 330 and all(not entry.cancelled for entry in live)
    timers.call_later(0.01, done.set)  # the runner still sees the earliest deadline
    assert done.wait(2)

def test_barrier_waits_only_for_writes_registered_before():
    pending = PendingWrites()
    release = Event()
    first = pending.spawn("u", release.wait)
    snapshot = pending.snapshot("u")
    later = pending.spawn("u", gevent.sleep, 10)
    assert snapshot == [first] and len(pending) == 2
    waiter = gevent.spawn(pending.wait, snapshot, 5)
    gevent.sleep(0.01)
    assert not waiter.ready()
    release.set()
    waiter.join(2)
    assert waiter.ready() and not later.ready()
    later.kill()
    gevent.sleep(0)
    assert len(pending) == 0 and pending.snapshot("u") == []


def test_barrier_wait_is_bounded():
    pending = PendingWrites()
    stuck = pending.spawn("u", gevent.sleep, 10)
    started = gevent.get_hub().loop.now()
    pending.wait(pending.snapshot("u"), timeout=0.05)
    assert gevent.get_hub().loop.now() - started < 1
    assert pending.wait_all(0.01) is False
    stuck.kill()
