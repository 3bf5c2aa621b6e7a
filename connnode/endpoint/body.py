"""Bounded reads of a request body, for every endpoint route that takes one
(POST /wpush, PUT /v1/broadcasts): never more than ``limit + 1`` bytes, so
an unbounded (chunked) body is never buffered and "too large" can still be
told apart from "exactly at the limit"."""


def read_body(stream, limit):
    """At most ``limit + 1`` bytes of ``stream`` (enough to tell "too large")."""
    chunks = []
    size = 0
    while size <= limit:
        chunk = stream.read(limit + 1 - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)
