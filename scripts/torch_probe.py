"""Tells meson.build about the torch of the Python that runs this script.

Prints key=value lines: version, release (its x.y.z, as LibTorch's
TORCH_VERSION spells it), cxx11_abi, prefix (the torch package folder
when it carries LibTorch's headers and libraries, as a pip wheel does; empty
for Debian's python3-torch, whose headers come from libtorch-dev), and
nvidia_libdirs (the lib/ folders of the nvidia-* packages a CUDA wheel loads).
"""

import glob
import os
import re

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
