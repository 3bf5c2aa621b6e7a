"""The worker's Megaphone broadcasts (issue 15; PROTOCOL 2.4, 2.11).

``Broadcasts`` holds the current versions (id -> version, both interned
strings), a change counter, and the subscription sets of this worker's
clients. ``megaphone.py`` polls the versions in and calls ``apply``; the
session asks for ``delta`` at hello and ``broadcast_subscribe`` and keeps the
set ``subscribe`` returns in its one ``broadcast_subs`` slot; ``fan_out``
sends a change to every READY subscribed session.

Rules, as autopush-rs's ``BroadcastChangeTracker`` (autoconnect-common):

* delta: every id the client named that the server knows, with a version
  different from the client's -> ``{"<id>": "<current version>"}``; every
  unknown id -> ``"errors": {"<id>": "Broadcast not found"}``; nothing else.
  The client is subscribed to its known ids only.
* An empty registry (the URL is set but no poll has succeeded yet, or the
  service lists no broadcast) knows no id, so every named id is an error:
  autopush-rs's ``missing_broadcasts`` does the same.
* Decision, unlike autopush-rs: with no ``megaphone_api_url`` broadcasts are
  off (the node has no ``Broadcasts`` at all): hello replies ``{}`` and
  ``broadcast_subscribe`` is ignored, as the issue and PROTOCOL 2.11 say.
  autopush-rs, with no Megaphone URL, would report every named id as an error.
* A change is sent once: ``apply`` returns the ids whose version changed and
  ``fan_out`` sends each subscribed READY session one frame with the new
  versions of its changed ids. A session that says hello while a fan-out
  runs gets the new version in its hello delta instead (it is not in the
  fan-out's snapshot of the registry, or is not READY yet). A session whose
  own reply (hello or broadcast_subscribe) is computed while a fan-out runs
  already has the new versions of the ids it named: the fan-out leaves those
  ids out of its frame for that session (``_covered``), so no change arrives
  twice.

Memory per client: one reference (``broadcast_subs``: None when it holds no
subscription). Sets are interned here, so the 100,000 Firefox clients that
all subscribe to ``remote-settings/monitor_changes`` share one frozenset.
The intern table is bounded (``MAX_SHARED_SETS``); past it, new sets are
simply not shared.

Fan-out never blocks the worker for long: the registry is copied once, then
sessions are visited ``slice_size`` at a time with a pause of ``SLICE_PAUSE``
in between, so pings and pushes run between slices. (Not ``gevent.sleep(0)``:
it yields to greenlets that are ready but may skip the loop's I/O poll, and
a PUT /push waiting on its socket then waited ~55 ms for a 5,000-client
fan-out: ``python -m bench.broadcast_fanout``.) Frames are built once per
distinct set of changed ids.
"""
import logging
import sys

import gevent

from connnode.connection.states import READY
from connnode.protocol import broadcast_frame

log = logging.getLogger(__name__)

NOT_FOUND = "Broadcast not found"
SLICE_SIZE = 250
#: Seconds between slices: enough for one turn of the event loop, I/O included.
SLICE_PAUSE = 0.001
MAX_SHARED_SETS = 10000


class Broadcasts:
    __slots__ = ("versions", "change_count", "slice_size", "_sets", "_covered")

    def __init__(self, versions=None, slice_size=SLICE_SIZE):
        self.versions = {}
        self.change_count = 0
        self.slice_size = slice_size
        self._sets = {}
        self._covered = None  # during a fan-out: session -> ids its own reply covered
        if versions:
            self.apply(versions)
            self.change_count = 0

    # -- what the session asks ------------------------------------------------
    def delta(self, requested):
        """``requested``: (id, version) pairs -> (changed, errors) dicts."""
        changed, errors = {}, {}
        versions = self.versions
        for broadcast_id, version in requested:
            current = versions.get(broadcast_id)
            if current is None:
                errors[broadcast_id] = NOT_FOUND
            elif current != version:
                changed[broadcast_id] = current
        return changed, errors

    def reply(self, requested, session=None):
        """The ``broadcasts`` object of ``session``'s reply: the delta plus ``errors``."""
        if self._covered is not None and session is not None:
            named = frozenset(broadcast_id for broadcast_id, _ in requested)
            self._covered[session] = named | self._covered.get(session, frozenset())
        changed, errors = self.delta(requested)
        if errors:
            changed["errors"] = errors
        return changed

    def subscribe(self, current, requested):
        """The shared set of ``current`` (a set or None) plus the known ids
        of ``requested``; None when it is empty."""
        ids = {broadcast_id for broadcast_id, _ in requested if broadcast_id in self.versions}
        if not ids:
            return current
        if current is not None:
            if ids <= current:
                return current
            ids |= current
        return self._shared(frozenset(ids))

    def _shared(self, ids):
        shared = self._sets.get(ids)
        if shared is not None:
            return shared
        if len(self._sets) < MAX_SHARED_SETS:
            self._sets[ids] = ids
        return ids

    # -- what the poller says -------------------------------------------------
    def apply(self, new_versions):
        """Take the service's full id -> version map; return the ids whose
        version changed or that are new. Ids the service no longer lists are
        kept (autopush-rs never forgets a broadcast either)."""
        changed = []
        versions = self.versions
        for broadcast_id, version in new_versions.items():
            if versions.get(broadcast_id) != version:
                versions[sys.intern(broadcast_id)] = sys.intern(version)
                changed.append(broadcast_id)
        if changed:
            self.change_count += 1
        return changed

    def fan_out(self, sessions, changed):
        """Send each READY session subscribed to an id in ``changed`` one
        frame with the new versions; ``sessions``: an iterable snapshot
        (copied here at once). Returns the number of frames sent."""
        changed = frozenset(changed)
        if not changed:
            return 0
        sessions = list(sessions)
        frames = {}  # subscription set -> frame text (None: nothing for it)
        sent = 0
        slice_size = self.slice_size
        covered = self._covered = {} if self._covered is None else self._covered
        try:
            for start in range(0, len(sessions), slice_size):
                if start:
                    gevent.sleep(SLICE_PAUSE)
                for session in sessions[start:start + slice_size]:
                    subs = session.broadcast_subs
                    if subs is None or session.state != READY:
                        continue
                    if covered and session in covered:
                        frame = self._frame(subs & changed - covered[session])
                    else:
                        try:
                            frame = frames[subs]
                        except KeyError:
                            frame = frames[subs] = self._frame(subs & changed)
                    if frame is not None:
                        session.send_broadcast(frame)
                        sent += 1
        finally:
            self._covered = None
        return sent

    def _frame(self, ids):
        return broadcast_frame({i: self.versions[i] for i in sorted(ids)}) if ids else None
