"""The Megaphone API of the endpoint node (issue 15, "Where versions come
from"): the broadcasts table on a real dynalite, a real gunicorn endpoint
node answering PUT/GET /v1/broadcasts, and `connnode broadcast set|list`
against it."""
import os
import subprocess
import sys
import uuid

import pytest
import requests

from connnode.db.broadcasts import PREFLIGHT_ID, BroadcastTable
from connnode.db.storage import Storage
from tests.conftest import make_settings
from tests.harness import ROOT, EndpointNode

pytestmark = pytest.mark.timeout(120)

RS_TOKEN = "rs-token-0123456789"
OTHER_TOKEN = "other-token-abcdef"
READER_TOKEN = "reader-token-xyz"
TOKENS = f"remote-settings={RS_TOKEN},other={OTHER_TOKEN}"
MORE_INFO = "http://autopush.readthedocs.io/en/latest/http.html#error-codes"


def table_settings(dynalite, **overrides):
    return make_settings(dynalite, broadcast_tablename=f"broadcasts_{uuid.uuid4().hex[:8]}",
                         **overrides)


# -- storage -----------------------------------------------------------------------

@pytest.fixture
def storage(request_path, dynalite):
    """A Storage on fresh tables (a broadcasts table of its own too), once
    per DynamoDB request path."""
    store = Storage(table_settings(dynalite, **request_path))
    store.create_tables()
    return store


def test_create_tables_makes_the_broadcasts_table(dynalite):
    settings = table_settings(dynalite)
    storage = Storage(settings)
    assert storage.dynamo.table_status(settings.broadcast_tablename) is None
    storage.create_tables()
    assert storage.dynamo.table_status(settings.broadcast_tablename) == "ACTIVE"
    table = storage.dynamo.call("describe_table", TableName=settings.broadcast_tablename)["Table"]
    assert table["KeySchema"] == [{"AttributeName": "broadcast_id", "KeyType": "HASH"}]
    storage.create_tables()  # idempotent
    storage.preflight()
    assert storage.broadcasts.all() == {}  # the preflight's item is gone


def test_preflight_needs_the_broadcasts_table(dynalite):
    settings = table_settings(dynalite)
    storage = Storage(settings)
    storage.create_tables()
    storage.dynamo.call("delete_table", TableName=settings.broadcast_tablename)
    from connnode.db.dynamo import StorageError
    with pytest.raises(StorageError):
        storage.preflight()


def test_cli_create_tables_makes_the_broadcasts_table(dynalite):
    settings = table_settings(dynalite)
    env = dict(os.environ, CONNNODE_AWS_DDB_ENDPOINT=dynalite.endpoint,
               CONNNODE_ROUTER_TABLENAME=settings.router_tablename,
               CONNNODE_MESSAGE_TABLENAME=settings.message_tablename,
               CONNNODE_BROADCAST_TABLENAME=settings.broadcast_tablename,
               CONNNODE_CRYPTO_KEY=settings.crypto_key, CONNNODE_STATSD_HOST="")
    done = subprocess.run([sys.executable, "-m", "connnode.cli", "db", "create-tables",
                           "--preflight"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert settings.broadcast_tablename in done.stdout
    storage = Storage(settings)
    assert storage.dynamo.table_status(settings.broadcast_tablename) == "ACTIVE"


def test_broadcast_table_set_and_all(storage):
    table = storage.broadcasts
    assert table.all() == {}
    table.set("remote-settings/monitor_changes", "v1")
    table.set("other/x", "é" * 200)
    assert table.all() == {"remote-settings/monitor_changes": "v1", "other/x": "é" * 200}
    table.set("remote-settings/monitor_changes", "v2")  # last write wins
    assert table.all()["remote-settings/monitor_changes"] == "v2"
    table.set(PREFLIGHT_ID, "x")  # not a broadcast id: never listed
    assert PREFLIGHT_ID not in table.all()
    table.delete("other/x")
    assert table.all() == {"remote-settings/monitor_changes": "v2"}


def test_broadcast_table_all_reads_every_page(storage):
    calls = []

    class SmallPages:
        def call(self, operation, **kwargs):
            if operation == "scan":
                calls.append(kwargs)
                kwargs["Limit"] = 3
            return storage.dynamo.call(operation, **kwargs)

    table = BroadcastTable(SmallPages(), storage.broadcasts.name)
    expected = {f"b/{index}": f"v{index}" for index in range(10)}
    for broadcast_id, version in expected.items():
        table.set(broadcast_id, version)
    assert table.all() == expected
    assert len(calls) >= 4
    assert all(call["ConsistentRead"] for call in calls)


def test_sweeper_never_touches_the_broadcasts_table(storage):
    from connnode.db.sweep import Sweeper
    storage.broadcasts.set("remote-settings/monitor_changes", "v1")
    sweeper = Sweeper(storage)
    names = [name for name, _ in sweeper.message_tables()]
    assert storage.broadcasts.name not in names
    result = sweeper.run_once()
    assert storage.broadcasts.name not in result.deleted
    assert storage.broadcasts.name not in result.dropped
    assert storage.broadcasts.all() == {"remote-settings/monitor_changes": "v1"}


# -- the API on a real endpoint node ---------------------------------------------------

@pytest.fixture(scope="module")
def node(dynalite, tmp_path_factory):
    settings = table_settings(dynalite)
    Storage(settings).create_tables()
    tables = {"router": settings.router_tablename, "message": settings.message_tablename}
    ep = EndpointNode(dynalite, tables, log_path=tmp_path_factory.mktemp("bc") / "ep.log",
                      broadcast_tablename=settings.broadcast_tablename,
                      megaphone_broadcaster_tokens=TOKENS,
                      megaphone_reader_token=READER_TOKEN)
    ep.cli_data_dir = tmp_path_factory.mktemp("cli-data")
    ep.start()
    yield ep
    ep.stop()


def put(node, broadcast_id, version, token=RS_TOKEN, **kwargs):
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    data = version.encode("utf-8") if isinstance(version, str) else version
    return requests.put(f"{node.url}/v1/broadcasts/{broadcast_id}", data=data,
                        headers=headers, timeout=10, **kwargs)


def get(node, token=READER_TOKEN):
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return requests.get(f"{node.url}/v1/broadcasts", headers=headers, timeout=10)


def listed(node):
    answer = get(node)
    assert answer.status_code == 200, answer.text
    return answer.json()["broadcasts"]


def assert_error(answer, status):
    assert answer.status_code == status, answer.text
    assert answer.headers["Content-Type"] == "application/json"
    body = answer.json()
    assert body["code"] == status and body["errno"] is None
    assert body["more_info"] == MORE_INFO
    assert set(body) == {"code", "errno", "error", "message", "more_info"}


def test_put_then_get(node):
    bchannel = "c" + uuid.uuid4().hex[:8]
    answer = put(node, f"remote-settings/{bchannel}", "v1")
    assert answer.status_code == 200
    assert answer.json() == {"code": 200}
    assert answer.headers["Content-Type"] == "application/json"
    # the common headers of 4.2 (after_request)
    assert answer.headers["Strict-Transport-Security"].startswith("max-age=")
    assert answer.headers["Access-Control-Allow-Origin"] == "*"
    assert listed(node)[f"remote-settings/{bchannel}"] == "v1"
    assert put(node, f"remote-settings/{bchannel}", "v2").status_code == 200
    answer = get(node)
    assert answer.json()["code"] == 200
    assert answer.json()["broadcasts"][f"remote-settings/{bchannel}"] == "v2"
    assert answer.headers["Access-Control-Allow-Origin"] == "*"
    assert put(node, "other/x", "1700000000", token=OTHER_TOKEN).status_code == 200
    assert listed(node)["other/x"] == "1700000000"


@pytest.mark.parametrize("path,version,token,status", [
    ("remote-settings/monitor_changes", "bad-1", None, 401),
    ("remote-settings/monitor_changes", "bad-2", "wrong", 401),
    ("remote-settings/monitor_changes", "bad-3", OTHER_TOKEN, 401),
    ("nobody/monitor_changes", "bad-4", RS_TOKEN, 404),
    ("remote-settings/monitor_changes", "x" * 201, RS_TOKEN, 400),
    ("remote-settings/monitor_changes", "", RS_TOKEN, 400),
    ("remote-settings/monitor_changes", b"\xff\xfe", RS_TOKEN, 400),
    ("remote-settings/monitor_changes", "bad\n", RS_TOKEN, 400),
    ("remote-settings/monitor%20x", "bad-5", RS_TOKEN, 404),
    ("remote-settings/" + "y" * 101, "bad-6", RS_TOKEN, 404),
    ("remote-settings/monitor_changes/extra", "bad-7", RS_TOKEN, 404),
])
def test_put_refused_changes_nothing(node, path, version, token, status):
    assert put(node, "remote-settings/monitor_changes", "good").status_code == 200
    before = listed(node)
    answer = put(node, path, version, token=token)
    assert_error(answer, status)
    if status == 401:
        assert answer.headers["WWW-Authenticate"] == "Bearer"
    assert listed(node) == before


def test_put_chunked_oversized_body_is_400(node):
    before = listed(node)
    answer = put(node, "remote-settings/monitor_changes", iter([b"x" * 500] * 10))
    assert_error(answer, 400)
    assert listed(node) == before


@pytest.mark.parametrize("token", [None, "wrong", RS_TOKEN, ""])
def test_get_needs_the_reader_token(node, token):
    assert_error(get(node, token), 401)


def test_other_methods_are_405(node):
    answer = requests.post(f"{node.url}/v1/broadcasts", timeout=10)
    assert_error(answer, 405)


def test_get_closed_without_reader_token(dynalite, tmp_path):
    settings = table_settings(dynalite)
    tables = {"router": settings.router_tablename, "message": settings.message_tablename}
    ep = EndpointNode(dynalite, tables, log_path=tmp_path / "ep.log",
                      broadcast_tablename=settings.broadcast_tablename,
                      megaphone_broadcaster_tokens=TOKENS)
    ep.start()
    try:
        for token in (None, "", "wrong", READER_TOKEN):
            assert_error(get(ep, token), 401)
        assert put(ep, "remote-settings/m", "v1").status_code == 200
    finally:
        ep.stop()


# -- the CLI -------------------------------------------------------------------------

def cli(node, *args, **env_overrides):
    # data_dir: an empty one, not the checkout's var/ (where a `make run`
    # leaves the tokens the CLI would fall back on)
    env = dict(os.environ, CONNNODE_ENDPOINT_URL=node.url, CONNNODE_STATSD_HOST="",
               CONNNODE_HOSTNAME="127.0.0.1", CONNNODE_DATA_DIR=str(node.cli_data_dir),
               CONNNODE_MEGAPHONE_BROADCASTER_TOKENS=TOKENS,
               CONNNODE_MEGAPHONE_READER_TOKEN=READER_TOKEN)
    env.update(env_overrides)
    return subprocess.run([sys.executable, "-m", "connnode.cli", "broadcast", *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


def test_cli_set_and_list(node):
    bchannel = "cli" + uuid.uuid4().hex[:8]
    done = cli(node, "set", f"remote-settings/{bchannel}", "v42")
    assert done.returncode == 0, done.stderr
    assert listed(node)[f"remote-settings/{bchannel}"] == "v42"
    done = cli(node, "list")
    assert done.returncode == 0, done.stderr
    assert f"remote-settings/{bchannel} v42" in done.stdout.splitlines()


def test_cli_errors(node):
    before = listed(node)
    done = cli(node, "set", "remote-settings/m", "v1",
               CONNNODE_MEGAPHONE_BROADCASTER_TOKENS="remote-settings=wrong")
    assert done.returncode != 0
    assert "401" in done.stderr and "megaphone_broadcaster_tokens" in done.stderr
    done = cli(node, "set", "remote-settings/m", "x" * 201)
    assert done.returncode != 0 and "400" in done.stderr
    done = cli(node, "set", "remote-settings/bad id", "v1")
    assert done.returncode != 0 and "404" in done.stderr
    done = cli(node, "set", "nobody/m", "v1")
    assert done.returncode != 0 and "no token for broadcaster 'nobody'" in done.stderr
    done = cli(node, "set", "no-slash", "v1")
    assert done.returncode != 0 and "<broadcaster>/<bchannel>" in done.stderr
    done = cli(node, "list", CONNNODE_MEGAPHONE_READER_TOKEN="wrong")
    assert done.returncode != 0
    assert "401" in done.stderr and "megaphone_reader_token" in done.stderr
    done = cli(node, "list", CONNNODE_MEGAPHONE_READER_TOKEN="")
    assert done.returncode != 0 and "megaphone_reader_token is not set" in done.stderr
    assert listed(node) == before


def test_cli_unreachable_endpoint(node):
    done = cli(node, "list", CONNNODE_ENDPOINT_URL="http://127.0.0.1:9")
    assert done.returncode == 1 and "cannot reach the endpoint node" in done.stderr
