"""Per-worker start-up of the endpoint node under gunicorn
(``conf/endpoint.gunicorn.conf.py`` wires these hooks; worker class
``connnode.endpoint.server.EndpointWorker``, gunicorn's gevent worker with
gevent's pywsgi).

The endpoint node is stateless, so unlike the connection node there are no
slots or private ports: every worker serves the same public port and builds
the same app. gunicorn loads ``placeholder_app``; ``post_worker_init`` runs in
the child after gevent's monkey patching (``GeventWorker.init_process``
patches first) and before ``worker.run()`` starts serving, and there:

1. loads the settings (``Settings.load()``: ini from ``CONNNODE_CONFIG``,
   then ``CONNNODE_*`` variables);
2. builds ``Storage`` (boto3 is imported only now, patched) and waits until
   the router and message tables exist (``wait_ready``: created if missing);
3. starts the rotation timer greenlet (7.2, every ``table_rotation_interval``
   seconds);
4. builds ``Metrics``, ``NodeClient`` and the Flask app, and puts the app in
   place of the placeholder (gunicorn's gevent worker calls ``worker.wsgi``
   for every request).

``placeholder_app`` answers 503 only if these hooks are not installed. It and
the start-up helpers shared with the connection node come from
``connnode.process``.
"""
import logging

from connnode.process import freeze_startup_objects, raise_nofile_limit
from connnode.process import placeholder_app as _placeholder_app

log = logging.getLogger(__name__)


def build_endpoint(settings):
    """(Flask app, storage) of one endpoint worker; call after monkey patching."""
    from connnode.db.storage import Storage
    from connnode.endpoint.app import create_endpoint_app
    from connnode.metrics import Metrics
    from connnode.nodeclient import NodeClient

    # Every DynamoDB call bounded (retries included): a hung store answers
    # POSTs 503 within seconds instead of holding them for botocore's ~28 s.
    storage = Storage(settings, call_timeout=settings.ddb_call_timeout)
    storage.wait_ready()
    app = create_endpoint_app(storage, Metrics.from_settings(settings), NodeClient(settings),
                              settings)
    return app, storage


def on_starting(server):
    """Master, once: raise the descriptor limit (one per client connection,
    plus the DynamoDB and node pools). Logging is gunicorn's
    ``logconfig_dict`` (JSON lines), set in the config file."""
    server.log.info("connnode endpoint: RLIMIT_NOFILE soft limit %s", raise_nofile_limit())


def post_worker_init(worker):
    """Build this worker's app (runs in the child, patched)."""
    import gevent

    from connnode.settings import Settings

    settings = Settings.load()
    app, storage = build_endpoint(settings)
    worker.connnode_rotation = gevent.spawn(storage.rotation.run_forever,
                                            settings.table_rotation_interval)
    worker.connnode_storage = storage
    worker.wsgi = app
    freeze_startup_objects()
    worker.log.info("connnode endpoint worker ready: %s, tables %s", settings.endpoint_url,
                    ", ".join(sorted(storage.rotation.valid)))


# The app gunicorn loads; post_worker_init replaces it before the worker
# serves anything.
placeholder_app = _placeholder_app("endpoint node")
