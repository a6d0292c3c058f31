"""Models compiled with AOTInductor (skeleton kind "aot_inductor").

libzcwrap loads them itself: it places the package's compiled code once per
machine in the store folder and runs it over the blob's tensors as
user-managed constants. Python gets a callable, as
torch._inductor.aoti_load_package gives one.
"""

from typing import Any

import torch
import torch.utils._pytree as pytree

from .errors import BadModelError

KIND = "aot_inductor"


class CompiledModel:
    """A model compiled with AOTInductor, unwrapped from a blob: call it as
    the exported model (the same arguments, the same result), as
    torch._inductor.aoti_load_package's model is called.

    Its weights are the blob's read-only shared tensors (`tensors`), bound as
    the compiled model's constants without a copy; they live as long as this
    object. Calls may come from several threads (libzcwrap's container
    serializes them); the GIL is released while the model runs."""

    def __init__(self, native: Any, where: str) -> None:
        self._native = native  # _C.UnwrappedModel: holds the unwrap, and so the mapping
        self._where = where
        in_spec, out_spec = native.call_spec
        self._in_spec = pytree.treespec_loads(in_spec)
        self._out_spec = pytree.treespec_loads(out_spec)

    @property
    def tensors(self) -> list[torch.Tensor]:
        """The constants, in the manifest's order, over the blob's mapping."""
        return list(self._native.tensors)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        flat = pytree.tree_flatten((args, self._in_spec_order(kwargs)))[0]
        flat = [x for x in flat if isinstance(x, torch.Tensor)]
        return pytree.tree_unflatten(self._native.run_flat(flat), self._out_spec)

    def _in_spec_order(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        # Keyword arguments flatten in the order export recorded them, as
        # torch's runner orders them (reorder_kwargs, not imported from its
        # torch.export.pt2_archive: that imports torch._inductor, 2 s of a
        # fresh worker's first call).
        spec = self._in_spec
        names = (list(spec.child(1).context) if spec.type is tuple and spec.num_children == 2
                 and spec.child(1).type is dict else [])
        if set(kwargs) != set(names):
            raise BadModelError(f"{self._where}: takes the keyword arguments ({', '.join(names) or 'none'}) "
                                f"it was exported with, got ({', '.join(kwargs) or 'none'})")
        return {name: kwargs[name] for name in names}

    def __repr__(self) -> str:
        count = len(self._native.tensors)
        size = sum(t.untyped_storage().nbytes() for t in self._native.tensors)
        return f"<zcwrap AOTInductor model {self._where}: {count} constants, {size} bytes, shared>"
