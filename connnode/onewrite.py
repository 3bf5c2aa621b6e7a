"""HTTP client connections that put a small request on the wire in one write.

Used where connnode still goes through urllib3: boto3's own calls, https
(DynamoDB, nodes behind TLS) and ``wire_http_calls = false``; plain-http
calls otherwise go over connnode/wire.py, which writes once by construction.

urllib3 2.x (under both boto3 and our node client) writes a request's header
block and its body with two ``send()`` calls, so the peer (dynalite, a
connection node's router) may be woken, and read, twice per request. An
endpoint ``POST`` makes two such requests (the BatchGetItem and
``PUT /push``). Measured with ``bench.run end-to-end --repeats 1``, two runs
each way on the same machine: frame latency p99 at 200 msg/s 12.2 / 14.0 ms
with one write per request against 23.7 / 17.5 ms with two, and a maximal
sustained rate of 300 against 250 msg/s. (The answers of our own pywsgi
router are left as pywsgi writes them: wrapping them measured slower.)

``OneWriteMixin`` holds what ``request()`` writes and sends it at the end of
``request()`` in one ``sendall``; writes of more than ``FLUSH_BYTES`` in all,
non-bytes bodies and requests that wait for ``100 Continue`` go out as they
come.

The same connections skip urllib3's liveness check when they were used
moments ago: before it reuses a pooled connection urllib3 polls its socket
(``is_connection_dropped``: a ``poll()`` with timeout 0, which under gevent
also starts and fires a timer), about 8 % of an endpoint worker's CPU at
saturation (py-spy, ``bench.end_to_end``-shaped load). A connection used less
than ``RECHECK_IDLE`` seconds ago counts as connected without the poll; the
peers close idle keep-alive connections after seconds (node's http server,
dynalite: 5 s; DynamoDB: longer), and a peer that closes one sooner makes
the request fail as it could already between the poll and the write (the
lean client retries it as botocore does, the node client stores the message
instead).

``one_write_pools()`` gives urllib3 pool classes that use it, for a
``PoolManager``'s ``pool_classes_by_scheme``; ``use_one_write(client)`` puts
them into a boto3 client's connection pools.
"""
import logging
import time

import urllib3.connection
import urllib3.connectionpool

log = logging.getLogger(__name__)

FLUSH_BYTES = 64 * 1024
#: Seconds since its last request within which a connection is taken as
#: connected without polling its socket.
RECHECK_IDLE = 1.0


class OneWriteMixin:
    """Buffers the writes of one ``request()`` call and skips the liveness
    poll of a connection used moments ago; see the module doc."""

    _held = None
    _held_bytes = 0
    _used_at = float("-inf")

    @property
    def is_connected(self):
        if self.sock is None:
            return False
        if time.monotonic() - self._used_at < RECHECK_IDLE:
            return True
        return super().is_connected

    def request(self, method, url, body=None, headers=None, *args, **kwargs):
        self._used_at = time.monotonic()
        self._held, self._held_bytes = [], 0
        try:
            super().request(method, url, body, headers, *args, **kwargs)
        except BaseException:
            self._held = None
            raise
        self._flush()

    def send(self, data):
        if self._held is None:
            return super().send(data)
        if (not isinstance(data, (bytes, bytearray)) or self._held_bytes + len(data) > FLUSH_BYTES
                or getattr(self, "_expect_header_set", False)):
            self._flush()
            self._held = []
            return super().send(data)
        self._held.append(data)
        self._held_bytes += len(data)
        return None

    def _flush(self):
        held, self._held, self._held_bytes = self._held, None, 0
        if held:
            super().send(b"".join(held))


def _pool_classes(http_connection, https_connection, http_pool, https_pool):
    """``{"http": pool class, "https": pool class}`` whose connections write once."""
    plain = type("OneWrite" + http_connection.__name__, (OneWriteMixin, http_connection), {})
    tls = type("OneWrite" + https_connection.__name__, (OneWriteMixin, https_connection), {})
    return {
        "http": type("OneWrite" + http_pool.__name__, (http_pool,), {"ConnectionCls": plain}),
        "https": type("OneWrite" + https_pool.__name__, (https_pool,), {"ConnectionCls": tls}),
    }


def one_write_pools():
    """Pool classes for a plain urllib3 ``PoolManager``."""
    return _pool_classes(urllib3.connection.HTTPConnection, urllib3.connection.HTTPSConnection,
                         urllib3.connectionpool.HTTPConnectionPool,
                         urllib3.connectionpool.HTTPSConnectionPool)


def use_one_write(client):
    """Make a fresh boto3 client write each request once.

    botocore has no public hook for its connection class, so this sets the
    pool classes of the client's ``URLLib3Session`` (before any request has
    opened a pool). If botocore's internals have moved, the client is left
    as it is (two writes per request, still correct) and a warning says so.
    """
    import botocore.awsrequest as aws

    try:
        session = client._endpoint.http_session
        classes = _pool_classes(aws.AWSHTTPConnection, aws.AWSHTTPSConnection,
                                aws.AWSHTTPConnectionPool, aws.AWSHTTPSConnectionPool)
        session._pool_classes_by_scheme = classes
        session._manager.pool_classes_by_scheme = classes
    except AttributeError as exc:
        log.warning("boto3 client keeps two writes per request: %s", exc)
    return client
