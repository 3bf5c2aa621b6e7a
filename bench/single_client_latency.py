"""POST -> 201 and POST -> frame latency with one connected client: a real
endpoint node and connection node (gunicorn, one worker each) on an
in-memory dynalite, N sequential sends of a 128-byte aes128gcm-labelled body.

    python -m bench.single_client_latency [N]

Prints medians and p90 in milliseconds, how often the frame reached the
client before the 201 reached the sender (direct delivery writes it first),
and the CPU time each node's worker spent per message (user + system, from
/proc, over the timed sends).
"""
from gevent import monkey

monkey.patch_all()

import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from pathlib import Path  # noqa: E402

import gevent  # noqa: E402
import requests  # noqa: E402

from bench.common import children_of, cpu_seconds  # noqa: E402
from connnode.embedded import Dynalite  # noqa: E402
from tests.harness import ConnectionNode, EndpointNode, PushClient  # noqa: E402

WARM_UP = 20


def percentile(samples, fraction):
    ordered = sorted(samples)
    return ordered[int(fraction * (len(ordered) - 1))] * 1000


def worker_cpu_seconds(master_pid):
    """User + system CPU seconds of the gunicorn master's children."""
    return sum(cpu_seconds(pid) for pid in children_of(master_pid))


def main():
    sends = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    logs = Path(tempfile.mkdtemp(prefix="latency-"))
    dynalite = Dynalite().start()
    suffix = uuid.uuid4().hex[:8]
    tables = {"router": f"router_{suffix}", "message": f"message_{suffix}"}
    endpoint = EndpointNode(dynalite, tables, log_path=logs / "ep.log")
    connection = ConnectionNode(dynalite, tables, log_path=logs / "cn.log", endpoint_url=endpoint.url)
    arrivals = {}
    try:
        endpoint.start()
        connection.start()
        client = PushClient(connection.ws_url)
        client.hello()
        push_endpoint = client.register()["pushEndpoint"]

        def read_frames():
            while True:
                frame = client.recv(timeout=60)
                arrivals[frame["version"]] = time.perf_counter()
                client.ack(frame)
        reader = gevent.spawn(read_frames)
        http = requests.Session()
        headers = {"TTL": "60", "Content-Encoding": "aes128gcm"}
        body = b"x" * 128
        for _ in range(WARM_UP):
            http.post(push_endpoint, data=body, headers=headers)
        gevent.sleep(0.5)
        to_201, to_frame = [], []
        cpu_before = [worker_cpu_seconds(node.process.pid) for node in (endpoint, connection)]
        for _ in range(sends):
            started = time.perf_counter()
            response = http.post(push_endpoint, data=body, headers=headers)
            answered = time.perf_counter()
            assert response.status_code == 201, response.text
            version = response.headers["Location"].rsplit("/m/", 1)[1]
            deadline = answered + 2
            while version not in arrivals and time.perf_counter() < deadline:
                gevent.sleep(0.0005)
            to_201.append(answered - started)
            to_frame.append(arrivals[version] - started)
        cpu = [worker_cpu_seconds(node.process.pid) - before
               for node, before in zip((endpoint, connection), cpu_before)]
        reader.kill()
        client.close()
        print(f"one connected client, {sends} sequential POST /wpush/v1 (ms)")
        for name, samples in (("POST -> 201", to_201), ("POST -> frame", to_frame)):
            print(f"  {name:<14} median {statistics.median(samples) * 1000:6.2f}   "
                  f"p90 {percentile(samples, 0.9):6.2f}   max {max(samples) * 1000:6.2f}")
        first = sum(1 for frame, answer in zip(to_frame, to_201) if frame <= answer)
        print(f"  frame before the 201: {first} / {sends}")
        print(f"  worker CPU per message: endpoint {cpu[0] * 1000 / sends:.2f} ms, "
              f"connection node {cpu[1] * 1000 / sends:.2f} ms")
    finally:
        connection.stop()
        endpoint.stop()
        dynalite.stop()


if __name__ == "__main__":
    main()
