"""The private router API of one connection-node process (PROTOCOL.md 3):
the Flask app served on this worker's router port, never on the public port.

    PUT    /push/{uaid}                 direct delivery (3.2)
    PUT    /notif/{uaid}                ask the holder to check storage (3.3)
    DELETE /notif/{uaid}/{connected_at} close a superseded holder (3.4)
    GET    /status/{uaid}               ours: whether this worker holds the uaid
                                        (200 JSON; 404 otherwise), for ``connnode diagnose``
    GET    /status /health /__heartbeat__ /__lbheartbeat__ /__version__ (3.5, 4.11)

Bodies are short ``text/plain`` strings; callers look only at the status.
Other paths answer 404 and known paths with another method 405 (no automatic
OPTIONS answers).

``create_router_app(node)`` returns the WSGI app and closes over ``node``, which provides
``registry`` (``get(uaid)``, ``len()``), ``storage`` (``health()``) and
``metrics``. A session (registry value) provides ``connected_at``, ``busy``,
``deliver_direct(notification) -> bool``, ``request_check() -> 200|202`` and
``terminate()``.

PUT /push is the hot path of direct delivery, DELETE /notif the one of a
reconnect storm (a hello taking over a uaid another worker holds):
``RouterApp`` answers both as a plain WSGI callable and hands every other
request to the Flask app (which keeps stub routes for them so other methods
still get 405).

Metrics are the session's (it tags them with the connection's user agent):
``ua.notification_check`` when a PUT /notif starts a check, and
``ua.notification.topic`` for every topic notification it sends.
"""
import re

import simplejson as json
from flask import Flask, Response
from werkzeug.exceptions import HTTPException

from connnode.notification import Notification
from connnode.protocol import is_uaid
from connnode.status import NoSessions, status_routes

_is_decimal = re.compile(r"[0-9]{1,20}").fullmatch

MAX_BODY_BYTES = 1024 * 1024

NOT_CONNECTED = "Client not connected."
STATE_NAMES = ("awaiting_hello", "hello_in_progress", "ready", "closing")
CHECK_BODIES = {200: "Notification check started", 202: "Flagged for Notification check"}


class TextResponse(Response):
    default_mimetype = "text/plain"


STATUS_LINES = {200: "200 OK", 400: "400 Bad Request", 404: "404 Not Found",
                413: "413 Request Entity Too Large", 500: "500 Internal Server Error",
                503: "503 Service Unavailable"}


class RouterApp:
    """The private router's WSGI entry point. ``PUT /push/<uaid>``, the hot
    path of direct delivery, is answered here without Flask (request context,
    routing and Response objects cost half its time); every other request
    goes to the Flask app."""

    def __init__(self, node, flask_app):
        self.node = node
        self.flask = flask_app
        self.logger = flask_app.logger

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        if "//" in path:
            # Werkzeug would strip leading slashes and route "//notif/x" as
            # "/notif/x"; a path is exactly one of the routes or 404.
            return self._answer(start_response, 404, NOT_CONNECTED)
        method = environ.get("REQUEST_METHOD")
        if method == "PUT" and path.startswith("/push/") and "/" not in path[6:]:
            answer = self.push
        elif method == "DELETE" and path.startswith("/notif/") and path.count("/") == 3:
            answer = self.terminate
        else:
            return self.flask(environ, start_response)
        try:
            status, body = answer(path, environ)
        except Exception:  # noqa: BLE001 - answer, never drop the request
            self.logger.exception("%s %s failed", method, path)
            status, body = 500, "Internal Server Error"
        return self._answer(start_response, status, body)

    @staticmethod
    def _answer(start_response, status, body):
        payload = body.encode()
        start_response(STATUS_LINES[status], [("Content-Type", "text/plain; charset=utf-8"),
                                              ("Content-Length", str(len(payload)))])
        return [payload]

    def push(self, path, environ):
        """PUT /push/<uaid>, PROTOCOL.md 3.2: (status, body)."""
        uaid = path[6:]
        if not is_uaid(uaid):
            return 404, NOT_CONNECTED
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            return 400, "Invalid body"
        if length > MAX_BODY_BYTES:
            return 413, "Request Entity Too Large"
        raw = environ["wsgi.input"].read(length) if length else environ["wsgi.input"].read(
            MAX_BODY_BYTES + 1)
        if len(raw) > MAX_BODY_BYTES:
            return 413, "Request Entity Too Large"
        try:
            notification = Notification.from_push_body(uaid, json.loads(raw))
        except (ValueError, RecursionError):
            return 400, "Invalid body"
        session = self.node.registry.get(uaid)
        if session is None:
            return 404, NOT_CONNECTED
        if session.busy:
            return 503, "Client busy."
        if session.deliver_direct(notification):
            return 200, "Client accepted for delivery"
        return 404, NOT_CONNECTED

    def terminate(self, path, _environ):
        """DELETE /notif/<uaid>/<connected_at>, PROTOCOL.md 3.4: (status,
        body). A hello that took the uaid over asks the holder to let go;
        in a reconnect storm that is most hellos, so it skips Flask too."""
        _, _, uaid, connected_at = path.split("/")
        if not (is_uaid(uaid) and _is_decimal(connected_at)):
            return 404, NOT_CONNECTED
        session = self.node.registry.get(uaid)
        if session is None or session.connected_at != int(connected_at):
            return 404, NOT_CONNECTED
        session.terminate()
        return 200, "Terminated duplicate"

    def test_client(self):
        from werkzeug.test import Client
        return Client(self, self.flask.response_class)


def create_router_app(node):
    app = Flask("connnode.connection.router_app")
    # No merging of "//" into "/" with a redirect: a path is exactly one of
    # the routes or 404 (RouterApp answers paths holding "//" itself).
    app.url_map.merge_slashes = False
    app.response_class = TextResponse
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.session_interface = NoSessions(app)

    def text(body, status):
        return TextResponse(body, status)

    def check(uaid):
        session = node.registry.get(uaid) if is_uaid(uaid) else None
        if session is None:
            return text(NOT_CONNECTED, 404)
        status = 200 if session.request_check() == 200 else 202
        return text(CHECK_BODIES[status], status)

    def holder_status(uaid):
        session = node.registry.get(uaid) if is_uaid(uaid) else None
        if session is None:
            return text(NOT_CONNECTED, 404)
        return Response(json.dumps({
            "held": True, "node_id": getattr(node, "node_id", None),
            "connected_at": session.connected_at, "state": STATE_NAMES[session.state],
            "outstanding_direct": len(session.direct), "outstanding_stored": len(session.batch),
        }), 200, mimetype="application/json")

    app.add_url_rule("/status/<uaid>", "holder_status", holder_status, methods=["GET"],
                     provide_automatic_options=False)
    app.add_url_rule("/push/<uaid>", "push", _answered_by_router_app, methods=["PUT"],
                     provide_automatic_options=False)
    app.add_url_rule("/notif/<uaid>", "check", check, methods=["PUT"],
                     provide_automatic_options=False)
    app.add_url_rule("/notif/<uaid>/<connected_at>", "terminate", _answered_by_router_app,
                     methods=["DELETE"], provide_automatic_options=False)
    status_routes(app, lambda: node.storage.health(),
                  lambda: {"clients": len(node.registry)})

    def http_error(exc):
        response = text(exc.name, exc.code or 500)
        if getattr(exc, "valid_methods", None):
            response.headers["Allow"] = ", ".join(exc.valid_methods)
        return response

    app.register_error_handler(HTTPException, http_error)
    return RouterApp(node, app)


def _answered_by_router_app(**_path):  # pragma: no cover - RouterApp answers first
    """Only there so that other methods on /push/<uaid> and
    /notif/<uaid>/<connected_at> get 405."""
    return TextResponse(NOT_CONNECTED, 404)
