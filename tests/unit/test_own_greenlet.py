"""Storage calls on a greenlet of their own (connnode.db.dynamo.call_on_own_greenlet):
the caller gets the result or the exception, and a caller that is killed
while waiting takes the call down with it."""
import gevent
import gevent.event
import pytest

from connnode.db.dynamo import Dynamo, call_on_own_greenlet


def test_result_and_exception_reach_the_caller():
    caller = gevent.getcurrent()
    assert call_on_own_greenlet(lambda a, b: (a + b, gevent.getcurrent() is caller), 2, 3) == (5, False)

    def fails():
        raise KeyError("boom")

    with pytest.raises(KeyError, match="boom"):
        call_on_own_greenlet(fails)


def test_killing_the_caller_kills_the_call():
    started, running = gevent.event.Event(), []

    def slow():
        running.append(gevent.getcurrent())
        started.set()
        gevent.sleep(5)

    caller = gevent.spawn(call_on_own_greenlet, slow)
    assert started.wait(2)
    assert running[0] is not caller and not running[0].dead
    caller.kill(block=True, timeout=2)
    assert caller.dead and running[0].dead


class FakeClient:
    def get_item(self, **kwargs):
        return {"Item": kwargs, "on": gevent.getcurrent()}


def test_dynamo_with_own_greenlet_calls_the_client_elsewhere():
    here = gevent.getcurrent()
    assert Dynamo(FakeClient()).call("get_item", Key=1)["on"] is here
    result = Dynamo(FakeClient(), own_greenlet=True).call("get_item", Key=1)
    assert result["Item"] == {"Key": 1} and result["on"] is not here
