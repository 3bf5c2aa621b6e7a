"""A client process of end-to-end: ``bench.clients`` plus subscriptions,
arrival times and acks.

    python -m bench.e2e_clients

Same JSON command loop as ``bench.clients`` (one command per stdin line, one
JSON answer per stdout line) and the same commands (``count``, ``close``,
``exit``), plus:

* ``subscribe``: open ``count`` clients to ``host:port`` (``concurrency`` at a
  time); each says hello, registers one channel (no key: a v1 endpoint) and
  keeps its connection. Answer: ``subscriptions`` (``[uaid, channelID,
  pushEndpoint]`` per client), ``failed``, ``errors`` (a few), ``elapsed``.
* ``arrivals``: write ``{version: time.monotonic() at arrival}`` of every
  notification frame received since the previous ``arrivals`` to the file
  ``path`` and forget them. Answer: ``count`` (frames in the file),
  ``duplicates`` (frames whose version had already arrived), ``acks`` (ack
  frames sent so far), ``notifications`` (frames so far).

Arrival time is ``time.monotonic()`` when the frame has been parsed (CLOCK_
MONOTONIC: the same clock in every process of the machine, so the driver can
subtract the load generator's send times). Every notification is acked with
code 100; the acks of one connection are sent together once the frames of a
read have all been parsed (one ack frame per received burst; at the rates
measured that is almost always one ack per notification). Without acks the
connection node would hold up to 100 outstanding direct messages per
connection and then answer 503 (busy), and the endpoint would store instead.
"""
import asyncio
import json
import os
import time

from bench.clients import Clients, hello_and_register, serve_commands
from bench.wsclient import ConnectionClosed, connect


class EndToEndClients(Clients):
    def __init__(self):
        super().__init__()
        self.arrivals = {}
        self.duplicates = 0
        self.acks = 0
        self.to_ack = {}  # conn -> [update, ...]
        self.flush_scheduled = False
        self.loop = None

    # -- frames --------------------------------------------------------------------
    def _on_frame(self, conn, payload):
        now = time.monotonic()
        if b'"notification"' not in payload:
            return
        message = json.loads(payload)
        if message.get("messageType") != "notification":
            return
        version = message["version"]
        self.notifications += 1
        if version in self.arrivals:
            self.duplicates += 1
        else:
            self.arrivals[version] = now
        pending = self.to_ack.get(conn)
        if pending is None:
            pending = self.to_ack[conn] = []
        pending.append({"channelID": message["channelID"], "version": version, "code": 100})
        if not self.flush_scheduled:
            # Runs once the frames of this read (and of any other ready
            # socket) are parsed.
            self.flush_scheduled = True
            self.loop.call_soon(self._flush)

    def _flush(self):
        self.flush_scheduled = False
        pending, self.to_ack = self.to_ack, {}
        for conn, updates in pending.items():
            if not conn.closed:
                conn.send_text(json.dumps({"messageType": "ack", "updates": updates},
                                          separators=(",", ":")))
                self.acks += 1

    # -- subscribe ---------------------------------------------------------------------
    async def _subscribe_one(self, host, port, timeout):
        conn = await connect(host, port, timeout=timeout)
        conn.user = list(await hello_and_register(conn, None, True, timeout))
        conn.on_text = self._on_frame
        return conn

    async def cmd_subscribe(self, host, port, count, concurrency=100, timeout=120.0):
        self.loop = asyncio.get_running_loop()
        started = time.monotonic()
        gate = asyncio.Semaphore(concurrency)
        errors = []

        async def guarded():
            async with gate:
                try:
                    return await self._subscribe_one(host, port, timeout)
                except (OSError, asyncio.TimeoutError, ConnectionClosed, RuntimeError,
                        ValueError) as exc:
                    if len(errors) < 5:
                        errors.append(repr(exc))
                    return None

        results = await asyncio.gather(*(guarded() for _ in range(count)))
        made = [conn for conn in results if conn is not None]
        self.conns.extend(made)
        return {"subscriptions": [conn.user for conn in made], "failed": count - len(made),
                "errors": errors, "elapsed": time.monotonic() - started}

    def cmd_arrivals(self, path):
        arrivals, self.arrivals = self.arrivals, {}
        tmp = f"{path}.tmp"
        with open(tmp, "w") as handle:
            json.dump(arrivals, handle)
        os.replace(tmp, path)
        return {"count": len(arrivals), "duplicates": self.duplicates, "acks": self.acks,
                "notifications": self.notifications}


if __name__ == "__main__":
    asyncio.run(serve_commands(EndToEndClients()))
