"""Unit tests for connnode.db.rotation (PROTOCOL.md 7.1, 7.2)."""
import calendar

import pytest

from connnode.db.rotation import TableRotation, shift_month, table_name


def at(year, month, day, hour=0, minute=0, second=0):
    """UTC epoch seconds."""
    return calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))


class FakeTables:
    """ensure_table stand-in: records every call and what was valid at the time."""

    def __init__(self):
        self.calls = []
        self.rotation = None

    def __call__(self, name):
        valid_then = self.rotation.is_valid(name) if self.rotation else None
        self.calls.append((name, valid_then))

    @property
    def names(self):
        return [name for name, _ in self.calls]

    def clear(self):
        self.calls.clear()


@pytest.fixture
def tables():
    return FakeTables()


@pytest.fixture
def rotation(tables):
    rot = TableRotation("message", tables)
    tables.rotation = rot
    return rot


# -- names ---------------------------------------------------------------------------------

def test_table_name_format():
    assert table_name("message", 2024, 6) == "message_2024_06"
    assert table_name("message", 2024, 12) == "message_2024_12"
    assert table_name("msg_x", 987, 1) == "msg_x_0987_01"


@pytest.mark.parametrize("year,month,delta,expected", [
    (2024, 6, 0, (2024, 6)),
    (2024, 6, 1, (2024, 7)),
    (2024, 6, -1, (2024, 5)),
    (2025, 12, 1, (2026, 1)),
    (2026, 1, -1, (2025, 12)),
    (2024, 1, -13, (2022, 12)),
    (2024, 11, 14, (2026, 1)),
    (2024, 12, -12, (2023, 12)),
])
def test_shift_month(year, month, delta, expected):
    assert shift_month(year, month, delta) == expected


def test_rotation_name_uses_prefix(tables):
    assert TableRotation("pfx", tables).name(2024, 3) == "pfx_2024_03"


# -- start-up ---------------------------------------------------------------------------------

def test_initial_state_is_empty(rotation):
    assert rotation.current is None
    assert rotation.valid == frozenset()
    assert not rotation.is_valid("message_2024_06")


def test_first_check_mid_month(rotation, tables):
    assert rotation.check(at(2024, 6, 15, 12)) is True
    assert rotation.current == "message_2024_06"
    assert rotation.valid == {"message_2024_05", "message_2024_06"}
    assert set(tables.names) == {"message_2024_05", "message_2024_06"}
    assert "message_2024_07" not in tables.names


def test_first_check_on_last_day_creates_next_month(rotation, tables):
    assert rotation.check(at(2024, 6, 30, 8)) is True
    assert rotation.current == "message_2024_06"
    assert rotation.valid == {"message_2024_05", "message_2024_06", "message_2024_07"}
    assert set(tables.names) == {"message_2024_05", "message_2024_06", "message_2024_07"}


def test_ensure_table_called_before_name_becomes_valid(rotation, tables):
    rotation.check(at(2024, 6, 30, 8))
    assert tables.calls  # something was ensured
    for name, valid_then in tables.calls:
        assert valid_then is False, name
        assert rotation.is_valid(name)
    # the current table existed before it was made current
    assert "message_2024_06" in tables.names


def test_no_name_valid_without_ensure(rotation, tables):
    for now in (at(2024, 6, 15), at(2024, 6, 30), at(2024, 7, 1), at(2024, 7, 31)):
        rotation.check(now)
        assert rotation.valid <= set(tables.names)
        assert rotation.current in tables.names


# -- month end ----------------------------------------------------------------------------------

def test_next_month_created_on_last_day_not_before(rotation, tables):
    rotation.check(at(2024, 1, 15))
    tables.clear()

    assert rotation.check(at(2024, 1, 30, 23, 59, 59)) is False
    assert tables.names == []
    assert not rotation.is_valid("message_2024_02")

    assert rotation.check(at(2024, 1, 31, 0, 0, 0)) is False
    assert tables.names == ["message_2024_02"]
    assert tables.calls == [("message_2024_02", False)]
    assert rotation.is_valid("message_2024_02")
    assert rotation.current == "message_2024_01"
    assert rotation.valid == {"message_2023_12", "message_2024_01", "message_2024_02"}


def test_next_month_created_only_once(rotation, tables):
    rotation.check(at(2024, 1, 31, 0))
    tables.clear()
    for minute in range(0, 60, 10):
        assert rotation.check(at(2024, 1, 31, 23, minute)) is False
    assert tables.names == []
    assert rotation.is_valid("message_2024_02")


def test_switch_at_month_start(rotation, tables):
    rotation.check(at(2024, 1, 31, 12))
    tables.clear()

    assert rotation.check(at(2024, 1, 31, 23, 59, 59)) is False
    assert rotation.current == "message_2024_01"

    assert rotation.check(at(2024, 2, 1, 0, 0, 0)) is True
    assert rotation.current == "message_2024_02"
    assert rotation.valid == {"message_2024_01", "message_2024_02"}
    assert not rotation.is_valid("message_2023_12")
    assert not rotation.is_valid("message_2024_03")
    assert "message_2024_02" in tables.names

    assert rotation.check(at(2024, 2, 1, 0, 1)) is False
    assert rotation.check(at(2024, 2, 15)) is False
    assert rotation.current == "message_2024_02"


def test_check_true_only_on_switch(rotation):
    results = [rotation.check(now) for now in (
        at(2024, 3, 10),             # start: a switch
        at(2024, 3, 10, 0, 1),       # same month
        at(2024, 3, 31, 0, 0),       # last day: next month created, no switch
        at(2024, 3, 31, 23, 59, 59),
        at(2024, 4, 1),              # switch
        at(2024, 4, 2),
    )]
    assert results == [True, False, False, False, True, False]


def test_switch_even_if_last_day_was_missed(rotation, tables):
    rotation.check(at(2024, 3, 10))
    tables.clear()
    # process asleep over the last day of March
    assert rotation.check(at(2024, 4, 1, 6)) is True
    assert rotation.current == "message_2024_04"
    assert rotation.valid == {"message_2024_03", "message_2024_04"}
    assert ("message_2024_04", False) in tables.calls  # ensured before it became valid


def test_thirty_day_month(rotation, tables):
    rotation.check(at(2024, 4, 29, 23, 59, 59))
    assert not rotation.is_valid("message_2024_05")
    rotation.check(at(2024, 4, 30))
    assert rotation.is_valid("message_2024_05")


# -- year end ------------------------------------------------------------------------------------

def test_year_end(rotation, tables):
    rotation.check(at(2025, 12, 30, 12))
    assert rotation.current == "message_2025_12"
    assert not rotation.is_valid("message_2026_01")

    tables.clear()
    assert rotation.check(at(2025, 12, 31, 0)) is False
    assert tables.calls == [("message_2026_01", False)]
    assert rotation.valid == {"message_2025_11", "message_2025_12", "message_2026_01"}

    assert rotation.check(at(2026, 1, 1, 0)) is True
    assert rotation.current == "message_2026_01"
    assert rotation.valid == {"message_2025_12", "message_2026_01"}
    assert rotation.is_valid("message_2025_12")
    assert not rotation.is_valid("message_2025_11")


def test_start_on_new_years_day(rotation, tables):
    assert rotation.check(at(2026, 1, 1, 0, 0, 30)) is True
    assert rotation.current == "message_2026_01"
    assert rotation.valid == {"message_2025_12", "message_2026_01"}
    assert set(tables.names) == {"message_2025_12", "message_2026_01"}


def test_start_on_new_years_eve(rotation, tables):
    rotation.check(at(2025, 12, 31, 23, 30))
    assert rotation.valid == {"message_2025_11", "message_2025_12", "message_2026_01"}


# -- February -------------------------------------------------------------------------------------

def test_leap_february(rotation, tables):
    rotation.check(at(2028, 2, 27))
    tables.clear()
    rotation.check(at(2028, 2, 28, 23, 59, 59))
    assert tables.names == []
    assert not rotation.is_valid("message_2028_03")

    rotation.check(at(2028, 2, 29, 0, 0, 0))
    assert tables.names == ["message_2028_03"]
    assert rotation.is_valid("message_2028_03")
    assert rotation.current == "message_2028_02"

    assert rotation.check(at(2028, 3, 1)) is True
    assert rotation.current == "message_2028_03"
    assert rotation.valid == {"message_2028_02", "message_2028_03"}


def test_common_february(rotation, tables):
    rotation.check(at(2027, 2, 27, 23, 59, 59))
    assert not rotation.is_valid("message_2027_03")
    rotation.check(at(2027, 2, 28))
    assert rotation.is_valid("message_2027_03")


# -- failures and is_valid ---------------------------------------------------------------------------

def test_failed_ensure_leaves_state_and_is_retried():
    calls = []
    fail = {"on": "message_2024_03"}

    def ensure(name):
        calls.append(name)
        if name == fail["on"]:
            raise RuntimeError("DescribeTable throttled")

    rot = TableRotation("message", ensure)
    rot.check(at(2024, 2, 10))
    with pytest.raises(RuntimeError):
        rot.check(at(2024, 2, 29, 1))
    assert not rot.is_valid("message_2024_03")
    fail["on"] = None
    rot.check(at(2024, 2, 29, 1, 1))
    assert rot.is_valid("message_2024_03")


def test_failed_switch_keeps_old_month_and_retries():
    state = {"fail": False}

    def ensure(name):
        if state["fail"]:
            raise RuntimeError("down")

    rot = TableRotation("message", ensure)
    rot.check(at(2024, 5, 20))
    state["fail"] = True
    with pytest.raises(RuntimeError):
        rot.check(at(2024, 6, 1))
    assert rot.current == "message_2024_05"
    state["fail"] = False
    assert rot.check(at(2024, 6, 1, 0, 1)) is True
    assert rot.current == "message_2024_06"


def test_is_valid(rotation):
    rotation.check(at(2024, 6, 15))
    assert rotation.is_valid("message_2024_06")
    assert rotation.is_valid("message_2024_05")
    assert not rotation.is_valid("message_2024_04")
    assert not rotation.is_valid("message_2024_07")
    assert not rotation.is_valid("other_2024_06")
    assert not rotation.is_valid("")
    assert not rotation.is_valid(None)


def test_valid_is_replaced_not_mutated(rotation):
    rotation.check(at(2024, 6, 15))
    before = rotation.valid
    rotation.check(at(2024, 6, 30))
    assert isinstance(rotation.valid, frozenset)
    assert before == {"message_2024_05", "message_2024_06"}
    assert rotation.valid is not before
