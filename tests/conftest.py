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


@pytest.fixture(params=[True, False], ids=["lean", "boto3"])
def storage(request, settings):
    """A Storage on fresh tables, once per DynamoDB request path: the lean
    one (connnode/db/lean.py) and boto3 for every call."""
    from connnode.db.storage import Storage

    settings.ddb_lean_calls = request.param
    store = Storage(settings)
    assert (store.dynamo.lean is not None) is request.param
    store.create_tables()
    return store
