"""The pure parts of ``connnode diagnose`` (connnode/diagnose.py): reading
its input, and following log files. The storage report runs against real
nodes in tests/integration/test_lifecycle.py."""
import io
import uuid

import pytest
import simplejson as json
from cryptography.fernet import Fernet

from connnode.crypto import TokenCrypto
from connnode.diagnose import BadInput, follow, format_event, matches, parse_target
from tests.conftest import TEST_CRYPTO_KEY

CRYPTO = TokenCrypto([TEST_CRYPTO_KEY])
UAID, CHID = uuid.uuid4().hex, str(uuid.uuid4())


def test_endpoint_urls_and_bare_tokens():
    v1 = CRYPTO.endpoint_token(UAID, CHID)
    v2 = CRYPTO.endpoint_token(UAID, CHID, b"\x04" + bytes(64))
    for text, bound in ((f"https://push.example/wpush/v1/{v1}", False),
                        (f"https://push.example/wpush/{v1}", False),
                        (f"https://push.example/wpush/v2/{v2}", True), (v1, False), (v2, True)):
        target = parse_target(text, CRYPTO)
        assert (target.kind, target.uaid, target.chid) == ("endpoint", UAID, CHID)
        assert (target.key_digest is not None) is bound


def test_message_ids_and_their_urls():
    mid = CRYPTO.message_id(UAID, CHID, sortkey_timestamp=123)
    for text in (mid, f"https://push.example/m/{mid}"):
        target = parse_target(text, CRYPTO)
        assert (target.kind, target.uaid, target.chid) == ("message", UAID, CHID)
        assert target.sort_key == f"02:123:{CHID}"


@pytest.mark.parametrize("text, reason", [
    (f"https://p/wpush/v1/{TokenCrypto([Fernet.generate_key().decode()]).endpoint_token(UAID, CHID)}",
     "wrong key or tampered token"),
    (f"https://p/wpush/v1/{CRYPTO.endpoint_token(UAID, CHID)[:30]}", "bad token"),
    ("https://p/wpush/v1/%%%", "bad token"),
    (f"https://p/wpush/v2/{CRYPTO.endpoint_token(UAID, CHID)}", "bad endpoint"),
    ("https://p/wpush/v3/abc/def", "bad endpoint"),
    ("https://p/elsewhere", "bad input"),
    ("  ", "bad input"),
])
def test_unreadable_input_is_one_line(text, reason):
    with pytest.raises(BadInput) as caught:
        parse_target(text, CRYPTO)
    message = str(caught.value)
    assert message.startswith(reason) and "\n" not in message


def line(stage, uaid_hash="h", chid=CHID, mid="m1", **fields):
    return json.dumps({"time": "T", "level": "INFO", "logger": "connnode.lifecycle",
                       "message": f"message {stage}", "fields": dict(
                           stage=stage, message_id=mid, uaid_hash=uaid_hash, chid=chid,
                           **fields)})


def test_matches_only_the_subscriptions_lifecycle_lines():
    assert matches(line("acked", code=100), "h", CHID)
    assert matches(line("acked"), "other", CHID) is None
    assert matches(line("acked", chid="x"), "h", CHID) is None
    assert matches('{"logger": "gunicorn.error", "message": "x"}', "h", CHID) is None
    assert matches('"connnode.lifecycle" not json', "h", CHID) is None
    entry = matches(line("accepted", destination="direct", topic=None), "h", CHID)
    assert format_event(entry) == "T  accepted   m1  destination=direct"


def test_follow_reads_whole_lines_and_starts_over_after_truncation(tmp_path):
    path = tmp_path / "cn.log"
    path.write_text(line("delivered", mid="a") + "\n" + line("acked", mid="a")[:20])
    out = io.StringIO()
    assert follow([path], "h", CHID, out, timeout=0.01, poll=0.001) == 0
    assert [row.split()[1] for row in out.getvalue().splitlines()] == ["delivered"]
    path.write_text(line("expired", mid="b") + "\n")  # rotated: shorter than before
    out = io.StringIO()
    follow([path, tmp_path / "missing.log"], "h", CHID, out, timeout=0.01, poll=0.001)
    assert [row.split()[1] for row in out.getvalue().splitlines()] == ["expired"]
