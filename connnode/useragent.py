"""The tags of connection metrics (PROTOCOL.md 10): user-agent families and
the host, for metrics and logs.

ua-parser costs about a millisecond a string, and a push service sees few
distinct user agents, so results are cached per string; each family is
folded into the short list dashboards use.

Every tag value a client can choose is bounded, so one client cannot mint
metric names without end and flood a StatsD/Graphite backend: user agents
fold into a few families, the ``host`` tag is the Host header only when it
names this node (``hostname``, any port) and ``other`` otherwise.
"""
from functools import lru_cache

OS_FAMILIES = ("Windows", "Linux", "Mac OS X", "Firefox OS")
BROWSER_FAMILIES = ("Chrome", "Firefox", "Safari", "Opera")


def _fold(family, known):
    if family:
        for name in known:
            if family == name or family.startswith(name + " "):  # "Firefox Mobile" -> Firefox
                return name
    return "Other"


@lru_cache(maxsize=4096)
def families(user_agent):
    """(os family, browser family) of a User-Agent header."""
    if not user_agent:
        return "Other", "Other"
    from ua_parser import parse

    parsed = parse(user_agent[:512])
    os_family = parsed.os.family if parsed.os else None
    browser_family = parsed.user_agent.family if parsed.user_agent else None
    return _fold(os_family, OS_FAMILIES), _fold(browser_family, BROWSER_FAMILIES)


@lru_cache(maxsize=4096)
def connection_tags(user_agent, host):
    """The tags every connection metric carries (shared dict: do not mutate)."""
    os_family, browser_family = families(user_agent)
    return {"ua_os_family": os_family, "ua_browser_family": browser_family, "host": host}


OTHER_HOST = "other"


def host_tag(host_header, hostname):
    """The ``host`` tag of a connection: ``hostname`` when the Host header
    names it (with or without a port, any case), else ``other``."""
    name = host_header.strip().lower()
    if name.startswith("["):
        name = name[1:].partition("]")[0]
    elif name.count(":") == 1:
        name = name.partition(":")[0]
    return hostname if name == hostname.lower() else OTHER_HOST
