"""The demo page of the endpoint node (issue 12): a push round trip in a real
browser, served by the service itself.

Why it exists: after ``make run`` a new user's next question is "how do I
see a push arrive in my browser?". Answering it needs an application
server, a page and a service worker; this module is all three, kept apart
from the WebPush API so that it can be switched off (``demo_page``: off by
default and in ``conf/supervisord.production.conf``, on under ``connnode
run``) and so that none of it touches the hot path.

    GET  /demo, /demo/       the page (connnode/endpoint/demo/index.html)
    GET  /demo/demo.js       its script
    GET  /demo/sw.js         the service worker (scope /demo/)
    GET  /demo/config.json   the demo VAPID public key and this node's endpoint_url
    POST /demo/send          {"subscription": {"endpoint", "keys": {"p256dh", "auth"}},
                              "text": "...", "ttl": 300}
                             -> the endpoint's own status and body

``/demo/send`` is the application server: it encrypts the text with
aes128gcm (RFC 8291/8188) and signs a VAPID token (RFC 8292) with the
node's demo key, then hands the request to this node's POST /wpush handler
in the same process, so the answer is exactly what the endpoint says. It
only sends to endpoints of this node (``endpoint_url`` + ``/wpush/...``):
anything else is 400, so it is never an open relay. Its body is read
through a bound (``MAX_SEND_BODY``) and the text is limited (``MAX_TEXT_BYTES``).

The demo VAPID key pair is generated once into ``data_dir/demo_vapid_key.pem``
(``connnode run`` does it before the nodes start; a node that finds no key
makes one, atomically, so concurrent workers agree). Subscriptions made with
it stay valid across restarts, as endpoint URLs do with the crypto key.

The encryption and signing use ``cryptography`` only (the project's own
pieces; pywebpush stays a test dependency).
"""
import hashlib
import hmac
import json
import logging
import os
import struct
import tempfile
import time
from importlib import resources
from io import BytesIO
from pathlib import Path
from urllib.parse import urlsplit

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from werkzeug.datastructures import Headers

from connnode.encoding import b64url_decode, b64url_encode, load_p256_public_key
from connnode.endpoint.body import read_body
from connnode.endpoint.errors import EndpointError, error_response
from connnode.endpoint.vapid import normalise_origin

log = logging.getLogger(__name__)

KEY_FILE = "demo_vapid_key.pem"
MAX_SEND_BODY = 8192
MAX_TEXT_BYTES = 2048
DEFAULT_TTL = 300
MAX_TTL = 86400
RECORD_SIZE = 4096
VAPID_LIFETIME = 12 * 3600

STATIC_FILES = {
    "index.html": "text/html; charset=utf-8",
    "demo.js": "text/javascript; charset=utf-8",
    "sw.js": "text/javascript; charset=utf-8",
}


# -- the demo VAPID key -------------------------------------------------------------

def _raw_public(private_key):
    return private_key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)


def load_or_create_key(data_dir):
    """The demo VAPID private key kept in ``data_dir``; made once if missing.

    The new key is written to a temporary file and linked into place, so a
    reader never sees half a key and two processes racing keep one key."""
    path = Path(data_dir) / KEY_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        fd, temp = tempfile.mkstemp(dir=path.parent, prefix=".demo_vapid_key.")
        try:
            with os.fdopen(fd, "wb") as handle:  # mkstemp: mode 0600
                handle.write(pem)
            try:
                os.link(temp, path)
            except FileExistsError:
                pass  # another process made it first: use that one
        finally:
            os.unlink(temp)
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise ValueError(f"{path}: not a P-256 private key")
    return key


# -- application server pieces: RFC 8291 encryption, RFC 8292 token -----------------

def _hkdf_expand(prk, info, length):
    """HKDF-Expand (RFC 5869) for ``length`` <= 32: one HMAC-SHA-256 block."""
    return hmac.new(prk, info + b"\x01", hashlib.sha256).digest()[:length]


def _hmac(key, data):
    return hmac.new(key, data, hashlib.sha256).digest()


def encrypt_aes128gcm(plaintext, ua_public_raw, auth_secret, salt=None, server_key=None):
    """The aes128gcm body (RFC 8188 header + one record) of ``plaintext``
    for the subscription key ``ua_public_raw`` (65 bytes) and ``auth_secret``,
    as RFC 8291 section 3.4 derives it. ``salt`` and ``server_key`` (the
    ephemeral ECDH key) are for tests; by default they are fresh."""
    ua_public = load_p256_public_key(ua_public_raw)
    if ua_public is None:
        raise ValueError("p256dh is not a P-256 public key")
    if len(plaintext) > RECORD_SIZE - 17:
        raise ValueError("plaintext too long for one record")
    server_key = server_key or ec.generate_private_key(ec.SECP256R1())
    as_public_raw = _raw_public(server_key)
    salt = salt or os.urandom(16)
    ecdh_secret = server_key.exchange(ec.ECDH(), ua_public)
    prk_key = _hmac(auth_secret, ecdh_secret)
    ikm = _hkdf_expand(prk_key, b"WebPush: info\x00" + ua_public_raw + as_public_raw, 32)
    prk = _hmac(salt, ikm)
    cek = _hkdf_expand(prk, b"Content-Encoding: aes128gcm\x00", 16)
    nonce = _hkdf_expand(prk, b"Content-Encoding: nonce\x00", 12)
    # One record, the last: the plaintext and the delimiter 0x02, no padding.
    record = AESGCM(cek).encrypt(nonce, plaintext + b"\x02", None)
    header = salt + struct.pack("!IB", RECORD_SIZE, len(as_public_raw)) + as_public_raw
    return header + record


def vapid_authorization(private_key, audience, subject, now=None):
    """``vapid t=<ES256 JWT>, k=<public key>`` for ``audience`` (an origin)."""
    now = time.time() if now is None else now
    header = b64url_encode(json.dumps({"typ": "JWT", "alg": "ES256"}).encode())
    claims = b64url_encode(json.dumps(
        {"aud": audience, "exp": int(now) + VAPID_LIFETIME, "sub": subject}).encode())
    signing_input = f"{header}.{claims}".encode("ascii")
    r, s = decode_dss_signature(private_key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
    signature = b64url_encode(r.to_bytes(32, "big") + s.to_bytes(32, "big"))
    public = b64url_encode(_raw_public(private_key))
    return f"vapid t={header}.{claims}.{signature}, k={public}"


# -- the send request ------------------------------------------------------------

def _refuse(message):
    return EndpointError(400, None, message)


class SendRequest:
    """A checked POST /demo/send: the path under /wpush/, the browser's keys,
    the text and the TTL."""

    __slots__ = ("rest", "p256dh", "auth", "text", "ttl")

    def __init__(self, rest, p256dh, auth, text, ttl):
        self.rest, self.p256dh, self.auth, self.text, self.ttl = rest, p256dh, auth, text, ttl


def parse_send(body, expected_origin):
    """The SendRequest of a JSON body, or EndpointError 400. The endpoint
    must be ``<expected_origin>/wpush/<token path>``: this node's own."""
    if len(body) > MAX_SEND_BODY:
        raise _refuse(f"Body over {MAX_SEND_BODY} bytes")
    try:
        document = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise _refuse("Body is not JSON") from None
    if not isinstance(document, dict):
        raise _refuse("Body is not a JSON object")
    subscription = document.get("subscription")
    if not isinstance(subscription, dict):
        raise _refuse("No subscription")
    endpoint = subscription.get("endpoint")
    if not isinstance(endpoint, str) or len(endpoint) > 1024:
        raise _refuse("No subscription endpoint")
    rest = own_endpoint_path(endpoint, expected_origin)
    if rest is None:
        raise _refuse(f"The subscription endpoint is not on this push service "
                      f"({expected_origin}); this page sends only to its own subscriptions")
    keys = subscription.get("keys")
    if not isinstance(keys, dict):
        raise _refuse("No subscription keys")
    try:
        p256dh = b64url_decode(keys.get("p256dh") or "")
        auth = b64url_decode(keys.get("auth") or "")
    except ValueError:
        raise _refuse("Subscription keys are not base64url") from None
    if load_p256_public_key(p256dh) is None:
        raise _refuse("p256dh is not a P-256 public key")
    if len(auth) != 16:
        raise _refuse("auth is not 16 bytes")
    text = document.get("text", "")
    if not isinstance(text, str):
        raise _refuse("text is not a string")
    try:
        text_bytes = text.encode("utf-8")
    except UnicodeEncodeError:
        raise _refuse("text is not valid Unicode (a lone surrogate)") from None
    if len(text_bytes) > MAX_TEXT_BYTES:
        raise _refuse(f"text over {MAX_TEXT_BYTES} bytes")
    ttl = document.get("ttl", DEFAULT_TTL)
    if isinstance(ttl, bool) or not isinstance(ttl, int) or not 0 <= ttl <= MAX_TTL:
        raise _refuse(f"ttl is not an integer from 0 to {MAX_TTL}")
    return SendRequest(rest, p256dh, auth, text_bytes, ttl)


def own_endpoint_path(endpoint, expected_origin):
    """The part after ``/wpush/`` of an endpoint URL of this node, or None."""
    try:
        parts = urlsplit(endpoint)
        origin = normalise_origin(f"{parts.scheme}://{parts.netloc}")
    except ValueError:
        return None
    if origin != expected_origin or "?" in endpoint or "#" in endpoint:
        return None
    if not parts.path.startswith("/wpush/") or len(parts.path) == 7 or "//" in parts.path:
        return None
    return parts.path[7:]


#: Headers of the page's request that the POST made for it keeps: the
#: endpoint's rate limit counts the page's client, seen through a trusted proxy.
PASSED_ON = ("X-Forwarded-For",)


class _InProcessRequest:
    """What WebPushAPI.post reads of a request, for a request made here on
    behalf of the page's client (``remote_addr``, ``client_headers``)."""

    __slots__ = ("headers", "content_length", "stream", "remote_addr")

    def __init__(self, headers, body, remote_addr=None, client_headers=None):
        self.headers = Headers(headers)
        for name in PASSED_ON:
            value = client_headers.get(name) if client_headers is not None else None
            if value is not None:
                self.headers[name] = value
        self.content_length = len(body)
        self.stream = BytesIO(body)
        self.remote_addr = remote_addr


class Demo:
    """The demo's state: the key, the origin, the WebPush API it sends through."""

    def __init__(self, api, settings, key=None):
        self.api = api
        self.key = key or load_or_create_key(settings.data_dir)
        self.public_key = b64url_encode(_raw_public(self.key))
        self.endpoint_url = settings.endpoint_url.rstrip("/")
        self.origin = normalise_origin(self.endpoint_url)
        host = urlsplit(self.endpoint_url).hostname or "localhost"
        self.subject = f"mailto:demo@{host}"
        scheme = "wss" if self.endpoint_url.startswith("https:") else "ws"
        # A hint only: behind a proxy the WebSocket URL is the proxy's.
        self.websocket_hint = f"{scheme}://{settings.hostname}:{settings.port}/"

    def config(self):
        return {"applicationServerKey": self.public_key, "endpointUrl": self.endpoint_url,
                "websocketUrl": self.websocket_hint}

    def send(self, content_length, stream, remote_addr=None, client_headers=None):
        """(status, headers, body) of POST /demo/send; ``remote_addr`` and
        ``client_headers`` are the page's request's (for the rate limits)."""
        if content_length is not None and content_length > MAX_SEND_BODY:
            return error_response(400, None, f"Body over {MAX_SEND_BODY} bytes")
        try:
            send = parse_send(read_body(stream, MAX_SEND_BODY), self.origin)
            payload = encrypt_aes128gcm(send.text, send.p256dh, send.auth)
        except EndpointError as exc:
            return exc.response()
        except ValueError as exc:
            return error_response(400, None, str(exc))
        headers = {
            "TTL": str(send.ttl),
            "Content-Encoding": "aes128gcm",
            "Content-Type": "application/octet-stream",
            "Authorization": vapid_authorization(self.key, self.origin, self.subject),
        }
        request = _InProcessRequest(headers, payload, remote_addr, client_headers)
        status, answer_headers, body = self.api.post(send.rest, request)
        answer = {"status": status}
        if body is not None:
            answer["endpoint"] = body
        if "Location" in answer_headers:
            answer["location"] = answer_headers["Location"]
        headers = {"Content-Type": "application/json"}
        if "Retry-After" in answer_headers:  # 429 and 503
            headers["Retry-After"] = answer_headers["Retry-After"]
        return status, headers, answer


def _static(name):
    return resources.files("connnode.endpoint").joinpath("demo", name).read_bytes()


def demo_routes(app, api, settings, respond):
    """Add the demo's routes to the Flask ``app``; ``api`` is the node's
    WebPushAPI, ``respond`` turns ``(status, headers, body)`` into a response."""
    from flask import request

    demo = Demo(api, settings)
    response_class = app.response_class
    files = {name: (_static(name), kind) for name, kind in STATIC_FILES.items()}

    def static(name):
        content, kind = files[name]
        response = response_class(content, 200, content_type=kind)
        response.headers["Cache-Control"] = "no-cache"
        if name == "sw.js":
            response.headers["Service-Worker-Allowed"] = "/demo/"
        return response

    def page():
        return static("index.html")

    def script():
        return static("demo.js")

    def worker():
        return static("sw.js")

    def config():
        return respond((200, {"Content-Type": "application/json",
                              "Cache-Control": "no-cache"}, demo.config()))

    def send():
        return respond(demo.send(request.content_length, request.stream, request.remote_addr,
                                 request.headers))

    app.add_url_rule("/demo", "demo_page", page, methods=["GET"])
    app.add_url_rule("/demo/", "demo_page_slash", page, methods=["GET"])
    app.add_url_rule("/demo/demo.js", "demo_script", script, methods=["GET"])
    app.add_url_rule("/demo/sw.js", "demo_worker", worker, methods=["GET"])
    app.add_url_rule("/demo/config.json", "demo_config", config, methods=["GET"])
    app.add_url_rule("/demo/send", "demo_send", send, methods=["POST"])
    log.info("demo page on: %s/demo", demo.endpoint_url)
    return demo
