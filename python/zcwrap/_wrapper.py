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

from . import _C, _aoti, _eager, _export, _ray, _tasks, _weights_only
from .errors import BadBlobError, BadModelError, StaleError, UsageError

_TORCHSCRIPT = "torchscript"  # the kind libzcwrap rebuilds itself
# The skeleton kinds this package makes and rebuilds, by their manifest name,
# each a module with accepts(obj), skeleton_of(name, obj), check(where,
# skeleton) (weights_only, before anything is read) and rebuild(where,
# skeleton, tensors, weights_only). A model goes to the first that accepts it.
_KINDS: dict[str, Any] = {"python_pickle": _eager, _export.KIND: _export}
_MODES = ("actor", "task")


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
    return _is_script(obj) or any(kind.accepts(obj) for kind in _KINDS.values())


def _pipeline_modules(obj: Any, names: Optional[list[str]] = None) -> dict[str, Any]:
    """The module attributes of a pipeline object, in attribute order; only
    those named in `names` when given (ray-zerocopy's model_attr_names)."""
    try:
        attributes = vars(obj)
    except TypeError:
        return {}
    if names is not None:
        if isinstance(names, str) or not all(isinstance(n, str) for n in names):
            raise UsageError(f"model_attr_names={_brief(names)}: must be a list of attribute names")
        missing = [n for n in names if n not in attributes]
        if missing:
            raise UsageError(f"model_attr_names: {type(obj).__name__} object has no attribute "
                             f"{', '.join(map(repr, missing))}")
        return {n: attributes[n] for n in names if _is_module(attributes[n])}
    return {name: value for name, value in attributes.items() if _is_module(value)}


def _pack_entry(name: str, model: Any) -> Any:
    if _is_script(model):
        return _C.PackModel.torchscript(name, model._c)
    kind, maker = next((k, m) for k, m in _KINDS.items() if m.accepts(model))
    skeleton, tensors, unshared = maker.skeleton_of(name, model)
    tensors = [(path, getattr(_C.TensorKind, tensor_kind), tensor) for path, tensor_kind, tensor in tensors]
    return _C.PackModel.python(name, kind, skeleton, tensors, unshared)


def _shell_of(pipeline: Any, modules: dict[str, Any]) -> bytes:
    """The pipeline object without its modules, pickled: the blob stores it
    (manifest "pipeline_object"), under the blob's checksums."""
    state = {k: (None if k in modules else v) for k, v in vars(pipeline).items()}
    # Its class, or what its attributes hold, may live in the driver's
    # __main__: pickled by value then (_eager.dumps).
    data, _ = _eager.dumps(f"pipeline {type(pipeline).__name__} (its class and attributes other than modules)",
                           (type(pipeline), state),
                           lambda buffer, base: base(buffer, protocol=pickle.HIGHEST_PROTOCOL))
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

    _DEFAULT_METHODS: tuple[str, ...] = ("__call__",)  # task mode's method_names default (ray-zerocopy's)

    def __init__(self, config: dict[str, Any], kinds: Optional[list[str]] = None,
                 memory: Any = None, ray_ref: Any = None, *, native: Any = None, mode: str = "actor",
                 methods: Optional[dict[str, set[str]]] = None, task_cache: bool = False) -> None:
        """Not for direct use: see from_model, from_actor, open, from_buffer and deserialize."""
        if not (isinstance(config, dict) and "blob" in config):
            raise UsageError(f"{type(self).__name__}({_brief(config)}, ...): zcwrap's constructor takes no "
                             "skeleton and model_info as ray-zerocopy's does; use from_model(), or "
                             "deserialize(**wrapper.serialize())")
        self._config = dict(config)
        self._kinds = list(kinds) if kinds is not None else None
        self._memory = memory
        self._ray_ref = ray_ref  # the blob as a Ray object, once put (see _ray.py)
        # libzcwrap's ModelWrapper (_C.ModelWrapper) made here, not pickled:
        # from_model's holds a shared lock on the store blob, so zcwrap.gc()
        # keeps it while this wrapper lives; from_actor's, open's and
        # from_buffer's hold the blob they mapped and checked, which unwrap
        # uses instead of opening it again.
        self._native = native
        # ray-zerocopy's execution mode: "actor" (load() unwraps here) or
        # "task" (load() gives shims whose calls run as Ray tasks, _tasks.py),
        # with the methods each model's shim exposes.
        self._mode = mode
        self._methods = {k: set(v) for k, v in (methods or {}).items()}
        self._task_cache = task_cache

    # --- making one -------------------------------------------------------

    @classmethod
    def from_model(cls, model_or_pipeline: Any, mode: str = "actor", model_attr_names: Optional[list[str]] = None,
                   method_names: Optional[tuple[str, ...]] = None, *, store_dir: Optional[str] = None,
                   alignment: int = 4096, file_mode: int = 0o600, cache: bool = False) -> "ModelWrapper":
        """Packs `model_or_pipeline` into the store, once per content.

        `model` is an ``nn.Module`` (eager), a ``torch.jit.ScriptModule``
        (scripted or traced), the path (``str`` or ``os.PathLike``) of a
        model file that ``zcwrap pack`` reads (an AOTInductor package, the
        ``.pt2`` of ``torch._inductor.aoti_compile_and_package``, or a
        TorchScript file; actor mode; a package of several compiled models,
        ``package_aoti``'s, unwraps to a dict of them by name), or a
        pipeline: any object whose attributes
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

        Classes and functions a worker could not import (defined in the
        driver's ``__main__``, local to a function, lambdas) are pickled by
        value with cloudpickle, as Ray pickles them, inside the blob.

        ray-zerocopy 0.2's arguments: `mode` is "actor" (the wrapper is
        sent to actors, whose ``load()`` unwraps it) or "task" (``load()``
        gives the model or pipeline with each packed module replaced by a
        shim whose calls run as Ray tasks; see :meth:`for_tasks`).
        `model_attr_names` (actor mode) packs only those attributes of a
        pipeline; other attributes, modules included, travel in the pipeline
        object. `method_names` (task mode) are the methods each shim exposes,
        besides ``__call__`` (default ``("__call__",)``). `cache` (task mode,
        zcwrap's) keeps each model a worker process unwrapped for its next
        tasks; by default every task unwraps the model it calls, as
        ray-zerocopy does. The wrapper itself is not callable: call load().

        Raises UsageError for an object with no module in it or a mode other
        than "actor" and "task", BadModelError for a module that cannot be
        pickled or serialized, WriteError when the store has no room.
        """
        if not isinstance(mode, str) or mode not in _MODES:
            raise UsageError(f"Invalid mode: {_brief(mode)}: use 'actor' or 'task'")
        if method_names is None:
            method_names = cls._DEFAULT_METHODS
        if mode == "task":
            model_attr_names = None  # as in ray-zerocopy 0.2: task mode turns every module attribute into a shim
        store_dir, alignment = _path_arg("store_dir", store_dir), _alignment_arg(alignment)
        file_mode, cache = _file_mode_arg(file_mode), _flag("cache", cache)
        model = model_or_pipeline
        if isinstance(model, (str, os.PathLike)):
            if mode != "actor":
                raise UsageError(f"{os.fspath(model)}: a model file packs in actor mode only")
            native = _C.ModelWrapper.pack([_C.PackModel.file("model", os.fspath(model))], True,
                                          store_dir=store_dir or "", alignment=alignment, file_mode=file_mode)
            return cls(json.loads(native.to_actor()), native.model_kinds, native=native, mode=mode)
        if _is_module(model):
            modules = {"model": model}
            standalone, shell = True, None
        else:
            modules = _pipeline_modules(model, model_attr_names)
            if not modules:
                raise UsageError(f"{type(model).__name__} object: not a module and has no module attributes; "
                                 "pass an nn.Module, a ScriptModule, or an object whose attributes hold them")
            standalone, shell = False, _shell_of(model, modules)
        methods = ({name: _tasks.exposed_methods(module, method_names) for name, module in modules.items()}
                   if mode == "task" else None)
        entries = [_pack_entry(name, module) for name, module in modules.items()]
        native = _C.ModelWrapper.pack(entries, standalone, store_dir=store_dir or "", alignment=alignment,
                                      file_mode=file_mode, pipeline_object=shell)
        wrapper = cls(json.loads(native.to_actor()), native.model_kinds, native=native, mode=mode, methods=methods,
                      task_cache=cache)
        # As ray-zerocopy's wrappers: the wrapped class's docstring follows the wrapper's.
        if type(model).__doc__:
            wrapper.__doc__ = f"{cls.__doc__}\n\nWrapped class documentation:\n{type(model).__doc__}"
        return wrapper

    @classmethod
    def for_tasks(cls, model_or_pipeline: Any, method_names: Optional[tuple[str, ...]] = None, *,
                  cache: bool = False, **pack_options: Any) -> Any:
        """``from_model(model_or_pipeline, mode="task", method_names=...).load()``:
        the model or pipeline, ready to call, with every packed module
        replaced by a shim. Calling a shim (``shim(x)``, or an exposed
        method, ``shim.forward(x)``) runs one Ray task that unwraps that
        model on its node from Ray's object store, read-only and zero-copy,
        calls the method under ``torch.no_grad()``, and returns its result.
        A standalone module comes back as its shim. Needs a Ray job
        (``ray.init()``) when called."""
        return cls.from_model(model_or_pipeline, mode="task", method_names=method_names, cache=cache,
                              **pack_options).load()

    @classmethod
    def from_actor(cls, **actor_config: Any) -> "ModelWrapper":
        """The wrapper `to_actor()` described. Checks that the blob is still
        the one packed (StaleError when it was replaced or removed).

        A config only names and pins a blob: every pickle unwrap runs is in
        the blob, under its checksums. A ``"pipeline"`` field (zcwrap 0.2
        carried the pipeline object there) is dropped, never unpickled."""
        config = dict(actor_config)
        native = _C.ModelWrapper.from_actor(_actor_json(config))
        return cls(json.loads(native.to_actor()), native.model_kinds, native=native)

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> "ModelWrapper":
        """A blob file (``zcwrap pack``'s output) or an actor config file."""
        checked = _path_arg("path", path)
        if checked is None:
            raise UsageError("path=None: name a blob or actor config file")
        native = _C.ModelWrapper.open(checked)
        return cls(json.loads(native.to_actor()), native.model_kinds, native=native)

    @classmethod
    def from_buffer(cls, buffer: Any, name: str = "memory blob") -> "ModelWrapper":
        """A wrapper over a whole blob in memory: any object with the buffer
        protocol (bytes, a numpy array, a mmap, a Ray object), 64-byte
        aligned. Tensors unwrapped from it point into it and keep it alive.
        Such a wrapper pickles with its bytes; to_actor() raises UsageError."""
        native = _native_of_buffer(buffer, name)
        config = {"blob": name, "blob_size": native.blob_size, "meta_checksum": native.meta_checksum,
                  "standalone": native.is_standalone_module, "models": native.model_names}
        return cls(config, native.model_kinds, memory=buffer, native=native)

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
        """Model name -> skeleton kind ("torchscript", "python_pickle" or "torch_export")."""
        kinds = self._kinds or [""] * len(self.model_names)
        return dict(zip(self.model_names, kinds))

    @property
    def blob_path(self) -> str:
        """The blob file's absolute path (a memory blob's name for from_buffer)."""
        return str(self._config["blob"])

    def to_actor(self) -> dict[str, Any]:
        """A small dict of plain values that from_actor(**d) turns back into this wrapper."""
        if self._memory is not None:
            self._native_wrapper().to_actor()  # raises: a blob in memory has no actor config
        return dict(self._config)

    def _native_wrapper(self) -> Any:
        """libzcwrap's wrapper of this blob: the one made here, else one made
        from the config or a pickled memory blob's bytes (and kept)."""
        if self._native is None:
            if self._memory is not None:
                self._native = _native_of_buffer(self._memory, self.blob_path)
            else:
                self._native = _C.ModelWrapper.from_actor(_actor_json(self._config))
        return self._native

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
        rebuilt, standalone, shell, name, weights_only = self._unwrap(
            device, use_fast_load, verify=verify, copy_on_write=copy_on_write, prefetch=prefetch,
            weights_only=weights_only)
        if standalone:
            return rebuilt[self.model_names[0]]
        if shell is None:  # packed by the zcwrap command (or by zcwrap 0.2): no pipeline object to rebuild
            return rebuilt
        return _from_shell(shell, rebuilt, name, weights_only)

    def _unwrap_models(self, only: Optional[str] = None) -> dict[str, Any]:
        """Model name -> the model, unwrapped on the CPU with unwrap()'s
        defaults; only model `only` (the others' pickles are not read) when
        given. What a task-mode task runs: the worker process keeps its
        mapping of the blob's Ray object for its next tasks (_ray.py)."""
        return self._unwrap("cpu", False, models=None if only is None else {only}, keep_mapping=True)[0]

    def _unwrap(self, device: str | torch.device = "cpu", use_fast_load: bool = False, *, verify: bool = False,
                copy_on_write: bool = False, prefetch: str = "none", weights_only: Optional[bool] = None,
                models: Optional[set[str]] = None,
                keep_mapping: bool = False) -> tuple[dict[str, Any], bool, Optional[bytes], str, bool]:
        """unwrap()'s work: (model name -> model, standalone, the pipeline
        object's pickle or None, the blob's name for messages, weights_only).
        Only the models named in `models` are rebuilt when it is given (the
        others' pickles are neither checked nor read)."""
        weights_only = _weights_only.resolve(weights_only)
        if not isinstance(prefetch, str):
            raise UsageError(f"prefetch {_brief(prefetch)}: use one of {', '.join(_C.prefetch_names)}")
        use_fast_load, verify = _flag("use_fast_load", use_fast_load), _flag("verify", verify)
        copy_on_write = _flag("copy_on_write", copy_on_write)
        device = str(device)
        name = self.blob_path
        # Through Ray's object store, unless a private, writable mapping of the
        # file is asked for (copy_on_write) and the file is on this node.
        if self._memory is None and self._ray_ref is not None and not (copy_on_write and os.path.exists(name)):
            name = f"Ray object {self._ray_ref.hex()} (blob {self.blob_path})"
            native = _ray.kept_mapping(self._ray_ref) if keep_mapping else None
            memory = None if native is not None else _ray.get_blob(self._ray_ref)
            if native is None and memory is None and not os.path.exists(self.blob_path):
                raise StaleError(f"{self.blob_path}: the blob's Ray object {self._ray_ref.hex()} cannot be fetched "
                                 "here (its owner, the driver that packed it, is gone, or the object was lost), "
                                 "and the blob file is not on this node")
            if memory is not None:
                native = _native_of_buffer(memory, name)
                native.check_pins(self._config["blob_size"], self._config["meta_checksum"])
                if keep_mapping:
                    _ray.keep_mapping(self._ray_ref, native)
            elif native is None:
                native = self._native_wrapper()
        else:
            native = self._native_wrapper()
        unwrapped = native.unwrap(device=device, use_fast_load=use_fast_load, verify=verify,
                                  copy_on_write=copy_on_write, prefetch=prefetch)
        shell = unwrapped.pipeline_object
        wanted = [m for m in unwrapped.models if models is None or m.name in models]
        if weights_only:  # every pickle, before any of them is read
            for model in wanted:
                if model.kind in _KINDS:
                    _KINDS[model.kind].check(f"{name}: model '{model.name}'", model.skeleton)
            if shell is not None:
                _weights_only.check_pickle(name, "the pipeline object", shell)
        for line in unwrapped.warnings:
            _warnings.warn(f"zcwrap: {line}", RuntimeWarning, stacklevel=3)
        rebuilt: dict[str, Any] = {}
        for model in wanted:
            if model.kind == _TORCHSCRIPT:
                module = torch.jit._recursive.wrap_cpp_module(model.module)
            elif model.kind == _aoti.KIND:  # run by libzcwrap: no pickle, nothing to check
                module = _aoti.CompiledModel(model, f"{name}: model '{model.name}'")
            else:
                module = _KINDS[model.kind].rebuild(f"{name}: model '{model.name}'", model.skeleton, model.tensors,
                                                    weights_only)
            rebuilt[model.name] = module
        return rebuilt, unwrapped.is_standalone_module, shell, name, weights_only

    def load(self, _use_fast_load: Any = False, **unwrap_options: Any) -> Any:
        """ray-zerocopy 0.2's load().

        Actor mode: the model (or pipeline), unwrapped on the CPU as by
        unwrap(**unwrap_options); zero-copy either way, so ray-zerocopy's
        `_use_fast_load` (plain tensors for parameters) is accepted and
        changes nothing (parameters stay nn.Parameter, requires_grad off).
        A device as first argument (zcwrap 0.2's load(device)) is unwrap's.

        Task mode: the model (or a new pipeline object, rebuilt from the
        blob) with each packed module replaced by a shim whose calls run as
        Ray tasks (see for_tasks); nothing is unwrapped here for a standalone
        module."""
        if isinstance(_use_fast_load, (str, torch.device)):
            unwrap_options.setdefault("device", _use_fast_load)
        elif not isinstance(_use_fast_load, bool):
            raise UsageError(f"_use_fast_load={_brief(_use_fast_load)}: must be True or False")
        if self._mode != "task":
            unwrapped = self.unwrap(**unwrap_options)
            # What a worker calls: a standalone program's module() (a program is not callable).
            return _export.runnable(unwrapped) if self.is_standalone_module else unwrapped
        if unwrap_options:
            raise UsageError(f"load({', '.join(unwrap_options)}=...): a task-mode wrapper's models are unwrapped "
                             "in the tasks, on the CPU with unwrap()'s defaults")
        shims = {name: _tasks.TaskShim(self, name, self._methods.get(name, {"__call__"}))
                 for name in self.model_names}
        if self.is_standalone_module:
            return shims[self.model_names[0]]
        # The pipeline object from the blob; no model is rebuilt here.
        _, _, shell, name, weights_only = self._unwrap(models=set())
        if shell is None:
            return shims
        return _from_shell(shell, shims, name, weights_only)

    # --- ray-zerocopy 0.2's serialize() / deserialize(**d) ----------------

    @property
    def model_refs(self) -> dict[str, Any]:
        """Model name -> the blob's Ray ObjectRef (one object holds every
        model), put into the object store now if it was not yet. Needs an
        initialized Ray (UsageError otherwise)."""
        return {name: self._blob_ref("model_refs") for name in self.model_names}

    @property
    def _skeleton(self) -> dict[str, Any]:
        """serialize()["skeleton"]: the actor config (ray-zerocopy kept the
        stripped model here; zcwrap's is in the blob)."""
        return self.serialize()["skeleton"]

    @property
    def _model_info(self) -> dict[str, Any]:
        """serialize()["model_info"]."""
        return self.serialize()["model_info"]

    def _blob_ref(self, what: str) -> Any:
        if self._ray_ref is None and self._memory is None:
            if not _ray.active():
                raise UsageError(f"{what}: the blob goes to Ray's object store only inside a Ray job (ray.init()); "
                                 f"here it is the file {self.blob_path}")
            self._ray_ref = _ray.put_blob(self.blob_path)
        return self._ray_ref

    def serialize(self) -> dict[str, Any]:
        """ray-zerocopy 0.2's serialize(): a dict that
        ``ModelWrapper.deserialize(**d)`` turns back into this wrapper, with
        its keys ("skeleton", "model_info", "is_standalone_module", "mode").
        "skeleton" is the actor config (to_actor(): the blob's path, size,
        checksum and models, plain values); "model_info" maps each model
        to the blob's Ray ObjectRef (None outside a Ray job), and in task
        mode to (ref, the methods it exposes). Like the wrapper's pickle it
        holds no code and no weights."""
        ref = self._ray_ref
        if ref is None and self._memory is None and _ray.active():
            ref = self._blob_ref("serialize()")
        config = self.to_actor()
        config["task_cache"] = self._task_cache
        if self._mode == "task":
            info: dict[str, Any] = {n: (ref, set(self._methods.get(n, {"__call__"}))) for n in self.model_names}
        else:
            info = {n: ref for n in self.model_names}
        return {"skeleton": config, "model_info": info, "is_standalone_module": self.is_standalone_module,
                "mode": self._mode}

    @classmethod
    def deserialize(cls, skeleton: dict[str, Any], model_info: dict[str, Any], is_standalone_module: bool = False,
                    mode: str = "actor") -> "ModelWrapper":
        """The wrapper serialize() described. Like unpickling, it does not
        touch the blob: load() checks it. BadBlobError for a dict that
        serialize() did not make."""
        if not isinstance(mode, str) or mode not in _MODES:
            raise UsageError(f"Invalid mode: {_brief(mode)}: use 'actor' or 'task'")
        if not isinstance(skeleton, dict) or not isinstance(model_info, dict):
            raise BadBlobError(f"{cls.__name__}.deserialize: 'skeleton' must be the actor config and 'model_info' a "
                               "dict, as serialize() makes them (not ray-zerocopy's own)")
        config = dict(skeleton)
        cache = config.pop("task_cache", False)
        refs, methods = [], {}
        for name, info in model_info.items():
            if mode == "task":
                if not (isinstance(info, tuple) and len(info) == 2 and isinstance(info[1], (set, frozenset))):
                    raise BadBlobError(f"{cls.__name__}.deserialize: model_info['{name}'] must be (ref, set of "
                                       "methods) in task mode")
                refs.append(info[0])
                methods[name] = set(info[1])
            else:
                refs.append(info)
        ray_ref = next((r for r in refs if r is not None), None)
        wrapper = _restore(config, None, None, ray_ref, mode, methods, _flag("task_cache", cache))
        if wrapper.is_standalone_module != bool(is_standalone_module) or set(model_info) != set(wrapper.model_names):
            raise BadBlobError(f"{cls.__name__}.deserialize: 'is_standalone_module' or the models of 'model_info' "
                               "do not match the actor config")
        return _as_class(cls, wrapper)

    def unpack(self, path: str | os.PathLike[str], model: str = "") -> None:
        """Writes a model back as a standard file: a TorchScript model as a
        file torch.jit.load opens, a torch.export program as a .pt2 that
        torch.export.load opens (written by torch.export.save beside `path`,
        then renamed into place). BadModelError for an eager model."""
        checked = _path_arg("path", path)
        if checked is None or not isinstance(model, str):
            raise UsageError(f"unpack(path={_brief(path)}, model={_brief(model)}): path is a file path, model a "
                             "model name (a string)")
        name = model or (self.model_names[0] if self.is_standalone_module else "")
        kinds = dict(zip(self.model_names, self._kinds or self._native_wrapper().model_kinds))
        if kinds.get(name) == _export.KIND:  # torch.export.save writes it: Python's part
            _export.save(self._unwrap("cpu", models={name})[0][name], checked)
            return
        self._native_wrapper().unpack(checked, model)

    def __reduce__(self) -> Any:
        # The config (and a memory blob's bytes), never the unwrapped weights;
        # unpickling does not touch the blob: unwrap() checks it. Inside a
        # Ray job the blob goes to Ray's object store once (_ray.py).
        task = (self._mode, self._methods, self._task_cache)
        if self._memory is not None:
            return (_restore_as, (type(self), self._config, self._kinds, memoryview(self._memory).cast("B").tobytes(),
                                  None, *task))
        if self._ray_ref is None and _ray.active():
            self._ray_ref = _ray.put_blob(self.blob_path)
        return (_restore_as, (type(self), self._config, self._kinds, None, self._ray_ref, *task))

    def __repr__(self) -> str:
        what = "standalone" if self.is_standalone_module else "pipeline " + ", ".join(self.model_names)
        return f"<zcwrap.{type(self).__name__} {what} ({self._mode} mode) at {self.blob_path}>"


def _as_class(cls: type, wrapper: ModelWrapper) -> ModelWrapper:
    """`wrapper` as an instance of `cls` (a ModelWrapper subclass: JITModelWrapper)."""
    if cls is not type(wrapper) and isinstance(cls, type) and issubclass(cls, ModelWrapper):
        wrapper.__class__ = cls
    return wrapper


def _restore_as(cls: type, *args: Any) -> ModelWrapper:
    if not (isinstance(cls, type) and issubclass(cls, ModelWrapper)):
        raise BadBlobError("a pickled zcwrap.ModelWrapper: its state is damaged (its class is not a ModelWrapper)")
    return _as_class(cls, _restore(*args))


def _restore(config: dict[str, Any], kinds: Optional[list[str]], memory: Optional[bytes],
             ray_ref: Any = None, mode: str = "actor", methods: Optional[dict[str, set[str]]] = None,
             task_cache: bool = False) -> ModelWrapper:
    # What the wrapper's properties and repr read must be there; every other
    # field is checked by the native side when the blob is opened.
    # The pins are passed to the native side as they are on the Ray path.
    if not (isinstance(config, dict) and isinstance(config.get("blob"), str)
            and isinstance(config.get("standalone"), bool) and isinstance(config.get("models"), list)
            and all(isinstance(m, str) for m in config["models"])
            and type(config.get("blob_size")) is int and 0 <= config["blob_size"] < 2**64
            and isinstance(config.get("meta_checksum"), str)
            and (kinds is None or isinstance(kinds, list)) and (memory is None or isinstance(memory, bytes))
            and mode in _MODES and isinstance(task_cache, bool)
            and (methods is None or (isinstance(methods, dict) and all(
                isinstance(v, (set, frozenset)) and all(isinstance(m, str) for m in v) for v in methods.values())))):
        raise BadBlobError("a pickled zcwrap.ModelWrapper: its state is damaged (an actor config with a string "
                           "'blob', an integer 'blob_size', a string 'meta_checksum', a bool 'standalone' and a "
                           "list of model names was expected)")
    if memory is not None:
        # Unpickled bytes have no alignment to speak of: an anonymous mapping
        # is page-aligned.
        aligned = mmap.mmap(-1, max(len(memory), 1))
        aligned[: len(memory)] = memory
        memory = memoryview(aligned)[: len(memory)]
    return ModelWrapper(config, kinds, memory, ray_ref, mode=mode, methods=methods, task_cache=task_cache)


def _native_of_buffer(buffer: Any, name: str) -> Any:
    """libzcwrap's wrapper over a blob in memory (any buffer-protocol object)."""
    if not isinstance(name, str):
        raise UsageError(f"name={_brief(name)}: must be a string (it names the blob in messages)")
    try:
        return _C.ModelWrapper.from_buffer(buffer, name)
    except (BufferError, TypeError, ValueError) as e:  # no buffer protocol, or not one contiguous block
        raise UsageError(f"{name}: not a contiguous buffer of bytes ({type(buffer).__name__}: {e})") from e


class JITModelWrapper(ModelWrapper):
    """ray-zerocopy 0.2's TorchScript wrapper: from_model, for_tasks and
    load for ``torch.jit.ScriptModule`` models and pipelines of them.

    zcwrap packs scripted, traced and eager modules alike (TorchScript ones
    as TorchScript, which the C++ library also reads), so this is
    ModelWrapper with ray-zerocopy's TorchScript default for task mode's
    `method_names`: ``("__call__", "forward")``."""

    _DEFAULT_METHODS = ("__call__", "forward")


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
        unwrapped = self.wrapper.unwrap(self.device, self.use_fast_load, **unwrap_options)
        # As ModelWrapper.load(): a standalone program comes back as its module().
        return _export.runnable(unwrapped) if self.wrapper.is_standalone_module else unwrapped

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
