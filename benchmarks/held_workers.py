"""Memory of held worker processes, shared by the Python benchmarks.

A held worker loads its model, prints one line (its load time), then
"ready", and waits for its standard input to close.
"""


def pss_bytes(pid):
    """The process's proportional set size (/proc/PID/smaps_rollup), in bytes."""
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    return 0


def summed_pss(start, workers, what):
    """Starts `workers` held workers with `start()` (a subprocess.Popen with
    text pipes), waits until each is ready, and returns their summed PSS."""
    procs = [start() for _ in range(workers)]
    try:
        for p in procs:
            p.stdout.readline()
            if p.stdout.readline().strip() != "ready":
                raise RuntimeError(f"{what}: a worker did not get ready")
        return sum(pss_bytes(p.pid) for p in procs)
    finally:
        for p in procs:
            p.communicate("")
