"""User-agent families for connection metrics and logs (PROTOCOL.md 10).

ua-parser costs about a millisecond a string, and a push service sees few
distinct user agents, so results are cached per string; each family is
folded into the short list dashboards use.
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
