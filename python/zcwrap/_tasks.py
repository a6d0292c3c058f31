"""Task mode: ray-zerocopy 0.2's ``for_tasks`` over zcwrap blobs.

In task mode ``load()`` gives back the model (or the pipeline) with every
packed module replaced by a :class:`TaskShim`. Calling one of the shim's
exposed methods runs one Ray task, which unwraps that model in its worker
from the node's object store (read-only and zero-copy, as an actor does:
the wrapper travels as its small config and the blob's ObjectRef, see
_ray.py), calls the method under ``torch.no_grad()``, and returns what the
method returned; the call blocks until then, as ray-zerocopy's does.

Like ray-zerocopy, each task rebuilds the model it calls by default, so no
call sees what an earlier one left in the module's Python state. With
``cache=True`` (from_model / for_tasks) each worker process keeps the
models it unwrapped, keyed by the blob's identity, and warm tasks call
them directly.
"""

from __future__ import annotations

import threading
from typing import Any

import torch

from . import _export
from .errors import UsageError

# (blob size, meta checksum, blob path) -> model name -> the unwrapped model,
# in this worker process (cache=True only).
_CACHE: dict[tuple[int, str, str], dict[str, Any]] = {}
_CACHE_LOCK = threading.Lock()
_REMOTE: Any = None


def exposed_methods(model: Any, method_names: Any) -> set[str]:
    """The methods of `model` a shim exposes: those of `method_names` the
    model has, and ``__call__`` (every module is callable): ray-zerocopy's
    rule."""
    if isinstance(method_names, str) or not all(isinstance(m, str) for m in method_names):
        raise UsageError(f"method_names={method_names!r}: must be a tuple of method names")
    if _export.accepts(model):
        # A program runs as its module(): the shim's calls run ep.module()(...)
        # in the task, and shim.module() is the shim itself.
        return {"__call__", "module"}
    methods = {m for m in method_names if hasattr(model, m)}
    if callable(model):
        methods.add("__call__")
    return methods


def _model(wrapper: Any, name: str) -> Any:
    """Model `name` of `wrapper`, unwrapped here (or from this process's cache)."""
    if not wrapper._task_cache:
        return _export.runnable(wrapper._unwrap_models(only=name)[name])
    key = (int(wrapper._config["blob_size"]), str(wrapper._config["meta_checksum"]), wrapper.blob_path)
    with _CACHE_LOCK:
        models = _CACHE.setdefault(key, {})
        if name not in models:
            models[name] = _export.runnable(wrapper._unwrap_models(only=name)[name])
        return models[name]


def call_model(wrapper: Any, name: str, method: str, args: tuple, kwargs: dict) -> Any:
    """What the task runs: `method` of model `name`, under torch.no_grad()."""
    model = _model(wrapper, name)
    with torch.no_grad():
        if method == "__call__":
            return model(*args, **kwargs)
        return getattr(model, method)(*args, **kwargs)


def _remote() -> Any:
    """call_model as a Ray remote function (one CPU, ray-zerocopy's default)."""
    global _REMOTE
    if _REMOTE is None:
        import ray

        _REMOTE = ray.remote(call_model)
    return _REMOTE


class TaskShim:
    """A packed model in task mode: each call of an exposed method runs one
    Ray task that unwraps the model zero-copy on its node and returns the
    method's result.

    Attributes that are not exposed methods raise AttributeError, as in
    ray-zerocopy; a shim pickles as its wrapper's config, the blob's
    ObjectRef and the method names."""

    def __init__(self, wrapper: Any, name: str, methods: set[str]) -> None:
        self._wrapper = wrapper
        self._name = name
        self._allowed_methods = set(methods)

    def _run(self, method: str, args: tuple, kwargs: dict) -> Any:
        import ray

        return ray.get(_remote().remote(self._wrapper, self._name, method, args, kwargs))

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")
        if name == "module" and name in self._allowed_methods:
            return lambda: self  # a torch.export program's shim: shim.module()(x) runs as shim(x)
        if name in self._allowed_methods:
            def proxy(*args: Any, **kwargs: Any) -> Any:
                return self._run(name, args, kwargs)

            proxy.__name__ = name
            return proxy
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}' (the methods this "
                             f"task-mode model exposes: {', '.join(sorted(self._allowed_methods))}; pass "
                             "method_names=(...) to expose others)")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if "__call__" not in self._allowed_methods:
            raise TypeError(f"'{type(self).__name__}' object is not callable")
        return self._run("__call__", args, kwargs)

    def __reduce__(self) -> Any:
        return (TaskShim, (self._wrapper, self._name, self._allowed_methods))

    def __repr__(self) -> str:
        return (f"<zcwrap task-mode model '{self._name}' of {self._wrapper.blob_path}: "
                f"{', '.join(sorted(self._allowed_methods))} run as Ray tasks>")
