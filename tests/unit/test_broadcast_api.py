"""The Megaphone API's checks (connnode/endpoint/broadcasts.py) and its
settings (megaphone_broadcaster_tokens), without a server: the Flask app
over an in-memory broadcasts table."""
import io

import pytest

from connnode.db.dynamo import StorageError
from connnode.endpoint.broadcasts import (BroadcastAPI, bearer_token, parse_broadcast_id,
                                          parse_version, token_matches)
from connnode.endpoint.errors import EndpointError
from connnode.settings import Settings, SettingsError


# -- settings ------------------------------------------------------------------------

def test_broadcaster_tokens_default_empty():
    conf = Settings()
    assert conf.megaphone_broadcaster_tokens == {}
    assert conf.megaphone_reader_token == ""
    assert conf.broadcast_tablename == "broadcasts"


def test_broadcaster_tokens_parsed():
    conf = Settings.load(environ={
        "CONNNODE_MEGAPHONE_BROADCASTER_TOKENS": " remote-settings=TOKEN , other.b_1=T2=x,",
    })
    assert conf.megaphone_broadcaster_tokens == {"remote-settings": "TOKEN", "other.b_1": "T2=x"}


def test_broadcaster_tokens_empty_string():
    conf = Settings.load(environ={"CONNNODE_MEGAPHONE_BROADCASTER_TOKENS": ""})
    assert conf.megaphone_broadcaster_tokens == {}


@pytest.mark.parametrize("text,fragment", [
    ("remote-settings", "expected name=TOKEN"),
    ("remote-settings=", "expected name=TOKEN"),
    ("=TOKEN", "expected name=TOKEN"),
    ("bad name=TOKEN", "broadcaster name"),
    ("a/b=TOKEN", "broadcaster name"),
    ("a=1,a=2", "named twice"),
])
def test_broadcaster_tokens_malformed(text, fragment):
    with pytest.raises(SettingsError) as info:
        Settings.load(environ={"CONNNODE_MEGAPHONE_BROADCASTER_TOKENS": text + ",z=SECRET9"})
    message = str(info.value)
    assert "megaphone_broadcaster_tokens" in message and fragment in message
    assert "SECRET9" not in message  # tokens are never echoed


def test_broadcaster_tokens_from_ini(tmp_path):
    path = tmp_path / "connnode.ini"
    path.write_text("[connnode]\nmegaphone_broadcaster_tokens = a=1,b=2\n"
                    "megaphone_reader_token = R\nbroadcast_tablename = bc\n")
    conf = Settings.load(environ={}, config_path=str(path))
    assert conf.megaphone_broadcaster_tokens == {"a": "1", "b": "2"}
    assert conf.megaphone_reader_token == "R"
    assert conf.broadcast_tablename == "bc"


# -- ids, versions, tokens -------------------------------------------------------------

@pytest.mark.parametrize("broadcaster,bchannel", [
    ("remote-settings", "monitor_changes"), ("a", "b"), ("A.b_c-9", "x" * 100), ("x" * 100, "y"),
])
def test_good_ids(broadcaster, bchannel):
    assert parse_broadcast_id(broadcaster, bchannel) == f"{broadcaster}/{bchannel}"


@pytest.mark.parametrize("broadcaster,bchannel", [
    ("", "b"), ("a", ""), ("x" * 101, "b"), ("a", "y" * 101), ("a b", "c"), ("a", "c/d"),
    ("a", "é"), ("a%20", "b"), ("a", "b\n"), (None, "b"),
])
def test_bad_ids_are_404(broadcaster, bchannel):
    with pytest.raises(EndpointError) as info:
        parse_broadcast_id(broadcaster, bchannel)
    assert info.value.status == 404


@pytest.mark.parametrize("body,version", [
    (b"v1", "v1"), (b"1234567890", "1234567890"), ("é".encode() * 200, "é" * 200),
    (b"x" * 200, "x" * 200), (b"a b", "a b"), ('"2024-01-01"'.encode(), '"2024-01-01"'),
])
def test_good_versions(body, version):
    assert parse_version(body) == version


@pytest.mark.parametrize("body", [
    b"", b"   ", b"x" * 201, "é".encode() * 201, b"\xff\xfe", b"v1\n", b"a\tb", b"a\x00b",
    b"\x7f", "a\u2028b".encode(), b"x" * 801,
])
def test_bad_versions_are_400(body):
    with pytest.raises(EndpointError) as info:
        parse_version(body)
    assert info.value.status == 400


@pytest.mark.parametrize("header,token", [
    ("Bearer abc", "abc"), ("bearer  abc ", "abc"), ("BEARER abc", "abc"),
    (None, None), ("", None), ("Bearer", None), ("Bearer ", None), ("Basic abc", None),
    ("vapid t=abc", None),
])
def test_bearer_token(header, token):
    assert bearer_token(header) == token


def test_token_matches():
    assert token_matches("abc", "abc")
    assert not token_matches("abd", "abc")
    assert not token_matches("ab", "abc")
    assert not token_matches(None, "abc")
    assert not token_matches("", "")
    assert not token_matches("abc", "")
    assert token_matches("ünï", "ünï")  # non-ASCII tokens compare as bytes


# -- the API over an in-memory table ----------------------------------------------------

class MemoryTable:
    def __init__(self, fail=False):
        self.items = {}
        self.fail = fail

    def set(self, broadcast_id, version):
        if self.fail:
            raise StorageError("put_item: boom")
        self.items[broadcast_id] = version

    def all(self):
        if self.fail:
            raise StorageError("scan: boom")
        return dict(self.items)


class FakeStorage:
    def __init__(self, table):
        self.broadcasts = table


def make_api(table=None, reader="READ"):
    settings = Settings(megaphone_broadcaster_tokens="remote-settings=RS,other=OT",
                        megaphone_reader_token=reader)
    return BroadcastAPI(FakeStorage(table or MemoryTable()), settings)


def put(api, path, body=b"v1", authorization="Bearer RS", length=None):
    broadcaster, bchannel = path.split("/", 1)
    return api.put(broadcaster, bchannel, authorization,
                   len(body) if length is None else length, io.BytesIO(body))


def test_put_then_get():
    api = make_api()
    assert put(api, "remote-settings/monitor_changes", b"v1") == (
        200, {"Content-Type": "application/json"}, {"code": 200})
    assert put(api, "other/x", b"v9", "Bearer OT")[0] == 200
    status, _, body = api.get("Bearer READ")
    assert status == 200
    assert body == {"code": 200, "broadcasts": {"remote-settings/monitor_changes": "v1",
                                                "other/x": "v9"}}


@pytest.mark.parametrize("path,body,authorization,status", [
    ("remote-settings/monitor_changes", b"v1", None, 401),
    ("remote-settings/monitor_changes", b"v1", "Bearer WRONG", 401),
    ("remote-settings/monitor_changes", b"v1", "Bearer OT", 401),  # another broadcaster's
    ("remote-settings/monitor_changes", b"v1", "Basic RS", 401),
    ("nobody/monitor_changes", b"v1", "Bearer RS", 404),
    ("remote-settings/bad id", b"v1", "Bearer RS", 404),
    ("remote-settings/monitor_changes", b"x" * 201, "Bearer RS", 400),
    ("remote-settings/monitor_changes", b"", "Bearer RS", 400),
    # the token is checked before the body
    ("remote-settings/monitor_changes", b"", "Bearer WRONG", 401),
])
def test_put_refused(path, body, authorization, status):
    table = MemoryTable()
    api = make_api(table)
    answer, headers, payload = put(api, path, body, authorization)
    assert answer == status
    assert payload["code"] == status and payload["errno"] is None
    assert set(payload) == {"code", "errno", "error", "message", "more_info"}
    if status == 401:
        assert headers["WWW-Authenticate"] == "Bearer"
    assert table.items == {}


def test_put_refuses_large_content_length_unread():
    class Unreadable:
        def read(self, size):
            raise AssertionError("read")

    api = make_api()
    assert api.put("remote-settings", "m", "Bearer RS", 10_000, Unreadable())[0] == 400


def test_get_refused():
    api = make_api()
    for authorization in (None, "", "Bearer WRONG", "Bearer RS", "READ"):
        status, headers, body = api.get(authorization)
        assert status == 401 and body["code"] == 401


def test_get_closed_without_reader_token():
    api = make_api(reader="")
    for authorization in (None, "Bearer ", "Bearer  "):
        assert api.get(authorization)[0] == 401


def test_storage_failure_is_503():
    api = make_api(MemoryTable(fail=True))
    status, _, body = put(api, "remote-settings/m")
    assert status == 503 and body["errno"] == 202
    status, _, body = api.get("Bearer READ")
    assert status == 503 and body["errno"] == 202
