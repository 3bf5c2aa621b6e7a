"""A real endpoint node for integration tests: gunicorn with
``conf/endpoint.gunicorn.conf.py`` as a child process on a free port (the
endpoint counterpart of ``tests.harness.ConnectionNode``).

Start connection nodes that must hand out endpoints of this node with
``ConnectionNode(..., endpoint_url=node.url)``: register replies then carry
``pushEndpoint`` URLs that point here, and VAPID ``aud`` is this URL.
"""
import os
import signal
import subprocess
import sys

from connnode.embedded import free_port
from tests.conftest import TEST_CRYPTO_KEY
from tests.harness import ROOT, wait_http

CONFIG = ROOT / "conf" / "endpoint.gunicorn.conf.py"


class EndpointNode:
    """A gunicorn endpoint node as a child process (its own session)."""

    def __init__(self, dynalite, tables, workers=1, log_path=None, **options):
        self.workers = workers
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = dict(os.environ)
        self.env.pop("WEB_CONCURRENCY", None)
        self.env.update({
            "WEB_CONCURRENCY_ENDPOINT": str(workers),
            "CONNNODE_AWS_DDB_ENDPOINT": dynalite.endpoint,
            "CONNNODE_ROUTER_TABLENAME": tables["router"],
            "CONNNODE_MESSAGE_TABLENAME": tables["message"],
            "CONNNODE_CRYPTO_KEY": TEST_CRYPTO_KEY,
            "CONNNODE_HOSTNAME": "127.0.0.1",
            "CONNNODE_ENDPOINT_PORT": str(self.port),
            "CONNNODE_ENDPOINT_URL": self.url,
            "CONNNODE_STATSD_HOST": "",
        })
        for name, value in options.items():
            self.env[f"CONNNODE_{name.upper()}"] = str(value)
        self.log_path = log_path
        self.process = None

    def start(self):
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "gunicorn", "-c", str(CONFIG)],
                cwd=ROOT, env=self.env, stdout=log, stderr=log, start_new_session=True)
        finally:
            if self.log_path:
                log.close()
        wait_http(f"{self.url}/__lbheartbeat__", process=self.process)
        return self

    def stop(self, sig=signal.SIGTERM, timeout=30.0):
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.process = None

    def kill(self):
        """SIGKILL the whole process group."""
        if self.process is not None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
            self.process = None
