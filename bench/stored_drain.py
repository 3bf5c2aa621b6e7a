"""stored-drain: 1,000 stored messages of one client delivered and acked.

Set-up: ``seed_db`` stores, for each repeat and each side, one user with
1,000 timestamped messages (the storage layer's items; router record naming
the node). The connection node runs with ``msg_limit`` 10,000: at the
default (100) the protocol resets a user whose drain passes 100 messages
(PROTOCOL 8.3), so 1,000 could never be delivered.

Per repeat: a fresh connection node (gunicorn, one worker); one client (in a
client process) says hello with the user's uaid and acks what has arrived
each time a read from its socket ends (one ack frame per received burst, so
per batch as it arrives; the node then writes the cursor and fetches the next
batch of 10). Figure: messages/s = 1,000 / seconds from sending hello to the
last message.

Baseline: ``baseline_db drain``, its own process, same dynalite: one
greenlet makes the storage calls the drain needs (the topic-phase Query,
then for each batch of 10 a timestamp-phase Query and the cursor
UpdateItem); messages/s = 1,000 / seconds to the last batch fetched.
Target (issue 11): the connection node at least 1.0x the baseline.
"""
import json
import os
import tempfile

from bench.common import (ConnectionNode, Dynalite, Fleet, crypto_key, free_port, free_port_block,
                          machine, median, save_plot, pyplot, raise_nofile, row, run_script,
                          table_names)

NAME = "stored-drain"
MESSAGES = 1000
MSG_LIMIT = 10000


def run(repeats=3):
    raise_nofile()
    dynalite = Dynalite().start()
    key = crypto_key()
    tables = table_names()
    port, router_port = free_port(), free_port_block(2)
    node_id = f"http://127.0.0.1:{router_port}"
    samples = {"connnode": [], "baseline": []}
    fleet = None
    try:
        with tempfile.TemporaryDirectory(prefix="bench-drain-") as workdir:
            uaids_file = os.path.join(workdir, "uaids.json")
            db = {"endpoint": dynalite.endpoint, "router": tables["router"],
                  "message": tables["message"], "key": key, "node_id": node_id}
            run_script("seed_db", json.dumps(dict(db, users=2 * repeats, messages=MESSAGES,
                                                  out=uaids_file, create=True)),
                       timeout=300, log_name=f"{NAME}-seed")
            with open(uaids_file) as handle:
                uaids = json.load(handle)
            fleet = Fleet(1)
            for repeat in range(repeats):
                cn = ConnectionNode(dynalite, tables, key, log_name=f"{NAME}-cn", port=port,
                                    router_port=router_port, msg_limit=MSG_LIMIT).start()
                try:
                    answer, = fleet.same({"cmd": "drain", "host": "127.0.0.1", "port": cn.port,
                                          "uaid": uaids[2 * repeat], "expect": MESSAGES,
                                          "timeout": 60.0}, timeout=90)
                    fleet.close_all()
                finally:
                    cn.stop()
                times = answer["times"]
                samples["connnode"].append({
                    "received": len(times), "hello_s": answer["hello"], "acks": answer["acks"],
                    "last_s": times[-1] if times else None, "times": times,
                    "rate": len(times) / times[-1] if len(times) == MESSAGES else None})
                result = run_script("baseline_db", "drain",
                                    json.dumps(dict(db, uaid=uaids[2 * repeat + 1])),
                                    timeout=120, log_name=f"{NAME}-baseline")
                times = result["times"]
                samples["baseline"].append({
                    "received": len(times), "calls": result["calls"], "times": times,
                    "last_s": times[-1] if times else None,
                    "rate": len(times) / times[-1] if len(times) == MESSAGES else None})
    finally:
        if fleet is not None:
            fleet.stop()
        dynalite.stop()

    def med(system, field):
        values = [s[field] for s in samples[system] if s[field] is not None]
        return median(values) if values else None

    rows = [
        row(f"{MESSAGES:,} stored messages drained", "msg/s", med("connnode", "rate"),
            med("baseline", "rate"), target=1.0, better="higher"),
        row("time to the last message", "s", med("connnode", "last_s"), med("baseline", "last_s")),
        row("hello reply (no baseline)", "s", med("connnode", "hello_s"), None),
    ]
    result = {"name": NAME, "machine": machine(), "repeats": repeats, "rows": rows,
              "config": {"messages": MESSAGES, "msg_limit": MSG_LIMIT, "fetch_limit": 10},
              "incomplete": [s["received"] for system in samples for s in samples[system]
                             if s["received"] != MESSAGES],
              "samples": {system: [{k: v for k, v in s.items() if k != "times"}
                                   for s in samples[system]] for system in samples}}
    result["plot"] = str(plot(samples))
    return result


def plot(samples):
    plt = pyplot()
    fig, axis = plt.subplots(figsize=(7, 4))
    labels = {"connnode": "connection node (delivered + acked)",
              "baseline": "baseline (bare Query + cursor UpdateItem)"}
    for system, colour in (("connnode", "C0"), ("baseline", "C1")):
        for i, sample in enumerate(samples[system]):
            times = sample["times"]
            axis.plot(times, range(1, len(times) + 1), color=colour, alpha=0.8,
                      label=labels[system] if i == 0 else None)
    axis.set(xlabel="seconds", ylabel="messages", title=f"draining {MESSAGES:,} stored messages")
    return save_plot(plt, fig, (axis,), NAME)
