"""Headless Firefox ESR without WebDriver: a throwaway profile whose
``user.js`` points the browser's push client at our connection node, and a
small HTTP collector that the demo page and its service worker report their
steps to and take their commands from (``?auto=1&collector=...``, see
connnode/endpoint/demo/demo.js).

Every wait here is bounded; a wait that runs out fails with every step seen
so far and the tail of Firefox's own log."""
import json
import os
import signal
import subprocess
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from connnode.embedded import die_with_parent
from tests.e2e.tools import find_program

FIREFOX_NAMES = ("firefox-esr", "firefox")
MAX_STEP_BYTES = 65536


def find_firefox():
    """The path of a Firefox binary (``CONNNODE_FIREFOX`` wins), or None."""
    return find_program(FIREFOX_NAMES, "CONNNODE_FIREFOX")


def profile_prefs(push_server_url):
    """The prefs of the throwaway profile, each with why it is set."""
    return {
        # Push: our connection node instead of Mozilla's, over ws:// (no TLS
        # here), reconnecting within a second of a lost connection.
        "dom.push.enabled": True,
        "dom.push.connection.enabled": True,
        "dom.push.serverURL": push_server_url,
        "dom.push.testing.allowInsecureServerURL": True,
        "dom.push.retryBaseInterval": 500,
        "dom.push.loglevel": "Debug",
        # Service workers and notifications on http://127.0.0.1, without prompts.
        "dom.serviceWorkers.enabled": True,
        "dom.serviceWorkers.testing.enabled": True,
        "dom.webnotifications.enabled": True,
        "permissions.default.desktop-notification": 1,
        "dom.push.testing.ignorePermission": True,
        # The page's "close" command quits Firefox the clean way (all saved).
        "dom.allow_scripts_to_close_windows": True,
        # Notifications as Firefox's own windows: headless has no desktop's.
        "alerts.useSystemBackend": False,
        # No network checks that would call the machine offline (no internet here).
        "network.manage-offline-status": False,
        "network.connectivity-service.enabled": False,
        "network.captive-portal-service.enabled": False,
        "captivedetect.canonicalURL": "",
        # Nothing else that reaches out or gets in the way of a test browser.
        "services.settings.server": "http://127.0.0.1:9/",
        "browser.shell.checkDefaultBrowser": False,
        "browser.startup.homepage_override.mstone": "ignore",
        "browser.aboutwelcome.enabled": False,
        "browser.sessionstore.resume_from_crash": False,
        "browser.safebrowsing.malware.enabled": False,
        "browser.safebrowsing.phishing.enabled": False,
        "browser.safebrowsing.downloads.enabled": False,
        "browser.safebrowsing.update.enabled": False,
        "browser.newtabpage.enabled": False,
        "app.update.disabledForTesting": True,
        "app.normandy.enabled": False,
        "extensions.update.enabled": False,
        "datareporting.policy.dataSubmissionEnabled": False,
        "datareporting.healthreport.uploadEnabled": False,
        "toolkit.telemetry.enabled": False,
        "network.dns.disablePrefetch": True,
        "network.prefetch-next": False,
        "toolkit.startup.max_resumed_crashes": -1,
        # Page and chrome console lines in Firefox's log, for a failing test.
        "devtools.console.stdout.content": True,
        "devtools.console.stdout.chrome": True,
    }


def write_profile(directory, push_server_url):
    directory.mkdir(parents=True, exist_ok=True)
    lines = [f"user_pref({json.dumps(name)}, {json.dumps(value)});"
             for name, value in profile_prefs(push_server_url).items()]
    (directory / "user.js").write_text("\n".join(lines) + "\n")
    return directory


class Firefox:
    """One headless Firefox process on a throwaway profile, opening ``url``."""

    def __init__(self, binary, workdir, push_server_url):
        self.binary = binary
        self.workdir = workdir
        self.profile = write_profile(workdir / "profile", push_server_url)
        self.log_path = workdir / "firefox.log"
        self.process = None

    def _env(self):
        home = self.workdir / "home"
        home.mkdir(exist_ok=True)
        env = dict(os.environ)
        env.update({"HOME": str(home), "MOZ_HEADLESS": "1", "MOZ_CRASHREPORTER_DISABLE": "1",
                    "MOZ_DISABLE_AUTO_SAFE_MODE": "1", "XDG_RUNTIME_DIR": str(home)})
        env.pop("DISPLAY", None)
        return env

    def _command(self, *args):
        return [self.binary, "--headless", "--no-remote", "--new-instance",
                "--profile", str(self.profile), *args]

    def start(self, url):
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self._command(url), env=self._env(), stdout=log, stderr=log,
                stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=die_with_parent)
        return self

    def screenshot(self, url, path, timeout=90.0, size="1000,1400"):
        """Firefox's own ``--screenshot`` of ``url`` on this profile (the
        browser must be stopped: one process per profile)."""
        assert not self.running()
        with open(self.log_path, "ab") as log:
            process = subprocess.Popen(
                self._command("--screenshot", str(path), "--window-size", size, url),
                env=self._env(), stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                start_new_session=True, preexec_fn=die_with_parent)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                raise AssertionError(f"--screenshot took over {timeout} s\n{self.log_tail()}")
        return path

    def running(self):
        return self.process is not None and self.process.poll() is None

    def log_tail(self, lines=60):
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def wait_exit(self, timeout):
        """Whether Firefox exited by itself within ``timeout`` seconds."""
        try:
            self.process.wait(timeout)
            return True
        except subprocess.TimeoutExpired:
            return False

    def stop(self, timeout=15.0):
        if self.process is None:
            return
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.process = None


class Collector:
    """A local HTTP server: ``POST /step`` records a step the page or its
    worker reports (a JSON object with ``step``), ``GET /next`` hands out the
    next queued command (``{"command": "wait"}`` when there is none). Both
    answer with CORS headers, since the page runs on the endpoint's origin."""

    def __init__(self):
        self.steps = []
        self.commands = deque()
        self.changed = threading.Condition()
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _answer(self, status, body=b"", kind="application/json"):
                self.send_response(status)
                self.send_header("Access-Control-Allow-Origin", "*")
                self.send_header("Access-Control-Allow-Headers", "content-type")
                self.send_header("Cache-Control", "no-store")
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_OPTIONS(self):
                self._answer(204)

            def do_GET(self):
                if self.path.split("?")[0] != "/next":
                    return self._answer(404)
                with collector.changed:
                    command = collector.commands.popleft() if collector.commands else {
                        "command": "wait"}
                self._answer(200, json.dumps(command).encode())

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                if self.path != "/step" or not 0 < length <= MAX_STEP_BYTES:
                    return self._answer(400)
                try:
                    step = json.loads(self.rfile.read(length))
                except ValueError:
                    return self._answer(400)
                if isinstance(step, dict) and isinstance(step.get("step"), str):
                    step["at"] = time.monotonic()
                    with collector.changed:
                        collector.steps.append(step)
                        collector.changed.notify_all()
                self._answer(204)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def command(self, command, **fields):
        with self.changed:
            self.commands.append({"command": command, **fields})

    def wait_for(self, step, timeout, firefox=None, since=0, **match):
        """The first step named ``step`` (from index ``since``) whose fields
        equal ``match``; an ``error`` or ``unsupported`` step, a Firefox that
        exited, or ``timeout`` seconds fail at once with what was seen."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                for index, seen in enumerate(self.steps[since:], since):
                    if seen["step"] in ("error", "unsupported"):
                        raise AssertionError(self._report(f"the page reported {seen}", firefox))
                    if seen["step"] == step and all(seen.get(k) == v for k, v in match.items()):
                        return index, seen
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(self._report(
                        f"no step {step!r} {match or ''} within {timeout} s", firefox))
                if firefox is not None and not firefox.running():
                    raise AssertionError(self._report("Firefox exited", firefox))
                self.changed.wait(min(left, 0.5))

    def _report(self, what, firefox):
        steps = "\n".join(json.dumps({k: v for k, v in s.items() if k != "at"})
                          for s in self.steps)
        tail = firefox.log_tail() if firefox is not None else ""
        return f"{what}\nsteps so far:\n{steps}\nFirefox log (tail):\n{tail}"

    def close(self):
        self.server.shutdown()
        self.server.server_close()
