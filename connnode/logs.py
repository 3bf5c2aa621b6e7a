"""One JSON object per log line (time, level, logger, message, fields), so
log shippers need no parsing rules. Extra fields go in ``extra={"fields": {...}}``.
"""
import logging
import sys
import time

import simplejson as json
from gunicorn.glogging import Logger

# Our lines carry no thread or process names, and under gevent naming the
# "thread" of a log record builds a _DummyThread for every greenlet that
# logs (one per connection that closes, for example).
logging.logThreads = False
logging.logMultiprocessing = False


class JsonFormatter(logging.Formatter):
    def format(self, record):
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                    + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if fields:
            entry["fields"] = fields
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def setup_logging(level="INFO", stream=None):
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("botocore", "boto3", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def gunicorn_logconfig(level="INFO"):
    """gunicorn's ``logconfig_dict``: its own lines (gunicorn.error) and ours
    as JSON on stdout; per-request access lines off (a push service would
    write thousands a second)."""
    handler = {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stdout"}
    quiet = {"level": "WARNING", "handlers": [], "propagate": True}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "connnode.logs.JsonFormatter"}},
        "handlers": {"console": handler, "error_console": handler},
        "root": {"level": level, "handlers": ["console"]},
        "loggers": {
            "gunicorn.error": {"level": level, "handlers": [], "propagate": True},
            "gunicorn.access": quiet,
            "geventwebsocket.handler": quiet,
            "botocore": quiet,
            "boto3": quiet,
            "urllib3": quiet,
        },
    }



class GunicornLogger(Logger):
    """gunicorn's logger (``logger_class`` of both nodes' gunicorn configs)
    without per-request access lines unless ``accesslog`` is set: gunicorn
    builds each request's access-log atoms (a dict of ~30 entries) whenever
    a ``logconfig_dict`` is given, even with the access lines routed nowhere,
    ~2 % of an endpoint worker's CPU at saturation (py-spy)."""

    _access_wanted = False

    def setup(self, cfg):
        super().setup(cfg)
        self._access_wanted = bool(cfg.accesslog)

    @property
    def access_log_enabled(self):
        return self._access_wanted

    def access(self, resp, req, environ, request_time):
        if self._access_wanted:
            super().access(resp, req, environ, request_time)
