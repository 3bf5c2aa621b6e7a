"""Run benchmarks, print their tables, write ``bench/results/<name>.json``.

    python -m bench.run [name ...] [--repeats N]

Names: idle-memory, direct-push, end-to-end, cpu-ratio, scaling,
reconnect-storm, stored-drain, broadcast-fanout, c100k (underscores work
too); none = all in that order except the OPTIONAL ones (c100k: run it by
name). Each benchmark starts what it needs, repeats its measurement (default
3 times; c100k once) next to its baseline, and returns medians; the table
shows the connection node, the baseline measured in the same run, their
ratio and the issue's target. Benchmarks print figures and ratios, they
never fail on time: the exit status is non-zero only when a benchmark could
not run.
"""
import argparse
import importlib
import sys
import time
import traceback

from bench.common import write_result

BENCHMARKS = {
    "idle-memory": "bench.idle_memory",
    "direct-push": "bench.direct_push",
    "end-to-end": "bench.end_to_end",
    "cpu-ratio": "bench.cpu_ratio",
    "scaling": "bench.scaling",
    "reconnect-storm": "bench.reconnect_storm",
    "stored-drain": "bench.stored_drain",
    "broadcast-fanout": "bench.broadcast_fanout",
    "c100k": "bench.c100k",
}

#: Run only when named (``make bench BENCH=c100k``): c100k alone needs the
#: whole machine for ~10 minutes, past the budget of a plain ``make bench``.
OPTIONAL = frozenset({"c100k"})


def number(value):
    if value is None:
        return "-"
    if isinstance(value, (list, tuple)):
        return " / ".join(number(item) for item in value)
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    magnitude = abs(value)
    if magnitude >= 100:
        return f"{value:,.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def verdict(row):
    if row.get("met") is None:
        return ""
    return "met" if row["met"] else "MISSED"


def table(result):
    lines = [f"{result['name']}  ({result['repeats']} repeats, {result.get('elapsed_s', 0):.0f} s; "
             f"medians)"]
    header = (f"  {'metric':<52} {'unit':<9} {'connnode':>13} {'baseline':>13} {'ratio':>13}  "
              f"{'target':<9} ")
    lines.append(header)
    lines.append("  " + "-" * (len(header) - 2))
    for row in result["rows"]:
        ratio = row.get("ratio")
        if isinstance(ratio, list):
            ratio = " / ".join(f"{r:.2f}x" if r is not None else "-" for r in ratio)
        else:
            ratio = f"{ratio:.2f}x" if ratio is not None else "-"
        lines.append(f"  {row['metric']:<52} {row['unit']:<9} {number(row['connnode']):>13} "
                     f"{number(row['baseline']):>13} {ratio:>13}  {row.get('target') or '':<9} "
                     f"{verdict(row)}")
    if result.get("plot"):
        lines.append(f"  plot: {result['plot']}")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="benchmarks to run (default: all)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="default: the benchmark's own (3; c100k: 1)")
    args = parser.parse_args(argv)
    names = ([name.replace("_", "-") for name in args.names]
             or [name for name in BENCHMARKS if name not in OPTIONAL])
    unknown = [name for name in names if name not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}")
    started = time.monotonic()
    tables, failed = [], []
    for name in names:
        print(f"== {name} ...", flush=True)
        t0 = time.monotonic()
        try:
            module = importlib.import_module(BENCHMARKS[name])
            result = module.run() if args.repeats is None else module.run(repeats=args.repeats)
        except Exception:  # noqa: BLE001 - report it and go on with the others
            traceback.print_exc()
            failed.append(name)
            continue
        result["elapsed_s"] = round(time.monotonic() - t0, 1)
        path = write_result(name, result)
        text = table(result)
        tables.append(text)
        print(text)
        print(f"  results: {path}", flush=True)
    if len(tables) > 1:
        print("\n== summary")
        print("\n\n".join(tables))
    print(f"\n{len(tables)} benchmark(s) run in {time.monotonic() - started:.0f} s"
          + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
