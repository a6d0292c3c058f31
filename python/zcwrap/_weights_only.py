"""weights_only: unpickle a blob's pickles only if they import nothing but data types.

A pickle runs whatever globals it names. With ``weights_only`` a global is
accepted only when it is

* in torch's own weights-only allowlist (what ``torch.load(weights_only=True)``
  accepts: tensor rebuild functions, dtypes, ``torch.Size``, ``torch.device``,
  ``collections.OrderedDict``, ``builtins.set``, ...);
* a ``torch.nn`` module class: a subclass of ``nn.Module`` defined in a
  ``torch.nn`` module, under its own name (``torch.nn.modules.linear.Linear``),
  but not the ``torch.nn.parallel`` wrappers (``DistributedDataParallel``
  rebuilds itself around the process's process group and devices);
* a function of ``torch.nn.functional`` (or its C half, ``torch._C._nn``),
  named by its own module: modules keep their activation as an attribute
  (``nn.TransformerEncoderLayer`` holds ``F.relu``), and these functions
  compute on tensors only;
* allowed by the user through torch's own ``torch.serialization.add_safe_globals``
  or inside ``torch.serialization.safe_globals(...)``.

Nothing else: every global of every pickle is checked from the pickle's
opcodes (``_C.pickle_globals``) before anything is unpickled, and again by
the unpickler's ``find_class``. Only modules already imported are looked
into, so a check imports nothing.
"""

from __future__ import annotations

import os
import sys
import types
from typing import Any, Optional

from torch import nn

from . import _C
from .errors import BadModelError, UsageError

ENV = "ZCWRAP_WEIGHTS_ONLY"
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")


class _Refused:
    """What allowed() returns for a global it does not accept."""


REFUSED = _Refused()


def resolve(weights_only: Optional[bool]) -> bool:
    """`weights_only` as given, else $ZCWRAP_WEIGHTS_ONLY (unset: False)."""
    if weights_only is not None:
        if not isinstance(weights_only, bool):
            raise UsageError(f"weights_only={weights_only!r}: must be True, False or None")
        return weights_only
    value = os.environ.get(ENV, "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise UsageError(f"{ENV}={os.environ[ENV]!r}: use 1 (restricted unpickling by default) or 0")


def _torch_lists() -> tuple[dict[str, Any], dict[str, Any]]:
    """torch's weights-only allowlist, and what the user added to it."""
    try:
        from torch import _weights_only_unpickler as wou

        return wou._get_allowed_globals(), wou._get_user_allowed_globals()
    except (ImportError, AttributeError) as e:  # torch before 2.4 has no user allowlist
        raise UsageError(f"weights_only needs torch's weights-only allowlist (torch 2.4 or later): {e}") from e


def _lookup(module: str, name: str) -> Any:
    """The object `module`.`name` names, from modules already imported only;
    None when there is none. No dunder attribute is followed."""
    obj: Any = sys.modules.get(module)
    for part in name.split("."):
        if obj is None or not part or part.startswith("__"):
            return None
        obj = getattr(obj, part, None)
    return obj


def allowed(module: str, name: str) -> Any:
    """The object a weights-only unpickler may use for global `module`.`name`,
    or REFUSED."""
    torch_list, user_list = _torch_lists()
    full = f"{module}.{name}"
    if full in user_list:
        return user_list[full]
    if full in torch_list:
        return torch_list[full]
    if module.startswith("torch.nn.") and not module.startswith("torch.nn.parallel.") and "." not in name:
        obj = _lookup(module, name)
        if (isinstance(obj, type) and issubclass(obj, nn.Module) and obj.__module__ == module
                and obj.__qualname__ == name):
            return obj
        if (module == "torch.nn.functional" and isinstance(obj, (types.FunctionType, types.BuiltinFunctionType))
                and getattr(obj, "__module__", None) == module and obj.__name__ == name):
            return obj
    if module == "torch._C._nn" and "." not in name:
        obj = _lookup(module, name)
        if isinstance(obj, types.BuiltinFunctionType) and obj.__name__ == name:
            return obj
    return REFUSED


def refusal(where: str, what: str, names: list[str]) -> BadModelError:
    listed = ", ".join(names)
    return BadModelError(
        f"{where}: weights_only refuses {what}: its pickle imports {listed} (not in torch's weights-only "
        f"allowlist, not a torch.nn module class); if you trust it, allow it with "
        f"torch.serialization.add_safe_globals([{listed}]) or inside torch.serialization.safe_globals([...])")


def check(where: str, what: str, pickle: bytes) -> None:
    """Raises BadModelError unless every global `pickle` imports is allowed.
    Reads the opcodes only: nothing is imported or run."""
    globals_, error = _C.pickle_globals(pickle)
    if error:
        raise BadModelError(f"{where}: weights_only refuses {what}: what its pickle imports cannot be told "
                            f"({error})")
    refused = [f"{module}.{name}" for module, name in globals_ if allowed(module, name) is REFUSED]
    if refused:
        raise refusal(where, what, refused)


def refuse_by_value(where: str, what: str, pickle_bytes: bytes) -> None:
    """A pickle that carries code by value (cloudpickle's, for a class or
    function defined in the driver's __main__ or inside a function) is
    refused with that reason, before anything is read."""
    globals_, _ = _C.pickle_globals(pickle_bytes)
    code = sorted({m for m, _ in globals_ if m.split(".")[0] == "cloudpickle" or m.startswith("ray.cloudpickle")})
    if code:
        raise BadModelError(f"{where}: weights_only refuses {what}: it carries code pickled by value "
                            f"(its pickle imports {', '.join(code)}), because a class or function of it was defined "
                            "in the driver's __main__ or inside a function; weights_only runs no code from a blob: "
                            "define the class in a module the workers import and allow it with "
                            "torch.serialization.add_safe_globals([...])")


def check_pickle(where: str, what: str, pickle_bytes: bytes) -> None:
    """weights_only's whole test of one pickle, before it is read: no code
    by value (refuse_by_value), and only allowed globals (check)."""
    refuse_by_value(where, what, pickle_bytes)
    check(where, what, pickle_bytes)
