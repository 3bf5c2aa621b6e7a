"""gunicorn configuration of the endpoint node.

    gunicorn -c conf/endpoint.gunicorn.conf.py

Run it from the project folder (or with the package installed). The app is a
placeholder: each worker builds the endpoint app after gevent's monkey
patching and swaps it in (``connnode/endpoint/worker.py``). Options come from
``Settings.load()`` (ini file from ``CONNNODE_CONFIG``, then ``CONNNODE_*``
variables); the public port is ``endpoint_port`` (8082), on all interfaces.

Workers: ``WEB_CONCURRENCY_ENDPOINT`` if set, else gunicorn's own
``WEB_CONCURRENCY``, else 1. The endpoint node is stateless, so any number
of workers (and hosts) can serve the same port; the separate variable lets
one environment size both nodes differently (``WEB_CONCURRENCY`` alone sizes
the connection node).

No ``preload_app``: boto3 must be imported after monkey patching, in the worker.
"""
import os

from connnode.endpoint import worker as _connnode_endpoint
from connnode.logs import gunicorn_logconfig
from connnode.settings import Settings

_settings = Settings.load()

wsgi_app = "connnode.endpoint.worker:placeholder_app"
bind = [f"0.0.0.0:{_settings.endpoint_port}"]
workers = int(os.environ.get("WEB_CONCURRENCY_ENDPOINT") or os.environ.get("WEB_CONCURRENCY")
              or "1")
# gunicorn's gevent worker serving requests with gevent's pywsgi instead of
# gunicorn's own HTTP parser (connnode/endpoint/server.py, which keeps
# gunicorn's keep-alive timeout): less CPU per POST /wpush (bench.cpu_ratio,
# same hour, 2 x 1 repeat: EP us per POST v1 durable 1,670/1,348 ->
# 1,368/1,278, durable off 1,226/1,085 -> 979/974, VAPID 1,550/1,477 ->
# 1,323/1,335).
worker_class = "connnode.endpoint.server.EndpointWorker"
# Concurrent requests per worker (gunicorn's default); each waits on
# DynamoDB and the connection nodes, not on the CPU.
worker_connections = 1000
preload_app = False
graceful_timeout = 30
# The master restarts a worker whose hub has not run for this long.
timeout = 60
accesslog = None
# One JSON object per line on stdout, gunicorn's own lines included.
logconfig_dict = gunicorn_logconfig(os.environ.get("CONNNODE_LOG_LEVEL", "INFO"))
logger_class = "connnode.logs.GunicornLogger"  # no access-log work per request
proc_name = "connnode-endpoint"
# gunicorn >= 25 opens a control socket at one per-user default path: it
# would clash with the connection node's master on the same machine. Off;
# the signals (HUP, TERM, TTIN, TTOU) remain the control interface.
control_socket_disable = True

on_starting = _connnode_endpoint.on_starting
post_worker_init = _connnode_endpoint.post_worker_init
