"""Many concurrent publishers against one endpoint worker: do the node's
pools throw connections away? (urllib3 logs "Connection pool is full,
discarding connection" when a burst opens more connections than a pool
keeps.)

    python -m bench.pool_load [senders] [seconds]

Starts dynalite, an endpoint node and a connection node (one worker each),
100 subscribed clients that ack what they get, then ``senders`` (500)
greenlets POSTing for ``seconds`` (15). Prints the statuses and, per node
log, the "pool is full" lines and ERROR lines.
"""
from gevent import monkey

monkey.patch_all()

import os  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import gevent  # noqa: E402
import requests  # noqa: E402

from connnode.embedded import Dynalite  # noqa: E402
from tests.harness import PushClient  # noqa: E402
from tests.integration.test_endpoint import Service  # noqa: E402

CLIENTS = 100


def main():
    senders = int(sys.argv[1]) if len(sys.argv) > 1 else 500
    seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 15.0
    store = Dynalite().start()
    logs = Path(tempfile.mkdtemp(prefix="pool-load-"))
    svc = Service(store, logs).start()
    clients = []
    try:
        for _ in range(CLIENTS):
            client = PushClient(svc.cn.ws_url)
            client.hello()
            clients.append((client, client.register()["pushEndpoint"]))
        readers = [gevent.spawn(_read_and_ack, client) for client, _ in clients]
        http = requests.Session()
        http.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=senders + 100))
        counts = {}
        stop = time.monotonic() + seconds

        def send(index):
            while time.monotonic() < stop:
                _, endpoint = clients[index % CLIENTS]
                index += 7
                try:
                    status = http.post(endpoint, data=os.urandom(40), timeout=30, headers={
                        "TTL": "60", "Content-Encoding": "aes128gcm"}).status_code
                except requests.RequestException as exc:
                    status = type(exc).__name__
                counts[status] = counts.get(status, 0) + 1
        gevent.joinall([gevent.spawn(send, index) for index in range(senders)])
        print(f"{senders} senders, {seconds:g} s: statuses {counts}")
        for name in ("ep.log", "cn0.log"):
            text = (logs / name).read_text()
            print(f"  {name}: 'pool is full' lines {text.count('Connection pool is full')}, "
                  f"ERROR lines {text.count(chr(34) + 'level' + chr(34) + ': ' + chr(34) + 'ERROR')}")
        gevent.killall(readers)
    finally:
        for client, _ in clients:
            client.close()
        svc.stop()
        store.stop()


def _read_and_ack(client):
    while True:
        try:
            client.ack(client.recv(timeout=60))
        except Exception:  # noqa: BLE001 - the connection ended
            return


if __name__ == "__main__":
    main()
