"""Megaphone broadcasts on a real gunicorn connection node (issue 15): the
node polls a tiny Megaphone stand-in (a pywsgi app in this process) every
second; real WebSocket clients subscribe, see changes, and keep the last
versions when the service goes away."""
import json
import uuid

import gevent
import gevent.event
import pytest
from gevent import pywsgi

from connnode.db.storage import Storage
from tests.conftest import make_settings
from tests.harness import ConnectionNode, PushClient, StatsdSink

pytestmark = pytest.mark.timeout(120)

MONITOR = "remote-settings/monitor_changes"
TOKEN = "reader-token"
WAIT = 10.0  # a poll interval (1 s) plus slack for a loaded machine


class Megaphone:
    """GET /v1/broadcasts -> {"code": 200, "broadcasts": {...}}; ``polled``
    is set at each authorised poll."""

    def __init__(self, versions):
        self.versions = dict(versions)
        self.polled = gevent.event.Event()
        self.auth = []
        self.server = pywsgi.WSGIServer(("127.0.0.1", 0), self.app, log=None, error_log=None)
        self.server.start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/v1/broadcasts"

    def app(self, environ, start_response):
        self.auth.append(environ.get("HTTP_AUTHORIZATION"))
        if environ.get("HTTP_AUTHORIZATION") != f"Bearer {TOKEN}":
            start_response("401 Unauthorized", [("Content-Type", "application/json")])
            return [b'{"code": 401}']
        body = json.dumps({"code": 200, "broadcasts": self.versions}).encode()
        start_response("200 OK", [("Content-Type", "application/json")])
        self.polled.set()
        return [body]

    def wait_poll(self):
        """Wait (bounded) for the next poll after now."""
        self.polled.clear()
        assert self.polled.wait(WAIT), "the node did not poll"

    def stop(self):
        self.server.stop(timeout=1)


@pytest.fixture
def setup(dynalite, tmp_path):
    suffix = uuid.uuid4().hex[:8]
    tables = {"router": f"router_{suffix}", "message": f"message_{suffix}"}
    Storage(make_settings(dynalite, router_tablename=tables["router"],
                          message_tablename=tables["message"])).create_tables()
    megaphone = Megaphone({MONITOR: '"1"'})
    statsd = StatsdSink()
    node = ConnectionNode(dynalite, tables, log_path=tmp_path / "cn.log", hello_timeout=5,
                          megaphone_api_url=megaphone.url, megaphone_api_token=TOKEN,
                          megaphone_poll_interval=1, statsd_host="127.0.0.1",
                          statsd_port=statsd.port).start()
    clients = []

    def client():
        made = PushClient(node.ws_url)
        clients.append(made)
        return made
    megaphone.wait_poll()  # the node knows the versions
    yield megaphone, node, client, statsd
    for made in clients:
        made.close()
    node.stop()
    megaphone.stop()
    statsd.close()


def no_frame(client, timeout=0.5):
    """True if nothing arrives within ``timeout`` (the bounded check that a
    frame was not sent)."""
    try:
        frame = client.recv(timeout=timeout)
    except Exception:  # noqa: BLE001 - websocket's timeout
        return True
    raise AssertionError(f"unexpected frame {frame}")


def test_hello_delta_subscribe_and_a_change_reaches_subscribers_once(setup):
    megaphone, _node, client, _statsd = setup
    first, second, unsubscribed = client(), client(), client()
    reply = first.hello(broadcasts={MONITOR: '"0"', "x/y": "1"})
    assert reply["broadcasts"] == {MONITOR: '"1"', "errors": {"x/y": "Broadcast not found"}}
    assert second.hello(broadcasts={MONITOR: '"1"'})["broadcasts"] == {}
    assert unsubscribed.hello()["broadcasts"] == {}
    unsubscribed.send({"messageType": "broadcast_subscribe", "broadcasts": {"x/y": "1"}})
    assert unsubscribed.recv() == {"messageType": "broadcast",
                                   "broadcasts": {"errors": {"x/y": "Broadcast not found"}}}
    assert all(auth == f"Bearer {TOKEN}" for auth in megaphone.auth)

    megaphone.versions[MONITOR] = '"2"'
    change = {"messageType": "broadcast", "broadcasts": {MONITOR: '"2"'}}
    assert first.recv(timeout=WAIT) == change
    assert second.recv(timeout=WAIT) == change
    megaphone.wait_poll()
    megaphone.wait_poll()  # two more polls with the same version: nothing more
    assert no_frame(first) and no_frame(second) and no_frame(unsubscribed)

    # a subscribe after the change, with the old version, gets the delta
    unsubscribed.send({"messageType": "broadcast_subscribe", "broadcasts": {MONITOR: '"1"'}})
    assert unsubscribed.recv() == change


def test_a_failed_poll_keeps_the_last_versions(setup):
    megaphone, _node, client, statsd = setup
    megaphone.versions[MONITOR] = '"7"'
    megaphone.wait_poll()
    megaphone.wait_poll()  # the second poll started after the first one was applied
    megaphone.stop()
    lines = statsd.wait_for("megaphone.poll.error", timeout=WAIT)
    assert any(line.startswith("megaphone.poll.error;reason=connect:") for line in lines), lines
    fresh = client()
    assert fresh.hello(broadcasts={MONITOR: '"1"'})["broadcasts"] == {MONITOR: '"7"'}


def test_every_worker_of_every_node_sees_a_change(dynalite, tmp_path):
    """Two nodes, one of them with two workers, poll the same service: a
    change reaches clients on all three workers within a poll interval."""
    suffix = uuid.uuid4().hex[:8]
    tables = {"router": f"router_{suffix}", "message": f"message_{suffix}"}
    storage = Storage(make_settings(dynalite, router_tablename=tables["router"],
                                    message_tablename=tables["message"]))
    storage.create_tables()
    megaphone = Megaphone({MONITOR: '"1"'})
    options = {"hello_timeout": 5, "megaphone_api_url": megaphone.url,
               "megaphone_api_token": TOKEN, "megaphone_poll_interval": 1}
    nodes = [ConnectionNode(dynalite, tables, workers=2, log_path=tmp_path / "cn0.log",
                            **options).start(),
             ConnectionNode(dynalite, tables, log_path=tmp_path / "cn1.log", **options).start()]
    clients = {}  # router URL of the worker holding it -> client
    try:
        megaphone.wait_poll()
        wanted = {nodes[0].router_url(0), nodes[0].router_url(1), nodes[1].router_url(0)}
        for attempt in range(60):  # gunicorn decides which worker accepts
            node = nodes[attempt % 2]
            made = PushClient(node.ws_url)
            made.hello(broadcasts={MONITOR: '"1"'})
            holder = storage.router.get_uaid(made.uaid)["node_id"]
            if holder in wanted and holder not in clients:
                clients[holder] = made
            else:
                made.close()
            if set(clients) == wanted:
                break
        assert set(clients) == wanted, f"clients on {sorted(clients)} only"
        megaphone.versions[MONITOR] = '"2"'
        change = {"messageType": "broadcast", "broadcasts": {MONITOR: '"2"'}}
        for holder, made in clients.items():
            assert made.recv(timeout=WAIT) == change, holder
    finally:
        for made in clients.values():
            made.close()
        for node in nodes:
            node.stop()
        megaphone.stop()
