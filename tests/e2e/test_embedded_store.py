"""The embedded store as `make run` starts it: it never uses a store that is
not its own, and it never outlives the process that started it."""
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from connnode.embedded import wait_for_port
from tests.harness import ROOT, alive, pick_port

pytestmark = pytest.mark.timeout(90)

CONNNODE = [sys.executable, "-m", "connnode.cli"]


def env_for(tmp_path, port):
    env = dict(os.environ)
    env.pop("CONNNODE_AWS_DDB_ENDPOINT", None)
    env.update({"CONNNODE_EMBEDDED_DDB_PORT": str(port), "CONNNODE_DATA_DIR": str(tmp_path / "var"),
                "CONNNODE_HOSTNAME": "127.0.0.1", "CONNNODE_STATSD_HOST": ""})
    return env


@pytest.fixture
def foreign_listener():
    """Some other process's server on a port."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", pick_port()))
    sock.listen(8)
    yield sock.getsockname()[1]
    sock.close()


@pytest.mark.parametrize("command", [["run"], ["dynalite"]])
def test_a_taken_store_port_stops_start_up(tmp_path, foreign_listener, command):
    result = subprocess.run(CONNNODE + command, cwd=ROOT, env=env_for(tmp_path, foreign_listener),
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert f"127.0.0.1:{foreign_listener} (embedded_ddb_port) is already in use" in result.stderr
    assert not (tmp_path / "var" / "supervisord.pid").exists()


def test_dynalite_dies_with_its_parent(tmp_path):
    """`connnode dynalite` under a parent that is SIGKILLed (supervisord in
    `make run`) ends too, instead of holding the port and the data."""
    port = pick_port()
    parent = subprocess.Popen(
        [sys.executable, "-c",
         "import subprocess, sys; p = subprocess.Popen(sys.argv[1:]); print(p.pid, flush=True);"
         " p.wait()"] + CONNNODE + ["dynalite"],
        cwd=ROOT, env=env_for(tmp_path, port), stdout=subprocess.PIPE, text=True)
    try:
        child = int(parent.stdout.readline())
        wait_for_port(port, timeout=30)
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        deadline = time.monotonic() + 10
        while alive(child):
            assert time.monotonic() < deadline, "dynalite outlived its parent"
            time.sleep(0.05)
    finally:
        parent.kill()
        parent.wait()
