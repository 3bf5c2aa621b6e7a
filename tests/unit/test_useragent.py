import pytest

from connnode.useragent import connection_tags, families, host_tag


def test_families_folded_to_dashboard_names():
    assert families("Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:133.0) Gecko/20100101 "
                    "Firefox/133.0") == ("Windows", "Firefox")
    assert families("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 "
                    "(KHTML, like Gecko) Version/17.0 Safari/605.1.15") == ("Mac OS X", "Safari")
    assert families("Mozilla/5.0 (Mobile; rv:48.0) Gecko/48.0 Firefox/48.0") == ("Firefox OS", "Firefox")
    assert families("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
                    "Chrome/131.0.0.0 Safari/537.36") == ("Linux", "Chrome")
    assert families("") == ("Other", "Other")
    assert families("curl/8.0") == ("Other", "Other")


def test_connection_tags():
    assert connection_tags("", "push.example:443") == {
        "ua_os_family": "Other", "ua_browser_family": "Other", "host": "push.example:443"}


@pytest.mark.parametrize("header,tag", [
    ("push.example", "push.example"), ("PUSH.example:443", "push.example"),
    ("push.example:8080", "push.example"), ("", "other"), ("evil.example", "other"),
    ("push.example.evil:80", "other"), ("[::1]:8080", "other"), ("x" * 10000, "other"),
])
def test_host_tag_is_this_node_or_other(header, tag):
    assert host_tag(header, "push.example") == tag


def test_host_tag_of_an_ipv6_hostname():
    assert host_tag("[::1]:8080", "::1") == "::1"
