"""Request headers parsed without the ``email`` package, for pywsgi handlers.

Why: gevent's pywsgi parses every request's headers with
``http.client.parse_headers``, which feeds them through the ``email``
package's feed parser: 13.7 % of a connection worker's samples under the
``direct-push`` load (py-spy) and about 8 % of an endpoint worker's. A
router PUT /push or an endpoint POST has a handful of short headers.

``RequestHeaders`` reads the header lines from the request's buffered
reader with the same bounds as ``http.client`` (lines of at most 65,536
bytes, at most 100 headers) and offers what pywsgi and gunicorn use of the
parsed message: ``get`` (case-insensitive, the first value), ``getheader``,
``__delitem__`` (every value of a name), ``items()``, ``headers`` (the
``"Name: value\\r\\n"`` lines pywsgi builds the environ from),
``typeheader`` and ``status`` (empty, or why the head was refused, which
pywsgi answers with 400). Obsolete line folding (a line starting with a
space or tab) continues the previous header. Unlike the ``email`` parser,
a header line without a colon refuses the request (400) instead of ending
the headers there.

``FastHeadersHandler`` is the mixin that makes a ``WSGIHandler`` use it:
the router's and the endpoint's handlers, and the connection node's public
handler, where the ``email`` parser was 5.6 % of the worker's samples in the
reconnect storm (a handshake per reconnect). A refused head is answered 400
there as every other malformed handshake (PROTOCOL.md 2.1): one INFO line,
no traceback.
"""
MAX_LINE = 65536
MAX_HEADERS = 100


class RequestHeaders:
    __slots__ = ("_items", "status")

    def __init__(self, items=(), status=""):
        self._items = list(items)  # [(name as sent, value)], in order
        self.status = status

    @classmethod
    def read(cls, rfile):
        items = []
        while True:
            line = rfile.readline(MAX_LINE + 1)
            if len(line) > MAX_LINE:
                return cls(status="Line too long")
            if line in (b"\r\n", b"\n", b""):
                return cls(items)
            if line[:1] in b" \t" and items:  # obsolete line folding
                name, value = items[-1]
                items[-1] = (name, f"{value} {line.strip().decode('latin-1')}")
                continue
            name, sep, value = line.decode("latin-1").partition(":")
            if not sep or not name or name != name.strip():
                return cls(status="Malformed header line")
            items.append((name, value.strip()))
            if len(items) > MAX_HEADERS:
                return cls(status=f"More than {MAX_HEADERS} headers")

    def get(self, name, default=None):
        name = name.lower()
        for key, value in self._items:
            if key.lower() == name:
                return value
        return default

    getheader = get

    def __contains__(self, name):
        return self.get(name) is not None

    def __delitem__(self, name):
        name = name.lower()
        self._items = [item for item in self._items if item[0].lower() != name]

    def items(self):
        return list(self._items)

    @property
    def headers(self):
        return [f"{name}: {value}\r\n" for name, value in self._items]

    @property
    def typeheader(self):
        return self.get("content-type")


class FastHeadersHandler:
    """A mixin for ``gevent.pywsgi.WSGIHandler`` subclasses."""

    def MessageClass(self, rfile, *_args):  # noqa: N802 - pywsgi's name
        return RequestHeaders.read(rfile)
