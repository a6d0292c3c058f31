#!/usr/bin/env python3
"""Measure zcwrap's goals P1-P3 and cold start; write results.json and
results.md into the output folder. Run through benchmarks/run.sh, which
builds zcwrap and generates the models first.

Every figure comes from `zcwrap bench --json` (or, for P3, timing
`zcwrap pack` and `cp`). Ratios are taken within one run, where both sides
ran back to back, then the median over runs is reported: the machines this
runs on are noisy, and a ratio of medians taken minutes apart would mix in
the drift.

Standard library only: LibTorch runs inside zcwrap, not here.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

GIB = 1 << 30
MIB = 1 << 20


def log(*args):
    print(*args, file=sys.stderr, flush=True)


class Bench:
    def __init__(self, zcwrap, out):
        self.zcwrap = zcwrap
        self.out = out

    def path(self, name):
        return os.path.join(self.out, name)

    def run(self, config, *args):
        cmd = [self.zcwrap, "bench", self.path(config), "--json", *args]
        log("  $", " ".join(cmd))
        done = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True)
        return json.loads(done.stdout)

    def timed(self, cmd):
        return self.timed_rss(cmd)[0]

    def timed_rss(self, cmd):
        """Wall seconds and peak RSS (bytes) of one command."""
        start = time.perf_counter()
        child = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
        _, status, usage = os.wait4(child.pid, 0)
        seconds = time.perf_counter() - start
        child.returncode = os.waitstatus_to_exitcode(status)
        if child.returncode != 0:
            raise subprocess.CalledProcessError(child.returncode, cmd)
        return seconds, usage.ru_maxrss * 1024


def median(values):
    return statistics.median(values) if values else None


def loadavg():
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def machine(zcwrap, out):
    info = {"nproc": os.cpu_count(), "kernel": platform.release()}
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                info["mem_gib"] = round(int(line.split()[1]) * 1024 / GIB, 1)
    info["zcwrap"] = subprocess.run([zcwrap, "--version"], stdout=subprocess.PIPE, text=True).stdout.strip()
    versions = subprocess.run(["dpkg-query", "-W", "-f", "${Package} ${Version}\\n", "libtorch-dev", "g++"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True).stdout
    info["packages"] = versions.strip().splitlines()
    info["filesystem"] = subprocess.run(["stat", "-f", "-c", "%T", out], stdout=subprocess.PIPE,
                                        text=True).stdout.strip()
    info["drop_caches_permitted"] = os.geteuid() == 0 and os.access("/proc/sys/vm/drop_caches", os.W_OK)
    info["thp"] = open("/sys/kernel/mm/transparent_hugepage/enabled").read().strip()
    return info


def read_whole(path):
    """Reads a file once, so the page cache holds all of it."""
    with open(path, "rb", buffering=0) as f:
        while f.read(16 * MIB):
            pass


def drop_all_caches():
    subprocess.run(["sync"], check=True)
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


# --- P3: pack speed --------------------------------------------------------

def p3(b, runs):
    """Each run: cp and pack over a file of the same size that is there
    already (what a re-pack does; both then free the old file's pages: cp in
    open(O_TRUNC), pack at the rename), then cp + sync and pack to a file
    that is not there yet."""
    log("P3: zcwrap pack of the 1 GiB model vs cp of the same file")
    src = b.path("stack_1g.pt")
    subprocess.run(["cat", src], check=True, stdout=subprocess.DEVNULL)  # warm the source
    rows = []
    copy, blob, new_blob = b.path("cp_copy.pt"), b.path("stack_1g.zcb"), b.path("p3_new.zcb")

    def fresh(*paths):
        for path in paths:
            if os.path.exists(path):
                os.remove(path)
        subprocess.run(["sync"], check=True)

    for _ in range(runs):
        fresh(copy)
        cp = b.timed(["cp", src, copy])
        cp_sync = b.timed(["sh", "-c", f"cp '{src}' '{copy}' && sync '{copy}'"])
        pack, pack_rss = b.timed_rss([b.zcwrap, "pack", src, "-o", blob, "-q"])
        fresh(copy)
        cp_sync_new = b.timed(["sh", "-c", f"cp '{src}' '{copy}' && sync '{copy}'"])
        fresh(new_blob, b.path("p3_new.actor.json"))
        pack_new = b.timed([b.zcwrap, "pack", src, "-o", new_blob, "-q"])
        fresh(copy, new_blob, b.path("p3_new.actor.json"))
        rows.append({"cp_s": cp, "cp_sync_s": cp_sync, "pack_s": pack, "pack_over_cp": pack / cp,
                     "pack_over_cp_sync": pack / cp_sync, "pack_peak_rss": pack_rss,
                     "cp_sync_new_s": cp_sync_new, "pack_new_s": pack_new,
                     "pack_new_over_cp_sync_new": pack_new / cp_sync_new})
    return {"runs": rows, "median": {k: median([r[k] for r in rows]) for k in rows[0]}}


def pack_others(b):
    for name in ("stack_1m", "resnet50", "transformer"):
        subprocess.run([b.zcwrap, "pack", b.path(f"{name}.pt"), "-o", b.path(f"{name}.zcb"), "-q"], check=True)
    subprocess.run([b.zcwrap, "pack", b.path("stack_1g.pt"), "-o", b.path("stack_1g_2m.zcb"), "--align", "2M", "-q"],
                   check=True)


# --- P1: unwrap latency ----------------------------------------------------

def p1(b, runs, workers):
    log("P1: torch::jit::load of the 1 GiB original / unwrap of its blob; unwrap 1 GiB / unwrap 1 MiB")
    result = {}
    for label, extra in (("fresh_process", []), ("warmed_up", ["--warm-up"])):
        rows = []
        for i in range(runs):
            # The 1 MiB blob right before (after, on odd runs) the 1 GiB
            # one, so drift hits both sides of the ratio alike.
            if i % 2 == 0:
                s = b.run("stack_1m.actor.json", "--workers", str(workers), *extra)
            r = b.run("stack_1g.actor.json", "--workers", str(workers), "--baseline", b.path("stack_1g.pt"), *extra)
            if i % 2 == 1:
                s = b.run("stack_1m.actor.json", "--workers", str(workers), *extra)
            big = r["zcwrap"]["load_ms"]["median"]
            small = s["zcwrap"]["load_ms"]["median"]
            rows.append({"jit_load_1g_ms": r["baseline"]["load_ms"]["median"], "unwrap_1g_ms": big,
                         "unwrap_1m_ms": small, "load_over_unwrap": r["ratios"]["load_ms_median"],
                         "unwrap_1g_over_1m": big / small, "loadavg": loadavg()})
        result[label] = {"runs": rows, "median": {k: median([r[k] for r in rows]) for k in rows[0]}}
    return result


# --- P2: sharing -----------------------------------------------------------

def sharing(b, config, original, inp, runs, workers):
    rows = []
    for _ in range(runs):
        r = b.run(config, "--workers", str(workers), "--baseline", b.path(original), "--input", b.path(inp))
        zc, base = r["zcwrap"], r["baseline"]
        rows.append({"weight_bytes": r["weight_bytes"], "zc_pss_sum": zc["pss_sum"], "base_pss_sum": base["pss_sum"],
                     "blob_pss_sum": zc["blob_pss_sum"], "other_pss_per_worker": zc["other_pss_per_worker"],
                     "pss_ratio": r["ratios"]["pss_sum"], "load_ratio": r["ratios"]["load_ms_median"],
                     "unwrap_ms": zc["load_ms"]["median"], "jit_load_ms": base["load_ms"]["median"],
                     "outputs_equal": r["outputs_equal"], "shares_one_copy": zc["shares_one_copy"],
                     "loadavg": loadavg()})
    med = {k: median([r[k] for r in rows]) for k in rows[0] if not isinstance(rows[0][k], bool)}
    med["outputs_equal"] = all(r["outputs_equal"] for r in rows)
    med["shares_one_copy"] = all(r["shares_one_copy"] for r in rows)
    return {"runs": rows, "median": med}


def p2(b, runs, workers):
    log(f"P2: {workers} workers, summed PSS")
    big = sharing(b, "stack_1g.actor.json", "stack_1g.pt", "stack_1g_in.pt", runs, workers)
    small = sharing(b, "stack_1m.actor.json", "stack_1m.pt", "stack_1m_in.pt", runs, workers)
    # The per-process skeleton overhead: what a worker of the same model with
    # (almost) no weights holds, i.e. the 1 MiB model's summed PSS per worker.
    overhead = small["median"]["zc_pss_sum"] / workers
    w = big["median"]["weight_bytes"]
    budget = 1.15 * w + workers * overhead
    return {"stack_1g": big, "stack_1m": small, "skeleton_overhead": overhead, "budget": budget,
            "zc_over_budget": big["median"]["zc_pss_sum"] / budget}


ARCHITECTURES = ("resnet50", "transformer")


def architectures(b, runs, workers):
    log(f"Real architectures, {workers} workers")
    return {name: sharing(b, f"{name}.actor.json", f"{name}.pt", f"{name}_in.pt", runs, workers)
            for name in ARCHITECTURES}


# --- Cold start ------------------------------------------------------------

def cold_start(b, runs, drop_caches):
    log("Cold start: first call, page cache cold vs warm, per prefetch mode")
    cases = []
    for blob in ("stack_1g", "stack_1g_2m"):
        modes = ("none", "willneed", "populate", "lock") if blob == "stack_1g" else ("none", "populate")
        for mode in modes:
            # "cold" follows "warm", "cold-again" follows "cold": on a VM that
            # returns freed guest memory to its host (virtio-balloon free
            # page reporting), the first cold read after evicting a warm
            # file also pays for the host backing that memory again.
            caches = ["warm", "cold", "cold-again"]
            if drop_caches and mode in ("none", "populate") and blob == "stack_1g":
                caches.append("dropped")
            cases += [(blob, mode, cache) for cache in caches]
    results = {}
    for run in range(runs):
        # Each run starts at another case, so whatever one case leaves
        # behind (freed memory, fragmentation) does not always precede the
        # same next case.
        shift = run * len(cases) // runs
        for blob, mode, cache in cases[shift:] + cases[:shift]:
            args = ["--workers", "1", "--input", b.path("stack_1g_in.pt"), "--calls", "2", "--prefetch", mode]
            files = [b.path(f"{blob}.zcb")]
            if mode == "none" and blob == "stack_1g":
                args += ["--baseline", b.path("stack_1g.pt")]
                files.append(b.path("stack_1g.pt"))
            if cache == "warm":
                # The "dropped" cases empty the whole page cache: warm means
                # read just before.
                for f in files:
                    read_whole(f)
            else:
                args.append("--cold")
            if cache == "dropped":
                drop_all_caches()
            r = b.run(f"{blob}.actor.json", *args)
            w = r["zcwrap"]["workers"][0]
            row = {"run": run, "load_ms": w["load_ms"], "first_call_ms": w["first_call_ms"], "call_ms": w["call_ms"],
                   "first_result_ms": w["load_ms"] + w["first_call_ms"],
                   "cached_before": r["zcwrap"]["page_cache_before"],
                   "file_pmd_mapped": w["blob_mapping"]["file_pmd_mapped"], "warnings": r["warnings"]}
            if r["baseline"]:
                bw = r["baseline"]["workers"][0]
                row.update({"jit_load_ms": bw["load_ms"], "jit_first_call_ms": bw["first_call_ms"],
                            "jit_first_result_ms": bw["load_ms"] + bw["first_call_ms"],
                            "jit_cached_before": r["baseline"]["page_cache_before"]})
            results.setdefault(f"{blob}/{mode}/{cache}", []).append(row)
    summary = {}
    for key, rows in results.items():
        summary[key] = {k: median([r[k] for r in rows]) for k in rows[0] if k not in ("warnings", "run")}
        summary[key]["first_result_min_ms"] = min(r["first_result_ms"] for r in rows)
        summary[key]["first_result_max_ms"] = max(r["first_result_ms"] for r in rows)
        summary[key]["warnings"] = sorted({w for r in rows for w in r["warnings"]})
    return {"runs": results, "median": summary}


# --- Report ----------------------------------------------------------------

def fmt_ms(v):
    return "-" if v is None else (f"{v:.2f}" if v < 10 else f"{v:.1f}" if v < 100 else f"{v:.0f}")


def fmt_b(v):
    return f"{v / GIB:.2f} GiB" if v >= GIB else f"{v / MIB:.1f} MiB"


def markdown(res):
    m = res["machine"]
    out = []
    out.append(f"Machine: {m['nproc']} cores ({m['cpu']}), {m['mem_gib']} GiB, Linux {m['kernel']}, "
               f"{m['filesystem']} for the models; {m['zcwrap']}; {'; '.join(m['packages'])}.\n")
    out.append("| part | when | minutes | load average at start, end |")
    out.append("| --- | --- | ---: | --- |")
    for name in PARTS:
        part = res[name]
        out.append(f"| {name} | {part['date']} | {part['minutes']:.1f} | {part['loadavg'][0]:.1f}, "
                   f"{part['loadavg'][1]:.1f} |")
    out.append("")
    p1_ = res["p1"]
    out.append("### P1 unwrap latency (6 workers per group)\n")
    out.append("| | torch::jit::load 1 GiB | unwrap 1 GiB | unwrap 1 MiB | load / unwrap (goal >= 150) "
               "| unwrap 1 GiB / 1 MiB (goal <= 1.1) |")
    out.append("| --- | ---: | ---: | ---: | ---: | ---: |")
    for label, text in (("fresh_process", "first load in a fresh worker"),
                        ("warmed_up", "after LibTorch's one-time set-up (`--warm-up`)")):
        med = p1_[label]["median"]
        ratios = ", ".join(f"{r['load_over_unwrap']:.0f}" for r in p1_[label]["runs"])
        sizes = ", ".join(f"{r['unwrap_1g_over_1m']:.2f}" for r in p1_[label]["runs"])
        out.append(f"| {text} | {fmt_ms(med['jit_load_1g_ms'])} ms | {fmt_ms(med['unwrap_1g_ms'])} ms "
                   f"| {fmt_ms(med['unwrap_1m_ms'])} ms | **{med['load_over_unwrap']:.0f}** ({ratios}) "
                   f"| **{med['unwrap_1g_over_1m']:.2f}** ({sizes}) |")
    out.append("")
    p2_ = res["p2"]
    big = p2_["stack_1g"]["median"]
    out.append(f"### P2 sharing, {res['workers_p2']} workers\n")
    out.append("| model | weights | summed PSS zcwrap | of it, the blob | per worker outside the blob "
               "| summed PSS torch::jit::load | zcwrap / jit::load |")
    out.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    rows = [("16 x Linear(4096) (1 GiB)", big), ("16 x Linear(128) (1 MiB)", p2_["stack_1m"]["median"])]
    rows += [(name, res["arch"][name]["median"]) for name in ARCHITECTURES]
    for name, r in rows:
        out.append(f"| {name} | {fmt_b(r['weight_bytes'])} | {fmt_b(r['zc_pss_sum'])} | {fmt_b(r['blob_pss_sum'])} "
                   f"| {fmt_b(r['other_pss_per_worker'])} | {fmt_b(r['base_pss_sum'])} | {r['pss_ratio']:.3f} |")
    out.append("")
    runs_text = ", ".join(f"{r['pss_ratio']:.3f}" for r in p2_["stack_1g"]["runs"])
    out.append(f"Goal 1: summed PSS <= 1.15 x weights + {res['workers_p2']} x skeleton overhead "
               f"= 1.15 x {fmt_b(big['weight_bytes'])} + {res['workers_p2']} x {fmt_b(p2_['skeleton_overhead'])} "
               f"= {fmt_b(p2_['budget'])}; measured {fmt_b(big['zc_pss_sum'])}: "
               f"**{p2_['zc_over_budget']:.2f} of the budget**. "
               f"Goal 2: <= 0.2 x torch::jit::load's; measured **{big['pss_ratio']:.3f}** "
               f"(runs: {runs_text}).\n")
    out.append("Load latency in the same runs (median of medians):\n")
    out.append("| model | unwrap | torch::jit::load | ratio |")
    out.append("| --- | ---: | ---: | ---: |")
    for name, r in rows:
        out.append(f"| {name} | {fmt_ms(r['unwrap_ms'])} ms | {fmt_ms(r['jit_load_ms'])} ms | {r['load_ratio']:.1f} |")
    out.append("")
    p3_ = res["p3"]["median"]
    out.append("### P3 pack speed\n")
    out.append("| destination | cp | cp + sync | zcwrap pack | pack / cp | pack / (cp + sync) (goal <= 1.5) "
               "| pack peak RSS |")
    out.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    out.append(f"| there already (a re-pack) | {p3_['cp_s']:.2f} s | {p3_['cp_sync_s']:.2f} s | {p3_['pack_s']:.2f} s "
               f"| {p3_['pack_over_cp']:.1f} | **{p3_['pack_over_cp_sync']:.2f}** "
               f"| {fmt_b(p3_.get('pack_peak_rss', 0))} |")
    if "pack_new_s" in p3_:
        runs_text = ", ".join(f"{r['pack_new_over_cp_sync_new']:.2f}" for r in res["p3"]["runs"])
        out.append(f"| a new file | | {p3_['cp_sync_new_s']:.2f} s | {p3_['pack_new_s']:.2f} s | "
                   f"| **{p3_['pack_new_over_cp_sync_new']:.2f}** ({runs_text}) | |")
    out.append("")
    out.append("### Cold start (1 GiB model, one worker, 1 thread)\n")
    out.append("| blob | prefetch | page cache | unwrap | first call | first result (min-max) | second call "
               "| FilePmdMapped | torch::jit::load + first call |")
    out.append("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for key, r in res["cold"]["median"].items():
        blob, mode, cache = key.split("/")
        blob_text = "4 KiB aligned" if blob == "stack_1g" else "2 MiB aligned"
        jit = f"{fmt_ms(r['jit_first_result_ms'])} ms" if "jit_first_result_ms" in r else ""
        out.append(f"| {blob_text} | {mode} | {cache} | {fmt_ms(r['load_ms'])} ms | {fmt_ms(r['first_call_ms'])} ms "
                   f"| **{fmt_ms(r['first_result_ms'])} ms** ({fmt_ms(r['first_result_min_ms'])}-"
                   f"{fmt_ms(r['first_result_max_ms'])}) | {fmt_ms(r['call_ms'])} ms "
                   f"| {fmt_b(r['file_pmd_mapped'])} | {jit} |")
    warnings = sorted({w for r in res["cold"]["median"].values() for w in r["warnings"]})
    if warnings:
        out.append("\nWarnings: " + "; ".join(warnings))
    return "\n".join(out) + "\n"


PARTS = ("p3", "p1", "p2", "arch", "cold")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zcwrap", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--runs", type=int, default=5, help="runs of P1 and P3 [5]")
    ap.add_argument("--slow-runs", type=int, default=3, help="runs of P2, architectures and cold start [3]")
    ap.add_argument("--only", nargs="*", choices=PARTS, default=list(PARTS),
                    help="parts to run; the others are kept from an earlier results.json")
    ap.add_argument("--report-only", action="store_true", help="rewrite results.md from results.json")
    args = ap.parse_args()
    b = Bench(os.path.abspath(args.zcwrap), os.path.abspath(args.out))
    results_path = b.path("results.json")
    if args.report_only:
        args.only = []
    res = {}
    if set(args.only) != set(PARTS) and os.path.exists(results_path):
        with open(results_path) as f:
            res = json.load(f)
    res["machine"] = machine(b.zcwrap, b.out)
    res["workers_p2"] = 8
    log("machine:", json.dumps(res["machine"]))
    if not os.path.exists(b.path("stack_1g.zcb")) and "p3" not in args.only:
        args.only.insert(0, "p3")  # it packs the 1 GiB blob
    parts = {"p3": lambda: p3(b, args.runs),
             "p1": lambda: p1(b, args.runs, 6),
             "p2": lambda: p2(b, args.slow_runs, res["workers_p2"]),
             "arch": lambda: architectures(b, args.slow_runs, res["workers_p2"]),
             "cold": lambda: cold_start(b, args.slow_runs, res["machine"]["drop_caches_permitted"])}
    packed = False
    for name in PARTS:
        if name not in args.only:
            continue
        if name != "p3" and not packed:
            pack_others(b)
            packed = True
        start, load = time.time(), loadavg()
        res[name] = parts[name]()
        res[name]["loadavg"] = [load, loadavg()]
        res[name]["minutes"] = (time.time() - start) / 60
        res[name]["date"] = time.strftime("%Y-%m-%d %H:%M")
    with open(results_path, "w") as f:
        json.dump(res, f, indent=1)
    if all(name in res for name in PARTS):
        text = markdown(res)
        with open(b.path("results.md"), "w") as f:
            f.write(text)
        print(text)
    log(f"wrote {results_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
