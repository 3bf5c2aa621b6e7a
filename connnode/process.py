"""Worker-process start-up helpers shared by both nodes' gunicorn hooks.

The connection node (``connnode.connection.worker``) and the endpoint node
(``connnode.endpoint.worker``) start their gunicorn workers the same way in a
few respects: the master raises the descriptor limit, a worker freezes what it
built at start-up out of the garbage collector's view, the backdoor refuses a
non-loopback address, and gunicorn first loads a placeholder app that the
hooks replace. These helpers live here, outside either node's package, so
that neither node imports the other's worker module. They import nothing
heavy (no gevent, boto3 or Flask), so the gunicorn master can use them before
any worker is forked.
"""
import ipaddress
import logging
import resource

log = logging.getLogger(__name__)

NOFILE_CEILING = 1 << 20


def raise_nofile_limit(ceiling=NOFILE_CEILING):
    """Raise the soft RLIMIT_NOFILE toward the hard limit (one descriptor per
    client connection). Returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(hard, ceiling) if hard != resource.RLIM_INFINITY else ceiling
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("cannot raise RLIMIT_NOFILE from %s to %s: %s", soft, target, exc)
    return soft


def freeze_startup_objects():
    """Move everything built at start-up (botocore's service models, Flask,
    the node) out of the garbage collector's view: full collections then
    walk only what requests create (they cost 50-70 ms per pass before)."""
    import gc
    gc.collect()
    gc.freeze()


def is_loopback_host(host):
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ``::1``)."""
    name = (host or "").strip().lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def placeholder_app(name):
    """The WSGI app gunicorn loads for node ``name`` (e.g. "connection node");
    ``post_worker_init`` replaces it before the worker serves anything, so it
    answers 503 only if the gunicorn hooks are not installed."""
    message = f"{name} not started (gunicorn hooks missing?)".encode()

    def app(environ, start_response):
        start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
        return [message]

    app.__name__ = app.__qualname__ = "placeholder_app"
    app.__doc__ = f"The placeholder app of the {name}: 503 until post_worker_init replaces it."
    return app
