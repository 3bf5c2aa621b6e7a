"""What operators rely on: StatsD lines, JSON logs, the backdoor, graceful
shutdown and /health, against real processes."""
import re
import signal
import socket
import subprocess
import time
import uuid

import pytest
import requests
import simplejson as json
import websocket

from connnode.embedded import Dynalite
from tests.harness import PushClient, StatsdSink, pick_port
from tests.integration.test_connection_node import Cluster

pytestmark = pytest.mark.timeout(120)


def test_statsd_lines_of_a_scripted_session(dynalite, tmp_path):
    statsd = StatsdSink()
    cluster = Cluster(dynalite, tmp_path)
    node = cluster.node(statsd_host="127.0.0.1", statsd_port=statsd.port, statsd_prefix="cn")
    try:
        client = PushClient(node.ws_url)
        uaid = client.hello()["uaid"]
        chid = client.register()["channelID"]
        cluster.push(node, uaid, chid)
        cluster.push(node, uaid, chid, topic="news")
        plain, topical = client.recv(), client.recv()
        client.ack(plain)
        client.send({"messageType": "nack", "version": topical["version"], "code": 301})
        client.send({"messageType": "unregister", "channelID": chid})
        client.recv()
        client.close()
        lines = [line for line in statsd.wait_for("cn.ua.connection.lifespan", timeout=10) if line]
    finally:
        cluster.stop()
        statsd.close()
    tags = "host=127.0.0.1;ua_browser_family=Other;ua_os_family=Other"
    counters = sorted(line for line in lines if not line.startswith("cn.ua.connection.lifespan"))
    assert counters == sorted([
        f"cn.ua.command.hello;{tags}:1|c",
        f"cn.ua.command.register;{tags}:1|c",
        f"cn.ua.notification.topic;{tags}:1|c",
        f"cn.ua.command.ack;{tags}:1|c",
        f"cn.ua.command.nack;code=301;{tags}:1|c",
        f"cn.ua.command.unregister;{tags}:1|c",
    ])
    (lifespan,) = [line for line in lines if line.startswith("cn.ua.connection.lifespan")]
    assert re.fullmatch(rf"cn\.ua\.connection\.lifespan;{re.escape(tags)}:\d+(\.\d+)?\|ms", lifespan)


def test_client_chosen_values_never_become_metric_names(dynalite, tmp_path):
    """A Host header that is not this node's and a nack code outside 301-303
    count under one fixed tag each: no client can mint metric names."""
    statsd = StatsdSink()
    cluster = Cluster(dynalite, tmp_path)
    node = cluster.node(statsd_host="127.0.0.1", statsd_port=statsd.port, statsd_prefix="cn")
    try:
        for n, code in enumerate((123456, 302, -1, 2 ** 40)):
            client = PushClient(node.ws_url, host=f"minted-{n}.attacker.example:{1000 + n}")
            client.hello()
            client.send({"messageType": "nack", "version": "v", "code": code})
            client.send({"messageType": "unregister", "channelID": str(uuid.uuid4())})
            client.recv()  # the unregister reply: the nack before it was counted
            client.close()
        lines = statsd.wait_for("cn.ua.command.nack", timeout=10)
        lines += statsd.drain(0.5)
    finally:
        cluster.stop()
        statsd.close()
    nacks = sorted(line.split(":")[0] for line in lines if line.startswith("cn.ua.command.nack"))
    other = "host=other;ua_browser_family=Other;ua_os_family=Other"
    assert nacks == [f"cn.ua.command.nack;code=0;{other}"] * 3 + [f"cn.ua.command.nack;code=302;{other}"]
    assert not [line for line in lines if "attacker" in line or "123456" in line]


def test_summary_log_line_is_json_without_clear_uaid(dynalite, tmp_path):
    cluster = Cluster(dynalite, tmp_path)
    node = cluster.node(key_hash="operator-secret")
    try:
        client = PushClient(node.ws_url)
        uaid = client.hello()["uaid"]
        chid = client.register()["channelID"]
        cluster.push(node, uaid, chid)
        client.ack(client.recv())
        client.send({"messageType": "nack", "version": "x", "code": 302})
        client.send("{}")
        client.recv()
        client.close()
        log_path = node.log_path
        deadline = time.monotonic() + 10
        summaries = []
        while not summaries:
            assert time.monotonic() < deadline, "no summary line"
            time.sleep(0.05)
            summaries = [json.loads(line) for line in open(log_path)
                         if '"connection closed"' in line]
    finally:
        cluster.stop()
    fields = summaries[0]["fields"]
    assert fields["registers"] == 1 and fields["direct_acked"] == 1 and fields["nacks"] == 1
    assert fields["uaid_reset"] is False and fields["direct_saved"] == 0
    assert fields["ua_os_family"] == "Other" and len(fields["uaid_hash"]) == 64
    text = open(log_path).read()
    assert uaid not in text
    for line in text.splitlines():
        json.loads(line)  # every line is one JSON object


def test_backdoor_counts_clients(dynalite, tmp_path):
    cluster = Cluster(dynalite, tmp_path)
    port = pick_port()
    node = cluster.node(backdoor_port=port)
    clients = []
    try:
        for _ in range(3):
            clients.append(PushClient(node.ws_url))
            clients[-1].hello()
        with socket.create_connection(("127.0.0.1", port), timeout=5) as shell:
            shell.sendall(b"len(registry)\r\n")
            received = b""
            deadline = time.monotonic() + 5
            while not re.search(rb"(^|\n|>>> )3\r?\n", received):
                assert time.monotonic() < deadline, received
                received += shell.recv(4096)
    finally:
        for client in clients:
            client.close()
        cluster.stop()


def test_backdoor_refuses_non_loopback_host(dynalite, tmp_path):
    cluster = Cluster(dynalite, tmp_path)
    with pytest.raises(RuntimeError):
        cluster.node(backdoor_port=pick_port(), backdoor_host="0.0.0.0")
    node = cluster.nodes[-1]
    assert node.process is None or node.process.wait(10) != 0
    log = open(node.log_path).read()
    assert "refusing to start" in log
    cluster.stop()


def test_graceful_shutdown_saves_unacked_direct_messages(dynalite, tmp_path):
    cluster = Cluster(dynalite, tmp_path)
    node = cluster.node()
    users = []
    for _ in range(3):
        client = PushClient(node.ws_url)
        uaid = client.hello()["uaid"]
        chid = client.register()["channelID"]
        _, body = cluster.push(node, uaid, chid)
        assert client.recv()["version"] == body["version"]  # delivered, never acked
        users.append((client, uaid, body["version"]))
    node.process.send_signal(15)
    for client, _, _ in users:
        assert client.expect_close(timeout=10) == 1001
        client.close()
    assert node.process.wait(30) == 0
    node.process = None
    restarted = cluster.node()
    try:
        for _, uaid, version in users:
            again = PushClient(restarted.ws_url)
            assert again.hello(uaid)["uaid"] == uaid
            assert again.recv()["version"] == version
            again.close()
    finally:
        cluster.stop()


def test_hup_reload_hands_clients_to_new_workers(dynalite, tmp_path):
    cluster = Cluster(dynalite, tmp_path)
    node = cluster.node()
    try:
        client = PushClient(node.ws_url)
        uaid = client.hello()["uaid"]
        chid = client.register()["channelID"]
        _, body = cluster.push(node, uaid, chid)
        assert client.recv()["version"] == body["version"]
        node.process.send_signal(signal.SIGHUP)
        assert client.expect_close(timeout=10) == 1001
        client.close()
        deadline = time.monotonic() + 10
        while "node_id" in cluster.storage.router.get_uaid(uaid):
            assert time.monotonic() < deadline, "the old worker did not clear its node_id"
            time.sleep(0.05)
        deadline = time.monotonic() + 20
        while True:  # until the new worker takes the connection, as a browser retries
            try:
                again = PushClient(node.ws_url)
                break
            except (OSError, websocket.WebSocketBadStatusException) as exc:
                # the draining worker may still accept for up to a second: 503
                assert time.monotonic() < deadline, exc
                time.sleep(0.1)
        assert again.hello(uaid)["uaid"] == uaid
        assert again.recv()["version"] == body["version"]
        again.close()
    finally:
        cluster.stop()


def test_health_follows_dynamodb(tmp_path):
    port = pick_port()
    database = Dynalite(port, tmp_path / "ddb").start()
    cluster = Cluster(database, tmp_path)
    node = cluster.node()
    health = f"http://127.0.0.1:{node.port}/health"
    try:
        assert requests.get(health, timeout=10).status_code == 200
        database.stop()
        response = requests.get(health, timeout=10)
        assert response.status_code == 503
        assert response.json()["status"] == "NOT OK"
        assert response.json()["router"]["status"] == "NOT OK"
        database.start()
        assert requests.get(health, timeout=10).status_code == 200
        worker_pids = subprocess.run(["pgrep", "-P", str(node.process.pid)],
                                     capture_output=True, text=True).stdout.split()
        assert len(worker_pids) == 1  # the same worker answered throughout
    finally:
        cluster.stop()
        database.stop()
