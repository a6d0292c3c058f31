"""torch.export programs as skeletons: the graph and signature in torch's own
JSON, every tensor in the blob's data section.

A skeleton of kind ``torch_export`` is one UTF-8 JSON document (no pickle)::

    {"format": "zcwrap-torch-export", "version": 1, "torch_version": "2.14.1+cu130",
     "program": "<torch's serialized ExportedProgram: graph, signature, module
                 call graph, range constraints, verifiers, guards>",
     "tensors": [{"in": "state_dict", "name": "conv.weight", "parameter": true, "requires_grad": true}, ...],
     "example_inputs": {"spec": "<pytree TreeSpec JSON>", "leaves": [{"tensor": 7}, {"value": 3}]} or null}

``program`` is what ``torch._export.serde.serialize.serialize`` writes for
the program (what ``torch.export.save`` puts in a ``.pt2``) with the state
dict, the constants and the example inputs left out. ``tensors`` lists, in the
manifest's order, where each of the model's tensors goes back: ``state_dict``
(parameters and persistent buffers), ``constants`` (non-persistent buffers
and lifted tensor constants) or ``example_inputs`` (leaf N of the example
inputs). Their bytes are in the blob's data section like any other model's:
aligned, checksummed, deduplicated by storage, mapped zero-copy at unwrap.

Rebuilding hands torch's deserializer the mapped tensors as the state dict,
constants and example inputs, so it copies nothing. Nothing is unpickled.
What torch's deserializer evaluates is checked first under ``weights_only``
(see check_program): it compiles the program's symbolic shape expressions with
sympy (``sympify``, which evaluates Python) and ``ep.module()`` compiles its
guards (``exec``), so a blob could otherwise run code through them.
"""

from __future__ import annotations

import ast
import gc
import json
import math
import os
import re
import tempfile
import types
from typing import Any

import torch
from torch import nn

from . import _C
from .errors import BadBlobError, BadModelError, Error, UsageError

KIND = "torch_export"
FORMAT = "zcwrap-torch-export"
VERSION = 1


def _exported_program_class() -> Any:
    """torch.export.ExportedProgram, or None on a torch without torch.export (1.13)."""
    export = getattr(torch, "export", None)
    return getattr(export, "ExportedProgram", None)


def available() -> bool:
    """Whether this torch has torch.export (2.1 and later)."""
    return _exported_program_class() is not None


def accepts(obj: Any) -> bool:
    """True for a torch.export.ExportedProgram."""
    cls = _exported_program_class()
    return cls is not None and isinstance(obj, cls)


def runnable(obj: Any) -> Any:
    """What a caller runs: an ExportedProgram's ``module()`` (a program itself
    is not callable), anything else as it is."""
    return obj.module() if accepts(obj) else obj


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else ""


# --- packing ---------------------------------------------------------------------


class _OnCpu:
    """CPU tensors for the data section: a CPU tensor as it is; another device's
    copied once per storage, so views keep sharing."""

    def __init__(self) -> None:
        self._storages: dict[tuple[str, int], torch.UntypedStorage] = {}

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        t = t.detach()
        if t.device.type == "cpu":
            return t
        storage = t.untyped_storage()
        key = (str(t.device), storage.data_ptr())
        cpu = self._storages.get(key)
        if cpu is None:
            cpu = self._storages[key] = storage.cpu()
        return torch.empty(0, dtype=t.dtype).set_(cpu, t.storage_offset(), t.size(), t.stride())


def _plain_tensor(t: Any) -> bool:
    return type(t) in (torch.Tensor, nn.Parameter)


def _example_inputs(ep: Any, on_cpu: _OnCpu) -> tuple[Any, list[torch.Tensor]]:
    """The example inputs as (JSON description, their tensors), or (None, [])
    where they cannot be described in JSON (a leaf that is neither a plain
    tensor nor a JSON scalar, a container pytree cannot name): the program is
    then stored without them, as ``torch.export.save`` would store
    ``example_inputs=None``."""
    inputs = ep.example_inputs
    if inputs is None:
        return None, []
    from torch.utils import _pytree as pytree

    try:
        leaves, spec = pytree.tree_flatten(inputs)
        spec_text = pytree.treespec_dumps(spec)
    except Exception:  # a container type pytree cannot serialize
        return None, []
    described: list[dict[str, Any]] = []
    tensors: list[torch.Tensor] = []
    for leaf in leaves:
        if isinstance(leaf, torch.Tensor):
            if not _plain_tensor(leaf) or leaf.layout != torch.strided or leaf.device.type == "meta":
                return None, []
            tensor = on_cpu(leaf)
            if not _C.shareable(tensor):
                return None, []
            described.append({"tensor": len(tensors)})
            tensors.append(tensor)
        elif leaf is None or isinstance(leaf, (bool, int, str)) or (isinstance(leaf, float) and math.isfinite(leaf)):
            described.append({"value": leaf})
        else:
            return None, []
    return {"spec": spec_text, "leaves": described}, tensors


def skeleton_of(name: str, ep: Any) -> tuple[bytes, list[tuple[str, str, torch.Tensor]], int]:
    """The skeleton of ExportedProgram `ep` (module docstring), its tensors
    (path, manifest kind, CPU tensor) in the skeleton's order, and 0 bytes
    unshared: the skeleton carries no tensor data.

    BadModelError for a program torch cannot serialize, one holding a
    constant that is not a plain tensor (a torchbind object, an opaque
    object), or a tensor the data section cannot hold (sparse, nested,
    meta, a tensor subclass)."""
    what = f"model '{name}'"
    if not accepts(ep):
        raise UsageError(f"{what}: {type(ep).__name__} is not a torch.export.ExportedProgram")
    from torch._export.serde import serialize as serde

    signature = ep.graph_signature
    parameters = set(signature.parameters)
    non_persistent = set(signature.non_persistent_buffers)
    buffers = set(signature.buffers)
    on_cpu = _OnCpu()
    entries: list[dict[str, Any]] = []
    tensors: list[tuple[str, str, torch.Tensor]] = []

    def add(group: str, key: str, value: Any, kind: str) -> None:
        if not isinstance(value, torch.Tensor):
            raise BadModelError(f"{what}: {group} entry '{key}' is a {type(value).__name__}, not a tensor: zcwrap "
                                "shares a program's tensors only (torchbind and opaque objects are not supported)")
        if not _plain_tensor(value) or value.layout != torch.strided or value.is_nested or value.device.type == "meta":
            raise BadModelError(f"{what}: {group} entry '{key}' ({type(value).__name__}, {value.layout}, on "
                                f"{value.device}) cannot be shared: the data section holds dense tensors with data")
        tensor = on_cpu(value)
        if not _C.shareable(tensor):
            raise BadModelError(f"{what}: {group} entry '{key}' ({tensor.dtype}) cannot be shared")
        entries.append({"in": group, "name": key, "parameter": isinstance(value, nn.Parameter),
                        "requires_grad": bool(value.requires_grad)})
        tensors.append((key, kind, tensor))

    for key, value in ep.state_dict.items():
        add("state_dict", key, value, "parameter" if key in parameters else "buffer")
    for key, value in ep.constants.items():
        # Non-persistent buffers are buffers; the rest are the graph's lifted tensor constants.
        add("constants", key, value, "buffer" if key in non_persistent or key in buffers else "constant")
    examples, example_tensors = _example_inputs(ep, on_cpu)
    for index, tensor in enumerate(example_tensors):
        entries.append({"in": "example_inputs", "name": str(index), "parameter": False, "requires_grad": False})
        tensors.append((f"example_inputs[{index}]", "attribute", tensor))

    try:
        artifact = serde.serialize(ep, serialize_state_dict=False, serialize_constants=False,
                                   serialize_example_inputs=False)
    except Exception as e:  # torch's serializer raises SerializeError, AssertionError, ...
        raise BadModelError(f"{what}: torch.export's serializer cannot save this program: {type(e).__name__}: "
                            f"{_first_line(e)}") from e
    document = {"format": FORMAT, "version": VERSION, "torch_version": torch.__version__,
                "program": artifact.exported_program.decode("utf-8"), "tensors": entries,
                "example_inputs": examples}
    return json.dumps(document, separators=(",", ":"), allow_nan=False).encode("utf-8"), tensors, 0


# --- what weights_only checks ----------------------------------------------------------

# Symbolic shape expressions ("s0 + 1", "Mod(s0, 2)", "Max(1, s1)") are parsed
# by torch's deserializer with sympy.sympify, which evaluates its input as
# Python: calls are allowed only of sympy's and torch's integer functions.
_SYMPY_CALLS = frozenset({
    # sympy's classes, as srepr writes them: Mul(Integer(10), Symbol('s28', positive=True, integer=True))
    "Abs", "Add", "And", "BooleanFalse", "BooleanTrue", "Dummy", "Eq", "Equality", "Float", "Ge", "GreaterThan", "Gt",
    "Half", "ITE", "Infinity", "Integer", "Le", "LessThan", "Lt", "Max", "Min", "Mod", "Mul", "Ne", "NegativeInfinity",
    "NegativeOne", "Not", "One", "Or", "Piecewise", "Pow", "Rational", "StrictGreaterThan", "StrictLessThan",
    "Symbol", "Tuple", "Unequality", "Zero", "ceiling", "floor", "sqrt",
    # torch's integer functions (what torch's deserializer hands sympify)
    "CeilDiv", "CeilToInt", "CleanDiv", "FloatPow", "FloatTrueDiv", "FloorDiv", "FloorToInt", "Identity",
    "IntTrueDiv", "IsNonOverlappingAndDenseIndicator", "LShift", "ModularIndexing", "PowByNatural", "PythonMod",
    "RShift", "RoundDecimal", "RoundToInt", "ToFloat", "TruncToFloat", "TruncToInt", "Where"})
# Guards ("L['x'].size()[0] <= 64") are compiled by ep.module() with exec, in
# a namespace of math, torch and sympy's interpreters.
_GUARD_CALLS = frozenset({"IsNonOverlappingAndDenseIndicator", "cast_symbool_to_symint_guardless", "int", "float",
                          "bool", "abs", "min", "max", "round"})
_GUARD_NAMES = frozenset({"L", "math", "torch", "inf"}) | _GUARD_CALLS
_TENSOR_METHODS = frozenset({"size", "stride", "storage_offset", "dim", "numel", "shape"})
_ARITHMETIC = (ast.Expression, ast.BinOp, ast.UnaryOp, ast.BoolOp, ast.Compare, ast.Constant, ast.Load,
               ast.operator, ast.unaryop, ast.boolop, ast.cmpop, ast.Tuple, ast.keyword)
# A name standing alone in a size is a size variable (s0, u3, zuf0) or one of
# sympy's constants; builtins (eval, open) and sympy's other names are refused.
_SYMBOL = re.compile(r"[a-z]+[0-9]+\Z")
_SYMPY_CONSTANTS = frozenset({"oo", "zoo", "nan", "pi", "E", "I", "true", "false"})


def _refuse(where: str, what: str, text: str) -> BadModelError:
    shown = text if len(text) <= 80 else text[:77] + "..."
    return BadModelError(f"{where}: weights_only refuses the exported program: its {what} {shown!r} is not a "
                         "plain arithmetic expression (torch evaluates it as Python code)")


def _check_sym_expr(where: str, text: str) -> None:
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError) as e:
        raise _refuse(where, "symbolic shape expression", text) from e
    functions = {id(node.func) for node in ast.walk(tree) if isinstance(node, ast.Call)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            # A called name is checked as the call's function, below.
            if not (id(node) in functions or _SYMBOL.match(node.id) or node.id in _SYMPY_CONSTANTS):
                raise _refuse(where, "symbolic shape expression", text)
        elif isinstance(node, ast.Call):
            if not (isinstance(node.func, ast.Name) and node.func.id in _SYMPY_CALLS):
                raise _refuse(where, "symbolic shape expression", text)
        elif not isinstance(node, _ARITHMETIC):
            raise _refuse(where, "symbolic shape expression", text)


def _check_guard(where: str, text: str) -> None:
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError) as e:
        raise _refuse(where, "guard", text) from e
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            ok = node.id in _GUARD_NAMES
        elif isinstance(node, ast.Attribute):
            base = node.value.id if isinstance(node.value, ast.Name) else None
            ok = not node.attr.startswith("_") and (
                node.attr in _TENSOR_METHODS or base == "math" or (base == "torch" and node.attr.startswith("sym_")))
        elif isinstance(node, ast.Call):
            func = node.func
            ok = (isinstance(func, ast.Name) and func.id in _GUARD_CALLS) or isinstance(func, ast.Attribute)
        else:
            ok = isinstance(node, _ARITHMETIC + (ast.Subscript, ast.Slice))
        if not ok:
            raise _refuse(where, "guard", text)


def _walk_strings(obj: Any, key: str, found: list[str]) -> None:
    """Every string under `key` anywhere in a parsed JSON document."""
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for k, v in item.items():
                if k == key and isinstance(v, str):
                    found.append(v)
                else:
                    stack.append(v)
        elif isinstance(item, list):
            stack.extend(item)


def check_program(where: str, program: dict[str, Any]) -> None:
    """weights_only, before torch reads the program: every symbolic shape
    expression and every guard must be plain arithmetic over sizes."""
    exprs: list[str] = []
    _walk_strings(program, "expr_str", exprs)
    for text in exprs:
        _check_sym_expr(where, text)
    guards = program.get("guards_code") or []
    if not isinstance(guards, list) or not all(isinstance(g, str) for g in guards):
        raise BadBlobError(f"{where}: the exported program's guards_code is not a list of strings")
    for text in guards:
        _check_guard(where, text)


def _check_operators(where: str, ep: Any) -> None:
    """weights_only, after: every operator the graphs call or pass along is an
    ATen or higher-order operator or one of the builtins torch's export
    verifier allows (the verifier itself checks call targets, not arguments)."""
    from torch._export.verifier import Verifier
    from torch._ops import HigherOrderOperator, OpOverload, OpOverloadPacket
    from torch.utils import _pytree as pytree

    builtins = Verifier().allowed_builtin_ops()
    for module in ep.graph_module.modules():
        if not isinstance(module, torch.fx.GraphModule):
            continue
        for node in module.graph.nodes:
            candidates = pytree.tree_leaves((node.args, node.kwargs))
            if node.op == "call_function":
                candidates.append(node.target)
            for op in candidates:
                if isinstance(op, (torch.fx.Node, torch.Tensor, torch.dtype, torch.device, torch.memory_format,
                                   torch.layout, type)) or not callable(op):
                    continue
                if isinstance(op, (OpOverload, HigherOrderOperator, OpOverloadPacket)) or any(op is b for b in builtins):
                    continue
                raise BadModelError(f"{where}: weights_only refuses the exported program: node '{node.name}' "
                                    f"uses {op!r}, which is not an ATen or higher-order operator")


# --- rebuilding --------------------------------------------------------------------


class _Schema:
    """torch's program JSON (parsed) to torch's schema dataclasses, as
    ``torch._export.serde.serialize._dict_to_dataclass`` makes them, with each
    class's type hints worked out once: torch's own conversion calls
    ``typing.get_type_hints`` for every object of the document, which is
    most of ``torch.export.load``'s time (about 60% for a resnet50).
    Anything it does not expect raises; rebuild then uses torch's own."""

    def __init__(self) -> None:
        import dataclasses
        import typing

        from torch._export.serde import schema
        from torch._export.serde.union import _Union

        self._dataclasses, self._typing, self._schema, self._union = dataclasses, typing, schema, _Union
        self._hints: dict[Any, dict[str, Any]] = {}
        self._fields: dict[Any, tuple[str, ...]] = {}

    def _resolve(self, cls: Any) -> Any:
        if isinstance(cls, str):
            resolved = getattr(self._schema, cls, None)
            if resolved is None:
                raise TypeError(f"unresolved schema type {cls!r}")
            return resolved
        if isinstance(cls, self._typing.ForwardRef):
            return self._resolve(cls.__forward_arg__)
        return cls

    def _hints_of(self, cls: Any) -> dict[str, Any]:
        hints = self._hints.get(cls)
        if hints is None:
            hints = self._hints[cls] = self._typing.get_type_hints(cls, globalns=vars(self._schema))
        return hints

    def convert(self, cls: Any, data: Any) -> Any:
        typing = self._typing
        cls = self._resolve(cls)
        origin = typing.get_origin(cls)
        if origin is typing.Annotated:
            return self.convert(cls.__origin__, data)
        if origin in (typing.Union, types.UnionType) and type(None) in typing.get_args(cls):
            if data is None:
                return None
            args = typing.get_args(cls)
            if len(args) != 2:
                raise TypeError(f"{cls}: an optional of more than one type")
            return self.convert(args[0], data)
        if isinstance(cls, type) and issubclass(cls, self._union):
            if not (isinstance(data, dict) and len(data) == 1):
                raise TypeError(f"{cls.__name__}: not a one-key object")
            ((tag, value),) = data.items()
            return cls.create(**{tag: self.convert(self._hints_of(cls)[tag], value)})
        if self._dataclasses.is_dataclass(cls):
            names = self._fields.get(cls)
            if names is None:
                names = self._fields[cls] = tuple(f.name for f in self._dataclasses.fields(cls))
            hints = self._hints_of(cls)
            return cls(**{n: self.convert(hints[n], data[n]) for n in names if n in data})
        if isinstance(data, list):
            if not data:
                return data
            item = typing.get_args(cls)[0]
            return [self.convert(item, d) for d in data]
        if isinstance(data, dict):
            value = typing.get_args(cls)[1]
            return {k: self.convert(value, v) for k, v in data.items()}
        if cls is float:
            return float(data)
        return data


def _deserialize(program_text: str, program: Any, state_dict: dict[str, torch.Tensor],
                 constants: dict[str, torch.Tensor], example_inputs: Any) -> Any:
    """torch's deserializer over the given tensors: the JSON converted by
    _Schema (torch's own conversion where that fails), then
    ``ExportedProgramDeserializer``, as ``torch._export.serde.serialize.deserialize`` does."""
    from torch._export.serde import schema
    from torch._export.serde import serialize as serde

    try:
        parsed = program if program is not None else json.loads(program_text)
        serialized = _Schema().convert(schema.ExportedProgram, parsed)
    except Exception:  # a document this converter does not expect: torch's own reads it (or says why not)
        artifact = serde.SerializedArtifact(program_text.encode("utf-8"), state_dict, constants,  # type: ignore[arg-type]
                                            example_inputs)
        return serde.deserialize(artifact)
    return serde.ExportedProgramDeserializer().deserialize(serialized, state_dict, constants, example_inputs)



def _document(where: str, skeleton: bytes) -> dict[str, Any]:
    try:
        document = json.loads(skeleton)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise BadBlobError(f"{where}: the exported program's skeleton is not JSON: {_first_line(e)}") from e
    if not (isinstance(document, dict) and document.get("format") == FORMAT):
        raise BadBlobError(f"{where}: the skeleton is not a zcwrap torch.export skeleton (no \"format\": \"{FORMAT}\")")
    if document.get("version") != VERSION:
        raise BadBlobError(f"{where}: torch.export skeleton version {document.get('version')!r}; this zcwrap reads "
                           f"version {VERSION}: upgrade zcwrap")
    if not (isinstance(document.get("program"), str) and isinstance(document.get("tensors"), list)):
        raise BadBlobError(f"{where}: the torch.export skeleton lacks its program or its tensor list")
    return document


def _example_inputs_back(where: str, examples: Any, tensors: list[torch.Tensor]) -> Any:
    if examples is None:
        return None
    from torch.utils import _pytree as pytree

    try:
        spec = pytree.treespec_loads(examples["spec"])
        leaves = []
        for leaf in examples["leaves"]:
            leaves.append(tensors[leaf["tensor"]] if "tensor" in leaf else leaf["value"])
        return pytree.tree_unflatten(leaves, spec)
    except Exception as e:  # a damaged description: KeyError, IndexError, TypeError, pytree's ValueError
        raise BadBlobError(f"{where}: the exported program's example inputs do not read back: "
                           f"{type(e).__name__}: {_first_line(e)}") from e


def _program(where: str, document: dict[str, Any]) -> dict[str, Any]:
    try:
        program = json.loads(document["program"])
    except (ValueError, RecursionError) as e:
        raise BadBlobError(f"{where}: the exported program is not JSON: {_first_line(e)}") from e
    if not isinstance(program, dict):
        raise BadBlobError(f"{where}: the exported program is not a JSON object")
    return program


def check(where: str, skeleton: bytes) -> None:
    """weights_only's test of a skeleton, before any skeleton of the blob is
    read: the program's Python expressions (check_program). rebuild with
    weights_only tests them again, and its operators once rebuilt."""
    check_program(where, _program(where, _document(where, skeleton)))


def rebuild(where: str, skeleton: bytes, tensors: list[torch.Tensor], weights_only: bool = False) -> Any:
    """The ExportedProgram of a ``torch_export`` skeleton over `tensors` (the
    model's tensors in manifest order, views of the blob): they become its
    state dict, constants and example inputs as they are, parameters wrapped
    as ``nn.Parameter`` over the same storage, with the requires_grad they
    were exported with.

    With `weights_only` the program's Python expressions and operators are
    checked first (check_program, then _check_operators)."""
    if not available():
        raise BadModelError(f"{where}: is a torch.export program; this torch ({torch.__version__}) has no "
                            "torch.export (2.1 or later)")
    document = _document(where, skeleton)
    entries = document["tensors"]
    if len(entries) != len(tensors):
        raise BadBlobError(f"{where}: the skeleton lists {len(entries)} tensors, the manifest {len(tensors)}")
    program_text = document["program"]
    program = None
    if weights_only:
        program = _program(where, document)
        check_program(where, program)

    state_dict: dict[str, torch.Tensor] = {}
    constants: dict[str, torch.Tensor] = {}
    example_tensors: list[torch.Tensor] = []
    for entry, tensor in zip(entries, tensors):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise BadBlobError(f"{where}: a tensor entry of the torch.export skeleton is damaged: {entry!r:.80}")
        group = entry.get("in")
        if group == "state_dict":
            # Parameters keep the requires_grad they were exported with, as
            # torch.export.load gives them: ATen picks kernels by it (matmul
            # folds a 3-d input only for a weight that does not require grad),
            # so flipping it changes results in the last bit.
            state_dict[entry["name"]] = (nn.Parameter(tensor, requires_grad=entry.get("requires_grad") is True)
                                         if entry.get("parameter") else tensor)
        elif group == "constants":
            constants[entry["name"]] = tensor
        elif group == "example_inputs":
            example_tensors.append(tensor)
        else:
            raise BadBlobError(f"{where}: tensor '{entry['name']}' of the torch.export skeleton goes to "
                               f"{group!r}, not state_dict, constants or example_inputs")
    example_inputs = _example_inputs_back(where, document.get("example_inputs"), example_tensors)

    # Python's cyclic collector would walk the whole heap again and again
    # while torch makes a node's objects (half of a resnet50's rebuild); the
    # objects made here are collected as usual afterwards.
    collecting = gc.isenabled()
    gc.disable()
    try:
        ep = _deserialize(program_text, program, state_dict, constants, example_inputs)
    except Error:
        raise
    except Exception as e:  # SerializeError (another schema version), SpecViolationError, KeyError, ...
        raise BadModelError(f"{where}: torch.export cannot rebuild the program (packed with torch "
                            f"{document.get('torch_version')}, this is {torch.__version__}): {type(e).__name__}: "
                            f"{_first_line(e)}") from e
    finally:
        if collecting:
            gc.enable()
    if weights_only:
        _check_operators(where, ep)
    return ep


# --- unpack ----------------------------------------------------------------------


def save(ep: Any, path: str) -> None:
    """`ep` written with torch.export.save as a ``.pt2`` at `path`: to a
    temporary file beside it, fsynced, then renamed over it, as the CLI writes
    every output. WriteError where it cannot."""
    from .errors import WriteError

    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise WriteError(f"{path}: is a folder; name a file to write")
    try:
        fd, temporary = tempfile.mkstemp(prefix=os.path.basename(path) + ".tmp-", dir=folder)
    except OSError as e:
        raise WriteError(f"{path}: cannot write beside it: {e.strerror}") from e
    try:
        with os.fdopen(fd, "wb") as out:
            os.fchmod(out.fileno(), 0o644)  # as the zcwrap command writes its outputs
            torch.export.save(ep, out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException as e:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        if isinstance(e, OSError):
            raise WriteError(f"{path}: {e.strerror or e}") from e
        if isinstance(e, Exception) and not isinstance(e, Error):
            raise BadModelError(f"{path}: torch.export.save cannot write the program: {type(e).__name__}: "
                                f"{_first_line(e)}") from e
        raise
