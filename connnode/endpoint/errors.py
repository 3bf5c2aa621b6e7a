"""The endpoint node's error type and the shape of its error responses.

PROTOCOL.md 4.3 fixes one JSON body and a few extra headers for every error
the EP answers. Validation code anywhere in the EP raises `EndpointError`;
the web layer turns it into a response with `EndpointError.response()`.
`storage_error` is the one mapping of a storage failure to its answer (4.6:
503/201 when throttled, 503/202 otherwise). The module knows nothing about
Flask so that the rules can be tested alone.
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
    201: "Server busy, retry later",
    202: "Temporary storage error, retry later",
    999: "Unexpected server error",
}


def _reason(status):
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


class EndpointError(Exception):
    """An error answered to the client: HTTP `status`, 4.12 `errno` (or None)."""

    def __init__(self, status, errno=None, message=None):
        self.status = int(status)
        self.errno = errno
        self.message = message or _ERRNO_MESSAGES.get(errno) or _reason(self.status)
        super().__init__(self.status, self.errno, self.message)

    def __str__(self):
        return "%d/%s: %s" % (self.status, self.errno, self.message)

    def response(self):
        """`(status, headers, body)`: see `error_response`."""
        return error_response(self.status, self.errno, self.message)


def error_response(status, errno=None, message=None):
    """The pieces of a 4.3 error response: `(status, headers, body)`.

    `headers` includes `Content-Type: application/json` and the status's extra
    headers; `body` is the dict to serialise as JSON.
    """
    status = int(status)
    if message is None:
        message = _ERRNO_MESSAGES.get(errno) or _reason(status)
    headers = {"Content-Type": "application/json"}
    headers.update(_STATUS_HEADERS.get(status, {}))
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
