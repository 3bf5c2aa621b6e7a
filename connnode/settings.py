"""One Settings object for every option of PROTOCOL.md section 9.

Values come from three layers, later ones winning: the defaults below, an ini
file (section ``[connnode]``; its path from ``CONNNODE_CONFIG``), and the
environment as ``CONNNODE_<NAME>``. A malformed value stops start-up with a
``SettingsError`` that names the option and the bad value, so an operator sees
the typo instead of a node running with a surprise.
"""
import configparser
import ipaddress
import math
import os
import re
import socket
from urllib.parse import urlsplit

ENV_PREFIX = "CONNNODE_"
CONFIG_ENV = "CONNNODE_CONFIG"
INI_SECTION = "connnode"


class SettingsError(ValueError):
    """A configuration value that cannot be used."""


def _parse_bool(text):
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true/false")


def _non_negative(kind):
    def parse(text):
        value = kind(text.strip())
        if not math.isfinite(value):
            raise ValueError("must be a finite number")
        if value < 0:
            raise ValueError("must not be negative")
        return value
    return parse


def _port(text):
    value = int(text.strip())
    if not 0 < value < 65536:
        raise ValueError("not a TCP port")
    return value


def _url(text):
    text = text.strip().rstrip("/")
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("expected an http(s) URL")
    parts.port  # raises ValueError for a malformed port
    return text


def _str(text):
    return text.strip()


_BROADCASTER_NAME = re.compile(r"[A-Za-z0-9_.-]{1,100}")


def _broadcaster_tokens(text):
    """``name=TOKEN,other=TOKEN2`` -> {name: token}; empty -> {}."""
    tokens = {}
    for entry in text.split(","):
        entry = entry.strip()
        if not entry:
            continue
        name, sep, token = entry.partition("=")
        name, token = name.strip(), token.strip()
        if not sep or not name or not token:
            raise ValueError(f"entry {name!r}: expected name=TOKEN")
        if not _BROADCASTER_NAME.fullmatch(name):
            raise ValueError(f"entry {name!r}: a broadcaster name is 1-100 of [A-Za-z0-9_.-]")
        if name in tokens:
            raise ValueError(f"broadcaster {name!r} named twice")
        tokens[name] = token
    return tokens


def _trusted_proxies(text):
    """``127.0.0.1, 10.0.0.0/8, ::1`` -> ("127.0.0.1/32", "10.0.0.0/8", "::1/128")."""
    networks = []
    for entry in text.split(","):
        entry = entry.strip()
        if entry:
            try:
                networks.append(str(ipaddress.ip_network(entry, strict=False)))
            except ValueError:
                raise ValueError(f"{entry!r} is not an IP address or network") from None
    return tuple(networks)


def _tracking_keys(text):
    from connnode.lifecycle import parse_tracking_keys
    return parse_tracking_keys(text)


def _at_least_one(kind):
    def parse(text):
        value = kind(text.strip())
        if not math.isfinite(value) or value < 1:
            raise ValueError("must be a number >= 1")
        return value
    return parse


_count = _non_negative(int)
_seconds = _non_negative(float)
_rate = _non_negative(float)

# name -> (parser, default). A default of None means "unset"; derived
# defaults (hostname-based URLs) are filled in by Settings.__init__.
OPTIONS = {
    # 9.1 shared
    "crypto_key": (_str, None),
    "key_hash": (_str, ""),
    "router_tablename": (_str, "router"),
    "message_tablename": (_str, "message"),
    "router_read_throughput": (_count, 5),
    "router_write_throughput": (_count, 5),
    "message_read_throughput": (_count, 5),
    "message_write_throughput": (_count, 5),
    "aws_ddb_endpoint": (_url, None),
    "data_dir": (_str, "./var"),
    "embedded_ddb_port": (_port, 4567),
    "aws_region": (_str, "us-east-1"),
    "max_ttl": (_count, 2592000),
    "endpoint_url": (_url, None),
    "hostname": (_str, None),
    "env": (_str, "development"),
    "statsd_host": (_str, "localhost"),
    "statsd_port": (_port, 8125),
    "statsd_prefix": (_str, ""),
    "router_connect_timeout": (_seconds, 0.5),
    "router_request_timeout": (_seconds, 3.0),
    "table_rotation_interval": (_seconds, 60.0),
    "ddb_max_pool_connections": (_count, 32),
    # ours: the endpoint node's bound on one DynamoDB call, retries included;
    # past it the POST answers 503 (a hung store must not hold publishers)
    "ddb_call_timeout": (_seconds, 3.0),
    # ours: the hot item calls (GetItem, BatchGetItem, PutItem, UpdateItem,
    # Query, DeleteItem, BatchWriteItem) skip botocore's per-call machinery
    # (connnode/db/lean.py); false sends every call through boto3
    "ddb_lean_calls": (_parse_bool, True),
    # ours: calls over plain http:// (the lean DynamoDB calls to a local
    # store, node to node) use connnode/wire.py's keep-alive client; false:
    # urllib3, as https:// always does
    "wire_http_calls": (_parse_bool, True),
    # 9.2 connection node
    "port": (_port, 8080),
    "router_hostname": (_str, None),
    "router_port": (_port, 8100),
    "router_url": (_url, None),
    "hello_timeout": (_seconds, 10.0),
    # ours: a hello's storage work (its wait for a storage turn included);
    # past it the hello is answered 503 "error - overloaded" (0: no bound)
    "hello_storage_timeout": (_seconds, 10.0),
    "idle_timeout": (_seconds, 0.0),
    "auto_ping_interval": (_seconds, 300.0),
    "auto_ping_timeout": (_seconds, 4.0),
    "min_ping_interval": (_seconds, 55.0),
    "msg_limit": (_count, 100),
    "max_connections": (_count, 0),
    "max_frame_bytes": (_count, 65536),
    "open_handshake_timeout": (_seconds, 5.0),
    "close_handshake_timeout": (_seconds, 0.0),
    "send_high_water": (_count, 65536),
    "backdoor_port": (_port, None),
    "backdoor_host": (_str, "127.0.0.1"),
    # ours: Megaphone broadcasts (issue 15, connnode/connection/megaphone.py):
    # the service's GET /v1/broadcasts URL, polled every interval with
    # "Authorization: Bearer <megaphone_api_token>". Empty: broadcasts off.
    # Under `make run` point it at the local endpoint node's /v1/broadcasts
    # (e.g. http://localhost:8082/v1/broadcasts) once that API is served.
    "megaphone_api_url": (_str, ""),
    "megaphone_api_token": (_str, ""),
    "megaphone_poll_interval": (_seconds, 30.0),
    # ours: the endpoint node's Megaphone API (issue 15, connnode/endpoint/broadcasts.py):
    # versions in the table broadcast_tablename; PUT /v1/broadcasts/<broadcaster>/...
    # needs that broadcaster's token ("name=TOKEN,other=TOKEN2"), GET /v1/broadcasts
    # the reader token (empty: every GET is refused)
    "broadcast_tablename": (_str, "broadcasts"),
    "megaphone_broadcaster_tokens": (_broadcaster_tokens, None),
    "megaphone_reader_token": (_str, ""),
    # 9.3 endpoint node
    "endpoint_port": (_port, 8082),
    "max_data_bytes": (_count, 5630),
    "cors": (_parse_bool, True),
    "sts_max_age": (_count, 31536000),
    # ours: durable direct delivery (README "Durable delivery"): a message with
    # TTL > 0 is stored before the 201, handed to its holder, and deleted on ack
    "durable_direct": (_parse_bool, True),
    # ours: rate limits of POST /wpush (connnode/endpoint/limits.py, README
    # "Rate limits and dead subscriptions"): token buckets in each endpoint
    # worker's memory, per client IP, per verified VAPID key and per
    # subscription; rate in POSTs per second (0 turns that limit off) and burst
    # in POSTs; at most rate_limit_max_buckets buckets per limit. Over a limit:
    # 429, errno 115, Retry-After.
    "rate_limit_ip_rate": (_rate, 1000.0),
    "rate_limit_ip_burst": (_at_least_one(float), 2000.0),
    "rate_limit_key_rate": (_rate, 1000.0),
    "rate_limit_key_burst": (_at_least_one(float), 2000.0),
    "rate_limit_subscription_rate": (_rate, 20.0),
    "rate_limit_subscription_burst": (_at_least_one(float), 200.0),
    "rate_limit_max_buckets": (_at_least_one(int), 10000),
    # ours: the peers whose X-Forwarded-For names the client for the IP limit
    # (comma-separated addresses or networks, e.g. 127.0.0.1 for a local nginx);
    # empty: the socket's peer address always counts
    "trusted_proxies": (_trusted_proxies, ""),
    # ours: endpoints that answered 410 are answered again from memory for this
    # many seconds (connnode/endpoint/deadsubs.py), at most this many per
    # endpoint worker (LRU); 0 turns the cache off
    "dead_subscription_ttl": (_seconds, 600.0),
    "dead_subscription_max_entries": (_count, 10000),
    # ours: message lifecycle events (connnode/lifecycle.py, README "Message
    # lifecycle events"): off by default; on for messages signed by one of
    # these VAPID public keys (comma-separated base64url), or for all
    "tracking_keys": (_tracking_keys, ""),
    "track_all": (_parse_bool, False),
    # ours: seconds between passes of `connnode sweeper` (README "Storage
    # sweeper"), the embedded store's stand-in for DynamoDB TTL; 0 disables it
    "sweep_interval": (_seconds, 3600.0),
    # ours: the endpoint node's demo page (GET /demo, POST /demo/send,
    # connnode/endpoint/demo.py). Unset means off, except under `connnode run`
    # (make run), which turns it on unless configured.
    "demo_page": (_parse_bool, None),
}


def _read_ini(path):
    parser = configparser.ConfigParser(interpolation=None)
    try:
        with open(path, encoding="utf-8") as handle:
            parser.read_file(handle)
    except OSError as exc:
        raise SettingsError(f"cannot read config file {path!r}: {exc}") from exc
    except configparser.Error as exc:
        raise SettingsError(f"config file {path!r} is malformed: {exc}") from exc
    if not parser.has_section(INI_SECTION):
        return {}
    values = dict(parser.items(INI_SECTION))
    unknown = sorted(set(values) - set(OPTIONS))
    if unknown:
        raise SettingsError(f"config file {path!r}: unknown option(s) {', '.join(unknown)}")
    return values


class Settings:
    """Every option as an attribute. Build with ``Settings.load()`` or
    ``Settings(**overrides)`` (tests: no file, no environment)."""

    def __init__(self, **overrides):
        unknown = sorted(set(overrides) - set(OPTIONS))
        if unknown:
            raise SettingsError(f"unknown option(s) {', '.join(unknown)}")
        for name, (parser, default) in OPTIONS.items():
            value = overrides.get(name, default)
            if isinstance(value, str) and parser is not _str:
                value = _parse_one(name, value)
            setattr(self, name, value)
        self._derive()

    @classmethod
    def load(cls, environ=None, config_path=None):
        """Defaults < ini file (``CONNNODE_CONFIG``) < ``CONNNODE_*`` variables."""
        environ = os.environ if environ is None else environ
        raw = {}
        config_path = config_path or environ.get(CONFIG_ENV)
        if config_path:
            raw.update(_read_ini(config_path))
        for name in OPTIONS:
            key = ENV_PREFIX + name.upper()
            if key in environ:
                raw[name] = environ[key]
        return cls(**{name: _parse_one(name, text) for name, text in raw.items()})

    def _derive(self):
        if self.megaphone_broadcaster_tokens is None:
            self.megaphone_broadcaster_tokens = {}
        if not self.hostname:
            self.hostname = socket.gethostname()
        if not self.router_hostname:
            self.router_hostname = self.hostname
        if not self.endpoint_url:
            self.endpoint_url = f"http://{self.hostname}:{self.endpoint_port}"
        self.endpoint_url = _drop_default_port(self.endpoint_url)

    def router_url_for(self, port):
        """The node_id of a connection-node process listening on ``port``."""
        if self.router_url:
            return self.router_url
        return _drop_default_port(f"http://{self.router_hostname}:{port}")

    @property
    def crypto_keys(self):
        """The Fernet keys of ``crypto_key`` in order (first encrypts)."""
        if not self.crypto_key:
            return []
        return [key.strip() for key in self.crypto_key.split(",") if key.strip()]

    def as_dict(self):
        return {name: getattr(self, name) for name in OPTIONS}


def _parse_one(name, text):
    parser, _ = OPTIONS[name]
    if not isinstance(text, str):
        return text
    if text.strip() == "" and OPTIONS[name][1] is None and parser is not _str:
        return None
    try:
        return parser(text)
    except ValueError as exc:
        shown = "(hidden)" if name in _SECRET_OPTIONS else repr(text)
        raise SettingsError(f"option {name}: bad value {shown} ({exc})") from None


# Options whose values are never echoed in an error message.
_SECRET_OPTIONS = frozenset({"megaphone_broadcaster_tokens"})


def _drop_default_port(url):
    parts = urlsplit(url)
    default = {"http": 80, "https": 443}.get(parts.scheme)
    try:
        port = parts.port
    except ValueError:
        raise SettingsError(f"bad port in URL {url!r}") from None
    if port is not None and port == default:
        netloc = parts.netloc.rsplit(":", 1)[0]
        return f"{parts.scheme}://{netloc}{parts.path}".rstrip("/")
    return url.rstrip("/")
