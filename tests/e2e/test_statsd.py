"""StatsD, checked against a real StatsD daemon (issue 12, part 4).

The reference daemon (npm ``statsd``, Etsy's, in ``node_modules``) listens on
free ports with no backend and a flush interval far longer than the test, so
what it received stays in its ``counters`` and ``timers``. A connection node
and an endpoint node send their metrics to it while a browser stand-in runs
one scripted session: hello, two registers, a signed POST received and
acked, an unsigned one nacked, a POST to an unknown endpoint, close, then a
POST while offline. The daemon's admin interface (TCP, ``counters`` /
``timers``) is then read: every metric of that session must be there under
the name the daemon keeps (``name;tag=value;...``, Graphite's tagged form),
with the tags README.md documents for it and the count of what happened,
under one tag set only; and every key the daemon holds must be a documented
metric with its documented tags. No metric line may be refused
(``statsd.bad_lines_seen`` stays 0)."""
import json
import os
import re
import shutil
import socket
import subprocess
import time
import uuid
import warnings

import pytest
import requests
from py_vapid import Vapid02

from connnode.embedded import die_with_parent
from tests.conftest import make_settings
from tests.harness import (ROOT, ConnectionNode, EndpointNode, PushClient,
                           application_server_key, browser_keys, decrypt, pick_port,
                           send_webpush)
from tests.metrics_doc import documented_metrics, find, split_key

pytestmark = pytest.mark.timeout(120)

STATSD_JS = ROOT / "node_modules" / "statsd" / "stats.js"
FIREFOX_UA = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
CONNECTION = {"host": "127.0.0.1", "ua_browser_family": "Firefox", "ua_os_family": "Linux"}
ADMIN_TIMEOUT = 5.0
WAIT = 10.0


def unavailable(message):
    """Fail under CI (``CI`` set), skip loudly elsewhere."""
    message = f"STATSD DAEMON UNAVAILABLE: {message}; tests/e2e/test_statsd.py did NOT run."
    if os.environ.get("CI"):
        pytest.fail(message + " CI is set, so this is a failure.")
    warnings.warn(message)
    pytest.skip(message)


def free_udp_port():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- the daemon and its admin interface ----------------------------------------------

_INSPECT_ENTRY = re.compile(
    r"(?:'((?:[^'\\]|\\.)*)'|([A-Za-z_$][\w$]*))\s*:\s*(\[[^\]]*\]|-?[\d.e+-]+)")


def parse_inspect(text):
    """Node's ``util.inspect`` of ``{key: number}`` or ``{key: [numbers]}``."""
    entries = {}
    for quoted, bare, value in _INSPECT_ENTRY.findall(text):
        key = quoted if quoted else bare
        if value.startswith("["):
            entries[key] = [float(item) for item in value.strip("[] \n").replace("\n", " ").split(",")
                            if item.strip()]
        else:
            entries[key] = float(value)
    return entries


class StatsdDaemon:
    """``node stats.js config`` on a free UDP port (metrics) and TCP port (admin)."""

    def __init__(self, workdir):
        self.port = free_udp_port()
        self.mgmt_port = pick_port()
        self.config = workdir / "statsd-config.js"
        self.log_path = workdir / "statsd.log"
        # No backend: the daemon only aggregates; an hour between flushes,
        # so nothing is reset during the test. Keys are kept as sent (the
        # daemon's sanitising keeps ';' and '=').
        self.config.write_text(json.dumps({
            "port": self.port, "address": "127.0.0.1",
            "mgmt_port": self.mgmt_port, "mgmt_address": "127.0.0.1",
            "backends": [], "flushInterval": 3600 * 1000,
            "deleteIdleStats": False, "automaticConfigReload": False,
        }, indent=2))
        self.process = None

    def start(self, node):
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [node, str(STATSD_JS), str(self.config)], cwd=ROOT, stdout=log, stderr=log,
                start_new_session=True, preexec_fn=die_with_parent)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"statsd exited with {self.process.returncode}: "
                                   f"{self.log_path.read_text(errors='replace')[-2000:]}")
            try:
                if self.admin("health").startswith("health: up"):
                    break
            except OSError:
                time.sleep(0.05)
        else:
            raise RuntimeError("statsd's admin port did not answer within 15 s")
        # The UDP side: a probe line must show up in the counters.
        probe = f"connnode_test_probe_{uuid.uuid4().hex[:8]}"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.sendto(f"{probe}:1|c".encode(), ("127.0.0.1", self.port))
        self.wait(lambda: probe in self.counters(), "the UDP probe")
        self.probe = probe
        return self

    def admin(self, command, end=None):
        """One admin command's answer: read until ``end`` (or the first
        chunk), within ADMIN_TIMEOUT."""
        deadline = time.monotonic() + ADMIN_TIMEOUT
        with socket.create_connection(("127.0.0.1", self.mgmt_port), timeout=ADMIN_TIMEOUT) as sock:
            sock.sendall(command.encode() + b"\n")
            data = b""
            while True:
                sock.settimeout(max(0.01, deadline - time.monotonic()))
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
                if end is None or data.endswith(end):
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"admin {command!r}: no {end!r} in {data[-200:]!r}")
        return data.decode("ascii", errors="replace")

    def counters(self):
        return parse_inspect(self.admin("counters", end=b"END\n\n"))

    def timers(self):
        return parse_inspect(self.admin("timers", end=b"END\n\n"))

    def poll(self, ready, timeout=WAIT):
        """Poll the admin interface until ``ready()``, at most ``timeout`` s;
        whether it became ready."""
        deadline = time.monotonic() + timeout
        while not ready():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def wait(self, ready, what, timeout=WAIT):
        """``poll``, failing when ``ready()`` never came."""
        if not self.poll(ready, timeout):
            raise AssertionError(f"statsd: {what} not seen within {timeout} s; "
                                 f"counters {self.counters()}, timers {self.timers()}")

    def stop(self):
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


@pytest.fixture(scope="module")
def statsd_daemon(tmp_path_factory):
    node = shutil.which("node")
    if node is None:
        unavailable("`node` is not on PATH (Node 20 is needed, see README)")
    if not STATSD_JS.exists():
        unavailable(f"{STATSD_JS} is missing (run `npm ci`; `make test` does)")
    daemon = StatsdDaemon(tmp_path_factory.mktemp("statsd"))
    try:
        daemon.start(node)
    except (RuntimeError, AssertionError, OSError) as exc:
        daemon.stop()
        unavailable(f"the daemon did not start: {exc}")
    yield daemon
    daemon.stop()


@pytest.fixture(scope="module")
def nodes(dynalite, statsd_daemon, tmp_path_factory):
    """An endpoint node and a connection node on fresh tables, both sending
    their metrics to the daemon."""
    from connnode.db.storage import Storage

    workdir = tmp_path_factory.mktemp("nodes")
    suffix = uuid.uuid4().hex[:8]
    tables = {"router": f"router_{suffix}", "message": f"message_{suffix}"}
    Storage(make_settings(dynalite, router_tablename=tables["router"],
                          message_tablename=tables["message"])).create_tables()
    statsd = {"statsd_host": "127.0.0.1", "statsd_port": statsd_daemon.port,
              "statsd_prefix": ""}
    ep = EndpointNode(dynalite, tables, log_path=workdir / "ep.log", **statsd)
    cn = ConnectionNode(dynalite, tables, endpoint_url=ep.url, log_path=workdir / "cn.log",
                        hello_timeout=5, close_handshake_timeout=1, **statsd)
    try:
        ep.start()
        cn.start()
        yield ep, cn
    finally:
        cn.stop()
        ep.stop()


def raw_post(endpoint, body=b"", ttl="60"):
    headers = {"TTL": ttl}
    if body:
        headers["Content-Encoding"] = "aes128gcm"
    return requests.post(endpoint, data=body, headers=headers, timeout=10)


# -- the session ------------------------------------------------------------------------

def run_session(ep, cn, daemon):
    """The scripted session; the counts and timer samples it must produce."""
    connection = ";".join(f"{k}={v}" for k, v in sorted(CONNECTION.items()))
    vapid = Vapid02()
    vapid.generate_keys()
    browser = PushClient(cn.ws_url, header=[f"User-Agent: {FIREFOX_UA}"])
    try:
        browser.hello()
        signed = browser.register(key=application_server_key(vapid))
        unsigned = browser.register()
        assert "/wpush/v2/" in signed["pushEndpoint"], signed
        private_key, auth, keys = browser_keys()

        # 1. A signed POST with a body, delivered directly and acked.
        response = send_webpush(ep.url, signed["pushEndpoint"], keys, vapid, "first")
        assert response.status_code == 201, response.text
        frame = browser.recv()
        assert decrypt(frame, private_key, auth) == b"first"
        first_bytes = len(frame["data"])
        browser.ack(frame)

        # 2. An unsigned POST without a body to the v1 endpoint, nacked.
        response = raw_post(unsigned["pushEndpoint"])
        assert response.status_code == 201, response.text
        frame = browser.recv()
        assert frame["channelID"] == unsigned["channelID"] and "data" not in frame
        browser.send({"messageType": "nack", "version": frame["version"], "code": 302})

        # 3. A POST to an endpoint that does not exist: 404.
        response = raw_post(f"{ep.url}/wpush/v1/{'A' * 80}")
        assert response.status_code == 404, response.text

        # The ack and the nack are counted when the node reads them: wait
        # for them before closing, so the close cannot overtake them.
        daemon.wait(lambda: {f"ua.command.ack;{connection}",
                             f"ua.command.nack;code=302;{connection}"} <= set(daemon.counters()),
                    "the ack and the nack")
    finally:
        browser.close()

    # 4. Closed: the lifespan timer says the node has seen the close.
    lifespan = f"ua.connection.lifespan;{connection}"
    daemon.wait(lambda: lifespan in daemon.timers(), "ua.connection.lifespan")

    # 5. A signed POST while offline, without a body: stored.
    response = send_webpush(ep.url, signed["pushEndpoint"], keys, vapid, None)
    assert response.status_code == 201, response.text

    counters = {
        f"ua.command.hello;{connection}": 1,
        f"ua.command.register;{connection}": 2,
        f"ua.command.ack;{connection}": 1,
        f"ua.command.nack;code=302;{connection}": 1,
        "notification.auth;scheme=vapid;vapid=2": 2,
        "updates.vapid.draft02": 2,
        "updates.notification.encoding.aes128gcm": 1,
        "notification.message_data;destination=Direct": first_bytes,
        "notification.message_data;destination=Stored": 0,
        "notification.message.success;destination=Direct;router=webpush;vapid=True": 1,
        "notification.message.success;destination=Direct;router=webpush;vapid=False": 1,
        "notification.message.success;destination=Stored;router=webpush;vapid=True": 1,
        "notification.message.error;code=404;router=webpush;vapid=False": 1,
    }
    timers = {lifespan: 1, "notification.request_time": 3}
    return counters, timers


def test_session_metrics_as_the_daemon_keeps_them(nodes, statsd_daemon):
    ep, cn = nodes
    daemon = statsd_daemon
    started = time.monotonic()
    expected_counters, expected_timers = run_session(ep, cn, daemon)

    def arrived():
        counters, timers = daemon.counters(), daemon.timers()
        return (all(counters.get(key) == value for key, value in expected_counters.items())
                and all(len(timers.get(key, ())) >= count
                        for key, count in expected_timers.items()))
    # UDP and the admin port are served by one event loop in no promised
    # order: poll (bounded) until the session's counts are in, then assert
    # on what is there either way, so a miss shows as a diff.
    daemon.poll(arrived)
    elapsed_ms = (time.monotonic() - started) * 1000
    counters, timers = daemon.counters(), daemon.timers()

    # Every line was valid StatsD.
    assert counters.get("statsd.bad_lines_seen") == 0, counters
    ours = {key: value for key, value in counters.items()
            if not key.startswith("statsd.") and key != daemon.probe}
    ours_timers = {key: samples for key, samples in timers.items() if samples}

    # What the session did, counted as it happened, under these keys.
    assert {key: ours.get(key) for key in expected_counters} == expected_counters
    assert {key: len(ours_timers.get(key, ())) for key in expected_timers} == expected_timers
    for samples in ours_timers.values():
        assert all(0 <= sample <= elapsed_ms for sample in samples), samples

    # Once: a metric of the session arrives under the expected tag sets
    # only (one, or one per destination), nowhere else.
    expected_keys = list(expected_counters) + list(expected_timers)
    held = list(ours) + list(ours_timers)
    for name in {split_key(key)[0] for key in expected_keys}:
        holders = sorted(k for k in held if split_key(k)[0] == name)
        assert holders == sorted(k for k in expected_keys if split_key(k)[0] == name), \
            f"{name} arrived under {holders}"

    # Everything the daemon holds is documented, with its documented tags.
    rows = documented_metrics()
    for key in list(ours) + list(ours_timers):
        name, tags = split_key(key)
        row = find(name, rows)
        assert row is not None, f"{key}: {name} is not in README.md's metrics table"
        assert row.kind == ("timer" if key in ours_timers else "counter"), key
        assert row.tags_problem(tags) is None, f"{key}: {row.tags_problem(tags)}"


def test_parse_inspect():
    text = ("{ 'statsd.bad_lines_seen': 0,\n  'a.b;k=v': 2,\n  plain: 1.5 }\n"
            "{ 'x;y=z': [ 1.25, 3,\n    4 ], empty: [] }")
    assert parse_inspect(text) == {"statsd.bad_lines_seen": 0, "a.b;k=v": 2, "plain": 1.5,
                                   "x;y=z": [1.25, 3, 4], "empty": []}
