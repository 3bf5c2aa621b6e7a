"""Megaphone fan-out: one broadcast change to N subscribed clients of one
connection worker, and what it does to direct pushes meanwhile.

    python -m bench.broadcast_fanout [clients]

Starts an in-memory dynalite, a Megaphone stand-in (a pywsgi app in this
process) and a connection node (one worker, polling every second). A child
process (asyncio, ``bench.wsclient``) opens ``clients`` (5,000) WebSockets,
each saying hello with the broadcast, and records when each gets the
change. This process pushes one direct message every 10 ms to one more
client (PUT /push, the frame read back) for 2 s before the change (the
baseline: the same pushes without a fan-out) and until every client has
the change. Prints the fan-out time (first to last client) and the worst
and p99 push latency during the fan-out against the baseline's.
"""
import sys

if sys.argv[1:2] != ["--receivers"]:  # the receivers' child runs asyncio, unpatched
    from gevent import monkey
    monkey.patch_all()

import asyncio  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from pathlib import Path  # noqa: E402

MONITOR = "remote-settings/monitor_changes"
TOKEN = "bench-token"
PUSH_EVERY = 0.01
BASELINE_SECONDS = 2.0


def receivers(port, count):
    """Child process: ``count`` subscribed clients; prints "ready", then the
    arrival times (time.time()) of the change, one JSON line."""
    from bench.clients import raise_nofile
    from bench.wsclient import connect

    raise_nofile()
    arrivals = []

    def on_text(_conn, payload):
        if b'"broadcast"' in payload:
            arrivals.append(time.time())

    async def one(gate):
        async with gate:
            conn = await connect("127.0.0.1", port, timeout=60)
            conn.send_text(json.dumps({"messageType": "hello", "use_webpush": True,
                                       "broadcasts": {MONITOR: "v1"}}))
            await asyncio.wait_for(conn.recv(), 60)
            conn.on_text = on_text
            return conn

    async def main():
        gate = asyncio.Semaphore(200)
        conns = await asyncio.gather(*(one(gate) for _ in range(count)))
        print("ready", flush=True)
        deadline = time.monotonic() + 120
        while len(arrivals) < count and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        print(json.dumps({"arrivals": arrivals}), flush=True)
        for conn in conns:
            conn.abort()

    asyncio.run(main())


class Megaphone:
    def __init__(self):
        from gevent import pywsgi
        self.versions = {MONITOR: "v1"}
        self.server = pywsgi.WSGIServer(("127.0.0.1", 0), self.app, log=None, error_log=None)
        self.server.start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/v1/broadcasts"

    def app(self, environ, start_response):
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps({"code": 200, "broadcasts": self.versions}).encode()]


def pusher(node, storage, client, uaid, chid, samples, stop):
    """PUT /push every PUSH_EVERY s; (send time, seconds to the frame)."""
    import gevent
    import requests

    from tests.harness import push_body

    http = requests.Session()
    url = f"{node.router_url()}/push/{uaid}"
    while not stop.is_set():
        body = push_body(storage.crypto, uaid, chid)
        sent = time.time()
        started = time.monotonic()
        assert http.put(url, json=body, timeout=10).status_code == 200
        frame = client.recv(timeout=10)
        samples.append((sent, time.monotonic() - started))
        client.ack(frame)
        gevent.sleep(PUSH_EVERY)


def percentile(values, fraction):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * (len(ordered) - 1)))] if ordered else None


def main():
    import gevent
    import gevent.event

    from connnode.db.storage import Storage
    from connnode.embedded import Dynalite
    from tests.conftest import make_settings
    from tests.harness import ConnectionNode, PushClient

    count = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    store = Dynalite().start()
    megaphone = Megaphone()
    suffix = uuid.uuid4().hex[:8]
    tables = {"router": f"router_{suffix}", "message": f"message_{suffix}"}
    storage = Storage(make_settings(store, router_tablename=tables["router"],
                                    message_tablename=tables["message"]))
    storage.create_tables()
    logs = Path(tempfile.mkdtemp(prefix="fanout-"))
    node = ConnectionNode(store, tables, log_path=logs / "cn.log", hello_timeout=30,
                          megaphone_api_url=megaphone.url, megaphone_api_token=TOKEN,
                          megaphone_poll_interval=1, max_connections=count + 100).start()
    child = subprocess.Popen([sys.executable, "-m", "bench.broadcast_fanout", "--receivers",
                              str(node.port), str(count)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready", "receivers failed"
        client = PushClient(node.ws_url)
        client.hello()
        chid = client.register()["channelID"]
        samples, stop = [], gevent.event.Event()
        pushing = gevent.spawn(pusher, node, storage, client, client.uaid, chid, samples, stop)
        gevent.sleep(BASELINE_SECONDS)
        changed = time.time()
        megaphone.versions[MONITOR] = "v2"
        line = child.stdout.readline()
        stop.set()
        pushing.join(15)
        arrivals = sorted(json.loads(line)["arrivals"])
        client.close()
    finally:
        child.kill()
        node.stop()
        megaphone.server.stop()
        store.stop()
    first, last = arrivals[0], arrivals[-1]
    before = [latency for sent, latency in samples if sent < changed]
    during = [latency for sent, latency in samples if first - 0.05 <= sent <= last]
    print(f"broadcast fan-out, {count} subscribed clients, one connection worker")
    print(f"  received the change         {len(arrivals)} of {count}")
    print(f"  fan-out, first to last      {1000 * (last - first):.0f} ms")
    print(f"  change to last client       {1000 * (last - changed):.0f} ms (poll every 1 s)")
    print(f"  direct push, PUT -> frame   during the fan-out: {len(during)} pushes, "
          f"p99 {1000 * (percentile(during, 0.99) or 0):.1f} ms, worst {1000 * max(during or [0]):.1f} ms")
    print(f"                              baseline (no fan-out): {len(before)} pushes, "
          f"p99 {1000 * percentile(before, 0.99):.1f} ms, worst {1000 * max(before):.1f} ms")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--receivers":
        receivers(int(sys.argv[2]), int(sys.argv[3]))
    else:
        main()
