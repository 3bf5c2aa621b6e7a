"""Load generator of end-to-end: open-loop HTTP requests at a fixed offered
rate, over keep-alive connections (asyncio, raw sockets), in a process of
its own.

    python -m bench.wpushload '<json config>'

Two kinds of request, one per run (``mode``):

* ``wpush``: ``POST /wpush/v1/<token>`` to the endpoint node, as an
  application server sends it: ``TTL``, ``Content-Encoding: aes128gcm``, the
  same body and the same ``Authorization: vapid t=<JWT>,k=<key>`` header on
  every request (``headers``, ``body_b64``); ``targets`` is a file with a JSON
  list of request paths. The message id is the last path segment of the
  ``Location`` header of the 201.
* ``push``: ``PUT /push/<uaid>`` to the connection node's router port, with
  the body the endpoint builds (PROTOCOL 3.2: a fresh message id per request,
  made with ``key`` before the run starts, ``ttl``, ``data`` and
  ``headers``) and the headers the endpoint's urllib3 client sends;
  ``targets`` is a file with a JSON list of ``[uaid, channelID]``. The
  message id is the ``version`` of the body; success is 200.

Pacing (open loop): request i is due at ``t0 + i / rate``; when it is due it
goes out on an idle keep-alive connection, or on a new one while fewer than
``max_connections`` are open, or else waits in a backlog for the first
connection to become free (so ``t_send - t_sched`` shows when the cap, not
the schedule, set the pace). The next request never waits for a response.
Request i goes to ``targets[i % len(targets)]``. Requests due in the first
``warmup`` seconds are sent but not measured; the measured window is the
next ``duration`` seconds.

Closed loop (``closed: true``; ``rate`` is then ignored): ``max_connections``
keep-alive connections each keep one request in flight, back to back: the
next request goes out on a connection as soon as its previous answer has
been parsed (no pacing), from the start until the end of the measured
window; a connection the server closed is replaced. A request's ``t_sched``
is its send time. ``max_requests`` bounds the run (default 1,000,000; in
``push`` mode that many message ids are made before the run starts); the
totals say ``exhausted`` when the bound, not the window, ended the sending.

Output: ``{"phase": "start"}`` and ``{"phase": "stop"}`` at the edges of the
window (the driver reads CPU use in between), then, once every response has
arrived (or ``drain`` seconds have passed), one JSON line of totals: requests
due in the window, successes answered within the window per second
(``ok_rate``), successes over the whole run (``ok_all``), statuses, HTTP
latency and send-lag percentiles (ms), connections opened, errors and this
process's CPU use in the window. The file ``out`` gets one row per request
due in the window: ``[message id or null, t_sched, t_send, t_done, status]``
(``time.monotonic()`` seconds; status 0 for a transport error).
"""
import asyncio
import base64
import json
import resource
import sys
import time
from collections import deque

OK = {"wpush": 201, "push": 200}


def pct(ordered, fraction):
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, int(fraction * (len(ordered) - 1) + 0.5))]


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# -- requests -------------------------------------------------------------------

def wpush_requests(port, paths, headers, body):
    """One request (bytes) per target, all with the same headers and body."""
    lines = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    requests = []
    for path in paths:
        head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{lines}"
                f"Content-Length: {len(body)}\r\n\r\n")
        requests.append(head.encode("ascii") + body)
    return requests


def push_requests(port, targets, count, key, ttl, data, encoding):
    """``count`` PUT /push requests (bytes) with their message ids, each
    with a body as the endpoint builds it (a fresh message id each)."""
    from connnode.crypto import TokenCrypto

    crypto = TokenCrypto([key])
    made = []
    for i in range(count):
        uaid, chid = targets[i % len(targets)]
        now = time.time()
        skt = int(now * 1_000_000) + i
        version = crypto.message_id(uaid, chid, sortkey_timestamp=skt)
        body = json.dumps({"channelID": chid, "version": version, "ttl": ttl, "topic": None,
                           "timestamp": int(now), "sortkey_timestamp": skt, "data": data,
                           "headers": {"encoding": encoding}}, separators=(",", ":")).encode()
        head = (f"PUT /push/{uaid} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                "Accept-Encoding: identity\r\nUser-Agent: python-urllib3/2.8.0\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
        made.append((head.encode("ascii") + body, version))
    return made


# -- one keep-alive connection -------------------------------------------------------

class HttpConnection(asyncio.Protocol):
    """One request in flight at a time; the response is parsed as it comes
    (Content-Length or chunked body, ``Connection: close`` honoured)."""

    def __init__(self, load):
        self.load = load
        self.transport = None
        self.buf = bytearray()
        self.item = None
        self.closed = False

    def connection_made(self, transport):
        self.transport = transport

    def send(self, item):
        self.item = item
        item[3] = time.monotonic()
        self.transport.write(item[1])

    def data_received(self, data):
        self.buf += data
        if self.item is None:
            return
        parsed = self._response()
        if parsed is None:
            return
        status, location, close = parsed
        item, self.item = self.item, None
        if close:
            self.closed = True
            self.transport.close()
        self.load.answered(self, item, status, location)

    def _response(self):
        buf = self.buf
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            return None
        head = bytes(buf[:end]).decode("latin-1")
        lines = head.split("\r\n")
        status = int(lines[0][9:12])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        pos = end + 4
        if headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                line_end = buf.find(b"\r\n", pos)
                if line_end < 0:
                    return None
                size = int(bytes(buf[pos:line_end]).split(b";")[0], 16)
                pos = line_end + 2
                if size == 0:
                    trailer_end = buf.find(b"\r\n", pos)
                    while trailer_end > pos:  # skip trailer fields
                        pos = trailer_end + 2
                        trailer_end = buf.find(b"\r\n", pos)
                    if trailer_end < 0:
                        return None
                    pos = trailer_end + 2
                    break
                if len(buf) < pos + size + 2:
                    return None
                pos += size + 2
        else:
            pos += int(headers.get("content-length", "0"))
            if len(buf) < pos:
                return None
        del buf[:pos]
        return status, headers.get("location"), headers.get("connection", "").lower() == "close"

    def connection_lost(self, exc):
        self.closed = True
        item, self.item = self.item, None
        self.load.lost(self, item, exc)


# -- the run -----------------------------------------------------------------------------

class Load:
    def __init__(self, config):
        self.config = config
        self.mode = config["mode"]
        self.ok = OK[self.mode]
        self.port = config["port"]
        self.closed_loop = bool(config.get("closed", False))
        self.rate = None if self.closed_loop else float(config["rate"])
        self.warmup = float(config.get("warmup", 1.0))
        self.duration = float(config["duration"])
        if self.closed_loop:
            self.total = int(config.get("max_requests", 1_000_000))
        else:
            self.total = int(round(self.rate * (self.warmup + self.duration)))
        self.max_connections = int(config.get("max_connections", 64))
        with open(config["targets"]) as handle:
            targets = json.load(handle)
        if self.mode == "wpush":
            body = base64.b64decode(config["body_b64"])
            self.requests = wpush_requests(self.port, targets, config["headers"], body)
            self.versions = None
        else:
            made = push_requests(self.port, targets, self.total, config["key"], config["ttl"],
                                 config["data"], config.get("encoding", "aes128gcm"))
            self.requests = [request for request, _ in made]
            self.versions = [version for _, version in made]
        self.idle = []
        self.conns = set()
        self.opening = 0
        self.opened = 0
        self.backlog = deque()
        self.items = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.errors = []
        self.all_answered = None
        self.loop = None
        self.issued = 0  # closed loop: requests made so far
        self.sending_until = None  # closed loop: no new request from then on

    # item: [index, request bytes, t_sched, t_send, t_done, status, message id]
    def dispatch(self, item):
        self.in_flight += 1
        if self.in_flight > self.max_in_flight:
            self.max_in_flight = self.in_flight
        while self.idle:
            conn = self.idle.pop()
            if not conn.closed:
                conn.send(item)
                return
        if len(self.conns) + self.opening < self.max_connections:
            self.opening += 1
            self.loop.create_task(self.open_and_send(item))
        else:
            self.backlog.append(item)

    def refill(self):
        """Closed loop: a new request for every free slot (at most
        ``max_connections`` in flight) until the window ends."""
        if self.issued >= self.total or time.monotonic() >= self.sending_until:
            return
        count = len(self.requests)
        while self.in_flight < self.max_connections and self.issued < self.total:
            i = self.issued
            now = time.monotonic()
            item = [i, self.requests[i % count], now, None, None, None, None]
            self.issued += 1
            self.items.append(item)
            self.dispatch(item)

    async def open_and_send(self, item):
        try:
            _, conn = await self.loop.create_connection(lambda: HttpConnection(self),
                                                        "127.0.0.1", self.port)
        except OSError as exc:
            self.opening -= 1
            self.finish(item, 0, None, exc)
            if self.closed_loop:  # no busy loop against a refusing server
                self.loop.call_later(0.05, self.refill)
            return
        self.opening -= 1
        self.opened += 1
        self.conns.add(conn)
        conn.send(item)

    def answered(self, conn, item, status, location):
        message_id = None
        if status == self.ok:
            if self.versions is not None:
                message_id = self.versions[item[0]]
            elif location:
                message_id = location.rsplit("/", 1)[-1]
        self.finish(item, status, message_id)
        if conn.closed:
            self.conns.discard(conn)
        elif self.backlog:
            conn.send(self.backlog.popleft())
        else:
            self.idle.append(conn)
        if self.closed_loop:
            self.refill()

    def lost(self, conn, item, exc):
        self.conns.discard(conn)
        if item is not None:
            self.finish(item, 0, None, exc or ConnectionError("closed by the server"))
            # what waited for a connection gets a new one
            if self.backlog and len(self.conns) + self.opening < self.max_connections:
                self.opening += 1
                self.loop.create_task(self.open_and_send(self.backlog.popleft()))
            if self.closed_loop:
                self.loop.call_later(0.05, self.refill)

    def finish(self, item, status, message_id, exc=None):
        item[4] = time.monotonic()
        item[5] = status
        item[6] = message_id
        item[1] = None
        self.in_flight -= 1
        if exc is not None and len(self.errors) < 5:
            self.errors.append(repr(exc))
        if self.in_flight == 0 and self.all_answered is not None and not self.all_answered.done():
            self.all_answered.set_result(None)

    async def run(self):
        self.loop = loop = asyncio.get_running_loop()
        monotonic = time.monotonic
        requests, count, rate = self.requests, len(self.requests), self.rate
        t0 = monotonic() + 0.05
        w0, w1 = t0 + self.warmup, t0 + self.warmup + self.duration
        marks = {"start": False, "stop": False}
        usage = {}

        def mark(name):
            marks[name] = True
            usage[name] = resource.getrusage(resource.RUSAGE_SELF)
            print(json.dumps({"phase": name}), flush=True)

        loop.call_at(loop.time() + (w0 - monotonic()), mark, "start")
        loop.call_at(loop.time() + (w1 - monotonic()), mark, "stop")
        if self.closed_loop:
            self.sending_until = w1
            await asyncio.sleep(max(0.0, t0 - monotonic()))
            self.refill()
        i = self.total if self.closed_loop else 0
        while i < self.total:
            now = monotonic()
            due = t0 + i / rate
            if due > now:
                await asyncio.sleep(due - now)
                continue
            while i < self.total and t0 + i / rate <= now:
                item = [i, requests[i % count], t0 + i / rate, None, None, None, None]
                self.items.append(item)
                self.dispatch(item)
                i += 1
        while not marks["stop"]:
            await asyncio.sleep(max(0.001, w1 - monotonic()))
        if self.in_flight:
            self.all_answered = loop.create_future()
            try:
                await asyncio.wait_for(self.all_answered, self.config.get("drain", 10.0))
            except asyncio.TimeoutError:
                pass
        for conn in list(self.conns):
            conn.transport.close()
        return self.summary(w0, w1, usage)

    def summary(self, w0, w1, usage):
        window = w1 - w0
        measured = [item for item in self.items if w0 <= item[2] < w1]
        ok = self.ok
        ok_in_window = sum(1 for item in self.items
                           if item[5] == ok and item[4] is not None and w0 <= item[4] < w1)
        statuses = {}
        for item in measured:
            key = str(item[5]) if item[5] is not None else "none"
            statuses[key] = statuses.get(key, 0) + 1
        http = sorted(1000 * (item[4] - item[3]) for item in measured
                      if item[5] == ok and item[3] is not None)
        lag = sorted(1000 * (item[3] - item[2]) for item in measured if item[3] is not None)
        rows = [[item[6], item[2], item[3], item[4], item[5] or 0] for item in measured]
        with open(self.config["out"], "w") as handle:
            json.dump(rows, handle)
        before, after = usage["start"], usage["stop"]
        cpu = (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) / window
        return {"mode": self.mode, "offered": self.rate, "closed": self.closed_loop,
                "exhausted": self.closed_loop and self.issued >= self.total, "window": window,
                "due": len(measured), "sent": sum(1 for item in self.items if item[3] is not None),
                "ok": statuses.get(str(ok), 0), "ok_rate": ok_in_window / window,
                "ok_all": sum(1 for item in self.items if item[5] == ok),
                "statuses": statuses, "unanswered": self.in_flight,
                "http_p50_ms": pct(http, 0.5), "http_p99_ms": pct(http, 0.99),
                "lag_p50_ms": pct(lag, 0.5), "lag_p99_ms": pct(lag, 0.99),
                "lag_max_ms": lag[-1] if lag else None,
                "connections": self.opened, "max_in_flight": self.max_in_flight,
                "errors": self.errors, "cpu_percent": round(100 * cpu, 1)}


def main():
    raise_nofile()
    config = json.loads(sys.argv[1])
    load = Load(config)
    print(json.dumps(asyncio.run(load.run())), flush=True)


if __name__ == "__main__":
    main()
