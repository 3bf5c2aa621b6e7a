"""cpu-ratio: the performance issue's headline figure, exactly as defined:
CPU of the endpoint node's worker per accepted ``POST /wpush`` at
saturation, divided by CPU of the connection node's worker per ``PUT
/push`` at saturation, in the same run with the same clients.

Set-up (once): an in-memory dynalite; the connection node
(``gunicorn.conf.py``, one worker); two endpoint nodes
(``conf/endpoint.gunicorn.conf.py``, one worker each), one with
``durable_direct`` at its default (on), one with ``durable_direct`` false
(``CONNNODE_DURABLE_DIRECT``); only the one under load does any work, so
both stay up instead of restarting one per variant. Their rate limits are
raised out of reach (``rate_limit_*_rate`` and ``_burst`` 1,000,000: the
buckets are still kept and charged, nothing is refused; every request
comes from 127.0.0.1 and the defaults would refuse 1,000 POSTs/s).
2 client processes (this module run as ``python -m bench.cpu_ratio
--client-process``: ``bench.e2e_clients`` whose ``subscribe`` also
registers a second channel with ``key``) hold 500 clients; each says hello,
registers a channel without key (a v1 endpoint) and one with the
application server's public key (PROTOCOL 2.5, base64url of the
uncompressed P-256 point: a v2 endpoint). Every client acks every
notification (one ack frame per received burst).

Load (``bench.wpushload`` with ``closed: true``, a process of its own per
phase): 64 keep-alive connections, each with one request in flight, back to
back, no pacing; 1 s warm-up, then a 3 s measured window. Request i goes to
subscription i mod 500 (shuffled). Phases:

* ``put`` (the denominator): ``PUT /push/<uaid>`` straight to the router
  port, with the body the endpoint would build (a fresh message id each,
  made before the phase; ttl 60; the same encrypted data; no
  ``stored_in``), to the clients' v1 channels;
* ``v1``: ``POST /wpush/v1/<token>``, aes128gcm body (200 bytes, encrypted
  once with ``http_ece``), ``TTL: 60``, no ``Authorization``, durable on;
* ``v1-nondurable``: the same to the endpoint node with durable off;
* ``vapid-v2``: ``POST /wpush/v2/<token>`` to the v2 channels with
  ``Authorization: vapid t=<JWT>,k=<key>`` (ES256, signed once, reused; the
  endpoint verifies it on every request), durable on.

Per phase, over the measured window: utime + stime (``/proc/<pid>/stat``)
of the EP worker, the CN worker, dynalite, the load generator and the client
processes; successes answered in the window (201 / 200); CPU microseconds
per success of each. Delivery: every success of the phase must reach its
client (the frames counted against the successes, and the message ids of
the window's successes matched with the frames' ``version``: ``missing``).

Once after set-up, not measured: each phase for 2 s. Per repeat (3 by
default; the order of the phases rotates): the four phases. Rows: per
variant, EP us per POST (connnode column), CN us per PUT of the same
repeat's ``put`` phase (baseline), their ratio against the issue's target
(6.0, 4.0 with durable off, 7.0 with VAPID); then, informational, POST/s
against PUT/s, the CN worker's and dynalite's us per POST (the CN answers
the EP's PUT, the ack and, with durable, the batched delete), the load
generator's CPU (a saturated generator would be the bottleneck) and frames
missing.

Left out: TLS, a real network, DynamoDB's own latency and CPU (dynalite
answers from memory on this machine, its CPU shown per message), more than
one worker per node (the ``scaling`` benchmark).

Small runs: ``CPU_RATIO_WARMUP`` / ``CPU_RATIO_WINDOW`` (seconds) and
``CPU_RATIO_CLIENTS`` shorten or shrink it, e.g.
``CPU_RATIO_WINDOW=1.5 python -m bench.run cpu-ratio --repeats 1``.
"""
import asyncio
import base64
import json
import os
import random
import sys
import tempfile
import time
from urllib.parse import urlsplit

from bench.common import (ConnectionNode, Dynalite, crypto_key, free_port,
                          machine, median, percentile, pyplot, raise_nofile, row, save_plot,
                          table_names)
from bench.end_to_end import (NO_LIMITS, EndpointNode, SubscriberProcess, Subscribers, b64url,
                              encrypted_body, frame_latencies, raw_public_key, run_load)

NAME = "cpu-ratio"
CLIENTS = int(os.environ.get("CPU_RATIO_CLIENTS", "500"))
CLIENT_PROCESSES = 2
CONNECTIONS = 64
WARMUP = float(os.environ.get("CPU_RATIO_WARMUP", "1.0"))
WINDOW = float(os.environ.get("CPU_RATIO_WINDOW", "3.0"))
WARM_START = 2.0
#: Bound of message ids made for a ``put`` phase: this rate times its length.
PUT_MAX_RATE = 12000
TTL = 60
LOAD_BOUND_PERCENT = 90
#: (phase, endpoint node, label, target ratio)
VARIANTS = (("v1", "durable", "v1, durable on", 6.0),
            ("v1-nondurable", "nondurable", "v1, durable off", 4.0),
            ("vapid-v2", "durable", "VAPID v2, durable on", 7.0))
PHASES = ("put",) + tuple(variant[0] for variant in VARIANTS)


# -- the application server's VAPID key ------------------------------------------------

def application_server_key():
    from cryptography.hazmat.primitives.asymmetric import ec
    return ec.generate_private_key(ec.SECP256R1())


def vapid_header(private_key, audience, lifetime=12 * 3600, sub="mailto:bench@example.com"):
    """``vapid t=<JWT>,k=<key>`` signed once with ``private_key`` (ES256)."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

    header = b64url(json.dumps({"typ": "JWT", "alg": "ES256"}, separators=(",", ":")).encode())
    claims = b64url(json.dumps({"aud": audience, "exp": int(time.time()) + lifetime, "sub": sub},
                               separators=(",", ":")).encode())
    signing_input = f"{header}.{claims}"
    r, s = decode_dss_signature(private_key.sign(signing_input.encode("ascii"),
                                                 ec.ECDSA(hashes.SHA256())))
    signature = b64url(r.to_bytes(32, "big") + s.to_bytes(32, "big"))
    return f"vapid t={signing_input}.{signature},k={b64url(raw_public_key(private_key))}"


# -- the client processes -----------------------------------------------------------------

def keyed_clients():
    """``bench.e2e_clients`` whose ``subscribe`` takes ``key``: each client
    then registers a second channel with it (a v2 endpoint) and reports
    ``[uaid, chid, endpoint, chid2, endpoint2]``."""
    import uuid

    from bench.clients import hello_and_register
    from bench.e2e_clients import EndToEndClients
    from bench.wsclient import connect

    class KeyedClients(EndToEndClients):
        key = None

        async def _subscribe_one(self, host, port, timeout):
            conn = await connect(host, port, timeout=timeout)
            user = list(await hello_and_register(conn, None, True, timeout))
            if self.key:
                chid = str(uuid.uuid4())
                try:
                    conn.send_text(json.dumps({"messageType": "register", "channelID": chid,
                                               "key": self.key}))
                    while True:
                        answer = json.loads(await asyncio.wait_for(conn.recv(), timeout))
                        if answer.get("messageType") == "register":
                            break
                    if answer.get("status") != 200 or "/v2/" not in answer.get("pushEndpoint", ""):
                        raise RuntimeError(f"register with key failed: {answer}")
                except BaseException:
                    conn.abort()
                    raise
                user += [chid, answer["pushEndpoint"]]
            conn.user = user
            conn.on_text = self._on_frame
            return conn

        async def cmd_subscribe(self, host, port, count, concurrency=100, timeout=120.0,
                                key=None):
            self.key = key
            return await super().cmd_subscribe(host, port, count, concurrency, timeout)

    return KeyedClients()


class KeyedProcess(SubscriberProcess):
    module = "bench.cpu_ratio"
    args = ("--client-process",)
    log_name = f"{NAME}-clients"


class KeyedSubscribers(Subscribers):
    def __init__(self, processes, process_class=KeyedProcess):  # noqa: D107
        self.procs = [process_class() for _ in range(processes)]
        self.duplicates = 0

    def subscribe(self, port, count, timeout=180.0, key=None):
        extra = {"key": key} if key else {}
        answers = self.all([{"cmd": "subscribe", "host": "127.0.0.1", "port": port,
                             "count": share, "timeout": min(timeout, 120.0), **extra}
                            if share else None for share in self.split(count)], timeout)
        failed = sum(a["failed"] for a in answers)
        if failed:
            errors = [e for a in answers for e in a["errors"]]
            raise RuntimeError(f"{failed} of {count} clients failed to subscribe: {errors[:3]}")
        return [sub for a in answers for sub in a["subscriptions"]]


# -- one closed-loop phase (shared with bench.scaling) -------------------------------------

def closed_phase(load_config, pids, fleet, workdir, warmup, window, ok_status, log_name,
                 per_message=()):
    """Run ``bench.wpushload`` closed loop with ``load_config``; CPU of
    ``pids`` (and the load) over the measured window, successes, delivery
    (frames counted and matched by message id), frame latency. ``fleet``
    must be a ``Subscribers`` (e2e clients, acking). ``per_message``: the
    names of ``pids`` (or sums: name -> list of names) whose CPU us per
    success is computed."""
    out = os.path.join(workdir, "requests.json")
    config = dict(load_config, closed=True, warmup=warmup, duration=window, out=out, drain=10.0)
    before = fleet.notifications()
    summary, cpu, requests = run_load(config, pids, log_name, 120)
    # The frame of every success arrives within moments (the CN writes it
    # before it answers the PUT).
    deadline = time.monotonic() + 3.0
    while fleet.notifications() < before + summary["ok_all"] and time.monotonic() < deadline:
        time.sleep(0.05)
    arrivals, duplicates = fleet.arrivals(workdir)
    frames = fleet.notifications() - before
    new_duplicates, fleet.duplicates = duplicates - getattr(fleet, "duplicates", 0), duplicates
    latencies, _, missing = frame_latencies(requests, arrivals, ok_status)
    ok_rate = summary["ok_rate"]
    us = {}
    for name in per_message:
        members = per_message[name] if isinstance(per_message, dict) else [name]
        total = sum(cpu[member] for member in members)
        us[name] = total / 100.0 / ok_rate * 1e6 if ok_rate else None
    others = {key: value for key, value in summary["statuses"].items() if key != str(ok_status)}
    return {"ok_rate": ok_rate, "ok": summary["ok"], "ok_all": summary["ok_all"],
            "frames": frames, "frames_short": max(0, summary["ok_all"] - frames),
            "missing": missing, "duplicates": new_duplicates, "other_statuses": others,
            "errors": summary["errors"], "unanswered": summary["unanswered"],
            "exhausted": summary["exhausted"], "connections": summary["connections"],
            "max_in_flight": summary["max_in_flight"],
            "http_p50_ms": summary["http_p50_ms"], "http_p99_ms": summary["http_p99_ms"],
            "p50_ms": percentile(latencies, 0.5), "p99_ms": percentile(latencies, 0.99),
            "cpu": cpu, "load_cpu_own": summary["cpu_percent"], "us_per_message": us}


# -- the benchmark ---------------------------------------------------------------------------

class Bench:
    def __init__(self, dynalite, cn, eps, fleet, workdir, key, subscriptions, app_key):
        self.cn, self.eps, self.fleet, self.workdir = cn, eps, fleet, workdir
        order = list(range(len(subscriptions)))
        random.Random(1).shuffle(order)
        subs = [subscriptions[i] for i in order]
        files = {"put": [[uaid, chid] for uaid, chid, *_ in subs],
                 "v1": [urlsplit(sub[2]).path for sub in subs],
                 "v2": [urlsplit(sub[4]).path for sub in subs]}
        paths = {}
        for name, data in files.items():
            paths[name] = os.path.join(workdir, f"targets-{name}.json")
            with open(paths[name], "w") as handle:
                json.dump(data, handle)
        body = encrypted_body()
        headers = {"TTL": str(TTL), "Content-Encoding": "aes128gcm",
                   "Content-Type": "application/octet-stream"}
        body_b64 = base64.b64encode(body).decode("ascii")
        durable, nondurable = eps["durable"], eps["nondurable"]
        self.loads = {
            "put": {"mode": "push", "port": cn.router_port, "targets": paths["put"], "key": key,
                    "ttl": TTL, "data": b64url(body), "encoding": "aes128gcm"},
            "v1": {"mode": "wpush", "port": durable.port, "targets": paths["v1"],
                   "body_b64": body_b64, "headers": headers},
            "v1-nondurable": {"mode": "wpush", "port": nondurable.port, "targets": paths["v1"],
                              "body_b64": body_b64, "headers": headers},
            "vapid-v2": {"mode": "wpush", "port": durable.port, "targets": paths["v2"],
                         "body_b64": body_b64,
                         "headers": dict(headers,
                                         Authorization=vapid_header(app_key, durable.url))},
        }
        self.ep_of = {"put": "durable", **{phase: ep for phase, ep, _, _ in VARIANTS}}
        self.pids = {"cn": cn.worker_pid(), "ep-durable": durable.worker_pid(),
                     "ep-nondurable": nondurable.worker_pid(), "dynalite": dynalite.process.pid}
        self.pids.update({f"clients{i}": pid for i, pid in enumerate(fleet.pids)})

    def phase(self, name, warmup, window, label=""):
        config = dict(self.loads[name], max_connections=CONNECTIONS)
        if name == "put":
            config["max_requests"] = int(PUT_MAX_RATE * (warmup + window))
        ep = f"ep-{self.ep_of[name]}"
        pids = dict(self.pids)
        pids["ep"] = pids.pop(ep)
        result = closed_phase(config, pids, self.fleet, self.workdir, warmup, window,
                              200 if name == "put" else 201, f"{NAME}-load",
                              per_message=("ep", "cn", "dynalite", "load"))
        result["load_bound"] = (result["cpu"]["load"] >= LOAD_BOUND_PERCENT
                                and max(result["cpu"]["cn"], result["cpu"]["ep"]) < 85)
        us = result["us_per_message"]
        print(f"   {label}{name:<14} {result['ok_rate']:7.0f}/s  us/msg: ep {fmt(us['ep'])} "
              f"cn {fmt(us['cn'])} ddb {fmt(us['dynalite'])} | cpu% ep {result['cpu']['ep']:.0f} "
              f"cn {result['cpu']['cn']:.0f} ddb {result['cpu']['dynalite']:.0f} "
              f"load {result['cpu']['load']:.0f} | missing {result['missing']}"
              f"{' other ' + json.dumps(result['other_statuses']) if result['other_statuses'] else ''}"
              f"{'  EXHAUSTED' if result['exhausted'] else ''}", flush=True)
        time.sleep(0.3)
        return result


def fmt(value):
    return "-" if value is None else f"{value:.0f}"


def run(repeats=3):
    raise_nofile()
    started = time.monotonic()
    dynalite = Dynalite().start()
    key = crypto_key()
    tables = table_names()
    ports = {"durable": free_port(), "nondurable": free_port()}
    cn, eps, fleet = None, {}, None
    samples = []
    try:
        cn = ConnectionNode(dynalite, tables, key, log_name=f"{NAME}-cn",
                            endpoint_url=f"http://127.0.0.1:{ports['durable']}").start()
        eps["durable"] = EndpointNode(dynalite, tables, key, port=ports["durable"],
                                      log_name=f"{NAME}-ep", **NO_LIMITS).start()
        eps["nondurable"] = EndpointNode(dynalite, tables, key, port=ports["nondurable"],
                                         log_name=f"{NAME}-ep-nondurable", durable_direct=False,
                                         **NO_LIMITS).start()
        fleet = KeyedSubscribers(CLIENT_PROCESSES)
        app_key = application_server_key()
        t0 = time.monotonic()
        subscriptions = fleet.subscribe(cn.port, CLIENTS, key=b64url(raw_public_key(app_key)))
        subscribe_s = time.monotonic() - t0
        with tempfile.TemporaryDirectory(prefix="bench-cpu-ratio-") as workdir:
            bench = Bench(dynalite, cn, eps, fleet, workdir, key, subscriptions, app_key)
            for name in PHASES:  # once, not measured: pools, first full GCs
                bench.phase(name, 0.5, WARM_START - 0.5, label="warm-up ")
            for repeat in range(repeats):
                print(f"  repeat {repeat + 1}/{repeats}", flush=True)
                order = PHASES[repeat % len(PHASES):] + PHASES[:repeat % len(PHASES)]
                samples.append({name: bench.phase(name, WARMUP, WINDOW) for name in order})
    finally:
        if fleet is not None:
            fleet.stop()
        for ep in eps.values():
            ep.kill()  # graceful shutdowns are not measured
        if cn is not None:
            cn.kill()
        dynalite.stop()
    return result(samples, repeats, subscribe_s, time.monotonic() - started)


def med(samples, phase, path):
    values = []
    for sample in samples:
        value = sample[phase]
        for part in path:
            value = value[part] if value is not None else None
        if value is not None:
            values.append(value)
    return median(values)


def info(metric, unit, value, baseline):
    return row(metric, unit, value, baseline)


def result(samples, repeats, subscribe_s, elapsed):
    rows = []
    put_cn = med(samples, "put", ("us_per_message", "cn"))
    ratios = {}
    for phase, _, label, target in VARIANTS:
        ep_us = med(samples, phase, ("us_per_message", "ep"))
        rows.append(row(f"{label}: EP us/POST / CN us/PUT", "us", ep_us, put_cn, target=target,
                        better="lower"))
        # Each repeat's own ratio, for the spread (the row is median / median).
        ratios[phase] = [s[phase]["us_per_message"]["ep"] / s["put"]["us_per_message"]["cn"]
                         for s in samples if s[phase]["us_per_message"]["ep"]
                         and s["put"]["us_per_message"]["cn"]]
    for phase, _, label, _ in VARIANTS:
        rows.append(info(f"{label}: POST/s vs PUT/s, {CONNECTIONS} in flight", "msg/s",
                         med(samples, phase, ("ok_rate",)), med(samples, "put", ("ok_rate",))))
    for phase, _, label, _ in VARIANTS:
        # baseline: the CN's us per PUT (dynalite has next to nothing to do
        # for a PUT: no ratio for it)
        rows.append(info(f"{label}: CN / dynalite us per POST", "us",
                         (med(samples, phase, ("us_per_message", "cn")),
                          med(samples, phase, ("us_per_message", "dynalite"))),
                         (put_cn, None)))
    rows.append(info("load generator CPU, busiest POST phase vs PUT", "% core",
                     max(med(samples, phase, ("cpu", "load")) or 0 for phase, *_ in VARIANTS),
                     med(samples, "put", ("cpu", "load"))))
    rows.append(info("frames missing after a 201 / 200, all phases", "msgs",
                     sum(s[phase]["missing"] + s[phase]["frames_short"]
                         for s in samples for phase, *_ in VARIANTS),
                     sum(s["put"]["missing"] + s["put"]["frames_short"] for s in samples)))
    rows.append(info("answers other than 201 / 200, all phases", "reqs",
                     sum(sum(s[phase]["other_statuses"].values()) for s in samples
                         for phase, *_ in VARIANTS),
                     sum(sum(s["put"]["other_statuses"].values()) for s in samples)))
    load_bound = any(s[phase]["load_bound"] for s in samples for phase in PHASES)
    exhausted = any(s[phase]["exhausted"] for s in samples for phase in PHASES)
    out = {"name": NAME, "machine": machine(), "repeats": repeats, "rows": rows,
           "config": {"clients": CLIENTS, "client_processes": CLIENT_PROCESSES,
                      "connections": CONNECTIONS, "closed_loop": True, "warmup_s": WARMUP,
                      "window_s": WINDOW, "warm_start_s": WARM_START, "ttl": TTL,
                      "body": "http_ece aes128gcm, 200 bytes, encrypted once",
                      "vapid": "vapid t=,k= (ES256), signed once, v2 endpoints",
                      "rate_limits": "raised to 1,000,000/s (kept, never refusing)",
                      "workers": {"cn": 1, "ep": 1},
                      "targets": {phase: target for phase, _, _, target in VARIANTS}},
           "ratios_per_repeat": ratios, "subscribe_s": round(subscribe_s, 2),
           "load_bound": load_bound, "put_ids_exhausted": exhausted,
           "setup_and_run_s": round(elapsed, 1), "samples": samples}
    out["plot"] = str(plot(samples))
    return out


def plot(samples):
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    labels = ["PUT /push\n(CN only)"] + [label.replace(", ", "\n") for _, _, label, _ in VARIANTS]
    phases = PHASES
    bottom = [0.0] * len(phases)
    for name, colour, title in (("ep", "tab:blue", "EP worker"), ("cn", "tab:orange", "CN worker"),
                                ("dynalite", "tab:green", "dynalite")):
        values = [0.0 if phase == "put" and name == "ep"
                  else (med(samples, phase, ("us_per_message", name)) or 0.0) for phase in phases]
        left.bar(labels, values, bottom=bottom, color=colour, label=title)
        bottom = [a + b for a, b in zip(bottom, values)]
    left.set(ylabel="CPU us per answered message", title="CPU per message at saturation (medians)")
    left.tick_params(axis="x", labelsize=7)
    put_cn = med(samples, "put", ("us_per_message", "cn")) or 0.0
    xs = [label for label in labels[1:]]
    ratios = [(med(samples, phase, ("us_per_message", "ep")) or 0.0) / put_cn if put_cn else 0.0
              for phase, *_ in VARIANTS]
    right.bar(xs, ratios, color="tab:blue", label="EP us/POST / CN us/PUT")
    right.plot(xs, [target for *_, target in VARIANTS], "_", color="red", markersize=40,
               markeredgewidth=2, label="target")
    right.set(ylabel="ratio", title="the issue's CPU ratio")
    right.tick_params(axis="x", labelsize=7)
    return save_plot(plt, fig, (left, right), NAME, legend_size=7)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv == ["--client-process"]:
        from bench.clients import serve_commands
        asyncio.run(serve_commands(keyed_clients()))
        return
    from bench.run import table
    out = run(int(argv[0]) if argv else 1)
    print(table(out))


if __name__ == "__main__":
    main()
