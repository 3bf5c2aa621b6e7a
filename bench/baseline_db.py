"""Baselines made of the bare storage calls (``connnode.db``), in a process
of their own, against the benchmark's dynalite.

    python -m bench.baseline_db storm '<json config>'
    python -m bench.baseline_db drain '<json config>'

``storm`` (baseline of reconnect-storm): one greenlet per uaid in the file
``uaids``, all spawned at once; each makes the storage calls of a resumed
hello: the conditional UpdateItem that moves the record to ``node_id``
(``resume_user``) and the check's one Query of the (small) partition.
Prints per-greenlet seconds to completion.

``drain`` (baseline of stored-drain): one greenlet fetches the stored
messages of ``uaid`` the way the drain does: the topic-phase Query, then
timestamp-phase Queries of 10, each followed by the cursor UpdateItem an
acked batch causes, until a Query comes back empty. Prints the seconds at
which each message was fetched.

Common config: ``endpoint``, ``router``, ``message``, ``key``.
"""
from gevent import monkey

monkey.patch_all()

import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import gevent  # noqa: E402

from bench.seed_db import storage_for  # noqa: E402


def storm(config):
    storage = storage_for(config)
    with open(config["uaids"]) as handle:
        uaids = json.load(handle)
    table = storage.current_table
    node_id = config["node_id"]
    expiry = int(time.time()) + storage.settings.max_ttl
    errors = []
    storage.router.get_uaid(uaids[0])  # open the client's first connection

    def one(uaid):
        try:
            written, _ = storage.router.resume_user(uaid, node_id, int(time.time() * 1000), expiry)
            if not written:
                raise RuntimeError("condition failed")
            _, _, later = table.fetch_topic_phase(uaid)
            items = table.timestamp_phase(uaid, later)[1] if later is not None else []
            if not items:
                raise RuntimeError("no stored message")
            return time.monotonic() - started
        except Exception as exc:  # noqa: BLE001 - counted and reported
            if len(errors) < 5:
                errors.append(repr(exc))
            return None

    started = time.monotonic()
    greenlets = [gevent.spawn(one, uaid) for uaid in uaids]
    gevent.joinall(greenlets, timeout=config.get("timeout", 240))
    done = [g.value for g in greenlets if g.value is not None]
    return {"done": done, "failed": len(uaids) - len(done), "errors": errors,
            "elapsed": time.monotonic() - started}


def drain(config):
    storage = storage_for(config)
    table = storage.current_table
    uaid = config["uaid"]
    times = []
    calls = 0
    started = time.monotonic()
    cursor, items = table.fetch_messages(uaid)
    calls += 1
    while True:
        new_cursor, items = table.fetch_timestamp_messages(uaid, cursor)
        calls += 1
        if not items:
            break
        now = time.monotonic() - started
        times.extend([now] * len(items))
        if new_cursor is not None:
            cursor = new_cursor
        table.update_last_message_read(uaid, cursor)
        calls += 1
    return {"times": times, "calls": calls, "elapsed": time.monotonic() - started}


def main():
    mode, config = sys.argv[1], json.loads(sys.argv[2])
    result = {"storm": storm, "drain": drain}[mode](config)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
