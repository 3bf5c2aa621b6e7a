"""gunicorn configuration of the connection node.

    gunicorn -c gunicorn.conf.py connnode.connection.worker:placeholder_app

(``gunicorn`` also finds this file by itself when started in this folder.)
The app named on the command line is a placeholder: each worker builds its
node after gevent's monkey patching and swaps the node's public app in
(``connnode/connection/worker.py`` explains the hooks, slots and ports).
Options come from ``Settings.load()`` (ini file from ``CONNNODE_CONFIG``,
then ``CONNNODE_*`` variables); the number of workers from gunicorn's own
``WEB_CONCURRENCY`` (default 1). Worker k serves the private router API on
``router_port + k``; after a reload (HUP) up to 2 x workers such ports are in
use while old workers drain.

No ``preload_app``: boto3 must be imported after monkey patching, in the worker.
"""
import os

import gevent

from connnode.connection import worker as _connnode_worker
from connnode.logs import gunicorn_logconfig
from connnode.settings import Settings

_settings = Settings.load()

wsgi_app = "connnode.connection.worker:placeholder_app"
bind = [f"0.0.0.0:{_settings.port}"]
workers = int(os.environ.get("WEB_CONCURRENCY", "1"))
# The accept queue the workers share. In a connect storm of 100,000 clients
# on 6 workers (bench c100k) gunicorn's 2,048 filled up (1,634 waiting seen
# with ss), and a connection past it waits out a SYN retransmit (1 s, 3 s,
# 7 s ...). The kernel caps it at net.core.somaxconn (4,096 here).
backlog = 4096
worker_class = "geventwebsocket.gunicorn.workers.GeventWebSocketWorker"
# gunicorn's worker_connections sizes the gevent pool of the public server,
# which holds every WebSocket: the default 1000 would cap clients per worker.
if _settings.max_connections:
    # Room above the WebSocket limit for status requests and for upgrades
    # that get their 503.
    worker_connections = _settings.max_connections + max(100, _settings.max_connections // 10)
else:
    worker_connections = 100000
# gevent's greenlet-tree tracking keeps a dict and a stack summary around
# for every connection greenlet that ever spawned one (~1 KB per idle client).
gevent.config.track_greenlet_tree = False
preload_app = False
graceful_timeout = 30
# The master restarts a worker whose hub has not run for this long.
timeout = 60
accesslog = None
# One JSON object per line on stdout, gunicorn's own lines included.
logconfig_dict = gunicorn_logconfig(os.environ.get("CONNNODE_LOG_LEVEL", "INFO"))
logger_class = "connnode.logs.GunicornLogger"  # no access-log work per request
proc_name = "connnode-connection"
# gunicorn >= 25 opens a control socket at one per-user default path
# ($XDG_RUNTIME_DIR or ~/.gunicorn/gunicorn.ctl): a second gunicorn master on
# the machine (the endpoint node) would take it over. Off; the signals
# (HUP, TERM, TTIN, TTOU) remain the control interface.
control_socket_disable = True

on_starting = _connnode_worker.on_starting
pre_fork = _connnode_worker.pre_fork
post_worker_init = _connnode_worker.post_worker_init
child_exit = _connnode_worker.child_exit
worker_exit = _connnode_worker.worker_exit
