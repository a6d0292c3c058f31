"""The blob through Ray's object store.

When a file-backed wrapper is pickled while Ray is initialized (it is being
sent to a Ray actor or task: ``fn_constructor_kwargs``, an actor's arguments),
the blob is put into Ray's object store once, as one read-only ``uint8``
numpy array, and the wrapper carries its ObjectRef. Ray moves the object to
the nodes that use it; a worker ``ray.get``s it, which on every node maps the
node's object store (shared memory) read-only without a copy, and unwraps
from that memory: every actor on a node shares the node's one copy, and
nothing is written to any node's disk.

The object lives as long as the driver holds the wrapper (Ray's ownership:
the driver that put it owns it). ``ZCWRAP_RAY_TRANSPORT=0`` turns this off:
wrappers then carry only the blob's path, for clusters with a shared
filesystem.
"""

from __future__ import annotations

import mmap
import os
import sys
import threading
from typing import Any, Optional

# The last blob a task unwrapped in this process from the object store:
# (ObjectRef's hex, libzcwrap's wrapper over its read-only mapping). A task
# maps the object a second time, read-only (docs/RAY.md); a fresh mapping's
# pages fault in again on the first forward pass, so the worker keeps one
# for the next tasks. It holds the object, which then stays in the node's
# store while the worker lives or until the worker maps another blob.
_KEPT: Optional[tuple[str, Any]] = None
_KEPT_LOCK = threading.Lock()


def active() -> bool:
    """Whether a wrapper pickled now should travel through Ray's object store."""
    if os.environ.get("ZCWRAP_RAY_TRANSPORT", "1") == "0":
        return False
    ray = sys.modules.get("ray")  # never imports Ray: a process that has not, is not in a Ray job
    return ray is not None and ray.is_initialized()


def put_blob(path: str) -> Any:
    """The blob file as one Ray object (a uint8 numpy array). The bytes are
    read from a mapping of the file straight into the object store."""
    import numpy as np
    import ray

    with open(path, "rb") as f:
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        return ray.put(np.frombuffer(mapped, dtype=np.uint8))
    finally:
        try:
            mapped.close()
        except BufferError:  # numpy's view still exported: closed when it goes
            pass


def get_blob(ref: Any) -> Optional[Any]:
    """The blob's bytes from the object store (read-only, zero-copy), or None
    when Ray cannot give them here (not in a Ray worker, the object was lost)."""
    try:
        import ray
    except ImportError:
        return None
    if not ray.is_initialized():
        return None
    try:
        return ray.get(ref)
    except Exception:  # ObjectLostError, OwnerDiedError, ...: the caller falls back to the file
        return None


def kept_mapping(ref: Any) -> Optional[Any]:
    """The wrapper over `ref`'s object kept by keep_mapping, or None."""
    with _KEPT_LOCK:
        return _KEPT[1] if _KEPT is not None and _KEPT[0] == ref.hex() else None


def keep_mapping(ref: Any, native: Any) -> None:
    """Keeps `native` (over `ref`'s object) for this process's next tasks, in
    place of the one kept before."""
    global _KEPT
    with _KEPT_LOCK:
        _KEPT = (ref.hex(), native)
