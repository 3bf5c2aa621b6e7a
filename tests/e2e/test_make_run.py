"""`make run` as an operator runs it: supervisord with dynalite, table
creation, the connection node and the endpoint node; one browser, one
pywebpush sender; then SIGTERM, and nothing of the service may be left."""
import os
import signal
import subprocess
import time

import pytest
import requests
from py_vapid import Vapid02

from tests.harness import (ROOT, PushClient, alive, application_server_key, browser_keys,
                           decrypt, descendant_pids, free_port_block, pick_port, send_webpush,
                           wait_http)

pytestmark = pytest.mark.timeout(180)


def test_make_run_serves_and_stops_cleanly(tmp_path):
    ports = {"port": pick_port(), "endpoint_port": pick_port(), "embedded_ddb_port": pick_port()}
    router_port = free_port_block(2)
    env = dict(os.environ)
    env.pop("CONNNODE_AWS_DDB_ENDPOINT", None)
    env.update({f"CONNNODE_{name.upper()}": str(value) for name, value in ports.items()})
    env.update({
        "CONNNODE_ROUTER_PORT": str(router_port),
        "CONNNODE_DATA_DIR": str(tmp_path / "var"),
        "CONNNODE_HOSTNAME": "127.0.0.1",
        "CONNNODE_STATSD_HOST": "",
        "WEB_CONCURRENCY": "1",
        "CONNNODE_MEGAPHONE_POLL_INTERVAL": "1",
    })
    for name in ("MEGAPHONE_API_URL", "MEGAPHONE_API_TOKEN", "MEGAPHONE_READER_TOKEN",
                 "MEGAPHONE_BROADCASTER_TOKENS"):
        env.pop(f"CONNNODE_{name}", None)
    endpoint = f"http://127.0.0.1:{ports['endpoint_port']}"
    make = subprocess.Popen(["make", "--no-print-directory", "run"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    pid_file = tmp_path / "var" / "supervisord.pid"
    try:
        started = time.monotonic()
        for url in (f"http://127.0.0.1:{ports['port']}/status", f"{endpoint}/status",
                    f"http://127.0.0.1:{router_port}/status"):
            wait_http(url, timeout=max(1.0, 60 - (time.monotonic() - started)), process=make)
            assert requests.get(url, timeout=5).json()["status"] == "OK"

        vapid = Vapid02()
        vapid.generate_keys()
        browser = PushClient(f"ws://127.0.0.1:{ports['port']}/")
        browser.hello()
        registered = browser.register(key=application_server_key(vapid))
        assert registered["pushEndpoint"].startswith(endpoint + "/wpush/v2/")
        private_key, auth, keys = browser_keys()
        response = send_webpush(endpoint, registered["pushEndpoint"], keys, vapid, "over make run")
        assert response.status_code == 201, response.text
        assert decrypt(browser.recv(), private_key, auth) == b"over make run"
        browser.close()

        # Broadcasts as an operator tries them: a version is PUT with the
        # token make run generated; a client that subscribed before the next
        # PUT gets the broadcast frame within the poll interval, and a later
        # hello naming the old version gets the delta.
        channel = "remote-settings/monitor_changes"
        token = (tmp_path / "var" / "broadcaster_token").read_text().strip()

        def put_version(version):
            answer = requests.put(f"{endpoint}/v1/broadcasts/{channel}", data=version, timeout=5,
                                  headers={"Authorization": f"Bearer {token}"})
            assert answer.status_code == 200 and answer.json() == {"code": 200}
        put_version(b"v0")
        deadline = time.monotonic() + 10
        while True:  # until the node has polled v0: the hello then has no delta
            subscriber = PushClient(f"ws://127.0.0.1:{ports['port']}/")
            if subscriber.hello(broadcasts={channel: "v0"})["broadcasts"] == {}:
                break
            subscriber.close()
            assert time.monotonic() < deadline, "the node never polled the first version"
            time.sleep(0.2)
        put_version(b"v1")
        frame = subscriber.recv(timeout=10)
        assert frame == {"messageType": "broadcast", "broadcasts": {channel: "v1"}}
        subscriber.close()
        late = PushClient(f"ws://127.0.0.1:{ports['port']}/")
        assert late.hello(broadcasts={channel: "v0"})["broadcasts"] == {channel: "v1"}
        late.close()

        # The demo page is on under make run, its VAPID key made once into data_dir.
        page = requests.get(f"{endpoint}/demo", timeout=5)
        assert page.status_code == 200 and "connnode push demo" in page.text
        assert (tmp_path / "var" / "demo_vapid_key.pem").is_file()

        supervisord = int(pid_file.read_text())
        service = [supervisord] + descendant_pids(supervisord)
        assert len(service) >= 5  # dynalite, two gunicorn masters and their workers
        os.kill(supervisord, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while any(alive(pid) for pid in service):
            assert time.monotonic() < deadline, [pid for pid in service if alive(pid)]
            time.sleep(0.1)
        output = make.communicate(timeout=10)[0]
        assert "ws://127.0.0.1:" in output and endpoint in output
        assert f"{endpoint}/demo" in output
        assert (tmp_path / "var" / "crypto_key").exists()
    finally:
        if make.poll() is None:
            if pid_file.exists():
                for pid in [int(pid_file.read_text())] + descendant_pids(int(pid_file.read_text())):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            make.kill()
            make.wait()
