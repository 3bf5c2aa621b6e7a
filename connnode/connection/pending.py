"""The pending-write barrier (PROTOCOL.md 2.16): storage writes of a uaid
(ack deletes, cursor updates, saves at close) are registered here until they
finish, and a fetch for that uaid first waits for the writes that were
registered before it was scheduled (at most 5 s). A reconnect that follows an
ack or a close within milliseconds therefore reads the state they wrote."""
import gevent

BARRIER_TIMEOUT = 5.0


class PendingWrites:
    __slots__ = ("_by_uaid",)

    def __init__(self):
        self._by_uaid = {}

    def __len__(self):
        return sum(len(writes) for writes in self._by_uaid.values())

    def spawn(self, uaid, function, *args):
        """Run ``function(*args)`` in a greenlet registered under ``uaid``."""
        writes = self._by_uaid.setdefault(uaid, set())
        job = gevent.spawn(function, *args)
        writes.add(job)
        job.link(lambda done: self._finished(uaid, done))
        return job

    def _finished(self, uaid, job):
        writes = self._by_uaid.get(uaid)
        if writes is not None:
            writes.discard(job)
            if not writes:
                del self._by_uaid[uaid]

    def snapshot(self, uaid):
        return list(self._by_uaid.get(uaid, ()))

    def wait(self, jobs, timeout=BARRIER_TIMEOUT):
        if jobs:
            gevent.joinall(jobs, timeout=timeout)

    def wait_all(self, timeout):
        """Shutdown: wait for every registered write, bounded."""
        jobs = [job for writes in self._by_uaid.values() for job in writes]
        gevent.joinall(jobs, timeout=timeout)
        return all(job.ready() for job in jobs)
