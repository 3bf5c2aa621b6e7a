"""Dynamo.call's two bounds, with a fake botocore client: no more calls in
flight than pooled connections, and a whole call (its wait for a turn
included) bounded by call_timeout."""
import time

import gevent
import pytest

from connnode.db.dynamo import Dynamo, StorageError


class SlowClient:
    """A botocore client stand-in whose get_item takes ``seconds``."""

    def __init__(self, seconds):
        self.seconds = seconds
        self.in_flight = 0
        self.most = 0

    def get_item(self, **kwargs):
        self.in_flight += 1
        self.most = max(self.most, self.in_flight)
        try:
            gevent.sleep(self.seconds)
            return {"Item": {}}
        finally:
            self.in_flight -= 1


@pytest.mark.parametrize("own_greenlet", [False, True])
def test_calls_in_flight_never_exceed_the_pool(own_greenlet):
    client = SlowClient(0.01)
    dynamo = Dynamo(client, own_greenlet=own_greenlet, concurrency=3)
    calls = [gevent.spawn(dynamo.call, "get_item", TableName="t") for _ in range(30)]
    gevent.joinall(calls, timeout=10)
    assert all(call.successful() for call in calls)
    assert client.most == 3


def test_a_hung_store_is_a_storage_error_within_call_timeout():
    dynamo = Dynamo(SlowClient(30), call_timeout=0.2, concurrency=1)
    started = time.monotonic()
    with pytest.raises(StorageError, match="no answer within 0.2 s"):
        dynamo.call("get_item", TableName="t")
    assert time.monotonic() - started < 1.0


def test_the_wait_for_a_turn_counts_against_call_timeout():
    client = SlowClient(30)
    dynamo = Dynamo(client, call_timeout=0.3, concurrency=1)
    holder = gevent.spawn(dynamo.call, "get_item", TableName="t")
    gevent.sleep(0.05)
    started = time.monotonic()
    with pytest.raises(StorageError):
        dynamo.call("get_item", TableName="t")
    assert time.monotonic() - started < 0.5 and client.most == 1
    holder.kill()
