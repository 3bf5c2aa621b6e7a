"""The boto3 DynamoDB client, attribute (de)serialisation, error types and
table creation (PROTOCOL.md 6.1, 6.5).

The low-level client is used directly (not the resource layer): it is lighter
per call, and these few helpers are all the type mapping the schema needs.
boto3 must be imported only after gevent's monkey patching, so nothing here
imports it at module level.
"""
import logging
import os
import time

import gevent
from gevent.lock import BoundedSemaphore

log = logging.getLogger(__name__)

THROUGHPUT_CODES = frozenset({
    "ProvisionedThroughputExceededException",
    "ThrottlingException",
    "RequestLimitExceeded",
})
CONDITION_FAILED = "ConditionalCheckFailedException"


class StorageError(Exception):
    """A DynamoDB call failed for a reason other than throughput."""

    def __init__(self, message, code=None):
        super().__init__(message)
        self.code = code


class ThroughputError(StorageError):
    """DynamoDB refused the call for lack of capacity (6.1): callers apply the
    overload rules instead of treating it as a failure."""


class StorageUnavailable(StorageError):
    """The store could not be reached or did not answer in time, retries
    included (connect or read timeout, connection refused or closed): a
    congested or absent store, not a refused call. A hello answers it as an
    overload (issue 16: in a connect storm against one store process these
    are what overload looks like)."""


class ConditionFailed(StorageError):
    """A ConditionExpression did not hold."""


def make_client(settings, max_attempts=3, connect_timeout=5, read_timeout=10, pool=None):
    """One client per process; its pool is sized to the process's concurrency."""
    import boto3
    from botocore.config import Config

    from connnode.onewrite import use_one_write

    config = Config(
        max_pool_connections=pool or settings.ddb_max_pool_connections,
        retries={"mode": "standard", "max_attempts": max_attempts},
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
    )
    kwargs = {"region_name": settings.aws_region, "config": config}
    if settings.aws_ddb_endpoint:
        kwargs["endpoint_url"] = settings.aws_ddb_endpoint
        # A local stand-in accepts any signature; don't demand real credentials.
        if not os.environ.get("AWS_ACCESS_KEY_ID"):
            kwargs["aws_access_key_id"] = "connnode"
            kwargs["aws_secret_access_key"] = "connnode"
    return use_one_write(boto3.session.Session().client("dynamodb", **kwargs))


def _outcome(function, args):
    try:
        return True, function(*args)
    except Exception as exc:  # noqa: BLE001 - handed back to the caller
        return False, exc


def call_on_own_greenlet(function, *args):
    """``function(*args)`` on a short-lived greenlet of its own; its result,
    or its exception raised here. If the caller is interrupted (killed, a
    Timeout) while it waits, the call is killed too."""
    helper = gevent.spawn(_outcome, function, args)
    try:
        ok, value = helper.get()
    finally:
        if not helper.dead:
            helper.kill()
    if ok:
        return value
    try:
        raise value
    finally:
        value = None  # no cycle: exception -> traceback -> this frame


class Dynamo:
    """Thin wrapper that turns botocore exceptions into our three types.

    ``own_greenlet``: run each botocore call on a short-lived greenlet of its
    own, for memory. Every greenlet has its own stack of Python frames, and
    the pages it touches stay resident for as long as the greenlet lives.
    botocore's call stack is deep; made from a WebSocket connection's
    greenlet (hello, register), which then idles for hours, it would keep
    those pages (~5 KB measured) for every idle client. A short-lived
    greenlet's stack is freed when it ends. Costs ~13 us per call.
    """

    def __init__(self, client, own_greenlet=False, call_timeout=0.0, concurrency=0, lean=False,
                 wire=True):
        from botocore import exceptions  # after gevent's patching, as boto3 itself

        #: botocore's exception classes, looked up once, not per call
        self._botocore_errors = exceptions
        self.client = client
        #: ``lean``: True (or a ``LeanClient``) sends the hot item operations
        #: (``lean.OPERATIONS``) over connnode/db/lean.py's lean request path;
        #: boto3 keeps every other operation, and all of them when the
        #: client's set-up is one the lean path does not cover. ``wire``: its
        #: plain-HTTP calls go over connnode/wire.py (else urllib3).
        self.lean = None
        self._lean_calls = {}
        if lean:
            self._use_lean(lean, wire)
        self.own_greenlet = own_greenlet
        #: Seconds a call may take, its wait for a turn and botocore's
        #: retries included (0: botocore's own timeouts only, which add up
        #: to ~28 s against a hung store).
        self.call_timeout = call_timeout
        #: Calls in flight at once (0: unbounded). Set to the size of
        #: botocore's connection pool, a burst of calls waits for a pooled
        #: connection instead of opening extra ones that urllib3 throws away
        #: after one use ("Connection pool is full, discarding connection").
        self._turns = BoundedSemaphore(concurrency) if concurrency else None

    def _use_lean(self, lean, wire=True):
        from connnode.db.lean import OPERATIONS, LeanClient, LeanUnavailable

        if not isinstance(lean, LeanClient):
            try:
                lean = LeanClient(self.client, wire=wire)
            except LeanUnavailable as exc:
                log.warning("DynamoDB calls stay on boto3: %s", exc)
                return
        self.lean = lean
        self._lean_calls = {name: getattr(lean, name) for name in OPERATIONS}

    def call(self, operation, **kwargs):
        if not self.call_timeout:
            return self._take_turn(operation, kwargs)
        deadline = gevent.Timeout(self.call_timeout)
        deadline.start()
        try:
            return self._take_turn(operation, kwargs)
        except gevent.Timeout as exc:
            if exc is not deadline:
                raise
            raise StorageError(f"{operation}: no answer within {self.call_timeout:g} s") from None
        finally:
            deadline.close()

    def _take_turn(self, operation, kwargs):
        turns = self._turns
        if turns is None:
            return self._call_here_or_own(operation, kwargs)
        with turns:
            return self._call_here_or_own(operation, kwargs)

    def _call_here_or_own(self, operation, kwargs):
        if self.own_greenlet:
            return call_on_own_greenlet(self._call, operation, kwargs)
        return self._call(operation, kwargs)

    def _call(self, operation, kwargs):
        errors = self._botocore_errors
        try:
            method = self._lean_calls.get(operation) or getattr(self.client, operation)
            return method(**kwargs)
        except errors.ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in THROUGHPUT_CODES:
                raise ThroughputError(f"{operation}: {code}", code) from None
            if code == CONDITION_FAILED:
                raise ConditionFailed(f"{operation}: condition failed", code) from None
            raise StorageError(f"{operation}: {code}: {exc}", code) from None
        except (errors.ConnectionError, errors.HTTPClientError) as exc:  # transport failures
            raise StorageUnavailable(f"{operation}: {exc}") from None
        except errors.BotoCoreError as exc:
            raise StorageError(f"{operation}: {exc}") from None

    # -- tables (6.5) --------------------------------------------------------
    def table_status(self, name):
        """The table's status string, or None when it does not exist."""
        try:
            return self.call("describe_table", TableName=name)["Table"]["TableStatus"]
        except StorageError as exc:
            if exc.code == "ResourceNotFoundException":
                return None
            raise

    def ensure_table(self, name, definition, timeout=60.0):
        """Create the table if missing, wait until ACTIVE, enable TTL on ``expiry``."""
        status = self.table_status(name)
        if status is None:
            try:
                self.call("create_table", TableName=name, **definition)
                log.info("created table %s", name)
            except StorageError as exc:
                if exc.code != "ResourceInUseException":  # another process won the race
                    raise
            self._enable_ttl(name)
        deadline = time.monotonic() + timeout
        while status != "ACTIVE":
            if time.monotonic() > deadline:
                raise StorageError(f"table {name} not ACTIVE after {timeout} s")
            time.sleep(0.05 if status is None else 0.5)
            status = self.table_status(name)

    def _enable_ttl(self, name):
        try:
            self.call("update_time_to_live", TableName=name,
                      TimeToLiveSpecification={"Enabled": True, "AttributeName": "expiry"})
        except StorageError as exc:
            if exc.code == "UnknownOperationException":
                return  # dynalite has no TTL API
            if exc.code == "ValidationException" and "already enabled" in str(exc).lower():
                return
            raise


def router_table_definition(read, write):
    throughput = {"ReadCapacityUnits": read, "WriteCapacityUnits": write}
    return {
        "KeySchema": [{"AttributeName": "uaid", "KeyType": "HASH"}],
        "AttributeDefinitions": [
            {"AttributeName": "uaid", "AttributeType": "S"},
            {"AttributeName": "last_connect", "AttributeType": "N"},
        ],
        "ProvisionedThroughput": throughput,
        "GlobalSecondaryIndexes": [{
            "IndexName": "AccessIndex",
            "KeySchema": [{"AttributeName": "last_connect", "KeyType": "HASH"}],
            "Projection": {"ProjectionType": "KEYS_ONLY"},
            "ProvisionedThroughput": throughput,
        }],
    }


def message_table_definition(read, write):
    return {
        "KeySchema": [
            {"AttributeName": "uaid", "KeyType": "HASH"},
            {"AttributeName": "chidmessageid", "KeyType": "RANGE"},
        ],
        "AttributeDefinitions": [
            {"AttributeName": "uaid", "AttributeType": "S"},
            {"AttributeName": "chidmessageid", "AttributeType": "S"},
        ],
        "ProvisionedThroughput": {"ReadCapacityUnits": read, "WriteCapacityUnits": write},
    }


# -- attribute values -------------------------------------------------------
def to_attr(value):
    if isinstance(value, str):
        return {"S": value}
    if isinstance(value, bool):
        return {"BOOL": value}
    if isinstance(value, int):
        return {"N": str(value)}
    if isinstance(value, (set, frozenset)):
        return {"SS": sorted(value)}
    if isinstance(value, dict):
        return {"M": {key: to_attr(item) for key, item in value.items()}}
    raise TypeError(f"cannot store {type(value).__name__}")


def from_attr(attr):
    (kind, value), = attr.items()
    if kind == "S":
        return value
    if kind == "N":
        return int(value) if value.lstrip("-").isdigit() else int(float(value))
    if kind == "SS":
        return set(value)
    if kind == "M":
        return {key: from_attr(item) for key, item in value.items()}
    if kind == "BOOL":
        return value
    if kind == "NULL":
        return None
    if kind == "L":
        return [from_attr(item) for item in value]
    raise TypeError(f"unexpected attribute type {kind}")


def to_item(record):
    return {key: to_attr(value) for key, value in record.items()}


def from_item(item):
    return {key: from_attr(value) for key, value in item.items()}


def attr_names(*names):
    """ExpressionAttributeNames for ``#name`` placeholders. Every expression
    in this package names attributes only through these, so reserved words
    (ttl, data, timestamp) are always safe (6.1)."""
    return {f"#{name}": name for name in names}
