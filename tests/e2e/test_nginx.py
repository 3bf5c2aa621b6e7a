"""TLS the way deployments do it (issue 12): Debian's nginx, run with
``conf/nginx.conf`` itself (ports, names and certificate paths replaced for
this machine) and a self-signed certificate, in front of a real connection
node and endpoint node.

Over ``wss://`` through nginx: hello and register. Over ``https://``: a
POST signed with VAPID whose ``aud`` is the https origin (``endpoint_url``)
delivers the frame; one whose ``aud`` is the nodes' plain origin is 401.
The router API is not reachable through nginx.

Without nginx the test fails under CI (``.ci/run`` installs it) and is
skipped, loudly, elsewhere."""
import datetime
import ipaddress
import signal
import subprocess
import time
import uuid

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from py_vapid import Vapid02

from connnode.embedded import die_with_parent
from tests.e2e.tools import find_program, require
from tests.harness import (ROOT, ConnectionNode, EndpointNode, PushClient,
                           application_server_key, browser_keys, decrypt, pick_port,
                           send_webpush)

pytestmark = pytest.mark.timeout(180)

WS_NAME, API_NAME = "localhost", "127.0.0.1"  # the two server names, on one port


def self_signed(directory):
    """(certificate path, key path) for localhost and 127.0.0.1."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "connnode test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName(WS_NAME), x509.IPAddress(ipaddress.ip_address(API_NAME))]),
            critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "tls.crt", directory / "tls.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def wait_until_listening(port, process, cert, timeout=30.0):
    deadline = time.monotonic() + timeout
    while True:
        assert process.poll() is None, f"nginx exited with {process.returncode}"
        try:
            requests.get(f"https://127.0.0.1:{port}/__lbheartbeat__", verify=str(cert),
                         timeout=1)
            return
        except requests.RequestException:
            assert time.monotonic() < deadline, f"nginx did not answer on {port} in {timeout} s"
            time.sleep(0.1)


def render(example, replacements):
    """The example config with each (old, new) replaced; every old must occur,
    so a change of the example's shape breaks this test instead of slipping by."""
    for old, new in replacements:
        assert old in example, f"conf/nginx.conf no longer holds {old!r}"
        example = example.replace(old, new)
    return example


@pytest.fixture
def service(dynalite, tmp_path):
    nginx = require(find_program(("nginx",), "CONNNODE_NGINX"), "nginx", "the TLS (nginx) test")
    tls_port, http_port = pick_port(), pick_port()
    https_origin = f"https://{API_NAME}:{tls_port}"
    suffix = uuid.uuid4().hex[:8]
    tables = {"router": f"router_{suffix}", "message": f"message_{suffix}"}
    ep = EndpointNode(dynalite, tables, log_path=tmp_path / "ep.log",
                      trusted_proxies="127.0.0.1")
    ep.env["CONNNODE_ENDPOINT_URL"] = https_origin  # what application servers see
    cn = ConnectionNode(dynalite, tables, endpoint_url=https_origin, log_path=tmp_path / "cn.log")
    cert, key = self_signed(tmp_path)
    config = render((ROOT / "conf" / "nginx.conf").read_text(), [
        ("worker_processes auto;", "worker_processes 1;"),
        ("worker_connections 65536;", "worker_connections 512;"),
        ("pid /run/nginx-connnode.pid;", f"pid {tmp_path}/nginx.pid;"),
        ("error_log /var/log/nginx/connnode-error.log warn;",
         f"error_log {tmp_path}/nginx-error.log info;"),
        ("server 127.0.0.1:8080;", f"server 127.0.0.1:{cn.port};"),
        ("server 127.0.0.1:8082;", f"server 127.0.0.1:{ep.port};"),
        ("listen [::]:443 ssl;\n", ""),
        ("listen [::]:80;\n", ""),
        ("listen 443 ssl;", f"listen 127.0.0.1:{tls_port} ssl;"),
        ("listen 80;", f"listen 127.0.0.1:{http_port};"),
        ("server_name push.example.com updates.push.example.com;",
         f"server_name {WS_NAME} {API_NAME};"),
        ("server_name push.example.com;", f"server_name {WS_NAME};"),
        ("server_name updates.push.example.com;", f"server_name {API_NAME};"),
        ("/etc/ssl/connnode/push.example.com.crt", str(cert)),
        ("/etc/ssl/connnode/push.example.com.key", str(key)),
        ("/etc/ssl/connnode/updates.push.example.com.crt", str(cert)),
        ("/etc/ssl/connnode/updates.push.example.com.key", str(key)),
    ])
    for router in range(cn.router_port, cn.router_port + 2):
        assert str(router) not in config  # nothing proxies to a router port
    (tmp_path / "nginx.conf").write_text(config)
    command = [nginx, "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"),
               "-e", str(tmp_path / "nginx-error.log"), "-g", "daemon off;"]
    check = subprocess.run(command + ["-t"], capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stderr
    proxy = None
    try:
        ep.start()
        cn.start()
        with open(tmp_path / "nginx.out", "wb") as out:
            proxy = subprocess.Popen(command, stdout=out, stderr=out, start_new_session=True,
                                     preexec_fn=die_with_parent)
        wait_until_listening(tls_port, proxy, cert)
        yield {"ws": f"wss://{WS_NAME}:{tls_port}/", "https": https_origin, "cert": str(cert),
               "ep": ep, "cn": cn, "tls_port": tls_port, "http_port": http_port}
    finally:
        if proxy is not None:
            proxy.send_signal(signal.SIGQUIT)
            try:
                proxy.wait(15)
            except subprocess.TimeoutExpired:
                proxy.kill()
                proxy.wait()
        cn.stop()
        ep.stop()


def test_wss_and_https_through_nginx(service, monkeypatch):
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", service["cert"])  # pywebpush's requests
    vapid = Vapid02()
    vapid.generate_keys()
    browser = PushClient(service["ws"], sslopt={"ca_certs": service["cert"]})
    try:
        assert browser.hello()["status"] == 200
        registered = browser.register(key=application_server_key(vapid))
        endpoint = registered["pushEndpoint"]
        assert endpoint.startswith(service["https"] + "/wpush/v2/"), endpoint
        private_key, auth, keys = browser_keys()

        response = send_webpush(service["https"], endpoint, keys, vapid, "over TLS")
        assert response.status_code == 201, response.text
        assert response.headers["Location"].startswith(service["https"] + "/m/")
        frame = browser.recv(timeout=10)
        assert decrypt(frame, private_key, auth) == b"over TLS"
        browser.ack(frame)

        # aud must be the https origin: the nodes' own plain origin is refused.
        with pytest.raises(Exception) as refused:
            send_webpush(service["ep"].url, endpoint, keys, vapid, "wrong aud")
        assert refused.value.response.status_code == 401
    finally:
        browser.close()


def test_the_router_api_is_not_reachable_through_nginx(service):
    """nginx proxies to the public ports only (the rendered config names no
    router port, checked in the fixture): router paths through it are the
    public apps' 404/405, on both names; plain http only redirects."""
    uaid = uuid.uuid4().hex
    tls = f"https://127.0.0.1:{service['tls_port']}"
    for host in (WS_NAME, API_NAME):
        for method, path in (("PUT", f"/push/{uaid}"), ("PUT", f"/notif/{uaid}"),
                             ("DELETE", f"/notif/{uaid}/0"), ("GET", "/push")):
            answer = requests.request(method, tls + path, data=b"{}", timeout=5,
                                      headers={"Host": f"{host}:{service['tls_port']}"},
                                      verify=service["cert"])
            assert answer.status_code in (404, 405), (host, method, path, answer.status_code)
    plain = requests.get(f"http://127.0.0.1:{service['http_port']}/wpush/v1/x", timeout=5,
                         allow_redirects=False)
    assert plain.status_code == 301
    assert plain.headers["Location"] == "https://127.0.0.1/wpush/v1/x"
