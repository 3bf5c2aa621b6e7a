"""The status routes of PROTOCOL.md 4.11, shared by both nodes: the connection
node's private router app and public app, and the endpoint node's app:

    GET /status           {"status": "OK", "version": ...}
    GET /health           storage health; 200 or 503
    GET /__heartbeat__    same as /health
    GET /__lbheartbeat__  {} without storage access
    GET /__version__      {"source", "version", "commit", "build"} (strings)

``status_routes(app, health, extra=None)`` adds them to a Flask app.
``health()`` returns ``(healthy, {"router": {...}, "storage": {...}})`` like
``Storage.health``; ``extra()`` returns fields merged into the health body
(a CN passes ``lambda: {"clients": len(registry)}``). Routes are GET only
(Flask adds HEAD), without automatic OPTIONS, so that an app's own 405/404
handling decides what other methods get.

``/__version__`` reads ``CONNNODE_SOURCE``, ``CONNNODE_COMMIT`` and
``CONNNODE_BUILD`` from the environment once, when the routes are added;
unknown values are empty strings.
"""
import logging
import os

import simplejson as json
from flask.sessions import SessionInterface

from connnode import __version__

log = logging.getLogger(__name__)

JSON = "application/json"


def version_info(environ=None):
    environ = os.environ if environ is None else environ
    return {"source": environ.get("CONNNODE_SOURCE", ""), "version": __version__,
            "commit": environ.get("CONNNODE_COMMIT", ""), "build": environ.get("CONNNODE_BUILD", "")}


def health_body(health, extra=None):
    """(status code, body dict) of /health."""
    try:
        healthy, report = health()
    except Exception as exc:  # a health check must answer, not raise
        log.exception("health check failed")
        healthy, report = False, {"storage": {"status": "NOT OK", "error": str(exc)[:200]}}
    body = {"status": "OK" if healthy else "NOT OK", "version": __version__}
    body.update(report)
    if extra is not None:
        body.update(extra())
    return (200 if healthy else 503), body


def status_routes(app, health, extra=None):
    """Add the 4.11 routes to ``app`` (a Flask app)."""
    response_class = app.response_class
    status_text = json.dumps({"status": "OK", "version": __version__}, separators=(",", ":"))
    version_text = json.dumps(version_info(), separators=(",", ":"))

    def status():
        return response_class(status_text, 200, mimetype=JSON)

    def health_check():
        code, body = health_body(health, extra)
        return response_class(json.dumps(body, separators=(",", ":")), code, mimetype=JSON)

    def lbheartbeat():
        return response_class("{}", 200, mimetype=JSON)

    def version():
        return response_class(version_text, 200, mimetype=JSON)

    for rule, endpoint, view in (("/status", "status", status),
                                 ("/health", "health", health_check),
                                 ("/__heartbeat__", "heartbeat", health_check),
                                 ("/__lbheartbeat__", "lbheartbeat", lbheartbeat),
                                 ("/__version__", "version", version)):
        app.add_url_rule(rule, endpoint, view, methods=["GET"], provide_automatic_options=False)
    return app


class NoSessions(SessionInterface):
    """No cookie sessions (our apps have none): one shared null session
    instead of Flask's per-request attempt to open a cookie session."""

    def __init__(self, app):
        self.null_session = self.make_null_session(app)

    def open_session(self, app, request):
        return self.null_session

    def save_session(self, app, session, response):
        pass
