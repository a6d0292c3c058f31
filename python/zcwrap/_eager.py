"""Eager modules as skeletons: the module pickled with every tensor taken out.

A skeleton of kind ``python_pickle`` is the module's pickle in which each
plain tensor and ``nn.Parameter`` is a persistent id ``("zcwrap", N,
is_parameter)``: the blob's manifest lists tensor N (dtype, sizes, strides,
storage, offset), and its bytes live in the blob's data section like a
TorchScript model's. Unpickling binds each id to the tensor the runtime made
over the blob, so an unwrapped module copies nothing.

Tensors the data section cannot hold (sparse, nested, meta, tensor subclasses
other than Parameter, conjugate views) are pickled as they are, inside the
skeleton; the plain tensors they are made of (a sparse tensor's indices and
values, a nested tensor's buffer) are shared like any other.

What stays private to each worker is what the pickle carries inline: bytes,
numpy arrays, and the storages of tensors pickled as they are. The pickler
counts those bytes (``unshared_bytes`` of the manifest).
"""

from __future__ import annotations

import contextlib
import io
import pickle
import sys
from typing import Any, Iterator

import torch
from torch import nn

from . import _C, _weights_only
from .errors import BadBlobError, BadModelError, Error

_TAG = "zcwrap"


def _tensor_names(module: nn.Module) -> dict[int, tuple[str, str]]:
    """id(tensor) -> (attribute path, kind) for parameters and buffers."""
    names: dict[int, tuple[str, str]] = {}
    for name, param in module.named_parameters(remove_duplicate=False):
        names.setdefault(id(param), (name, "parameter"))
    for name, buf in module.named_buffers(remove_duplicate=False):
        if buf is not None:
            names.setdefault(id(buf), (name, "buffer"))
    return names


class _TensorIds:
    """The persistent ids of a skeleton's tensors; mixed into pickle's
    Pickler, or cloudpickle's where code must travel by value."""

    def __init__(self, file: io.BytesIO, names: dict[int, tuple[str, str]]):
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)  # type: ignore[call-arg]
        self.tensors: list[tuple[str, str, torch.Tensor]] = []
        self._names = names
        self._index: dict[int, int] = {}
        self._keep: list[torch.Tensor] = []  # holds ids unique while pickling
        self._cpu_storages: dict[tuple[str, int], torch.UntypedStorage] = {}
        self._inline: set[int] = set()  # ids of the payloads counted below (kept alive by the pickler's memo)
        self.unshared_bytes = 0  # of data the pickle carries inline: what each worker holds privately

    def _on_cpu(self, t: torch.Tensor) -> torch.Tensor:
        """`t` itself on the CPU; elsewhere a CPU copy of its whole storage
        (one per storage, so views keep sharing), viewed the same way."""
        if t.device.type == "cpu":
            return t
        storage = t.untyped_storage()
        key = (str(t.device), storage.data_ptr())
        cpu = self._cpu_storages.get(key)
        if cpu is None:
            cpu = self._cpu_storages[key] = storage.cpu()
        return torch.empty(0, dtype=t.dtype).set_(cpu, t.storage_offset(), t.size(), t.stride())

    def persistent_id(self, obj: Any) -> Any:
        kind = type(obj)
        if kind is bytes or kind is bytearray or kind is pickle.PickleBuffer:
            # Data pickled inline: a numpy array (a PickleBuffer), bytes, and
            # a tensor's storage pickled as it is (torch makes it bytes).
            if id(obj) not in self._inline:
                self._inline.add(id(obj))
                self._keep.append(obj)
                self.unshared_bytes += memoryview(obj).nbytes
            return None
        if kind is not torch.Tensor and kind is not nn.Parameter:
            return None
        index = self._index.get(id(obj))
        if index is None:
            # Pickled as they are: a meta tensor (no data), a sparse or nested
            # one on any device, a device's quantized tensor (no CPU view).
            if (obj.device.type == "meta" or obj.layout != torch.strided or obj.is_nested
                    or (obj.is_quantized and obj.device.type != "cpu")):
                return None
            tensor = self._on_cpu(obj)
            if not _C.shareable(tensor):
                return None  # pickled as it is; the plain tensors it is made of come back here
            index = len(self.tensors)
            path, kind = self._names.get(id(obj), (f"tensor[{index}]", "attribute"))
            self.tensors.append((path, kind, tensor))
            self._index[id(obj)] = index
            self._keep.append(obj)
        return (_TAG, index, type(obj) is nn.Parameter)


class _Pickler(_TensorIds, pickle.Pickler):
    pass


def cloudpickle() -> Any:
    """cloudpickle, to pickle by value the code a worker could not import:
    Ray's copy (``ray.cloudpickle``) where Ray is loaded or installed, else
    the standalone package; None without either. Unpickling such a pickle
    imports the same package in the worker (every Ray worker has Ray's)."""
    if "ray" not in sys.modules:
        try:
            import cloudpickle as standalone

            return standalone
        except ImportError:
            pass
    try:
        from ray import cloudpickle as rays

        return rays
    except ImportError:
        return None


def _not_importable(data: bytes) -> list[str]:
    """The globals of pickle `data` that another process could not import:
    those of ``__main__`` (a script's classes exist only in the process that
    ran it) and of modules registered with cloudpickle's
    ``register_pickle_by_value``."""
    globals_, _ = _C.pickle_globals(data)
    by_value: set[str] = set()
    for loaded in (sys.modules.get("cloudpickle"), sys.modules.get("ray.cloudpickle")):
        if loaded is not None and hasattr(loaded, "list_registry_pickle_by_value"):
            by_value |= set(loaded.list_registry_pickle_by_value())
    return [f"{m}.{n}" for m, n in globals_
            if m == "__main__" or "<locals>" in n or m in by_value or m.split(".")[0] in by_value]


def dumps(what: str, obj: Any, make: Any) -> tuple[bytes, Any]:
    """`obj` pickled by ``make(buffer, base)`` (a pickler class over `base`),
    and the pickler. Classes and functions go by reference (importable by
    name) where every one of them is importable in another process; where
    one is not (defined in ``__main__``, local to a function, a lambda),
    the whole object is pickled again with cloudpickle, which pickles those
    by value: their code travels inside the pickle. BadModelError names the
    class and why it cannot travel."""
    buffer = io.BytesIO()
    try:
        pickler = make(buffer, pickle.Pickler)
        pickler.dump(obj)
        data = buffer.getvalue()
        local = _not_importable(data)
        if not local:
            return data, pickler
        why = f"{', '.join(local)} cannot be imported by another process"
    except RecursionError as e:
        raise BadModelError(f"{what}: cannot pickle {type(obj).__name__}: its modules or attributes nest deeper "
                            f"than Python's recursion limit ({sys.getrecursionlimit()})") from e
    except Exception as e:  # pickle raises many types: a local class or a lambda is one; retried by value
        why = f"{type(e).__name__}: {first_line(e)}"
    by_value = cloudpickle()
    if by_value is None:
        raise BadModelError(f"{what}: cannot pickle {type(obj).__name__}: {why}; pickling it by value needs "
                            "cloudpickle (Ray ships it: install ray or cloudpickle), or define the class in a "
                            "module the workers import")
    buffer = io.BytesIO()
    try:
        pickler = make(buffer, by_value.Pickler)
        pickler.dump(obj)
    except RecursionError as e:
        raise BadModelError(f"{what}: cannot pickle {type(obj).__name__}: its modules or attributes nest deeper "
                            f"than Python's recursion limit ({sys.getrecursionlimit()})") from e
    except Exception as e:
        error = f"{type(e).__name__}: {first_line(e)}"
        since = "" if error == why else f" (pickled by value with cloudpickle, since {why})"
        raise BadModelError(f"{what}: cannot pickle {type(obj).__name__}: {error}{since}") from e
    return buffer.getvalue(), pickler


_PICKLERS: dict[type, type] = {pickle.Pickler: _Pickler}


def _skeleton_pickler(base: type) -> type:
    if base not in _PICKLERS:
        _PICKLERS[base] = type("_ByValuePickler", (_TensorIds, base), {})
    return _PICKLERS[base]


def skeleton_of(name: str, module: nn.Module) -> tuple[bytes, list[tuple[str, str, torch.Tensor]], int]:
    """The pickle of `module` with its tensors taken out, those tensors
    (path, kind, CPU tensor) in persistent-id order, and the bytes of the
    tensors that stayed inside the pickle. Code a worker could not import
    is pickled by value (see dumps)."""
    try:
        names = _tensor_names(module)
    except RecursionError as e:
        raise BadModelError(f"module '{name}': cannot pickle {type(module).__name__}: its modules nest deeper than "
                            f"Python's recursion limit ({sys.getrecursionlimit()})") from e
    data, pickler = dumps(f"module '{name}'", module, lambda buffer, base: _skeleton_pickler(base)(buffer, names))
    return data, pickler.tensors, pickler.unshared_bytes


class _Unpickler(pickle.Unpickler):
    def __init__(self, file: io.BytesIO, tensors: list[torch.Tensor], where: str = "", what: str = "",
                 weights_only: bool = False):
        # weights_only: names are taken as written (no Python 2 renaming), as
        # the opcode check before this read them.
        super().__init__(file, fix_imports=not weights_only)
        self._tensors = tensors
        self._made: dict[int, torch.Tensor] = {}
        self._where, self._what, self._weights_only = where, what, weights_only

    def find_class(self, module: str, name: str) -> Any:
        if not self._weights_only:
            return super().find_class(module, name)
        found = _weights_only.allowed(module, name)
        if found is _weights_only.REFUSED:
            raise _weights_only.refusal(self._where, self._what, [f"{module}.{name}"])
        return found

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) == 3 and pid[0] == _TAG):
            raise pickle.UnpicklingError(f"unknown persistent id {pid!r}")
        _, index, is_parameter = pid
        made = self._made.get(index)
        if made is None:
            if not 0 <= index < len(self._tensors):
                raise pickle.UnpicklingError(f"tensor {index} is not in the manifest ({len(self._tensors)} tensors)")
            tensor = self._tensors[index]
            # Parameter(t) shares t's storage: still a view of the blob.
            made = nn.Parameter(tensor, requires_grad=False) if is_parameter else tensor
            self._made[index] = made
        return made


def first_line(e: BaseException) -> str:
    """The first line of an exception's message, for one-line errors."""
    text = str(e).strip()
    return text.splitlines()[0] if text else ""


@contextlib.contextmanager
def unpickling(where: str, what: str) -> Iterator[None]:
    """Turns any failure to read a pickle inside the block into one zcwrap.Error.

    Every place that reads a pickle (a skeleton, a pipeline object) goes
    through this. Data that is not a pickle (damaged bytes or base64, a
    truncated stream) is BadBlobError; a pickle that names what this process
    cannot import (a class defined in another process's ``__main__``, a
    module not installed), or whose objects fail to rebuild, is
    BadModelError. zcwrap.Error passes through as it is.
    """
    try:
        yield
    except Error:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError) as e:  # binascii.Error is a ValueError
        raise BadBlobError(f"{where}: {what} is not a readable pickle: {type(e).__name__}: {first_line(e)}") from e
    except RecursionError as e:
        raise BadModelError(f"{where}: cannot unpickle {what}: it nests deeper than Python's recursion limit "
                            f"({sys.getrecursionlimit()})") from e
    except (AttributeError, ImportError) as e:
        raise BadModelError(f"{where}: cannot unpickle {what}: {type(e).__name__}: {first_line(e)} (its class must "
                            "be importable here: a class defined in a script run as __main__ exists only in "
                            "that process; move it to a module)") from e
    except Exception as e:
        raise BadModelError(f"{where}: cannot unpickle {what}: {type(e).__name__}: {first_line(e)}") from e


def accepts(obj: Any) -> bool:
    """Whether this kind packs `obj`: any nn.Module (TorchScript ones are
    packed as TorchScript before this is asked)."""
    return isinstance(obj, nn.Module)


def check(where: str, skeleton: bytes) -> None:
    """weights_only's test of a skeleton, before any skeleton is read."""
    _weights_only.check_pickle(where, "the module", skeleton)


def rebuild(where: str, skeleton: bytes, tensors: list[torch.Tensor], weights_only: bool = False) -> Any:
    """The module of a ``python_pickle`` skeleton, over `tensors`, in eval
    mode; with `weights_only`, only if it imports nothing _weights_only
    refuses."""
    with unpickling(where, "the module"):
        module = _Unpickler(io.BytesIO(skeleton), tensors, where, "the module", weights_only).load()
    if isinstance(module, nn.Module):
        try:
            module.eval()
        except RecursionError as e:  # eval() walks the submodules recursively
            raise BadModelError(f"{where}: its modules nest deeper than Python's recursion limit "
                                f"({sys.getrecursionlimit()})") from e
    return module


def load_pipeline_object(where: str, pickle_bytes: bytes, weights_only: bool = False) -> Any:
    """The (class, attributes) pair of a blob's pipeline object, unpickled
    like a skeleton (it holds no persistent ids)."""
    what = "the pipeline object"
    with unpickling(where, what):
        return _Unpickler(io.BytesIO(pickle_bytes), [], where, what, weights_only).load()
