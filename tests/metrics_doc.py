"""The metrics the service documents: README.md's "Metrics (StatsD)" table,
parsed, so tests can hold what the daemon keeps and what the Grafana
dashboard queries against the documentation.

A row's name cell holds one or more names in backticks (`a.b.draft01` /
`draft02` is two names: a bare word replaces the last part of the name
before it; `<enc>` is any name part). Its tags cell holds `connection` (the
tags every connection metric carries) and tag names in backticks, with the
allowed values after `=` where the table lists them (`vapid=1\\|2`)."""
import re
from dataclasses import dataclass, field
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"
SECTION = "### Metrics (StatsD)"
CONNECTION_TAGS = ("ua_os_family", "ua_browser_family", "host")

_CELL_SPLIT = re.compile(r"(?<!\\)\|")
_TICKED = re.compile(r"`([^`]+)`")
_PLACEHOLDER = re.compile(r"<[a-z_]+>")


@dataclass
class Documented:
    names: list  # the names as the table writes them
    kind: str  # "counter" or "timer"
    tags: dict = field(default_factory=dict)  # tag name -> allowed values (None: any)
    patterns: list = field(default_factory=list)

    def matches(self, name):
        return any(pattern.fullmatch(name) for pattern in self.patterns)

    def tags_problem(self, tags):
        """Why ``tags`` (name -> value) are not what this row documents, or None."""
        if set(tags) != set(self.tags):
            return f"tags {sorted(tags)} but documented {sorted(self.tags)}"
        for name, allowed in self.tags.items():
            if allowed is not None and tags[name] not in allowed:
                return f"tag {name}={tags[name]} not one of {sorted(allowed)}"
        return None


def _names(cell):
    names = []
    for token in _TICKED.findall(cell):
        if "." not in token and names:
            token = names[-1].rsplit(".", 1)[0] + "." + token
        names.append(token)
    return names


def _pattern(name):
    parts = _PLACEHOLDER.split(name)
    return re.compile("[A-Za-z0-9_-]+".join(re.escape(part) for part in parts))


def _tags(cell):
    tags = {}
    if "connection" in _TICKED.sub("", cell):
        tags.update({name: None for name in CONNECTION_TAGS})
    for token in _TICKED.findall(cell):
        name, _, values = token.partition("=")
        tags[name] = set(values.replace("\\|", "|").split("|")) if values else None
    return tags


def documented_metrics(readme=README):
    """Every row of the README's metrics table, in order."""
    text = Path(readme).read_text(encoding="utf-8")
    start = text.index(SECTION) + len(SECTION)
    end = text.find("\n#", start)
    rows = []
    for line in text[start:end if end != -1 else None].splitlines():
        line = line.strip()
        if not line.startswith("| `"):
            continue
        cells = [cell.strip() for cell in _CELL_SPLIT.split(line.strip("|"))]
        names = _names(cells[0])
        kind = "timer" if cells[1].startswith("timer") else "counter"
        rows.append(Documented(names, kind, _tags(cells[2]),
                               [_pattern(name) for name in names]))
    if not rows:
        raise AssertionError(f"no metrics table found under {SECTION!r} in {readme}")
    return rows


def find(name, rows=None):
    """The documented row of metric ``name`` (untagged, no prefix), or None."""
    for row in rows if rows is not None else documented_metrics():
        if row.matches(name):
            return row
    return None


def split_key(key):
    """``name;a=1;b=2`` -> (``name``, {"a": "1", "b": "2"})."""
    name, *pairs = key.split(";")
    return name, dict(pair.split("=", 1) for pair in pairs)
