"""The local registry (PROTOCOL.md 3.1): uaid -> the one connection in this
process that holds it. The router API finds sessions here; hello claims here
*before* the router record names this node, which is what makes the
endpoint's "404 means gone" rule safe (section 5)."""


class Registry:
    __slots__ = ("_holders",)

    def __init__(self):
        self._holders = {}

    def __len__(self):
        return len(self._holders)

    def __iter__(self):
        return iter(list(self._holders.values()))

    def get(self, uaid):
        return self._holders.get(uaid)

    def claim(self, session):
        """Make ``session`` the holder of its uaid. Returns (claimed, previous
        holder or None); not claimed when the holder is as new or newer."""
        current = self._holders.get(session.uaid)
        if current is session:
            return True, None
        if current is not None and current.connected_at >= session.connected_at:
            return False, None
        self._holders[session.uaid] = session
        return True, current

    def release(self, session):
        """Forget ``session`` if it is the holder of its uaid."""
        if session.uaid is not None and self._holders.get(session.uaid) is session:
            del self._holders[session.uaid]
