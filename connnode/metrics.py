"""StatsD metrics (PROTOCOL.md section 10) over UDP, through the ``statsd``
package's ``StatsClient``.

Tags: plain StatsD has none, so a tag dict is written into the metric name the
Graphite 1.1 way, ``name;key=value;key2=value2`` (keys sorted, so one tag set
is always one name). A plain StatsD server keeps such names as they are (its
key sanitising keeps ``;`` and ``=``, and its Graphite backend passes the
``;tag=value`` part through), and Graphite 1.1+ stores them as tagged series.
Keys and values are cut down to ``[A-Za-z0-9_.-]`` (anything else becomes
``_``), because ``:``, ``|``, ``;``, ``=`` and non-ASCII would break the line.

Timers take seconds, as the protocol states them; StatsD timers are
milliseconds, so ``timing`` sends ``seconds * 1000``.

``Metrics.from_settings`` gives a ``NullMetrics`` (every call a no-op) when
``statsd_host`` is empty, or when the host cannot be resolved at start-up
(metrics are never worth failing a node for; that case is logged).
"""
import logging
import re
import socket

from statsd import StatsClient

log = logging.getLogger(__name__)

_UNSAFE = re.compile(r"[^A-Za-z0-9_.\-]")


def clean(text):
    """A metric name part or tag made safe for a StatsD line."""
    text = str(text)
    if not text:
        return "_"
    return _UNSAFE.sub("_", text)


def tagged_name(name, tags=None):
    """``name;key=value;...`` with sorted keys; ``name`` alone without tags.
    Tags whose value is None are left out."""
    if not tags:
        return clean(name)
    parts = [clean(name)]
    for key in sorted(tags):
        value = tags[key]
        if value is None:
            continue
        parts.append(f"{clean(key)}={clean(value)}")
    return ";".join(parts)


class NullMetrics:
    """The Metrics interface doing nothing (metrics disabled, and tests)."""

    def increment(self, name, count=1, tags=None):
        pass

    def timing(self, name, seconds, tags=None):
        pass

    def close(self):
        pass


class Metrics:
    """Counters and timers sent by UDP to ``host:port``; ``prefix`` (if any)
    goes before every name with a dot. Sending never raises: a lost UDP
    datagram is a lost sample, nothing more."""

    def __init__(self, host, port, prefix=""):
        self.client = StatsClient(host, port, prefix=prefix or None, ipv6=_ipv6_only(host, port))

    @classmethod
    def from_settings(cls, settings):
        if not settings.statsd_host:
            return NullMetrics()
        try:
            return cls(settings.statsd_host, settings.statsd_port, settings.statsd_prefix)
        except OSError as exc:
            log.error("metrics disabled: cannot resolve statsd host %r: %s",
                      settings.statsd_host, exc)
            return NullMetrics()

    def increment(self, name, count=1, tags=None):
        self.client.incr(tagged_name(name, tags), count)

    def timing(self, name, seconds, tags=None):
        self.client.timing(tagged_name(name, tags), seconds * 1000.0)

    def close(self):
        self.client.close()


def _ipv6_only(host, port):
    """StatsClient resolves IPv4 only unless told otherwise: a host without an
    IPv4 address (``::1``) is used over IPv6. Raises OSError if neither works."""
    try:
        socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_DGRAM)
        return False
    except socket.gaierror:
        socket.getaddrinfo(host, port, socket.AF_INET6, socket.SOCK_DGRAM)
        return True
