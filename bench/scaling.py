"""scaling: end-to-end throughput at saturation (``POST /wpush/v1/<token>``
-> the notification frame at the client) with 1 and 2 endpoint workers and
1 and 2 connection workers on this machine: 1 EP + 1 CN, 2 + 1, 1 + 2, 2 + 2.

Set-up (once): an in-memory dynalite; two connection nodes
(``gunicorn.conf.py``), one with ``WEB_CONCURRENCY`` 1 and one with 2 (worker
k serves its router API on ``router_port + k``; its clients' router records
name that URL, so the endpoint reaches the right worker); two endpoint nodes
(``conf/endpoint.gunicorn.conf.py``), one with ``WEB_CONCURRENCY_ENDPOINT`` 1
and one with 2, durable delivery on (the default), rate limits raised out of
reach (as in ``cpu-ratio``: every request comes from 127.0.0.1). Two fleets
of 2 client processes each (``bench.e2e_clients``, every notification
acked): 1,000 clients on each connection node, each registered on one
channel without key (a v1 endpoint). With 2 CN workers the kernel spreads
the clients over the workers' accepts (the split is reported). Only the
processes of the configuration under load work; the others sit idle, so
every configuration is measured in every repeat without restarts.

Load (``bench.wpushload`` with ``closed: true``, its own process): 128
keep-alive connections, each with one request in flight back to back (no
pacing); 1 s warm-up, 3 s measured. Request i goes to subscription i mod
1,000 (shuffled). Body: 200 bytes of aes128gcm encrypted once, ``TTL: 60``,
no VAPID. Figures per configuration: successes (201) answered in the window
per second, frame latency p50 / p99 (frame parsed in the client process
minus request written, ``time.monotonic()``), CPU of every worker, dynalite,
the load generator (a saturated generator would be the bottleneck) and the
client processes, and frames missing (successes whose message id never
arrived). Rows: each configuration against 1 EP + 1 CN (ratio = speed-up).

Once after set-up, not measured: each configuration for 2 s (pools, the
workers' first full GC). Per repeat (3 by default; the order rotates): the
four configurations.

Everything shares 2 cores: the workers, dynalite, the load generator and
the client processes. A second worker only helps as far as a core is left
for it, so the figure is what this machine buys, not the design's ceiling.
Left out: TLS, a real network, DynamoDB's latency, more than one host.

Small runs: ``SCALING_WARMUP`` / ``SCALING_WINDOW`` (seconds) and
``SCALING_CLIENTS``, e.g. ``SCALING_WINDOW=1.5 python -m bench.run scaling
--repeats 1``.
"""
import base64
import json
import os
import random
import sys
import tempfile
import time
from urllib.parse import urlsplit

from bench.common import (ConnectionNode, Dynalite, children_of, crypto_key, free_port, machine,
                          median, pyplot, raise_nofile, row, save_plot, table_names)
from bench.cpu_ratio import NO_LIMITS, closed_phase
from bench.end_to_end import EndpointNode, SubscriberProcess, Subscribers, encrypted_body

NAME = "scaling"
CLIENTS = int(os.environ.get("SCALING_CLIENTS", "1000"))
CLIENT_PROCESSES = 2
CONNECTIONS = 128
WARMUP = float(os.environ.get("SCALING_WARMUP", "1.0"))
WINDOW = float(os.environ.get("SCALING_WINDOW", "3.0"))
WARM_START = 2.0
TTL = 60
#: (endpoint workers, connection workers)
CONFIGS = ((1, 1), (2, 1), (1, 2), (2, 2))


def label(config):
    return f"{config[0]} EP + {config[1]} CN"


def key(config):
    return f"{config[0]}ep-{config[1]}cn"


class ScalingProcess(SubscriberProcess):
    log_name = f"{NAME}-clients"


class ScalingFleet(Subscribers):
    def __init__(self, processes):  # noqa: D107
        self.procs = [ScalingProcess() for _ in range(processes)]
        self.duplicates = 0


def sockets(pid):
    """Open sockets of a process (``/proc/<pid>/fd``)."""
    count = 0
    for entry in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{entry}").startswith("socket:"):
                count += 1
        except OSError:
            pass
    return count


def workers_of(process, count, timeout=30.0):
    deadline = time.monotonic() + timeout
    while True:
        pids = children_of(process.pid)
        if len(pids) == count:
            return pids
        if time.monotonic() >= deadline:
            raise RuntimeError(f"expected {count} workers of {process.pid}, found {pids}")
        time.sleep(0.1)


class Bench:
    def __init__(self, dynalite, cns, eps, fleets, workdir):
        self.cns, self.eps, self.fleets, self.workdir = cns, eps, fleets, workdir
        self.ep_pids = {n: workers_of(ep.process, n) for n, ep in eps.items()}
        self.cn_pids = {n: workers_of(cn.process, n) for n, cn in cns.items()}
        body = encrypted_body()
        self.body_b64 = base64.b64encode(body).decode("ascii")
        self.targets = {}
        self.dynalite_pid = dynalite.process.pid

    def set_targets(self, cn_workers, subscriptions):
        order = list(range(len(subscriptions)))
        random.Random(cn_workers).shuffle(order)
        path = os.path.join(self.workdir, f"targets-{cn_workers}cn.json")
        with open(path, "w") as handle:
            json.dump([urlsplit(subscriptions[i][2]).path for i in order], handle)
        self.targets[cn_workers] = path

    def phase(self, config, warmup, window, prefix=""):
        ep_workers, cn_workers = config
        fleet = self.fleets[cn_workers]
        pids = {"dynalite": self.dynalite_pid}
        eps = [f"ep{i}" for i in range(ep_workers)]
        cns = [f"cn{i}" for i in range(cn_workers)]
        pids.update(zip(eps, self.ep_pids[ep_workers]))
        pids.update(zip(cns, self.cn_pids[cn_workers]))
        pids.update({f"clients{i}": pid for i, pid in enumerate(fleet.pids)})
        load = {"mode": "wpush", "port": self.eps[ep_workers].port,
                "targets": self.targets[cn_workers], "body_b64": self.body_b64,
                "headers": {"TTL": str(TTL), "Content-Encoding": "aes128gcm",
                            "Content-Type": "application/octet-stream"},
                "max_connections": CONNECTIONS}
        result = closed_phase(load, pids, fleet, self.workdir, warmup, window, 201,
                              f"{NAME}-load", per_message={"ep": eps, "cn": cns,
                                                           "dynalite": ["dynalite"]})
        cpu = result["cpu"]
        result["cpu_sum"] = {"ep": sum(cpu[name] for name in eps),
                             "cn": sum(cpu[name] for name in cns),
                             "dynalite": cpu["dynalite"], "load": cpu["load"],
                             "clients": sum(cpu[name] for name in cpu if name.startswith("clients"))}
        c = result["cpu_sum"]
        print(f"   {prefix}{label(config)}: {result['ok_rate']:6.0f}/s  p50 {fmt(result['p50_ms'])} "
              f"p99 {fmt(result['p99_ms'])} ms | cpu% ep {'+'.join(f'{cpu[n]:.0f}' for n in eps)} "
              f"cn {'+'.join(f'{cpu[n]:.0f}' for n in cns)} ddb {c['dynalite']:.0f} "
              f"load {c['load']:.0f} clients {c['clients']:.0f} | missing {result['missing']}"
              f"{' other ' + json.dumps(result['other_statuses']) if result['other_statuses'] else ''}",
              flush=True)
        time.sleep(0.3)
        return result


def fmt(value):
    return "-" if value is None else f"{value:.1f}"


def run(repeats=3):
    raise_nofile()
    started = time.monotonic()
    dynalite = Dynalite().start()
    crypto = crypto_key()
    tables = table_names()
    ep_ports = {1: free_port(), 2: free_port()}
    cns, eps, fleets = {}, {}, {}
    samples = []
    spread = {}
    try:
        for n in (1, 2):
            cns[n] = ConnectionNode(dynalite, tables, crypto, workers=n, log_name=f"{NAME}-cn{n}",
                                    endpoint_url=f"http://127.0.0.1:{ep_ports[1]}").start()
        for n in (1, 2):
            eps[n] = EndpointNode(dynalite, tables, crypto, workers=n, port=ep_ports[n],
                                  log_name=f"{NAME}-ep{n}", **NO_LIMITS).start()
        with tempfile.TemporaryDirectory(prefix="bench-scaling-") as workdir:
            subscribe_s = {}
            subscriptions = {}
            for n in (1, 2):
                before = {pid: sockets(pid) for pid in workers_of(cns[n].process, n)}
                fleets[n] = ScalingFleet(CLIENT_PROCESSES)
                t0 = time.monotonic()
                subscriptions[n] = fleets[n].subscribe(cns[n].port, CLIENTS)
                subscribe_s[n] = round(time.monotonic() - t0, 2)
                spread[n] = [sockets(pid) - count for pid, count in before.items()]
            print(f"  clients per CN worker (sockets added): {spread}", flush=True)
            bench = Bench(dynalite, cns, eps, fleets, workdir)
            for n in (1, 2):
                bench.set_targets(n, subscriptions[n])
            for config in CONFIGS:  # once, not measured
                bench.phase(config, 0.5, WARM_START - 0.5, prefix="warm-up ")
            for repeat in range(repeats):
                print(f"  repeat {repeat + 1}/{repeats}", flush=True)
                shift = repeat % len(CONFIGS)
                order = CONFIGS[shift:] + CONFIGS[:shift]
                samples.append({key(config): bench.phase(config, WARMUP, WINDOW)
                                for config in order})
    finally:
        for fleet in fleets.values():
            fleet.stop()
        for node in list(eps.values()) + list(cns.values()):
            node.kill()  # graceful shutdowns are not measured
        dynalite.stop()
    return result(samples, repeats, subscribe_s, spread, time.monotonic() - started)


def med(samples, config, *path):
    values = []
    for sample in samples:
        value = sample[key(config)]
        for part in path:
            value = value[part] if value is not None else None
        if value is not None:
            values.append(value)
    return median(values)


def result(samples, repeats, subscribe_s, spread, elapsed):
    base = CONFIGS[0]
    rows = []
    for config in CONFIGS:
        rows.append(row(f"{label(config)} workers: POST -> frame, at saturation", "msg/s",
                        med(samples, config, "ok_rate"), med(samples, base, "ok_rate")))
    for config in CONFIGS:
        rows.append(row(f"{label(config)}: frame latency p50 / p99", "ms",
                        (med(samples, config, "p50_ms"), med(samples, config, "p99_ms")),
                        (med(samples, base, "p50_ms"), med(samples, base, "p99_ms"))))
    for config in CONFIGS:
        rows.append(row(f"{label(config)}: CPU of the EP / CN workers (sum)", "% core",
                        (med(samples, config, "cpu_sum", "ep"), med(samples, config, "cpu_sum", "cn")),
                        (med(samples, base, "cpu_sum", "ep"), med(samples, base, "cpu_sum", "cn"))))
    busiest = max(CONFIGS, key=lambda config: med(samples, config, "cpu_sum", "load") or 0)
    rows.append(row(f"load generator / dynalite CPU, {label(busiest)}", "% core",
                    (med(samples, busiest, "cpu_sum", "load"),
                     med(samples, busiest, "cpu_sum", "dynalite")),
                    (med(samples, base, "cpu_sum", "load"), med(samples, base, "cpu_sum", "dynalite"))))
    missing = sum(s[key(c)]["missing"] + s[key(c)]["frames_short"] for s in samples for c in CONFIGS)
    other = sum(sum(s[key(c)]["other_statuses"].values()) for s in samples for c in CONFIGS)
    rows.append(row("frames missing after a 201, all configurations", "msgs", missing, None))
    rows.append(row("answers other than 201, all configurations", "reqs", other, None))
    out = {"name": NAME, "machine": machine(), "repeats": repeats, "rows": rows,
           "config": {"clients_per_cn": CLIENTS, "client_processes_per_cn": CLIENT_PROCESSES,
                      "connections": CONNECTIONS, "closed_loop": True, "warmup_s": WARMUP,
                      "window_s": WINDOW, "warm_start_s": WARM_START, "ttl": TTL,
                      "body": "http_ece aes128gcm, 200 bytes, encrypted once", "vapid": None,
                      "durable_direct": True, "configurations": [list(c) for c in CONFIGS],
                      "rate_limits": "raised to 1,000,000/s (kept, never refusing)"},
           "clients_per_cn_worker": {str(n): counts for n, counts in spread.items()},
           "subscribe_s": subscribe_s, "setup_and_run_s": round(elapsed, 1), "samples": samples}
    out["plot"] = str(plot(samples))
    return out


def plot(samples):
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    names = [label(config) for config in CONFIGS]
    rates = [med(samples, config, "ok_rate") or 0.0 for config in CONFIGS]
    left.bar(names, rates, color="tab:blue", label="POST /wpush -> frame per s (median)")
    for i, config in enumerate(CONFIGS):
        points = [s[key(config)]["ok_rate"] for s in samples]
        left.plot([i] * len(points), points, "x", color="black", alpha=0.6,
                  label="each repeat" if i == 0 else None)
    for i, rate in enumerate(rates):
        if rates[0]:
            left.annotate(f"{rate / rates[0]:.2f}x", (i, rate), ha="center", va="bottom", fontsize=8)
    left.set(ylabel="answered 201 per s", title=f"throughput at saturation ({CONNECTIONS} in flight)")
    for what, marker, colour in (("p50_ms", "s", "tab:green"), ("p99_ms", "o", "tab:red")):
        right.plot(names, [med(samples, config, what) for config in CONFIGS], marker + "-",
                   color=colour, label=what.replace("_ms", ""))
    right.set(ylabel="frame latency (ms)", title="latency at that load (medians)")
    return save_plot(plt, fig, (left, right), NAME, legend_size=8)


def main(argv=None):
    from bench.run import table
    argv = sys.argv[1:] if argv is None else argv
    out = run(int(argv[0]) if argv else 1)
    print(table(out))


if __name__ == "__main__":
    main()
