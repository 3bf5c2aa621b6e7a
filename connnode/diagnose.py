"""``connnode diagnose <endpoint URL or message id>``: "where did my push go?"
answered from the live storage (issue 13, README "Command line").

It prints what the token (or message id) decodes to, the user's router
record, whether the channel is registered, the channel's stored messages,
and whether the node named in the record holds the uaid right now (asking
that worker's private ``GET /status/<uaid>``, ``router_app.py``). It only
reads: no record is dropped or cleared, whatever it finds.

``--follow`` then tails the subscription's lifecycle events
(``connnode/lifecycle.py``) from the nodes' log files: by default
``<data_dir>/log/*.log``, where ``connnode run`` (``make run``) has
supervisord write them; ``--logs`` names others. It starts with the events
in the last ``TAIL_BYTES`` of each file and runs until Ctrl-C (or
``--timeout``).

Input it cannot read (a tampered URL, a token minted with another
``crypto_key``) is one line on stderr and exit status 2, never a traceback.
"""
import base64
import glob
import json
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import unquote, urlsplit

from connnode.crypto import InvalidTokenError, TokenCrypto, hash_uaid
from connnode.notification import CHANNEL_ROW_KEY, Notification

#: Bytes of each log file read back when ``--follow`` starts.
TAIL_BYTES = 256 * 1024
#: Pages (of QUERY_LIMIT items) of a user's stored messages read at most.
QUERY_PAGES = 20
QUERY_LIMIT = 100
STATUS_TIMEOUT = 2.0
FOLLOW_POLL = 0.2


class BadInput(Exception):
    """Input that names no subscription of this service: one line, exit 2."""


class Target:
    """What the input decodes to."""

    def __init__(self, kind, uaid, chid, key_digest=None, message_id=None, sort_key=None,
                 version=None):
        self.kind = kind              # "endpoint" or "message"
        self.uaid = uaid
        self.chid = chid
        self.key_digest = key_digest  # endpoint: sha256 of the bound VAPID key, or None
        self.message_id = message_id
        self.sort_key = sort_key
        self.version = version        # endpoint: "v1" / "v2" / None (bare token)


def _pad(text):
    return text + "=" * (-len(text) % 4)


def _why_not(token):
    """The one-line reason a token does not decrypt."""
    try:
        raw = base64.urlsafe_b64decode(_pad(token).encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        return "bad token: not base64url (the URL was cut or altered)"
    # Fernet: version 0x80, 8 bytes time, 16 bytes IV, 16*k ciphertext, 32 bytes HMAC
    if len(raw) < 73 or raw[0] != 0x80 or (len(raw) - 57) % 16:
        return "bad token: not a token of this service (the URL was cut or altered)"
    return ("wrong key or tampered token: it does not decrypt with this crypto_key "
            "(minted by a service with another key, or altered on the way)")


def parse_target(text, crypto):
    """A Target from an endpoint URL, a DELETE /m URL, a bare token or a
    bare message id; BadInput when it names nothing of ours."""
    text = text.strip()
    if not text:
        raise BadInput("bad input: give an endpoint URL or a message id")
    if "://" in text:
        path = unquote(urlsplit(text).path)
        if "/wpush/" in path:
            return _endpoint(path.split("/wpush/", 1)[1], crypto)
        if "/m/" in path:
            return _message(path.split("/m/", 1)[1], crypto)
        raise BadInput("bad input: a URL of this service has /wpush/... (endpoint) "
                       "or /m/... (message)")
    try:
        return _message(text, crypto)
    except BadInput:
        pass
    return _endpoint(text, crypto)


def _message(message_id, crypto):
    try:
        parsed = crypto.parse_message_id(message_id)
    except InvalidTokenError as exc:
        if "shape" in str(exc):
            raise BadInput("bad message id: it decrypts but is not a message id") from None
        raise BadInput(_why_not(message_id)) from None
    return Target("message", parsed.uaid, parsed.chid, message_id=message_id,
                  sort_key=parsed.sort_key)


def _endpoint(rest, crypto):
    parts = rest.strip("/").split("/")
    if len(parts) == 2 and parts[0] in ("v1", "v2"):
        version, token = parts
    elif len(parts) == 1 and parts[0]:
        version, token = None, parts[0]
    else:
        raise BadInput("bad endpoint: expected /wpush/v1/<token>, /wpush/v2/<token> "
                       "or /wpush/<token>")
    orders = {"v1": (False, True), "v2": (True, False), None: (False, True)}[version]
    for key_bound in orders:
        try:
            uaid, chid, digest = crypto.parse_endpoint_token(token, key_bound)
        except InvalidTokenError as exc:
            if "length" not in str(exc):
                raise BadInput(_why_not(token)) from None
            continue
        if version is not None and key_bound != (version == "v2"):
            want = "key-bound (v2)" if key_bound else "unrestricted (v1)"
            raise BadInput(f"bad endpoint: the token is {want} but the URL says /{version}/ "
                           "(the URL was altered)")
        return Target("endpoint", uaid, chid, key_digest=digest, version=version)
    raise BadInput("bad token: it decrypts but is not an endpoint token")


# -- the report -------------------------------------------------------------------

def _when(ms):
    try:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(ms) / 1000))
    except (TypeError, ValueError, OverflowError):
        return "?"


def read_record(storage, uaid):
    """The router record as stored (no clean-up of odd records), or None."""
    from connnode.db.dynamo import from_item
    router = storage.router
    item = storage.dynamo.call("get_item", TableName=router.name, Key=router._key(uaid),
                               ConsistentRead=True).get("Item")
    return from_item(item) if item else None


def stored_messages(storage, table_name, uaid, chid):
    """(the channel's stored Notifications, whether the listing was cut)."""
    from connnode.db.dynamo import from_item
    found, start = [], None
    for _ in range(QUERY_PAGES):
        kwargs = {"ExclusiveStartKey": start} if start else {}
        page = storage.dynamo.call(
            "query", TableName=table_name, KeyConditionExpression="#uaid = :u",
            ExpressionAttributeNames={"#uaid": "uaid"},
            ExpressionAttributeValues={":u": {"S": hash_uaid(storage.settings.key_hash, uaid)}},
            ConsistentRead=True, Limit=QUERY_LIMIT, **kwargs)
        for item in page.get("Items", []):
            item = from_item(item)
            if item["chidmessageid"] == CHANNEL_ROW_KEY:
                continue
            message = Notification.from_item(uaid, item)
            if message.chid == chid:
                found.append(message)
        start = page.get("LastEvaluatedKey")
        if not start:
            return found, False
    return found, True


def holder_status(node_id, uaid):
    """(held, detail) from the node's ``GET /status/<uaid>``."""
    url = f"{node_id.rstrip('/')}/status/{uaid}"
    try:
        with urllib.request.urlopen(url, timeout=STATUS_TIMEOUT) as response:
            body = json.loads(response.read() or b"{}")
        return True, (f"held by {node_id} (connected_at {body.get('connected_at')}, "
                      f"state {body.get('state')}, unacked direct "
                      f"{body.get('outstanding_direct')}, unacked stored "
                      f"{body.get('outstanding_stored')})")
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return False, f"not held: {node_id} answered 404 (the record is stale)"
        return False, f"unknown: {node_id} answered {exc.code}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return False, f"unknown: {node_id} unreachable ({getattr(exc, 'reason', exc)})"


def report(storage, target, out, now=None):
    """Print the diagnosis of ``target``."""
    now = time.time() if now is None else now
    key_hash = storage.settings.key_hash

    def say(line=""):
        print(line, file=out)

    if target.kind == "endpoint":
        bound = ("key-bound (VAPID key sha256 " + target.key_digest.hex()[:16] + "...)"
                 if target.key_digest is not None else "not key-bound (any sender)")
        say(f"token:          endpoint {target.version or '(bare token)'}, {bound}")
    else:
        say(f"token:          message id ({'topic' if target.sort_key.startswith('01:') else 'timestamped'}"
            f", sort key {target.sort_key})")
    say(f"uaid:           {target.uaid}")
    if key_hash:
        say(f"uaid_hash:      {hash_uaid(key_hash, target.uaid)}")
    say(f"chid:           {target.chid}")
    record = read_record(storage, target.uaid)
    today = time.gmtime(now)
    current = storage.rotation.name(today.tm_year, today.tm_mon)
    if record is None:
        say("router record:  none (unknown or dropped user: POSTs answer 410)")
        table_name = current
    else:
        say(f"router record:  node_id={record.get('node_id') or '-'} "
            f"connected_at={record.get('connected_at')} ({_when(record.get('connected_at'))}) "
            f"current_month={record.get('current_month')} "
            f"record_version={record.get('record_version')} "
            f"router_type={record.get('router_type')}")
        table_name = record.get("current_month") or current
    table = storage.message_table(table_name)
    _, chids = table.all_channels(target.uaid)
    if target.chid in chids:
        say(f"channel:        registered (in {table_name})")
    else:
        say(f"channel:        NOT registered in {table_name} (POSTs answer 410/106)")
    messages, cut = stored_messages(storage, table_name, target.uaid, target.chid)
    say(f"stored:         {len(messages)}{'+ (listing cut)' if cut else ''} message(s) "
        f"for this channel in {table_name}")
    for message in messages:
        left = message.timestamp + message.ttl - int(now)
        state = f"ttl left {left} s" if left > 0 else "expired (dropped at next read)"
        say(f"  - {message.version}  {state}  topic={message.topic or '-'}"
            f"{'  tracked' if message.tracked else ''}")
    if target.kind == "message":
        hit = any(m.sort_key == target.sort_key and m.version.rstrip("=") ==
                  target.message_id.rstrip("=") for m in messages)
        say(f"this message:   {'stored (not yet acked)' if hit else 'not stored (acked, expired, deleted, or never stored)'}")
    node_id = (record or {}).get("node_id")
    if not node_id:
        say("holder:         none (offline: new messages are stored)")
    else:
        say(f"holder:         {holder_status(node_id, target.uaid)[1]}")


# -- --follow -------------------------------------------------------------------------

def log_files(settings, named):
    if named:
        return [Path(name) for name in named]
    return [Path(p) for p in sorted(glob.glob(str(Path(settings.data_dir) / "log" / "*.log")))]


def matches(line, uaid_hash, chid):
    """The lifecycle entry of ``line`` when it is one of the subscription's."""
    if '"connnode.lifecycle"' not in line:
        return None
    try:
        entry = json.loads(line)
    except ValueError:
        return None
    fields = entry.get("fields") or {}
    if entry.get("logger") != "connnode.lifecycle" or fields.get("uaid_hash") != uaid_hash \
            or fields.get("chid") != chid:
        return None
    return entry


def format_event(entry):
    fields = dict(entry.get("fields") or {})
    stage, message_id = fields.pop("stage", "?"), fields.pop("message_id", "?")
    for name in ("uaid_hash", "chid"):
        fields.pop(name, None)
    extra = " ".join(f"{name}={value}" for name, value in sorted(fields.items())
                     if value is not None)
    return f"{entry.get('time', '?')}  {stage:<9}  {message_id}  {extra}".rstrip()


def follow(paths, uaid_hash, chid, out, timeout=0.0, poll=FOLLOW_POLL):
    """Print the subscription's events from ``paths`` (recent ones first),
    then new ones as they are written, until Ctrl-C or ``timeout`` s."""
    positions, partial = {}, {}
    for path in paths:
        try:
            size = path.stat().st_size
        except OSError:
            size = 0
        positions[path] = max(0, size - TAIL_BYTES)
        partial[path] = b"" if positions[path] == 0 else None  # None: skip a cut first line
    deadline = time.monotonic() + timeout if timeout else None
    try:
        while True:
            for path in paths:
                _read_new(path, positions, partial, uaid_hash, chid, out)
            out.flush()
            if deadline is not None and time.monotonic() >= deadline:
                return 0
            time.sleep(poll)
    except KeyboardInterrupt:
        return 0


def _read_new(path, positions, partial, uaid_hash, chid, out):
    try:
        with open(path, "rb") as handle:
            handle.seek(0, 2)
            size = handle.tell()
            if size < positions[path]:  # truncated or rotated: start over
                positions[path], partial[path] = 0, b""
            handle.seek(positions[path])
            chunk = handle.read(4 * 1024 * 1024)
    except OSError:
        return
    if not chunk:
        return
    positions[path] += len(chunk)
    lines = chunk.split(b"\n")
    head = partial[path]
    partial[path] = lines.pop()
    if head is None:
        lines = lines[1:]
    elif lines:
        lines[0] = head + lines[0]
    else:
        partial[path] = head + partial[path]
    for raw in lines:
        entry = matches(raw.decode("utf-8", "replace"), uaid_hash, chid)
        if entry is not None:
            print(format_event(entry), file=out)


# -- the command --------------------------------------------------------------------

def _prepare(settings):
    """Settings as ``make run`` gives its nodes: its kept crypto_key and its
    embedded store, when this shell has neither configured."""
    from connnode.embedded import port_taken
    if not settings.crypto_key:
        kept = Path(settings.data_dir) / "crypto_key"
        if not kept.is_file():
            raise BadInput("crypto_key is not set (and no make-run key in data_dir): "
                           "set CONNNODE_CRYPTO_KEY as the nodes have it")
        settings.crypto_key = kept.read_text().strip()
    if not settings.aws_ddb_endpoint and port_taken(settings.embedded_ddb_port):
        settings.aws_ddb_endpoint = f"http://127.0.0.1:{settings.embedded_ddb_port}"


def cmd_diagnose(settings, args, out=None):
    out = out or sys.stdout
    try:
        _prepare(settings)
        target = parse_target(args.target, TokenCrypto(settings.crypto_keys))
    except BadInput as exc:
        print(f"connnode diagnose: {exc}", file=sys.stderr)
        return 2
    from connnode.db.storage import Storage
    storage = Storage(settings)
    report(storage, target, out)
    if not args.follow:
        return 0
    paths = log_files(settings, args.logs)
    if not paths:
        print(f"connnode diagnose: no log files under {Path(settings.data_dir) / 'log'} "
              "(is `make run` running from here? or name them with --logs)", file=sys.stderr)
        return 1
    print(f"following lifecycle events in {', '.join(map(str, paths))} (Ctrl-C ends)",
          file=out, flush=True)
    uaid_hash = hash_uaid(settings.key_hash, target.uaid)
    return follow(paths, uaid_hash, target.chid, out, timeout=args.timeout)


def add_parser(sub):
    parser = sub.add_parser("diagnose", help="where did a push go: token, record, channel, "
                            "stored messages, holder (--follow: lifecycle events)")
    parser.add_argument("target", help="an endpoint URL (/wpush/...), a message id or /m/ URL")
    parser.add_argument("--follow", action="store_true",
                        help="then tail the subscription's lifecycle events from the log files")
    parser.add_argument("--logs", nargs="+", metavar="FILE",
                        help="log files to follow (default: <data_dir>/log/*.log of make run)")
    parser.add_argument("--timeout", type=float, default=0.0, metavar="SECONDS",
                        help="stop following after this long (default: until Ctrl-C)")
    parser.set_defaults(func=cmd_diagnose)
    return parser
