"""Unit tests of connnode.endpoint.delivery (PROTOCOL.md section 5) with
doubles for storage, the node client and metrics; and of how the endpoint app
answers the failures delivery and storage raise (4.3, 4.6), in process."""
import logging
import uuid

import pytest

from connnode.crypto import TokenCrypto
from connnode.db.dynamo import ConditionFailed, StorageError, ThroughputError
from connnode.endpoint.app import create_endpoint_app, read_body
from connnode.endpoint.delivery import DIRECT, DROPPED, STORED, Delivery
from connnode.endpoint.errors import EndpointError, storage_error
from connnode.nodeclient import NodeConnectionError
from connnode.notification import Notification
from connnode.settings import Settings
from tests.conftest import TEST_CRYPTO_KEY

NODE = "http://10.0.0.5:8100"
OTHER_NODE = "http://10.0.0.6:8100"
MONTH = "message_2024_06"
UAID = uuid.uuid4().hex
CHID = str(uuid.uuid4())
CRYPTO = TokenCrypto([TEST_CRYPTO_KEY])


# -- doubles -----------------------------------------------------------------------

class FakeMetrics:
    def __init__(self):
        self.counts = []
        self.timings = []

    def increment(self, name, count=1, tags=None):
        self.counts.append((name, count, tags))

    def timing(self, name, seconds, tags=None):
        self.timings.append((name, seconds, tags))

    def names(self):
        return [name for name, _, _ in self.counts]


class FakeNodeClient:
    """``responses`` maps "push"/"notif" to a status or an exception."""

    def __init__(self, push=404, notif=200):
        self.responses = {"push": push, "notif": notif}
        self.calls = []

    def put(self, url, json_body=None):
        self.calls.append((url, json_body))
        kind = "push" if "/push/" in url else "notif"
        outcome = self.responses[kind]
        if isinstance(outcome, Exception):
            raise outcome
        return outcome


class FakeRouter:
    def __init__(self, reread=None, clear_error=None):
        self.reread = reread  # a record, None, or an exception
        self.clear_error = clear_error
        self.cleared = []
        self.reads = 0
        self.dropped = []

    def get_uaid(self, uaid):
        self.reads += 1
        if isinstance(self.reread, Exception):
            raise self.reread
        return self.reread

    def clear_node(self, record):
        self.cleared.append(dict(record))
        if self.clear_error is not None:
            raise self.clear_error
        return True

    def drop_user(self, uaid):
        self.dropped.append(uaid)
        return True


class FakeTable:
    name = MONTH

    def __init__(self, error=None, collide=False, renew_id=False):
        self.error = error
        self.collide = collide  # move the sort key on store, as a collision does
        self.renew_id = renew_id  # ... and renew the id itself, as MessageTable does
        self.stored = []
        self.chids = {CHID}

    def store_message(self, notification):
        if self.error is not None:
            raise self.error
        if self.collide and notification.is_timestamped:
            notification.sortkey_timestamp += 1
            if self.renew_id:
                notification.version = CRYPTO.message_id(
                    notification.uaid, notification.chid,
                    sortkey_timestamp=notification.sortkey_timestamp)
        self.stored.append(notification)

    def all_channels(self, uaid):
        return True, set(self.chids)


class FakeStorage:
    def __init__(self, router=None, table=None, valid=(MONTH,)):
        self.router = router or FakeRouter()
        self.table = table or FakeTable()
        self.crypto = CRYPTO
        self.tables_asked = []
        self.valid = set(valid)

    def message_table(self, name):
        self.tables_asked.append(name)
        if isinstance(self.table, Exception):
            raise self.table
        return self.table

    def month_usable(self, record):
        return record.get("current_month") in self.valid

    def user_and_channels(self, uaid):
        # Channels "not read": the app reads them with the table's all_channels.
        return self.router.get_uaid(uaid), None

    def health(self):
        return True, {"router": {"status": "OK"}, "storage": {"status": "OK"}}


def record(node_id=NODE, connected_at=1718000000123, **extra):
    rec = {"uaid": UAID, "router_type": "webpush", "current_month": MONTH,
           "connected_at": connected_at, **extra}
    if node_id is not None:
        rec["node_id"] = node_id
    return rec


def notification(ttl=60, topic=None, data="aGVsbG8"):
    skt = None if topic else 1718000000123456
    version = CRYPTO.message_id(UAID, CHID, topic=topic, sortkey_timestamp=skt)
    return Notification(UAID, CHID, version,
                        ttl, 1718000000, topic=topic, sortkey_timestamp=skt, data=data,
                        headers={"encoding": "aes128gcm"} if data else None)


def make_delivery(push=404, notif=200, reread="same", clear_error=None, table=None,
                  durable=False):
    """A Delivery on fakes; by default in PROTOCOL.md 5's order (direct
    first), which ``durable_direct = false`` keeps."""
    reread_record = record() if reread == "same" else reread
    storage = FakeStorage(FakeRouter(reread_record, clear_error), table)
    nodes = FakeNodeClient(push, notif)
    metrics = FakeMetrics()
    return Delivery(storage, nodes, metrics, durable), storage, nodes, metrics


def assert_endpoint_error(excinfo, status, errno, header=None):
    error = excinfo.value
    assert (error.status, error.errno) == (status, errno)
    if header:
        name, value = header
        assert error.response()[1][name] == value


# -- durable direct delivery (the default) ---------------------------------------------

def test_durable_stores_first_then_hands_over_naming_the_table():
    delivery, storage, nodes, metrics = make_delivery(push=200, durable=True)
    message = notification()
    assert delivery.deliver(message, record()) == DIRECT
    assert storage.table.stored == [message] and message.stored_in == MONTH
    assert nodes.calls == [(f"{NODE}/push/{UAID}", message.push_body())]
    assert nodes.calls[0][1]["stored_in"] == MONTH
    assert storage.router.reads == 0  # no re-read: the holder took it
    assert ("notification.message_data", 7, {"destination": "Direct"}) in metrics.counts


def test_durable_store_failure_answers_503_before_any_hand_over():
    delivery, storage, nodes, _ = make_delivery(push=200, durable=True,
                                                table=FakeTable(error=StorageError("down")))
    with pytest.raises(EndpointError) as excinfo:
        delivery.deliver(notification(), record())
    assert_endpoint_error(excinfo, 503, 202)
    assert nodes.calls == []


@pytest.mark.parametrize("push", [404, 503, NodeConnectionError("refused")])
def test_durable_failed_hand_over_wakes_without_storing_twice(push):
    reread = record(node_id=OTHER_NODE, connected_at=5)
    delivery, storage, nodes, _ = make_delivery(push=push, notif=200, reread=reread,
                                                durable=True)
    message = notification()
    assert delivery.deliver(message, record()) == STORED
    assert storage.table.stored == [message]
    assert [url for url, _ in nodes.calls] == [f"{NODE}/push/{UAID}", f"{OTHER_NODE}/notif/{UAID}"]


def test_durable_ttl_0_is_never_stored():
    delivery, storage, nodes, _ = make_delivery(push=404, durable=True)
    message = notification(ttl=0)
    assert delivery.deliver(message, record()) == DROPPED
    assert storage.table.stored == [] and message.stored_in is None
    assert "stored_in" not in nodes.calls[0][1]


def test_durable_offline_user_is_stored_once_and_woken():
    delivery, storage, nodes, _ = make_delivery(durable=True)
    message = notification()
    assert delivery.deliver(message, record(node_id=None)) == STORED
    assert storage.table.stored == [message]
    assert [url for url, _ in nodes.calls] == [f"{NODE}/notif/{UAID}"]


# -- step 1: direct ---------------------------------------------------------------

def test_direct_200_is_direct_and_not_stored():
    delivery, storage, nodes, metrics = make_delivery(push=200)
    message = notification()
    assert delivery.deliver(message, record()) == DIRECT
    assert nodes.calls == [(f"{NODE}/push/{UAID}", message.push_body())]
    assert storage.table.stored == [] and storage.router.reads == 0
    assert ("notification.message_data", 7, {"destination": "Direct"}) in metrics.counts


def test_direct_404_clears_node_then_stores_and_wakes_reread_node():
    reread = record(node_id=OTHER_NODE, connected_at=5)
    delivery, storage, nodes, metrics = make_delivery(push=404, notif=200, reread=reread)
    message = notification()
    assert delivery.deliver(message, record()) == STORED
    assert storage.router.cleared == [record()]
    assert storage.table.stored == [message] and storage.tables_asked == [MONTH]
    assert [url for url, _ in nodes.calls] == [f"{NODE}/push/{UAID}", f"{OTHER_NODE}/notif/{UAID}"]
    assert nodes.calls[1][1] is None
    assert ("notification.message_data", 7, {"destination": "Stored"}) in metrics.counts
    assert "updates.client.host_gone" not in metrics.names()


def test_direct_connection_error_counts_host_gone_and_clears():
    delivery, storage, _, metrics = make_delivery(push=NodeConnectionError("refused"),
                                              reread=record(None))
    assert delivery.deliver(notification(), record()) == STORED
    assert storage.router.cleared == [record()]
    assert metrics.names().count("updates.client.host_gone") == 1


@pytest.mark.parametrize("status", [503, 500, 400, 202])
def test_busy_or_other_status_keeps_record_and_stores(status):
    delivery, storage, nodes, _ = make_delivery(push=status, notif=202)
    assert delivery.deliver(notification(), record()) == STORED
    assert storage.router.cleared == []
    assert len(storage.table.stored) == 1
    assert nodes.calls[-1][0] == f"{NODE}/notif/{UAID}"


def test_no_node_id_goes_straight_to_storage():
    delivery, storage, nodes, _ = make_delivery(reread=record(None))
    assert delivery.deliver(notification(), record(None)) == STORED
    assert nodes.calls == [] and len(storage.table.stored) == 1


def test_clear_node_errors_are_ignored():
    for error in (ThroughputError("slow"), StorageError("broken")):
        delivery, storage, _, _ = make_delivery(push=404, clear_error=error, reread=record(None))
        assert delivery.deliver(notification(), record()) == STORED
        assert len(storage.router.cleared) == 1 and len(storage.table.stored) == 1


def test_record_without_connected_at_is_not_cleared():
    rec = record()
    del rec["connected_at"]
    delivery, storage, _, _ = make_delivery(push=404, reread=record(None))
    assert delivery.deliver(notification(), rec) == STORED
    assert storage.router.cleared == []


# -- step 2: TTL 0 ------------------------------------------------------------------

def test_ttl_zero_not_connected_is_dropped_without_storing():
    delivery, storage, nodes, metrics = make_delivery(push=404)
    assert delivery.deliver(notification(ttl=0), record()) == DROPPED
    assert storage.table.stored == [] and storage.router.reads == 0
    assert "notification.message_data" not in metrics.names()
    assert len(nodes.calls) == 1


def test_ttl_zero_delivered_directly():
    delivery, storage, _, _ = make_delivery(push=200)
    assert delivery.deliver(notification(ttl=0), record()) == DIRECT


def test_ttl_zero_without_node_is_dropped():
    delivery, storage, nodes, _ = make_delivery()
    assert delivery.deliver(notification(ttl=0), record(None)) == DROPPED
    assert nodes.calls == [] and storage.table.stored == []


# -- step 3: store ------------------------------------------------------------------

def test_store_throughput_error_is_503_201_with_retry_after():
    delivery, _, nodes, _ = make_delivery(table=FakeTable(error=ThroughputError("slow")))
    with pytest.raises(EndpointError) as excinfo:
        delivery.deliver(notification(), record())
    assert_endpoint_error(excinfo, 503, 201, ("Retry-After", "120"))
    assert len(nodes.calls) == 1  # no PUT /notif


def test_store_other_error_is_503_202_with_retry_after():
    delivery, storage, _, _ = make_delivery(table=FakeTable(error=StorageError("boom")))
    with pytest.raises(EndpointError) as excinfo:
        delivery.deliver(notification(), record())
    assert_endpoint_error(excinfo, 503, 202, ("Retry-After", "120"))
    assert storage.router.reads == 0


def test_moved_sort_key_gets_a_matching_message_id():
    delivery, _, _, _ = make_delivery(table=FakeTable(collide=True, renew_id=True))
    message = notification()
    first = message.version
    assert delivery.deliver(message, record()) == STORED
    assert message.version != first
    parsed = CRYPTO.parse_message_id(message.version)
    assert parsed.sortkey_timestamp == 1718000000123457
    assert parsed.sort_key == message.sort_key


def test_topic_message_keeps_its_id():
    delivery, _, _, _ = make_delivery(table=FakeTable(collide=True))
    message = notification(topic="news")
    first = message.version
    delivery.deliver(message, record())
    assert message.version == first


# -- steps 4-5: re-read and wake ----------------------------------------------------

def test_record_vanished_after_store_is_410_105():
    delivery, storage, nodes, metrics = make_delivery(reread=None)
    with pytest.raises(EndpointError) as excinfo:
        delivery.deliver(notification(), record(None))
    assert_endpoint_error(excinfo, 410, 105, ("Cache-Control", "max-age=86400"))
    assert len(storage.table.stored) == 1
    assert "updates.client.deleted" in metrics.names()
    assert "notification.message_data" not in metrics.names()
    assert nodes.calls == []


@pytest.mark.parametrize("error", [StorageError("boom"), ThroughputError("slow")])
def test_reread_error_answers_stored(error):
    delivery, _, nodes, _ = make_delivery(push=404, reread=error)
    assert delivery.deliver(notification(), record()) == STORED
    assert len(nodes.calls) == 1


@pytest.mark.parametrize("outcome", [404, NodeConnectionError("gone")])
def test_wake_failure_clears_the_reread_record(outcome):
    reread = record(node_id=OTHER_NODE, connected_at=7)
    delivery, storage, _, metrics = make_delivery(push=503, notif=outcome, reread=reread)
    assert delivery.deliver(notification(), record()) == STORED
    assert storage.router.cleared == [reread]
    assert ("updates.client.host_gone" in metrics.names()) == isinstance(outcome, Exception)


@pytest.mark.parametrize("status", [200, 202, 500, 503])
def test_wake_other_statuses_leave_the_record(status):
    delivery, storage, _, _ = make_delivery(push=503, notif=status)
    assert delivery.deliver(notification(), record()) == STORED
    assert storage.router.cleared == []


# -- the app's answers to these failures, in process ---------------------------------

ENDPOINT_URL = "http://push.test:8082"


class BrokenTable(FakeTable):
    def __init__(self, error):
        super().__init__()
        self.channel_error = error

    def all_channels(self, uaid):
        raise self.channel_error


def make_app(storage, push=404, notif=200, metrics=None):
    settings = Settings(endpoint_url=ENDPOINT_URL, crypto_key=TEST_CRYPTO_KEY, statsd_host="",
                        hostname="push.test")
    metrics = metrics or FakeMetrics()
    app = create_endpoint_app(storage, metrics, FakeNodeClient(push, notif), settings)
    return app.test_client(), metrics


def post(client, body=b"hi", **headers):
    token = CRYPTO.endpoint_token(UAID, CHID)
    headers.setdefault("TTL", "60")
    if body:
        headers.setdefault("Content-Encoding", "aes128gcm")
    return client.post(f"/wpush/v1/{token}", data=body, headers=headers)


def assert_error_body(response, status, errno):
    assert response.status_code == status
    assert response.headers["Content-Type"] == "application/json"
    assert response.json["code"] == status and response.json["errno"] == errno
    assert response.headers["Strict-Transport-Security"] == "max-age=31536000;includeSubDomains"
    assert response.headers["Access-Control-Allow-Origin"] == "*"


def test_app_store_throughput_error_is_503_201():
    storage = FakeStorage(FakeRouter(record()), FakeTable(error=ThroughputError("slow")))
    client, metrics = make_app(storage)
    response = post(client)
    assert_error_body(response, 503, 201)
    assert response.headers["Retry-After"] == "120"
    assert ("notification.message.error", 1,
            {"code": 503, "router": "webpush", "vapid": "False"}) in metrics.counts


@pytest.mark.parametrize("error, errno", [(ThroughputError("slow"), 201),
                                          (StorageError("boom"), 202)])
def test_app_lookup_storage_errors_are_503(error, errno):
    storage = FakeStorage(FakeRouter(error))
    client, _ = make_app(storage)
    response = post(client)
    assert_error_body(response, 503, errno)
    assert response.headers["Retry-After"] == "120"
    storage = FakeStorage(FakeRouter(record()), BrokenTable(error))
    response = post(make_app(storage)[0])
    assert_error_body(response, 503, errno)


def test_app_record_vanished_is_410_105():
    router = FakeRouter(record(None))
    storage = FakeStorage(router)

    class Vanishing(FakeTable):
        def store_message(self, notification):
            super().store_message(notification)
            router.reread = None
    storage.table = Vanishing()
    client, _ = make_app(storage)
    response = post(client)
    assert_error_body(response, 410, 105)
    assert response.headers["Cache-Control"] == "max-age=86400"


def test_app_unexpected_exception_is_500_999():
    storage = FakeStorage(FakeRouter(record()), RuntimeError("bug"))
    client, metrics = make_app(storage)
    response = post(client)
    assert_error_body(response, 500, 999)
    assert ("notification.message.error", 1,
            {"code": 500, "router": "webpush", "vapid": "False"}) in metrics.counts


def test_app_success_metrics_and_location():
    storage = FakeStorage(FakeRouter(record()))
    client, metrics = make_app(storage, push=200)
    response = post(client, body=b"hello")
    assert response.status_code == 201
    assert response.headers["Location"].startswith(ENDPOINT_URL + "/m/")
    assert response.headers["TTL"] == "60"
    assert ("notification.message.success", 1,
            {"destination": "Direct", "router": "webpush", "vapid": "False"}) in metrics.counts
    assert "updates.notification.encoding.aes128gcm" in metrics.names()
    assert [name for name, _, _ in metrics.timings] == ["notification.request_time"]


def test_app_drops_unusable_records_with_metric_tags():
    for rec, errno in ((record(current_month="message_1999_01"), 103),
                       ({"uaid": UAID, "router_type": "webpush", "connected_at": 1}, 102)):
        router = FakeRouter(rec)
        client, metrics = make_app(FakeStorage(router))
        assert_error_body(post(client), 410, 106)
        assert router.dropped == [UAID]
        assert ("updates.drop_user", 1, {"errno": errno}) in metrics.counts


def test_read_body_is_bounded():
    class Endless:
        reads = 0

        def read(self, size):
            self.reads += 1
            return b"x" * min(size, 7)
    stream = Endless()
    assert len(read_body(stream, 20)) == 21
    assert stream.reads == 3


# -- the one storage-error mapping ---------------------------------------------------

@pytest.mark.parametrize("error, errno, level", [
    (ThroughputError("slow"), 201, logging.WARNING),
    (StorageError("boom"), 202, logging.ERROR),
    (ConditionFailed("lost"), 202, logging.ERROR),
])
def test_storage_error_maps_and_logs(caplog, error, errno, level):
    logger = logging.getLogger("tests.storage_error")
    with caplog.at_level(logging.DEBUG, logger="tests.storage_error"):
        result = storage_error(error, "store_message", logger)
    assert isinstance(result, EndpointError)
    assert (result.status, result.errno) == (503, errno)
    assert result.response()[1]["Retry-After"] == "120"
    [line] = caplog.records
    assert line.name == "tests.storage_error" and line.levelno == level
    assert line.getMessage().startswith("store_message ")


@pytest.mark.parametrize("error, errno", [(ThroughputError("slow"), 201),
                                          (StorageError("boom"), 202)])
def test_app_delete_storage_errors_are_503(error, errno):
    message_id = CRYPTO.message_id(UAID, CHID, sortkey_timestamp=1718000000123456)
    client, _ = make_app(FakeStorage(FakeRouter(error)))
    response = client.delete(f"/m/{message_id}")
    assert_error_body(response, 503, errno)
    assert response.headers["Retry-After"] == "120"


@pytest.mark.parametrize("body, headers, push", [
    (b"hello", {}, 200),                          # 201 direct
    (b"hello", {"TTL": "abc"}, 200),              # 400/112
    (b"x" * 6000, {}, 200),                       # 413/104
    (b"hello", {"Content-Encoding": "gzip"}, 200),  # 400/110
    (b"", {}, 404),                               # 201 stored, no body
])
def test_fast_path_answers_exactly_as_the_flask_route(body, headers, push):
    """POST /wpush bypasses Flask: same status, headers (4.2 included) and
    body as the Flask route gives for the same request."""
    def answer(use_flask):
        app = create_endpoint_app(FakeStorage(FakeRouter(record())), FakeMetrics(),
                                  FakeNodeClient(push, 200), Settings(
                                      endpoint_url=ENDPOINT_URL, crypto_key=TEST_CRYPTO_KEY,
                                      statsd_host="", hostname="push.test"))
        client = (app.flask if use_flask else app).test_client()
        response = post(client, body=body, **headers)
        location = response.headers.get("Location", "")
        assert location == "" or location.startswith(ENDPOINT_URL + "/m/")
        return (response.status_code, sorted((k, v) for k, v in response.headers.items()
                                             if k != "Location"),
                "Location" in response.headers, response.get_data())
    assert answer(use_flask=False) == answer(use_flask=True)


@pytest.mark.parametrize("path", ["/wpush/", "/wpush//v1/x", "/wpush/v1//x"])
def test_odd_push_paths_still_go_through_flask(path):
    app = create_endpoint_app(FakeStorage(FakeRouter(record())), FakeMetrics(),
                              FakeNodeClient(200, 200), Settings(
                                  endpoint_url=ENDPOINT_URL, crypto_key=TEST_CRYPTO_KEY,
                                  statsd_host="", hostname="push.test"))
    fast = app.test_client().post(path, data=b"x")
    flask = app.flask.test_client().post(path, data=b"x")
    assert (fast.status_code, fast.get_data()) == (flask.status_code, flask.get_data())
