"""The pending-write barrier (PROTOCOL.md 2.16): storage writes of a uaid
(ack deletes, cursor updates, saves at close) are registered here until they
finish, and a fetch for that uaid first waits for the writes that were
registered before it was scheduled (at most 5 s). A reconnect that follows an
ack or a close within milliseconds therefore reads the state they wrote."""
import logging
import time

import gevent

from connnode.db.dynamo import StorageError

log = logging.getLogger(__name__)

BARRIER_TIMEOUT = 5.0
RETRY_FIRST, RETRY_MAX = 0.1, 2.0


class PendingWrites:
    __slots__ = ("_by_uaid",)

    def __init__(self):
        self._by_uaid = {}

    def __len__(self):
        return sum(len(writes) for writes in self._by_uaid.values())

    def spawn(self, uaid, function, *args):
        """Run ``function(*args)`` in a greenlet registered under ``uaid``."""
        return self.register(uaid, gevent.spawn(function, *args))

    def register(self, uaid, job):
        """Register a running greenlet (one may carry the writes of several
        uaids, e.g. a batch of deletes) under ``uaid`` until it ends."""
        writes = self._by_uaid.setdefault(uaid, set())
        if job not in writes:
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

    def wait_idle(self, uaid, timeout=BARRIER_TIMEOUT):
        """Wait until no write of ``uaid`` is registered, bounded: a resumed
        hello reads the record after everything the last connection of that
        uaid left running, including work one finished write started (the
        msg_limit decision follows an ack's cursor write)."""
        deadline = time.monotonic() + timeout
        while True:
            jobs = self.snapshot(uaid)
            remaining = deadline - time.monotonic()
            if not jobs or remaining <= 0:
                return
            gevent.joinall(jobs, timeout=remaining)

    def wait_all(self, timeout):
        """Shutdown: wait for every registered write, bounded."""
        jobs = [job for writes in self._by_uaid.values() for job in writes]
        gevent.joinall(jobs, timeout=timeout)
        return all(job.ready() for job in jobs)


def retry_forever(function, *args):
    """Repeat a storage call until it returns (1.2 "retried until it
    succeeds"), even after the connection that started it has gone."""
    delay = RETRY_FIRST
    while True:
        try:
            return function(*args)
        except StorageError as exc:
            log.warning("retrying %s after %s", getattr(function, "__name__", function), exc)
            gevent.sleep(delay)
            delay = min(delay * 2, RETRY_MAX)

