"""Metrics: the exact StatsD lines that reach a real UDP socket."""
import socket

import pytest

from connnode.metrics import Metrics, NullMetrics, tagged_name
from connnode.settings import Settings


@pytest.fixture
def udp():
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(2)
    yield sock
    sock.close()


def received(sock):
    return sock.recv(4096).decode("ascii")


def port_of(sock):
    return sock.getsockname()[1]


def test_counter_without_prefix(udp):
    metrics = Metrics("127.0.0.1", port_of(udp))
    metrics.increment("ua.command.hello")
    assert received(udp) == "ua.command.hello:1|c"


def test_counter_with_tag_and_count(udp):
    metrics = Metrics("127.0.0.1", port_of(udp))
    metrics.increment("ua.command.nack", tags={"code": 301})
    assert received(udp) == "ua.command.nack;code=301:1|c"
    metrics.increment("ua.message_data", count=42, tags={"source": "Stored"})
    assert received(udp) == "ua.message_data;source=Stored:42|c"


def test_timer_in_milliseconds_with_prefix(udp):
    metrics = Metrics("127.0.0.1", port_of(udp), prefix="pre")
    metrics.timing("ua.connection.lifespan", 1.5)
    assert received(udp) == "pre.ua.connection.lifespan:1500.000000|ms"


def test_tags_sorted_and_sanitised(udp):
    metrics = Metrics("127.0.0.1", port_of(udp), prefix="pre")
    metrics.increment("ua.command.hello", tags={
        "ua_os_family": "Mac OS X", "host": "push.example.com:8080",
        "ua_browser_family": "Firefox", "skip": None})
    assert received(udp) == ("pre.ua.command.hello;host=push.example.com_8080;"
                             "ua_browser_family=Firefox;ua_os_family=Mac_OS_X:1|c")


def test_hostile_tag_values_cannot_break_the_line():
    assert tagged_name("a.b", {"k|x": "v:1;y=2", "e": "", "u": "ü"}) == \
        "a.b;e=_;k_x=v_1_y_2;u=_"
    assert tagged_name("a.b", {}) == "a.b"


def test_from_settings(udp):
    assert isinstance(Metrics.from_settings(Settings(statsd_host="")), NullMetrics)
    metrics = Metrics.from_settings(Settings(statsd_host="127.0.0.1", statsd_port=port_of(udp),
                                             statsd_prefix="cn"))
    assert isinstance(metrics, Metrics)
    metrics.increment("ua.notification_check")
    assert received(udp) == "cn.ua.notification_check:1|c"


def test_unresolvable_host_disables_metrics():
    settings = Settings(statsd_host="no-such-host.invalid", statsd_port=8125)
    assert isinstance(Metrics.from_settings(settings), NullMetrics)


def test_ipv6_only_host():
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    try:
        sock.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback")
    sock.settimeout(2)
    try:
        Metrics("::1", sock.getsockname()[1]).increment("x")
        assert sock.recv(100) == b"x:1|c"
    finally:
        sock.close()


def test_null_metrics_accepts_everything():
    null = NullMetrics()
    null.increment("a", 3, tags={"k": "v"})
    null.timing("b", 0.2, tags={"k": "v"})
    null.close()
