"""Worker slots (router port = router_port + slot) and the master-side hooks,
with stand-ins for gunicorn's arbiter and worker objects. The start-up
helpers shared with the endpoint node are tested in test_process.py."""
import os

import pytest

from connnode.connection import worker as hooks
from connnode.connection.worker import SlotAllocator, router_bind_host


class Owner:
    """A gunicorn worker stand-in: compared by identity, like the real one."""


def test_lowest_free_slot_first():
    slots = SlotAllocator()
    owners = [Owner() for _ in range(3)]
    assert [slots.allocate(owner) for owner in owners] == [0, 1, 2]
    assert slots.in_use() == [0, 1, 2]
    assert len(slots) == 3


def test_allocate_twice_keeps_the_slot():
    slots = SlotAllocator()
    owner = Owner()
    assert slots.allocate(owner) == 0
    assert slots.allocate(owner) == 0
    assert len(slots) == 1


def test_reuse_after_exit():
    slots = SlotAllocator()
    a, b, c = Owner(), Owner(), Owner()
    for owner in (a, b, c):
        slots.allocate(owner)
    assert slots.release(b) == 1
    assert slots.release(b) is None
    assert slots.slot_of(b) is None
    d = Owner()
    assert slots.allocate(d) == 1  # the hole, not 3
    assert slots.allocate(Owner()) == 3
    assert slots.release(a) == 0
    assert slots.allocate(Owner()) == 0


def test_many_workers_unique_and_dense():
    slots = SlotAllocator()
    owners = [Owner() for _ in range(64)]
    assert sorted(slots.allocate(owner) for owner in owners) == list(range(64))
    for owner in owners[::2]:
        slots.release(owner)
    again = [slots.allocate(Owner()) for _ in range(32)]
    assert sorted(again) == list(range(0, 64, 2))
    assert slots.in_use() == list(range(64))


def test_reload_overlap_uses_up_to_twice_the_workers():
    slots = SlotAllocator()
    old = [Owner() for _ in range(4)]
    for owner in old:
        slots.allocate(owner)
    new = [Owner() for _ in range(4)]
    assert [slots.allocate(owner) for owner in new] == [4, 5, 6, 7]
    for owner in old:  # the old generation drains and exits
        slots.release(owner)
    newer = [Owner() for _ in range(4)]  # a second reload
    assert [slots.allocate(owner) for owner in newer] == [0, 1, 2, 3]
    assert slots.in_use() == list(range(8))


def test_retain_forgets_owners_that_are_gone():
    slots = SlotAllocator()
    a, b, c = Owner(), Owner(), Owner()
    for owner in (a, b, c):
        slots.allocate(owner)
    assert slots.retain([a, c]) == [1]
    assert slots.in_use() == [0, 2]
    assert slots.retain([a, c]) == []


class FakeArbiter:
    def __init__(self):
        self.pid = os.getpid()
        self.WORKERS = {}
        self.next_pid = 1000

    def spawn(self):
        """What Arbiter.spawn_worker does around pre_fork, in the master."""
        worker = Owner()
        hooks.pre_fork(self, worker)
        self.next_pid += 1
        self.WORKERS[self.next_pid] = worker
        return self.next_pid, worker

    def reap(self, pid):
        hooks.child_exit(self, self.WORKERS.pop(pid))


def test_hooks_give_each_worker_a_slot_and_free_it():
    arbiter = FakeArbiter()
    spawned = [arbiter.spawn() for _ in range(3)]
    assert [worker.connnode_slot for _, worker in spawned] == [0, 1, 2]
    arbiter.reap(spawned[1][0])
    _, replacement = arbiter.spawn()
    assert replacement.connnode_slot == 1
    assert arbiter.connnode_slots.in_use() == [0, 1, 2]


def test_worker_exit_in_master_frees_the_slot():
    arbiter = FakeArbiter()
    pid, worker = arbiter.spawn()
    arbiter.WORKERS.pop(pid)  # kill_worker found it gone (ESRCH)
    hooks.worker_exit(arbiter, worker)
    assert arbiter.connnode_slots.in_use() == []


def test_worker_exit_in_child_leaves_the_table_alone():
    arbiter = FakeArbiter()
    _, worker = arbiter.spawn()
    arbiter.pid = -1  # as seen from a forked child: the master's pid differs
    worker.alive = True
    hooks.worker_exit(arbiter, worker)
    assert arbiter.connnode_slots.in_use() == [0]


def test_failed_fork_does_not_leak_a_slot():
    arbiter = FakeArbiter()
    pid, first = arbiter.spawn()
    lost = Owner()
    hooks.pre_fork(arbiter, lost)  # os.fork then raised: never in WORKERS
    assert lost.connnode_slot == 1
    _, second = arbiter.spawn()
    assert second.connnode_slot == 1
    assert arbiter.connnode_slots.in_use() == [0, 1]


def test_table_survives_a_config_reload():
    arbiter = FakeArbiter()
    arbiter.spawn()
    arbiter.spawn()
    # A HUP re-executes gunicorn.conf.py; the table is on the arbiter.
    _, worker = arbiter.spawn()
    assert worker.connnode_slot == 2


@pytest.mark.parametrize("hostname,bind", [
    ("localhost", "127.0.0.1"), ("LOCALHOST", "127.0.0.1"), ("node.localhost", "127.0.0.1"),
    ("127.0.0.1", "127.0.0.1"), ("127.0.1.1", "127.0.1.1"), ("::1", "::1"), ("[::1]", "::1"),
    ("10.0.0.5", "0.0.0.0"), ("push-cn-3.internal", "0.0.0.0"), ("fd00::5", "::"),
])
def test_router_bind_host(hostname, bind):
    assert router_bind_host(hostname) == bind
