"""Unit tests for connnode.logs.JsonFormatter."""
import calendar
import datetime
import io
import logging
import sys

import pytest
import simplejson

from connnode.logs import JsonFormatter, setup_logging

CREATED = calendar.timegm((2024, 6, 10, 7, 8, 9, 0, 0, 0)) + 0.25


def make_record(message="hello %s", args=("world",), level=logging.INFO, name="connnode.test",
                exc_info=None, **extra):
    record = logging.LogRecord(name, level, __file__, 10, message, args, exc_info)
    record.created = CREATED
    record.msecs = 250.0
    for key, value in extra.items():
        setattr(record, key, value)
    return record


def render(record):
    return JsonFormatter().format(record)


def test_output_is_one_json_line():
    line = render(make_record())
    assert "\n" not in line
    entry = simplejson.loads(line)
    assert isinstance(entry, dict)


def test_keys_and_values():
    entry = simplejson.loads(render(make_record()))
    assert set(entry) == {"time", "level", "logger", "message"}
    assert entry["time"] == "2024-06-10T07:08:09.250Z"
    assert entry["level"] == "INFO"
    assert entry["logger"] == "connnode.test"
    assert entry["message"] == "hello world"


def test_level_names():
    for level, name in ((logging.DEBUG, "DEBUG"), (logging.WARNING, "WARNING"),
                        (logging.ERROR, "ERROR"), (logging.CRITICAL, "CRITICAL")):
        assert simplejson.loads(render(make_record(level=level)))["level"] == name


def test_multiline_message_stays_one_line():
    line = render(make_record("first\nsecond \"quoted\"", ()))
    assert "\n" not in line
    assert simplejson.loads(line)["message"] == "first\nsecond \"quoted\""


def test_fields_passthrough():
    fields = {"uaid": "0252c2d1f973485eb519a639b7d01b80", "code": 4774, "ok": True,
              "nested": {"a": [1, 2]}}
    entry = simplejson.loads(render(make_record(fields=fields)))
    assert entry["fields"] == fields


def test_empty_fields_omitted():
    assert "fields" not in simplejson.loads(render(make_record(fields={})))
    assert "fields" not in simplejson.loads(render(make_record(fields=None)))


def test_non_json_field_values_become_strings():
    when = datetime.datetime(2024, 6, 10, 7, 8, 9)
    entry = simplejson.loads(render(make_record(fields={"when": when, "raw": b"x"})))
    assert entry["fields"]["when"] == str(when)


def test_exception_text_included():
    try:
        raise KeyError("missing-thing")
    except KeyError:
        record = make_record("failed", (), level=logging.ERROR, exc_info=sys.exc_info())
    line = render(record)
    assert "\n" not in line
    entry = simplejson.loads(line)
    assert entry["message"] == "failed"
    assert "Traceback" in entry["exception"]
    assert "KeyError" in entry["exception"]
    assert "missing-thing" in entry["exception"]


def test_no_exception_key_without_exc_info():
    assert "exception" not in simplejson.loads(render(make_record()))


def test_through_a_real_logger():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("connnode.test_logs.real")
    logger.propagate = False
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    try:
        logger.info("user %s gone", "u1", extra={"fields": {"code": 106}})
        try:
            1 / 0
        except ZeroDivisionError:
            logger.exception("boom")
    finally:
        logger.handlers[:] = []
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    first, second = (simplejson.loads(line) for line in lines)
    assert first["message"] == "user u1 gone"
    assert first["fields"] == {"code": 106}
    assert first["logger"] == "connnode.test_logs.real"
    assert second["level"] == "ERROR"
    assert "ZeroDivisionError" in second["exception"]


def test_setup_logging_installs_formatter():
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    noisy = {name: logging.getLogger(name).level for name in ("botocore", "boto3", "urllib3")}
    stream = io.StringIO()
    try:
        setup_logging("WARNING", stream=stream)
        assert root.level == logging.WARNING
        assert len(root.handlers) == 1
        assert isinstance(root.handlers[0].formatter, JsonFormatter)
        logging.getLogger("connnode.test_logs.setup").warning("careful")
        logging.getLogger("connnode.test_logs.setup").info("not shown")
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
        for name, level in noisy.items():
            logging.getLogger(name).setLevel(level)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    assert simplejson.loads(lines[0])["message"] == "careful"


@pytest.mark.parametrize("accesslog,built", [(None, False), ("-", True)])
def test_gunicorn_logger_builds_access_lines_only_when_asked(monkeypatch, accesslog, built):
    from gunicorn.config import Config

    from connnode.logs import GunicornLogger, gunicorn_logconfig

    cfg = Config()
    cfg.set("logconfig_dict", gunicorn_logconfig())
    cfg.set("accesslog", accesslog)
    logger = GunicornLogger(cfg)
    atoms = []
    monkeypatch.setattr(logger, "atoms", lambda *args: atoms.append(args) or {})
    logger.access(None, None, {}, None)
    assert logger.access_log_enabled is built and bool(atoms) is built
