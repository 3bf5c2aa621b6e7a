"""direct-push: ``PUT /push/<uaid>`` on the worker's router port -> the
notification frame at the client, with 1,000 connected clients and one worker.

Per repeat, for the connection node (gunicorn, one worker, in-memory dynalite)
and for the baseline (``baseline_push``: bare pywsgi handler + a dict of
hand-shaken WebSockets): 1,000 clients from 2 client processes say hello;
then ``pushload`` (a separate process) drives keep-alive PUTs at each load
level (concurrent connections, one request in flight on each) for a warm-up
plus a measured window. Bodies are what the endpoint sends (a Fernet message
id, a 100-byte payload, ``ttl`` 0 so that nothing is saved when the clients
go); the clients count the frames but do not ack (direct acks are not part
of this path, and the baseline has no ack handling).

Figures per level: PUTs/s answered 200, frames/s received, PUT latency p50 and
p99, and the CPU use of the server, load generator and client processes
during the window (a load generator near 100 % of a core while the server is
well below would mean the load, not the server, was measured: ``load_bound``).
The table compares each side at its best level (peak PUTs/s, CPU there) and
lists rate and latency at every level. Target: connection node >= 1.0x the
baseline.
"""
import base64
import json
import os
import tempfile
import time
import uuid

from bench.common import (ConnectionNode, CpuMeter, Dynalite, Fleet, Popen, Server, crypto_key,
                          machine, median, save_plot, pyplot, raise_nofile, row, table_names)

NAME = "direct-push"
CLIENTS = 1000
CLIENT_PROCESSES = 2
LEVELS = (1, 8, 32)
WARMUP = 1.0
WINDOW = 3.0
MAX_REQUESTS = 400_000


def push_bodies(key, uaids, path):
    from connnode.crypto import TokenCrypto

    crypto = TokenCrypto([key])
    payload = base64.urlsafe_b64encode(os.urandom(100)).decode("ascii").rstrip("=")
    pairs = []
    for uaid in uaids:
        chid = str(uuid.uuid4())
        skt = int(time.time() * 1_000_000)
        body = {"channelID": chid, "version": crypto.message_id(uaid, chid, sortkey_timestamp=skt),
                "ttl": 0, "topic": None, "timestamp": int(time.time()), "sortkey_timestamp": skt,
                "data": payload, "headers": {"encoding": "aes128gcm"}}
        pairs.append([uaid, json.dumps(body, separators=(",", ":"))])
    with open(path, "w") as handle:
        json.dump(pairs, handle)


def frames(fleet):
    return sum(answer["notifications"] for answer in fleet.same({"cmd": "count"}, 30))


def drive(fleet, router_port, server_pid, bodies, connections):
    before = frames(fleet)
    load = Popen("pushload", {"port": router_port, "bodies": bodies, "connections": connections,
                              "warmup": WARMUP, "duration": WINDOW, "max_requests": MAX_REQUESTS})
    pids = {"server": server_pid, "load": load.pid}
    pids.update({f"clients{i}": pid for i, pid in enumerate(fleet.pids)})
    meter = CpuMeter(pids)
    phase = load.read(60)
    assert phase == {"phase": "start"}, phase
    meter.start()
    phase = load.read(WINDOW + 30)
    cpu = meter.stop()
    result = load.read(30)
    load.wait()
    time.sleep(0.2)
    delivered = frames(fleet) - before
    result["frames"] = delivered
    result["frames_rate"] = delivered / result["total_elapsed"]
    result["cpu"] = cpu
    result["load_bound"] = cpu["load"] >= 90 and cpu["server"] < 85
    return result


def measure(system, dynalite, tables, key, fleet, workdir):
    if system == "connnode":
        server = ConnectionNode(dynalite, tables, key, log_name=f"{NAME}-cn").start()
        port, router_port, pid = server.port, server.router_port, server.worker_pid()
    else:
        server = Server("baseline_push", log_name=f"{NAME}-baseline").start()
        port, router_port, pid = server.info["port"], server.info["router_port"], server.pid
    try:
        uaids = fleet.connect(port, CLIENTS, register=False)
        bodies = os.path.join(workdir, f"bodies-{system}.json")
        push_bodies(key, uaids, bodies)
        levels = {}
        for connections in LEVELS:
            levels[connections] = drive(fleet, router_port, pid, bodies, connections)
        return levels
    finally:
        if system == "connnode":
            server.kill()  # its graceful shutdown is not measured
        else:
            server.stop()
        fleet.close_all()


def run(repeats=3):
    raise_nofile()
    dynalite = Dynalite().start()
    key = crypto_key()
    tables = table_names()
    fleet = Fleet(CLIENT_PROCESSES)
    samples = {"connnode": [], "baseline": []}
    try:
        with tempfile.TemporaryDirectory(prefix="bench-push-") as workdir:
            for repeat in range(repeats):
                order = ("connnode", "baseline") if repeat % 2 == 0 else ("baseline", "connnode")
                for system in order:
                    samples[system].append(measure(system, dynalite, tables, key, fleet, workdir))
    finally:
        fleet.stop()
        dynalite.stop()

    def med(system, level, field):
        return median([sample[level][field] for sample in samples[system]])

    def med_cpu(system, level, name):
        return median([sample[level]["cpu"][name] for sample in samples[system]])

    def peak(system):
        return max(LEVELS, key=lambda level: med(system, level, "ok_rate"))

    cn, base = peak("connnode"), peak("baseline")
    rows = [
        row("PUT 200/s, peak over load levels", "req/s", med("connnode", cn, "ok_rate"),
            med("baseline", base, "ok_rate"), target=1.0, better="higher"),
        row("frames/s received, at the peak", "frames/s", med("connnode", cn, "frames_rate"),
            med("baseline", base, "frames_rate"), better="higher"),
        row("server CPU, at the peak", "% core", med_cpu("connnode", cn, "server"),
            med_cpu("baseline", base, "server")),
        row("load generator CPU, at the peak", "% core", med_cpu("connnode", cn, "load"),
            med_cpu("baseline", base, "load")),
    ]
    for level in LEVELS:
        rows.append(row(f"PUT 200/s, {level} conn", "req/s", med("connnode", level, "ok_rate"),
                        med("baseline", level, "ok_rate"), better="higher"))
        rows.append(row(f"PUT p50 / p99, {level} conn", "ms",
                        (med("connnode", level, "p50_ms"), med("connnode", level, "p99_ms")),
                        (med("baseline", level, "p50_ms"), med("baseline", level, "p99_ms"))))
    load_bound = any(sample[level]["load_bound"] for system in samples for sample in samples[system]
                     for level in LEVELS)
    result = {"name": NAME, "machine": machine(), "repeats": repeats, "rows": rows,
              "config": {"clients": CLIENTS, "levels": LEVELS, "warmup_s": WARMUP, "window_s": WINDOW,
                         "client_processes": CLIENT_PROCESSES},
              "peak_level": {"connnode": cn, "baseline": base},
              "load_bound": load_bound, "samples": samples}
    result["plot"] = str(plot(samples))
    return result


def plot(samples):
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for system, style in (("connnode", "o-"), ("baseline", "s--")):
        rates = [median([s[level]["ok_rate"] for s in samples[system]]) for level in LEVELS]
        p99 = [median([s[level]["p99_ms"] for s in samples[system]]) for level in LEVELS]
        left.plot(LEVELS, rates, style, label=system)
        right.plot(LEVELS, p99, style, label=system)
    left.set(xlabel="concurrent keep-alive connections", ylabel="PUT /push answered 200 per s",
             title="direct push throughput (1 worker, 1,000 clients)", xscale="log")
    right.set(xlabel="concurrent keep-alive connections", ylabel="p99 latency (ms)",
              title="PUT /push p99 latency", xscale="log")
    for axis in (left, right):
        axis.set_xticks(LEVELS, [str(level) for level in LEVELS])
    return save_plot(plt, fig, (left, right), NAME)
