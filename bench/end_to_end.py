"""end-to-end: ``POST /wpush/v1/<token>`` on the endpoint node -> the
notification frame at the client, 1,000 connected clients, the connection
node and the endpoint node each under gunicorn with one worker, one
in-memory dynalite.

Set-up (once): dynalite, the connection node (``gunicorn.conf.py``, one
worker, ``endpoint_url`` = the endpoint node), the endpoint node
(``conf/endpoint.gunicorn.conf.py``, one worker), 2 client processes
(``bench.e2e_clients``) in which 1,000 clients say hello and register one
channel each (v1 endpoints, no key) and report their ``pushEndpoint``. The
clients ack every notification (one ack frame per received burst).

Messages: one body of 200 bytes encrypted once with ``http_ece``
(aes128gcm, to a random subscription key; the endpoint validates headers
and never decrypts, so every request carries the same body), ``TTL: 60``,
and one VAPID ``Authorization: vapid t=<JWT>,k=<key>`` header signed once
(ES256 with ``cryptography``; ``aud`` the endpoint's origin, ``exp`` now +
12 h, ``sub`` mailto) and sent with every request: the endpoint verifies it
each time. Request i goes to subscription i mod 1,000 (in a shuffled order).

Load (``bench.wpushload``, its own process per level): open loop at a fixed
offered rate over keep-alive connections (at most 64): request i is due at
t0 + i / rate whether or not earlier ones were answered. Latency of a
message = ``time.monotonic()`` when its frame has been parsed in the client
process minus ``time.monotonic()`` when its request was written in the load
process (CLOCK_MONOTONIC is one clock for all processes of the machine);
the message id from the ``Location`` of the 201 is matched with the frame's
``version``. The send lag (request written minus due) is reported too, so a
capped or saturated load generator is visible.

Baseline, measured in the same run with the same nodes and clients: the
direct-push path alone, ``PUT /push/<uaid>`` straight to the connection
node's router port at the same offered rates, with the body the endpoint
would send (a message id per message made before the level starts, the same
data, ttl 60); the ratio column shows what the endpoint node and DynamoDB add.

Once after set-up, not measured: 4 s of each side at 200 msg/s (the first
requests after start-up grow the connection pools and meet the workers'
first full garbage collection). Per repeat (3 by default; the order of the
two sides alternates): each side at 200 msg/s (1 s warm-up, 10 s measured):
p50 and p99 of the frame latency; then the maximal sustained rate, searched
from there: double the rate (400, 800, ... up to 6,400 msg/s; 0.5 s
warm-up, 3 s measured each) until a level is not sustained, then bisect
twice between the last level that passed and the first that did not. A
level is sustained when the successes answered within its window are at
least 95 % of the offered rate, every success has its frame, and the frame
latency p99 counted from the due time (so including any wait for a free
connection in the load generator) is at most 100 ms. CPU use of the
connection node's worker, the endpoint node's worker, dynalite, the load
generator and the client processes is read over each measured window
(everything shares this machine's cores).

Target (issue 11): frame latency p99 at most 10 ms at 200 msg/s in every
repeat: the table's first row is the median p99, the second the worst
repeat's, which carries the target.
The endpoint's rate limits are raised out of reach (``NO_LIMITS``: one
address and one key send everything; the buckets still run). Left out: TLS,
a real network, DynamoDB's own latency (dynalite answers from
memory on this machine), more than one worker per node.
"""
import base64
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from urllib.parse import urlsplit

from bench.common import (ROOT, ClientProcess, ConnectionNode, CpuMeter, Dynalite,
                          Fleet, Popen, children_of, crypto_key, die_with_parent, free_port,
                          log_file, machine, median, node_env, percentile, pyplot, raise_nofile,
                          ratio, save_plot, stop_process, table_names, wait_http_ok)

NAME = "end-to-end"
CLIENTS = 1000
CLIENT_PROCESSES = 2
RATE = 200
WARMUP = 1.0
WINDOW = 10.0
WARM_START = 4.0
RAMP_MAX = 6400
#: The endpoint's rate limits out of reach (the load comes from one address
#: with one key): the buckets are kept and charged, none refuses.
NO_LIMITS = {f"rate_limit_{name}_{kind}": 1000000 for name in ("ip", "key", "subscription")
             for kind in ("rate", "burst")}
BISECT_STEPS = 2
RAMP_WARMUP = 0.5
RAMP_WINDOW = 3.0
MAX_CONNECTIONS = 64
SUSTAINED_FRACTION = 0.95
SUSTAINED_P99_MS = 100.0
TARGET_P99_MS = 10.0
TTL = 60
BODY_BYTES = 200
SYSTEMS = ("connnode", "baseline")


# -- what the application server sends ------------------------------------------------

def b64url(data):
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def raw_public_key(private_key):
    from cryptography.hazmat.primitives import serialization
    return private_key.public_key().public_bytes(serialization.Encoding.X962,
                                                 serialization.PublicFormat.UncompressedPoint)


def vapid_authorization(audience, lifetime=12 * 3600, sub="mailto:bench@example.com"):
    """``vapid t=<JWT>,k=<key>`` for ``audience``: one ES256 JWT signed now."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

    key = ec.generate_private_key(ec.SECP256R1())
    header = b64url(json.dumps({"typ": "JWT", "alg": "ES256"}, separators=(",", ":")).encode())
    claims = b64url(json.dumps({"aud": audience, "exp": int(time.time()) + lifetime, "sub": sub},
                               separators=(",", ":")).encode())
    signing_input = f"{header}.{claims}".encode("ascii")
    r, s = decode_dss_signature(key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
    signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    return f"vapid t={signing_input.decode('ascii')}.{b64url(signature)},k={b64url(raw_public_key(key))}"


def encrypted_body(size=BODY_BYTES):
    """One aes128gcm message of ``size`` bytes (RFC 8291, with http_ece) to
    a random subscription key: the header (86 bytes with the sender's key as
    keyid), the ciphertext, the padding delimiter and the 16-byte tag."""
    import http_ece
    from cryptography.hazmat.primitives.asymmetric import ec

    receiver = ec.generate_private_key(ec.SECP256R1())
    sender = ec.generate_private_key(ec.SECP256R1())
    plaintext = os.urandom(size - 86 - 1 - 16)
    body = http_ece.encrypt(plaintext, private_key=sender, dh=raw_public_key(receiver),
                            auth_secret=os.urandom(16), version="aes128gcm")
    assert len(body) == size, len(body)
    return body


# -- processes ---------------------------------------------------------------------

class EndpointNode:
    """The endpoint node as production runs it (``conf/endpoint.gunicorn.conf.py``),
    one worker, as a child process in its own session."""

    def __init__(self, dynalite, tables, key, workers=1, log_name="endpoint-node", port=None,
                 **options):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = node_env(dynalite, tables, key, **{
            "WEB_CONCURRENCY_ENDPOINT": workers, "endpoint_port": self.port,
            "endpoint_url": self.url, **options})
        self.env.pop("WEB_CONCURRENCY", None)
        self.log_name = log_name
        self.process = None

    def start(self):
        log = log_file(self.log_name)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", str(ROOT / "conf" / "endpoint.gunicorn.conf.py")],
            cwd=ROOT, env=self.env, stdout=log, stderr=log, start_new_session=True,
            preexec_fn=die_with_parent)
        log.close()
        wait_http_ok(self.port, process=self.process, what="endpoint node")
        return self

    def worker_pid(self):
        pids = children_of(self.process.pid)
        if len(pids) != 1:
            raise RuntimeError(f"expected one endpoint worker, found {pids}")
        return pids[0]

    def kill(self):
        stop_process(self.process, sig=signal.SIGKILL, timeout=10.0, group=True)
        self.process = None


class SubscriberProcess(ClientProcess):
    """One ``bench.e2e_clients`` process."""

    module = "bench.e2e_clients"
    log_name = f"{NAME}-clients"


class Subscribers(Fleet):
    def __init__(self, processes):  # noqa: D107 - Fleet of SubscriberProcess
        self.procs = [SubscriberProcess() for _ in range(processes)]

    def subscribe(self, port, count, timeout=180.0):
        answers = self.all([{"cmd": "subscribe", "host": "127.0.0.1", "port": port,
                             "count": share, "timeout": min(timeout, 120.0)} if share else None
                            for share in self.split(count)], timeout)
        failed = sum(a["failed"] for a in answers)
        if failed:
            errors = [e for a in answers for e in a["errors"]]
            raise RuntimeError(f"{failed} of {count} clients failed to subscribe: {errors[:3]}")
        return [sub for a in answers for sub in a["subscriptions"]]

    def notifications(self):
        return sum(a["notifications"] for a in self.same({"cmd": "count"}, 30))

    def arrivals(self, workdir):
        paths = [os.path.join(workdir, f"arrivals-{i}.json") for i in range(len(self.procs))]
        answers = self.all([{"cmd": "arrivals", "path": path} for path in paths], 60)
        merged = {}
        for path in paths:
            with open(path) as handle:
                merged.update(json.load(handle))
            os.unlink(path)
        return merged, sum(a["duplicates"] for a in answers)


# -- one level ------------------------------------------------------------------------

def frame_latencies(requests, arrivals, ok_status):
    """Match ``wpushload``'s request rows with the frames' arrival times (by
    message id): (sorted ms from the request's write to its frame, the same
    from its due time, successes whose frame never came)."""
    latencies, from_due, missing = [], [], 0
    for message_id, t_due, t_send, _, status in requests:
        if status != ok_status or message_id is None:
            continue
        arrived = arrivals.get(message_id)
        if arrived is None:
            missing += 1
        else:
            latencies.append(1000 * (arrived - t_send))
            from_due.append(1000 * (arrived - t_due))
    return sorted(latencies), sorted(from_due), missing


def run_load(config, pids, log_name, start_timeout):
    """One ``bench.wpushload`` run with ``config`` (its ``out`` file is read
    and removed): (its totals, the CPU of ``pids`` and of the load over the
    measured window, the per-request rows). Used by cpu-ratio and scaling too."""
    load = Popen("wpushload", config, log_name=log_name)
    meter = CpuMeter(dict(pids, load=load.pid))
    phase = load.read(start_timeout)
    assert phase == {"phase": "start"}, phase
    meter.start()
    phase = load.read(config["warmup"] + config["duration"] + 30)
    assert phase == {"phase": "stop"}, phase
    cpu = meter.stop()
    summary = load.read(60)
    load.wait()
    with open(config["out"]) as handle:
        requests = json.load(handle)
    os.unlink(config["out"])
    return summary, cpu, requests


class Bench:
    def __init__(self, dynalite, cn, ep, fleet, workdir, key, subscriptions):
        self.dynalite, self.cn, self.ep, self.fleet = dynalite, cn, ep, fleet
        self.workdir = workdir
        self.delivered = fleet.notifications()
        order = list(range(len(subscriptions)))
        random.Random(1).shuffle(order)
        paths = [urlsplit(subscriptions[i][2]).path for i in order]
        pairs = [[subscriptions[i][0], subscriptions[i][1]] for i in order]
        self.targets = {"connnode": os.path.join(workdir, "wpush-targets.json"),
                        "baseline": os.path.join(workdir, "push-targets.json")}
        with open(self.targets["connnode"], "w") as handle:
            json.dump(paths, handle)
        with open(self.targets["baseline"], "w") as handle:
            json.dump(pairs, handle)
        body = encrypted_body()
        self.wpush = {"mode": "wpush", "port": ep.port, "targets": self.targets["connnode"],
                      "body_b64": base64.b64encode(body).decode("ascii"),
                      "headers": {"TTL": str(TTL), "Content-Encoding": "aes128gcm",
                                  "Content-Type": "application/octet-stream",
                                  "Authorization": vapid_authorization(ep.url)}}
        self.push = {"mode": "push", "port": cn.router_port, "targets": self.targets["baseline"],
                     "key": key, "ttl": TTL, "data": b64url(body), "encoding": "aes128gcm"}
        self.pids = {"cn": cn.worker_pid(), "ep": ep.worker_pid(), "dynalite": dynalite.process.pid}
        self.pids.update({f"clients{i}": pid for i, pid in enumerate(fleet.pids)})

    def level(self, system, rate, warmup, window, label=""):
        out = os.path.join(self.workdir, "requests.json")
        config = dict(self.wpush if system == "connnode" else self.push, rate=rate, warmup=warmup,
                      duration=window, max_connections=MAX_CONNECTIONS, out=out, drain=10.0)
        summary, cpu, requests = run_load(config, self.pids, f"{NAME}-load", 60)
        ok = 201 if system == "connnode" else 200
        # Every frame of a success reaches its client within moments (the
        # node writes it before it answers; a stored one follows its notif).
        self.delivered += summary["ok_all"]
        deadline = time.monotonic() + 3.0
        while self.fleet.notifications() < self.delivered and time.monotonic() < deadline:
            time.sleep(0.05)
        arrivals, duplicates = self.fleet.arrivals(self.workdir)
        self.delivered = self.fleet.notifications()
        latencies, from_due, lost = frame_latencies(requests, arrivals, ok)
        p99 = percentile(latencies, 0.99)
        p99_due = percentile(from_due, 0.99)
        # From the due time: a load generator that had to wait for a free
        # connection (the server too slow) is not excused.
        sustained = (summary["ok_rate"] >= SUSTAINED_FRACTION * rate and p99_due is not None
                     and p99_due <= SUSTAINED_P99_MS and lost == 0)
        result = {"offered": rate, "window": summary["window"], "due": summary["due"],
                  "ok": summary["ok"], "ok_rate": summary["ok_rate"], "statuses": summary["statuses"],
                  "frames": len(latencies), "lost": lost, "duplicates": duplicates,
                  "p50_ms": percentile(latencies, 0.5), "p90_ms": percentile(latencies, 0.9),
                  "p99_ms": p99, "max_ms": latencies[-1] if latencies else None,
                  "p50_due_ms": percentile(from_due, 0.5), "p99_due_ms": p99_due,
                  "http_p50_ms": summary["http_p50_ms"], "http_p99_ms": summary["http_p99_ms"],
                  "lag_p99_ms": summary["lag_p99_ms"], "lag_max_ms": summary["lag_max_ms"],
                  "connections": summary["connections"], "max_in_flight": summary["max_in_flight"],
                  "unanswered": summary["unanswered"], "errors": summary["errors"],
                  "cpu": cpu, "sustained": sustained}
        # A load generator near a full core while the busiest server is not
        # would mean the load, not the server, was measured.
        busiest = max(cpu["cn"], cpu["ep"], cpu["dynalite"])
        result["load_bound"] = cpu["load"] >= 90 and busiest < 85
        print(f"   {label}{system:<8} {rate:>5} msg/s: {summary['ok_rate']:7.1f} ok/s, "
              f"p50 {fmt(result['p50_ms'])} p99 {fmt(p99)} ms, lost {lost}, "
              f"cpu cn {cpu['cn']:.0f} ep {cpu['ep']:.0f} ddb {cpu['dynalite']:.0f} "
              f"load {cpu['load']:.0f}%{'' if sustained else '  (not sustained)'}", flush=True)
        time.sleep(0.3)
        return result

    def ramp(self, system, first):
        """The maximal sustained rate, searched from ``first`` (200 msg/s):
        double the rate until a level is not sustained (or ``RAMP_MAX``
        passes), then bisect ``BISECT_STEPS`` times between the last level
        that passed and the first that did not (0 and 200 if 200 failed).
        The levels measured, by rate."""
        levels = {RATE: first}
        passed, failed = (RATE, None) if first["sustained"] else (0, RATE)
        rate = RATE
        while failed is None and rate < RAMP_MAX:
            rate = min(2 * rate, RAMP_MAX)
            levels[rate] = self.level(system, rate, RAMP_WARMUP, RAMP_WINDOW)
            passed, failed = (rate, None) if levels[rate]["sustained"] else (passed, rate)
        for _ in range(BISECT_STEPS):
            if failed is None:
                break
            rate = int(round((passed + failed) / 20.0)) * 10
            if rate in (passed, failed):
                break
            levels[rate] = self.level(system, rate, RAMP_WARMUP, RAMP_WINDOW)
            if levels[rate]["sustained"]:
                passed = rate
            else:
                failed = rate
        return levels, passed, failed


def fmt(value):
    return "-" if value is None else f"{value:.2f}"


# -- the benchmark ----------------------------------------------------------------------

def run(repeats=3):
    raise_nofile()
    dynalite = Dynalite().start()
    key = crypto_key()
    tables = table_names()
    ep_port = free_port()
    cn = ep = fleet = None
    samples = {system: [] for system in SYSTEMS}
    try:
        cn = ConnectionNode(dynalite, tables, key, log_name=f"{NAME}-cn",
                            endpoint_url=f"http://127.0.0.1:{ep_port}").start()
        ep = EndpointNode(dynalite, tables, key, port=ep_port, log_name=f"{NAME}-ep",
                          **NO_LIMITS).start()
        fleet = Subscribers(CLIENT_PROCESSES)
        started = time.monotonic()
        subscriptions = fleet.subscribe(cn.port, CLIENTS)
        subscribe_s = time.monotonic() - started
        with tempfile.TemporaryDirectory(prefix="bench-e2e-") as workdir:
            bench = Bench(dynalite, cn, ep, fleet, workdir, key, subscriptions)
            for repeat in range(repeats):
                order = SYSTEMS if repeat % 2 == 0 else SYSTEMS[::-1]
                if repeat == 0:
                    # Once, not measured: the first requests after start-up
                    # grow the pools and meet the workers' first full GC.
                    for system in SYSTEMS:
                        bench.level(system, RATE, 0.5, WARM_START, label="warm-up ")
                print(f"  repeat {repeat + 1}/{repeats}", flush=True)
                firsts = {system: bench.level(system, RATE, WARMUP, WINDOW) for system in order}
                for system in order:
                    levels, passed, failed = bench.ramp(system, firsts[system])
                    samples[system].append({
                        "levels": {str(rate): level for rate, level in levels.items()},
                        "max_sustained": passed, "first_failed": failed})
    finally:
        if fleet is not None:
            fleet.stop()
        if ep is not None:
            ep.kill()  # graceful shutdowns are not measured
        if cn is not None:
            cn.kill()
        dynalite.stop()
    return result(samples, repeats, subscribe_s)


def level_values(samples, system, rate, field):
    """``field`` at ``rate`` in each repeat that has it."""
    values = [s["levels"][str(rate)][field] for s in samples[system] if str(rate) in s["levels"]]
    return [v for v in values if v is not None]


def med(samples, system, rate, field):
    return median(level_values(samples, system, rate, field))


def pair(samples, system, rate, first, second):
    return (med(samples, system, rate, first), med(samples, system, rate, second))


def med_cpu(samples, system, rate, name):
    return median([s["levels"][str(rate)]["cpu"][name] for s in samples[system]
                   if str(rate) in s["levels"]])


def cpu_per_message(samples, system, worker, rate=None):
    """Median over the repeats of ``worker``'s CPU microseconds per answered
    message at ``rate``, or at each repeat's highest sustained rate."""
    values = []
    for sample in samples[system]:
        level = sample["levels"].get(str(rate if rate is not None else sample["max_sustained"]))
        if level and level["ok_rate"]:
            values.append(level["cpu"][worker] / 100.0 / level["ok_rate"] * 1e6)
    return median(values)


def info(metric, unit, value, baseline, target=None, met=None):
    """A table row; ``target`` is the issue's absolute figure, not a ratio."""
    if isinstance(value, tuple):
        r = [ratio(a, b) for a, b in zip(value, baseline)]
    else:
        r = ratio(value, baseline)
    return {"metric": metric, "unit": unit, "connnode": value, "baseline": baseline, "ratio": r,
            "target": target, "met": met}


def worst(samples, system, rate, field):
    return max(level_values(samples, system, rate, field), default=None)


def result(samples, repeats, subscribe_s):
    worst_p99 = worst(samples, "connnode", RATE, "p99_ms")
    rows = [
        info(f"frame latency p99, {RATE} msg/s", "ms", med(samples, "connnode", RATE, "p99_ms"),
             med(samples, "baseline", RATE, "p99_ms")),
        info(f"frame latency p99, {RATE} msg/s, worst repeat", "ms", worst_p99,
             worst(samples, "baseline", RATE, "p99_ms"), target=f"<= {TARGET_P99_MS:g} ms",
             met=worst_p99 is not None and worst_p99 <= TARGET_P99_MS),
        info(f"frame latency p50, {RATE} msg/s", "ms", med(samples, "connnode", RATE, "p50_ms"),
             med(samples, "baseline", RATE, "p50_ms")),
        info(f"frame p99 from due time, {RATE} msg/s", "ms", med(samples, "connnode", RATE, "p99_due_ms"),
             med(samples, "baseline", RATE, "p99_due_ms")),
        info(f"HTTP answer p50 / p99, {RATE} msg/s", "ms",
             pair(samples, "connnode", RATE, "http_p50_ms", "http_p99_ms"),
             pair(samples, "baseline", RATE, "http_p50_ms", "http_p99_ms")),
        info(f"answered 201 (EP) / 200 (CN) per s, {RATE} msg/s", "msg/s",
             med(samples, "connnode", RATE, "ok_rate"), med(samples, "baseline", RATE, "ok_rate")),
        info("max sustained rate (>=95% ok, p99 <= 100 ms)", "msg/s",
             median([s["max_sustained"] for s in samples["connnode"]]),
             median([s["max_sustained"] for s in samples["baseline"]])),
    ]
    for name, label in (("cn", "CN worker"), ("ep", "EP worker"), ("dynalite", "dynalite"),
                        ("load", "load generator")):
        rows.append(info(f"{label} CPU, {RATE} msg/s", "% core", med_cpu(samples, "connnode", RATE, name),
                         med_cpu(samples, "baseline", RATE, name)))
    # The performance issue's CPU ratio: the endpoint worker's CPU per
    # accepted POST against the connection worker's CPU per PUT /push (the
    # baseline side is the same node answering direct PUTs), at the common
    # rate and at each side's highest sustained rate.
    rows.append(info(f"CPU per message: EP per POST / CN per PUT, {RATE} msg/s", "us",
                     cpu_per_message(samples, "connnode", "ep", RATE),
                     cpu_per_message(samples, "baseline", "cn", RATE)))
    rows.append(info("CPU per message: EP per POST / CN per PUT, at max sustained", "us",
                     cpu_per_message(samples, "connnode", "ep"),
                     cpu_per_message(samples, "baseline", "cn")))
    lost = {system: sum(level["lost"] for s in samples[system] for level in s["levels"].values())
            for system in SYSTEMS}
    rows.append(info("frames missing after a 201/200, all levels", "msgs", lost["connnode"],
                     lost["baseline"]))
    rows.append(info("first rate not sustained", "msg/s",
                     median([s["first_failed"] for s in samples["connnode"] if s["first_failed"]]),
                     median([s["first_failed"] for s in samples["baseline"] if s["first_failed"]])))
    rates = sorted({int(rate) for system in SYSTEMS for s in samples[system] for rate in s["levels"]})
    # Latency at the other rates both sides were measured at (the rest is in
    # the samples and the plot).
    for rate in rates:
        if rate == RATE or any(med(samples, system, rate, "p99_ms") is None for system in SYSTEMS):
            continue
        rows.append(info(f"frame p50 / p99, {rate} msg/s", "ms",
                         pair(samples, "connnode", rate, "p50_ms", "p99_ms"),
                         pair(samples, "baseline", rate, "p50_ms", "p99_ms")))
    load_bound = any(level["load_bound"] for system in SYSTEMS for s in samples[system]
                     for level in s["levels"].values())
    out = {"name": NAME, "machine": machine(), "repeats": repeats, "rows": rows,
           "config": {"clients": CLIENTS, "client_processes": CLIENT_PROCESSES, "rate": RATE,
                      "warmup_s": WARMUP, "window_s": WINDOW, "warm_start_s": WARM_START,
                      "ramp_max": RAMP_MAX, "bisect_steps": BISECT_STEPS,
                      "ramp_warmup_s": RAMP_WARMUP, "ramp_window_s": RAMP_WINDOW,
                      "max_connections": MAX_CONNECTIONS, "sustained_fraction": SUSTAINED_FRACTION,
                      "sustained_p99_ms": SUSTAINED_P99_MS, "ttl": TTL, "body_bytes": BODY_BYTES,
                      "body": "http_ece aes128gcm, encrypted once",
                      "vapid": "vapid t=,k= (ES256), signed once",
                      "target_p99_ms": TARGET_P99_MS, "workers": {"cn": 1, "ep": 1}},
           "subscribe_s": round(subscribe_s, 2), "load_bound": load_bound, "samples": samples}
    out["plot"] = str(plot(samples, rates))
    return out


def plot(samples, rates):
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for system, colour, label in (("connnode", "tab:blue", "POST /wpush -> frame (EP + CN + dynalite)"),
                                  ("baseline", "tab:orange", "PUT /push -> frame (CN only)")):
        xs = [rate for rate in rates if med(samples, system, rate, "p99_ms") is not None]
        left.plot(xs, [med(samples, system, rate, "p99_ms") for rate in xs], "o-", color=colour,
                  label=f"p99, {label}")
        left.plot(xs, [med(samples, system, rate, "p50_ms") for rate in xs], "s--", color=colour,
                  label=f"p50, {label}")
        right.plot(xs, [med(samples, system, rate, "ok_rate") for rate in xs], "o-", color=colour,
                   label=label)
        # every repeat's p99, to show the spread behind the medians
        points = [(int(rate), level["p99_ms"]) for s in samples[system]
                  for rate, level in s["levels"].items() if level["p99_ms"] is not None]
        left.plot([x for x, _ in points], [y for _, y in points], "x", color=colour, alpha=0.5,
                  markersize=5)
    left.axhline(TARGET_P99_MS, color="grey", linestyle=":",
                 label=f"target p99 {TARGET_P99_MS:g} ms at {RATE}/s")
    left.set(xlabel="offered rate (msg/s, log)", ylabel="frame latency (ms, log)", yscale="log",
             xscale="log", title="frame latency (medians; x: each repeat's p99)")
    low, top = (min(rates), max(rates)) if rates else (RATE, RATE)
    right.plot([low, top], [low, top], ":", color="grey", label="offered")
    right.set(xlabel="offered rate (msg/s, log)", ylabel="answered 201 / 200 per s (log)",
              xscale="log", yscale="log", title="achieved vs offered (1 + 1 workers, 1,000 clients)")
    return save_plot(plt, fig, (left, right), NAME, grid_which="both", legend_size=7)
