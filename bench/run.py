"""Run benchmarks, print their tables, write ``bench/results/<name>.json``.

    python -m bench.run [name ...] [--repeats N]

Names: idle-memory, direct-push, end-to-end, reconnect-storm, stored-drain (underscores
work too); none = all, in that order. Each benchmark starts what it needs,
repeats its measurement (default 3 times) next to its baseline, and returns
medians; the table shows the connection node, the baseline measured in the
same run, their ratio and the issue's target. Benchmarks print figures and
ratios, they never fail on time: the exit status is non-zero only when a
benchmark could not run.
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
    "reconnect-storm": "bench.reconnect_storm",
    "stored-drain": "bench.stored_drain",
}


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
    header = (f"  {'metric':<46} {'unit':<9} {'connnode':>13} {'baseline':>13} {'ratio':>13}  "
              f"{'target':<9} ")
    lines.append(header)
    lines.append("  " + "-" * (len(header) - 2))
    for row in result["rows"]:
        ratio = row.get("ratio")
        if isinstance(ratio, list):
            ratio = " / ".join(f"{r:.2f}x" if r is not None else "-" for r in ratio)
        else:
            ratio = f"{ratio:.2f}x" if ratio is not None else "-"
        lines.append(f"  {row['metric']:<46} {row['unit']:<9} {number(row['connnode']):>13} "
                     f"{number(row['baseline']):>13} {ratio:>13}  {row.get('target') or '':<9} "
                     f"{verdict(row)}")
    if result.get("plot"):
        lines.append(f"  plot: {result['plot']}")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="benchmarks to run (default: all)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    names = [name.replace("_", "-") for name in args.names] or list(BENCHMARKS)
    unknown = [name for name in names if name not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}")
    started = time.monotonic()
    tables, failed = [], []
    for name in names:
        print(f"== {name} ...", flush=True)
        t0 = time.monotonic()
        try:
            result = importlib.import_module(BENCHMARKS[name]).run(repeats=args.repeats)
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
