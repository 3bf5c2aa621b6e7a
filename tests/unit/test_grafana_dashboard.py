"""conf/grafana-dashboard.json queries only metrics the service emits: every
Graphite series it names maps back (through the StatsD daemon's default
Graphite namespace) to a metric of README.md's metrics table, of the right
kind, and every tag it filters, groups or aliases by is one that metric
documents. And it covers what issue 12 asks for."""
import json
import re
from pathlib import Path

import pytest

from tests.metrics_doc import documented_metrics, find

DASHBOARD = Path(__file__).resolve().parents[2] / "conf" / "grafana-dashboard.json"

# The per-flush statistics the StatsD daemon writes for a timer
# (stats.timers.<name>.<statistic>), percentile ones like upper_90 included.
TIMER_STATS = re.compile(r"(count|count_ps|lower|upper|mean|median|std|sum|sum_squares)"
                         r"(_\d+)?")
SERIES_BY_TAG = re.compile(r"seriesByTag\(([^()]*)\)")
TAG_ARGS = re.compile(r"(?:groupByTags|aliasByTags)\(")
QUOTED = re.compile(r"'([^']*)'|\"([^\"]*)\"")
PLAIN_PATH = re.compile(r"(?<![\w.'\"=])(stats(?:_counts)?\.[A-Za-z0-9_.\-]+)")
# Function arguments that are not tag names: groupByTags' callback, and
# the tag "name" itself.
NOT_TAGS = {"name", "sum", "average", "avg", "max", "min", "count", "last", "median"}


def dashboard():
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def targets(board):
    found = []
    for panel in board["panels"]:
        for panel_in in [panel] + panel.get("panels", []):
            for target in panel_in.get("targets", []):
                if not target.get("hide"):
                    found.append((panel_in["title"], target["target"]))
    return found


def metric_of(series):
    """(metric name, kind) of a Graphite series name the daemon writes."""
    if series.startswith("stats.timers."):
        name, _, statistic = series[len("stats.timers."):].rpartition(".")
        assert TIMER_STATS.fullmatch(statistic), f"{series}: no timer statistic {statistic!r}"
        return name, "timer"
    if series.startswith("stats_counts."):
        return series[len("stats_counts."):], "counter"
    assert series.startswith("stats."), series
    return series[len("stats."):], "counter"


def quoted(text):
    return [a or b for a, b in QUOTED.findall(text)]


def call_args(text, start):
    """The text of the call's arguments from ``start`` (just after its '(')."""
    depth = 1
    for index in range(start, len(text)):
        depth += {"(": 1, ")": -1}.get(text[index], 0)
        if depth == 0:
            return text[start:index]
    raise AssertionError(f"unbalanced parentheses in {text}")


def queried(target):
    """[(metric, kind, tag names used)] of one Graphite target."""
    series = []
    for match in SERIES_BY_TAG.finditer(target):
        expressions = quoted(match.group(1))
        names = [e.split("=", 1)[1] for e in expressions if e.startswith("name=")]
        assert len(names) == 1, f"{target}: seriesByTag needs one exact name= ({expressions})"
        used = {re.split(r"!?=~?", e, 1)[0] for e in expressions if not e.startswith("name=")}
        series.append((names[0], used))
    plain = PLAIN_PATH.findall(SERIES_BY_TAG.sub("", target))
    series += [(path, set()) for path in plain]
    assert series, f"no series in {target}"
    # Tags grouped or aliased by anywhere in the target.
    grouped = set()
    for match in TAG_ARGS.finditer(target):
        args = call_args(target, match.end())
        grouped |= {arg for arg in quoted(SERIES_BY_TAG.sub("", args)) if arg not in NOT_TAGS}
    return [(*metric_of(name), used | grouped) for name, used in series]


def test_dashboard_is_a_grafana_dashboard_on_graphite():
    board = dashboard()
    assert board["title"] and board["uid"] and board["panels"]
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        assert panel["datasource"]["type"] == "graphite", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["type"] == "graphite"
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["query"] == "graphite"


def test_every_queried_metric_is_one_the_service_emits():
    rows = documented_metrics()
    for title, target in targets(dashboard()):
        for name, kind, tags in queried(target):
            row = find(name, rows)
            assert row is not None, f"{title!r}: {name} is not in README.md's metrics table"
            assert row.kind == kind, f"{title!r}: {name} is a {row.kind}, queried as a {kind}"
            assert tags <= set(row.tags), f"{title!r}: {name} has no tags {tags - set(row.tags)}"
            if row.tags:
                assert "seriesByTag" in target, f"{title!r}: tagged {name} needs seriesByTag"


def test_dashboard_covers_what_operators_watch():
    uses = {}
    for title, target in targets(dashboard()):
        for name, kind, tags in queried(target):
            uses.setdefault(name, set()).update(tags)
    assert "ua.command.hello" in uses  # hellos /s (connections opened)
    assert "ua.connection.lifespan" in uses  # connections closed, lifespan
    assert "destination" in uses["notification.message.success"]  # notifications /s
    assert "code" in uses["notification.message.error"]  # errors by code
    assert "notification.request_time" in uses  # request time
    assert "megaphone.poll.error" in uses  # broadcasts


@pytest.mark.parametrize("target, expected", [
    ("aliasByTags(groupByTags(seriesByTag('name=stats.a.b', 'x=1'), 'sum', 'y'), 'y')",
     [("a.b", "counter", {"x", "y"})]),
    ("alias(stats.timers.a.b.upper_90, 'p90')", [("a.b", "timer", set())]),
    ("sumSeries(stats_counts.c)", [("c", "counter", set())]),
])
def test_queried(target, expected):
    assert queried(target) == expected


def test_an_unknown_metric_is_caught():
    assert find("ua.command.hello_world") is None
    assert find("updates.notification.encoding.aes128gcm") is not None
    with pytest.raises(AssertionError):
        metric_of("stats.timers.ua.connection.lifespan.p99")
