"""Everything one connection-node process shares between its connections:
settings, storage, the local registry, timers, the pending-write barrier,
metrics, the node-to-node client and this process's node_id. Sessions see
only the part of it they need, ``Node.context`` (``context.py``).

``build_node`` is called once per worker, after gevent's monkey patching (so
boto3 is imported patched), and returns the node with its two WSGI apps.
"""
import logging
import sys
import time

import gevent

from connnode.connection.broadcasts import Broadcasts
from connnode.connection.closes import Close
from connnode.connection.context import Peers, SessionContext
from connnode.connection.deletes import AckedDeletes
from connnode.connection.pending import PendingWrites
from connnode.connection.registry import Registry
from connnode.connection.session import Session
from connnode.connection.timers import Timers
from connnode.crypto import hash_uaid
from connnode.db.dynamo import StorageError
from connnode.lifecycle import Tracker
from connnode.useragent import families, host_tag

log = logging.getLogger(__name__)
summary_log = logging.getLogger("connnode.connection.summary")


class Node:
    def __init__(self, settings, storage, metrics, node_client, node_id):
        self.settings = settings
        self.storage = storage
        self.metrics = metrics
        self.node_client = node_client
        self.node_id = node_id
        self.registry = Registry()
        self.pending = PendingWrites()
        self.timers = Timers()
        self.accepting = True
        self.connections = 0  # WebSockets whose session has not ended yet
        self.router_app = None
        self.public_app = None
        self._rotation = None
        self._megaphone = None
        # Megaphone broadcasts (issue 15): off (None) without a URL to poll
        self.broadcasts = Broadcasts() if getattr(settings, "megaphone_api_url", "") else None
        self.context = SessionContext(
            settings, storage, metrics, self.registry, self.timers, self.pending,
            AckedDeletes(storage, self.pending), node_id, Peers(node_client, self.log_uaid),
            self.session_ended, self.broadcasts, Tracker.from_settings(settings))

    def log_uaid(self, uaid):
        """The uaid as logs may show it: hashed when key_hash is set."""
        if uaid and self.settings.key_hash:
            return hash_uaid(self.settings.key_hash, uaid)
        return uaid

    def session_ended(self, session):
        """Count the connection out and log its summary line (2.16 step 3)."""
        self.connections -= 1
        stats = session.stats or {}
        os_family, browser_family = families(session.user_agent)
        summary_log.info("connection closed", extra={"fields": {
            "uaid_hash": self.log_uaid(session.uaid),
            "ua_os_family": os_family,
            "ua_browser_family": browser_family,
            "lifespan": round(time.time() - session.connected_at / 1000, 3),
            "registers": stats.get("registers", 0),
            "unregisters": stats.get("unregisters", 0),
            "direct_acked": stats.get("direct_acked", 0),
            "stored_retrieved": stats.get("stored_retrieved", 0),
            "stored_acked": stats.get("stored_acked", 0),
            "nacks": stats.get("nacks", 0),
            "direct_saved": stats.get("direct_saved", 0),
            "uaid_reset": bool(stats.get("reset")),
        }})

    def session_factory(self, environ):
        # Shared with every other client sending the same value (sys.intern),
        # not a copy per connection: memory per idle client.
        user_agent = sys.intern(environ.get("HTTP_USER_AGENT", ""))
        host = host_tag(environ.get("HTTP_HOST", ""), self.settings.hostname)
        connected_at = int(time.time() * 1000)

        def make(transport):
            self.connections += 1
            return Session(self.context, transport, connected_at, user_agent, host)
        return make

    # -- life cycle -------------------------------------------------------------
    def warm_up(self):
        """Do once, at start-up, the lazy first-use work of the first
        connection: the User-Agent parser builds its matchers (~1.2 MB) and
        the first Fernet token initialises OpenSSL's cipher state (~3.7 MB).
        Paid once per worker either way; done here it is part of the worker's
        start-up memory (frozen with it) instead of the first client's hello
        and register. Nothing is cached or stored."""
        from connnode.useragent import families

        sample = "Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0"
        try:
            families.__wrapped__(sample)  # not through its cache
            crypto = self.storage.crypto
            token = crypto.endpoint_token("0" * 32, "00000000-0000-0000-0000-000000000000")
            crypto.parse_endpoint_token(token, False)
        except Exception:  # noqa: BLE001 - an optimisation only: never fatal
            log.exception("warm-up failed")

    def start(self):
        self._rotation = gevent.spawn(self.storage.rotation.run_forever,
                                      self.settings.table_rotation_interval)
        if self.broadcasts is not None:
            from connnode.connection.megaphone import MegaphonePoller
            poller = MegaphonePoller(self.settings, self.broadcasts, self.metrics,
                                     lambda: self.registry)
            self._megaphone = gevent.spawn(poller.run_forever)

    def shutdown(self, timeout):
        """Stop taking upgrades, close every client with 1001, wait (bounded)
        for the saves their closes started."""
        self.accepting = False
        if self._megaphone is not None:  # no fan-out to sessions being closed
            self._megaphone.kill(block=False)
        deadline = time.monotonic() + timeout
        for session in list(self.registry):
            record = {"uaid": session.uaid, "node_id": self.node_id,
                      "connected_at": session.connected_at}
            session.close(Close.SHUTTING_DOWN)
            # so endpoints store at once instead of calling a node that is gone
            self.pending.spawn(session.uaid, self._clear_node, record)
        while self.connections and time.monotonic() < deadline:
            gevent.sleep(0.05)
        return self.pending.wait_all(max(0.0, deadline - time.monotonic()))

    def _clear_node(self, record):
        try:
            self.storage.router.clear_node(record)
        except StorageError as exc:
            log.info("clear_node at shutdown failed for %s: %s", self.log_uaid(record["uaid"]), exc)


def build_node(settings, router_port):
    """The node of one worker process whose private router listens on ``router_port``."""
    from connnode.connection.app import create_public_app
    from connnode.connection.router_app import create_router_app
    from connnode.db.storage import Storage
    from connnode.metrics import Metrics
    from connnode.nodeclient import NodeClient

    # Storage calls on greenlets of their own: botocore's deep stack would
    # otherwise stay resident in every idle connection's greenlet.
    storage = Storage(settings, own_greenlet=True)
    storage.wait_ready()
    node = Node(settings, storage, Metrics.from_settings(settings), NodeClient(settings),
                settings.router_url_for(router_port))
    node.router_app = create_router_app(node)
    node.public_app = create_public_app(node)
    return node
