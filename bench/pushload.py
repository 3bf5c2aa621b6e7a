"""Load generator of direct-push: keep-alive ``PUT /push/<uaid>`` requests
over raw sockets from gevent greenlets (one request in flight per
connection, no pipelining), in a process of its own.

    python -m bench.pushload '<json config>'

Config: ``port`` (router port on 127.0.0.1), ``bodies`` (file: a JSON list of
[uaid, body text]), ``connections``, ``warmup`` and ``duration`` (seconds),
``max_requests`` (a bound on the whole run). Connection k sends to bodies k,
k + connections, ... in turn. The headers are the ones the endpoint's urllib3
client sends.

Prints ``{"phase": "start"}`` and ``{"phase": "stop"}`` at the edges of the
measured window (after ``warmup``), then one JSON line: requests completed in the measured window by status,
``rate`` (completed per second), latency percentiles (ms), transport errors,
and this process's CPU use in the window (percent of one core) so the driver
can tell whether the load generator was the bottleneck.
"""
from gevent import monkey

monkey.patch_all()

import json  # noqa: E402
import resource  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import gevent  # noqa: E402


def request_bytes(port, uaid, body):
    body = body.encode("utf-8")
    head = (f"PUT /push/{uaid} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            "Accept-Encoding: identity\r\nUser-Agent: python-urllib3/2.8.0\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
    return head.encode("ascii") + body


def content_length(head):
    lowered = head.lower()
    at = lowered.find(b"\r\ncontent-length:")
    if at < 0:
        return 0
    end = lowered.find(b"\r\n", at + 2)
    return int(head[at + 17:end if end >= 0 else None].strip())


class Load:
    def __init__(self, config):
        self.port = config["port"]
        with open(config["bodies"]) as handle:
            pairs = json.load(handle)
        self.requests = [request_bytes(self.port, uaid, body) for uaid, body in pairs]
        self.connections = config["connections"]
        self.max_requests = config.get("max_requests", 1_000_000)
        self.measuring = False
        self.stop = False
        self.sent = 0
        self.total_ok = 0
        self.latencies = []
        self.statuses = {}
        self.errors = []

    def worker(self, index):
        try:
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=30)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError as exc:
            self.errors.append(repr(exc))
            return
        requests = self.requests
        count = len(requests)
        i = index
        buf = b""
        perf = time.perf_counter
        try:
            while not self.stop and self.sent < self.max_requests:
                request = requests[i % count]
                i += self.connections
                self.sent += 1
                t0 = perf()
                sock.sendall(request)
                while True:
                    end = buf.find(b"\r\n\r\n")
                    if end >= 0:
                        break
                    chunk = sock.recv(65536)
                    if not chunk:
                        raise ConnectionError("server closed the connection")
                    buf += chunk
                total = end + 4 + content_length(buf[:end])
                while len(buf) < total:
                    chunk = sock.recv(65536)
                    if not chunk:
                        raise ConnectionError("server closed the connection")
                    buf += chunk
                status = int(buf[9:12])
                buf = buf[total:]
                if status == 200:
                    self.total_ok += 1
                if self.measuring:
                    self.latencies.append(perf() - t0)
                    self.statuses[status] = self.statuses.get(status, 0) + 1
        except OSError as exc:
            if len(self.errors) < 5:
                self.errors.append(repr(exc))
        finally:
            sock.close()

    def run(self, warmup, duration):
        began = time.monotonic()
        workers = [gevent.spawn(self.worker, i) for i in range(self.connections)]
        gevent.sleep(warmup)
        usage0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.monotonic()
        self.measuring = True
        print(json.dumps({"phase": "start"}), flush=True)
        gevent.sleep(duration)
        self.measuring = False
        wall = time.monotonic() - t0
        usage1 = resource.getrusage(resource.RUSAGE_SELF)
        print(json.dumps({"phase": "stop"}), flush=True)
        self.stop = True
        gevent.joinall(workers, timeout=10)
        gevent.killall(workers, block=False)
        total_elapsed = time.monotonic() - began
        cpu = (usage1.ru_utime + usage1.ru_stime - usage0.ru_utime - usage0.ru_stime) / wall
        latencies = sorted(self.latencies)

        def pct(fraction):
            if not latencies:
                return None
            return 1000 * latencies[min(len(latencies) - 1, int(fraction * (len(latencies) - 1) + 0.5))]

        completed = len(latencies)
        return {"connections": self.connections, "window": wall, "completed": completed,
                "rate": completed / wall, "ok": self.statuses.get(200, 0),
                "ok_rate": self.statuses.get(200, 0) / wall,
                "statuses": {str(k): v for k, v in self.statuses.items()},
                "p50_ms": pct(0.5), "p99_ms": pct(0.99),
                "mean_ms": 1000 * sum(latencies) / completed if completed else None,
                "errors": self.errors, "cpu_percent": round(100 * cpu, 1),
                "total_ok": self.total_ok, "total_elapsed": total_elapsed}


def main():
    config = json.loads(sys.argv[1])
    load = Load(config)
    print(json.dumps(load.run(config.get("warmup", 1.0), config["duration"])), flush=True)


if __name__ == "__main__":
    main()
