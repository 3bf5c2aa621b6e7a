"""The Megaphone API of the endpoint node (issue 15, "Where versions come from").

    PUT /v1/broadcasts/<broadcaster>/<bchannel>   body: the new version
        Authorization: Bearer <the broadcaster's token (megaphone_broadcaster_tokens)>
        -> 200 {"code": 200}
    GET /v1/broadcasts
        Authorization: Bearer <megaphone_reader_token>
        -> 200 {"code": 200, "broadcasts": {"<id>": "<version>", ...}}

Errors have the JSON shape of PROTOCOL.md 4.3 (``errno`` null). PUT checks, in
order: the id (each part 1-100 of ``[A-Za-z0-9_.-]``, else 404), the
broadcaster is configured (else 404), the token (else 401), the body (1-200
printable characters of UTF-8, not only spaces, else 400). The body is read
only once the token is good, through a bound. A GET with no reader token
configured is always 401. Tokens are compared in constant time.

The checks are plain functions (``parse_broadcast_id``, ``parse_version``,
``bearer_token``, ``token_matches``) so they can be tested without Flask.
"""
import hmac
import logging
import re

from flask import request

from connnode.db.dynamo import StorageError
from connnode.endpoint.body import read_body
from connnode.endpoint.errors import EndpointError, storage_error

log = logging.getLogger(__name__)

ID_PART = re.compile(r"[A-Za-z0-9_.-]{1,100}")
MAX_VERSION_CHARS = 200
# A version of 200 characters is at most 800 bytes of UTF-8.
MAX_VERSION_BYTES = 4 * MAX_VERSION_CHARS
JSON = {"Content-Type": "application/json"}


def parse_broadcast_id(broadcaster, bchannel):
    """``"<broadcaster>/<bchannel>"``, or EndpointError 404 for a malformed part."""
    if not (isinstance(broadcaster, str) and ID_PART.fullmatch(broadcaster)
            and isinstance(bchannel, str) and ID_PART.fullmatch(bchannel)):
        raise EndpointError(404, None, "No such broadcast")
    return f"{broadcaster}/{bchannel}"


def parse_version(body):
    """The version in ``body`` (bytes), or EndpointError 400."""
    if len(body) > MAX_VERSION_BYTES:
        raise EndpointError(400, None, f"Version over {MAX_VERSION_CHARS} characters")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise EndpointError(400, None, "Version is not UTF-8") from None
    if not text or not text.strip():
        raise EndpointError(400, None, "Version is empty")
    if len(text) > MAX_VERSION_CHARS:
        raise EndpointError(400, None, f"Version over {MAX_VERSION_CHARS} characters")
    if not text.isprintable():
        raise EndpointError(400, None, "Version holds control characters")
    return text


def bearer_token(authorization):
    """The token of ``Authorization: Bearer <token>``, or None."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


def token_matches(given, expected):
    """Constant-time comparison; False when either is missing."""
    if not given or not expected:
        return False
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def _unauthorized():
    return EndpointError(401, None, "Invalid or missing authorization token")


class BroadcastAPI:
    def __init__(self, storage, settings):
        self.storage = storage
        self.tokens = dict(settings.megaphone_broadcaster_tokens or {})
        self.reader_token = settings.megaphone_reader_token or ""

    def put(self, broadcaster, bchannel, authorization, content_length, stream):
        """``(status, headers, body)`` of a PUT."""
        try:
            broadcast_id = parse_broadcast_id(broadcaster, bchannel)
            expected = self.tokens.get(broadcaster)
            if expected is None:
                raise EndpointError(404, None, "Unknown broadcaster")
            if not token_matches(bearer_token(authorization), expected):
                raise _unauthorized()
            if content_length is not None and content_length > MAX_VERSION_BYTES:
                raise EndpointError(400, None, f"Version over {MAX_VERSION_CHARS} characters")
            version = parse_version(read_body(stream, MAX_VERSION_BYTES))
            try:
                self.storage.broadcasts.set(broadcast_id, version)
            except StorageError as exc:
                raise storage_error(exc, "broadcast set", log) from None
        except EndpointError as exc:
            return _error(exc)
        log.info("broadcast %s set to %r", broadcast_id, version)
        return 200, dict(JSON), {"code": 200}

    def get(self, authorization):
        """``(status, headers, body)`` of a GET."""
        try:
            if not token_matches(bearer_token(authorization), self.reader_token):
                raise _unauthorized()
            try:
                broadcasts = self.storage.broadcasts.all()
            except StorageError as exc:
                raise storage_error(exc, "broadcast list", log) from None
        except EndpointError as exc:
            return _error(exc)
        return 200, dict(JSON), {"code": 200, "broadcasts": broadcasts}


def _error(exc):
    status, headers, body = exc.response()
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"  # not VAPID: this API takes bearer tokens
    return status, headers, body


def broadcast_routes(app, storage, settings, respond):
    """Add the two routes to the Flask ``app``; ``respond`` turns
    ``(status, headers, body)`` into a response."""
    api = BroadcastAPI(storage, settings)

    def put_broadcast(broadcaster, bchannel):
        return respond(api.put(broadcaster, bchannel, request.headers.get("Authorization"),
                               request.content_length, request.stream))

    def list_broadcasts():
        return respond(api.get(request.headers.get("Authorization")))

    app.add_url_rule("/v1/broadcasts/<broadcaster>/<bchannel>", "put_broadcast",
                     put_broadcast, methods=["PUT"])
    app.add_url_rule("/v1/broadcasts", "list_broadcasts", list_broadcasts, methods=["GET"])
    return api
