"""What a large manifest costs a reader: time and peak RSS of opening a blob
(header, meta checksum, every manifest check) and of `zcwrap inspect` (text
and --json), beside a plain nlohmann::json parse of the same manifest (the
JSON tree of every entry that opening built before the manifest was parsed in
passes), for manifests of N tensors up to the 256 MiB cap.

    python3 benchmarks/manifest_bench.py BUILD_DIR OUT_DIR [--tensors 10000,100000,400000,1000000]

Any Python 3 runs it (no third-party module); BUILD_DIR is a build folder
with benchmarks/manifest_bench and cli/zcwrap. Each measurement is one child
process, started from this small Python process, and its peak RSS is
os.wait4's ru_maxrss (which would include the parent's memory at fork time,
were the parent large). The blobs are written by `manifest_bench --make` (see
benchmarks/manifest_bench.cpp) and removed after.
"""

import argparse
import json
import os
import subprocess
import sys
import time


def run(argv):
    started = time.perf_counter()
    with open(os.devnull, "w") as null:
        child = subprocess.Popen(argv, stdout=null, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(child.pid, 0)
        err = child.stderr.read().decode(errors="replace").strip()
    seconds = time.perf_counter() - started
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        print(f"  {argv[1]} failed ({code}): {err}", file=sys.stderr)
    return {"seconds": seconds, "peak_mib": usage.ru_maxrss / 1024, "status": code}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("build")
    parser.add_argument("out")
    parser.add_argument("--tensors", default="10000,100000,400000,1000000")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    bench = os.path.join(args.build, "benchmarks", "manifest_bench")
    zcwrap = os.path.join(args.build, "cli", "zcwrap")
    rows = []
    print("| tensors | manifest MiB | json::parse s / MiB | open s / MiB | inspect s / MiB | inspect --json s / MiB |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for n in (int(v) for v in args.tensors.split(",")):
        path = os.path.join(args.out, f"manifest-{n}.zcb")
        made = subprocess.run([bench, "--make", str(n), path], check=True, capture_output=True, text=True)
        row = {"tensors": n, "manifest_bytes": int(made.stdout),
               "json_parse": run([bench, "--child-parse", path]), "open": run([bench, "--child-open", path]),
               "inspect": run([zcwrap, "inspect", path]), "inspect_json": run([zcwrap, "inspect", "--json", path])}
        os.remove(path)
        rows.append(row)
        cells = " | ".join(f"{row[k]['seconds']:.2f} / {row[k]['peak_mib']:.0f}"
                           for k in ("json_parse", "open", "inspect", "inspect_json"))
        print(f"| {n} | {row['manifest_bytes'] / 2**20:.1f} | {cells} |", flush=True)
    with open(os.path.join(args.out, "manifest.json"), "w") as f:
        json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
