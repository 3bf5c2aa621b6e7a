"""A lean request path for the hot DynamoDB item operations.

Why: every call through botocore costs ~0.5-0.75 ms of client CPU (event
hooks, parameter validation, endpoint resolution, serialising and parsing by
the service model, retry bookkeeping), and the endpoint node, whose CPU is
the service's bottleneck, makes two such calls per message (BatchGetItem,
PutItem). The request itself is small: ``POST /`` with an ``X-Amz-Target``
header and the call's parameters as JSON, signed with SigV4.

What it does: ``LeanClient`` is built from the process's boto3 client and
answers the seven operations in ``OPERATIONS`` (``get_item``,
``batch_get_item``, ``put_item``, ``update_item``, ``query``,
``delete_item``, ``batch_write_item``) with the boto3 client's signature and
answers: the same keyword arguments (DynamoDB JSON, PascalCase keys) are sent
as compact JSON and the answer's JSON comes back as a dict, as botocore
parses it for these operations. It reuses the boto3 client's endpoint URL,
region, credentials object (a refreshable one, e.g. an instance role,
refreshes itself in ``get_frozen_credentials()``, called for every request
as botocore's signer does), certificate bundle, pool size, timeouts and
number of attempts. Requests to a plain ``http://`` endpoint (a local
store) go over connnode/wire.py's keep-alive pool (``wire=True``, the
default), to ``https://`` (DynamoDB) over one urllib3 connection pool of
the one-write classes (``connnode/onewrite.py``). Failures are botocore's
exceptions, shaped as botocore shapes them: a 4xx/5xx answer is a
``ClientError`` (the class ``client.exceptions`` has for its code) whose
``response["Error"]`` holds ``Code`` (``__type`` after ``#``) and
``Message``; a transport failure is the ``BotoCoreError`` subclass botocore's
HTTP session raises. So ``Dynamo._call`` maps both paths the same way.
Retries follow botocore's standard mode as installed
(``botocore/retries/standard.py``): the same retryable conditions
(throttling codes, an unmodelled 429, 500/502/503/504, transient codes,
modelled retryable errors, transport errors, a bad ``x-amz-crc32``), the
same truncated exponential backoff with full jitter (base 1 s for throttling,
25 ms otherwise for DynamoDB, at most 20 s, raised to ``x-amz-retry-after``
up to 5 s more) and the same retry quota (500, a retry costs 5 when
throttled and 14 otherwise, a success gives back 1 or what its retry took).

What it does not do: no parameter validation (a malformed call reaches
DynamoDB, which refuses it with a ``ValidationException`` or
``SerializationException`` instead of botocore's ``ParamValidationError``);
no binary attributes (botocore base64-encodes ``B``/``BS`` values and decodes
them in answers; this schema has none, see ``to_attr``); no
``ResponseMetadata`` in successful answers (no caller reads it; error
responses carry it); no proxies, paths in the endpoint URL or account-id
endpoints (a client set up with a proxy or a path makes ``LeanClient`` raise
``LeanUnavailable`` and ``Dynamo`` keeps boto3 for everything); no client
side monitoring, event hooks or ``amz-sdk-*`` headers. Everything else
(table management, TTL, describe, scan, list, the CLI, preflight's table
checks, /health) goes through boto3.

Imported lazily by ``Dynamo`` (after gevent's monkey patching, as boto3 is).
"""
import hashlib
import hmac
import json
import logging
import random
import socket
import time
from binascii import crc32
from urllib.parse import urlsplit

import botocore
import urllib3
from botocore.exceptions import ConnectionClosedError, ConnectTimeoutError, EndpointConnectionError
from botocore.exceptions import ConnectionError as BotoConnectionError
from botocore.exceptions import HTTPClientError, ReadTimeoutError, SSLError
from urllib3.exceptions import ConnectTimeoutError as URLLib3ConnectTimeoutError
from urllib3.exceptions import NewConnectionError, ProtocolError
from urllib3.exceptions import ReadTimeoutError as URLLib3ReadTimeoutError
from urllib3.exceptions import SSLError as URLLib3SSLError

from connnode import wire
from connnode.onewrite import one_write_pools

log = logging.getLogger(__name__)

#: boto3 method name -> DynamoDB operation name.
OPERATIONS = {
    "get_item": "GetItem",
    "batch_get_item": "BatchGetItem",
    "put_item": "PutItem",
    "update_item": "UpdateItem",
    "query": "Query",
    "delete_item": "DeleteItem",
    "batch_write_item": "BatchWriteItem",
}

TARGET_PREFIX = "DynamoDB_20120810."
CONTENT_TYPE = "application/x-amz-json-1.0"
SIGNING_NAME = "dynamodb"
USER_AGENT = f"connnode-lean botocore/{botocore.__version__}"
SIGNED_HEADERS = "content-type;host;x-amz-date;x-amz-target"
SIGNED_HEADERS_WITH_TOKEN = "content-type;host;x-amz-date;x-amz-security-token;x-amz-target"

# botocore/retries/standard.py, as installed (botocore 1.44): what is retried ...
THROTTLED_CODES = frozenset({
    "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottledException",
    "TooManyRequestsException", "ProvisionedThroughputExceededException",
    "TransactionInProgressException", "RequestLimitExceeded", "BandwidthLimitExceeded",
    "LimitExceededException", "RequestThrottled", "SlowDown", "PriorRequestNotComplete",
    "EC2ThrottledException",
})
TRANSIENT_CODES = frozenset({"RequestTimeout", "RequestTimeoutException",
                             "PriorRequestNotComplete"})
TRANSIENT_STATUSES = frozenset({500, 502, 503, 504})
THROTTLING_STATUS = 429
# ... and how long to wait: t = rand(0, 1) * min(scale * 2 ** (attempt - 1), 20 s)
THROTTLING_SCALE = 1.0
TRANSIENT_SCALE = 0.025  # DynamoDB's non-throttling base scale
MAX_BACKOFF = 20.0
RETRY_AFTER_HEADER = "x-amz-retry-after"
RETRY_AFTER_MAX_ADDITIONAL = 5.0
# ... within a quota of retries per client.
QUOTA_CAPACITY = 500
RETRY_COST = 14
THROTTLING_RETRY_COST = 5
NO_RETRY_INCREMENT = 1
#: botocore's default total attempts for DynamoDB in standard mode.
DEFAULT_ATTEMPTS = 4

_sleep = time.sleep  # a module attribute, so tests can skip the backoff
_random = random.random
_NO_RETRIES = urllib3.Retry(total=False, redirect=False)  # urllib3 retries nothing


class LeanUnavailable(Exception):
    """The boto3 client is set up in a way the lean path does not cover."""


class RetryQuota:
    """botocore's ``RetryQuota`` without the lock (one process, greenlets)."""

    def __init__(self, capacity=QUOTA_CAPACITY):
        self.capacity = self.available = capacity

    def acquire(self, amount):
        if amount > self.available:
            return False
        self.available -= amount
        return True

    def release(self, amount):
        if self.available < self.capacity:
            self.available = min(self.capacity, self.available + amount)


def client_credentials(client):
    """The credentials object the boto3 client signs with.

    It is the client's own object, so it is exactly what the client uses,
    however it was built (explicit keys, environment, instance role, SSO), and
    a refreshable one is refreshed once for both paths. botocore offers no
    public accessor for it; should the attribute move, the default chain
    (``botocore.session``'s public ``get_credentials()``) is used instead.
    """
    credentials = getattr(getattr(client, "_request_signer", None), "_credentials", None)
    if credentials is None:
        import botocore.session

        credentials = botocore.session.get_session().get_credentials()
    if credentials is None:
        raise LeanUnavailable("no credentials")
    return credentials


def host_header(url):
    """The Host header botocore signs (``botocore.auth._host_from_url``)."""
    parts = urlsplit(url)
    host = parts.hostname
    if ":" in host:
        host = f"[{host}]"
    if parts.port is not None and parts.port != {"http": 80, "https": 443}.get(parts.scheme):
        host = f"{host}:{parts.port}"
    return host


def _verify_setting(client):
    """The boto3 client's certificate check: True, False or a CA bundle path."""
    session = getattr(getattr(client, "_endpoint", None), "http_session", None)
    return getattr(session, "_verify", True)


def make_pool(url, maxsize, timeout, verify=True):
    """One urllib3 pool of the one-write classes for the endpoint ``url``:
    HTTPS with certificate and host name checks (the CA bundle botocore
    uses), or plain HTTP (a local stand-in)."""
    from botocore.httpsession import get_cert_path

    parts = urlsplit(url)
    kwargs = {"maxsize": maxsize, "block": False, "timeout": timeout, "retries": False}
    if parts.scheme == "https":
        if verify is False:
            kwargs["cert_reqs"] = "CERT_NONE"
        else:
            kwargs["cert_reqs"] = "CERT_REQUIRED"
            kwargs["ca_certs"] = get_cert_path(verify)
    port = parts.port or {"http": 80, "https": 443}[parts.scheme]
    return one_write_pools()[parts.scheme](parts.hostname, port, **kwargs)


def _wire_pool(parts, host_header, config):
    """A connnode/wire.py pool for a plain-HTTP endpoint, with the boto3
    client's pool size and timeouts."""
    return wire.WirePool(parts.hostname, parts.port or 80, maxsize=config.max_pool_connections,
                         connect_timeout=config.connect_timeout,
                         read_timeout=config.read_timeout, host_header=host_header)


class LeanClient:
    """The hot item operations of a boto3 DynamoDB client, without botocore's
    per-call machinery (see the module doc)."""

    def __init__(self, client, credentials=None, wire=True):
        meta = client.meta
        url = meta.endpoint_url
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or parts.path not in ("", "/") or parts.query:
            raise LeanUnavailable(f"endpoint URL {url!r} has a path or an unknown scheme")
        config = meta.config
        if config.proxies:
            raise LeanUnavailable("the client uses a proxy")
        from botocore.utils import get_environ_proxies

        if get_environ_proxies(url):
            raise LeanUnavailable(f"the environment names a proxy for {url}")
        self.client = client
        self.endpoint_url = url
        self.region = meta.region_name
        self.credentials = credentials or client_credentials(client)
        self.max_attempts = (config.retries or {}).get("total_max_attempts") or DEFAULT_ATTEMPTS
        self.quota = RetryQuota()
        self._host = host_header(url)
        self._scope_tail = f"/{self.region}/{SIGNING_NAME}/aws4_request"
        self._key_for = None  # (secret key, date) of _key, the cached signing key
        self._key = None
        self._modeled = self._modeled_errors(meta.service_model)
        if wire and parts.scheme == "http":
            self.pool = _wire_pool(parts, self._host, config)
            self._send = self._send_wire
        else:
            self.pool = make_pool(url, config.max_pool_connections,
                                  urllib3.Timeout(connect=config.connect_timeout,
                                                  read=config.read_timeout),
                                  _verify_setting(client))

    @staticmethod
    def _modeled_errors(service_model):
        """operation -> {modelled error code: its ``retryable`` trait or None}."""
        errors = {}
        for operation in OPERATIONS.values():
            shapes = service_model.operation_model(operation).error_shapes
            errors[operation] = {
                (shape.metadata.get("error", {}).get("code") or shape.name):
                    shape.metadata.get("retryable") for shape in shapes}
        return errors

    # -- the operations --------------------------------------------------------
    def get_item(self, **kwargs):
        return self._call("GetItem", kwargs)

    def batch_get_item(self, **kwargs):
        return self._call("BatchGetItem", kwargs)

    def put_item(self, **kwargs):
        return self._call("PutItem", kwargs)

    def update_item(self, **kwargs):
        return self._call("UpdateItem", kwargs)

    def query(self, **kwargs):
        return self._call("Query", kwargs)

    def delete_item(self, **kwargs):
        return self._call("DeleteItem", kwargs)

    def batch_write_item(self, **kwargs):
        return self._call("BatchWriteItem", kwargs)

    def close(self):
        self.pool.close()

    # -- one call: attempts, retries -------------------------------------------
    def _call(self, operation, params):
        target = TARGET_PREFIX + operation
        body = json.dumps(params, separators=(",", ":")).encode()
        attempt, taken = 1, None
        while True:
            response = error = parsed = code = None
            bad_checksum = False
            try:
                response = self._send(target, body)
            except (BotoConnectionError, HTTPClientError) as exc:
                error = exc
            if response is not None:
                status = response.status
                if status < 300:
                    bad_checksum = _bad_checksum(response)
                    if not bad_checksum:
                        self.quota.release(taken or NO_RETRY_INCREMENT)
                        return json.loads(response.data) if response.data else {}
                else:
                    parsed = _error_response(response)
                    code = parsed["Error"]["Code"] or None
            else:
                status = None
            throttling = self._is_throttling(operation, status, code)
            retry = attempt < self.max_attempts and (
                throttling or bad_checksum or self._is_transient(operation, status, code, error))
            if retry:
                cost = THROTTLING_RETRY_COST if throttling else RETRY_COST
                if self.quota.acquire(cost):
                    taken = cost
                    _sleep(self._delay(attempt, throttling, response))
                    attempt += 1
                    continue
                if parsed is not None:
                    parsed["ResponseMetadata"]["RetryQuotaReached"] = True
            if error is not None:
                raise error
            if parsed is None:  # a 2xx whose checksum stayed wrong: botocore returns it
                self.quota.release(taken or NO_RETRY_INCREMENT)
                return json.loads(response.data) if response.data else {}
            metadata = parsed["ResponseMetadata"]
            metadata["RetryAttempts"] = attempt - 1
            if attempt >= self.max_attempts:
                metadata["MaxAttemptsReached"] = True
            raise self.client.exceptions.from_code(code or "")(parsed, operation)

    def _is_throttling(self, operation, status, code):
        """botocore's ``ThrottlingErrorDetector``."""
        if code in THROTTLED_CODES:
            return True
        modeled = self._modeled[operation]
        if code is not None and code in modeled:
            trait = modeled[code]
            return bool(trait and trait.get("throttling"))
        return status == THROTTLING_STATUS

    def _is_transient(self, operation, status, code, error):
        """botocore's other retry conditions (throttling checked apart)."""
        if error is not None:
            return True  # ConnectionError or HTTPClientError: all transient
        if code in TRANSIENT_CODES or status in TRANSIENT_STATUSES:
            return True
        return code is not None and self._modeled[operation].get(code) is not None

    @staticmethod
    def _delay(attempt, throttling, response):
        """botocore's ``ExponentialBackoff.delay_amount``."""
        scale = THROTTLING_SCALE if throttling else TRANSIENT_SCALE
        delay = _random() * min(scale * 2 ** (attempt - 1), MAX_BACKOFF)
        header = response.headers.get(RETRY_AFTER_HEADER) if response is not None else None
        if header is not None:
            try:
                retry_after = int(header) / 1000.0
            except (ValueError, OverflowError):
                return delay
            if retry_after >= 0:
                return max(delay, min(retry_after, RETRY_AFTER_MAX_ADDITIONAL + delay))
        return delay

    # -- one attempt: sign, send -----------------------------------------------
    def _send(self, target, body):
        headers = self.signed_headers(target, body, time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()))
        url = self.endpoint_url
        try:
            return self.pool.urlopen("POST", "/", body=body, headers=headers, retries=_NO_RETRIES,
                                     redirect=False, assert_same_host=False,
                                     preload_content=True, decode_content=False)
        # the mapping of botocore.httpsession.URLLib3Session.send
        except URLLib3SSLError as exc:
            raise SSLError(endpoint_url=url, error=exc) from None
        except (NewConnectionError, socket.gaierror) as exc:
            raise EndpointConnectionError(endpoint_url=url, error=exc) from None
        except URLLib3ConnectTimeoutError as exc:
            raise ConnectTimeoutError(endpoint_url=url, error=exc) from None
        except URLLib3ReadTimeoutError as exc:
            raise ReadTimeoutError(endpoint_url=url, error=exc) from None
        except ProtocolError as exc:
            raise ConnectionClosedError(error=exc, request=None, endpoint_url=url) from None
        except Exception as exc:  # noqa: BLE001 - as botocore: any other failure to send
            raise HTTPClientError(error=exc) from None

    def _send_wire(self, target, body):
        headers = self.signed_headers(target, body, time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()))
        del headers["Host"]  # the pool writes it
        block = "".join([f"{name}: {value}\r\n" for name, value in headers.items()])
        url = self.endpoint_url
        try:
            return self.pool.request("POST", "/", body, block.encode("latin-1"))
        # as _send maps urllib3's failures
        except wire.ConnectFailed as exc:
            raise EndpointConnectionError(endpoint_url=url, error=exc) from None
        except wire.ConnectTimedOut as exc:
            raise ConnectTimeoutError(endpoint_url=url, error=exc) from None
        except wire.ReadTimedOut as exc:
            raise ReadTimeoutError(endpoint_url=url, error=exc) from None
        except wire.ConnectionLost as exc:
            raise ConnectionClosedError(error=exc, request=None, endpoint_url=url) from None

    def signed_headers(self, target, body, amz_date):
        """The request's headers, signed as ``botocore.auth.SigV4Auth`` signs
        them (same canonical request, same signed headers), with the signing
        key derived once per day and secret instead of per request."""
        credentials = self.credentials.get_frozen_credentials()
        token = credentials.token
        date = amz_date[:8]
        if self._key_for != (credentials.secret_key, date):
            key = _hmac(f"AWS4{credentials.secret_key}".encode(), date)
            for part in (self.region, SIGNING_NAME, "aws4_request"):
                key = _hmac(key, part)
            self._key, self._key_for = key, (credentials.secret_key, date)
        host = self._host
        if token:
            signed = SIGNED_HEADERS_WITH_TOKEN
            canonical_headers = (f"content-type:{CONTENT_TYPE}\nhost:{host}\n"
                                 f"x-amz-date:{amz_date}\n"
                                 f"x-amz-security-token:{' '.join(token.split())}\n"
                                 f"x-amz-target:{target}\n")
        else:
            signed = SIGNED_HEADERS
            canonical_headers = (f"content-type:{CONTENT_TYPE}\nhost:{host}\n"
                                 f"x-amz-date:{amz_date}\nx-amz-target:{target}\n")
        canonical = (f"POST\n/\n\n{canonical_headers}\n{signed}\n"
                     f"{hashlib.sha256(body).hexdigest()}")
        scope = date + self._scope_tail
        to_sign = (f"AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n"
                   f"{hashlib.sha256(canonical.encode()).hexdigest()}")
        signature = hmac.new(self._key, to_sign.encode(), hashlib.sha256).hexdigest()
        headers = {
            "Host": host,
            "X-Amz-Target": target,
            "Content-Type": CONTENT_TYPE,
            "User-Agent": USER_AGENT,
            "X-Amz-Date": amz_date,
            "Authorization": (f"AWS4-HMAC-SHA256 Credential={credentials.access_key}/{scope}, "
                              f"SignedHeaders={signed}, Signature={signature}"),
        }
        if token:
            headers["X-Amz-Security-Token"] = token
        return headers


def _hmac(key, message):
    return hmac.new(key, message.encode(), hashlib.sha256).digest()


def _bad_checksum(response):
    """botocore's ``RetryDDBChecksumError``: the body does not match ``x-amz-crc32``."""
    expected = response.headers.get("x-amz-crc32")
    if expected is None:
        return False
    try:
        return crc32(response.data) & 0xFFFFFFFF != int(expected)
    except ValueError:
        return False


def _error_response(response):
    """A 3xx-5xx answer as botocore's JSON parser shapes it for ClientError."""
    status, data, headers = response.status, response.data, response.headers
    metadata = {"HTTPStatusCode": status,
                "HTTPHeaders": {name.lower(): value for name, value in headers.items()}}
    request_id = headers.get("x-amzn-requestid")
    if request_id is not None:
        metadata["RequestId"] = request_id
    stripped = (data or b"").strip()
    if status >= 500 and (not stripped or stripped.startswith(b"<html>")):
        import http.client

        return {"Error": {"Code": str(status), "Message": http.client.responses.get(status, "")},
                "ResponseMetadata": metadata}
    try:
        body = json.loads(data.decode("utf-8")) if data else {}
    except ValueError:
        body = {"message": data.decode("utf-8", "replace")}
    if not isinstance(body, dict):
        body = {}
    code = body.get("__type", str(status))
    if ":" in code:
        code = code.split(":", 1)[0]
    if "#" in code:
        code = code.rsplit("#", 1)[1]
    return {"Error": {"Code": code, "Message": body.get("message", body.get("Message", ""))},
            "ResponseMetadata": metadata}
