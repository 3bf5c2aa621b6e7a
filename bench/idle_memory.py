"""idle-memory: RSS growth of the connection-node worker per idle client.

Per repeat, a fresh connection node (gunicorn, one worker, in-memory
dynalite): read the worker's VmRSS (the worker is the gunicorn master's
child), then ramp up to 1,000, 5,000 and 15,000 clients from 4 client
processes; each client says hello, registers one channel and then stays idle
(it answers pings). At each level, once every client has its register reply,
VmRSS is polled until it is stable (3 readings 0.5 s apart within 256 KB,
at most 20 s) and the growth over the start-up reading is divided by the
number of clients. Then the node is killed (its graceful shutdown of 15,000
sessions is not measured and would take ~17 s) and the clients let go.

Baseline: ``baseline_server`` (a bare gevent StreamServer, its own process)
holding the same number of sockets after a hand-made WebSocket handshake, with
the same client script (it gives canned hello/register answers). Target:
connection node <= 1.1x the baseline per client.

Subscribed (issue 15): the same ramp against a third fresh connection node
whose ``megaphone_api_url`` points at a Megaphone stand-in (``common.Megaphone``,
an HTTP server in a thread of the driver answering ``{"code": 200,
"broadcasts": {"remote-settings/monitor_changes": "v1"}}``; poll interval
1 s, ``megaphone_api_token`` set), every client's hello carrying
``"broadcasts": {"remote-settings/monitor_changes": "v1"}``. Before the
start-up reading the driver waits until the node knows the broadcast (a
probe hello naming it with an unknown version gets "v1" back), and a hello
reply with ``errors`` fails the run, so every client is subscribed. Same
baseline, same target.
"""
import time

from bench.common import (ConnectionNode, Dynalite, Fleet, Megaphone, Server, crypto_key, machine,
                          median, save_plot, pyplot, raise_nofile, row, settle_rss, table_names,
                          wait_broadcast_known)

NAME = "idle-memory"
LEVELS = (1000, 5000, 15000)
CLIENT_PROCESSES = 4
CONNECT_CONCURRENCY = 100
MONITOR = "remote-settings/monitor_changes"
SYSTEMS = ("connnode", "subscribed", "baseline")


def end(server):
    """The measurement is over: kill the node rather than wait for 15,000
    graceful closes; the bare baseline just stops."""
    if isinstance(server, ConnectionNode):
        server.kill()
    else:
        server.stop()


def ramp(fleet, server, port, pid, broadcasts=None):
    base = settle_rss(pid, stable_polls=2, timeout=5.0)
    points = {}
    connected = 0
    for level in LEVELS:
        t0 = time.monotonic()
        fleet.connect(port, level - connected, register=True, concurrency=CONNECT_CONCURRENCY,
                      timeout=600.0, broadcasts=broadcasts)
        t1 = time.monotonic()
        connected = level
        rss = settle_rss(pid)
        points[level] = {"rss_kb": rss, "growth_kb": rss - base,
                         "per_client_kb": (rss - base) / level,
                         "connect_s": round(t1 - t0, 2), "settle_s": round(time.monotonic() - t1, 2)}
    end(server)
    fleet.close_all(timeout=60.0)
    return {"base_rss_kb": base, "levels": points}


def measure(system, dynalite, tables, key, fleet, megaphone):
    broadcasts = None
    if system == "connnode":
        server = ConnectionNode(dynalite, tables, key, log_name=f"{NAME}-cn").start()
        port, pid = server.port, server.worker_pid()
    elif system == "subscribed":
        server = ConnectionNode(dynalite, tables, key, log_name=f"{NAME}-cn-subscribed",
                                **megaphone.node_options(poll_interval=1)).start()
        port, pid = server.port, server.worker_pid()
        broadcasts = {MONITOR: wait_broadcast_known(port, MONITOR)}
    else:
        server = Server("baseline_server", log_name=f"{NAME}-baseline").start()
        port, pid = server.info["port"], server.pid
    try:
        return ramp(fleet, server, port, pid, broadcasts)
    finally:
        end(server)


def run(repeats=3):
    raise_nofile()
    dynalite = Dynalite().start()
    key = crypto_key()
    tables = table_names()
    megaphone = Megaphone({MONITOR: "v1"}).start()
    fleet = Fleet(CLIENT_PROCESSES)
    samples = {system: [] for system in SYSTEMS}
    try:
        for repeat in range(repeats):
            order = SYSTEMS if repeat % 2 == 0 else SYSTEMS[::-1]
            for system in order:
                samples[system].append(measure(system, dynalite, tables, key, fleet, megaphone))
    finally:
        fleet.stop()
        megaphone.stop()
        dynalite.stop()

    def med(system, level, field="per_client_kb"):
        return median([sample["levels"][level][field] for sample in samples[system]])

    rows = [row(f"RSS per client @ {level:,}", "KB", med("connnode", level), med("baseline", level),
                target=1.1, better="lower") for level in LEVELS]
    rows += [row(f"RSS per client @ {level:,}, subscribed to 1 broadcast", "KB",
                 med("subscribed", level), med("baseline", level), target=1.1, better="lower")
             for level in LEVELS]
    rows.append(row(f"RSS total @ {LEVELS[-1]:,}", "MB", med("connnode", LEVELS[-1], "rss_kb") / 1024,
                    med("baseline", LEVELS[-1], "rss_kb") / 1024))
    rows.append(row("RSS at start", "MB", median([s["base_rss_kb"] for s in samples["connnode"]]) / 1024,
                    median([s["base_rss_kb"] for s in samples["baseline"]]) / 1024))
    result = {"name": NAME, "machine": machine(), "repeats": repeats, "rows": rows,
              "config": {"levels": LEVELS, "client_processes": CLIENT_PROCESSES,
                         "per_client": "hello + one register, then idle",
                         "subscribed": f"hello also names {{{MONITOR!r}: 'v1'}}; the node polls "
                                       "a Megaphone stand-in every 1 s"},
              "samples": samples}
    result["plot"] = str(plot(samples))
    return result


def plot(samples):
    plt = pyplot()
    fig, axis = plt.subplots(figsize=(6, 4))
    for system, style, label in (("connnode", "o-", "connnode"),
                                 ("subscribed", "^-", "connnode, subscribed to 1 broadcast"),
                                 ("baseline", "s--", "baseline")):
        values = [median([s["levels"][level]["per_client_kb"] for s in samples[system]])
                  for level in LEVELS]
        axis.plot(LEVELS, values, style, label=label)
    axis.set(xlabel="connected idle clients", ylabel="worker RSS growth per client (KB)",
             title="idle WebSocket memory (1 worker)", xscale="log", ylim=(0, None))
    axis.set_xticks(LEVELS, [f"{level:,}" for level in LEVELS])
    return save_plot(plt, fig, (axis,), NAME)
