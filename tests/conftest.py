"""Shared fixtures. gevent's monkey patching comes first, as in the servers,
so greenlet-based tests run the storage layer exactly as the nodes do."""
from gevent import monkey

monkey.patch_all()

import uuid  # noqa: E402

import pytest  # noqa: E402

from connnode.embedded import Dynalite  # noqa: E402
from connnode.settings import Settings  # noqa: E402

TEST_CRYPTO_KEY = "x8s5vKqPzq3V0n4dQw7cS2m1b9YhGZt6LrJkUe0aFfA="


@pytest.fixture(scope="session")
def dynalite():
    """A real dynalite process, in memory, on a free port, for the whole run."""
    server = Dynalite().start()
    yield server
    server.stop()


def make_settings(dynalite, **overrides):
    suffix = uuid.uuid4().hex[:8]
    options = {
        "aws_ddb_endpoint": dynalite.endpoint,
        "router_tablename": f"router_{suffix}",
        "message_tablename": f"message_{suffix}",
        "crypto_key": TEST_CRYPTO_KEY,
        "hostname": "127.0.0.1",
        "statsd_host": "",
    }
    options.update(overrides)
    return Settings(**options)


@pytest.fixture
def settings(dynalite):
    """Settings with table names of their own, so tests never share data."""
    return make_settings(dynalite)


#: (ddb_lean_calls, wire_http_calls) of each DynamoDB request path.
REQUEST_PATHS = {"lean-wire": (True, True), "lean-urllib3": (True, False), "boto3": (False, False)}


@pytest.fixture(params=list(REQUEST_PATHS.values()), ids=list(REQUEST_PATHS))
def request_path(request):
    """Settings overrides for one DynamoDB request path: the lean one
    (connnode/db/lean.py) over connnode/wire.py or over urllib3, and boto3
    for every call."""
    lean, wire = request.param
    return {"ddb_lean_calls": lean, "wire_http_calls": wire}


@pytest.fixture
def storage(request_path, settings):
    """A Storage on fresh tables, once per DynamoDB request path."""
    from connnode.db.storage import Storage
    from connnode.wire import WirePool

    for name, value in request_path.items():
        setattr(settings, name, value)
    store = Storage(settings)
    assert (store.dynamo.lean is not None) is request_path["ddb_lean_calls"]
    if store.dynamo.lean is not None:
        assert isinstance(store.dynamo.lean.pool, WirePool) is request_path["wire_http_calls"]
    store.create_tables()
    return store
