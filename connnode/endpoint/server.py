"""The endpoint node's gunicorn worker class: gunicorn's gevent worker with
gevent's pywsgi parsing the requests (``GeventPyWSGIWorker``), which costs
less CPU per POST /wpush than gunicorn's own parser (see
``conf/endpoint.gunicorn.conf.py``).

pywsgi alone keeps a kept-alive connection for as long as the client does,
so ``EndpointWorker`` adds two rules that gunicorn's own gevent worker has:

* **silent connections end**: each connection's socket times out after
  gunicorn's ``keepalive`` seconds (default 2) without a byte, between
  requests or in the middle of one, so idle clients cannot fill the worker's
  ``worker_connections``;
* **a stopping worker closes its idle connections**: when gunicorn closes
  the server (SIGTERM, a restart), connections waiting for their next
  request are shut down at once and busy ones close after their response,
  so a graceful stop does not wait for idle clients (each connection node's
  Megaphone poller keeps one).

It also skips the access-log record pywsgi builds for every request unless
access lines are wanted (``connnode.logs.GunicornLogger``).
"""
import socket
import weakref

from gunicorn.workers.ggevent import GeventPyWSGIWorker, PyWSGIHandler, PyWSGIServer

from connnode.httpheaders import FastHeadersHandler
from connnode.sendall import FastSendallHandler


class EndpointServer(PyWSGIServer):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.idle = weakref.WeakSet()  # handlers waiting for a request line

    def close(self):
        super().close()
        for handler in list(self.idle):
            handler.end_idle()


class EndpointRequestHandler(FastHeadersHandler, FastSendallHandler, PyWSGIHandler):
    #: seconds a connection may stay silent: gunicorn's ``keepalive``, set
    #: per worker by ``EndpointWorker``
    idle_timeout = 2.0

    def __init__(self, sock, address, server, rfile=None):
        sock.settimeout(self.idle_timeout)
        super().__init__(sock, address, server, rfile)

    def handle_one_request(self):
        if self.server.closed:
            return None  # the worker is stopping: close this connection
        self.server.idle.add(self)
        try:
            return super().handle_one_request()
        finally:
            self.server.idle.discard(self)

    def read_requestline(self):
        line = super().read_requestline()
        self.server.idle.discard(self)
        return line

    def end_idle(self):
        try:
            self.socket.shutdown(socket.SHUT_RDWR)
        except (OSError, AttributeError):
            pass  # already closed

    def log_request(self):
        if self.server.log.access_log_enabled:
            super().log_request()


class EndpointWorker(GeventPyWSGIWorker):
    server_class = EndpointServer

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.wsgi_handler = type("EndpointRequestHandler", (EndpointRequestHandler,),
                                 {"idle_timeout": float(self.cfg.keepalive or 2)})
