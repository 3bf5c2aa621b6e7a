"""Rate limits and the dead-subscription cache of a real endpoint node (issue
13 parts 1 and 2): real dynalite, real gunicorn nodes, real HTTP.

Storage calls are counted honestly: the endpoint node talks to dynalite
through ``CountingProxy``, a small HTTP relay in this process that counts
every DynamoDB request (by ``X-Amz-Target``) before passing it on unchanged
(the SigV4 signature covers the Host header, which it keeps). Nothing of the
node is mocked. The connection node and the test's own storage handle talk to
dynalite directly, so only the endpoint's calls are counted.

One endpoint node serves the whole module with small limits. It trusts
127.0.0.1 as a proxy, so each test picks a client address of its own with
``X-Forwarded-For`` (sent from 127.0.0.1) and starts with a full IP budget;
requests from 127.0.0.2, an untrusted peer, show that a spoofed header is
ignored.
"""
import http.client
import http.server
import itertools
import threading
import time

import pytest
import requests

from tests.harness import PushClient
from tests.integration.test_endpoint import Service, assert_error, statsd  # noqa: F401 (fixture)

pytestmark = pytest.mark.timeout(120)

IP_RATE, IP_BURST = 2, 100
SUB_RATE, SUB_BURST = 2, 3
DEAD_TTL = 2.0
RATE_LIMITED, ERRNO = 429, 115


class CountingProxy:
    """An HTTP/1.1 relay to dynalite that counts the DynamoDB calls it passes."""

    def __init__(self, upstream):
        self.upstream = upstream.split("://", 1)[1]
        self.calls = []
        self.lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            """One keep-alive connection of the node, relayed over one
            keep-alive connection to dynalite (no port churn)."""
            protocol_version = "HTTP/1.1"
            upstream = None

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with proxy.lock:
                    proxy.calls.append(self.headers.get("X-Amz-Target", "?"))
                if self.upstream is None:
                    self.upstream = http.client.HTTPConnection(proxy.upstream, timeout=10)
                status, headers, data = proxy.relay(self.upstream, self.path, body,
                                                    self.headers.items())
                self.send_response(status)
                for name, value in headers:
                    if name.lower() not in ("content-length", "transfer-encoding", "connection"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST

            def log_message(self, *args):
                pass

            def finish(self):
                super().finish()
                if self.upstream is not None:
                    self.upstream.close()

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @staticmethod
    def relay(connection, path, body, headers):
        """Pass one request on; once more on a fresh connection when dynalite
        had closed the idle one (it never saw the request then)."""
        for attempt in (1, 2):
            try:
                connection.request("POST", path, body, headers=dict(headers))
                response = connection.getresponse()
                return response.status, response.getheaders(), response.read()
            except (http.client.RemoteDisconnected, ConnectionError):
                connection.close()
                if attempt == 2:
                    raise

    @property
    def count(self):
        with self.lock:
            return len(self.calls)

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def proxy(dynalite):
    relay = CountingProxy(dynalite.endpoint)
    yield relay
    relay.close()


@pytest.fixture(scope="module")
def svc(dynalite, proxy, statsd, tmp_path_factory):
    service = Service(dynalite, tmp_path_factory.mktemp("limits"), ep_options={
        "aws_ddb_endpoint": proxy.url,
        "statsd_host": "127.0.0.1", "statsd_port": statsd.port,
        "table_rotation_interval": 3600,
        "trusted_proxies": "127.0.0.1",
        "rate_limit_ip_rate": IP_RATE, "rate_limit_ip_burst": IP_BURST,
        "rate_limit_subscription_rate": SUB_RATE, "rate_limit_subscription_burst": SUB_BURST,
        "dead_subscription_ttl": DEAD_TTL,
    })
    # the connection node binds its port before the endpoint node's storage
    # calls make the relay open connections (and take ephemeral ports)
    try:
        service.cn.start()
        service.ep.start()
        yield service
    finally:
        service.stop()


_ADDRESSES = itertools.count(1)


def client_ip():
    """A client address never used before (sent in X-Forwarded-For by the
    trusted peer 127.0.0.1)."""
    n = next(_ADDRESSES)
    return f"198.51.{n // 250}.{n % 250 + 1}"


def push(endpoint, ip, ttl="60", body=b"", **headers):
    headers = {"TTL": ttl, "X-Forwarded-For": ip, **headers}
    if body:
        headers["Content-Encoding"] = "aes128gcm"
    return requests.post(endpoint, data=body, headers=headers, timeout=10)


def push_from(source, url, path, forwarded_for):
    """POST from the local address ``source`` (an untrusted peer)."""
    host, port = url.split("://", 1)[1].split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10,
                                            source_address=(source, 0))
    try:
        connection.request("POST", path, b"", {"TTL": "0", "X-Forwarded-For": forwarded_for})
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def subscription(svc, chid=None):
    """A registered channel of an offline user: (uaid, chid, endpoint)."""
    made = PushClient(svc.cn.ws_url)
    try:
        made.hello()
        reply = made.register(chid)
        assert reply["status"] == 200
    finally:
        made.close()
    return made.uaid, reply["channelID"], reply["pushEndpoint"]


def assert_rate_limited(response, limit):
    assert_error(response, RATE_LIMITED, ERRNO)
    retry_after = int(response.headers["Retry-After"])
    assert retry_after >= 1
    assert f"{limit} limit" in response.json()["message"]
    return retry_after


# -- the subscription limit ---------------------------------------------------------------

def test_429_at_the_subscription_burst_without_a_storage_call(svc, proxy, statsd):
    _, _, endpoint = subscription(svc)
    ip = client_ip()
    statsd.drain()
    accepted, start = 0, time.monotonic()
    while True:
        before = proxy.count
        response = push(endpoint, ip)
        if response.status_code != 201:
            break
        assert proxy.count > before  # a stored message: storage was called
        accepted += 1
        assert accepted <= 10 * SUB_BURST, "never refused"
    elapsed = time.monotonic() - start
    assert proxy.count == before, proxy.calls[before:]  # the 429 made no storage call
    assert assert_rate_limited(response, "subscription") == 1
    assert SUB_BURST <= accepted <= SUB_BURST + SUB_RATE * elapsed
    statsd.wait_for("notification.rate_limited;limit=subscription:1|c",
                    "notification.message.error;code=429;router=webpush;vapid=False:1|c")
    # another subscription, from the same client, has a budget of its own
    _, _, other = subscription(svc)
    assert push(other, ip).status_code == 201


def test_subscription_bucket_refills(svc):
    _, _, endpoint = subscription(svc)
    ip = client_ip()
    while push(endpoint, ip, ttl="0").status_code == 201:
        pass
    refused_at = time.monotonic()
    # polled (a refusal takes nothing) until a token is back: within 1 / SUB_RATE s
    deadline = refused_at + 1.0 / SUB_RATE + 2.0
    while True:
        response = push(endpoint, ip, ttl="0")
        if response.status_code == 201:
            break
        assert_rate_limited(response, "subscription")
        assert time.monotonic() < deadline, "the bucket did not refill"
        time.sleep(0.05)
    # one token came back, not the burst
    assert_rate_limited(push(endpoint, ip, ttl="0"), "subscription")


def test_accepted_over_time_follow_rate_and_burst(svc):
    """POSTs without pause for 1.5 s: burst + rate x elapsed of them are
    accepted (give or take the token in refill at either end)."""
    _, _, endpoint = subscription(svc)
    ip = client_ip()
    statuses = []
    start = time.monotonic()
    while time.monotonic() - start < 1.5:
        statuses.append(push(endpoint, ip, ttl="0").status_code)
        time.sleep(0.02)
    elapsed = time.monotonic() - start
    accepted = statuses.count(201)
    assert set(statuses) == {201, RATE_LIMITED}
    assert SUB_BURST + int(SUB_RATE * elapsed) - 2 <= accepted <= SUB_BURST + SUB_RATE * elapsed


# -- the IP limit and the trusted-proxy rule ------------------------------------------------

def until_refused(send, most=4 * IP_BURST):
    """Call ``send()`` (a status) until it answers 429: (statuses before it,
    seconds taken)."""
    statuses = []
    start = time.monotonic()
    for _ in range(most):
        status = send()
        if status == RATE_LIMITED:
            return statuses, time.monotonic() - start
        statuses.append(status)
    raise AssertionError(f"no 429 in {most} requests")


def test_ip_limit_counts_each_forwarded_client_of_a_trusted_proxy(svc, proxy):
    junk = f"{svc.url}/wpush/v1/not-a-token"
    _, _, endpoint = subscription(svc)
    ip = client_ip()
    before = proxy.count
    statuses, elapsed = until_refused(lambda: push(junk, ip).status_code)
    assert set(statuses) == {404}
    assert IP_BURST <= len(statuses) <= IP_BURST + IP_RATE * elapsed
    # the bucket is empty: a real endpoint is refused too, before its token
    # is read and with no storage call
    assert_rate_limited(push(endpoint, ip), "ip")
    assert proxy.count == before
    assert push(junk, client_ip()).status_code == 404  # another client: its own budget


def test_spoofed_forwarded_for_from_an_untrusted_peer_is_ignored(svc):
    """127.0.0.2 is not a trusted proxy: a new X-Forwarded-For on every
    request does not buy a new budget; the peer's own address counts."""
    path = "/wpush/v1/not-a-token"
    statuses, elapsed = until_refused(
        lambda: push_from("127.0.0.2", svc.url, path, client_ip()))
    assert set(statuses) == {404}
    assert IP_BURST <= len(statuses) <= IP_BURST + IP_RATE * elapsed
    # the trusted peer's forwarded clients are unaffected
    assert push(f"{svc.url}{path}", client_ip()).status_code == 404


# -- the dead-subscription cache --------------------------------------------------------------

def unregistered(svc):
    """A subscription whose channel was unregistered: (uaid, chid, endpoint)."""
    made = PushClient(svc.cn.ws_url)
    try:
        made.hello()
        reply = made.register()
        made.send({"messageType": "unregister", "channelID": reply["channelID"]})
        assert made.recv()["status"] == 200
        deadline = time.monotonic() + 5
        while reply["channelID"] in svc.storage.current_table.all_channels(made.uaid)[1]:
            assert time.monotonic() < deadline, "unregister_channel did not happen"
            time.sleep(0.02)
    finally:
        made.close()
    return made.uaid, reply["channelID"], reply["pushEndpoint"]


def test_dead_subscription_answers_410_without_storage_then_expires(svc, proxy, statsd):
    _, _, endpoint = unregistered(svc)
    ip = client_ip()
    before = proxy.count
    first = push(endpoint, ip, body=b"anyone there?")
    assert_error(first, 410, 106)
    assert proxy.count > before  # storage answered the first one
    answered_at = time.monotonic()
    statsd.drain()
    before = proxy.count
    again = push(endpoint, ip, body=b"anyone there?")
    assert_error(again, 410, 106)
    assert again.json() == first.json()
    assert proxy.count == before, proxy.calls[before:]
    statsd.wait_for("notification.dead_subscription;errno=106:1|c")
    # it expires DEAD_TTL s after storage's answer: storage is asked again
    deadline = answered_at + DEAD_TTL + 5
    while proxy.count == before:
        assert time.monotonic() < deadline, "the dead-subscription entry did not expire"
        sent_at = time.monotonic()
        assert_error(push(endpoint, ip), 410, 106)
        if proxy.count == before:  # still from the cache: only within DEAD_TTL
            assert sent_at - answered_at < DEAD_TTL
        time.sleep(0.1)
    assert time.monotonic() - answered_at >= DEAD_TTL - 0.1


def test_resubscription_is_not_blocked_by_the_cache(svc, proxy):
    uaid, chid, endpoint = unregistered(svc)
    ip = client_ip()
    assert_error(push(endpoint, ip), 410, 106)
    before = proxy.count
    assert_error(push(endpoint, ip), 410, 106)
    assert proxy.count == before  # from the cache
    made = PushClient(svc.cn.ws_url)
    try:
        assert made.hello(uaid)["uaid"] == uaid
        again = made.register(chid)  # the very same channel id, registered again
        assert again["status"] == 200
        fresh = made.register()  # and a new one, as a browser's resubscribe makes
    finally:
        made.close()
    assert again["pushEndpoint"] != endpoint  # a new token
    assert push(again["pushEndpoint"], ip).status_code == 201
    assert push(fresh["pushEndpoint"], ip).status_code == 201
    assert_error(push(endpoint, ip), 410, 106)  # the old URL is still answered from memory
