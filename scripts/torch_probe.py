"""Tells meson.build about the torch of the Python that runs this script.

Prints key=value lines: version, release (its x.y.z, as LibTorch's
TORCH_VERSION spells it), cxx11_abi, prefix (the torch package folder
when it carries LibTorch's headers and libraries, as a pip wheel does; empty
for Debian's python3-torch, whose headers come from libtorch-dev), and
nvidia_libdirs (the lib/ folders of the nvidia-* packages a CUDA wheel loads).

With --cuda (scripts/gpu-check.sh) it starts CUDA and adds, as shell
assignments: cuda (torch's CUDA version), cuda_ok (1 when a device answers),
cudart (the libcudart this process loaded, the one zcwrap must link: one
CUDA runtime per process) and loaded_libdirs (the folders of the torch and
nvidia libraries it loaded, for -rpath-link).
"""

import glob
import os
import re
import shlex
import sys

import torch

folder = os.path.dirname(os.path.abspath(torch.__file__))
header = os.path.realpath(os.path.join(folder, "include", "torch", "script.h"))
# Debian's python3-torch links its include/ into libtorch-dev's /usr/include.
has_libtorch = os.path.isfile(header) and not header.startswith("/usr/include/")
nvidia = os.path.join(os.path.dirname(folder), "nvidia")
print(f"version={torch.__version__}")
print("release=" + re.match(r"\d+\.\d+\.\d+", torch.__version__).group(0))
print(f"cxx11_abi={int(torch._C._GLIBCXX_USE_CXX11_ABI)}")
print(f"prefix={folder if has_libtorch else ''}")
print("nvidia_libdirs=" + ":".join(sorted(glob.glob(os.path.join(nvidia, "*", "lib")))))

if "--cuda" in sys.argv[1:]:
    ok = torch.cuda.is_available()
    if ok:
        torch.zeros(1, device="cuda")
    with open("/proc/self/maps") as maps:
        libs = {line.split()[5] for line in maps if len(line.split()) >= 6 and ".so" in os.path.basename(line.split()[5])}
    cudart = sorted(p for p in libs if os.path.basename(p).startswith("libcudart.so"))
    dirs = sorted({os.path.dirname(p) for p in libs if "/nvidia/" in p or "/torch/" in p})
    print(f"cuda={shlex.quote(str(torch.version.cuda))}")
    print(f"cuda_ok={int(ok)}")
    print(f"cudart={shlex.quote(cudart[0] if cudart else '')}")
    print(f"loaded_libdirs={shlex.quote(' '.join(dirs))}")
