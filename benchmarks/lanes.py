#!/usr/bin/env python3
"""Print the headline figures of several lanes' results.json side by side.

Usage: lanes.py LANE=benchmarks/out/LANE/results.json ... (benchmarks/run.sh
calls it after measuring every lane in one run). Standard library only.
"""

import json
import sys

GIB, MIB = 1 << 30, 1 << 20


def size(v):
    return f"{v / GIB:.2f} GiB" if v >= GIB else f"{v / MIB:.0f} MiB"


ROWS = [
    ("LibTorch", lambda r: r["machine"]["zcwrap"].split("libtorch")[-1].strip(" )") or "?"),
    ("P1 torch::jit::load 1 GiB / unwrap, fresh worker",
     lambda r: f"{r['p1']['fresh_process']['median']['load_over_unwrap']:.0f}"),
    ("P1 the same after LibTorch's set-up (--warm-up)",
     lambda r: f"{r['p1']['warmed_up']['median']['load_over_unwrap']:.0f}"),
    ("P1 unwrap 1 GiB, fresh worker",
     lambda r: f"{r['p1']['fresh_process']['median']['unwrap_1g_ms']:.1f} ms"),
    ("P1 unwrap 1 GiB / unwrap 1 MiB",
     lambda r: f"{r['p1']['fresh_process']['median']['unwrap_1g_over_1m']:.2f}"),
    ("P2 summed PSS, 8 zcwrap workers (1 GiB)", lambda r: size(r["p2"]["stack_1g"]["median"]["zc_pss_sum"])),
    ("P2 summed PSS, 8 torch::jit::load workers", lambda r: size(r["p2"]["stack_1g"]["median"]["base_pss_sum"])),
    ("P2 zcwrap / torch::jit::load (goal <= 0.2)", lambda r: f"{r['p2']['stack_1g']['median']['pss_ratio']:.3f}"),
    ("P2 of the 1.15 x weights + overhead budget", lambda r: f"{r['p2']['zc_over_budget']:.2f}"),
    ("P2 per-worker PSS outside the blob", lambda r: size(r["p2"]["stack_1g"]["median"]["other_pss_per_worker"])),
    ("P3 pack 1 GiB", lambda r: f"{r['p3']['median']['pack_s']:.2f} s"),
    ("P3 pack / (cp + sync) (goal <= 1.5), over the old blob", lambda r: f"{r['p3']['median']['pack_over_cp_sync']:.2f}"),
    ("P3 the same, to a new file", lambda r: f"{r['p3']['median'].get('pack_new_over_cp_sync_new', 0):.2f}"),
    ("P3 pack peak RSS", lambda r: size(r["p3"]["median"].get("pack_peak_rss", 0))),
    ("cold start: first result, page cache warm",
     lambda r: f"{r['cold']['median']['stack_1g/none/warm']['first_result_ms']:.0f} ms"),
]


def main():
    lanes = []
    for arg in sys.argv[1:]:
        name, _, path = arg.partition("=")
        with open(path) as f:
            lanes.append((name, json.load(f)))
    print("| | " + " | ".join(name for name, _ in lanes) + " |")
    print("| --- |" + " ---: |" * len(lanes))
    for label, get in ROWS:
        cells = []
        for _, r in lanes:
            try:
                cells.append(get(r))
            except (KeyError, TypeError, ZeroDivisionError):
                cells.append("n/a")
        print(f"| {label} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
