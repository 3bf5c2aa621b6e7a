"""c100k: 100,000 hello'd clients on one machine (issue 16): a connect storm,
memory per client, one broadcast to everyone, a reconnect storm.

    make bench BENCH=c100k                       # or: python -m bench.run c100k
    C100K_CLIENTS=3000 C100K_WORKERS=2 python -m bench.run c100k   # a small trial

Not part of a plain ``make bench`` (``bench.run``'s OPTIONAL set): it needs the
whole machine for 10-15 minutes (bench/README.md). Default repeats: 1 (``--repeats N`` runs
the whole cycle N times, each with a fresh store and node; the table shows
medians).

Set-up: an in-memory dynalite with the tables; a Megaphone stand-in
(``common.Megaphone``, a thread of the driver) answering
``{"remote-settings/monitor_changes": "v1"}``; ``C100K_CLIENT_PROCESSES`` (6)
client processes (this module run as ``python -m bench.c100k``:
``bench.clients`` plus the commands below; a storm's clients are plain
sockets on one epoll, ``bench.stormclient.hello_storm``, handed to asyncio,
``wsclient.adopt``, once connected), process i connecting from its own
``SOURCES_PER_PROCESS`` (3) loopback source addresses ``127.0.0.(10 + 3i + k)``,
client j of the process from address k = j mod 3 (every process holds
~16,700 sockets, under the machine's 20,000 descriptors). Why 3: Linux picks
a connecting socket's port from half of the 28,000 ephemeral ports (the
even ones), and past ~12,000 sockets on one address each new one cost the
client ~1 ms of kernel CPU instead of ~30 us (measured on this machine);
with one address per process the client processes took 78 % of a core in
the connect storm.

1. Floor (baseline of memory): ``baseline_server`` (a bare gevent StreamServer,
   one process) holding ``C100K_FLOOR_SOCKETS`` sockets (15,000; at most the
   number of clients) after the same storm of hellos: VmRSS growth per socket.
   100,000 sockets in one process would pass the 20,000 descriptor cap, and 6
   bare processes would measure the same per-socket figure, so the floor is
   one process at 15,000 (the level idle-memory also measures).
2. The connection node: gunicorn, ``C100K_WORKERS`` (6) workers,
   ``max_connections`` 19,000 per worker, ``hello_timeout`` 300 s, polling the
   stand-in every second. Worker k serves its router API on
   ``router_port + k`` (``ConnectionNode`` reserves a block of 2 x workers
   ports; its records name that URL). Start-up VmRSS of every worker.
3. Connect storm: at one instant every client process opens its share of
   ``C100K_CLIENTS`` (100,000), ``C100K_CONCURRENCY`` (300) attempts in flight
   per process; each attempt is TCP + upgrade + a hello with
   ``"broadcasts": {"remote-settings/monitor_changes": "v1"}``, no register.
   An attempt that fails (503 ``error - overloaded`` or anything else) is
   counted by kind, its socket reset, and the client retries after 0.2-1 s
   until connected or ``C100K_DEADLINE`` (600 s) has passed. (The clients
   are plain sockets on one epoll per process, ``bench.stormclient``: with
   asyncio's per-connection machinery they took a large share of the two
   cores the node and the store need.) Figures: time
   until the last client has its hello reply, failed attempts by kind, the
   hello latency (TCP connect -> hello reply of the attempt that made it)
   p50 / p99 / max, clients connected (and still open afterwards).
4. Memory: every worker's VmRSS polled until stable; (sum of growth over the
   start-up readings) / clients connected, against the floor's per-socket
   growth; and the client processes' own RSS per client (informational).
5. Broadcast: a pusher (a thread of the driver: asyncio, one more client,
   and a keep-alive connection to the router port of the worker that holds
   it, found by trying each) sends ``PUT /push`` and waits for the frame
   (acked), one every 10 ms; 2 s of that alone (the baseline), then the
   stand-in's version becomes v2. Figures: clients that got v2, change ->
   last client (includes the wait for the next poll, up to 1 s), first ->
   last client, and the worst and p99 push latency of the pushes in flight
   during the fan-out against those before the change.
6. Reconnect storm: every client's socket is reset (SO_LINGER 0: a network
   blip, no TIME_WAIT to eat the source ports); once the workers have let
   go of them (their sockets, counted in /proc, are down by as many, at
   most 120 s), every client reconnects with its uaid at one instant, 300 in
   flight per process, same retry rule. Same figures; also clients whose
   hello answered a different uaid.
7. The node is killed (its graceful shutdown of 100,000 sessions is not
   measured), and the bare storage calls run: ``C100K_WORKERS`` processes
   (this module, ``python -m bench.c100k writes``; gevent, the storage layer
   with the node's settings: its pool, C100K_POOL or the default, and as many
   calls in flight per process), each with a gevent pool of 300 greenlets (the clients' bound per
   process), all starting at one instant:
   * for the connect storm: one ``register_user`` (the conditional UpdateItem
     of a new uaid's hello) per fresh uaid, into an empty router table of its
     own (the node's table was empty too);
   * for the reconnect storm: the write of a resumed hello per uaid of the
     node's table, naming a worker's router URL (the same number of writes):
     ``resume_user``, one conditional UpdateItem (``register_user`` with a
     storage layer that has no ``resume_user``).
   For reference (no target) the resumed hellos' calls are also run in full:
   that write and the check's one Query each (the node makes both, and
   also a DELETE /notif to the worker that held the uaid before, when that
   is another worker: 5 in 6 with 6 workers); ``C100K_FULL_BASELINE=0``
   leaves this pass out.
   Target: storm time / bare-calls time <= 1.25x for both storms.

Every wait is bounded; every child dies with the driver and is stopped by it.
Knobs (environment): C100K_CLIENTS, C100K_WORKERS, C100K_CLIENT_PROCESSES,
C100K_CONCURRENCY, C100K_FLOOR_SOCKETS, C100K_DEADLINE, C100K_FULL_BASELINE,
C100K_POOL (``ddb_max_pool_connections`` of the node and the bare calls).

Left out: registers (no channel per client; the issue's run was hello only);
TLS; clients on other machines (all the source addresses are loopback, so
the clients' CPU is taken from the same two cores as the node and the store).
"""
import sys

if __name__ == "__main__" and sys.argv[1:2] == ["writes"]:
    # the bare-calls child: gevent and the storage layer, patched first
    from gevent import monkey
    monkey.patch_all()

import asyncio  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402

from bench.stormclient import linger_zero  # noqa: E402

NAME = "c100k"
MONITOR = "remote-settings/monitor_changes"


def knob(name, default):
    return int(os.environ.get(f"C100K_{name}", default))


CLIENTS = knob("CLIENTS", 100_000)
WORKERS = knob("WORKERS", 6)
CLIENT_PROCESSES = knob("CLIENT_PROCESSES", 6)
CONCURRENCY = knob("CONCURRENCY", 300)
FLOOR_SOCKETS = knob("FLOOR_SOCKETS", min(15_000, CLIENTS))
DEADLINE = knob("DEADLINE", 600)
FULL_BASELINE = knob("FULL_BASELINE", 1) == 1
#: ddb_max_pool_connections of the node's workers and of the bare-calls
#: processes alike (0: the setting's default)
POOL = knob("POOL", 0)
MAX_CONNECTIONS = 19_000
HELLO_TIMEOUT = 300
ATTEMPT_TIMEOUT = 60.0
BACKOFF = (0.2, 1.0)
POLL_INTERVAL = 1
PUSH_EVERY = 0.01
PUSH_BASELINE_S = 2.0
FANOUT_TIMEOUT = 120.0
RELEASE_TIMEOUT = 120.0
START_DELAY = 1.0
RSS_TARGET_KB = 12.0
#: Times a bare call the store did not answer is made (the clients retry
#: their hellos too).
BARE_ATTEMPTS = 20
STORM_TARGET = 1.25
#: the kinds of failed attempt always shown (others appear when they occur)
KINDS = ("overloaded", "already_connected", "connect_timeout", "hello_timeout",
         "handshake_lost", "closed_before_reply", "http_503", "storage_error_503", "other")


SOURCES_PER_PROCESS = 3


def source_addresses(index):
    """Client process ``index``'s own loopback source addresses."""
    return [f"127.0.0.{10 + SOURCES_PER_PROCESS * index + k}" for k in range(SOURCES_PER_PROCESS)]


# -- the client processes ----------------------------------------------------------------

def reset(conn):
    """Drop the connection with a TCP reset (``stormclient.linger_zero``)."""
    transport = conn.transport
    if transport is None or transport.is_closing():
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        linger_zero(sock)
    transport.abort()


def _client_classes():
    from bench.broadcast_fanout import FanoutClients
    from bench.stormclient import hello_storm
    from bench.wsclient import adopt

    class StormClients(FanoutClients):
        """``bench.broadcast_fanout``'s clients (broadcast arrivals) plus
        ``storm_hello`` (a storm with retries and failures by kind),
        ``alive`` and ``reset``."""

        async def cmd_storm_hello(self, host, port, at, **storm):
            """``stormclient.hello_storm`` (its arguments and answer): the
            storm runs blocking, as nothing else runs in this process
            meanwhile (``Clients.cmd_storm`` does the same); then every
            connected socket becomes a WSConnection counting what arrives."""
            answer, connected = hello_storm(host, port, at, **storm)
            for sock, uaid, leftover in connected:
                conn = await adopt(sock, on_text=self._count, leftover=leftover)
                conn.user = uaid
                self.conns.append(conn)
            return answer

        def cmd_alive(self):
            return {"alive": sum(1 for conn in self.conns if not conn.closed),
                    "total": len(self.conns)}

        def cmd_reset(self):
            """Reset every connection (no close frame); their uaids, in order.
            Forgets the broadcast arrivals."""
            uaids = [conn.user for conn in self.conns]
            for conn in self.conns:
                reset(conn)
            self.conns = []
            self.arrivals, self.seen, self.duplicates = {}, {}, 0
            return {"reset": len(uaids), "uaids": uaids}

    return StormClients


def _fleet_class():
    from bench.common import ClientProcess, Fleet

    class StormProcess(ClientProcess):
        module = "bench.c100k"
        log_name = f"{NAME}-clients"

    class StormFleet(Fleet):
        def __init__(self, processes):  # noqa: D107 - Fleet of StormProcess
            from bench.common import rss_kb

            self.procs = [StormProcess() for _ in range(processes)]
            #: the client processes' VmRSS before any client (their growth
            #: per client is reported; the floor's clients are gone by then)
            self.base_rss_kb = sum(rss_kb(pid) for pid in self.pids)

        def storm(self, port, count=0, uaid_parts=None, deadline=DEADLINE):
            """All processes at one instant; the merged figures."""
            at = time.monotonic() + START_DELAY
            shares = self.split(count) if uaid_parts is None else [len(p) for p in uaid_parts]
            commands = []
            for i, share in enumerate(shares):
                if not share:
                    commands.append(None)
                    continue
                command = {"cmd": "storm_hello", "host": "127.0.0.1", "port": port, "at": at,
                           "source": source_addresses(i), "concurrency": CONCURRENCY,
                           "broadcasts": {MONITOR: "v1"}, "deadline": deadline,
                           "timeout": ATTEMPT_TIMEOUT, "backoff": BACKOFF}
                if uaid_parts is None:
                    command["count"] = share
                else:
                    command["uaids"] = uaid_parts[i]
                commands.append(command)
            # an attempt can last 3 timeouts (TCP, upgrade, hello reply)
            answers = self.all(commands, timeout=START_DELAY + deadline + 3 * ATTEMPT_TIMEOUT + 60)
            return merge_storms(answers, sum(shares))

        def reset(self):
            return [answer["uaids"] for answer in self.same({"cmd": "reset"}, 120.0)]

        def alive_each(self):
            return [answer["alive"] for answer in self.same({"cmd": "alive"}, 60.0)]

        def alive(self):
            return sum(self.alive_each())

        def arrivals(self, version, expects):
            answers = self.all([{"cmd": "arrivals", "version": version, "expect": expect,
                                 "timeout": FANOUT_TIMEOUT} for expect in expects],
                               FANOUT_TIMEOUT + 60)
            return (sorted(t for a in answers for t in a["times"]),
                    sum(a["duplicates"] for a in answers))

    return StormFleet


def merge_storms(answers, total):
    from bench.common import percentile

    kinds, samples = {}, {}
    for answer in answers:
        for kind, n in answer["kinds"].items():
            kinds[kind] = kinds.get(kind, 0) + n
        for kind, texts in answer["samples"].items():
            samples.setdefault(kind, []).extend(texts[:3 - len(samples.get(kind, []))])
    latency = sorted(t for a in answers for t in a["latency"])
    done = sorted(t for a in answers for t in a["done"])
    connected = sum(a["connected"] for a in answers)
    return {"clients": total, "connected": connected, "gave_up": sum(a["gave_up"] for a in answers),
            "kinds": kinds, "samples": samples,
            "attempts_failed": sum(kinds.values()),
            "failed_not_overloaded": sum(n for k, n in kinds.items() if k != "overloaded"),
            "uaid_changed": sum(a["uaid_changed"] for a in answers),
            "makespan": done[-1] if done and connected == total else None,
            "last_connected": done[-1] if done else None,
            "p50_ms": 1000 * percentile(latency, 0.5) if latency else None,
            "p99_ms": 1000 * percentile(latency, 0.99) if latency else None,
            "max_ms": 1000 * latency[-1] if latency else None,
            "rate": connected / done[-1] if done else None,
            "done": done,
            "uaid_parts": [a["uaids"] for a in answers]}


# -- the bare-calls child (gevent) -------------------------------------------------------

def writes_child(config):
    """``python -m bench.c100k writes '<json>'``: prints {"ready": ...}, reads
    {"at": t} on stdin, then at ``at`` makes the write of a hello per uaid, at
    most ``concurrency`` at a time: ``register_user`` for ``count`` fresh
    uaids, ``resume_user`` for the ``uaids`` file's slice [start, stop)
    (``full``: plus the check's one Query); prints per-uaid seconds from
    ``at`` to done. ``create``: create the tables and leave."""
    import gevent
    from gevent.pool import Pool

    from bench.seed_db import router_record, storage_for
    from connnode.db.dynamo import StorageUnavailable

    storage = storage_for(config)
    if config.get("create"):
        print(json.dumps({"created": True}), flush=True)
        return
    if config.get("uaids"):
        with open(config["uaids"]) as handle:
            uaids = json.load(handle)[config["start"]:config["stop"]]
    else:
        uaids = [uuid.uuid4().hex for _ in range(config["count"])]
    node_id, full = config["node_id"], config.get("full", False)
    table = storage.current_table
    router = storage.router
    # a known uaid: the write a resumed hello makes (resume_user, one
    # conditional UpdateItem; register_user where the storage layer has none)
    resume = config.get("uaids") and hasattr(router, "resume_user")
    storage.router.get_uaid(uuid.uuid4().hex)  # the first pooled connection
    print(json.dumps({"ready": len(uaids)}), flush=True)
    at = json.loads(sys.stdin.readline())["at"]
    errors, done = [], []
    retried = 0

    def calls(uaid):
        now = time.time()
        if resume:
            written, _ = router.resume_user(uaid, node_id, int(now * 1000),
                                            int(now) + storage.settings.max_ttl)
        else:
            if full:
                router.get_uaid(uaid)
            written, _ = router.register_user(
                router_record(storage, uaid, node_id, int(now * 1000)))
        if not written:
            raise RuntimeError("condition failed")
        if full:
            table.fetch_topic_phase(uaid)

    def one(uaid):
        nonlocal retried
        # A call the store did not answer (timeouts once botocore's retries
        # are spent) is made again, as a client answered 503 overloaded
        # hellos again: the baseline is the time until every write is in.
        for attempt in range(1, BARE_ATTEMPTS + 1):
            try:
                calls(uaid)
            except StorageUnavailable as exc:
                retried += 1
                if attempt == BARE_ATTEMPTS and len(errors) < 5:
                    errors.append(repr(exc))
                continue
            except Exception as exc:  # noqa: BLE001 - counted and reported
                if len(errors) < 5:
                    errors.append(repr(exc))
                return
            done.append(round(time.monotonic() - at, 4))
            return

    gevent.sleep(max(0.0, at - time.monotonic()))
    pool = Pool(config["concurrency"])
    for uaid in uaids:
        pool.spawn(one, uaid)
    pool.join(timeout=config.get("timeout", 600))
    pool.kill(block=False)
    print(json.dumps({"done": done, "failed": len(uaids) - len(done), "errors": errors,
                      "retried": retried}), flush=True)


class Writers:
    """``processes`` bare-calls children started together."""

    def __init__(self, processes, configs):
        from bench.common import LOGS, LineReader, child_env, die_with_parent, log_file

        self.log = LOGS / f"{NAME}-writes.log"
        self.children = []
        for config in configs[:processes]:
            log = log_file(f"{NAME}-writes")
            process = subprocess.Popen(
                [sys.executable, "-m", "bench.c100k", "writes", json.dumps(config)],
                cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))), env=child_env(),
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                start_new_session=True, preexec_fn=die_with_parent)
            log.close()
            self.children.append((process, LineReader(process.stdout)))

    def run(self, timeout, store_pid):
        for process, lines in self.children:
            line = lines.read_line(120.0)
            if not line:
                raise RuntimeError(f"a bare-calls process did not start (log: {self.log})")
        meter = GroupCpu({"store": [store_pid], "bare": [p.pid for p, _ in self.children]})
        meter.start()
        at = time.monotonic() + 0.5
        for process, _ in self.children:
            process.stdin.write((json.dumps({"at": at}) + "\n").encode())
            process.stdin.flush()
        deadline = time.monotonic() + timeout + 60
        answers = []
        for process, lines in self.children:
            line = lines.read_line(max(1.0, deadline - time.monotonic()))
            if not line:
                raise RuntimeError(f"a bare-calls process gave no answer (log: {self.log})")
            answers.append(json.loads(line))
        cpu = meter.stop()
        done = sorted(t for a in answers for t in a["done"])
        failed = sum(a["failed"] for a in answers)
        return {"done": done, "failed": failed, "cpu_pct": cpu,
                "retried": sum(a.get("retried", 0) for a in answers),
                "errors": [e for a in answers for e in a["errors"]][:5],
                "makespan": done[-1] if done and not failed else None,
                "last_done": done[-1] if done else None}

    def stop(self):
        from bench.common import stop_process

        for process, _ in self.children:
            stop_process(process, timeout=10.0)


class GroupCpu:
    """CPU time of groups of processes between start() and stop(), in
    percent of one core per group (2 cores: at most 200 in all)."""

    def __init__(self, groups):
        from bench.common import CpuMeter

        self.groups = groups
        self.meter = CpuMeter({f"{group}:{pid}": pid for group, pids in groups.items()
                               for pid in pids})

    def start(self):
        self.meter.start()

    def stop(self):
        try:
            each = self.meter.stop()
        except OSError:  # a process went away
            return None
        return {group: round(sum(each[f"{group}:{pid}"] for pid in pids), 1)
                for group, pids in self.groups.items()}


def bare_calls(db, store_pid, processes, shares, node_ids, uaids_file=None, full=False):
    """The bare-calls storm: one process per share, all at one instant."""
    configs, start = [], 0
    for i, share in enumerate(shares):
        config = dict(db, node_id=node_ids[i % len(node_ids)], concurrency=CONCURRENCY,
                      full=full, timeout=DEADLINE, pool=POOL)
        if uaids_file:
            config.update(uaids=uaids_file, start=start, stop=start + share)
        else:
            config["count"] = share
        start += share
        configs.append(config)
    writers = Writers(processes, configs)
    try:
        return writers.run(DEADLINE, store_pid)
    finally:
        writers.stop()


# -- the pusher ----------------------------------------------------------------------------

# -- the driver ----------------------------------------------------------------------------

def socket_count(pid):
    """Sockets open in one process (entries of /proc/<pid>/fd)."""
    count = 0
    try:
        for entry in os.scandir(f"/proc/{pid}/fd"):
            try:
                if os.readlink(entry.path).startswith("socket:"):
                    count += 1
            except OSError:
                pass
    except OSError:
        pass
    return count


def wait_released(pids, target, timeout=RELEASE_TIMEOUT, slack=50):
    """Wait until the workers hold no more than ``target`` sockets (+ slack):
    the reset clients' sockets are closed; seconds waited and the sockets
    above ``target``."""
    started = time.monotonic()
    left = sum(socket_count(pid) for pid in pids)
    while left > target + slack and time.monotonic() - started < timeout:
        time.sleep(0.5)
        left = sum(socket_count(pid) for pid in pids)
    return time.monotonic() - started, left - target


def floor(fleet):
    """baseline_server holding FLOOR_SOCKETS after the same storm: KB per socket."""
    from bench.common import Server, settle_rss

    server = Server("baseline_server", log_name=f"{NAME}-floor").start()
    try:
        base = settle_rss(server.pid, stable_polls=2, timeout=5.0)
        storm = fleet.storm(server.info["port"], FLOOR_SOCKETS)
        rss = settle_rss(server.pid)
        if not storm["connected"]:
            raise RuntimeError(f"no client reached baseline_server: {storm['samples']}")
        return {"sockets": storm["connected"], "base_rss_kb": base, "rss_kb": rss,
                "per_socket_kb": (rss - base) / storm["connected"] if storm["connected"] else None,
                "storm_s": storm["last_connected"], "kinds": storm["kinds"]}
    finally:
        fleet.reset()
        server.stop()


def fan_out(megaphone, fleet, pusher, expects):
    from bench.broadcast_fanout import change_and_measure

    figures = change_and_measure(megaphone, "v2", lambda: fleet.arrivals("v2", expects), pusher,
                                 PUSH_BASELINE_S)
    return dict(figures, expected=sum(expects))


def check_shape():
    share = -(-CLIENTS // CLIENT_PROCESSES)
    if share >= MAX_CONNECTIONS:
        raise RuntimeError(f"{CLIENTS:,} clients over {CLIENT_PROCESSES} processes is {share:,} "
                           f"sockets per process: more than {MAX_CONNECTIONS:,} (descriptor cap)")
    if CLIENTS > WORKERS * MAX_CONNECTIONS:
        raise RuntimeError(f"{CLIENTS:,} clients do not fit {WORKERS} workers of "
                           f"{MAX_CONNECTIONS:,} connections")
    if not 0 < CLIENT_PROCESSES <= 80 or CLIENTS < CLIENT_PROCESSES:
        raise RuntimeError("1 to 80 client processes (source addresses 127.0.0.10-249), "
                           "each with at least one client")


def one_repeat(fleet, repeat):
    """The whole cycle once: floor, node, storms, memory, broadcast, bare calls."""
    from bench.common import (ConnectionNode, Dynalite, Megaphone, crypto_key, rss_kb, run_script,
                              settle_rss, table_names, wait_broadcast_known)

    sample = {"repeat": repeat, "phases_s": {}}
    clock = [time.monotonic()]

    def lap(phase):
        now = time.monotonic()
        sample["phases_s"][phase] = round(now - clock[0], 1)
        clock[0] = now

    dynalite = Dynalite().start()
    megaphone = Megaphone({MONITOR: "v1"}).start()
    node = pusher = None
    key, tables = crypto_key(), table_names()
    db = {"endpoint": dynalite.endpoint, "router": tables["router"], "message": tables["message"],
          "key": key}
    bare_router = tables["router"] + "_bare"
    try:
        run_script(NAME, "writes", json.dumps(dict(db, create=True)), timeout=120,
                   log_name=f"{NAME}-writes")
        run_script(NAME, "writes", json.dumps(dict(db, router=bare_router, create=True)),
                   timeout=120, log_name=f"{NAME}-writes")
        lap("store and tables")
        sample["floor"] = floor(fleet)
        lap("floor")
        print(f"  floor: {sample['floor']['sockets']:,} sockets, "
              f"{fmt(sample['floor']['per_socket_kb'])} KB each", flush=True)

        node = ConnectionNode(dynalite, tables, key, workers=WORKERS, log_name=f"{NAME}-cn",
                              max_connections=MAX_CONNECTIONS, hello_timeout=HELLO_TIMEOUT,
                              **({"ddb_max_pool_connections": POOL} if POOL else {}),
                              **megaphone.node_options(POLL_INTERVAL)).start()
        wait_broadcast_known(node.port, MONITOR)
        time.sleep(2 * POLL_INTERVAL + 0.5)  # every worker has polled
        pids = node.worker_pids()
        if len(pids) != WORKERS:
            raise RuntimeError(f"expected {WORKERS} workers, found {pids}")
        router_ports = [node.router_port + slot for slot in range(WORKERS)]
        base_rss = {pid: settle_rss(pid, stable_polls=2, timeout=5.0) for pid in pids}
        base_sockets = {pid: socket_count(pid) for pid in pids}
        lap("node start")

        # connect storm
        groups = {"node": pids, "store": [dynalite.process.pid], "clients": fleet.pids}
        meter = GroupCpu(groups)
        meter.start()
        storm = fleet.storm(node.port, CLIENTS)
        storm["cpu_pct"] = meter.stop()
        storm["alive"] = fleet.alive()
        sample["storm"] = storm
        lap("connect storm")
        print(f"  connect storm: {storm['connected']:,} of {CLIENTS:,} in "
              f"{fmt(storm['last_connected'])} s; failed attempts {storm['kinds']}", flush=True)

        # memory
        rss = {pid: settle_rss(pid) for pid in pids}
        growth = sum(rss[pid] - base_rss[pid] for pid in pids)
        sockets = {pid: socket_count(pid) - base_sockets[pid] for pid in pids}
        clients_growth = sum(rss_kb(pid) for pid in fleet.pids) - fleet.base_rss_kb
        sample["memory"] = {
            "base_rss_kb": base_rss, "rss_kb": rss, "growth_kb": growth,
            "per_client_kb": growth / storm["connected"] if storm["connected"] else None,
            "rss_total_mb": sum(rss.values()) / 1024,
            "sockets_per_worker": sockets,  # above each worker's start-up count
            "sockets_min": min(sockets.values()), "sockets_max": max(sockets.values()),
            "clients_growth_kb": clients_growth,
            "clients_per_client_kb": clients_growth / storm["connected"] if storm["connected"] else None}
        print(f"  memory: {fmt(sample['memory']['per_client_kb'])} KB per client over "
              f"{WORKERS} workers (floor {fmt(sample['floor']['per_socket_kb'])}); sockets per "
              f"worker {sorted(sockets.values())}", flush=True)
        lap("memory")

        # broadcast
        from bench.broadcast_fanout import Pusher

        pusher = Pusher(key, node.port, router_ports, every=PUSH_EVERY)
        try:
            pusher.start()
        except RuntimeError as exc:  # the fan-out is measured all the same
            pusher.failure = pusher.failure or exc
            print(f"  pusher: {exc}", flush=True)
        sample["broadcast"] = fan_out(megaphone, fleet, pusher, fleet.alive_each())
        pusher.stop()
        pusher = None
        lap("broadcast")
        print(f"  broadcast: {sample['broadcast']['received']:,} got v2, change -> last "
              f"{fmt(sample['broadcast']['change_to_last_ms'])} ms; worst push during it "
              f"{fmt(sample['broadcast']['during_worst_ms'])} ms"
              + (f"; pusher failed: {sample['broadcast']['pusher_failure']}"
                 if sample['broadcast']['pusher_failure'] else ""), flush=True)

        # reconnect storm
        before = sum(socket_count(pid) for pid in pids)
        parts = fleet.reset()
        waited, left = wait_released(pids, before - sum(len(part) for part in parts))
        sample["release"] = {"waited_s": round(waited, 1), "sockets_left": left}
        lap("reset and release")
        meter = GroupCpu(groups)
        meter.start()
        reconnect = fleet.storm(node.port, uaid_parts=parts)
        reconnect["cpu_pct"] = meter.stop()
        reconnect["alive"] = fleet.alive()
        sample["reconnect"] = reconnect
        print(f"  reconnect storm: {reconnect['connected']:,} of {reconnect['clients']:,} in "
              f"{fmt(reconnect['last_connected'])} s; failed attempts {reconnect['kinds']}",
              flush=True)
        node.kill()
        node = None
        fleet.reset()
        lap("reconnect storm")

        # the bare calls
        node_ids = [f"http://127.0.0.1:{port}" for port in router_ports]
        store_pid = dynalite.process.pid
        sample["bare_new"] = bare_calls(dict(db, router=bare_router), store_pid, WORKERS,
                                        split(CLIENTS, WORKERS), node_ids)
        lap("bare calls, new")
        with tempfile.TemporaryDirectory(prefix="bench-c100k-") as workdir:
            uaids_file = os.path.join(workdir, "uaids.json")
            flat = [uaid for part in parts for uaid in part]
            with open(uaids_file, "w") as handle:
                json.dump(flat, handle)
            sample["bare_resume"] = bare_calls(db, store_pid, WORKERS, split(len(flat), WORKERS),
                                               node_ids, uaids_file)
            lap("bare calls, resumed")
            if FULL_BASELINE:
                sample["bare_full"] = bare_calls(db, store_pid, WORKERS, split(len(flat), WORKERS),
                                                 node_ids, uaids_file, full=True)
                lap("bare calls, full")
        print(f"  bare calls: {CLIENTS:,} new in {fmt(sample['bare_new']['last_done'])} s, "
              f"{len(flat):,} resumed in {fmt(sample['bare_resume']['last_done'])} s", flush=True)
        print(f"  phases (s): {sample['phases_s']}", flush=True)
    finally:
        if pusher is not None:
            pusher.stop()
        if node is not None:
            node.kill()
        try:
            fleet.reset()
        except Exception:  # noqa: BLE001 - a client process may be gone; stop() follows
            pass
        megaphone.stop()
        dynalite.stop()
    return sample


def fmt(value, digits=1):
    return "-" if value is None else f"{value:,.{digits}f}"


def split(count, n):
    return [count // n + (1 if i < count % n else 0) for i in range(n)]


def run(repeats=1):
    from bench.common import LOGS, machine, raise_nofile

    check_shape()
    raise_nofile()
    # one line per connection and close: ~40 MB per full run; keep the last run's only
    (LOGS / f"{NAME}-cn.log").unlink(missing_ok=True)
    fleet = _fleet_class()(CLIENT_PROCESSES)
    samples = []
    try:
        for repeat in range(repeats):
            samples.append(one_repeat(fleet, repeat))
    finally:
        fleet.stop()
    rows = table_rows(samples)
    for sample in samples:
        for storm in ("storm", "reconnect"):
            sample[storm] = {k: v for k, v in sample[storm].items() if k != "uaid_parts"}
    result = {"name": NAME, "machine": machine(), "repeats": repeats, "rows": rows,
              "config": {"clients": CLIENTS, "workers": WORKERS,
                         "client_processes": CLIENT_PROCESSES,
                         "sources": [source_addresses(i) for i in range(CLIENT_PROCESSES)],
                         "concurrency_per_process": CONCURRENCY, "floor_sockets": FLOOR_SOCKETS,
                         "deadline_s": DEADLINE, "max_connections": MAX_CONNECTIONS,
                         "hello_timeout_s": HELLO_TIMEOUT, "attempt_timeout_s": ATTEMPT_TIMEOUT,
                         "ddb_max_pool_connections": POOL or "default",
                         "backoff_s": BACKOFF, "poll_interval_s": POLL_INTERVAL,
                         "push_every_s": PUSH_EVERY, "full_baseline": FULL_BASELINE},
              "samples": [slim(sample) for sample in samples]}
    result["plot"] = str(plot(samples))
    return result


def slim(sample):
    """A sample without its long per-client lists (kept for the plot only)."""
    out = dict(sample)
    for part in ("storm", "reconnect", "bare_new", "bare_resume", "bare_full"):
        if part in out:
            out[part] = {k: v for k, v in out[part].items() if k not in ("done",)}
    return out


def table_rows(samples):
    from bench.common import median, ratio, row

    def med(*path):
        values = []
        for sample in samples:
            value = sample
            for key in path:
                value = value.get(key) if isinstance(value, dict) else None
            if value is not None:
                values.append(value)
        return median(values) if values else None

    def total(part, kind):
        return sum(sample[part]["kinds"].get(kind, 0) for sample in samples)

    def absolute(metric, unit, value, baseline=None, target=None, met=None):
        return {"metric": metric, "unit": unit, "connnode": value, "baseline": baseline,
                "ratio": ratio(value, baseline), "target": target, "met": met}

    n = CLIENTS
    per_client = med("memory", "per_client_kb")
    rows = [
        row(f"connect storm: all {n:,} hello'd", "s", med("storm", "makespan"),
            med("bare_new", "makespan"), target=STORM_TARGET),
        absolute(f"connect storm: connected (of {n:,})", "clients", med("storm", "connected")),
        absolute("connect storm: still open afterwards", "clients", med("storm", "alive")),
        absolute("connect storm: rate", "clients/s", med("storm", "rate")),
        row("connect storm: hello p50 / p99 / max", "ms",
            (med("storm", "p50_ms"), med("storm", "p99_ms"), med("storm", "max_ms")), None),
    ]
    kinds = set(KINDS)
    for sample in samples:
        kinds.update(sample["storm"]["kinds"], sample["reconnect"]["kinds"])
    shown = ("overloaded", "already_connected", "connect_timeout", "hello_timeout",
             "handshake_lost", "other")
    for part, label in (("storm", "connect storm"), ("reconnect", "reconnect storm")):
        others = sum(total(part, kind) for kind in kinds if kind != "overloaded")
        rows.append(absolute(f"{label}: failed attempts but 503 overloaded", "attempts", others,
                             target="0", met=others == 0))
        for kind in list(KINDS) + sorted(kinds - set(KINDS)):
            count = total(part, kind)
            if kind in shown or count:
                rows.append(absolute(f"{label}:   {kind}", "attempts", count,
                                     target="0" if kind == "already_connected" else None,
                                     met=count == 0 if kind == "already_connected" else None))
        rows.append(absolute(f"{label}: clients never connected", "clients",
                             sum(s[part]["gave_up"] for s in samples), target="0",
                             met=all(not s[part]["gave_up"] for s in samples)))
    rows += [
        absolute(f"RSS per client, {WORKERS} workers (floor @ {FLOOR_SOCKETS:,})", "KB",
                 per_client, med("floor", "per_socket_kb"), target=f"<= {RSS_TARGET_KB:g} KB",
                 met=None if per_client is None else per_client <= RSS_TARGET_KB),
        absolute("clients per GB of worker RSS", "clients",
                 1024 * 1024 / per_client if per_client else None),
        absolute("worker RSS, all workers, after the storm", "MB",
                 med("memory", "rss_total_mb"), None),
        absolute("sockets per worker after the storm, min / max", "sockets",  # over start-up
                 (med("memory", "sockets_min"), med("memory", "sockets_max"))),
        absolute("client processes' RSS growth per client (no target)", "KB",
                 med("memory", "clients_per_client_kb")),
        absolute(f"broadcast: clients that got it (of {n:,})", "clients",
                 med("broadcast", "received")),
        absolute("broadcast: change -> last client (poll 1 s)", "ms",
                 med("broadcast", "change_to_last_ms")),
        absolute("broadcast: first -> last client", "ms", med("broadcast", "fanout_ms")),
        absolute("push PUT -> frame, worst during fan-out", "ms",
                 med("broadcast", "during_worst_ms"), med("broadcast", "before_worst_ms")),
        absolute("push PUT -> frame, p99 during fan-out", "ms",
                 med("broadcast", "during_p99_ms"), med("broadcast", "before_p99_ms")),
        absolute("pushes during fan-out / before the change", "pushes",
                 med("broadcast", "during"), med("broadcast", "before")),
        row(f"reconnect storm: all {n:,} hello'd", "s", med("reconnect", "makespan"),
            med("bare_resume", "makespan"), target=STORM_TARGET),
        absolute(f"reconnect storm: connected (of {n:,})", "clients", med("reconnect", "connected")),
        absolute("reconnect storm: uaid changed", "clients",
                 sum(s["reconnect"]["uaid_changed"] for s in samples), target="0",
                 met=all(not s["reconnect"]["uaid_changed"] for s in samples)),
        row("reconnect storm: hello p50 / p99 / max", "ms",
            (med("reconnect", "p50_ms"), med("reconnect", "p99_ms"), med("reconnect", "max_ms")),
            None),
    ]
    if FULL_BASELINE:
        rows.append(row("reconnect storm vs a resumed hello's calls, bare", "s",
                        med("reconnect", "makespan"), med("bare_full", "makespan")))
    for part, label in (("storm", "connect storm"), ("reconnect", "reconnect storm")):
        rows.append(absolute(f"CPU in the {label}: node / store / clients", "% core",
                             tuple(med(part, "cpu_pct", group)
                                   for group in ("node", "store", "clients"))))
    for part, label in (("bare_new", "new"), ("bare_resume", "resumed")):
        rows.append(absolute(f"CPU in the bare calls ({label}): store / bare", "% core",
                             tuple(med(part, "cpu_pct", group) for group in ("store", "bare"))))
    rows.append(absolute("bare calls that failed (new / resumed)", "calls",
                         sum(s["bare_new"]["failed"] + s["bare_resume"]["failed"] for s in samples)))
    rows.append(absolute("bare calls made again after a timeout (new / resumed)", "calls",
                         sum(s["bare_new"].get("retried", 0) + s["bare_resume"].get("retried", 0)
                             for s in samples)))
    return rows


def plot(samples):
    from bench.common import pyplot, save_plot

    plt = pyplot()
    fig, axis = plt.subplots(figsize=(7, 4))
    styles = {"storm": ("C0", "-", "connect storm (new uaids)"),
              "bare_new": ("C0", "--", "bare hello write, new uaids"),
              "reconnect": ("C1", "-", "reconnect storm (known uaids)"),
              "bare_resume": ("C1", "--", "bare hello write, known uaids"),
              "bare_full": ("C2", ":", "bare calls of a resumed hello")}
    for i, sample in enumerate(samples):
        for part, (colour, style, label) in styles.items():
            done = sample.get(part, {}).get("done")
            if done:
                axis.plot(done, range(1, len(done) + 1), style, color=colour,
                          label=label if i == 0 else None)
    axis.set(xlabel="seconds since the storm began", ylabel="clients hello'd / writes done",
             title=f"c100k: {CLIENTS:,} clients, {WORKERS} workers")
    return save_plot(plt, fig, (axis,), NAME)


if __name__ == "__main__":
    if sys.argv[1:2] == ["writes"]:
        writes_child(json.loads(sys.argv[2]))
    else:
        from bench.clients import serve_commands
        asyncio.run(serve_commands(_client_classes()()))
