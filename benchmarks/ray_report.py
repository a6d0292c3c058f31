"""The Markdown tables of docs/BENCHMARKS.md's Ray section, from ray_bench.py's ray.json.

    python3 benchmarks/ray_report.py benchmarks/out/ray/ray.json

Any Python 3 runs it (no third-party module). Two tables:

1. every row: start-up (median of the rounds' medians, and their max), each
   round's median, in-actor load, summed PSS and its ratio to the goal's
   budget, map_batches throughput. The budget is 1.15 x the weights + N x a
   per-process overhead, the overhead taken two ways: the plain actors'
   summed PSS less their N private copies of the weights ("plain - N x W":
   a process that runs the model, forward pass included), and N actors that
   load no model ("no model": imports only).
2. zcwrap against ray-zerocopy, row by row: the two start-ups, the
   difference, and the spread of each way's rounds (max - min), which is the
   noise a difference has to exceed to mean anything.
"""

import json
import sys

NAMES = {"resnet50": "resnet50", "big": "1 GiB", "bert": "BERT-base"}
MIB = 2**20


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    with open(sys.argv[1]) as f:
        data = json.load(f)
    rows = data["rows"]
    baselines = {int(n): b for n, b in data.get("baselines", {}).items()}
    by_key = {(r["model"], r["kind"], r["actors"], r["method"]): r for r in rows}

    print(f"torch {data['torch']}, Ray {data['ray']}, zcwrap {data['zcwrap']}, ray-zerocopy {data['ray_zerocopy']}, "
          f"{data['cpus']} CPUs, {data.get('repeat', 1)} rounds per row")
    print()
    print("| model | kind | N | way | start-up, median / max (s) | rounds' medians (s) | in-actor load, median / max (ms) "
          "| summed PSS (MiB) | PSS / budget (plain - N x W) | PSS / budget (no model) | map_batches rows/s |")
    print("| --- | --- | ---: | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        head = f"| {NAMES.get(r['model'], r['model'])} | {r['kind']} | {r['actors']} | {r['method']} |"
        if "startup_median_s" not in r:
            print(f"{head} failed: {r.get('error', '?')} | | | | | | |")
            continue
        n, weights = r["actors"], r["weights_bytes"]
        ratio_plain = ratio_nothing = ""
        if r["method"] == "zcwrap":
            plain = by_key.get((r["model"], r["kind"], n, "plain"))
            if plain and "summed_pss_bytes" in plain:
                overhead = plain["summed_pss_bytes"] - n * weights
                ratio_plain = f"{r['summed_pss_bytes'] / (1.15 * weights + overhead):.2f}"
            if n in baselines:
                ratio_nothing = f"{r['summed_pss_bytes'] / (1.15 * weights + baselines[n]['summed_pss_bytes']):.2f}"
        rounds = " ".join(f"{x['startup_median_s']:.2f}" for x in r.get("runs", []))
        rate = r.get("rows_per_s")
        print(f"{head} {r['startup_median_s']:.2f} / {r['startup_max_s']:.2f} | {rounds} | "
              f"{r['load_median_s'] * 1e3:.1f} / {r['load_max_s'] * 1e3:.1f} | {r['summed_pss_bytes'] / MIB:.0f} | "
              f"{ratio_plain} | {ratio_nothing} | {'' if rate is None else f'{rate:.2f}'} |")

    print()
    print("| model | kind | N | zcwrap start-up (s) | ray-zerocopy start-up (s) | zcwrap - ray-zerocopy (s) "
          "| spread of the rounds, zcwrap / ray-zerocopy (s) | zcwrap slower beyond the spread |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |")
    for r in rows:
        if r["method"] != "zcwrap":
            continue
        other = by_key.get((r["model"], r["kind"], r["actors"], "ray-zerocopy"))
        head = f"| {NAMES.get(r['model'], r['model'])} | {r['kind']} | {r['actors']} |"
        if "startup_median_s" not in r or other is None or "startup_median_s" not in other:
            why = other.get("error", "no row") if other else "no row"
            print(f"{head} {r.get('startup_median_s', float('nan')):.2f} | ray-zerocopy failed: {why} | | | |")
            continue

        def spread(row):
            medians = [x["startup_median_s"] for x in row.get("runs", [])]
            return max(medians) - min(medians) if medians else 0.0

        diff = r["startup_median_s"] - other["startup_median_s"]
        noise = max(spread(r), spread(other))
        verdict = "no (faster)" if diff <= 0 else ("no (within the spread)" if diff <= noise else "yes")
        print(f"{head} {r['startup_median_s']:.2f} | {other['startup_median_s']:.2f} | {diff:+.2f} | "
              f"{spread(r):.2f} / {spread(other):.2f} | {verdict} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
