"""What every benchmark needs on the driver side: processes (dynalite, the
connection node under gunicorn, the baselines, the client processes), /proc
readings (RSS, CPU time, children), statistics, results and plots.

The driver itself never imports gevent: it only starts and watches processes.
"""
import json
import os
import resource
import selectors
import signal
import socket
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

from connnode.embedded import SERVER_PORTS, Dynalite, free_port  # noqa: F401 - re-exported

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
RESULTS = BENCH / "results"
LOGS = RESULTS / "logs"
START_TIMEOUT = 60.0
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


def raise_nofile():
    """Soft RLIMIT_NOFILE up to the hard limit (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def crypto_key():
    from cryptography.fernet import Fernet
    return Fernet.generate_key().decode("ascii")


def table_names():
    suffix = uuid.uuid4().hex[:8]
    return {"router": f"bench_router_{suffix}", "message": f"bench_message_{suffix}"}


def child_env(**extra):
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update({key: str(value) for key, value in extra.items()})
    return env


def die_with_parent():
    """preexec_fn of every child: SIGTERM when the driver dies (Linux
    PR_SET_PDEATHSIG), so an interrupted run leaves no process behind."""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def log_file(name):
    LOGS.mkdir(parents=True, exist_ok=True)
    return open(LOGS / f"{name}.log", "ab")


# -- /proc --------------------------------------------------------------------

def rss_kb(pid):
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def cpu_seconds(pid):
    """utime + stime of one process, in seconds."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def children_of(pid):
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(entry))
    return sorted(found)


def settle_rss(pid, interval=0.5, stable_polls=3, tolerance_kb=256, timeout=20.0):
    """Poll VmRSS until ``stable_polls`` successive readings stay within
    ``tolerance_kb`` of each other (or ``timeout``); the last reading."""
    deadline = time.monotonic() + timeout
    readings = [rss_kb(pid)]
    while time.monotonic() < deadline:
        time.sleep(interval)
        readings.append(rss_kb(pid))
        window = readings[-(stable_polls + 1):]
        if len(window) > stable_polls and max(window) - min(window) <= tolerance_kb:
            break
    return readings[-1]


class CpuMeter:
    """CPU time used by a set of processes between start() and stop()."""

    def __init__(self, pids):
        self.pids = dict(pids)
        self.begin = None

    def start(self):
        self.begin = ({name: cpu_seconds(pid) for name, pid in self.pids.items()}, time.monotonic())

    def stop(self):
        """{name: percent of one core} over the interval."""
        before, t0 = self.begin
        wall = time.monotonic() - t0
        return {name: round(100.0 * (cpu_seconds(pid) - before[name]) / wall, 1)
                for name, pid in self.pids.items()}


# -- statistics ------------------------------------------------------------------

def median(values):
    return statistics.median(values) if values else None


def percentile(values, fraction):
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, int(round(fraction * (len(ordered) - 1)))))
    return ordered[index]


def ratio(value, baseline):
    if value is None or not baseline:
        return None
    return value / baseline


# -- processes ----------------------------------------------------------------------

def wait_port(port, timeout=START_TIMEOUT, process=None, what="process"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode} before port {port} opened")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what}: nothing answered on 127.0.0.1:{port} within {timeout} s")


def wait_http_ok(port, path="/__lbheartbeat__", timeout=START_TIMEOUT, process=None, what="process"):
    deadline = time.monotonic() + timeout
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode} before answering")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(request)
                if sock.recv(64).startswith(b"HTTP/1.1 2"):
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{what}: {path} on port {port} did not answer within {timeout} s")


def stop_process(process, sig=signal.SIGTERM, timeout=15.0, group=False):
    if process is None or process.poll() is not None:
        return
    try:
        if group:
            os.killpg(process.pid, sig)
        else:
            process.send_signal(sig)
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        if group:
            os.killpg(process.pid, signal.SIGKILL)
        else:
            process.kill()
        process.wait()
    except ProcessLookupError:
        pass


def free_port_block(count):
    for _ in range(50):
        base = free_port()
        if base + count > SERVER_PORTS[1]:
            continue
        sockets = []
        try:
            for offset in range(count):
                sock = socket.socket()
                sock.bind(("0.0.0.0", base + offset))
                sockets.append(sock)
            return base
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
    raise RuntimeError("no block of free ports")


def node_env(dynalite, tables, key, **options):
    """The environment of a node process: ``CONNNODE_*`` settings for this
    dynalite, these tables and key, statsd off, plus ``options`` (upper-case
    names are passed as they are, e.g. ``WEB_CONCURRENCY``); no ini file."""
    settings = {"aws_ddb_endpoint": dynalite.endpoint, "router_tablename": tables["router"],
                "message_tablename": tables["message"], "crypto_key": key,
                "hostname": "127.0.0.1", "statsd_host": ""}
    plain = {name: value for name, value in options.items() if name.isupper()}
    settings.update({name: value for name, value in options.items() if not name.isupper()})
    env = child_env(**plain, **{f"CONNNODE_{name.upper()}": value
                                for name, value in settings.items()})
    env.pop("CONNNODE_CONFIG", None)
    return env


class ConnectionNode:
    """The connection node as production runs it (``gunicorn.conf.py``), one
    worker unless told otherwise, as a child process in its own session."""

    def __init__(self, dynalite, tables, key, workers=1, log_name="connection-node", port=None,
                 router_port=None, **options):
        self.port = port or free_port()
        self.router_port = router_port or free_port_block(2 * workers)
        self.workers = workers
        self.env = node_env(dynalite, tables, key, **{
            "WEB_CONCURRENCY": workers, "port": self.port, "router_port": self.router_port,
            "endpoint_url": "http://127.0.0.1:8082", "hello_timeout": 300, **options})
        self.log_name = log_name
        self.process = None

    @property
    def node_id(self):
        return f"http://127.0.0.1:{self.router_port}"

    def start(self):
        log = log_file(self.log_name)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", str(ROOT / "gunicorn.conf.py")],
            cwd=ROOT, env=self.env, stdout=log, stderr=log, start_new_session=True,
            preexec_fn=die_with_parent)
        log.close()
        wait_http_ok(self.port, process=self.process, what="connection node")
        for slot in range(self.workers):
            wait_http_ok(self.router_port + slot, process=self.process, what="connection node router")
        return self

    def worker_pids(self):
        return children_of(self.process.pid)

    def worker_pid(self):
        pids = self.worker_pids()
        if len(pids) != 1:
            raise RuntimeError(f"expected one worker, found {pids}")
        return pids[0]

    def stop(self):
        """Graceful: SIGTERM, then SIGKILL after 20 s."""
        stop_process(self.process, timeout=20.0, group=True)
        self.process = None

    def kill(self):
        """SIGKILL the master and its workers: for a node whose graceful
        shutdown (closing and logging every session) is not being measured."""
        stop_process(self.process, sig=signal.SIGKILL, timeout=10.0, group=True)
        self.process = None


class Server:
    """A baseline server script (``python -m bench.<module> ...``) that prints
    one JSON line when it is listening."""

    def __init__(self, module, *args, log_name=None):
        self.module = module
        self.args = [str(arg) for arg in args]
        self.log_name = log_name or module
        self.process = None
        self.info = None

    def start(self, timeout=START_TIMEOUT):
        log = log_file(self.log_name)
        self.process = subprocess.Popen(
            [sys.executable, "-m", f"bench.{self.module}", *self.args], cwd=ROOT,
            env=child_env(), stdout=subprocess.PIPE, stderr=log, start_new_session=True,
            preexec_fn=die_with_parent)
        log.close()
        self.lines = LineReader(self.process.stdout)
        line = self.lines.read_line(timeout)
        if not line:
            raise RuntimeError(f"{self.module} did not start (exit {self.process.poll()})")
        self.info = json.loads(line)
        return self

    @property
    def pid(self):
        return self.process.pid

    def stop(self):
        stop_process(self.process, timeout=20.0, group=True)
        self.process = None


class LineReader:
    """Lines from a child's stdout pipe, each within a timeout (no blocking
    buffered reads: several lines may arrive in one read)."""

    def __init__(self, stream):
        self.fd = stream.fileno()
        self.buffer = b""

    def read_line(self, timeout):
        """One line ('' on EOF or timeout)."""
        deadline = time.monotonic() + timeout
        selector = selectors.DefaultSelector()
        selector.register(self.fd, selectors.EVENT_READ)
        try:
            while b"\n" not in self.buffer:
                left = deadline - time.monotonic()
                if left <= 0 or not selector.select(left):
                    return ""
                chunk = os.read(self.fd, 1 << 20)
                if not chunk:
                    return ""
                self.buffer += chunk
        finally:
            selector.close()
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line.decode("utf-8")


def run_script(module, *args, timeout=300.0, log_name=None):
    """Run ``python -m bench.<module> args`` to its end; its last stdout line as JSON."""
    log = log_file(log_name or module)
    try:
        done = subprocess.run([sys.executable, "-m", f"bench.{module}", *map(str, args)],
                              cwd=ROOT, env=child_env(), stdout=subprocess.PIPE, stderr=log,
                              timeout=timeout, check=False, preexec_fn=die_with_parent)
    finally:
        log.close()
    lines = done.stdout.decode("utf-8").strip().splitlines()
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"bench.{module} failed with {done.returncode} (log: {LOGS / (log_name or module)}.log)")
    return json.loads(lines[-1])


class ClientProcess:
    """One client process (``bench.clients`` unless another module is named)."""

    module = "bench.clients"
    args = ()
    log_name = "clients"

    def __init__(self, index=0):
        log = log_file(self.log_name)
        self.process = subprocess.Popen(
            [sys.executable, "-m", self.module, *self.args], cwd=ROOT, env=child_env(),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, start_new_session=True,
            preexec_fn=die_with_parent)
        log.close()
        self.lines = LineReader(self.process.stdout)
        hello = self.lines.read_line(START_TIMEOUT)
        if not hello:
            raise RuntimeError("client process did not start")
        self.pid = json.loads(hello)["pid"]

    def send(self, command):
        self.process.stdin.write((json.dumps(command) + "\n").encode("utf-8"))
        self.process.stdin.flush()

    def receive(self, timeout):
        line = self.lines.read_line(timeout)
        if not line:
            raise RuntimeError(f"client process {self.pid} gave no answer within {timeout} s "
                               f"(exit {self.process.poll()})")
        answer = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"client process {self.pid}: {answer['error']}")
        return answer

    def stop(self):
        if self.process.poll() is None:
            try:
                self.send({"cmd": "exit"})
                self.process.stdin.close()
            except OSError:
                pass
        stop_process(self.process, timeout=10.0)


class Fleet:
    """Several client processes, commanded together."""

    def __init__(self, processes):
        self.procs = [ClientProcess(i) for i in range(processes)]

    @property
    def pids(self):
        return [proc.pid for proc in self.procs]

    def all(self, commands, timeout=180.0):
        """Send commands[i] to process i (None: skip it); the answers."""
        active = [(proc, cmd) for proc, cmd in zip(self.procs, commands) if cmd is not None]
        for proc, cmd in active:
            proc.send(cmd)
        deadline = time.monotonic() + timeout
        return [proc.receive(max(0.1, deadline - time.monotonic())) for proc, _ in active]

    def same(self, command, timeout=180.0):
        return self.all([command] * len(self.procs), timeout)

    def split(self, count):
        """``count`` spread over the processes."""
        n = len(self.procs)
        return [count // n + (1 if i < count % n else 0) for i in range(n)]

    def connect(self, port, count, register=False, concurrency=100, timeout=180.0,
                broadcasts=None):
        """``broadcasts``: the ``{id: version}`` every hello names (each client
        fails unless the node knows every id, i.e. subscribes it)."""
        extra = {"broadcasts": broadcasts} if broadcasts else {}
        answers = self.all([{"cmd": "connect", "host": "127.0.0.1", "port": port, "count": share,
                             "register": register, "concurrency": concurrency,
                             "timeout": min(timeout, 120.0), **extra} if share else None
                            for share in self.split(count)], timeout)
        failed = sum(a["failed"] for a in answers)
        if failed:
            errors = [e for a in answers for e in a["errors"]]
            raise RuntimeError(f"{failed} of {count} clients failed to connect: {errors[:3]}")
        return [uaid for a in answers for uaid in a["uaids"]]

    def close_all(self, timeout=30.0):
        return self.same({"cmd": "close", "timeout": min(10.0, timeout)}, timeout)

    def stop(self):
        for proc in self.procs:
            proc.stop()


# -- Megaphone broadcasts ---------------------------------------------------------

class Megaphone:
    """A stand-in Megaphone service in a thread of the driver: ``GET`` (any
    path) with ``Authorization: Bearer <token>`` answers ``{"code": 200,
    "broadcasts": versions}``, anything else 401. Point a node's
    ``megaphone_api_url`` at ``url``; change ``versions`` to publish."""

    def __init__(self, versions, token="bench-megaphone-token"):
        self.versions = dict(versions)
        self.token = token
        self.polls = 0
        self.server = None

    def start(self):
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        service = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                if self.headers.get("Authorization") == f"Bearer {service.token}":
                    service.polls += 1
                    status, body = 200, {"code": 200, "broadcasts": dict(service.versions)}
                else:
                    status, body = 401, {"code": 401, "errno": 109, "error": "Unauthorized"}
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, name="megaphone", daemon=True).start()
        return self

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server.server_port}/v1/broadcasts"

    def node_options(self, poll_interval=1):
        """The settings of a connection node polling this service."""
        return {"megaphone_api_url": self.url, "megaphone_api_token": self.token,
                "megaphone_poll_interval": poll_interval}

    def stop(self):
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


def hello_broadcasts(port, broadcasts, timeout=10.0):
    """One hello naming ``broadcasts`` on a fresh WebSocket to the node; the
    reply's ``broadcasts`` object (the connection is then closed)."""
    import asyncio

    from bench.wsclient import connect

    async def probe():
        conn = await connect("127.0.0.1", port, timeout=timeout)
        try:
            conn.send_text(json.dumps({"messageType": "hello", "use_webpush": True,
                                       "broadcasts": broadcasts}))
            return json.loads(await asyncio.wait_for(conn.recv(), timeout)).get("broadcasts")
        finally:
            conn.abort()

    return asyncio.run(probe())


def wait_broadcast_known(port, broadcast_id, timeout=30.0):
    """Wait until the node knows ``broadcast_id`` (its first poll has been
    applied): a hello naming it with a version no service holds gets the
    current version back. Returns that version."""
    deadline = time.monotonic() + timeout
    while True:
        reply = hello_broadcasts(port, {broadcast_id: "bench-probe"}) or {}
        if broadcast_id in reply:
            return reply[broadcast_id]
        if time.monotonic() >= deadline:
            raise RuntimeError(f"the node does not know {broadcast_id} after {timeout} s: {reply}")
        time.sleep(0.2)


# -- results ------------------------------------------------------------------------

def write_result(name, result):
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2, sort_keys=False) + "\n")
    tmp.replace(path)
    return path


def pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_plot(plt, fig, axes, name, grid_which="major", legend_size=None):
    """Grid and legend on ``axes``, then ``bench/results/<name>.png``; its path."""
    for axis in axes:
        axis.grid(True, which=grid_which, alpha=0.3)
        axis.legend(fontsize=legend_size)
    fig.tight_layout()
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def machine():
    return {"cores": os.cpu_count(), "python": sys.version.split()[0],
            "nofile": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def row(metric, unit, value, baseline, target=None, better="lower"):
    """One line of a benchmark's table. ``target``: the ratio the issue asks
    for (value / baseline), at most it when ``better`` is "lower", at least
    it when "higher"; None for informational rows."""
    if isinstance(value, tuple) or isinstance(baseline, tuple):
        # A pair of figures (e.g. p50 / p99): the ratio of each.
        pairs = list(zip(value or (), baseline or ()))
        return {"metric": metric, "unit": unit, "connnode": value, "baseline": baseline,
                "ratio": [ratio(a, b) for a, b in pairs] or None, "target": None, "met": None}
    r = ratio(value, baseline)
    met = None
    if target is not None and r is not None:
        met = r <= target if better == "lower" else r >= target
    return {"metric": metric, "unit": unit, "connnode": value, "baseline": baseline,
            "ratio": r, "target": (f"<= {target}x" if better == "lower" else f">= {target}x")
            if target is not None else None, "met": met}


def write_json_file(path, data):
    with open(path, "w") as handle:
        json.dump(data, handle)
    return path


class Popen:
    """A ``python -m bench.<module> '<json>'`` child whose stdout is read line by line."""

    def __init__(self, module, config, log_name=None):
        log = log_file(log_name or module)
        self.process = subprocess.Popen(
            [sys.executable, "-m", f"bench.{module}", json.dumps(config)], cwd=ROOT,
            env=child_env(), stdout=subprocess.PIPE, stderr=log, start_new_session=True,
            preexec_fn=die_with_parent)
        log.close()
        self.lines = LineReader(self.process.stdout)
        self.pid = self.process.pid
        self.module = module

    def read(self, timeout):
        line = self.lines.read_line(timeout)
        if not line:
            stop_process(self.process, timeout=5.0)
            raise RuntimeError(f"bench.{self.module} gave no output within {timeout} s "
                               f"(exit {self.process.poll()})")
        return json.loads(line)

    def wait(self, timeout=30.0):
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            stop_process(self.process, timeout=5.0)
