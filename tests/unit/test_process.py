"""The worker start-up helpers both nodes share (connnode.process), and the
placeholder apps the two gunicorn configs load by name."""
import gc
import importlib
import resource

import pytest

from connnode import process


def call(app):
    seen = {}
    body = app({}, lambda status, headers: seen.update(status=status, headers=headers))
    return seen, b"".join(body)


@pytest.mark.parametrize("path, name", [
    ("connnode.connection.worker:placeholder_app", b"connection node"),
    ("connnode.endpoint.worker:placeholder_app", b"endpoint node"),
])
def test_placeholder_apps_load_by_their_config_paths_and_answer_503(path, name):
    module, attribute = path.split(":")
    seen, body = call(getattr(importlib.import_module(module), attribute))
    assert seen["status"] == "503 Service Unavailable"
    assert seen["headers"] == [("Content-Type", "text/plain")]
    assert body == name + b" not started (gunicorn hooks missing?)"


def test_placeholder_app_factory():
    app = process.placeholder_app("test node")
    assert app.__name__ == "placeholder_app"
    assert call(app)[1] == b"test node not started (gunicorn hooks missing?)"
    assert call(app)[1] == call(app)[1]


def test_raise_nofile_limit_never_lowers():
    before = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    assert process.raise_nofile_limit() >= before
    assert process.raise_nofile_limit(ceiling=1) >= before


@pytest.mark.parametrize("host, loopback", [
    ("localhost", True), ("LOCALHOST ", True), ("127.0.0.1", True), ("127.5.6.7", True),
    ("::1", True), ("", False), (None, False), ("0.0.0.0", False), ("10.0.0.5", False),
    ("node.localhost", False), ("example.com", False),
])
def test_is_loopback_host(host, loopback):
    assert process.is_loopback_host(host) is loopback


def test_freeze_startup_objects():
    try:
        process.freeze_startup_objects()
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


def test_worker_modules_share_the_helpers():
    from connnode.connection import worker as connection_worker
    from connnode.endpoint import worker as endpoint_worker

    assert connection_worker.raise_nofile_limit is process.raise_nofile_limit
    assert endpoint_worker.raise_nofile_limit is process.raise_nofile_limit
    assert connection_worker.freeze_startup_objects is process.freeze_startup_objects
    assert endpoint_worker.freeze_startup_objects is process.freeze_startup_objects
    assert connection_worker.is_loopback_host is process.is_loopback_host
