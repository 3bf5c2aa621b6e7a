"""The embedded DynamoDB stand-in (dynalite, from npm) for one-machine runs
and tests: find it, start it bound to 127.0.0.1, wait until it answers, stop it.
"""
import os
import random
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class DynaliteError(RuntimeError):
    pass


def die_with_parent():
    """In a child before exec (Linux): get SIGTERM when the parent dies, so a
    killed test run or runner leaves no dynalite behind."""
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def dynalite_binary():
    override = os.environ.get("CONNNODE_DYNALITE")
    candidates = [override] if override else []
    candidates.append(str(PROJECT_ROOT / "node_modules" / ".bin" / "dynalite"))
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which("dynalite")
    if found:
        return found
    raise DynaliteError("dynalite not found: run `npm ci` in the project (make does it)")


def dynalite_command(port, data_path=None):
    command = [dynalite_binary(), "--host", "127.0.0.1", "--port", str(port),
               "--createTableMs", "0", "--deleteTableMs", "0", "--updateTableMs", "0"]
    if data_path:
        command += ["--path", str(data_path)]
    return command


def wait_for_port(port, timeout=30.0, process=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise DynaliteError(f"dynalite exited with status {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise DynaliteError(f"nothing answered on 127.0.0.1:{port} within {timeout} s")


def port_taken(port, host="127.0.0.1"):
    """Whether another process listens on ``host:port`` (a bind that would
    fail with EADDRINUSE; connections in TIME_WAIT do not count)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


#: Ports handed to local servers (dynalite, test and benchmark nodes) come
#: from below Linux's ephemeral range (32768-60999): a client socket's own
#: port cannot then take one between ``free_port`` and the server's bind (the
#: c100k benchmark's clients hold 100,000 ephemeral ports on 127.0.0.x).
SERVER_PORTS = (10000, 32000)


def free_port():
    """A port free on every address, from ``SERVER_PORTS``."""
    for _ in range(200):
        port = random.randint(*SERVER_PORTS)
        with socket.socket() as sock:
            try:
                sock.bind(("0.0.0.0", port))
            except OSError:
                continue
            return port
    raise DynaliteError(f"no free port in {SERVER_PORTS}")


class Dynalite:
    """A dynalite child process; in memory unless ``data_path`` is given."""

    def __init__(self, port=None, data_path=None):
        self.port = port or free_port()
        self.data_path = data_path
        self.process = None

    @property
    def endpoint(self):
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout=30.0):
        if self.data_path:
            Path(self.data_path).mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(dynalite_command(self.port, self.data_path),
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                        preexec_fn=die_with_parent)
        try:
            wait_for_port(self.port, timeout, self.process)
        except DynaliteError:
            self.stop()
            raise
        return self

    def stop(self, timeout=10.0):
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
