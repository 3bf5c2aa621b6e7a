"""The endpoint node's error type and the shape of its error responses.

PROTOCOL.md 4.3 fixes one JSON body and a few extra headers for every error
the EP answers. Validation code anywhere in the EP raises `EndpointError`;
the web layer turns it into a response with `EndpointError.response()`.
`storage_error` is the one mapping of a storage failure to its answer (4.6:
503/201 when throttled, 503/202 otherwise). The module knows nothing about
Flask so that the rules can be tested alone.

connnode's own additions to 4.12 (README errno table): `rate_limited`, the
429/115 of a POST over a rate limit (`connnode/endpoint/limits.py`), and
`DEAD_STATUS`, the status whose answers the dead-subscription cache repeats
(`connnode/endpoint/deadsubs.py`).
"""
import logging
from http import HTTPStatus

from connnode.db.dynamo import ThroughputError

log = logging.getLogger(__name__)

MORE_INFO = "http://autopush.readthedocs.io/en/latest/http.html#error-codes"

# Extra headers that PROTOCOL.md 4.3 attaches to every response of a status.
_STATUS_HEADERS = {
    401: {"WWW-Authenticate": "vapid"},
    410: {"Cache-Control": "max-age=86400"},
    503: {"Retry-After": "120"},
}

# Default human-readable messages (4.12); `message` is not part of the contract.
_ERRNO_MESSAGES = {
    102: "Invalid subscription token",
    103: "No such subscription",
    104: "Data payload too large",
    105: "Subscription is no longer valid",
    106: "No such subscription",
    109: "Invalid or missing VAPID authorization",
    110: "Missing or invalid encryption headers",
    111: "Missing TTL header",
    112: "Invalid TTL header",
    113: "Invalid Topic header",
    114: "Invalid TTL header: negative",
    115: "Too many requests, slow down",
    201: "Server busy, retry later",
    202: "Temporary storage error, retry later",
    999: "Unexpected server error",
}


def _reason(status):
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


# connnode's own (not in PROTOCOL.md 4.12): a POST over one of its rate limits.
RATE_LIMITED_STATUS = 429
RATE_LIMITED_ERRNO = 115

# Answers that say the subscription is gone for good (4.3: cacheable for a
# day); the dead-subscription cache repeats them without a storage call.
DEAD_STATUS = 410


class EndpointError(Exception):
    """An error answered to the client: HTTP `status`, 4.12 `errno` (or None);
    `headers`: extra response headers of this one answer (or None)."""

    def __init__(self, status, errno=None, message=None, headers=None):
        self.status = int(status)
        self.errno = errno
        self.message = message or _ERRNO_MESSAGES.get(errno) or _reason(self.status)
        self.headers = headers
        super().__init__(self.status, self.errno, self.message)

    def __str__(self):
        return "%d/%s: %s" % (self.status, self.errno, self.message)

    def response(self):
        """`(status, headers, body)`: see `error_response`."""
        return error_response(self.status, self.errno, self.message, self.headers)


def rate_limited(retry_after, limit):
    """The `EndpointError` of a POST over its `limit` ("ip", "key" or
    "subscription"): 429/115 with `Retry-After: <retry_after>` (whole seconds)."""
    return EndpointError(RATE_LIMITED_STATUS, RATE_LIMITED_ERRNO,
                         f"Too many requests ({limit} limit), retry later",
                         headers={"Retry-After": str(int(retry_after))})


def error_response(status, errno=None, message=None, extra_headers=None):
    """The pieces of a 4.3 error response: `(status, headers, body)`.

    `headers` includes `Content-Type: application/json`, the status's extra
    headers and `extra_headers`; `body` is the dict to serialise as JSON.
    """
    status = int(status)
    if message is None:
        message = _ERRNO_MESSAGES.get(errno) or _reason(status)
    headers = {"Content-Type": "application/json"}
    headers.update(_STATUS_HEADERS.get(status, {}))
    if extra_headers:
        headers.update(extra_headers)
    body = {
        "code": status,
        "errno": errno,
        "error": _reason(status),
        "message": message,
        "more_info": MORE_INFO,
    }
    return status, headers, body


def storage_error(exc, operation="storage", logger=None):
    """The `EndpointError` answering the storage failure `exc` (a
    `connnode.db.dynamo.StorageError`): 503/201 for a `ThroughputError`,
    logged as a warning; 503/202 for any other, logged as an error. The line
    goes to `logger` (the caller's, by default this module's) and names
    `operation`. Use as ``raise storage_error(exc, ...) from None``."""
    logger = logger or log
    if isinstance(exc, ThroughputError):
        logger.warning("%s throttled: %s", operation, exc)
        return EndpointError(503, 201)
    logger.error("%s failed: %s", operation, exc)
    return EndpointError(503, 202)
