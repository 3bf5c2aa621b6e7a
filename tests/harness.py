"""Real processes and real clients for integration tests: gunicorn connection
nodes on free ports, and a WebSocket client that speaks like Firefox."""
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import uuid
from pathlib import Path

import http_ece
import requests
import simplejson as json
import websocket
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pywebpush import webpush

from connnode.embedded import die_with_parent, free_port
from connnode.encoding import b64url_decode, b64url_encode
from tests.conftest import TEST_CRYPTO_KEY

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT = 30.0


# Ports this test process has handed out. A free port is only free until
# someone binds it, and nodes bind theirs seconds after they are chosen, so
# one process must never hand out the same port twice.
_HANDED_OUT = set()


def free_port_block(count=1):
    """``count`` consecutive ports, free now and never handed out before."""
    for _ in range(200):
        base = free_port()
        block = range(base, base + count)
        if base + count >= 65535 or _HANDED_OUT.intersection(block):
            continue
        sockets = []
        try:
            for port in block:
                sock = socket.socket()
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(("127.0.0.1", port))
                sockets.append(sock)
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
        _HANDED_OUT.update(block)
        return base
    raise RuntimeError("no block of free ports")


def pick_port():
    """One free port, never handed out before by this process."""
    return free_port_block(1)


def _stat_fields(pid):
    """The fields of /proc/<pid>/stat after the command name, or None."""
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def alive(pid):
    """Whether ``pid`` runs (a zombie is gone for our purposes)."""
    fields = _stat_fields(pid)
    return fields is not None and fields[0] != "Z"


def child_pids(pid):
    """The live direct children of ``pid`` (from /proc), sorted."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(entry.name)
            if fields is not None and int(fields[1]) == pid and fields[0] != "Z":
                found.append(int(entry.name))
    return sorted(found)


def descendant_pids(pid):
    """Every live process below ``pid``."""
    found, queue = [], [pid]
    while queue:
        for child in child_pids(queue.pop()):
            found.append(child)
            queue.append(child)
    return found


def wait_http(url, timeout=START_TIMEOUT, process=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before {url} answered")
        try:
            if requests.get(url, timeout=1).status_code < 500:
                return
        except requests.RequestException:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer within {timeout} s")


class GunicornNode:
    """A gunicorn node as a child process in its own session, configured by
    CONNNODE_* variables on its own tables."""

    config = None  # path of the gunicorn config file

    def __init__(self, dynalite, tables, log_path=None, **options):
        self.env = dict(os.environ)
        self.env.update({
            "CONNNODE_AWS_DDB_ENDPOINT": dynalite.endpoint,
            "CONNNODE_ROUTER_TABLENAME": tables["router"],
            "CONNNODE_MESSAGE_TABLENAME": tables["message"],
            "CONNNODE_CRYPTO_KEY": TEST_CRYPTO_KEY,
            "CONNNODE_HOSTNAME": "127.0.0.1",
            "CONNNODE_STATSD_HOST": "",
        })
        for name, value in options.items():
            self.env[f"CONNNODE_{name.upper()}"] = str(value)
        self.log_path = log_path
        self.process = None

    def ready_urls(self):
        raise NotImplementedError

    def start(self):
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "gunicorn", "-c", str(self.config)],
                cwd=ROOT, env=self.env, stdout=log, stderr=log, start_new_session=True,
                preexec_fn=die_with_parent)
        finally:
            if self.log_path:
                log.close()
        for url in self.ready_urls():
            wait_http(url, process=self.process)
        return self

    def stop(self, sig=signal.SIGTERM, timeout=30.0):
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.process = None

    def kill(self):
        """SIGKILL the whole process group: a node that vanished."""
        if self.process is not None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
            self.process = None


class ConnectionNode(GunicornNode):
    """A connection node (``gunicorn.conf.py``); worker k routes on router_port + k."""

    config = ROOT / "gunicorn.conf.py"

    def __init__(self, dynalite, tables, workers=1, log_path=None, **options):
        self.workers = workers
        self.port = pick_port()
        self.router_port = free_port_block(2 * workers)
        options.setdefault("endpoint_url", "http://127.0.0.1:8082")
        super().__init__(dynalite, tables, log_path, port=self.port,
                         router_port=self.router_port, **options)
        self.env["WEB_CONCURRENCY"] = str(workers)

    @property
    def ws_url(self):
        return f"ws://127.0.0.1:{self.port}/"

    def router_url(self, slot=0):
        return f"http://127.0.0.1:{self.router_port + slot}"

    def ready_urls(self):
        yield f"http://127.0.0.1:{self.port}/__lbheartbeat__"
        for slot in range(self.workers):
            yield f"{self.router_url(slot)}/__lbheartbeat__"


class EndpointNode(GunicornNode):
    """An endpoint node (``conf/endpoint.gunicorn.conf.py``). Start connection
    nodes with ``endpoint_url=node.url`` so their pushEndpoints point here."""

    config = ROOT / "conf" / "endpoint.gunicorn.conf.py"

    def __init__(self, dynalite, tables, workers=1, log_path=None, **options):
        self.port = pick_port()
        self.url = f"http://127.0.0.1:{self.port}"
        super().__init__(dynalite, tables, log_path, endpoint_port=self.port,
                         endpoint_url=self.url, **options)
        self.env.pop("WEB_CONCURRENCY", None)
        self.env["WEB_CONCURRENCY_ENDPOINT"] = str(workers)

    def ready_urls(self):
        yield f"{self.url}/__lbheartbeat__"


class PushClient:
    """A WebSocket client acting as the browser."""

    def __init__(self, url, timeout=5.0, subprotocols=("push-notification",), **options):
        """``options`` go to ``websocket.create_connection`` (e.g. ``host``)."""
        self.ws = websocket.create_connection(url, timeout=timeout,
                                              subprotocols=list(subprotocols or []) or None,
                                              **options)
        self.uaid = None

    def send(self, message):
        self.ws.send(message if isinstance(message, str) else json.dumps(message))

    def recv(self, timeout=5.0):
        """The next text frame as JSON; raises on close or timeout."""
        self.ws.settimeout(timeout)
        opcode, data = self.ws.recv_data(control_frame=False)
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            raise ConnectionError(f"closed with {close_code(data)}")
        return json.loads(data)

    def expect_close(self, timeout=5.0):
        """Read until the server's close frame; its status code (None if the
        connection dropped without one)."""
        self.ws.settimeout(timeout)
        try:
            while True:
                frame = self.ws.recv_frame()
                if frame.opcode == websocket.ABNF.OPCODE_CLOSE:
                    return close_code(frame.data)
        except websocket.WebSocketConnectionClosedException:
            return None
        except ConnectionResetError:
            return None

    def hello(self, uaid=None, **extra):
        message = {"messageType": "hello", "use_webpush": True, "broadcasts": {}, **extra}
        if uaid:
            message["uaid"] = uaid
        self.send(message)
        reply = self.recv()
        assert reply["messageType"] == "hello", reply
        self.uaid = reply.get("uaid")
        return reply

    def register(self, chid=None, key=None):
        chid = chid or str(uuid.uuid4())
        message = {"messageType": "register", "channelID": chid}
        if key is not None:
            message["key"] = key
        self.send(message)
        reply = self.recv()
        assert reply["messageType"] == "register", reply
        return reply

    def ack(self, *notifications):
        self.send({"messageType": "ack", "updates": [
            {"channelID": n["channelID"], "version": n["version"], "code": 100}
            for n in notifications]})

    def close(self):
        try:
            self.ws.close(timeout=1)
        except Exception:  # noqa: BLE001 - the socket may already be gone
            pass


def close_code(data):
    if len(data) >= 2:
        return struct.unpack("!H", data[:2])[0]
    return None


def push_body(crypto, uaid, chid, ttl=60, topic=None, data="aGVsbG8", timestamp=None):
    """A PUT /push body as the endpoint builds it (PROTOCOL.md 3.2)."""
    skt = None if topic else int(time.time() * 1_000_000)
    body = {"channelID": chid, "version": crypto.message_id(uaid, chid, topic=topic,
                                                             sortkey_timestamp=skt),
            "ttl": ttl, "topic": topic, "timestamp": timestamp or int(time.time()),
            "sortkey_timestamp": skt}
    if data:
        body["data"] = data
        body["headers"] = {"encoding": "aes128gcm"}
    return body


# -- application server, browser crypto and StatsD stand-ins ----------------------------

class StatsdSink:
    """A UDP socket playing the StatsD server: the metric lines received."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]

    def drain(self, timeout=0.0):
        """Lines received so far (waiting up to ``timeout`` for the first)."""
        lines = []
        self.sock.settimeout(timeout or 0.001)
        while True:
            try:
                data = self.sock.recv(65536)
            except (socket.timeout, BlockingIOError):
                return lines
            lines.extend(data.decode().split("\n"))
            self.sock.settimeout(0.001)

    def wait_for(self, *wanted, timeout=2.0):
        """Collect lines until every wanted prefix was seen; all lines read."""
        seen = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            seen += self.drain(0.05)
            if all(any(line.startswith(name) for line in seen) for name in wanted):
                return seen
        raise AssertionError(f"metrics {wanted} not seen; got {seen}")

    def close(self):
        self.sock.close()


def raw_public(private_key):
    """The 65-byte uncompressed point of a P-256 private key's public key."""
    return private_key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)


def browser_keys():
    """A subscription's P-256 key pair and auth secret, as a browser makes them."""
    private_key = ec.generate_private_key(ec.SECP256R1())
    auth = os.urandom(16)
    return private_key, auth, {"p256dh": b64url_encode(raw_public(private_key)),
                               "auth": b64url_encode(auth)}


def send_webpush(audience, endpoint, keys, vapid, plaintext, sub="mailto:test@example.com"):
    """pywebpush as an application server: aes128gcm, VAPID-signed for ``audience``."""
    return webpush(subscription_info={"endpoint": endpoint, "keys": keys}, data=plaintext,
                   vapid_private_key=vapid, vapid_claims={"sub": sub, "aud": audience},
                   content_encoding="aes128gcm", ttl=60, timeout=10)


def decrypt(frame, private_key, auth):
    assert frame["headers"]["encoding"] == "aes128gcm"
    return http_ece.decrypt(b64url_decode(frame["data"]), private_key=private_key,
                            auth_secret=auth, version="aes128gcm")


def application_server_key(vapid):
    """The applicationServerKey a page passes to subscribe(): binds a v2 endpoint."""
    return b64url_encode(vapid.public_key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint))
