"""Node-to-node HTTP calls (PROTOCOL.md 3.6): EP -> CN and CN -> CN.

One ``NodeClient`` per process, built after gevent's monkey patching (urllib3
then uses gevent sockets). It keeps one keep-alive pool per node
(scheme, host, port) of ``POOL_MAXSIZE`` connections. A burst above that
waits for a free connection (``block=True``) instead of opening extra ones
that urllib3 would throw away after one use ("Connection pool is full,
discarding connection", seen at 500 concurrent publishers): the wait is
bounded by ``router_request_timeout``, and a call that found no free
connection in that time is answered as the busy status 503 (leave the
record, store the message), not as a connection error: the other node is
not gone, this process is congested.

Timeouts: ``router_connect_timeout`` to connect, ``router_request_timeout`` for
the whole call as urllib3 counts it (the read timeout is what is left of the
total once connected, applied to each socket read; the answers are a few
bytes, so this bounds the call). Retries and redirects are off: a PUT /push
must never be delivered twice. Anything urllib3 raises for a transport
problem (refused, reset, DNS failure, timeout, broken pooled connection)
becomes ``NodeConnectionError``; an HTTP answer of any status is returned.

Plain ``http://`` nodes (the usual case: node-to-node traffic stays on the
private network) are called over connnode/wire.py's keep-alive pools, one
per node, with the same pool size, waits and timeouts (the whole call
bounded by ``router_request_timeout``); ``wire_http_calls = false`` and
``https://`` nodes keep urllib3.
"""
from urllib.parse import urlsplit

import urllib3
from urllib3.exceptions import EmptyPoolError, HTTPError

from connnode import wire
from connnode.encoding import compact_json
from connnode.onewrite import one_write_pools

POOL_MAXSIZE = 50
#: What a call answers when no pooled connection came free in time.
CONGESTED = 503
# Distinct nodes kept in the pool manager before the least recently used
# pool is dropped: every CN worker is its own (host, port), so the default
# of 10 would churn connections on any real cluster.
NUM_POOLS = 1000

JSON_HEADERS = {"Content-Type": "application/json"}
WIRE_JSON_HEADERS = b"Content-Type: application/json\r\n"
HTTP_PREFIX = "http://"


class NodeConnectionError(Exception):
    """The other node could not be reached (3.6 "connection error")."""


class NodeClient:
    def __init__(self, settings):
        self.wire = settings.wire_http_calls
        self.connect_timeout = settings.router_connect_timeout
        self.total_timeout = settings.router_request_timeout
        self._wire_pools = {}  # "host:port" -> WirePool, oldest first
        self.timeout = urllib3.Timeout(connect=settings.router_connect_timeout,
                                       total=settings.router_request_timeout)
        self.pool_timeout = settings.router_request_timeout
        self.pool = urllib3.PoolManager(num_pools=NUM_POOLS, maxsize=POOL_MAXSIZE, block=True,
                                        timeout=self.timeout, retries=False)
        # One write per request (header block and body together): connnode/onewrite.py.
        self.pool.pool_classes_by_scheme = one_write_pools()

    def put(self, url, json_body=None):
        """PUT ``url`` (with a compact JSON body if given); the HTTP status."""
        if json_body is None:
            return self._call("PUT", url, None, None)
        body = compact_json(json_body).encode("utf-8")
        return self._call("PUT", url, body, JSON_HEADERS)

    def delete(self, url):
        """DELETE ``url``; the HTTP status."""
        return self._call("DELETE", url, None, None)

    def close(self):
        self.pool.clear()
        pools, self._wire_pools = self._wire_pools, {}
        for pool in pools.values():
            pool.close()

    def _call(self, method, url, body, headers):
        if self.wire and url.startswith(HTTP_PREFIX):
            return self._call_wire(method, url, body, headers)
        try:
            response = self.pool.urlopen(method, url, body=body, headers=headers,
                                         redirect=False, preload_content=True,
                                         pool_timeout=self.pool_timeout)
        except EmptyPoolError:
            return CONGESTED
        except (HTTPError, OSError) as exc:
            raise NodeConnectionError(f"{method} {url}: {exc}") from exc
        return response.status

    def _call_wire(self, method, url, body, headers):
        slash = url.find("/", len(HTTP_PREFIX))
        if slash < 0:
            netloc, path = url[len(HTTP_PREFIX):], "/"
        else:
            netloc, path = url[len(HTTP_PREFIX):slash], url[slash:]
        pool = self._wire_pools.get(netloc) or self._new_wire_pool(netloc)
        try:
            return pool.request(method, path, body or b"", WIRE_JSON_HEADERS if headers else b"",
                                total_timeout=self.total_timeout).status
        except wire.PoolTimeout:
            return CONGESTED
        except (wire.WireError, UnicodeError) as exc:
            raise NodeConnectionError(f"{method} {url}: {exc}") from exc

    def _new_wire_pool(self, netloc):
        try:
            parts = urlsplit(HTTP_PREFIX + netloc)
            host, port = parts.hostname, parts.port or 80
        except ValueError as exc:
            raise NodeConnectionError(f"bad node address {netloc!r}: {exc}") from exc
        if not host:
            raise NodeConnectionError(f"bad node address {netloc!r}")
        if len(self._wire_pools) >= NUM_POOLS:  # drop the oldest node's pool
            self._wire_pools.pop(next(iter(self._wire_pools))).close()
        pool = self._wire_pools[netloc] = wire.WirePool(
            host, port, maxsize=POOL_MAXSIZE, connect_timeout=self.connect_timeout,
            block=True, pool_timeout=self.pool_timeout, host_header=netloc)
        return pool
