"""connnode: a self-hostable WebPush push service (connection node + endpoint node)."""

__version__ = "0.1.0"
