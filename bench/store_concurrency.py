"""How many storage calls in flight one dynalite wants: the measurement
behind ``ddb_max_pool_connections``'s default (README "Sizing the pools").

    python -m bench.store_concurrency [processes] [level ...]

Starts an in-memory dynalite with the tables; then, for each level (calls in
flight per process; default 4 8 16 32 100), ``processes`` (6, as c100k's
workers) children of this module start at one instant, each with the
storage layer at ``ddb_max_pool_connections`` = level and as many greenlets,
each making conditional UpdateItems (``register_user`` of a fresh uaid) for
``SECONDS``. Prints, per level: writes/s over all processes, the call
latency p50 (median over the processes) and p99 (worst process), once with
every call and once without the first ``WARM_UP`` seconds (a cold pool: the
first calls open the connections), and the store's CPU (% of a core from
the start to the last answer).
"""
import sys

if __name__ == "__main__" and sys.argv[1:2] == ["child"]:
    from gevent import monkey
    monkey.patch_all()

import json  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402

SECONDS = 8.0
WARM_UP = 3.0
START_DELAY = 3.0


def child(config):
    """Calls for ``SECONDS`` from ``at`` (wall clock); prints the latencies."""
    import gevent
    from gevent.pool import Pool

    from bench.seed_db import router_record, storage_for

    storage = storage_for(config)
    router = storage.router
    gevent.sleep(max(0.0, config["at"] - time.time()))
    started = time.monotonic()
    end, warm = started + SECONDS, started + WARM_UP
    every, warmed = [], []

    def loop():
        while time.monotonic() < end:
            t = time.monotonic()
            router.register_user(router_record(storage, uuid.uuid4().hex, "http://x",
                                               int(time.time() * 1000)))
            every.append(time.monotonic() - t)
            if t >= warm:
                warmed.append(every[-1])

    pool = Pool(config["pool"])
    for _ in range(config["pool"]):
        pool.spawn(loop)
    pool.join()
    print(json.dumps({"every": every, "warmed": warmed}), flush=True)


def main():
    from bench.common import Dynalite, child_env, cpu_seconds, crypto_key, percentile, table_names

    processes = int(sys.argv[1]) if len(sys.argv) > 1 else 6
    levels = [int(a) for a in sys.argv[2:]] or [4, 8, 16, 32, 100]
    dynalite = Dynalite().start()
    try:
        tables = table_names()
        db = {"endpoint": dynalite.endpoint, "router": tables["router"],
              "message": tables["message"], "key": crypto_key()}
        command = [sys.executable, "-m", "bench.store_concurrency", "child"]
        subprocess.run(command + [json.dumps(dict(db, create=True))], check=True,
                       env=child_env(), stdout=subprocess.DEVNULL)
        print(f"{processes} processes, {SECONDS:g} s per level; p99 'warm' leaves out the "
              f"first {WARM_UP:g} s")
        for level in levels:
            at = time.time() + START_DELAY
            children = [subprocess.Popen(command + [json.dumps(dict(db, pool=level, at=at))],
                                         env=child_env(), stdout=subprocess.PIPE)
                        for _ in range(processes)]
            time.sleep(max(0.0, at - time.time()))
            cpu = cpu_seconds(dynalite.process.pid)
            answers = [json.loads(c.communicate(timeout=120)[0]) for c in children]
            cpu = (cpu_seconds(dynalite.process.pid) - cpu) / (time.time() - at)
            calls = sum(len(a["every"]) for a in answers)
            p50 = sorted(percentile(a["warmed"], 0.5) for a in answers)[processes // 2]
            print(f"{level:4d} in flight x {processes}: {calls / SECONDS:6.0f} writes/s, "
                  f"p50 {1000 * p50:6.1f} ms, p99 warm "
                  f"{1000 * max(percentile(a['warmed'], 0.99) for a in answers):7.1f} ms, "
                  f"p99 all {1000 * max(percentile(a['every'], 0.99) for a in answers):7.1f} ms, "
                  f"store CPU {100 * cpu:3.0f} %", flush=True)
    finally:
        dynalite.stop()


if __name__ == "__main__":
    if sys.argv[1:2] == ["child"]:
        config = json.loads(sys.argv[2])
        if config.get("create"):
            from bench.seed_db import storage_for
            storage_for(config)
        else:
            child(config)
    else:
        main()
