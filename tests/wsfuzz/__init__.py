"""A seeded, bounded WebSocket fuzzer for the connection node.

``tests/integration/test_ws_fuzz.py`` starts one gunicorn connection node
(one worker) and opens thousands of connections to it with a hand-written
RFC 6455 client (raw sockets: the opening handshake, masked frames, the
server's frames read back), all driven by ``random.Random(FUZZ_SEED)``. Most
connections send a hello, a long run of valid frames the node must answer
without closing (``content``), then one bad frame (``frames``); some send a
bad frame before any hello; some send a malformed opening handshake
(``wire.HANDSHAKES``). ``runner`` plays one connection and records what the
node did; the test checks the close codes, the handshake answers, the node's
log and processes, and that a normal client still works afterwards.

The modules: ``content`` (random JSON content and the valid messages),
``wire`` (the client socket, the upgrade request, the malformed handshakes),
``frames`` (the bad-frame terminals), ``runner`` (one connection, and the
plan of all of them).

Replaying: each connection draws its bytes from its own generator, seeded
from the master one, so what it sends does not depend on scheduling.

* ``FUZZ_SEED=<int>`` changes the whole sequence (default 20240613);
* ``FUZZ_ONLY=<index>[,<index>...]`` replays only the connections the
  summary names (``#<index>``), with the bytes they had in the full run;
* ``FUZZ_CONNECTIONS=<n>`` sets how many connections are planned (default
  4000; the frame-count floor is not checked with ``FUZZ_ONLY``).

For example ``FUZZ_ONLY=1234 .venv/bin/pytest -q -s tests/integration/test_ws_fuzz.py``.
"""
