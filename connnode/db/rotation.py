"""Monthly message tables (PROTOCOL.md 7.1, 7.2): which table is current and
which tables are valid, and the timer that moves both at month ends.

The state is two immutable values swapped whole, so greenlets that read them
never see a half-updated set.
"""
import logging
import time

log = logging.getLogger(__name__)


def table_name(prefix, year, month):
    return f"{prefix}_{year:04d}_{month:02d}"


def shift_month(year, month, delta):
    index = year * 12 + (month - 1) + delta
    return index // 12, index % 12 + 1


class TableRotation:
    """``current`` and ``valid`` message table names, kept up to date by ``check``.

    ``ensure_table(name)`` creates a table when missing (6.5); it is called
    before a name becomes current or valid.
    """

    def __init__(self, prefix, ensure_table):
        self.prefix = prefix
        self.ensure_table = ensure_table
        self.current = None
        self.valid = frozenset()
        self._month = None

    def name(self, year, month):
        return table_name(self.prefix, year, month)

    def check(self, now=None):
        """One pass of 7.2. Returns True when the current table changed."""
        now = time.time() if now is None else now
        today = time.gmtime(now)
        this = (today.tm_year, today.tm_mon)
        switched = False
        if this != self._month:
            current = self.name(*this)
            last = self.name(*shift_month(*this, -1))
            self.ensure_table(last)
            self.ensure_table(current)
            self.current, self.valid, self._month = current, frozenset({last, current}), this
            switched = True
            log.info("message table is now %s", current)
        tomorrow = time.gmtime(now + 86400)
        if (tomorrow.tm_year, tomorrow.tm_mon) != this:
            upcoming = self.name(*shift_month(*this, 1))
            if upcoming not in self.valid:
                self.ensure_table(upcoming)
                self.valid = self.valid | {upcoming}
                log.info("created next month's table %s", upcoming)
        return switched

    def is_valid(self, name):
        return name in self.valid

    def run_forever(self, interval):
        """The rotation timer: spawn it in a greenlet. Errors are logged and
        the next pass tries again."""
        while True:
            time.sleep(interval)
            try:
                self.check()
            except Exception:  # noqa: BLE001 - a failed pass must not stop the timer
                log.exception("table rotation check failed")
