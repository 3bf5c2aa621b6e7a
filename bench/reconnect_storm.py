"""reconnect-storm: 5,000 known clients reconnect at once; the time until every
one has its hello reply and its stored message.

Set-up (once): ``seed_db`` writes 5,000 users with the storage layer: a router
record naming the connection node's router URL (connected one minute ago), a
channel row, and one stored timestamped message each. The node keeps the same
ports in every repeat, so the records name it: this is a node restarted in
place, and no hello has an old node to evict.

Per repeat: a fresh connection node (gunicorn, one worker); 4 client
processes open all 5,000 connections at the same instant; each sends hello
with its uaid and waits for the hello reply and the notification. Clients do
not ack, so every repeat finds the same stored messages. Figure: seconds from
the start to the last client done (and the median client).

Baseline: ``baseline_db storm`` in its own process against the same dynalite:
5,000 greenlets spawned at once, each making the storage calls of a resumed
hello (the conditional UpdateItem of ``resume_user`` and the check's one
Query). Target: connection node <= 1.25x the baseline.
"""
import os
import tempfile
import time

from bench.common import (ConnectionNode, Dynalite, Fleet, crypto_key, free_port, free_port_block,
                          machine, median, percentile, save_plot, pyplot, raise_nofile, row,
                          run_script, table_names)

NAME = "reconnect-storm"
CLIENTS = 5000
CLIENT_PROCESSES = 4
START_DELAY = 0.5


def storm_connnode(cn, fleet, uaids):
    shares = fleet.split(len(uaids))
    parts, at = [], time.monotonic() + START_DELAY
    offset = 0
    for share in shares:
        parts.append(uaids[offset:offset + share])
        offset += share
    answers = fleet.all([{"cmd": "storm", "host": "127.0.0.1", "port": cn.port, "uaids": part,
                          "at": at, "expect": 1, "timeout": 120.0} for part in parts], timeout=200)
    done = sorted(t for a in answers for t in a["done"])
    hello = sorted(t for a in answers for t in a["hello"])
    failed = sum(a["failed"] for a in answers)
    changed = sum(a["uaid_changed"] for a in answers)
    errors = [e for a in answers for e in a["errors"]][:5]
    cn.kill()  # its graceful shutdown is not measured
    fleet.close_all(timeout=60.0)
    return {"done": done, "hello": hello, "failed": failed, "uaid_changed": changed,
            "errors": errors, "makespan": done[-1] if done else None,
            "hello_makespan": hello[-1] if hello else None, "p50": percentile(done, 0.5)}


def storm_baseline(db):
    result = run_script("baseline_db", "storm", __import__("json").dumps(db),
                        timeout=300, log_name=f"{NAME}-baseline")
    done = sorted(result["done"])
    return {"done": done, "failed": result["failed"], "errors": result["errors"],
            "makespan": done[-1] if done else None, "p50": percentile(done, 0.5)}


def run(repeats=3):
    import json

    raise_nofile()
    dynalite = Dynalite().start()
    key = crypto_key()
    tables = table_names()
    port, router_port = free_port(), free_port_block(2)
    node_id = f"http://127.0.0.1:{router_port}"
    fleet = None
    samples = {"connnode": [], "baseline": []}
    try:
        with tempfile.TemporaryDirectory(prefix="bench-storm-") as workdir:
            uaids_file = os.path.join(workdir, "uaids.json")
            db = {"endpoint": dynalite.endpoint, "router": tables["router"],
                  "message": tables["message"], "key": key, "node_id": node_id}
            seeded = run_script("seed_db", json.dumps(dict(db, users=CLIENTS, messages=1,
                                                           out=uaids_file, create=True)),
                                timeout=300, log_name=f"{NAME}-seed")
            with open(uaids_file) as handle:
                uaids = json.load(handle)
            db["uaids"] = uaids_file
            fleet = Fleet(CLIENT_PROCESSES)
            for repeat in range(repeats):
                cn = ConnectionNode(dynalite, tables, key, log_name=f"{NAME}-cn", port=port,
                                    router_port=router_port).start()
                try:
                    time.sleep(0.5)
                    samples["connnode"].append(storm_connnode(cn, fleet, uaids))
                finally:
                    cn.kill()
                samples["baseline"].append(storm_baseline(db))
    finally:
        if fleet is not None:
            fleet.stop()
        dynalite.stop()

    def med(system, field):
        """Median over the repeats in which every client got through."""
        values = [s[field] for s in samples[system] if s[field] is not None and not s["failed"]]
        return median(values) if values else None

    rows = [
        row(f"all {CLIENTS:,} done (hello + message)", "s", med("connnode", "makespan"),
            med("baseline", "makespan"), target=1.25, better="lower"),
        row("median client done", "s", med("connnode", "p50"), med("baseline", "p50")),
        row("all hello replies (no baseline)", "s", med("connnode", "hello_makespan"), None),
        row("clients that failed, all repeats", "clients",
            sum(s["failed"] for s in samples["connnode"]),
            sum(s["failed"] for s in samples["baseline"])),
    ]
    failures = {system: [s["failed"] for s in samples[system]] for system in samples}
    result = {"name": NAME, "machine": machine(), "repeats": repeats, "rows": rows,
              "config": {"clients": CLIENTS, "client_processes": CLIENT_PROCESSES,
                         "seed_seconds": seeded["elapsed"]},
              "failures": failures,
              "uaid_changed": [s["uaid_changed"] for s in samples["connnode"]],
              "errors": {system: [e for s in samples[system] for e in s["errors"]][:5]
                         for system in samples},
              "samples": {system: [{k: v for k, v in s.items() if k not in ("done", "hello")}
                                   for s in samples[system]] for system in samples}}
    result["plot"] = str(plot(samples))
    return result


def plot(samples):
    plt = pyplot()
    fig, axis = plt.subplots(figsize=(7, 4))
    colours = {"connnode": "C0", "baseline": "C1"}
    labels = {"connnode": "connection node", "baseline": "bare calls of a hello (UpdateItem + Query)"}
    for system in ("connnode", "baseline"):
        for i, sample in enumerate(samples[system]):
            done = sample["done"]
            if not done:
                continue
            axis.plot(done, [(k + 1) for k in range(len(done))], color=colours[system],
                      alpha=0.8, label=labels[system] if i == 0 else None)
    axis.set(xlabel="seconds since the storm began", ylabel="clients done",
             title=f"reconnect storm: {CLIENTS:,} clients (each repeat one line)")
    return save_plot(plt, fig, (axis,), NAME)
