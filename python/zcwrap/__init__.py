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
from ._wrapper import ActorWrapper, JITModelWrapper, ModelWrapper  # noqa: E402
from . import errors  # noqa: E402
from .errors import *  # noqa: E402,F401,F403  (Error and one subclass per kind)

__version__ = _build_info.version
libtorch_version = _C.libtorch_version

__all__ = ["ActorWrapper", "JITModelWrapper", "ModelWrapper", "describe", "gc", "verify", *errors.__all__]


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


def gc(store_dir: str | None = None, dry_run: bool = False) -> list[dict]:
    """Removes from the store every blob that no live process maps or holds,
    every temporary file that no live pack is writing, and the compiled code
    an AOTInductor model placed there (``<digest>.so``, and a CUDA model's
    kernel folder ``<digest>.kernels``) once no process uses it; what
    `zcwrap gc` does. Returns what it removed (or, with `dry_run`, would
    remove): one ``{"path", "bytes", "temporary"}`` dict per file or folder.

    A blob stays while any process has it unwrapped or opened, and while a
    wrapper made by ``from_model``, ``from_actor`` or ``open`` lives (each
    holds a shared lock on it), so
    gc is safe to run at any time, by any job of the same user: it never
    removes what another job uses. `store_dir` defaults as for
    ``from_model``; a folder that is not the caller's own, or that others can
    write, is refused (WriteError)."""
    from ._wrapper import _path_arg

    return _C.gc(_path_arg("store_dir", store_dir) or "", bool(dry_run))
