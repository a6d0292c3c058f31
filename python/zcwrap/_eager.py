"""Eager modules as skeletons: the module pickled with every tensor taken out.

A skeleton of kind ``python_pickle`` is the module's pickle in which each
plain tensor and ``nn.Parameter`` is a persistent id ``("zcwrap", N,
is_parameter)``: the blob's manifest lists tensor N (dtype, sizes, strides,
storage, offset), and its bytes live in the blob's data section like a
TorchScript model's. Unpickling binds each id to the tensor the runtime made
over the blob, so an unwrapped module copies nothing.

Tensors the data section cannot hold (sparse, meta, tensor subclasses other
than Parameter, conjugate views) are pickled as they are, inside the skeleton.
"""

from __future__ import annotations

import io
import pickle
from typing import Any

import torch
from torch import nn

from . import _C
from .errors import BadModelError

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


class _Pickler(pickle.Pickler):
    def __init__(self, file: io.BytesIO, names: dict[int, tuple[str, str]]):
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.tensors: list[tuple[str, str, torch.Tensor]] = []
        self._names = names
        self._index: dict[int, int] = {}
        self._keep: list[torch.Tensor] = []  # holds ids unique while pickling
        self._cpu_storages: dict[tuple[str, int], torch.UntypedStorage] = {}
        self.unshared_bytes = 0  # of tensors pickled as they are, inside the skeleton

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
        if type(obj) is not torch.Tensor and type(obj) is not nn.Parameter:
            return None
        index = self._index.get(id(obj))
        if index is None:
            # A device's quantized tensor has no CPU view: it is pickled as it is.
            tensor = None if obj.is_quantized and obj.device.type != "cpu" else self._on_cpu(obj)
            if tensor is None or not _C.shareable(tensor):
                self.unshared_bytes += obj.numel() * obj.element_size()
                return None
            index = len(self.tensors)
            path, kind = self._names.get(id(obj), (f"tensor[{index}]", "attribute"))
            self.tensors.append((path, kind, tensor))
            self._index[id(obj)] = index
            self._keep.append(obj)
        return (_TAG, index, type(obj) is nn.Parameter)


def skeleton_of(name: str, module: nn.Module) -> tuple[bytes, list[tuple[str, str, torch.Tensor]], int]:
    """The pickle of `module` with its tensors taken out, those tensors
    (path, kind, CPU tensor) in persistent-id order, and the bytes of the
    tensors that stayed inside the pickle."""
    buffer = io.BytesIO()
    pickler = _Pickler(buffer, _tensor_names(module))
    try:
        pickler.dump(module)
    except Exception as e:  # pickle raises many types: say which attribute, in one line
        raise BadModelError(f"module '{name}': cannot pickle {type(module).__name__}: "
                            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e
    return buffer.getvalue(), pickler.tensors, pickler.unshared_bytes


class _Unpickler(pickle.Unpickler):
    def __init__(self, file: io.BytesIO, tensors: list[torch.Tensor]):
        super().__init__(file)
        self._tensors = tensors
        self._made: dict[int, torch.Tensor] = {}

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


def rebuild(where: str, skeleton: bytes, tensors: list[torch.Tensor]) -> Any:
    """The module of a ``python_pickle`` skeleton, over `tensors`."""
    try:
        return _Unpickler(io.BytesIO(skeleton), tensors).load()
    except Exception as e:
        raise BadModelError(f"{where}: cannot unpickle the module: {type(e).__name__}: "
                            f"{str(e).splitlines()[0] if str(e) else ''} (is its class importable here?)") from e
