"""AOTInductor packages compiled for CUDA, through zcwrap's CLI, on a GPU.

Usage: PYTHON scripts/aoti_cuda_check.py ZCWRAP_BIN WORK_DIR

For the CNN and the transformer block of tests/fixtures/make_aoti_fixtures.py,
compiled for cuda:0 in both weight settings: `zcwrap pack`, `inspect`,
`run --device cuda:0` (with and without --fast-load) and `unpack`, each run's
outputs compared bit for bit with torch's own loader's on the same package,
and the unpacked .pt2 run by torch's loader, bit for bit too; then the
blob run with `--device cpu` must be refused with exit status 7.

Exits 0 when everything matched, 1 when something did not, 77 without a CUDA
device (nothing checked). scripts/gpu-check.sh runs it; so does
tests/python/test_aoti.py where there is a GPU.
"""

import os
import subprocess
import sys

# torch's own loader needs torch's symbols global (see make_aoti_fixtures.py).
sys.setdlopenflags(os.RTLD_GLOBAL | os.RTLD_LAZY)

import torch  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "fixtures"))
import make_aoti_fixtures as fixtures  # noqa: E402


def main():
    zcwrap, work = sys.argv[1], sys.argv[2]
    if not torch.cuda.is_available():
        print("aoti_cuda_check: no CUDA device: skipped")
        return 77
    os.makedirs(work, exist_ok=True)
    env = dict(os.environ, ZCWRAP_STORE=os.path.join(work, "store"))
    failures = []

    def zc(*args):
        r = subprocess.run([zcwrap, *args], capture_output=True, text=True, env=env)
        print("$ zcwrap", " ".join(args), f"-> {r.returncode}")
        if r.returncode != 0:
            print(r.stderr.strip())
        return r

    def same(a, b):
        return len(a) == len(b) and all(x.dtype == y.dtype and x.shape == y.shape and torch.equal(x.cpu(), y.cpu())
                                        for x, y in zip(a, b))

    for name, (model, inputs) in fixtures.models().items():
        model = model.cuda()
        cuda_inputs = tuple(t.cuda() for t in inputs)
        in_path = os.path.join(work, f"{name}_in.pt")
        torch.save(tuple(t.cpu() for t in inputs), in_path)
        for setting in ("so", "disk"):
            label = f"{name}_{setting}"
            pkg = os.path.join(work, f"{label}.pt2")
            fixtures.compile_package(model, cuda_inputs, pkg, setting == "disk")
            with torch.no_grad():
                ref = fixtures.load_reference(pkg, setting == "disk")(*cuda_inputs)
            ref = tuple(ref) if isinstance(ref, (list, tuple)) else (ref,)
            blob = os.path.join(work, f"{label}.zcb")
            if zc("pack", pkg, "-o", blob).returncode != 0 or zc("inspect", blob).returncode != 0:
                failures.append(f"{label}: pack or inspect failed")
                continue
            for fast in ((), ("--fast-load",)):
                out = os.path.join(work, f"{label}_out.pt")
                if zc("run", blob, "-i", in_path, "-o", out, "--device", "cuda:0", *fast).returncode != 0:
                    failures.append(f"{label}: run {' '.join(fast)} failed")
                    continue
                got = torch.load(out, weights_only=False)
                got = tuple(got) if isinstance(got, (list, tuple)) else (got,)
                ok = same(got, ref)
                print(f"{label}: run --device cuda:0 {' '.join(fast)} bit-equal to torch's loader: {ok}")
                if not ok:
                    failures.append(f"{label}: run {' '.join(fast)} differs from torch's loader")
            refused = zc("run", blob, "-i", in_path, "-o", os.path.join(work, "cpu.pt"), "--device", "cpu")
            if refused.returncode != 7:
                failures.append(f"{label}: run --device cpu gave {refused.returncode}, not 7")
            kernels = [n for n in os.listdir(env["ZCWRAP_STORE"]) if n.endswith(".kernels")]
            print(f"{label}: kernel folders in the store: {kernels}")
            back = os.path.join(work, f"{label}_back.pt2")
            if zc("unpack", blob, "-o", back).returncode != 0:
                failures.append(f"{label}: unpack failed")
                continue
            with torch.no_grad():
                again = fixtures.load_reference(back, setting == "disk")(*cuda_inputs)
            again = tuple(again) if isinstance(again, (list, tuple)) else (again,)
            if not same(again, ref):
                failures.append(f"{label}: the unpacked package's outputs differ")
    print("aoti_cuda_check:", "passed" if not failures else "FAILED: " + "; ".join(failures))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
