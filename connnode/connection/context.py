"""What a Session may use of its worker process: the narrow view.

A Session used to hold the whole ``Node`` and reached into a dozen of its
members. ``SessionContext`` names exactly what the state machine needs
(PROTOCOL.md 2, 7.3, 8), so a reader sees its dependencies in one place and a
test can build one from fakes (a small storage fake, a recording ``peers``)
and feed the session frames without dynalite:

* ``settings``, ``metrics``;
* ``storage``: ``router`` (get_uaid, register_user, drop_user,
  update_message_month), ``message_table(name)``, ``current_table``,
  ``month_usable(record)``, ``rotation.current``, ``crypto``;
* ``registry``, ``timers``, ``pending``: this process's holders, hub timers
  and write barrier;
* ``deletes``: the batched deletes of acked durable direct messages;
* ``node_id``: this process's router URL, written into the router record;
* ``peers``: the two calls to other connection nodes (evict a superseded
  holder, 3.4; ask the current holder to check storage, 2.16 step 5);
* ``ended(session)``: counts the connection out and logs its summary;
* ``broadcasts``: the worker's ``Broadcasts`` (``broadcasts.py``), or None
  while broadcasts are off (no ``megaphone_api_url``);
* ``tracker``: the lifecycle events' ``Tracker`` (``connnode/lifecycle.py``),
  used only for messages whose ``tracked`` is set.

One context per worker, shared by every session (one reference each, as the
node was): no memory per connection.
"""
import logging

from connnode.lifecycle import OFF
from connnode.nodeclient import NodeConnectionError

log = logging.getLogger(__name__)


class Peers:
    """Calls to other connection nodes' router APIs (3.4, 3.3); errors are
    logged, never raised: both calls are hints."""

    __slots__ = ("_client", "_log_uaid")

    def __init__(self, node_client, log_uaid):
        self._client = node_client
        self._log_uaid = log_uaid

    def evict(self, node_id, uaid, connected_at):
        """Hello step 5: ask the previous node to drop its connection."""
        try:
            self._client.delete(f"{node_id}/notif/{uaid}/{int(connected_at)}")
        except NodeConnectionError as exc:
            log.info("evicting %s at %s failed: %s", self._log_uaid(uaid), node_id, exc)

    def notify(self, node_id, uaid):
        """2.16 step 5: tell the user's current node that storage has news."""
        try:
            self._client.put(f"{node_id}/notif/{uaid}")
        except NodeConnectionError as exc:
            log.info("notifying %s failed: %s", node_id, exc)


class SessionContext:
    """The members a Session uses (see the module docstring)."""

    __slots__ = ("settings", "storage", "metrics", "registry", "timers", "pending",
                 "deletes", "node_id", "peers", "ended", "broadcasts", "tracker")

    def __init__(self, settings, storage, metrics, registry, timers, pending, deletes, node_id,
                 peers, ended, broadcasts=None, tracker=OFF):
        self.settings = settings
        self.storage = storage
        self.metrics = metrics
        self.registry = registry
        self.timers = timers
        self.pending = pending
        self.deletes = deletes
        self.node_id = node_id
        self.peers = peers
        self.ended = ended
        self.broadcasts = broadcasts
        self.tracker = tracker

    def endpoint_for(self, uaid, chid, key_raw):
        """The push endpoint URL of a new registration (2.5, 4.4)."""
        token = self.storage.crypto.endpoint_token(uaid, chid, key_raw)
        version = "v2" if key_raw is not None else "v1"
        return f"{self.settings.endpoint_url}/wpush/{version}/{token}"
