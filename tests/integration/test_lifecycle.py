"""Message lifecycle events and ``connnode diagnose`` against real nodes
(issue 13 part 3): dynalite, a gunicorn endpoint node and connection node,
a WebSocket client as the browser. Events are read back from the nodes' log
files; the CLI runs as a subprocess with the nodes' CONNNODE_* settings.

The connection nodes run without any tracking setting: the decision is the
endpoint's, and travels with the message."""
import subprocess
import sys
import time
import uuid

import pytest
import requests
import simplejson as json
from cryptography.fernet import Fernet

from connnode.crypto import TokenCrypto
from connnode.encoding import b64url_encode
from tests.harness import ROOT, PushClient, raw_public
from tests.integration.test_endpoint import (Service, claims_for, message_id, post,
                                             vapid_header)

pytestmark = pytest.mark.timeout(120)

EVENT_WAIT = 10.0


def lifecycle_events(*paths):
    """Every lifecycle line's fields in the files, in file order."""
    found = []
    for path in paths:
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            if '"connnode.lifecycle"' in line:
                entry = json.loads(line)
                found.append(dict(entry["fields"], logger=entry["logger"]))
    return found


def log_paths(svc):
    return [svc.ep.log_path] + [node.log_path for node in svc.cns]


def wait_events(svc, wanted, timeout=EVENT_WAIT):
    """Poll the logs until every (stage, message_id) in ``wanted`` is there."""
    deadline = time.monotonic() + timeout
    while True:
        events = lifecycle_events(*log_paths(svc))
        seen = {(e["stage"], e["message_id"]) for e in events}
        if set(wanted) <= seen or time.monotonic() > deadline:
            missing = set(wanted) - seen
            assert not missing, f"events {sorted(missing)} not logged; got {events}"
            return events


def one(events, stage, mid):
    (event,) = [e for e in events if e["stage"] == stage and e["message_id"] == mid]
    return event


@pytest.fixture(scope="module")
def tracking_key():
    from cryptography.hazmat.primitives.asymmetric import ec
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def svc(dynalite, tmp_path_factory, tracking_key):
    service = Service(dynalite, tmp_path_factory.mktemp("lifecycle"), ep_options={
        "tracking_keys": b64url_encode(raw_public(tracking_key))})
    service.start()
    yield service
    service.stop()


@pytest.fixture
def clients():
    made = []
    yield made
    for client in made:
        client.close()


def connect(svc, clients, uaid=None, node=None):
    client = PushClient((node or svc.cn).ws_url)
    clients.append(client)
    client.hello(uaid)
    return client


def subscribe(svc, clients):
    client = connect(svc, clients)
    reply = client.register()
    assert reply["status"] == 200
    return client, reply["channelID"], reply["pushEndpoint"]


def signed(svc, key, endpoint, ttl="60", **headers):
    return post(endpoint, b"\x00" * 40, ttl=ttl,
                Authorization=vapid_header(key, claims_for(svc)), **headers)


# -- lifecycle events -----------------------------------------------------------------

def test_direct_stages_for_a_tracked_key(svc, clients, tracking_key):
    client, chid, endpoint = subscribe(svc, clients)
    first = signed(svc, tracking_key, endpoint)
    second = signed(svc, tracking_key, endpoint)
    assert first.status_code == second.status_code == 201
    first_id, second_id = message_id(first, svc), message_id(second, svc)
    frames = [client.recv(), client.recv()]
    assert [f["version"] for f in frames] == [first_id, second_id]
    client.ack(frames[0])
    client.send({"messageType": "nack", "version": second_id, "code": 302})
    events = wait_events(svc, [("accepted", first_id), ("delivered", first_id),
                               ("acked", first_id), ("nacked", second_id)])
    accepted = one(events, "accepted", first_id)
    assert accepted["logger"] == "connnode.lifecycle"
    assert accepted["destination"] == "direct" and accepted["uaid_hash"] == client.uaid
    assert accepted["chid"] == chid and accepted["ttl"] == 60
    assert one(events, "delivered", first_id)["via"] == "direct"
    assert one(events, "acked", first_id)["code"] == 100
    assert one(events, "nacked", second_id)["code"] == 302


def test_untracked_messages_log_nothing(svc, clients, tracking_key):
    from cryptography.hazmat.primitives.asymmetric import ec
    client, _, endpoint = subscribe(svc, clients)
    unsigned = post(endpoint, b"\x00" * 40)
    other = signed(svc, ec.generate_private_key(ec.SECP256R1()), endpoint)
    ids = {message_id(unsigned, svc), message_id(other, svc)}
    for frame in (client.recv(), client.recv()):
        client.ack(frame)
    marker = signed(svc, tracking_key, endpoint)  # logged after the two, by the same nodes
    client.ack(client.recv())
    wait_events(svc, [("acked", message_id(marker, svc))])
    assert not ids & {e["message_id"] for e in lifecycle_events(*log_paths(svc))}


def test_stored_stages_dropped_deleted_expired(svc, clients, tracking_key):
    client, chid, endpoint = subscribe(svc, clients)
    uaid = client.uaid
    client.close()
    kept = signed(svc, tracking_key, endpoint)
    dropped = signed(svc, tracking_key, endpoint, ttl="0")
    short = signed(svc, tracking_key, endpoint, ttl="1")
    deleted = signed(svc, tracking_key, endpoint, Topic="gone")
    assert {r.status_code for r in (kept, dropped, short, deleted)} == {201}
    kept_id, dropped_id, short_id, deleted_id = (message_id(r, svc)
                                                for r in (kept, dropped, short, deleted))
    assert requests.delete(deleted.headers["Location"], timeout=10).status_code == 204
    time.sleep(2.1)  # the TTL-1 message expires
    again = connect(svc, clients, uaid)
    frame = again.recv()
    assert frame["version"] == kept_id
    again.ack(frame)
    events = wait_events(svc, [("accepted", kept_id), ("dropped", dropped_id),
                               ("deleted", deleted_id), ("expired", short_id),
                               ("delivered", kept_id), ("acked", kept_id)])
    assert one(events, "accepted", kept_id)["destination"] == "stored"
    assert one(events, "dropped", dropped_id)["chid"] == chid
    assert one(events, "deleted", deleted_id)["found"] is True
    assert one(events, "delivered", kept_id)["via"] == "stored"
    assert not [e for e in events if e["message_id"] == dropped_id and e["stage"] != "dropped"]


def test_saved_at_close_with_track_all(dynalite, tmp_path, clients):
    """Without durable direct delivery an unacked direct message is saved at
    close; track_all tracks unsigned messages too."""
    service = Service(dynalite, tmp_path, ep_options={"track_all": "true",
                                                      "durable_direct": "false"})
    service.start()
    try:
        client, _, endpoint = subscribe(service, clients)
        response = post(endpoint, b"\x00" * 40)
        mid = message_id(response, service)
        assert client.recv()["version"] == mid
        client.close()
        again = connect(service, clients, client.uaid)
        frame = again.recv()
        assert frame["version"] == mid
        again.ack(frame)
        events = wait_events(service, [("accepted", mid), ("delivered", mid), ("saved", mid),
                                       ("acked", mid)])
        assert [e["stage"] for e in events if e["message_id"] == mid] == \
            ["accepted", "delivered", "saved", "delivered", "acked"]
        assert [e["via"] for e in events if e["stage"] == "delivered"] == ["direct", "stored"]
    finally:
        service.stop()


# -- connnode diagnose -------------------------------------------------------------------

def diagnose(svc, *args, timeout=30):
    env = dict(svc.cn.env)
    env.pop("CONNNODE_CONFIG", None)
    return subprocess.run([sys.executable, "-m", "connnode.cli", "diagnose", *args], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=timeout)


def fields(output):
    """The report's ``name: value`` lines as a dict (first occurrence)."""
    found = {}
    for line in output.splitlines():
        name, sep, value = line.partition(":")
        if sep and not line.startswith(" "):
            found.setdefault(name.strip(), value.strip())
    return found


def test_diagnose_connected_user(svc, clients):
    client, chid, endpoint = subscribe(svc, clients)
    result = diagnose(svc, endpoint)
    assert result.returncode == 0, result.stderr
    report = fields(result.stdout)
    assert report["uaid"] == client.uaid and report["chid"] == chid
    assert report["token"] == "endpoint v1, not key-bound (any sender)"
    assert f"node_id={svc.cn.router_url()}" in report["router record"]
    assert "record_version=1" in report["router record"]
    assert "current_month=message_" in report["router record"]
    assert report["channel"].startswith("registered")
    assert report["stored"].startswith("0 message(s)")
    assert report["holder"].startswith(f"held by {svc.cn.router_url()}")
    assert "state ready" in report["holder"]


def test_diagnose_offline_user_with_stored_messages(svc, clients, tracking_key):
    client, chid, endpoint = subscribe(svc, clients)
    client.close()
    responses = [signed(svc, tracking_key, endpoint), post(endpoint, b"\x00", ttl="600",
                                                           Topic="news")]
    ids = [message_id(response, svc) for response in responses]
    result = diagnose(svc, endpoint)
    assert result.returncode == 0, result.stderr
    report = fields(result.stdout)
    assert report["stored"].startswith("2 message(s)")
    assert report["holder"].startswith("none (offline")
    assert "node_id=-" in report["router record"]
    listed = [line.strip() for line in result.stdout.splitlines() if line.startswith("  - ")]
    assert len(listed) == 2
    for mid in ids:
        (line,) = [entry for entry in listed if mid in entry]
        assert "ttl left" in line
    assert any("topic=news" in line for line in listed)
    assert any(line.endswith("tracked") for line in listed)
    # a message id (its Location URL) finds the same subscription and the message
    by_id = diagnose(svc, responses[0].headers["Location"])
    assert by_id.returncode == 0, by_id.stderr
    assert fields(by_id.stdout)["this message"].startswith("stored")
    assert fields(by_id.stdout)["chid"] == chid


def test_diagnose_unregistered_channel(svc, clients):
    client, chid, endpoint = subscribe(svc, clients)
    client.send({"messageType": "unregister", "channelID": chid})
    assert client.recv()["messageType"] == "unregister"
    deadline = time.monotonic() + 5
    while True:
        result = diagnose(svc, endpoint)
        assert result.returncode == 0, result.stderr
        if "NOT registered" in fields(result.stdout)["channel"] or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert fields(result.stdout)["channel"].startswith("NOT registered")
    assert "410/106" in fields(result.stdout)["channel"]


def test_diagnose_tampered_url_and_foreign_key(svc, clients):
    _, _, endpoint = subscribe(svc, clients)
    base, token = endpoint.rsplit("/", 1)
    middle = len(token) // 2
    tampered = f"{base}/{token[:middle]}{'A' if token[middle] != 'A' else 'B'}{token[middle + 1:]}"
    foreign = TokenCrypto([Fernet.generate_key().decode()]).endpoint_token(
        uuid.uuid4().hex, str(uuid.uuid4()))
    for url, reason in ((tampered, "wrong key or tampered token"),
                        (f"{base}/{foreign}", "wrong key or tampered token"),
                        (f"{base}/{token[:20]}", "bad token"),
                        ("http://example.com/nothing", "bad input")):
        result = diagnose(svc, url)
        assert result.returncode == 2, (url, result.stdout, result.stderr)
        assert result.stdout == ""
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
        assert lines[0].startswith(f"connnode diagnose: {reason}"), lines[0]


def test_diagnose_follow_prints_the_subscriptions_events(svc, clients, tracking_key):
    client, chid, endpoint = subscribe(svc, clients)
    response = signed(svc, tracking_key, endpoint)
    mid = message_id(response, svc)
    client.ack(client.recv())
    wait_events(svc, [("acked", mid)])
    env_paths = [str(path) for path in log_paths(svc)]
    result = diagnose(svc, endpoint, "--follow", "--timeout", "0.5", "--logs", *env_paths)
    assert result.returncode == 0, result.stderr
    followed = result.stdout.split("(Ctrl-C ends)", 1)[1].strip().splitlines()
    stages = [line.split()[1] for line in followed if mid in line]
    assert stages == ["accepted", "delivered", "acked"] or \
        sorted(stages) == ["accepted", "acked", "delivered"]
    assert all(chid not in line for line in followed)  # the chid is the filter, not shown
    assert all(mid in line for line in followed)  # only this subscription's events


def test_follow_sees_new_events_while_running(svc, clients, tracking_key):
    client, _, endpoint = subscribe(svc, clients)
    env = dict(svc.cn.env)
    process = subprocess.Popen(
        [sys.executable, "-m", "connnode.cli", "diagnose", endpoint, "--follow", "--timeout",
         "8", "--logs", *map(str, log_paths(svc))],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 10
        line = ""
        while "Ctrl-C" not in line and time.monotonic() < deadline:
            line = process.stdout.readline()
        response = signed(svc, tracking_key, endpoint)
        mid = message_id(response, svc)
        client.ack(client.recv())
        seen = []
        while time.monotonic() < deadline and len(seen) < 3:
            line = process.stdout.readline()
            if not line:
                break
            if mid in line:
                seen.append(line.split()[1])
        assert sorted(seen) == ["accepted", "acked", "delivered"]
    finally:
        process.terminate()
        process.wait(10)
