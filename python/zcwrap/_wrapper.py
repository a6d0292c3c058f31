"""ModelWrapper and ActorWrapper: ray-zerocopy's API over zcwrap blobs."""

from __future__ import annotations

import json
import mmap
import operator
import os
import pickle
import sys
import warnings as _warnings
from typing import Any, Optional

import torch
from torch import nn

from . import _C, _eager, _ray, _weights_only
from .errors import BadBlobError, BadModelError, StaleError, UsageError

_TORCHSCRIPT = "torchscript"
_PICKLE = "python_pickle"
_PREFETCH = ("none", "willneed", "populate", "lock")


# Arguments are checked here only as far as the native call needs: a value
# pybind11 cannot convert would come out as its TypeError, not a zcwrap.Error.

def _brief(value: Any) -> str:
    """repr(value) on one line, at most 60 characters, for messages."""
    text = " ".join(repr(value).split())
    return text if len(text) <= 60 else text[:57] + "..."


def _flag(name: str, value: Any) -> bool:
    """A True/False argument (0 and 1 too); anything else is a UsageError."""
    if isinstance(value, bool) or (isinstance(value, int) and value in (0, 1)):
        return bool(value)
    raise UsageError(f"{name}={_brief(value)}: must be True or False")


def _alignment_arg(alignment: Any) -> int:
    try:
        value = operator.index(alignment)
    except TypeError:
        value = None
    # The range is the packer's to check; values outside uint64 cannot reach it.
    if value is None or isinstance(alignment, bool) or not 0 <= value < 2**64:
        raise UsageError(f"alignment {_brief(alignment)} is not a power of two from 64 to 2097152 (2 MiB)")
    return value


def _file_mode_arg(file_mode: Any) -> int:
    try:
        value = operator.index(file_mode)
    except TypeError:
        value = None
    if value is None or isinstance(file_mode, bool) or not 0 <= value <= 0o777:
        raise UsageError(f"file_mode {_brief(file_mode)}: must be permission bits from 0o000 to 0o777")
    return value


def _path_arg(name: str, value: Any) -> Optional[str]:
    """None, or a str or os.PathLike path as str."""
    if value is None:
        return None
    try:
        path = os.fspath(value)
    except TypeError:
        path = None
    if not isinstance(path, str) or "\0" in path:
        raise UsageError(f"{name}={_brief(value)}: must be a path (str or os.PathLike) without NUL bytes")
    return path


def _actor_json(config: dict[str, Any]) -> str:
    """An actor config as JSON text for the native side, which checks every
    field; a value JSON cannot hold (NaN, a set, bytes) is named here."""
    for key, value in config.items():
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise BadBlobError(f"actor config: field '{key}' holds {type(value).__name__} {_brief(value)}, which is "
                               f"not plain JSON data ({_eager.first_line(e)})") from e
    return json.dumps(config, allow_nan=False)


def _is_script(obj: Any) -> bool:
    return isinstance(obj, torch.jit.ScriptModule)


def _is_module(obj: Any) -> bool:
    return isinstance(obj, nn.Module) or _is_script(obj)


def _pipeline_modules(obj: Any) -> dict[str, Any]:
    """The module attributes of a pipeline object, in attribute order."""
    try:
        attributes = vars(obj)
    except TypeError:
        return {}
    return {name: value for name, value in attributes.items() if _is_module(value)}


def _pack_entry(name: str, model: Any) -> tuple[str, str, Any]:
    if _is_script(model):
        return (name, _TORCHSCRIPT, model._c)
    return (name, _PICKLE, _eager.skeleton_of(name, model))


def _shell_of(pipeline: Any, modules: dict[str, Any]) -> bytes:
    """The pipeline object without its modules, pickled: the blob stores it
    (manifest "pipeline_object"), under the blob's checksums."""
    state = {k: (None if k in modules else v) for k, v in vars(pipeline).items()}
    try:
        data = pickle.dumps((type(pipeline), state), protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as e:
        raise BadModelError(f"pipeline {type(pipeline).__name__}: its attributes other than modules do not "
                            f"pickle: {type(e).__name__}: {e}") from e
    return data


def _from_shell(shell: bytes, modules: dict[str, Any], where: str, weights_only: bool) -> Any:
    what = "the pipeline object"
    loaded = _eager.load_pipeline_object(where, shell, weights_only)
    if not (isinstance(loaded, tuple) and len(loaded) == 2 and isinstance(loaded[0], type)
            and isinstance(loaded[1], dict)):
        raise BadBlobError(f"{where}: {what} is not a (class, attributes) pair as from_model writes it")
    cls, state = loaded
    with _eager.unpickling(where, what):
        pipeline = cls.__new__(cls)
        pipeline.__dict__.update(state)
    pipeline.__dict__.update(modules)
    return pipeline


class ModelWrapper:
    """A model packed into a zcwrap blob, ready to rebuild zero-copy in any process.

    Make one in the driver with :meth:`from_model`, send it to workers (it
    pickles as a few hundred bytes: the blob's path and identity, never the
    weights) or send :meth:`to_actor`'s dict, and call :meth:`unwrap` there.
    """

    def __init__(self, config: dict[str, Any], kinds: Optional[list[str]] = None,
                 memory: Any = None, ray_ref: Any = None, store_lock: Any = None) -> None:
        """Not for direct use: see from_model, from_actor, open and from_buffer."""
        self._config = dict(config)
        self._kinds = list(kinds) if kinds is not None else None
        self._memory = memory
        self._ray_ref = ray_ref  # the blob as a Ray object, once put (see _ray.py)
        # from_model: a shared lock on the store blob, so zcwrap.gc() keeps it
        # while this wrapper lives (it is not pickled: receivers open the blob).
        self._store_lock = store_lock

    # --- making one -------------------------------------------------------

    @classmethod
    def from_model(cls, model: Any, *, store_dir: Optional[str] = None, alignment: int = 4096,
                   mode: str = "actor", file_mode: int = 0o600) -> "ModelWrapper":
        """Packs `model` into the store, once per content.

        `model` is an ``nn.Module`` (eager), a ``torch.jit.ScriptModule``
        (scripted or traced), or a pipeline: any object whose attributes
        include modules of either kind; each becomes a model of the blob named
        by its attribute, and tensors shared between them are stored once.
        The blob goes to `store_dir`, else ``$ZCWRAP_STORE``, else
        ``/dev/shm/zcwrap-<uid>``, named by its checksum, with permission
        bits `file_mode` (readable by its owner only by default). The store
        folder must be the caller's own and writable by no one else (a
        missing one is made with mode 0700); a file already there under the
        blob's name is reused only if every byte matches. The wrapper holds
        a shared lock on the blob while it lives, so :func:`zcwrap.gc` keeps
        it. `model` is not changed.

        `mode` is accepted for ray-zerocopy 0.2 compatibility: "actor" (the
        wrapper is unwrapped where it is used) is the only one.

        Raises UsageError for an object with no module in it, BadModelError
        for a module that cannot be pickled or serialized, WriteError when the
        store has no room.
        """
        if mode != "actor":
            raise UsageError(f"mode '{mode}': zcwrap wrappers are unwrapped in the actor or process that uses "
                             "them (mode='actor'); ray-zerocopy's task mode has no equivalent")
        store_dir, alignment = _path_arg("store_dir", store_dir), _alignment_arg(alignment)
        file_mode = _file_mode_arg(file_mode)
        if _is_module(model):
            entries = [_pack_entry("model", model)]
            standalone, shell = True, None
        else:
            modules = _pipeline_modules(model)
            if not modules:
                raise UsageError(f"{type(model).__name__} object: not a module and has no module attributes; "
                                 "pass an nn.Module, a ScriptModule, or an object whose attributes hold them")
            entries = [_pack_entry(name, module) for name, module in modules.items()]
            standalone, shell = False, _shell_of(model, modules)
        config_text, store_lock = _C.pack(entries, standalone, "", store_dir or "", alignment, file_mode,
                                          pipeline_pickle=shell)
        config = json.loads(config_text)
        return cls(config, [kind for _, kind, _ in entries], store_lock=store_lock)

    @classmethod
    def from_actor(cls, **actor_config: Any) -> "ModelWrapper":
        """The wrapper `to_actor()` described. Checks that the blob is still
        the one packed (StaleError when it was replaced or removed).

        A config only names and pins a blob: every pickle unwrap runs is in
        the blob, under its checksums. A ``"pipeline"`` field (zcwrap 0.2
        carried the pipeline object there) is dropped, never unpickled."""
        config = dict(actor_config)
        config.pop("device", None)
        config.pop("pipeline", None)
        summary = _C.open_actor(_actor_json(config))
        return cls(config, summary["kinds"])

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> "ModelWrapper":
        """A blob file (``zcwrap pack``'s output) or an actor config file."""
        checked = _path_arg("path", path)
        if checked is None:
            raise UsageError("path=None: name a blob or actor config file")
        config = json.loads(_C.open_path(checked))
        return cls.from_actor(**config)

    @classmethod
    def from_buffer(cls, buffer: Any, name: str = "memory blob") -> "ModelWrapper":
        """A wrapper over a whole blob in memory: any object with the buffer
        protocol (bytes, a numpy array, a mmap, a Ray object), 64-byte
        aligned. Tensors unwrapped from it point into it and keep it alive.
        Such a wrapper pickles with its bytes; to_actor() raises UsageError."""
        if not isinstance(name, str):
            raise UsageError(f"name={_brief(name)}: must be a string (it names the blob in messages)")
        try:
            summary = _C.open_buffer(buffer, name)
        except (BufferError, TypeError, ValueError) as e:  # no buffer protocol, or not one contiguous block
            raise UsageError(f"{name}: not a contiguous buffer of bytes ({type(buffer).__name__}: {e})") from e
        config = {k: summary[k] for k in ("blob_size", "meta_checksum", "standalone", "models")}
        config["blob"] = name
        return cls(config, summary["kinds"], memory=buffer)

    # --- what it holds ----------------------------------------------------

    @property
    def is_standalone_module(self) -> bool:
        """True for one module, False for a pipeline."""
        return bool(self._config["standalone"])

    @property
    def _is_standalone_module(self) -> bool:
        return self.is_standalone_module

    @property
    def model_names(self) -> list[str]:
        """The names of the packed models, in pack order ("model" for a standalone one)."""
        return list(self._config["models"])

    @property
    def _model_refs(self) -> dict[str, str]:
        """Model name -> skeleton kind ("torchscript" or "python_pickle")."""
        kinds = self._kinds or [""] * len(self.model_names)
        return dict(zip(self.model_names, kinds))

    @property
    def blob_path(self) -> str:
        """The blob file's absolute path (a memory blob's name for from_buffer)."""
        return str(self._config["blob"])

    def to_actor(self) -> dict[str, Any]:
        """A small dict of plain values that from_actor(**d) turns back into this wrapper."""
        if self._memory is not None:
            raise UsageError(f"{self.blob_path}: a blob in memory has no actor config; pickle the wrapper "
                             "or send the buffer and call from_buffer where it arrives")
        return dict(self._config)

    # --- using it ---------------------------------------------------------

    def unwrap(self, device: str | torch.device = "cpu", use_fast_load: bool = False, *, verify: bool = False,
               copy_on_write: bool = False, prefetch: str = "none", weights_only: Optional[bool] = None) -> Any:
        """Rebuilds the model (or the pipeline) with its weights in the blob.

        On "cpu" every tensor the blob holds points into one read-only shared
        mapping: no copy, and all processes on the machine share one copy in
        the page cache. Writing to such a weight in place kills the process
        with SIGSEGV (after one line saying why) unless `copy_on_write`, which
        gives each process private copies of the pages it writes. On a CUDA
        device each storage is copied once; with `use_fast_load` the whole
        data section goes to one device allocation through pinned buffers.
        `verify` checks every storage's checksum first; `prefetch` is "none",
        "willneed", "populate" or "lock". Inside a Ray job the blob comes
        from Ray's object store (docs/RAY.md), mapped a second time read-only
        (the same pages, no copy), so a write faults there too;
        `copy_on_write` maps the blob file privately where it is on this
        node, and otherwise makes a private copy of the object. A memory
        wrapper (from_buffer) is read-only the same way, and copied privately
        for `copy_on_write`.

        Models come back in eval mode with requires_grad false. A pipeline
        comes back as a new object of its class, its module attributes
        replaced by the rebuilt modules and its other attributes as packed.

        Eager modules and the pipeline object are pickles, and unpickling
        runs what they import. With `weights_only` (default:
        ``$ZCWRAP_WEIGHTS_ONLY``, else False) every pickle may import only
        what torch's weights-only allowlist, the torch.nn module classes and
        functions, and ``torch.serialization.add_safe_globals`` /
        ``safe_globals(...)`` allow: anything else is BadModelError naming
        the global, raised before any pickle is read (docs/SECURITY.md).
        Raises DeviceError, StaleError, BadBlobError, BadModelError.
        """
        weights_only = _weights_only.resolve(weights_only)
        if not isinstance(prefetch, str) or prefetch not in _PREFETCH:
            raise UsageError(f"prefetch {_brief(prefetch)}: use one of {', '.join(_PREFETCH)}")
        use_fast_load, verify = _flag("use_fast_load", use_fast_load), _flag("verify", verify)
        copy_on_write = _flag("copy_on_write", copy_on_write)
        device = str(device)
        memory, name = self._memory, self.blob_path
        # Through Ray's object store, unless a private, writable mapping of the
        # file is asked for (copy_on_write) and the file is on this node.
        if memory is None and self._ray_ref is not None and not (copy_on_write and os.path.exists(self.blob_path)):
            memory = _ray.get_blob(self._ray_ref)
            name = f"Ray object {self._ray_ref.hex()} (blob {self.blob_path})"
            if memory is None and not os.path.exists(self.blob_path):
                raise StaleError(f"{self.blob_path}: the blob's Ray object {self._ray_ref.hex()} cannot be fetched "
                                 "here (its owner, the driver that packed it, is gone, or the object was lost), "
                                 "and the blob file is not on this node")
        if memory is not None:
            # The blob's pins, checked before the unwrap (a from_buffer wrapper's own bytes need none).
            pinned = (0, "") if memory is self._memory else (self._config["blob_size"], self._config["meta_checksum"])
            unwrapped = _C.unwrap_buffer(memory, name, device, use_fast_load, verify, prefetch, *pinned,
                                         copy_on_write=copy_on_write)
        else:
            unwrapped = _C.unwrap_actor(_actor_json(self._config), device, use_fast_load, verify, copy_on_write,
                                        prefetch)
        standalone, models, warnings, _, shell = unwrapped
        if weights_only:  # every pickle, before any of them is read
            for model_name, kind, _, _, skeleton in models:
                if kind != _TORCHSCRIPT:
                    _weights_only.check(f"{name}: model '{model_name}'", "the module", skeleton)
            if shell is not None:
                _weights_only.check(name, "the pipeline object", shell)
        for line in warnings:
            _warnings.warn(f"zcwrap: {line}", RuntimeWarning, stacklevel=2)
        rebuilt: dict[str, Any] = {}
        for model_name, kind, script, tensors, skeleton in models:
            if kind == _TORCHSCRIPT:
                module = torch.jit._recursive.wrap_cpp_module(script)
            else:
                module = _eager.rebuild(f"{name}: model '{model_name}'", skeleton, tensors, weights_only)
                if isinstance(module, nn.Module):
                    try:
                        module.eval()
                    except RecursionError as e:  # eval() walks the submodules recursively
                        raise BadModelError(f"{name}: model '{model_name}': its modules nest deeper than Python's "
                                            f"recursion limit ({sys.getrecursionlimit()})") from e
            rebuilt[model_name] = module
        if standalone:
            return rebuilt[self.model_names[0]]
        if shell is None:  # packed by the zcwrap command (or by zcwrap 0.2): no pipeline object to rebuild
            return rebuilt
        return _from_shell(shell, rebuilt, name, weights_only)

    def load(self, device: str | torch.device = "cpu", use_fast_load: bool = False, **options: Any) -> Any:
        """unwrap() under ray-zerocopy 0.2's name."""
        return self.unwrap(device, use_fast_load, **options)

    def unpack(self, path: str | os.PathLike[str], model: str = "") -> None:
        """Writes a TorchScript model back as a standard file that
        torch.jit.load opens (BadModelError for an eager model)."""
        checked = _path_arg("path", path)
        if checked is None or not isinstance(model, str):
            raise UsageError(f"unpack(path={_brief(path)}, model={_brief(model)}): path is a file path, model a "
                             "model name (a string)")
        _C.unpack(_actor_json(self.to_actor()), checked, model)

    def __reduce__(self) -> Any:
        # The config (and a memory blob's bytes), never the unwrapped weights;
        # unpickling does not touch the blob: unwrap() checks it. Inside a
        # Ray job the blob goes to Ray's object store once (_ray.py).
        if self._memory is not None:
            return (_restore, (self._config, self._kinds, memoryview(self._memory).cast("B").tobytes()))
        if self._ray_ref is None and _ray.active():
            self._ray_ref = _ray.put_blob(self.blob_path)
        return (_restore, (self._config, self._kinds, None, self._ray_ref))

    def __repr__(self) -> str:
        what = "standalone" if self.is_standalone_module else "pipeline " + ", ".join(self.model_names)
        return f"<zcwrap.ModelWrapper {what} at {self.blob_path}>"


def _restore(config: dict[str, Any], kinds: Optional[list[str]], memory: Optional[bytes],
             ray_ref: Any = None) -> ModelWrapper:
    # What the wrapper's properties and repr read must be there; every other
    # field is checked by the native side when the blob is opened.
    # The pins are passed to the native side as they are on the Ray path.
    if not (isinstance(config, dict) and isinstance(config.get("blob"), str)
            and isinstance(config.get("standalone"), bool) and isinstance(config.get("models"), list)
            and all(isinstance(m, str) for m in config["models"])
            and type(config.get("blob_size")) is int and 0 <= config["blob_size"] < 2**64
            and isinstance(config.get("meta_checksum"), str)
            and (kinds is None or isinstance(kinds, list)) and (memory is None or isinstance(memory, bytes))):
        raise BadBlobError("a pickled zcwrap.ModelWrapper: its state is damaged (an actor config with a string "
                           "'blob', an integer 'blob_size', a string 'meta_checksum', a bool 'standalone' and a "
                           "list of model names was expected)")
    if memory is not None:
        # Unpickled bytes have no alignment to speak of: an anonymous mapping
        # is page-aligned.
        aligned = mmap.mmap(-1, max(len(memory), 1))
        aligned[: len(memory)] = memory
        memory = memoryview(aligned)[: len(memory)]
    return ModelWrapper(config, kinds, memory, ray_ref)


class ActorWrapper:
    """ray-zerocopy's primary API: pack once with the workers' device, then
    ``load()`` in each worker."""

    def __init__(self, model: Any, device: str | torch.device = "cpu", use_fast_load: bool = False, *,
                 weights_only: Optional[bool] = None, **pack_options: Any):
        """Packs `model` like ModelWrapper.from_model (a ModelWrapper is taken
        as it is). `weights_only` is load()'s default (None:
        ``$ZCWRAP_WEIGHTS_ONLY`` where load() runs)."""
        self.wrapper = model if isinstance(model, ModelWrapper) else ModelWrapper.from_model(model, **pack_options)
        self.device = str(device)
        self.use_fast_load = use_fast_load
        if weights_only is not None:
            weights_only = _flag("weights_only", weights_only)
        self.weights_only = weights_only

    def load(self, **unwrap_options: Any) -> Any:
        """The model (or pipeline), unwrapped onto the device given at wrap time."""
        unwrap_options.setdefault("weights_only", self.weights_only)
        return self.wrapper.unwrap(self.device, self.use_fast_load, **unwrap_options)

    def to_actor(self) -> dict[str, Any]:
        """ModelWrapper.to_actor() plus "device", "use_fast_load" and "weights_only"."""
        return {**self.wrapper.to_actor(), "device": self.device, "use_fast_load": self.use_fast_load,
                "weights_only": self.weights_only}

    @classmethod
    def from_actor(cls, **actor_config: Any) -> "ActorWrapper":
        """The wrapper to_actor() described. A config's ``"weights_only":
        true`` restricts load(); false or null leave it to the worker's
        ``$ZCWRAP_WEIGHTS_ONLY``: a config can restrict a worker, never
        loosen what its deployment set."""
        config = dict(actor_config)
        device = config.pop("device", "cpu")
        use_fast_load = _flag("use_fast_load", config.pop("use_fast_load", False))
        weights_only = config.pop("weights_only", None)
        weights_only = True if weights_only is not None and _flag("weights_only", weights_only) else None
        return cls(ModelWrapper.from_actor(**config), device, use_fast_load, weights_only=weights_only)

    @property
    def is_standalone_module(self) -> bool:
        return self.wrapper.is_standalone_module

    @property
    def model_names(self) -> list[str]:
        return self.wrapper.model_names

    def __repr__(self) -> str:
        return f"<zcwrap.ActorWrapper on {self.device} of {self.wrapper!r}>"
