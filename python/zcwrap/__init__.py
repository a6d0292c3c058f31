"""zcwrap: pack a PyTorch model once, load it zero-copy in every worker.

    import torch, zcwrap
    wrapper = zcwrap.ModelWrapper.from_model(model)   # nn.Module, ScriptModule, or a pipeline object
    # ... send `wrapper` (or wrapper.to_actor()) to each worker, then there:
    model = wrapper.unwrap(device="cpu")              # weights point into one shared mapping

The API follows ray-zerocopy's ModelWrapper; see docs/PYTHON.md.
"""

from __future__ import annotations

import torch as _torch

from . import _build_info

if _torch.__version__ != _build_info.torch_version:
    raise ImportError(
        f"zcwrap {_build_info.version} was built against torch {_build_info.torch_version}, but this Python "
        f"runs torch {_torch.__version__}; reinstall zcwrap (pip install --no-build-isolation .) with this torch")

from . import _C  # noqa: E402  (after the check: a mismatched torch could not load it)
from . import _wrapper  # noqa: E402
from ._wrapper import ActorWrapper, ModelWrapper  # noqa: E402
from . import errors  # noqa: E402
from .errors import *  # noqa: E402,F401,F403  (Error and one subclass per kind)

__version__ = _build_info.version
libtorch_version = _C.libtorch_version

__all__ = ["ActorWrapper", "ModelWrapper", "describe", "verify", *errors.__all__]


def _file_path(path: object) -> str:
    """`path` (str or os.PathLike) as str; UsageError for anything else or a
    NUL byte, which would cut the path short where the C library reads it."""
    checked = _wrapper._path_arg("path", path)
    if checked is None:
        raise UsageError("path=None: name a blob or actor config file")
    return checked


def describe(path: str) -> dict:
    """What `zcwrap inspect --json` prints for a blob or actor config file."""
    import json

    return json.loads(_C.describe(_file_path(path)))


def verify(path: str) -> dict:
    """What `zcwrap verify --json` prints: every storage's checksum recomputed."""
    import json

    return json.loads(_C.verify(_file_path(path)))
