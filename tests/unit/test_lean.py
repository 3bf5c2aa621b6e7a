"""The lean DynamoDB request path (connnode/db/lean.py) against a small local
server that records each request and answers canned JSON: the request and
its SigV4 signature are botocore's, answers and errors come back as boto3's,
retries follow botocore's standard mode, and Dynamo.call maps the outcome to
the same three error types as on the boto3 path."""
import datetime
import functools
import json
import re
import socket
from binascii import crc32

import botocore.auth
import gevent
import pytest
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError, EndpointConnectionError
from botocore.httpsession import get_cert_path
from botocore.retries.standard import ExponentialBackoff
from gevent import pywsgi
from urllib3.connectionpool import HTTPSConnectionPool

from connnode.db import lean
from connnode.db.dynamo import (ConditionFailed, Dynamo, StorageError, StorageUnavailable,
                                ThroughputError, make_client)
from connnode.db.lean import OPERATIONS, LeanClient
from connnode.onewrite import OneWriteMixin
from connnode.settings import Settings

PREFIX = "com.amazonaws.dynamodb.v20120810#"
THROTTLED = (400, {"__type": PREFIX + "ProvisionedThroughputExceededException",
                   "message": "The level of configured provisioned throughput was exceeded"})
CONDITION = (400, {"__type": PREFIX + "ConditionalCheckFailedException",
                   "message": "The conditional request failed"})
INTERNAL = (500, {"__type": PREFIX + "InternalServerError", "message": "Internal error"})
KEY = {"uaid": {"S": "abc"}}


class FakeDynamo:
    """Records requests (method, path, lower-case headers, body); answers
    from ``script`` (status, JSON body[, extra headers]) in turn, then 200 {}."""

    def __init__(self):
        self.requests = []
        self.script = []
        self.hang_next = 0  # seconds the next request waits before its answer

    def __call__(self, environ, start_response):
        headers = {name[5:].lower().replace("_", "-"): value
                   for name, value in environ.items() if name.startswith("HTTP_")}
        headers["content-type"] = environ.get("CONTENT_TYPE", "")
        self.requests.append({"method": environ["REQUEST_METHOD"], "path": environ["PATH_INFO"],
                              "headers": headers, "body": environ["wsgi.input"].read()})
        if self.hang_next:
            seconds, self.hang_next = self.hang_next, 0
            gevent.sleep(seconds)
        status, answer, *extra = self.script.pop(0) if self.script else (200, {})
        data = json.dumps(answer).encode()
        reply = [("Content-Type", "application/x-amz-json-1.0"),
                 ("x-amzn-RequestId", f"req-{len(self.requests)}"),
                 ("x-amz-crc32", str(crc32(data) & 0xFFFFFFFF))]
        reply = [(name, value) for name, value in reply
                 if not extra or name.lower() not in {n.lower() for n, _ in extra[0]}]
        start_response(f"{status} Whatever", reply + (extra[0] if extra else []))
        return [data]

    @property
    def targets(self):
        return [request["headers"]["x-amz-target"] for request in self.requests]


@pytest.fixture
def server():
    app = FakeDynamo()
    srv = pywsgi.WSGIServer(("127.0.0.1", 0), app, log=None)
    srv.start()
    app.url = f"http://127.0.0.1:{srv.server_port}"
    yield app
    srv.stop(timeout=1)


@pytest.fixture(autouse=True)
def quiet_environment(monkeypatch):
    """No credentials, proxies or instance metadata from the box running the tests."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                 "HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "AWS_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture(autouse=True, params=[True, False], ids=["wire", "urllib3"])
def transport(request, monkeypatch):
    """Every test runs over both of the lean client's plain-HTTP transports
    (connnode/wire.py and urllib3): ``LeanClient(...)`` gets ``wire=`` this."""
    original = LeanClient.__init__
    monkeypatch.setattr(LeanClient, "__init__", functools.partialmethod(original,
                                                                        wire=request.param))
    return request.param


@pytest.fixture
def sleeps(monkeypatch):
    """The lean path's backoff sleeps, recorded instead of slept; the jitter
    factor is 1 (the longest wait botocore could pick)."""
    slept = []
    monkeypatch.setattr(lean, "_sleep", slept.append)
    monkeypatch.setattr(lean, "_random", lambda: 1.0)
    return slept


@pytest.fixture
def boto3_no_backoff(monkeypatch):
    monkeypatch.setattr(ExponentialBackoff, "delay_amount", lambda self, context: 0.0)


def settings(**overrides):
    return Settings(statsd_host="", hostname="127.0.0.1", **overrides)


def boto3_client(url, **kwargs):
    return make_client(settings(aws_ddb_endpoint=url), **kwargs)


def lean_dynamo(url):
    dynamo = Dynamo(boto3_client(url), lean=True)
    assert dynamo.lean is not None
    return dynamo


# -- the request -----------------------------------------------------------------

def test_request_is_a_signed_json_post(server):
    server.script = [(200, {"Item": {"uaid": {"S": "abc"}, "n": {"N": "5"}}})]
    result = lean_dynamo(server.url).call("get_item", TableName="router", Key=KEY,
                                          ConsistentRead=True)
    assert result == {"Item": {"uaid": {"S": "abc"}, "n": {"N": "5"}}}
    (request,) = server.requests
    headers = request["headers"]
    assert request["method"] == "POST" and request["path"] == "/"
    assert headers["x-amz-target"] == "DynamoDB_20120810.GetItem"
    assert headers["content-type"] == "application/x-amz-json-1.0"
    assert headers["host"] == server.url.split("//")[1]
    assert re.fullmatch(r"\d{8}T\d{6}Z", headers["x-amz-date"])
    assert headers["authorization"].startswith(
        f"AWS4-HMAC-SHA256 Credential=connnode/{headers['x-amz-date'][:8]}/us-east-1/dynamodb/"
        "aws4_request, SignedHeaders=content-type;host;x-amz-date;x-amz-target, Signature=")
    assert request["body"] == (b'{"TableName":"router","Key":{"uaid":{"S":"abc"}},'
                               b'"ConsistentRead":true}')


def botocore_signed(recorded, url, credentials, region):
    """The headers botocore's SigV4Auth gives the recorded request, signed at
    the recorded time."""
    headers = recorded["headers"]
    request = AWSRequest(method="POST", url=url + "/", data=recorded["body"],
                         headers={"X-Amz-Target": headers["x-amz-target"],
                                  "Content-Type": headers["content-type"]})
    moment = datetime.datetime.strptime(headers["x-amz-date"], "%Y%m%dT%H%M%SZ")
    real = botocore.auth.get_current_datetime
    botocore.auth.get_current_datetime = lambda *args, **kwargs: moment
    try:
        botocore.auth.SigV4Auth(credentials, "dynamodb", region).add_auth(request)
    finally:
        botocore.auth.get_current_datetime = real
    return request.headers


@pytest.mark.parametrize("token", [None, "FwoGZXIvYXdzE  token/with+odd=chars"])
def test_signature_is_botocores(server, token):
    credentials = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", token)
    client = make_client(settings(aws_ddb_endpoint=server.url, aws_region="eu-west-3"))
    lean_client = LeanClient(client, credentials=credentials)
    item = {"uaid": {"S": "u"}, "chids": {"SS": ["a", "b"]}, "data": {"S": "é\u2603"}}
    lean_client.put_item(TableName="message_2026_05", Item=item)
    lean_client.put_item(TableName="message_2026_05", Item=item)  # the cached signing key
    lean_client.get_item(TableName="router", Key=KEY, ConsistentRead=True)
    assert len(server.requests) == 3
    for recorded in server.requests:
        expected = botocore_signed(recorded, server.url, credentials, "eu-west-3")
        assert recorded["headers"]["authorization"] == expected["Authorization"]
        assert recorded["headers"].get("x-amz-security-token") == token
        assert expected.get("X-Amz-Security-Token") == token


def test_signing_key_follows_refreshed_credentials(server):
    class Rotating:
        def __init__(self):
            self.secrets = iter(["first-secret", "second-secret"])

        def get_frozen_credentials(self):
            return Credentials("AKID", next(self.secrets)).get_frozen_credentials()

    lean_client = LeanClient(boto3_client(server.url), credentials=Rotating())
    lean_client.get_item(TableName="t", Key=KEY)
    lean_client.get_item(TableName="t", Key=KEY)
    assert len(server.requests) == 2
    for recorded, secret in zip(server.requests, ["first-secret", "second-secret"]):
        expected = botocore_signed(recorded, server.url, Credentials("AKID", secret), "us-east-1")
        assert recorded["headers"]["authorization"] == expected["Authorization"]


def test_the_boto3_clients_own_credentials_are_used(server):
    client = boto3_client(server.url)
    assert LeanClient(client).credentials is client._request_signer._credentials


# -- the answers: boto3's ------------------------------------------------------------

ANSWERS = {
    "get_item": (dict(TableName="t", Key=KEY, ConsistentRead=True),
                 {"Item": {"uaid": {"S": "abc"}, "chids": {"SS": ["x", "y"]},
                           "m": {"M": {"k": {"BOOL": True}, "n": {"NULL": True}}}}}),
    "batch_get_item": (dict(RequestItems={"r": {"Keys": [KEY], "ConsistentRead": True}}),
                       {"Responses": {"r": [{"uaid": {"S": "abc"}}]},
                        "UnprocessedKeys": {"m": {"Keys": [KEY], "ConsistentRead": True}}}),
    "put_item": (dict(TableName="t", Item={"uaid": {"S": "abc"}}), {}),
    "update_item": (dict(TableName="t", Key=KEY, UpdateExpression="SET #a = :a",
                         ExpressionAttributeNames={"#a": "a"},
                         ExpressionAttributeValues={":a": {"N": "1"}}, ReturnValues="ALL_OLD"),
                    {"Attributes": {"a": {"N": "0"}, "l": {"L": [{"S": "x"}]}}}),
    "query": (dict(TableName="t", KeyConditionExpression="#u = :u", Limit=10,
                   ExpressionAttributeNames={"#u": "uaid"},
                   ExpressionAttributeValues={":u": {"S": "abc"}}, ConsistentRead=True),
              {"Items": [{"uaid": {"S": "abc"}}], "Count": 1, "ScannedCount": 1,
               "LastEvaluatedKey": KEY}),
    "delete_item": (dict(TableName="t", Key=KEY), {}),
    "batch_write_item": (dict(RequestItems={"t": [{"DeleteRequest": {"Key": KEY}}]}),
                         {"UnprocessedItems": {"t": [{"DeleteRequest": {"Key": KEY}}]}}),
}


@pytest.mark.parametrize("operation", sorted(OPERATIONS))
def test_answers_are_boto3s(server, operation):
    kwargs, answer = ANSWERS[operation]
    client = boto3_client(server.url)
    server.script = [(200, answer), (200, answer)]
    from_boto3 = getattr(client, operation)(**kwargs)
    from_lean = getattr(LeanClient(client), operation)(**kwargs)
    from_boto3.pop("ResponseMetadata")
    assert from_lean == from_boto3 == answer
    boto3_request, lean_request = server.requests
    assert lean_request["headers"]["x-amz-target"] == boto3_request["headers"]["x-amz-target"] \
        == f"DynamoDB_20120810.{OPERATIONS[operation]}"
    assert json.loads(lean_request["body"]) == json.loads(boto3_request["body"]) == kwargs


@pytest.mark.parametrize("status, answer", [
    (400, {"__type": PREFIX + "ValidationException", "message": "One or more parameter values"}),
    (400, {"__type": PREFIX + "ResourceNotFoundException", "Message": "Requested resource"}),
    (413, {}),
    (400, {"__type": "UnrecognizedClientException:http://internal.amazon.com/coral/",
           "message": "bad token"}),
])
def test_errors_are_boto3s(server, status, answer):
    client = boto3_client(server.url)
    errors = []
    for call in (client.get_item, LeanClient(client).get_item):
        server.script = [(status, answer)]
        with pytest.raises(ClientError) as info:
            call(TableName="t", Key=KEY)
        errors.append(info.value)
    from_boto3, from_lean = errors
    assert type(from_lean) is type(from_boto3)
    assert str(from_lean) == str(from_boto3)
    assert from_lean.response["Error"] == from_boto3.response["Error"]
    boto3_metadata, lean_metadata = (error.response["ResponseMetadata"] for error in errors)
    for name in ("HTTPStatusCode", "RetryAttempts"):
        assert lean_metadata[name] == boto3_metadata[name]
    assert (boto3_metadata["RequestId"], lean_metadata["RequestId"]) == ("req-1", "req-2")


# -- retries, and what Dynamo.call makes of the outcome ------------------------------

def test_throttling_is_retried_with_botocores_backoff(server, sleeps):
    server.script = [THROTTLED, THROTTLED, THROTTLED, (200, {"Item": KEY})]
    assert lean_dynamo(server.url).call("get_item", TableName="t", Key=KEY) == {"Item": KEY}
    assert len(server.requests) == 4
    assert sleeps == [1.0, 2.0, 4.0]  # rand * min(1 s * 2 ** i, 20 s), rand = 1


def test_throttling_on_every_attempt_is_a_throughput_error(server, sleeps):
    server.script = [THROTTLED] * 5
    with pytest.raises(ThroughputError) as info:
        lean_dynamo(server.url).call("put_item", TableName="t", Item=KEY)
    assert info.value.code == "ProvisionedThroughputExceededException"
    assert len(server.requests) == 4 and len(sleeps) == 3


def test_boto3_makes_as_many_attempts(server, boto3_no_backoff):
    """The policy matched: the boto3 client (retries={"mode": "standard",
    "max_attempts": 3}) makes 4 attempts in all, as the lean client does."""
    server.script = [THROTTLED] * 5
    with pytest.raises(ThroughputError):
        Dynamo(boto3_client(server.url)).call("put_item", TableName="t", Item=KEY)
    assert len(server.requests) == 4
    assert LeanClient(boto3_client(server.url)).max_attempts == 4


def test_a_failed_condition_is_not_retried(server, sleeps):
    server.script = [CONDITION]
    with pytest.raises(ConditionFailed):
        lean_dynamo(server.url).call("put_item", TableName="t", Item=KEY,
                                     ConditionExpression="attribute_not_exists(uaid)")
    assert len(server.requests) == 1 and sleeps == []


def test_other_client_errors_are_storage_errors_without_retry(server, sleeps):
    server.script = [(400, {"__type": PREFIX + "ValidationException", "message": "nope"})]
    with pytest.raises(StorageError) as info:
        lean_dynamo(server.url).call("query", TableName="t")
    assert type(info.value) is StorageError and info.value.code == "ValidationException"
    assert "nope" in str(info.value) and len(server.requests) == 1 and sleeps == []


def test_a_500_is_retried(server, sleeps):
    server.script = [INTERNAL, (503, {}), (200, {"Attributes": KEY})]
    assert lean_dynamo(server.url).call("update_item", TableName="t", Key=KEY,
                                        UpdateExpression="SET a = :a") == {"Attributes": KEY}
    assert len(server.requests) == 3
    assert sleeps == [0.025, 0.05]  # DynamoDB's non-throttling base: 25 ms


def test_500s_on_every_attempt_are_a_storage_error(server, sleeps):
    server.script = [INTERNAL] * 4
    with pytest.raises(StorageError) as info:
        lean_dynamo(server.url).call("delete_item", TableName="t", Key=KEY)
    assert type(info.value) is StorageError and info.value.code == "InternalServerError"
    assert "reached max retries: 3" in str(info.value) and len(server.requests) == 4


def test_an_unmodelled_429_counts_as_throttling(server, sleeps):
    server.script = [(429, {}), (200, {})]
    lean_dynamo(server.url).call("delete_item", TableName="t", Key=KEY)
    assert len(server.requests) == 2 and sleeps == [1.0]


def test_retry_after_header_raises_the_delay(server, sleeps, monkeypatch):
    monkeypatch.setattr(lean, "_random", lambda: 0.0)
    server.script = [THROTTLED + ([("x-amz-retry-after", "3000")],), (200, {})]
    lean_dynamo(server.url).call("put_item", TableName="t", Item=KEY)
    assert sleeps == [3.0]


def test_a_bad_checksum_is_retried(server, sleeps):
    server.script = [(200, {"Item": {"a": {"S": "torn"}}}, [("x-amz-crc32", "12345")]),
                     (200, {"Item": KEY})]
    assert lean_dynamo(server.url).call("get_item", TableName="t", Key=KEY) == {"Item": KEY}
    assert len(server.requests) == 2


def test_an_empty_retry_quota_stops_retries(server, sleeps):
    dynamo = lean_dynamo(server.url)
    dynamo.lean.quota.available = 4  # a throttling retry costs 5
    server.script = [THROTTLED, (200, {})]
    with pytest.raises(ThroughputError):
        dynamo.call("put_item", TableName="t", Item=KEY)
    assert len(server.requests) == 1 and sleeps == []
    dynamo.call("put_item", TableName="t", Item=KEY)
    assert dynamo.lean.quota.available == 5  # a success gives 1 back


def test_a_refused_connection_is_storage_unavailable_after_retries(sleeps):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    dynamo = lean_dynamo(f"http://127.0.0.1:{port}")
    with pytest.raises(StorageError) as info:
        dynamo.call("get_item", TableName="t", Key=KEY)
    assert type(info.value) is StorageUnavailable and "Could not connect" in str(info.value)
    assert sleeps == [0.025, 0.05, 0.1]
    with pytest.raises(EndpointConnectionError):
        dynamo.lean.get_item(TableName="t", Key=KEY)


def test_call_timeout_cuts_a_hung_call_and_the_pool_stays_usable(server):
    server.hang_next = 5
    dynamo = Dynamo(boto3_client(server.url), call_timeout=0.2, lean=True)
    with pytest.raises(StorageError, match="no answer within 0.2 s"):
        dynamo.call("get_item", TableName="t", Key=KEY)
    server.script = [(200, {"Item": KEY})]
    assert dynamo.call("get_item", TableName="t", Key=KEY) == {"Item": KEY}


# -- which path, which pool ---------------------------------------------------------

def test_only_the_hot_operations_take_the_lean_path(server):
    dynamo = lean_dynamo(server.url)
    server.script = [(200, {"Table": {"TableStatus": "ACTIVE"}}), (200, {})]
    assert dynamo.table_status("t") == "ACTIVE"
    dynamo.call("batch_write_item", RequestItems={"t": [{"DeleteRequest": {"Key": KEY}}]})
    boto3_request, lean_request = server.requests
    assert boto3_request["headers"]["x-amz-target"] == "DynamoDB_20120810.DescribeTable"
    assert "Boto3/" in boto3_request["headers"]["user-agent"]
    assert lean_request["headers"]["user-agent"].startswith("connnode-lean")
    assert set(dynamo._lean_calls) == set(OPERATIONS)


def test_lean_off_sends_everything_through_boto3(server):
    dynamo = Dynamo(boto3_client(server.url))
    dynamo.call("get_item", TableName="t", Key=KEY)
    assert dynamo.lean is None and "Boto3/" in server.requests[0]["headers"]["user-agent"]


@pytest.mark.parametrize("endpoint, host, port", [
    (None, "dynamodb.us-east-1.amazonaws.com", 443),
    ("https://ddb.example.test:8443", "ddb.example.test", 8443),
])
def test_https_endpoints_get_a_verified_pool(monkeypatch, endpoint, host, port):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKID")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    client = make_client(settings(aws_ddb_endpoint=endpoint))
    lean_client = LeanClient(client)
    pool = lean_client.pool
    assert isinstance(pool, HTTPSConnectionPool)
    assert issubclass(pool.ConnectionCls, OneWriteMixin)
    assert (pool.host, pool.port) == (host, port)
    # the boto3 client's CA bundle (botocore's own, or AWS_CA_BUNDLE's)
    bundle = get_cert_path(client._endpoint.http_session._verify)
    assert pool.cert_reqs == "CERT_REQUIRED" and pool.ca_certs == bundle and bundle
    assert pool.pool.maxsize == settings().ddb_max_pool_connections
    assert (pool.timeout.connect_timeout, pool.timeout.read_timeout) == (5, 10)
    headers = lean_client.signed_headers("DynamoDB_20120810.GetItem", b"{}", "20260501T000000Z")
    assert headers["Host"] == (host if port == 443 else f"{host}:{port}")


def test_a_proxy_keeps_every_call_on_boto3(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKID")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example.test:3128")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    assert Dynamo(make_client(settings()), lean=True).lean is None
