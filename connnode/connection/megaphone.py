"""The Megaphone poller of a connection worker (issue 15).

Every ``megaphone_poll_interval`` seconds it GETs ``megaphone_api_url`` with
``Authorization: Bearer <megaphone_api_token>`` and expects Mozilla
Megaphone's answer, ``{"code": 200, "broadcasts": {"<id>": "<version>"}}``
(autopush-rs's autoconnect polls the same way). New versions go to
``Broadcasts.apply``; the changed ids are fanned out to this worker's
subscribed clients before the next poll (so fan-outs never overlap).

A poll that fails (timeout, no connection, a non-200 status or an answer of
another shape) keeps the last known versions, counts
``megaphone.poll.error`` with tag ``reason`` = ``timeout``, ``connect`` or
``other``, and logs at most once per minute.

The node starts it (``Node.start``) only when ``megaphone_api_url`` is set.
"""
import json
import logging
import socket
import time

import gevent
import urllib3
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError, ReadTimeoutError
from urllib3.exceptions import TimeoutError as Urllib3Timeout

log = logging.getLogger(__name__)

LOG_EVERY = 60.0
POLL_TIMEOUT = urllib3.Timeout(connect=5.0, read=10.0)


class PollError(Exception):
    """A failed poll; ``reason``: the metric tag (timeout, connect, other)."""

    def __init__(self, reason, detail):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def _reason(exc):
    """The metric tag of a transport failure (NewConnectionError is a
    ConnectTimeoutError subclass in urllib3: test it first)."""
    if isinstance(exc, urllib3.exceptions.MaxRetryError) and exc.reason is not None:
        exc = exc.reason
    if isinstance(exc, (NewConnectionError, ConnectionRefusedError)):
        return "connect"
    if isinstance(exc, (ConnectTimeoutError, ReadTimeoutError, Urllib3Timeout, TimeoutError, socket.timeout)):
        return "timeout"
    if isinstance(exc, ConnectionError):
        return "connect"
    return "other"


class MegaphonePoller:
    def __init__(self, settings, broadcasts, metrics, sessions, pool=None):
        """``sessions``: a callable returning the worker's sessions (the registry)."""
        self.url = settings.megaphone_api_url
        self.token = settings.megaphone_api_token
        self.interval = settings.megaphone_poll_interval
        self.broadcasts = broadcasts
        self.metrics = metrics
        self.sessions = sessions
        self.pool = pool or urllib3.PoolManager(num_pools=1, maxsize=1, retries=False)
        self._last_log = None

    def fetch(self):
        """The service's id -> version map, or PollError."""
        try:
            response = self.pool.request(
                "GET", self.url, timeout=POLL_TIMEOUT, retries=False,
                # one request per interval: no idle socket kept between polls
                # (a stale keep-alive would turn a dead service into a timeout)
                headers={"Authorization": f"Bearer {self.token}", "Accept": "application/json",
                         "Connection": "close"})
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise PollError(_reason(exc), exc) from exc
        if response.status != 200:
            raise PollError("other", f"status {response.status}")
        try:
            body = json.loads(response.data)
        except ValueError as exc:
            raise PollError("other", "not JSON") from exc
        versions = body.get("broadcasts") if isinstance(body, dict) else None
        if not isinstance(versions, dict) or not all(
                isinstance(key, str) and isinstance(value, str) for key, value in versions.items()):
            raise PollError("other", "no broadcasts object of strings")
        return versions

    def poll_once(self):
        """One poll and its fan-out; returns the changed ids (empty on failure)."""
        try:
            versions = self.fetch()
        except PollError as exc:
            self.metrics.increment("megaphone.poll.error", 1, {"reason": exc.reason})
            now = time.monotonic()
            if self._last_log is None or now - self._last_log >= LOG_EVERY:
                self._last_log = now
                log.warning("megaphone poll failed (keeping the last versions): %s", exc)
            return []
        changed = self.broadcasts.apply(versions)
        if changed:
            self.broadcasts.fan_out(self.sessions(), changed)
        return changed

    def run_forever(self):
        while True:
            try:
                self.poll_once()
            except Exception:  # noqa: BLE001 - the poller must outlive any bug
                log.exception("megaphone poll crashed")
            gevent.sleep(self.interval)
