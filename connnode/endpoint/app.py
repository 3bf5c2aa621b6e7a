"""The endpoint node's public WebPush API (PROTOCOL.md section 4) as a Flask app.

    POST    /wpush/v1/{token}, /wpush/{token}   unrestricted subscription
    POST    /wpush/v2/{token}                   key-bound subscription (VAPID required)
    DELETE  /m/{message_id}                     delete a stored message (4.10)
    OPTIONS /wpush/..., /m/...                  CORS preflight
    GET     /status /health /__heartbeat__ /__lbheartbeat__ /__version__ (4.11)
    PUT     /v1/broadcasts/{broadcaster}/{bchannel}  Megaphone API (connnode/endpoint/broadcasts.py)
    GET     /v1/broadcasts

``create_endpoint_app(storage, metrics, node_client, settings)`` builds it.
``storage`` is a ``connnode.db.storage.Storage`` (its ``crypto`` reads
tokens and mints message ids), ``metrics`` a ``connnode.metrics`` client,
``node_client`` a ``connnode.nodeclient.NodeClient``.

POST checks run in the order of 4.6; the first failure is answered. Every
error, including Flask's own 404/405 and unexpected exceptions (500/999),
gets the JSON body of 4.3 with its status's extra headers, and every response
gets the headers of 4.2 (STS, CORS). The body is read through a bound of
``max_data_bytes + 1`` bytes, so an unbounded (chunked) body is never
buffered; a ``Content-Length`` above the limit is refused without reading.

connnode adds checks of its own to POST, all before any storage call
(README "Rate limits and dead subscriptions"): the client IP's rate limit
first, then (after step 1) the dead-subscription cache, the VAPID key's rate
limit right after a verified signature (step 4), and the subscription's rate
limit before the body is read (step 5). Over a limit: 429/115 with
``Retry-After``; a cached dead endpoint: its 410 again.

Decisions where PROTOCOL.md is silent:

* Everything under ``/wpush/`` that is not ``{token}``, ``v1/{token}`` or
  ``v2/{token}`` (``v3/...``, extra segments, an empty token) is 404/102.
  ``/wpush`` and ``/wpush/`` are unknown paths (404, errno null).
* CORS headers go on every response when ``cors`` is on;
  ``Access-Control-Allow-Methods`` only on ``/wpush/...`` (POST) and
  ``/m/...`` (DELETE) paths.
* A router record whose ``router_type`` is present but neither ``webpush``
  nor ``simplepush`` is answered 410/106 without being dropped (4.6 drops
  only records missing a field or naming an invalid month).
* A ``drop_user`` failure at step 10 is a storage error of that step
  (503/201 or 503/202), as 4.6 says for steps 9-12.
* ``updates.notification.encoding.<encoding>`` is counted when a message with
  a body is answered 201. ``notification.message.error`` is counted for
  errors of POST /wpush only; ``vapid:True`` once a VAPID token was verified.
* Werkzeug's own 413 (if a server or config ever raises it) is errno 104.
* DELETE of a topic id compares ``updateid`` with the id as Fernet printed it
  (padding restored), so a client that stripped the ``=`` still deletes.
"""
import logging
import time

from http import HTTPStatus

from flask import Flask, request
from werkzeug.datastructures import EnvironHeaders
from werkzeug.exceptions import HTTPException

from connnode.crypto import LEGACY_PREFIX, TOPIC_PREFIX, InvalidTokenError
from connnode.db.dynamo import StorageError
from connnode.encoding import b64url_encode, compact_json
from connnode.endpoint.body import read_body
from connnode.endpoint.broadcasts import broadcast_routes
from connnode.endpoint.deadsubs import DeadSubscriptions
from connnode.endpoint.delivery import DROPPED, Delivery
from connnode.endpoint.errors import DEAD_STATUS, EndpointError, error_response, storage_error
from connnode.endpoint.headers import message_headers, parse_topic, parse_ttl
from connnode.endpoint.limits import RateLimits
from connnode.endpoint.vapid import normalise_origin, parse_authorization, verify
from connnode.lifecycle import Tracker
from connnode.notification import Notification
from connnode.status import NoSessions, status_routes

log = logging.getLogger(__name__)

ROUTER_TYPES = ("webpush", "simplepush")
CORS_ALLOW_HEADERS = ("content-encoding,encryption,crypto-key,ttl,encryption-key,"
                      "content-type,authorization,topic,urgency")
CORS_EXPOSE_HEADERS = "location,www-authenticate"
KEY_BOUND_VERSIONS = {"v1": False, "v2": True}


def _pad(text):
    return text + "=" * (-len(text) % 4)


class _Request:
    """What the POST handler learned so far (for the metrics of an error;
    ``dead_key``: the dead-subscription cache's key once it missed; ``key``,
    set only once a signature verified: the VAPID public key, raw)."""

    __slots__ = ("vapid", "dead_key", "key")

    def __init__(self):
        self.vapid = False
        self.dead_key = None
        self.key = None


class WebPushAPI:
    """The views' logic; one per app, closed over its dependencies."""

    def __init__(self, storage, metrics, node_client, settings):
        self.storage = storage
        self.crypto = storage.crypto
        self.metrics = metrics
        self.settings = settings
        self.endpoint_url = settings.endpoint_url.rstrip("/")
        self.expected_origin = normalise_origin(settings.endpoint_url)
        self.max_data_bytes = settings.max_data_bytes
        self.max_ttl = settings.max_ttl
        self.delivery = Delivery(storage, node_client, metrics, settings.durable_direct)
        self.limits = RateLimits.from_settings(settings, metrics)
        self.dead = DeadSubscriptions.from_settings(settings)
        self.tracker = Tracker.from_settings(settings)

    # -- POST /wpush (4.6) -------------------------------------------------
    def post(self, rest, request):
        """``request``: ``headers`` (case-insensitive ``get``, ``items``),
        ``content_length`` (int or None) and ``stream`` (the body): Flask's
        request, or ``WsgiRequest`` on the fast path."""
        start = time.monotonic()
        state = _Request()
        try:
            notification, destination = self._post(rest, state, request)
        except EndpointError as exc:
            self._count_error(exc.status, state)
            if exc.status == DEAD_STATUS and state.dead_key is not None:
                self.dead.remember(state.dead_key, exc.status, exc.errno, exc.message)
            return exc.response()
        except Exception:
            log.exception("unexpected error in POST /wpush")
            self._count_error(500, state)
            return error_response(500, 999)
        tags = {"destination": destination, "router": "webpush", "vapid": str(state.vapid)}
        self.metrics.increment("notification.message.success", tags=tags)
        if notification.data:
            self.metrics.increment(
                "updates.notification.encoding." + notification.headers["encoding"])
        self.metrics.timing("notification.request_time", time.monotonic() - start)
        return 201, {"Location": f"{self.endpoint_url}/m/{notification.version}",
                     "TTL": str(notification.ttl)}, None

    def _count_error(self, status, state):
        self.metrics.increment("notification.message.error", tags={
            "code": status, "router": "webpush", "vapid": str(state.vapid)})

    def _post(self, rest, state, request):
        headers = request.headers
        # ours: the client IP's rate limit (connnode/endpoint/limits.py)
        self.limits.check_ip(request.remote_addr, headers)
        # 1. route and API version
        parts = rest.split("/")
        if len(parts) == 1:
            key_bound, token = False, parts[0]
        elif len(parts) == 2 and parts[0] in KEY_BOUND_VERSIONS:
            key_bound, token = KEY_BOUND_VERSIONS[parts[0]], parts[1]
        else:
            raise EndpointError(404, 102)
        # ours: an endpoint that answered 410 lately (connnode/endpoint/deadsubs.py)
        if self.dead is not None:
            self._check_dead(rest, state)
        # 2. token
        try:
            uaid, chid, key_digest = self.crypto.parse_endpoint_token(token, key_bound)
        except InvalidTokenError:
            raise EndpointError(404, 102) from None
        # 3. and 4. Authorization, VAPID (then ours: the VAPID key's rate limit)
        self._check_vapid(headers, key_bound, key_digest, state)
        # ours: the subscription's rate limit
        self.limits.check_subscription(uaid, chid)
        # 5. body size
        body = self._read_body(request)
        # 6.-8. message headers
        ttl = parse_ttl(headers.get("TTL"), self.max_ttl)
        topic = parse_topic(headers.get("Topic"))
        forwarded = message_headers(headers, body)
        # 9.-11. router record, channel
        record = self._user_record(uaid, chid)
        # 12. deliver (PROTOCOL.md section 5)
        now = time.time()
        skt = None if topic is not None else int(now * 1_000_000)
        notification = Notification(
            uaid, chid, self.crypto.message_id(uaid, chid, topic=topic, sortkey_timestamp=skt),
            ttl, int(now), topic=topic, sortkey_timestamp=skt,
            data=b64url_encode(body) if body else None, headers=forwarded)
        if self.tracker.on:  # ours: lifecycle events (connnode/lifecycle.py)
            return notification, self._deliver_tracked(notification, record, state)
        destination = self.delivery.deliver(notification, record)
        return notification, destination

    def _deliver_tracked(self, notification, record, state):
        """``deliver`` with the tracking decision made first (it travels with
        the message) and the message's ``accepted``/``dropped`` event after."""
        tracker = self.tracker
        notification.tracked = tracker.enabled_for(state.key)
        destination = self.delivery.deliver(notification, record)
        if notification.tracked:
            if destination == DROPPED:
                tracker.message("dropped", notification, reason="ttl 0 and no connected client")
            else:
                tracker.message("accepted", notification, destination=destination.lower(),
                                ttl=notification.ttl, topic=notification.topic)
        return destination

    def _check_vapid(self, headers, key_bound, key_digest, state):
        authorization = headers.get("Authorization")
        if authorization is None:
            if key_bound:
                raise EndpointError(401, 109, "Missing VAPID authorization")
            return
        credentials = parse_authorization(authorization, headers.get("Crypto-Key"))
        self.metrics.increment("notification.auth", tags={
            "vapid": credentials.version, "scheme": credentials.scheme})
        verify(credentials, self.expected_origin, time.time(), key_digest=key_digest)
        self.metrics.increment("updates.vapid.draft02" if credentials.version == 2
                               else "updates.vapid.draft01")
        state.vapid = True
        state.key = credentials.public_key_raw
        self.limits.check_key(credentials.public_key_raw)

    def _check_dead(self, rest, state):
        known = self.dead.get(rest)
        if known is not None:
            self.metrics.increment("notification.dead_subscription", tags={"errno": known[1]})
            raise EndpointError(*known)
        state.dead_key = rest

    def _read_body(self, request):
        limit = self.max_data_bytes
        length = request.content_length
        if length is not None and length > limit:
            raise EndpointError(413, 104)
        body = read_body(request.stream, limit)
        if len(body) > limit:
            raise EndpointError(413, 104)
        return body

    def _user_record(self, uaid, chid):
        """4.6 steps 9-11: the usable router record of a registered chid."""
        try:
            record, chids = self.storage.user_and_channels(uaid)
            if record is None:
                raise EndpointError(410, 103)
            router_type = record.get("router_type")
            if not router_type or not record.get("current_month"):
                self._drop_user(uaid, 102)
            if not self.storage.month_usable(record):
                self._drop_user(uaid, 103)
            if router_type not in ROUTER_TYPES:
                raise EndpointError(410, 106)
            if chids is None:
                _, chids = self.storage.message_table(record["current_month"]).all_channels(uaid)
            if chid not in chids:
                raise EndpointError(410, 106)
            return record
        except StorageError as exc:
            raise storage_error(exc, "storage", log) from None

    def _drop_user(self, uaid, errno):
        self.storage.router.drop_user(uaid)
        self.metrics.increment("updates.drop_user", tags={"errno": errno})
        raise EndpointError(410, 106)

    # -- DELETE /m (4.10) ---------------------------------------------------
    def delete(self, message_id):
        try:
            parsed = self.crypto.parse_message_id(message_id)
        except InvalidTokenError:
            return error_response(400, None, "Invalid message id")
        if parsed.kind == LEGACY_PREFIX:
            return 204, {}, None
        try:
            record = self.storage.router.get_uaid(parsed.uaid)
            if record is None or not self.storage.month_usable(record):
                return 204, {}, None
            table = self.storage.message_table(record["current_month"])
            updateid = _pad(message_id) if parsed.kind == TOPIC_PREFIX else None
            if self.tracker.on:
                self._delete_tracked(table, parsed, message_id, updateid)
            else:
                table.delete_message(parsed.uaid, parsed.sort_key, updateid=updateid)
        except StorageError as exc:
            return storage_error(exc, "storage", log).response()
        return 204, {}, None

    def _delete_tracked(self, table, parsed, message_id, updateid):
        """DELETE /m while tracking is on: the same call, returning the
        deleted item, whose ``tracked`` attribute decides the event."""
        old = table.delete_message(parsed.uaid, parsed.sort_key, updateid=updateid, old=True)
        if self.tracker.track_all or (old and old.get("tracked") is True):
            self.tracker.event("deleted", message_id, parsed.uaid, chid=parsed.chid,
                               found=bool(old))


def create_endpoint_app(storage, metrics, node_client, settings):
    app = Flask("connnode.endpoint")
    app.session_interface = NoSessions(app)
    api = WebPushAPI(storage, metrics, node_client, settings)
    response_class = app.response_class

    def respond(result):
        status, headers, body = result
        if body is None:
            response = response_class(status=status, headers=headers)
            if status in (201, 204):
                del response.headers["Content-Type"]
            return response
        text = compact_json(body)
        return response_class(text, status, headers=headers)

    def options_response():
        return response_class(status=200)

    def push(rest):
        if request.method == "OPTIONS":
            return options_response()
        return respond(api.post(rest, request))

    def delete_message(message_id):
        if request.method == "OPTIONS":
            return options_response()
        return respond(api.delete(message_id))

    app.add_url_rule("/wpush/<path:rest>", "push", push, methods=["POST", "OPTIONS"],
                     provide_automatic_options=False)
    app.add_url_rule("/m/<path:message_id>", "delete_message", delete_message,
                     methods=["DELETE", "OPTIONS"], provide_automatic_options=False)
    broadcast_routes(app, storage, settings, respond)
    if settings.demo_page:  # issue 12: GET /demo, POST /demo/send (connnode/endpoint/demo.py)
        from connnode.endpoint.demo import demo_routes
        demo_routes(app, api, settings, respond)
    status_routes(app, storage.health)

    common = CommonHeaders(settings)

    @app.after_request
    def common_headers(response):
        headers = response.headers
        for name, value in common.for_path(request.path):
            headers[name] = value
        return response

    @app.errorhandler(HTTPException)
    def http_error(exc):
        status = exc.code or 500
        response = respond(error_response(status, 104 if status == 413 else None))
        if getattr(exc, "valid_methods", None):
            response.headers["Allow"] = ", ".join(exc.valid_methods)
        return response

    @app.errorhandler(Exception)
    def unexpected_error(exc):
        log.exception("unexpected error in %s %s", request.method, request.path)
        return respond(error_response(500, 999))

    return EndpointApp(api, app, common)


class CommonHeaders:
    """The headers of 4.2 on every response: STS when ``sts_max_age`` > 0;
    with ``cors``, Allow-Origin, the path's method (POST on /wpush/...,
    DELETE on /m/...), Allow-Headers and Expose-Headers."""

    def __init__(self, settings):
        base = []
        if settings.sts_max_age > 0:
            base.append(("Strict-Transport-Security",
                         f"max-age={settings.sts_max_age};includeSubDomains"))
        self.cors = settings.cors
        if self.cors:
            base.append(("Access-Control-Allow-Origin", "*"))
        tail = [("Access-Control-Allow-Headers", CORS_ALLOW_HEADERS),
                ("Access-Control-Expose-Headers", CORS_EXPOSE_HEADERS)] if self.cors else []
        method = [("Access-Control-Allow-Methods", "POST")] if self.cors else []
        self.push = tuple(base + method + tail)
        self.delete = tuple(base + [(n, "DELETE") for n, _ in method] + tail)
        self.other = tuple(base + tail)

    def for_path(self, path):
        if path.startswith("/wpush/"):
            return self.push
        if path.startswith("/m/"):
            return self.delete
        return self.other


class WsgiRequest:
    """The four things POST /wpush reads of a request, straight from the
    WSGI environ (the fast path's stand-in for Flask's request)."""

    __slots__ = ("headers", "content_length", "stream", "remote_addr")

    def __init__(self, environ):
        self.headers = EnvironHeaders(environ)
        self.remote_addr = environ.get("REMOTE_ADDR")
        try:
            length = int(environ.get("CONTENT_LENGTH") or "")
        except ValueError:
            length = None
        self.content_length = length if length is None or length >= 0 else None
        self.stream = environ["wsgi.input"]


def _status_line(status):
    return f"{status} {HTTPStatus(status).phrase}"


class EndpointApp:
    """The endpoint's WSGI entry point. ``POST /wpush/...``, the hot path, is
    answered here without Flask (its request context, routing, Response
    objects and hooks cost a large share of a message's CPU); every other
    request goes to the Flask app, which also answers odd /wpush paths
    (empty, or holding "//") exactly as before."""

    def __init__(self, api, flask_app, common):
        self.api = api
        self.flask = flask_app
        self.common = common.push
        self._status_lines = {}

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        if environ.get("REQUEST_METHOD") != "POST" or not path.startswith("/wpush/") \
                or len(path) == 7 or "//" in path:
            return self.flask(environ, start_response)
        status, headers, body = self.api.post(path[7:], WsgiRequest(environ))
        payload = b"" if body is None else compact_json(body).encode()
        header_list = list(headers.items())
        header_list.append(("Content-Length", str(len(payload))))
        header_list.extend(self.common)
        line = self._status_lines.get(status)
        if line is None:
            line = self._status_lines[status] = _status_line(status)
        start_response(line, header_list)
        return [payload]

    def test_client(self):
        from werkzeug.test import Client
        return Client(self, self.flask.response_class)
