"""The connection node's public port (PROTOCOL.md 2.1): WebSocket upgrades on
any path, the status routes, and 404 for everything else (the private router
paths included).

Upgrades do not go through Flask: a Flask view would keep its request
context alive for the whole life of the WebSocket (memory per idle client),
and Flask routing would tie the upgrade to one path. A small WSGI callable
sends upgrades straight to the WebSocket layer and hands every other request
to the Flask app.
"""
from flask import Flask

from connnode.connection.transport import serve_connection
from connnode.status import status_routes

SUBPROTOCOL = "push-notification"


def create_status_app(node):
    app = Flask("connnode.connection.public")
    status_routes(app, node.storage.health, lambda: {"clients": len(node.registry)})

    @app.errorhandler(404)
    def not_found(_error):
        return app.response_class("Not found", 404, mimetype="text/plain")

    @app.errorhandler(405)
    def not_allowed(_error):
        return app.response_class("Method not allowed", 405, mimetype="text/plain")
    return app


class PublicApp:
    """WSGI entry point of a connection-node worker's public port."""

    def __init__(self, node):
        self.node = node
        self.http = create_status_app(node)

    def app_protocol(self, _path):
        """gevent-websocket asks which subprotocol to select when offered."""
        return SUBPROTOCOL

    def __call__(self, environ, start_response):
        if environ.get("wsgi.websocket") is None:
            return self.http(environ, start_response)
        self.serve_websocket(environ)
        return []

    def serve_websocket(self, environ):
        """Serve an upgraded connection to its end. ``ConnectionHandler``
        calls this directly rather than through ``__call__`` (see
        ``ConnectionHandler.run_websocket``: less memory per idle client)."""
        serve_connection(environ["wsgi.websocket"], self.node.session_factory(environ),
                         self.node.settings)


def create_public_app(node):
    return PublicApp(node)
