"""The private router API of one connection-node process (PROTOCOL.md 3):
the Flask app served on this worker's router port, never on the public port.

    PUT    /push/{uaid}                 direct delivery (3.2)
    PUT    /notif/{uaid}                ask the holder to check storage (3.3)
    DELETE /notif/{uaid}/{connected_at} close a superseded holder (3.4)
    GET    /status /health /__heartbeat__ /__lbheartbeat__ /__version__ (3.5, 4.11)

Bodies are short ``text/plain`` strings; callers look only at the status.
Other paths answer 404 and known paths with another method 405 (no automatic
OPTIONS answers).

``create_router_app(node)`` closes over ``node``, which provides
``registry`` (``get(uaid)``, ``len()``), ``storage`` (``health()``) and
``metrics``. A session (registry value) provides ``connected_at``, ``busy``,
``deliver_direct(notification) -> bool``, ``request_check() -> 200|202`` and
``terminate()``.

PUT /push is the hot path of direct delivery: the views do the least Flask
allows (no hooks, no sessions, no JSON helpers; ``get_data`` + simplejson).

Metrics are the session's (it tags them with the connection's user agent):
``ua.notification_check`` when a PUT /notif starts a check, and
``ua.notification.topic`` for every topic notification it sends.
"""
import re

import simplejson as json
from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException

from connnode.connection.status import NoSessions, status_routes
from connnode.notification import Notification

_is_uaid = re.compile(r"[0-9a-f]{32}").fullmatch
_is_decimal = re.compile(r"[0-9]{1,20}").fullmatch

MAX_BODY_BYTES = 1024 * 1024

NOT_CONNECTED = "Client not connected."
CHECK_BODIES = {200: "Notification check started", 202: "Flagged for Notification check"}


class TextResponse(Response):
    default_mimetype = "text/plain"


def create_router_app(node):
    app = Flask("connnode.connection.router_app")
    app.response_class = TextResponse
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.session_interface = NoSessions(app)

    def text(body, status):
        return TextResponse(body, status)

    def push(uaid):
        if not _is_uaid(uaid):
            return text(NOT_CONNECTED, 404)
        try:
            notification = Notification.from_push_body(uaid, json.loads(request.get_data()))
        except (ValueError, RecursionError):
            return text("Invalid body", 400)
        session = node.registry.get(uaid)
        if session is None:
            return text(NOT_CONNECTED, 404)
        if session.busy:
            return text("Client busy.", 503)
        if session.deliver_direct(notification):
            return text("Client accepted for delivery", 200)
        return text(NOT_CONNECTED, 404)

    def check(uaid):
        session = node.registry.get(uaid) if _is_uaid(uaid) else None
        if session is None:
            return text(NOT_CONNECTED, 404)
        status = 200 if session.request_check() == 200 else 202
        return text(CHECK_BODIES[status], status)

    def terminate(uaid, connected_at):
        if not (_is_uaid(uaid) and _is_decimal(connected_at)):
            return text(NOT_CONNECTED, 404)
        session = node.registry.get(uaid)
        if session is None or session.connected_at != int(connected_at):
            return text(NOT_CONNECTED, 404)
        session.terminate()
        return text("Terminated duplicate", 200)

    app.add_url_rule("/push/<uaid>", "push", push, methods=["PUT"],
                     provide_automatic_options=False)
    app.add_url_rule("/notif/<uaid>", "check", check, methods=["PUT"],
                     provide_automatic_options=False)
    app.add_url_rule("/notif/<uaid>/<connected_at>", "terminate", terminate,
                     methods=["DELETE"], provide_automatic_options=False)
    status_routes(app, lambda: node.storage.health(),
                  lambda: {"clients": len(node.registry)})

    def http_error(exc):
        response = text(exc.name, exc.code or 500)
        if getattr(exc, "valid_methods", None):
            response.headers["Allow"] = ", ".join(exc.valid_methods)
        return response

    app.register_error_handler(HTTPException, http_error)
    return app
