"""The ``connnode`` command: storage maintenance and the one-machine runner.

    connnode db create-tables | rotate | preflight | drop-user UAID | drop-old-users | sweep
    connnode broadcast set ID VERSION | list   Megaphone broadcasts via endpoint_url
    connnode dynalite     run the embedded dynalite in the foreground (data in data_dir)
    connnode sweeper      a storage sweep every sweep_interval seconds (embedded store only)
    connnode run          one machine: embedded dynalite, tables, then the nodes
    connnode diagnose URL|MESSAGE_ID [--follow]   where did a push go (connnode/diagnose.py)
"""
import argparse
import os
import sys
from pathlib import Path

from connnode.settings import Settings, SettingsError


def _storage(settings):
    from connnode.db.storage import Storage
    return Storage(settings)


def cmd_create_tables(settings, args):
    storage = _storage(settings)
    storage.wait_ready(args.wait)
    print(f"tables ready: {settings.router_tablename}, {settings.broadcast_tablename}, "
          + ", ".join(sorted(storage.rotation.valid)))
    if args.preflight:
        storage.preflight()
        print("preflight OK")


def cmd_rotate(settings, args):
    storage = _storage(settings)
    storage.create_tables()
    print(f"current: {storage.rotation.current}; valid: {', '.join(sorted(storage.rotation.valid))}")


def cmd_preflight(settings, args):
    storage = _storage(settings)
    storage.create_tables()
    storage.preflight()
    print("preflight OK")


def cmd_drop_user(settings, args):
    dropped = _storage(settings).router.drop_user(args.uaid)
    print("dropped" if dropped else "no such user")
    return 0 if dropped else 1


def cmd_drop_old_users(settings, args):
    count = _storage(settings).router.drop_old_users(args.months_ago)
    print(f"dropped {count} router records")


def _print_sweep(result):
    if not result.taken:
        print("another sweep holds the lease; nothing done")
        return 1
    for table, count in sorted(result.deleted.items()):
        print(f"{table}: {count} expired items deleted")
    print(f"tables dropped: {', '.join(result.dropped) or 'none'}")
    if result.lease_lost:
        print("stopped early: the lease was taken over")
    return 0


def cmd_sweep(settings, args):
    """One pass of the storage sweeper (connnode/db/sweep.py), lease permitting."""
    from connnode.db.sweep import Sweeper
    return _print_sweep(Sweeper(_storage(settings)).run_once())


def cmd_sweeper(settings, args):
    """A sweep every ``sweep_interval`` seconds, forever; only for the embedded
    store. ``connnode run`` sets CONNNODE_AWS_DDB_ENDPOINT itself and says in
    CONNNODE_RUN_EMBEDDED whether the store is its dynalite; outside it, an
    operator's ``aws_ddb_endpoint`` (or none: AWS) is not ours to sweep."""
    import logging
    import signal

    from connnode.db.sweep import Sweeper, run_forever
    if os.environ.get("CONNNODE_RUN_EMBEDDED", "").lower() != "true":
        where = settings.aws_ddb_endpoint or "AWS DynamoDB"
        print(f"connnode sweeper: the store is {where}, not the embedded dynalite: nothing to do "
              "(enable DynamoDB TTL on the attribute `expiry` instead)", file=sys.stderr)
        return 0
    if not settings.sweep_interval:
        print("connnode sweeper: sweep_interval is 0: disabled", file=sys.stderr)
        return 0
    logging.getLogger().setLevel(os.environ.get("CONNNODE_LOG_LEVEL", "INFO"))
    # SIGTERM (supervisord's stop) unwinds the pass, which releases its lease.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    print(f"connnode sweeper: a pass every {settings.sweep_interval:g} s against "
          f"{settings.aws_ddb_endpoint}", flush=True)
    run_forever(Sweeper(_storage(settings)), settings.sweep_interval)


# -- broadcasts (issue 15): through the endpoint node's Megaphone API ----------

_BROADCAST_ADVICE = {
    400: "the version was refused (1-200 printable characters)",
    401: "the token was refused; check {option} on this machine and on the endpoint node",
    404: "no such broadcast id, or the endpoint node has no token for that broadcaster "
         "(megaphone_broadcaster_tokens)",
}


def _broadcast_call(settings, method, path, token, option, body=None):
    """(status, parsed JSON) of one call to ``endpoint_url``; prints the
    reason and returns None when it failed."""
    import json
    import urllib.error
    import urllib.request

    url = settings.endpoint_url.rstrip("/") + path
    request = urllib.request.Request(url, data=body, method=method, headers={
        "Authorization": f"Bearer {token}", "Content-Type": "text/plain; charset=utf-8"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read()).get("message", "")
        except ValueError:
            message = ""
        advice = _BROADCAST_ADVICE.get(exc.code, "").format(option=option)
        print(f"connnode: {method} {url}: {exc.code} {exc.reason}"
              f"{': ' + message if message else ''}{' (' + advice + ')' if advice else ''}",
              file=sys.stderr)
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        print(f"connnode: cannot reach the endpoint node at {url} (endpoint_url): {reason}",
              file=sys.stderr)
    except ValueError as exc:
        print(f"connnode: {method} {url}: the answer is not JSON ({exc})", file=sys.stderr)
    return None


def cmd_broadcast_set(settings, args):
    from urllib.parse import quote
    broadcaster, sep, bchannel = args.id.partition("/")
    if not sep or not broadcaster or not bchannel or "/" in bchannel:
        print(f"connnode: broadcast id {args.id!r}: expected <broadcaster>/<bchannel>",
              file=sys.stderr)
        return 2
    token = settings.megaphone_broadcaster_tokens.get(broadcaster) or (
        _run_secret(settings, "broadcaster_token") if broadcaster == RUN_BROADCASTER else None)
    if not token:
        print(f"connnode: no token for broadcaster {broadcaster!r} in "
              "megaphone_broadcaster_tokens (name=TOKEN,...)", file=sys.stderr)
        return 2
    path = f"/v1/broadcasts/{quote(broadcaster, safe='')}/{quote(bchannel, safe='')}"
    if _broadcast_call(settings, "PUT", path, token, "megaphone_broadcaster_tokens",
                       args.version.encode("utf-8")) is None:
        return 1
    print(f"{args.id} = {args.version}")
    return 0


def _run_secret(settings, name):
    """A token ``make run`` generated into data_dir, or None."""
    path = Path(settings.data_dir) / name
    return path.read_text().strip() if path.is_file() else None


def cmd_broadcast_list(settings, args):
    reader = settings.megaphone_reader_token or _run_secret(settings, "megaphone_token")
    if not reader:
        print("connnode: megaphone_reader_token is not set", file=sys.stderr)
        return 2
    answer = _broadcast_call(settings, "GET", "/v1/broadcasts", reader, "megaphone_reader_token")
    if answer is None:
        return 1
    for broadcast_id, version in sorted((answer.get("broadcasts") or {}).items()):
        print(f"{broadcast_id} {version}")
    return 0


def _embedded_port_refusal(settings):
    """A message when the embedded store's port is held by someone else
    (another dynalite, an old run): using that store would silently put this
    service's data in a foreign database."""
    from connnode.embedded import port_taken
    port = settings.embedded_ddb_port
    if not port_taken(port):
        return None
    return (f"connnode: 127.0.0.1:{port} (embedded_ddb_port) is already in use by another "
            "process; stop it, or set CONNNODE_EMBEDDED_DDB_PORT to a free port")


def cmd_dynalite(settings, args):
    from connnode.embedded import die_with_parent, dynalite_command
    refusal = _embedded_port_refusal(settings)
    if refusal:
        print(refusal, file=sys.stderr)
        return 1
    data_path = Path(settings.data_dir) / "ddb"
    data_path.mkdir(parents=True, exist_ok=True)
    command = dynalite_command(settings.embedded_ddb_port, data_path)
    # Survives the exec: dynalite gets SIGTERM when supervisord dies, even by SIGKILL.
    die_with_parent()
    os.execv(command[0], command)


def _kept_secret(settings, name, make):
    """A secret generated once into data_dir/<name> (mode 0600) and kept."""
    path = Path(settings.data_dir) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(make() + "\n")
    return path.read_text().strip()


def ensure_crypto_key(settings):
    """Under ``make run`` without a configured key: generate one once and keep
    it in data_dir, so endpoint URLs stay valid across restarts."""
    if settings.crypto_key:
        return settings.crypto_key
    from cryptography.fernet import Fernet
    return _kept_secret(settings, "crypto_key", lambda: Fernet.generate_key().decode("ascii"))


#: The broadcaster ``make run`` gives a token when none is configured
#: (Firefox subscribes to remote-settings/monitor_changes at every connect).
RUN_BROADCASTER = "remote-settings"


def megaphone_run_env(settings):
    """Under ``make run``: broadcasts on, the connection nodes polling the
    local endpoint node's /v1/broadcasts, with tokens generated once into
    data_dir (``megaphone_token``: reading; ``broadcaster_token``: PUT for
    ``remote-settings``). What the operator configured is kept."""
    import secrets

    env = {}
    reader = settings.megaphone_reader_token or _kept_secret(
        settings, "megaphone_token", lambda: secrets.token_urlsafe(24))
    env["CONNNODE_MEGAPHONE_READER_TOKEN"] = reader
    if not settings.megaphone_api_url:
        env["CONNNODE_MEGAPHONE_API_URL"] = f"http://127.0.0.1:{settings.endpoint_port}/v1/broadcasts"
        env["CONNNODE_MEGAPHONE_API_TOKEN"] = reader
    if not settings.megaphone_broadcaster_tokens:
        token = _kept_secret(settings, "broadcaster_token", lambda: secrets.token_urlsafe(24))
        env["CONNNODE_MEGAPHONE_BROADCASTER_TOKENS"] = f"{RUN_BROADCASTER}={token}"
    return env


def demo_run_env(settings):
    """Under ``make run``: the demo page (``demo_page``) on unless configured,
    with its VAPID key pair made once into data_dir before the nodes start."""
    env = {}
    if settings.demo_page is None:
        env["CONNNODE_DEMO_PAGE"] = "true"
    if settings.demo_page is not False:
        from connnode.endpoint.demo import load_or_create_key
        load_or_create_key(settings.data_dir)
    return env


def cmd_run(settings, args):
    """Run the whole service on this machine under supervisord (foreground)."""
    import shutil

    from connnode.embedded import PROJECT_ROOT

    run_dir = Path(settings.data_dir).resolve()
    (run_dir / "log").mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env["CONNNODE_CRYPTO_KEY"] = ensure_crypto_key(settings)
    env.update(megaphone_run_env(settings))
    env.update(demo_run_env(settings))
    embedded = not settings.aws_ddb_endpoint
    if embedded:
        refusal = _embedded_port_refusal(settings)
        if refusal:
            print(refusal, file=sys.stderr)
            return 1
        env["CONNNODE_AWS_DDB_ENDPOINT"] = f"http://127.0.0.1:{settings.embedded_ddb_port}"
    bin_dir = Path(sys.executable).parent
    env.update({
        "CONNNODE_DATA_DIR": str(run_dir),
        "CONNNODE_RUN_DIR": str(run_dir),
        "CONNNODE_RUN_BIN": str(bin_dir),
        "CONNNODE_RUN_ROOT": str(PROJECT_ROOT),
        "CONNNODE_RUN_EMBEDDED": "true" if embedded else "false",
    })
    workers = int(env.get("WEB_CONCURRENCY", "1"))
    demo = (f"{settings.endpoint_url}/demo" if settings.demo_page is not False
            else "off (demo_page)")
    routers = ", ".join(settings.router_url_for(settings.router_port + slot) for slot in range(workers))
    print(f"""connnode on this machine (supervisord, config conf/supervisord.conf)
  WebSocket (browsers):  ws://{settings.hostname}:{settings.port}/
  endpoint (WebPush API): {settings.endpoint_url}
  router ports (private): {routers}
  DynamoDB:              {env["CONNNODE_AWS_DDB_ENDPOINT"] if embedded else settings.aws_ddb_endpoint}"""
          f"""{" (embedded dynalite, data in " + str(run_dir / "ddb") + ")" if embedded else ""}
  broadcasts (Megaphone): {settings.endpoint_url}/v1/broadcasts (tokens in {run_dir}/megaphone_token
                         and {run_dir}/broadcaster_token, unless configured)
  demo page:             {demo}
  logs:                  {run_dir / "log"}/*.log
Stop with Ctrl-C (or SIGTERM to this process): everything stops, nodes first.""", flush=True)
    supervisord = shutil.which("supervisord", path=str(bin_dir)) or "supervisord"
    os.execve(supervisord, [supervisord, "-n", "-c", str(PROJECT_ROOT / "conf" / "supervisord.conf")],
              env)


def build_parser():
    parser = argparse.ArgumentParser(prog="connnode", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    db = sub.add_parser("db", help="storage maintenance").add_subparsers(dest="db_command",
                                                                          required=True)
    create = db.add_parser("create-tables", help="create the router and message tables")
    create.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                        help="retry this long while DynamoDB is not reachable")
    create.add_argument("--preflight", action="store_true", help="then run the preflight check")
    create.set_defaults(func=cmd_create_tables)
    db.add_parser("rotate", help="one pass of the monthly rotation (7.2)").set_defaults(
        func=cmd_rotate)
    db.add_parser("preflight", help="exercise every storage write (6.6)").set_defaults(
        func=cmd_preflight)
    drop = db.add_parser("drop-user", help="delete one router record")
    drop.add_argument("uaid")
    drop.set_defaults(func=cmd_drop_user)
    old = db.add_parser("drop-old-users", help="delete records last connected N months ago")
    old.add_argument("--months-ago", type=int, default=2)
    old.set_defaults(func=cmd_drop_old_users)
    db.add_parser("sweep", help="one storage sweep: expired items, old message tables"
                  ).set_defaults(func=cmd_sweep)
    broadcast = sub.add_parser(
        "broadcast", help="Megaphone broadcasts, through the endpoint node's API (endpoint_url)"
    ).add_subparsers(dest="broadcast_command", required=True)
    bset = broadcast.add_parser("set", help="set a broadcast's version (the broadcaster's token)")
    bset.add_argument("id", help="<broadcaster>/<bchannel>")
    bset.add_argument("version")
    bset.set_defaults(func=cmd_broadcast_set)
    broadcast.add_parser("list", help="every broadcast and its version (the reader token)"
                         ).set_defaults(func=cmd_broadcast_list)
    sub.add_parser("dynalite", help="run the embedded dynalite").set_defaults(func=cmd_dynalite)
    sub.add_parser("run", help="run the whole service on this machine").set_defaults(func=cmd_run)
    sub.add_parser("sweeper", help="a storage sweep every sweep_interval seconds (embedded store)"
                   ).set_defaults(func=cmd_sweeper)
    from connnode.diagnose import add_parser as add_diagnose
    add_diagnose(sub)
    return parser


def main(argv=None):
    from connnode.logs import setup_logging

    args = build_parser().parse_args(argv)
    setup_logging(os.environ.get("CONNNODE_LOG_LEVEL", "WARNING"), stream=sys.stderr)
    try:
        settings = Settings.load()
    except SettingsError as exc:
        print(f"connnode: configuration error: {exc}", file=sys.stderr)
        return 2
    from connnode.db.dynamo import StorageError
    try:
        return args.func(settings, args) or 0
    except StorageError as exc:
        print(f"connnode: storage error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
