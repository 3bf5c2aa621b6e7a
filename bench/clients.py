"""A client process: many WebSocket clients (``bench.wsclient``) driven by
JSON commands, one per line on stdin, each answered by one JSON line on stdout.

    python -m bench.clients

Commands (``cmd``):

* ``connect``: open ``count`` clients to ``host:port`` (``concurrency`` at a
  time); each sends hello (with ``uaids[i]`` when given; naming
  ``broadcasts``, ``{id: version}``, when given: a reply with ``errors``
  fails the client) and waits for the reply, then, with ``register``,
  registers one channel; ``source``: the local address to connect from
  (default: the kernel's choice). Answer: ``connected``,
  ``failed``, ``uaids``, ``errors`` (a few), ``elapsed``.
* ``count``: notification frames received so far by clients that finished
  ``connect`` (answer ``notifications``).
* ``storm``: at monotonic time ``at`` open one client per ``uaids`` entry, all
  at once (``bench.stormclient``: plain sockets on one epoll, not asyncio); each sends hello with its uaid and waits for the hello reply and
  ``expect`` notifications. Answer: per client seconds from ``at`` to the hello
  reply (``hello``) and to the last expected notification (``done``), and
  ``failed`` / ``errors`` / ``uaid_changed``. Clients do not ack, so the
  stored messages stay for the next repeat.
* ``drain``: one client with ``uaid`` waits for ``expect`` notifications and
  acks everything that has arrived each time a read from the socket ends (one
  ack frame per received burst, i.e. per batch as it arrives). Answer: seconds
  from sending hello to each notification (``times``), ``acks`` sent.
* ``close``: close every client (close frame, then TCP); ``exit``: leave.

Every wait is bounded (``timeout`` in the command, default 120 s). The soft
RLIMIT_NOFILE is raised to the hard limit at start.
"""
import asyncio
import json
import resource
import sys
import time
import uuid

from bench.stormclient import storm
from bench.wsclient import OP_CLOSE, ConnectionClosed, client_frame, connect

CLOSE_FRAME = client_frame(OP_CLOSE, (1000).to_bytes(2, "big"))


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def hello_frame(uaid=None, broadcasts=None):
    message = {"messageType": "hello", "use_webpush": True, "broadcasts": broadcasts or {}}
    if uaid:
        message["uaid"] = uaid
    return json.dumps(message)


async def hello_and_register(conn, uaid, register, timeout, broadcasts=None):
    """Say hello on ``conn`` (resuming ``uaid`` if given) and, if asked,
    register one channel; (uaid, chid, push endpoint), the last two None
    without a register. Aborts the connection and raises on a failed step."""
    chid = endpoint = None
    try:
        conn.send_text(hello_frame(uaid, broadcasts))
        reply = json.loads(await asyncio.wait_for(conn.recv(), timeout))
        if reply.get("messageType") != "hello" or reply.get("status") != 200:
            raise RuntimeError(f"hello failed: {reply}")
        if broadcasts and (reply.get("broadcasts") or {}).get("errors"):
            raise RuntimeError(f"broadcasts not subscribed: {reply['broadcasts']}")
        if register:
            chid = str(uuid.uuid4())
            conn.send_text(json.dumps({"messageType": "register", "channelID": chid}))
            while True:
                answer = json.loads(await asyncio.wait_for(conn.recv(), timeout))
                if answer.get("messageType") == "register":
                    break
            endpoint = answer.get("pushEndpoint")
            if answer.get("status") != 200 or not endpoint:
                raise RuntimeError(f"register failed: {answer}")
    except BaseException:
        conn.abort()
        raise
    return reply["uaid"], chid, endpoint


class Clients:
    def __init__(self):
        self.conns = []
        self.storm_socks = []
        self.notifications = 0

    def _count(self, _conn, payload):
        if b'"notification"' in payload:
            self.notifications += 1

    # -- connect ------------------------------------------------------------------
    async def _one(self, host, port, uaid, register, timeout, broadcasts=None, source=None):
        conn = await connect(host, port, timeout=timeout, source=source)
        uaid, _, _ = await hello_and_register(conn, uaid, register, timeout, broadcasts)
        conn.on_text = self._count
        conn.user = uaid
        return conn

    async def cmd_connect(self, host, port, count, register=False, uaids=None,
                          concurrency=100, timeout=120.0, broadcasts=None, source=None):
        started = time.monotonic()
        gate = asyncio.Semaphore(concurrency)
        errors = []

        async def guarded(i):
            async with gate:
                try:
                    return await self._one(host, port, uaids[i] if uaids else None, register,
                                           timeout, broadcasts, source)
                except (OSError, asyncio.TimeoutError, ConnectionClosed, RuntimeError, ValueError) as exc:
                    if len(errors) < 5:
                        errors.append(repr(exc))
                    return None

        results = await asyncio.gather(*(guarded(i) for i in range(count)))
        made = [conn for conn in results if conn is not None]
        self.conns.extend(made)
        return {"connected": len(made), "failed": count - len(made), "errors": errors,
                "uaids": [conn.user for conn in made], "elapsed": time.monotonic() - started}

    def cmd_count(self):
        return {"notifications": self.notifications}

    # -- storm --------------------------------------------------------------------
    async def cmd_storm(self, host, port, uaids, at, expect=1, timeout=120.0):
        # Blocking on purpose: nothing else runs in this process meanwhile,
        # and the storm's own loop costs a fraction of asyncio's (stormclient).
        answer, socks = storm(host, port, uaids, at, expect, timeout)
        self.storm_socks.extend(socks)
        return answer

    # -- drain --------------------------------------------------------------------
    async def cmd_drain(self, host, port, uaid, expect, timeout=120.0):
        loop = asyncio.get_running_loop()
        times = []
        pending = []
        finished = loop.create_future()
        state = {"acks": 0, "flush": False, "start": None}

        def flush():
            state["flush"] = False
            if pending and not conn.closed:
                conn.send_text(json.dumps({"messageType": "ack", "updates": pending[:]}))
                state["acks"] += 1
                del pending[:]

        def on_text(_conn, payload):
            message = json.loads(payload)
            if message.get("messageType") != "notification":
                return
            times.append(time.monotonic() - state["start"])
            pending.append({"channelID": message["channelID"], "version": message["version"],
                            "code": 100})
            if not state["flush"]:
                # Runs after this read's frames are all parsed: one ack per burst.
                state["flush"] = True
                loop.call_soon(flush)
            if len(times) >= expect and not finished.done():
                finished.set_result(None)

        conn = await connect(host, port, timeout=timeout)
        self.conns.append(conn)
        state["start"] = time.monotonic()
        conn.send_text(hello_frame(uaid))
        reply = json.loads(await asyncio.wait_for(conn.recv(), timeout))
        t_hello = time.monotonic() - state["start"]
        if reply.get("status") != 200 or reply.get("uaid") != uaid:
            return {"error": f"hello failed: {reply}"}
        conn.on_text = on_text
        while conn._messages:  # anything queued behind the hello reply
            on_text(conn, conn._messages.popleft())
        try:
            await asyncio.wait_for(finished, timeout)
        except asyncio.TimeoutError:
            pass
        await asyncio.sleep(0.05)
        flush()
        return {"hello": t_hello, "times": times, "acks": state["acks"],
                "closed": conn.closed, "close_code": conn.close_code}

    # -- close --------------------------------------------------------------------
    async def cmd_close(self, timeout=10.0):
        for conn in self.conns:
            conn.close()
        for sock in self.storm_socks:
            try:
                sock.send(CLOSE_FRAME)
            except OSError:
                pass
            sock.close()
        self.storm_socks = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not all(conn.closed for conn in self.conns):
            await asyncio.sleep(0.05)
        closed = sum(conn.closed for conn in self.conns)
        for conn in self.conns:
            if not conn.closed:
                conn.abort()
        total = len(self.conns)
        self.conns = []
        self.notifications = 0
        return {"closed": closed, "total": total}


async def serve_commands(clients):
    """Answer the driver's JSON commands on stdin (one ``cmd_<name>`` call
    per line, its result as one JSON line) until ``exit`` or end of input."""
    raise_nofile()
    loop = asyncio.get_running_loop()
    clients.loop = loop
    reader = asyncio.StreamReader(limit=1 << 26)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    print(json.dumps({"ready": True, "pid": __import__("os").getpid()}), flush=True)
    while True:
        line = await reader.readline()
        if not line:
            break
        command = json.loads(line)
        name = command.pop("cmd")
        if name == "exit":
            break
        try:
            handler = getattr(clients, f"cmd_{name}")
            result = handler(**command)
            if asyncio.iscoroutine(result):
                result = await result
        except Exception as exc:  # noqa: BLE001 - reported to the driver
            result = {"error": repr(exc)}
        print(json.dumps(result), flush=True)
    for conn in clients.conns:
        conn.abort()


if __name__ == "__main__":
    asyncio.run(serve_commands(Clients()))
