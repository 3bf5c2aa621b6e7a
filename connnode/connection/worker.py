"""Per-worker start-up of the connection node under gunicorn
(``gunicorn.conf.py`` wires these hooks; worker class
``geventwebsocket.gunicorn.workers.GeventWebSocketWorker``).

Slots (master side). Each worker process owns a private router port,
``router_port + slot``, and advertises it in its node_id, because only that
process holds the sockets it registered. ``pre_fork`` (run in the master just
before ``os.fork``, with the new worker object) gives the worker the lowest slot
no live worker uses and stores it as ``worker.connnode_slot``; the fork copies
that attribute into the child. ``child_exit`` (master, after the child is
reaped) frees it; so does ``worker_exit`` when gunicorn calls it in the master
(a worker found already gone when signalled). After a reload (HUP) the old
workers drain beside the new ones, so up to 2 x workers slots (ports) are in
use at once. The table lives on the arbiter object, which survives a reload
of this config; before each allocation it forgets workers the arbiter no
longer has (a failed fork, a missed exit). Re-exec upgrades (USR2) are not
supported: the new master's workers would want the same ports while the old
ones still hold them (their bind fails and the new master stops).

Worker side. ``post_worker_init`` runs in the child after gevent's monkey
patching (``GeventWorker.init_process`` patches first) and after gunicorn has
loaded the placeholder app, right before ``worker.run()`` builds the public
server from ``worker.wsgi`` and ``worker.wsgi_handler``. There it:

1. loads the settings and builds the node (``build_node``; boto3 is imported
   only now, patched);
2. starts the private router listener, a gevent ``pywsgi.WSGIServer`` on
   ``router_port + slot`` with ``TCP_NODELAY`` (without it a keep-alive
   request costs ~43 ms instead of ~0.6 ms) and no access log;
3. configures ``ConnectionHandler`` (``max_connections``,
   ``open_handshake_timeout``, ``current_connections`` from
   ``node.connections``) and puts it and the node's public app in place of
   gunicorn's handler and the placeholder app, and the public server class
   (:func:`public_server_class`: one accept per wakeup, none while a
   sibling worker should take the next connection, ``loadshare.py``) in
   place of its own;
4. starts the node, the optional gevent backdoor (``backdoor_port + slot``,
   loopback only), and a watcher that calls ``node.shutdown`` once gunicorn
   asks the worker to stop, so clients get a 1001 close and unacked direct
   messages are saved before gunicorn's graceful timeout.

Router bind address: loopback when ``router_hostname`` is a loopback name
(``localhost``, ``*.localhost``, an address in 127.0.0.0/8 or ``::1``: then
the listener binds exactly that address, ``127.0.0.1`` for the names), else
all interfaces (``0.0.0.0``): other hosts must reach it, and the name may
resolve to an address this host does not own (NAT) or, through
``/etc/hosts``, to 127.0.1.1. The router port must be firewalled from the
public either way.

``placeholder_app`` is the WSGI app gunicorn loads
(``connnode.connection.worker:placeholder_app``); it is replaced before the
first request and answers 503 only if these hooks are not installed. It and
the helpers shared with the endpoint node (descriptor limit, gc freeze,
loopback check) come from ``connnode.process``.
"""
import ipaddress
import logging
import os

from connnode.connection.loadshare import RECHECK, REPORT_INTERVAL, LoadShare, WorkerLoads
from connnode.process import freeze_startup_objects, is_loopback_host, raise_nofile_limit
from connnode.process import placeholder_app as _placeholder_app

log = logging.getLogger(__name__)

HANDLER_PATH = "connnode.connection.handler.ConnectionHandler"
ROUTER_BACKLOG = 1024


# -- master side ---------------------------------------------------------------

class SlotAllocator:
    """Worker slots: each owner (a gunicorn worker object, compared by
    identity) holds one small integer; a new owner gets the lowest free one."""

    def __init__(self):
        self._slots = {}  # id(owner) -> (owner, slot)

    def allocate(self, owner):
        held = self._slots.get(id(owner))
        if held is not None:
            return held[1]
        used = {slot for _, slot in self._slots.values()}
        slot = 0
        while slot in used:
            slot += 1
        self._slots[id(owner)] = (owner, slot)
        return slot

    def release(self, owner):
        """Free the owner's slot; the slot, or None if it held none."""
        held = self._slots.pop(id(owner), None)
        return None if held is None else held[1]

    def retain(self, live_owners):
        """Forget every owner not in ``live_owners``; the freed slots."""
        live = {id(owner) for owner in live_owners}
        gone = [key for key in self._slots if key not in live]
        return sorted(self._slots.pop(key)[1] for key in gone)

    def slot_of(self, owner):
        held = self._slots.get(id(owner))
        return None if held is None else held[1]

    def in_use(self):
        return sorted(slot for _, slot in self._slots.values())

    def __len__(self):
        return len(self._slots)


def slots_of(server):
    """The arbiter's slot table (created on first use; kept across reloads)."""
    allocator = getattr(server, "connnode_slots", None)
    if allocator is None:
        allocator = server.connnode_slots = SlotAllocator()
    return allocator


def on_starting(server):
    from connnode.settings import Settings

    settings = Settings.load()
    if settings.backdoor_port is not None and not is_loopback_host(settings.backdoor_host):
        raise SystemExit(f"connnode: backdoor_host {settings.backdoor_host!r} is not a loopback "
                         "address; refusing to start (the backdoor is a Python shell)")
    limit = raise_nofile_limit()
    server.log.info("connnode: RLIMIT_NOFILE soft limit %s", limit)
    # Made before the first fork, so every worker shares it (loadshare.py).
    server.connnode_loads = WorkerLoads()


def pre_fork(server, worker):
    allocator = slots_of(server)
    allocator.retain(server.WORKERS.values())
    worker.connnode_slot = allocator.allocate(worker)
    worker.connnode_loads = getattr(server, "connnode_loads", None)


def child_exit(server, worker):
    slots_of(server).release(worker)


def worker_exit(server, worker):
    if os.getpid() == server.pid:
        # Master: gunicorn found the worker already gone (kill_worker, ESRCH)
        # and will not call child_exit for it.
        slots_of(server).release(worker)
        return
    # Child, on its way out (its run loop has returned): let a started node
    # shutdown finish its saves, then stop answering on the router port.
    watcher = getattr(worker, "connnode_shutdown", None)
    if watcher is not None and not worker.alive:
        watcher.join(timeout=float(worker.cfg.graceful_timeout))
    router = getattr(worker, "connnode_router_server", None)
    if router is not None:
        router.close()


# -- worker side -----------------------------------------------------------------

def router_bind_host(router_hostname):
    """The address the private router listener binds (see module docstring)."""
    name = (router_hostname or "").strip().rstrip(".").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return "127.0.0.1"
    try:
        address = ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        return "0.0.0.0"
    if address.is_loopback:
        return str(address)
    return "::" if address.version == 6 else "0.0.0.0"


def router_listener(host, port, backlog=ROUTER_BACKLOG):
    """A listening gevent socket with SO_REUSEADDR and TCP_NODELAY (Linux
    copies TCP_NODELAY to accepted sockets; RouterServer sets it again per
    connection for kernels that do not)."""
    from gevent import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    return sock


def make_router_server(listener, app, server_name, error_log=None):
    """A pywsgi server for the router app: no access log (not even the
    formatting of one), TCP_NODELAY on every connection."""
    from gevent import pywsgi, socket

    from connnode.httpheaders import FastHeadersHandler
    from connnode.sendall import FastSendallHandler

    class QuietHandler(FastHeadersHandler, FastSendallHandler, pywsgi.WSGIHandler):
        def log_request(self):
            pass

    class RouterServer(pywsgi.WSGIServer):
        handler_class = QuietHandler

        def handle(self, sock, address):
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
            super().handle(sock, address)

    # SERVER_NAME given, so pywsgi does not reverse-resolve the bind address.
    return RouterServer(listener, app, log=None,
                        error_log=error_log or logging.getLogger("connnode.router"),
                        environ={"SERVER_NAME": server_name})


def public_server_class(base, share=None):
    """gunicorn's public server class with one ``accept`` per wakeup, and,
    given a :class:`~connnode.connection.loadshare.LoadShare`, none while it
    says to leave the next connection to a sibling.

    One accept per wakeup: gevent accepts up to 100 connections each time the
    listening socket is readable and runs their handshakes before anything
    else. In a connect storm that starves the clients already connected: in
    the reconnect-storm benchmark (5,000 clients, one worker) no hello reached
    storage until the last handshake was done, 2.3 s in, while the store sat
    idle. Accepting one at a time puts the next accept behind the hellos that
    are ready.
    """
    class PublicServer(base):
        max_accept = 1
        load_share = share
        _recheck = None

        def _do_read(self):
            share, pool = self.load_share, self.pool
            if share is not None and pool is not None and share.leave_to_sibling(len(pool)):
                self.stop_accepting()
                if self._recheck is None:
                    self._recheck = self.loop.timer(RECHECK)
                if not self._recheck.active:
                    self._recheck.start(self._start_accepting_if_started)
                return
            super()._do_read()

    return PublicServer


def _report_load(share, worker, node):
    """This worker's line in the shared table (loadshare.py), while it accepts."""
    import gevent

    try:
        while worker.alive and node.accepting:
            share.report()
            gevent.sleep(REPORT_INTERVAL)
    finally:
        share.withdraw()


def configure_handler(handler, settings, node):
    """Set ConnectionHandler's per-worker class attributes. The node's
    ``connections`` is this process's one count of open WebSockets (its
    shutdown waits on it too)."""
    handler.max_connections = settings.max_connections
    handler.open_handshake_timeout = settings.open_handshake_timeout
    handler.current_connections = staticmethod(lambda: node.connections)
    handler.accepting = staticmethod(lambda: node.accepting)
    return handler


def start_backdoor(settings, slot, node, worker):
    if settings.backdoor_port is None:
        return None
    if not is_loopback_host(settings.backdoor_host):
        raise RuntimeError(f"backdoor_host {settings.backdoor_host!r} is not a loopback "
                           "address; refusing to start the backdoor")
    from gevent.backdoor import BackdoorServer

    port = settings.backdoor_port + slot
    server = BackdoorServer((settings.backdoor_host, port), locals={
        "node": node, "registry": node.registry, "settings": settings, "db": node.storage,
        "metrics": node.metrics, "worker": worker})
    server.start()
    return server


def post_worker_init(worker):
    """Build and start this worker's node (runs in the child, patched)."""
    import gevent

    from connnode.connection.node import build_node
    from connnode.connection.handler import ConnectionHandler
    from connnode.settings import Settings

    settings = Settings.load()
    slot = worker.connnode_slot
    port = settings.router_port + slot
    if port > 65535:
        raise RuntimeError(f"router port {port} (router_port {settings.router_port} + slot "
                           f"{slot}) is not a TCP port")
    node = build_node(settings, port)
    host = router_bind_host(settings.router_hostname)
    try:
        listener = router_listener(host, port)
    except OSError as exc:
        raise RuntimeError(f"cannot listen on router port {host}:{port}: {exc}") from exc
    router = make_router_server(listener, node.router_app, settings.router_hostname)
    router.start()
    worker.connnode_node = node
    worker.connnode_router_server = router
    worker.wsgi_handler = configure_handler(ConnectionHandler, settings, node)
    worker.wsgi = node.public_app
    share = None
    loads = getattr(worker, "connnode_loads", None)
    if loads is not None and settings.max_connections > 0:
        share = LoadShare(loads, slot, settings.max_connections, lambda: node.connections)
        gevent.spawn(_report_load, share, worker, node)
    worker.server_class = public_server_class(worker.server_class, share)
    node.start()
    if hasattr(node, "warm_up"):
        node.warm_up()
    freeze_startup_objects()
    worker.connnode_backdoor = start_backdoor(settings, slot, node, worker)
    if hasattr(node, "shutdown"):
        worker.connnode_shutdown = gevent.spawn(_shutdown_when_stopping, worker, node)
    worker.log.info("connnode worker slot %d: router %s listening on %s:%d",
                    slot, settings.router_url_for(port), host, port)


def _shutdown_when_stopping(worker, node, poll=0.5):
    """Once gunicorn clears ``worker.alive`` (SIGTERM, max_requests), close
    the clients with 1001 within the graceful timeout; the worker's run loop
    then sees its connection pool empty and returns, and ``worker_exit``
    waits for this greenlet (the saves) before the process ends."""
    import gevent

    while worker.alive:
        gevent.sleep(poll)
    timeout = max(1.0, float(worker.cfg.graceful_timeout) - 2.0)
    try:
        node.shutdown(timeout)
    except Exception:
        log.exception("node shutdown failed")


# The app gunicorn loads; post_worker_init replaces it with the node's public
# app before the worker serves anything.
placeholder_app = _placeholder_app("connection node")
