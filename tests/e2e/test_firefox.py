"""A real Firefox ESR (Debian's ``firefox-esr``, headless) through the demo
page (issue 12): the browser's own push client holds the WebSocket to our
connection node, the page subscribes with the node's demo VAPID key, sends
through POST /demo/send, and the service worker gets the message that
Firefox decrypted.

No WebDriver: the profile's ``user.js`` sets the prefs (tests/e2e/firefox.py)
and the page (``?auto=1&collector=...``) takes its commands from, and reports
each step to, a small HTTP collector run here.

Round 1: subscribe, send, the worker receives, unsubscribe.
Round 2: the service (both nodes) restarts between subscribe and send; the
message is stored while Firefox is away and arrives once it reconnects.
Then the page of a node that is not Firefox's push server says so, and
Firefox's own --screenshot of the page after a push.

Without Firefox the tests fail under CI (``CI`` set; ``.ci/run`` installs
``firefox-esr``) and are skipped, loudly, elsewhere."""
import os
import shutil
import uuid

import pytest

from connnode.crypto import TokenCrypto
from connnode.db.storage import Storage
from tests.conftest import TEST_CRYPTO_KEY, make_settings
from tests.e2e.firefox import Collector, Firefox, find_firefox
from tests.e2e.tools import require
from tests.harness import ConnectionNode, EndpointNode

pytestmark = pytest.mark.timeout(300)

STEP_TIMEOUT = 60  # seconds for any one step of the browser


@pytest.fixture(scope="module")
def firefox_binary():
    return require(find_firefox(), "firefox-esr", "the real-browser tests")


class Service:
    """dynalite tables, an endpoint node with the demo page, a connection node."""

    def __init__(self, dynalite, workdir):
        suffix = uuid.uuid4().hex[:8]
        self.tables = {"router": f"router_{suffix}", "message": f"message_{suffix}"}
        self.storage = Storage(make_settings(dynalite, router_tablename=self.tables["router"],
                                             message_tablename=self.tables["message"]))
        self.storage.create_tables()
        self.ep = EndpointNode(dynalite, self.tables, log_path=workdir / "ep.log",
                               demo_page="true", data_dir=workdir / "var")
        self.cn = ConnectionNode(dynalite, self.tables, endpoint_url=self.ep.url,
                                 log_path=workdir / "cn.log", hello_timeout=10,
                                 close_handshake_timeout=1)

    def start(self):
        self.ep.start()
        self.cn.start()

    def stop(self):
        self.cn.stop()
        self.ep.stop()

    def stored(self, endpoint):
        """The stored messages of the subscription behind ``endpoint``."""
        token = endpoint.rsplit("/", 1)[1]
        uaid, chid, _ = TokenCrypto([TEST_CRYPTO_KEY]).parse_endpoint_token(token, True)
        _, messages = self.storage.current_table.fetch_timestamp_messages(uaid)
        return [m for m in messages if m.chid == chid]


@pytest.fixture(scope="module")
def browser(firefox_binary, dynalite, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("firefox")
    service = Service(dynalite, workdir)
    collector = Collector()
    firefox = Firefox(firefox_binary, workdir, service.cn.ws_url)
    try:
        service.start()
        firefox.start(f"{service.ep.url}/demo?auto=1&collector={collector.url}")
        collector.wait_for("worker-ready", STEP_TIMEOUT, firefox)
        yield service, collector, firefox
        collector.command("done")
    finally:
        firefox.stop()
        service.stop()
        collector.close()


def subscribe(service, collector, firefox):
    since = len(collector.steps)
    collector.command("subscribe")
    _, subscribed = collector.wait_for("subscribed", STEP_TIMEOUT, firefox, since)
    endpoint = subscribed["endpoint"]
    assert endpoint.startswith(service.ep.url + "/wpush/v2/"), subscribed
    assert subscribed["originOk"] is True
    return endpoint


def unsubscribe(collector, firefox):
    since = len(collector.steps)
    collector.command("unsubscribe")
    _, done = collector.wait_for("unsubscribed", STEP_TIMEOUT, firefox, since)
    assert done["ok"] is True, done


def test_subscribe_send_receive_unsubscribe(browser):
    service, collector, firefox = browser
    subscribe(service, collector, firefox)
    since = len(collector.steps)
    collector.command("send", text="round one \u2603")
    _, sent = collector.wait_for("sent", STEP_TIMEOUT, firefox, since)
    assert sent["status"] == 201, sent
    _, pushed = collector.wait_for("worker-push", STEP_TIMEOUT, firefox, since)
    assert pushed["text"] == "round one \u2603"  # Firefox decrypted it
    _, received = collector.wait_for("received", STEP_TIMEOUT, firefox, since)
    assert received["text"] == "round one \u2603" and received["ms"] >= 0
    _, notified = collector.wait_for("worker-notified", STEP_TIMEOUT, firefox, since)
    assert notified["pages"] >= 1  # the notification shown, the page told
    unsubscribe(collector, firefox)


def test_a_message_sent_while_the_service_restarts_arrives(browser):
    service, collector, firefox = browser
    endpoint = subscribe(service, collector, firefox)
    # The whole service goes down; the endpoint node comes back first, and
    # the message is sent while Firefox cannot reach a connection node.
    service.stop()
    service.ep.start()
    since = len(collector.steps)
    collector.command("send", text="round two, stored")
    _, sent = collector.wait_for("sent", STEP_TIMEOUT, firefox, since)
    assert sent["status"] == 201, sent
    stored = service.stored(endpoint)
    assert len(stored) == 1, stored
    assert not any(s["step"] == "worker-push" for s in collector.steps[since:])
    service.cn.start()
    _, pushed = collector.wait_for("worker-push", STEP_TIMEOUT, firefox, since)
    assert pushed["text"] == "round two, stored"
    _, received = collector.wait_for("received", STEP_TIMEOUT, firefox, since)
    assert received["text"] == "round two, stored"
    unsubscribe(collector, firefox)


def test_the_page_says_when_firefox_uses_another_push_server(browser, dynalite):
    """The demo page of a second endpoint node, whose endpoint_url is not the
    one Firefox's push server hands out: the page says so, /demo/send refuses."""
    service, collector, firefox = browser
    other = EndpointNode(dynalite, service.tables, log_path=firefox.workdir / "ep2.log",
                         demo_page="true", data_dir=firefox.workdir / "var2")
    try:
        other.start()
        since = len(collector.steps)
        collector.command("goto", url=f"{other.url}/demo?auto=1&collector={collector.url}")
        collector.wait_for("worker-ready", STEP_TIMEOUT, firefox, since)
        since = len(collector.steps)
        collector.command("subscribe")
        _, subscribed = collector.wait_for("subscribed", STEP_TIMEOUT, firefox, since)
        assert subscribed["endpoint"].startswith(service.ep.url + "/wpush/v2/")
        assert subscribed["originOk"] is False  # the page shows the warning and the fix
        collector.command("send", text="not from here")
        _, sent = collector.wait_for("sent", STEP_TIMEOUT, firefox, since)
        assert sent["status"] == 400, sent
        assert "not on this push service" in sent["answer"]["message"]
        unsubscribe(collector, firefox)
    finally:
        since = len(collector.steps)
        collector.command("goto", url=f"{service.ep.url}/demo?auto=1&collector={collector.url}")
        collector.wait_for("worker-ready", STEP_TIMEOUT, firefox, since)
        other.stop()


def test_firefox_screenshot_of_the_page_after_a_push(browser):
    """Firefox's own --screenshot of the demo page once a push arrived (the
    page shows what this browser received, kept in its localStorage).
    CONNNODE_DEMO_SCREENSHOT=<path> keeps a copy to look at."""
    service, collector, firefox = browser
    subscribe(service, collector, firefox)
    since = len(collector.steps)
    collector.command("send", text="Hello from connnode")
    collector.wait_for("received", STEP_TIMEOUT, firefox, since, text="Hello from connnode")
    collector.command("close")  # a clean exit writes the page's localStorage to disk
    assert firefox.wait_exit(30), firefox.log_tail()
    firefox.stop()
    path = firefox.screenshot(f"{service.ep.url}/demo", firefox.workdir / "demo.png")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10000
    keep = os.environ.get("CONNNODE_DEMO_SCREENSHOT")
    if keep:
        shutil.copyfile(path, keep)
