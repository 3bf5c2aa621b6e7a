"""The connection node as a browser and the endpoint see it: real dynalite,
real gunicorn processes, a real WebSocket client library, PUT /push and the
storage layer to inject messages."""
import os
import select
import signal
import time
import uuid

import pytest
import requests
import websocket

from connnode.db.rotation import shift_month, table_name
from connnode.db.storage import Storage
from connnode.notification import Notification
from tests.conftest import make_settings
from tests.harness import ConnectionNode, PushClient, push_body

pytestmark = pytest.mark.timeout(120)


class Cluster:
    """Tables of their own, a storage handle on them, and started nodes."""

    def __init__(self, dynalite, tmp_path):
        self.dynalite = dynalite
        self.tmp_path = tmp_path
        suffix = uuid.uuid4().hex[:8]
        self.tables = {"router": f"router_{suffix}", "message": f"message_{suffix}"}
        self.storage = Storage(make_settings(dynalite, router_tablename=self.tables["router"],
                                             message_tablename=self.tables["message"]))
        self.storage.create_tables()
        self.nodes = []

    def node(self, workers=1, **options):
        options.setdefault("hello_timeout", 2)
        node = ConnectionNode(self.dynalite, self.tables, workers=workers,
                              log_path=self.tmp_path / f"cn{len(self.nodes)}.log", **options)
        self.nodes.append(node)
        return node.start()

    def stop(self):
        for node in self.nodes:
            node.stop()

    def push(self, node, uaid, chid, slot=0, **kwargs):
        body = push_body(self.storage.crypto, uaid, chid, **kwargs)
        response = requests.put(f"{node.router_url(slot)}/push/{uaid}", json=body, timeout=5)
        return response, body

    def store(self, uaid, chid, ttl=60, topic=None, table=None, timestamp=None):
        skt = None if topic else int(time.time() * 1_000_000)
        message = Notification(uaid, chid, self.storage.crypto.message_id(
            uaid, chid, topic=topic, sortkey_timestamp=skt), ttl,
            timestamp or int(time.time()), topic=topic, sortkey_timestamp=skt, data="c3RvcmVk",
            headers={"encoding": "aes128gcm"})
        (table or self.storage.current_table).store_message(message)
        return message


@pytest.fixture(scope="module")
def cluster(dynalite, tmp_path_factory):
    cluster = Cluster(dynalite, tmp_path_factory.mktemp("cn"))
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def cn(cluster):
    return cluster.node(msg_limit=20, close_handshake_timeout=1)


@pytest.fixture
def client(cn):
    clients = []

    def make():
        made = PushClient(cn.ws_url)
        clients.append(made)
        return made
    yield make
    for made in clients:
        made.close()


def registered(client_factory):
    client = client_factory()
    client.hello()
    chid = client.register()["channelID"]
    return client, chid


def reconnect(client_factory, uaid):
    client = client_factory()
    assert client.hello(uaid)["uaid"] == uaid
    return client


# -- public port -----------------------------------------------------------------

def test_public_status_routes_and_404s(cn):
    base = f"http://127.0.0.1:{cn.port}"
    assert requests.get(f"{base}/status").json()["status"] == "OK"
    health = requests.get(f"{base}/health").json()
    assert health["status"] == "OK" and "clients" in health
    assert requests.get(f"{base}/__lbheartbeat__").json() == {}
    assert set(requests.get(f"{base}/__version__").json()) == {"source", "version", "commit", "build"}
    uaid = uuid.uuid4().hex
    assert requests.put(f"{base}/push/{uaid}", json={}).status_code == 404
    assert requests.put(f"{base}/notif/{uaid}").status_code == 404
    assert requests.delete(f"{base}/notif/{uaid}/1").status_code == 404
    assert requests.get(f"{base}/anything").status_code == 404


def test_subprotocol_selected_only_when_offered(cn):
    offered = PushClient(cn.ws_url)
    plain = PushClient(cn.ws_url, subprotocols=None)
    try:
        assert offered.ws.getsubprotocol() == "push-notification"
        assert plain.ws.getsubprotocol() is None
        assert plain.hello()["status"] == 200
    finally:
        offered.close()
        plain.close()


# -- hello ------------------------------------------------------------------------

def test_hello_register_reconnect_keeps_uaid_and_channel(cluster, client):
    first, chid = registered(client)
    uaid = first.uaid
    first.close()
    second = reconnect(client, uaid)
    assert second.uaid == uaid
    assert cluster.storage.current_table.all_channels(uaid) == (True, {chid})


def test_unknown_well_formed_uaid_gets_new_one(client):
    unknown = uuid.uuid4().hex
    assert client().hello(unknown)["uaid"] not in (unknown, None)


# -- close codes (2.14) and error replies (2.15) -----------------------------------------

@pytest.mark.parametrize("frame", [
    "not json", "[1,2]", '"text"', '{"messageType":"register","channelID":"x"}', "{}",
])
def test_1002_before_hello(client, frame):
    made = client()
    made.send(frame)
    assert made.expect_close() == 1002


@pytest.mark.parametrize("frame", ['{"messageType":"HELLO"}', '{"messageType":7}', '{"x":1}'])
def test_1002_unknown_message_type_after_hello(client, frame):
    made = client()
    made.hello()
    made.send(frame)
    assert made.expect_close() == 1002


def test_hello_without_use_webpush_401_1002(client):
    made = client()
    made.send({"messageType": "hello"})
    reply = made.recv()
    assert (reply["status"], reply["reason"]) == (401, "Simplepush not supported")
    assert made.expect_close() == 1002


def test_duplicate_hello_401_1002(client):
    made = client()
    made.hello()
    made.send({"messageType": "hello", "use_webpush": True})
    reply = made.recv()
    assert (reply["status"], reply["reason"]) == (401, "duplicate hello")
    assert made.expect_close() == 1002


def test_binary_frame_1003(client):
    made = client()
    made.hello()
    made.ws.send_binary(b"\x00\x01")
    assert made.expect_close() == 1003


def test_oversized_frame_1009(client):
    made = client()
    made.hello()
    made.send("{" + " " * 70000 + "}")
    assert made.expect_close() == 1009


def test_hello_timer_1000(client):
    made = client()
    started = time.monotonic()
    assert made.expect_close(timeout=5) == 1000
    assert 1.5 <= time.monotonic() - started < 4


def test_client_pings_too_often_4774(client):
    made = client()
    made.hello()
    made.send("{}")
    assert made.recv() == {}
    made.send({"messageType": "ping"})
    assert made.expect_close() == 4774


def test_superseded_in_same_process_1000(client):
    first = client()
    uaid = first.hello()["uaid"]
    second = reconnect(client, uaid)
    assert first.expect_close() == 1000
    second.send("{}")
    assert second.recv() == {}


def test_delete_notif_terminates_matching_connection_1000(cluster, cn, client):
    made = client()
    uaid = made.hello()["uaid"]
    connected_at = cluster.storage.router.get_uaid(uaid)["connected_at"]
    assert requests.delete(f"{cn.router_url()}/notif/{uaid}/{connected_at + 1}").status_code == 404
    response = requests.delete(f"{cn.router_url()}/notif/{uaid}/{connected_at}")
    assert (response.status_code, response.text) == (200, "Terminated duplicate")
    assert made.expect_close() == 1000


def test_already_connected_500_1000(cluster, client):
    uaid = client().hello()["uaid"]
    record = cluster.storage.router.get_uaid(uaid)
    # a newer connection of this uaid on another node
    cluster.storage.router.register_user(dict(record, node_id="http://127.0.0.1:9",
                                              connected_at=record["connected_at"] + 10**9))
    made = client()
    made.send({"messageType": "hello", "use_webpush": True, "uaid": uaid})
    reply = made.recv()
    assert (reply["status"], reply["reason"]) == (500, "already_connected")
    assert made.expect_close() == 1000


def test_register_and_unregister_error_replies_keep_connection(client):
    made = client()
    made.hello()
    expectations = [
        ({"messageType": "register"}, (401, "Missing ChannelID")),
        ({"messageType": "register", "channelID": "bogus"}, (401, "Invalid UUID specified")),
        ({"messageType": "register", "channelID": str(uuid.uuid4()).upper()},
         (401, "Bad UUID format, use lower case, dashed format")),
        ({"messageType": "register", "channelID": str(uuid.uuid4()), "key": "AAAA"},
         (400, "Invalid key")),
        ({"messageType": "unregister"}, (401, "Missing ChannelID")),
        ({"messageType": "unregister", "channelID": "bogus"}, (401, "Invalid ChannelID")),
    ]
    for frame, (status, reason) in expectations:
        made.send(frame)
        reply = made.recv()
        assert (reply["messageType"], reply["status"], reply["reason"]) == (
            frame["messageType"], status, reason)
    made.send("{}")
    assert made.recv() == {}


def test_storage_failures_close_1011(dynalite, tmp_path):
    """A failed storage check (of a resumed user: a new one has nothing to
    check), then a hello that cannot read the router table.
    (The register 500 reply is driven through a storage double in test_session.)"""
    broken = Cluster(dynalite, tmp_path)
    node = broken.node()
    try:
        known = PushClient(node.ws_url)
        uaid = known.hello()["uaid"]
        known.close()
        broken.storage.dynamo.call("delete_table", TableName=broken.storage.rotation.current)
        checked = PushClient(node.ws_url)
        assert checked.hello(uaid)["status"] == 200
        assert checked.expect_close() == 1011
        broken.storage.dynamo.call("delete_table", TableName=broken.storage.router.name)
        made = PushClient(node.ws_url)
        made.send({"messageType": "hello", "use_webpush": True})
        reply = made.recv()
        assert (reply["status"], reply["reason"]) == (503, "error")
        assert made.expect_close() == 1011
    finally:
        broken.stop()


def test_auto_ping_timeout_drops_tcp_and_idle_timer(dynalite, tmp_path):
    cluster = Cluster(dynalite, tmp_path)
    pinging = cluster.node(auto_ping_interval=1, auto_ping_timeout=1)
    idle = cluster.node(auto_ping_interval=0, idle_timeout=1)
    try:
        silent = PushClient(pinging.ws_url)
        silent.hello()
        time.sleep(3)  # the client under test must not read: it answers no PING
        assert silent.expect_close() is None  # TCP dropped, no close frame (1006)
        answering = PushClient(pinging.ws_url)
        answering.hello()
        deadline = time.monotonic() + 3.5
        while time.monotonic() < deadline:  # recv answers PINGs with PONGs
            with pytest.raises(Exception) as waited:
                answering.recv(timeout=0.5)
            assert "timed out" in str(waited.value).lower()
        answering.send("{}")
        assert answering.recv() == {}
        idler = PushClient(idle.ws_url)
        idler.hello()
        assert idler.expect_close(timeout=4) == 1000
    finally:
        cluster.stop()


def test_close_handshake_abort_when_client_never_answers(client):
    made = client()
    made.hello()
    made.send({"messageType": "ping"})
    made.recv()
    made.send({"messageType": "ping"})
    assert made.expect_close() == 4774  # we read the close frame and do not answer
    started = time.monotonic()
    made.ws.sock.settimeout(15)
    try:
        assert made.ws.sock.recv(1) == b""
    except ConnectionResetError:
        pass
    assert time.monotonic() - started < 3  # close_handshake_timeout is 1 s


def test_shutdown_closes_clients_1001(dynalite, tmp_path):
    cluster = Cluster(dynalite, tmp_path)
    node = cluster.node()
    made = PushClient(node.ws_url)
    made.hello()
    node.process.send_signal(15)
    try:
        assert made.expect_close(timeout=10) == 1001
    finally:
        made.close()
        cluster.stop()


# -- direct delivery ----------------------------------------------------------------

def test_direct_frame_on_the_wire_before_put_returns(cluster, cn, client):
    made, chid = registered(client)
    started = time.monotonic()
    response, body = cluster.push(cn, made.uaid, chid)
    elapsed = time.monotonic() - started
    assert (response.status_code, response.text) == (200, "Client accepted for delivery")
    readable, _, _ = select.select([made.ws.sock], [], [], 0.05)
    assert readable, "the frame was not written before the 200"
    frame = made.recv(timeout=0.2)
    assert elapsed < 0.2
    assert frame == {"messageType": "notification", "channelID": chid, "version": body["version"],
                     "data": body["data"], "headers": body["headers"]}


def test_put_push_unknown_uaid_404_and_bad_body_400(cluster, cn, client):
    response, _ = cluster.push(cn, uuid.uuid4().hex, str(uuid.uuid4()))
    assert (response.status_code, response.text) == (404, "Client not connected.")
    made = client()
    uaid = made.hello()["uaid"]
    response = requests.put(f"{cn.router_url()}/push/{uaid}", data="[]", timeout=5)
    assert (response.status_code, response.text) == (400, "Invalid body")


def test_unacked_direct_message_survives_disconnect(cluster, cn, client):
    made, chid = registered(client)
    uaid = made.uaid
    _, body = cluster.push(cn, uaid, chid)
    assert made.recv()["version"] == body["version"]
    made.close()
    again = reconnect(client, uaid)
    assert again.recv()["version"] == body["version"]


def test_acked_direct_message_is_not_saved(cluster, cn, client):
    made, chid = registered(client)
    uaid = made.uaid
    cluster.push(cn, uaid, chid)
    made.ack(made.recv())
    made.close()
    again = reconnect(client, uaid)
    with pytest.raises(Exception):
        again.recv(timeout=1)


# -- stored delivery ------------------------------------------------------------------

def test_stored_delivery_in_send_order(cluster, client):
    made, chid = registered(client)
    uaid = made.uaid
    made.close()
    stored = [cluster.store(uaid, chid) for _ in range(5)]
    again = reconnect(client, uaid)
    received = [again.recv() for _ in stored]
    assert [frame["version"] for frame in received] == [m.version for m in stored]
    assert received[0]["data"] == "c3RvcmVk"


def test_notif_202_while_batch_outstanding_then_recheck_delivers(cluster, cn, client):
    made, chid = registered(client)
    uaid = made.uaid
    made.close()
    first = cluster.store(uaid, chid)
    again = reconnect(client, uaid)
    frame = again.recv()
    assert frame["version"] == first.version
    second = cluster.store(uaid, chid)
    response = requests.put(f"{cn.router_url()}/notif/{uaid}", timeout=5)
    assert (response.status_code, response.text) == (202, "Flagged for Notification check")
    again.ack(frame)
    assert again.recv(timeout=5)["version"] == second.version


def test_notif_200_on_an_idle_holder_and_the_check_delivers(cluster, cn, client):
    made, chid = registered(client)  # nothing ever stored: no batch can be outstanding
    uaid = made.uaid
    response = requests.put(f"{cn.router_url()}/notif/{uaid}", timeout=5)
    assert (response.status_code, response.text) == (200, "Notification check started")
    stored = cluster.store(uaid, chid)
    assert requests.put(f"{cn.router_url()}/notif/{uaid}", timeout=5).status_code in (200, 202)
    assert made.recv(timeout=5)["version"] == stored.version
    assert requests.put(f"{cn.router_url()}/notif/{uuid.uuid4().hex}").status_code == 404


def test_topic_replacement_and_ack_deletes_only_the_acked_one(cluster, client):
    made, chid = registered(client)
    uaid = made.uaid
    made.close()
    cluster.store(uaid, chid, topic="news")
    replaced = cluster.store(uaid, chid, topic="news")
    again = reconnect(client, uaid)
    frame = again.recv()
    assert frame["version"] == replaced.version
    newer = cluster.store(uaid, chid, topic="news")
    again.ack(frame)
    again.send("{}")
    # The ack (no reply) has been processed once the ping is answered; the
    # drain may go on after the ack and send the newer message (unacked) first.
    frames = [again.recv()]
    if frames[0] != {}:
        frames.append(again.recv())
    assert frames[-1] == {} and [f["version"] for f in frames[:-1]] in ([], [newer.version])
    _, items = cluster.storage.current_table.fetch_messages(uaid)
    assert [item.version for item in items] == [newer.version]


def test_partial_ack_redelivers_batch_full_ack_does_not(cluster, client):
    made, chid = registered(client)
    uaid = made.uaid
    made.close()
    stored = [cluster.store(uaid, chid) for _ in range(3)]
    partial = reconnect(client, uaid)
    frames = [partial.recv() for _ in stored]
    partial.ack(frames[0], frames[1])
    partial.close()
    full = reconnect(client, uaid)
    frames = [full.recv() for _ in stored]
    assert [f["version"] for f in frames] == [m.version for m in stored]
    full.ack(*frames)
    full.close()
    last = reconnect(client, uaid)
    with pytest.raises(Exception):
        last.recv(timeout=1)


def test_expired_messages_skipped(cluster, client):
    made, chid = registered(client)
    uaid = made.uaid
    made.close()
    for _ in range(12):
        cluster.store(uaid, chid, ttl=1, timestamp=int(time.time()) - 5)
    good = cluster.store(uaid, chid)
    again = reconnect(client, uaid)
    assert again.recv()["version"] == good.version
    with pytest.raises(Exception):
        again.recv(timeout=1)


def test_msg_limit_resets_user(cluster, client):
    made, chid = registered(client)
    uaid = made.uaid
    made.close()
    for _ in range(21):
        cluster.store(uaid, chid)
    again = reconnect(client, uaid)
    received = []
    while len(received) < 20:
        batch = [again.recv()]
        while len(received) + len(batch) < 20:
            try:
                batch.append(again.recv(timeout=0.5))
            except Exception:  # noqa: BLE001 - the batch ended
                break
        received += batch
        again.ack(*batch)
    assert len(received) == 20
    assert again.expect_close() == 1000
    assert client().hello(uaid)["uaid"] != uaid


def test_reset_pending_record_version_drops_user(cluster, client):
    made, _ = registered(client)
    uaid = made.uaid
    made.close()
    record = cluster.storage.router.get_uaid(uaid)
    cluster.storage.router.drop_user(uaid)
    record.pop("record_version")
    record["connected_at"] = 1
    cluster.storage.router.register_user(record)
    again = reconnect(client, uaid)
    assert again.expect_close() == 1000
    assert client().hello(uaid)["uaid"] != uaid


def test_ack_just_before_close_applied_before_reconnect(cluster, client):
    made, chid = registered(client)
    uaid = made.uaid
    made.close()
    topic = cluster.store(uaid, chid, topic="t1")
    again = reconnect(client, uaid)
    again.ack(again.recv())
    again.close()
    last = reconnect(client, uaid)
    with pytest.raises(Exception):
        last.recv(timeout=1)
    assert cluster.storage.current_table.fetch_messages(uaid)[1] == []
    assert topic.version


def test_month_change_drains_then_moves_user(cluster, client):
    last = table_name(cluster.tables["message"], *shift_month(*time.gmtime()[:2], -1))
    old_table = cluster.storage.message_table(last)
    uaid, chid = uuid.uuid4().hex, str(uuid.uuid4())
    cluster.storage.router.register_user({
        "uaid": uaid, "connected_at": 1, "router_type": "webpush", "current_month": last,
        "record_version": 1, "last_connect": 1})
    old_table.register_channel(uaid, chid)
    message = cluster.store(uaid, chid, table=old_table)
    made = reconnect(client, uaid)
    frame = made.recv()
    assert frame["version"] == message.version
    made.ack(frame)
    made.send("{}")
    assert made.recv() == {}
    deadline = time.monotonic() + 5
    while cluster.storage.router.get_uaid(uaid)["current_month"] != cluster.storage.rotation.current:
        assert time.monotonic() < deadline, "user was not moved"
        time.sleep(0.05)
    assert cluster.storage.current_table.all_channels(uaid) == (True, {chid})


# -- several workers, several nodes ----------------------------------------------------

def test_two_workers_route_by_router_port(dynalite, tmp_path):
    cluster = Cluster(dynalite, tmp_path)
    node = cluster.node(workers=2)
    clients = []
    try:
        holders = {}
        for _ in range(100):  # the kernel picks the accepting worker: keep connecting
            made = PushClient(node.ws_url)
            clients.append(made)
            made.hello()
            chid = made.register()["channelID"]
            record = cluster.storage.router.get_uaid(made.uaid)
            slot = int(record["node_id"].rsplit(":", 1)[1]) - node.router_port
            assert slot in (0, 1)
            holders.setdefault(slot, (made, chid))
            if len(holders) == 2:
                break
        assert set(holders) == {0, 1}, "connections did not spread over both workers"
        for slot, (made, chid) in holders.items():
            response, body = cluster.push(node, made.uaid, chid, slot=slot)
            assert response.status_code == 200
            assert made.recv()["version"] == body["version"]
            response, _ = cluster.push(node, made.uaid, chid, slot=1 - slot)
            assert response.status_code == 404
    finally:
        for made in clients:
            made.close()
        cluster.stop()


class PausedWorker:
    """Two workers, one of them stopped (SIGSTOP) while the first clients
    connect, so that they all land on the other one; the slots clients land on."""

    def __init__(self, cluster, node):
        self.cluster, self.node, self.clients = cluster, node, []
        pid = node.process.pid
        with open(f"/proc/{pid}/task/{pid}/children") as handle:
            self.pid = int(handle.read().split()[1])

    def connect(self):
        made = PushClient(self.node.ws_url)
        self.clients.append(made)
        made.hello()
        record = self.cluster.storage.router.get_uaid(made.uaid)
        return int(record["node_id"].rsplit(":", 1)[1]) - self.node.router_port

    def connect_while_paused(self, count):
        os.kill(self.pid, signal.SIGSTOP)
        try:
            return [self.connect() for _ in range(count)]
        finally:
            os.kill(self.pid, signal.SIGCONT)
            for slot in range(2):  # both hubs run again; the resumed one has reported
                assert requests.get(f"{self.node.router_url(slot)}/__lbheartbeat__", timeout=5).ok

    def close(self):
        os.kill(self.pid, signal.SIGCONT)
        for made in self.clients:
            made.close()


def test_a_worker_at_max_connections_leaves_new_clients_to_its_sibling(dynalite, tmp_path):
    """A worker holding max_connections WebSockets stops accepting while its
    sibling has room (loadshare.py): the sibling gets every new client instead
    of the full worker answering 503 to its share. Once both are full, 503."""
    cluster = Cluster(dynalite, tmp_path)
    workers = PausedWorker(cluster, cluster.node(workers=2, max_connections=10))
    try:
        first = set(workers.connect_while_paused(10))  # all on the running worker
        then = {workers.connect() for _ in range(10)}  # without the gate, about half are 503s
        assert len(first) == len(then) == 1 and first != then
        with pytest.raises(websocket.WebSocketBadStatusException) as refused:
            PushClient(workers.node.ws_url)
        assert refused.value.status_code == 503
    finally:
        workers.close()
        cluster.stop()


def test_two_nodes_hand_off(dynalite, tmp_path):
    cluster = Cluster(dynalite, tmp_path)
    node1, node2 = cluster.node(), cluster.node()
    try:
        first = PushClient(node1.ws_url)
        uaid = first.hello()["uaid"]
        chid = first.register()["channelID"]
        stale = cluster.storage.router.get_uaid(uaid)
        assert stale["node_id"] == node1.router_url()
        second = PushClient(node2.ws_url)
        assert second.hello(uaid)["uaid"] == uaid
        assert first.expect_close() == 1000  # node 2 sent DELETE /notif to node 1
        # the endpoint still believes node 1 holds the user
        response, body = cluster.push(node1, uaid, chid)
        assert response.status_code == 404
        assert cluster.storage.router.clear_node(stale) is False  # node 2's record is newer
        message = Notification.from_push_body(uaid, body)
        cluster.storage.current_table.store_message(message)
        current = cluster.storage.router.get_uaid(uaid)
        assert current["node_id"] == node2.router_url()
        assert requests.put(f"{current['node_id']}/notif/{uaid}", timeout=5).status_code == 200
        assert second.recv()["version"] == body["version"]
        second.close()
        first.close()
    finally:
        cluster.stop()
