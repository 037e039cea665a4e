"""FlashInfer-Trace objects without FlashInfer: Definition, Workload, Solution and Trace as plain dataclasses.

Reads the union of the three dialects in use:

- flashinfer-bench core (``flashinfer_bench.data``): the four objects, workloads stored as "workload traces"
  (``{"definition", "workload"}`` lines in ``workloads/<op_type>/<name>.jsonl``);
- FlashInfer's ``fi_trace`` dumps (``flashinfer/trace/template.py``): ``init`` and ``check`` source strings, inputs
  and outputs marked ``optional``, outputs naming the API parameter they are written into (``param``) and in-place
  outputs named like an input, ``dtype`` "unknown" and const axes without a ``value`` (not extracted at trace time);
- SOL-ExecBench: ``expr`` axes (``expression`` over other axes), ``custom`` workload inputs with
  ``custom_inputs_entrypoint``, ``float64`` tensors, bare workload lines (no ``definition`` wrapper).

Writes the strict flashinfer-bench core (``to_json``): the fields its pydantic models declare, in their order;
whatever else a file held is kept in ``extra`` (re-emitted by ``to_json(strict=False)``, never dropped on read).

A malformed file is a ``TraceFormatError`` whose message is one line naming the file and the field
(``definitions/x.json: inputs.q.shape: axis 'n' is not declared in axes``); the CLI prints it and exits 2.
"""
from __future__ import annotations

import ast
import json
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

DTYPES = ("float64", "float32", "float16", "bfloat16", "float8_e4m3fn", "float8_e5m2", "float8_e8m0fnu",
          "float4_e2m1", "float4_e2m1fn_x2", "int64", "int32", "int16", "int8", "uint8", "uint32", "bool")
# fi_trace's non-numeric scalar arguments (``Scalar("str")``, a dtype, a device): read for a ``shape: null`` input
SCALAR_KINDS = ("str", "string", "dtype", "device")
# what the strict core accepts (flashinfer_bench.data.definition.DType); the others are read, and a Definition
# using one is still written, with the dtype as it is (flashinfer-bench then rejects it, which is right)
CORE_DTYPES = ("float32", "float16", "bfloat16", "float8_e4m3fn", "float8_e5m2", "float4_e2m1", "int64", "int32",
               "int16", "int8", "bool")
STATUSES = ("PASSED", "INCORRECT_SHAPE", "INCORRECT_NUMERICAL", "INCORRECT_DTYPE", "RUNTIME_ERROR", "COMPILE_ERROR",
            "TIMEOUT")
LANGUAGES = ("python", "triton", "cpp", "cuda", "tilelang")


class TraceFormatError(ValueError):
    """A file that is not valid FlashInfer-Trace: ``str()`` is one line, ``<file>: <field>: <what>``."""

    def __init__(self, where: str, fld: str, what: str):
        self.where, self.field, self.what = where, fld, what
        super().__init__(f"{where}: {fld}: {what}" if fld else f"{where}: {what}")


def _req(obj: dict, key: str, where: str, prefix: str = "", kind=None):
    if not isinstance(obj, dict):
        raise TraceFormatError(where, prefix.rstrip(".") or "(top level)", "expected a JSON object")
    if key not in obj or obj[key] is None:
        raise TraceFormatError(where, prefix + key, "missing required field")
    value = obj[key]
    if kind is not None and not isinstance(value, kind):
        name = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise TraceFormatError(where, prefix + key, f"expected {name}, got {type(value).__name__}")
    if kind is str and not value:
        raise TraceFormatError(where, prefix + key, "must not be empty")
    return value


def _rest(obj: dict, known) -> dict:
    return {k: v for k, v in obj.items() if k not in known}


# ------------------------------------------------------------------------------------------------- Definition

@dataclass
class Axis:
    type: str  # "const", "var" or "expr"
    value: int | None = None  # const (None: an fi_trace dump that did not extract it)
    expression: str | None = None  # expr (SOL-ExecBench)
    description: str | None = None
    extra: dict = field(default_factory=dict)

    def to_json(self, strict: bool = True) -> dict:
        out: dict = {"type": self.type}
        if self.type == "const" and self.value is not None:
            out["value"] = self.value
        if self.type == "expr":
            out["expression"] = self.expression
        if self.description is not None:
            out["description"] = self.description
        if not strict:
            out.update(self.extra)
        return out


@dataclass
class TensorSpec:
    shape: list[str] | None  # None: a scalar
    dtype: str
    description: str | None = None
    optional: bool = False  # fi_trace
    param: str | None = None  # fi_trace: the API parameter an output is written into
    extra: dict = field(default_factory=dict)

    def to_json(self, strict: bool = True) -> dict:
        out: dict = {"shape": None if self.shape is None else list(self.shape), "dtype": self.dtype}
        if self.description is not None:
            out["description"] = self.description
        if not strict:
            if self.optional:
                out["optional"] = True
            if self.param is not None:
                out["param"] = self.param
            out.update(self.extra)
        return out


_AXIS_KEYS = ("type", "value", "expression", "description")
_TENSOR_KEYS = ("shape", "dtype", "description", "optional", "param")
_DEF_KEYS = ("name", "op_type", "axes", "inputs", "outputs", "reference", "tags", "description", "constraints")


@dataclass
class Definition:
    name: str
    op_type: str
    axes: dict[str, Axis]
    inputs: dict[str, TensorSpec]
    outputs: dict[str, TensorSpec]
    reference: str
    tags: list[str] = field(default_factory=list)
    description: str | None = None
    constraints: list[str] = field(default_factory=list)
    extra: dict = field(default_factory=dict)  # fi_trace's init/check, SOL's custom_inputs_entrypoint, anything else

    @property
    def in_place(self) -> dict[str, str]:
        """``{output: input}`` for outputs written into an input (fi_trace: named like it, or ``param``)."""
        return {o: (s.param if s.param in self.inputs else o) for o, s in self.outputs.items()
                if o in self.inputs or s.param in self.inputs}

    def reference_with_run(self) -> str:
        """The reference with a top-level ``run`` (the core requires one): an fi_trace dump's entry function
        gets a ``run`` that calls it."""
        entry = self.extra.get("reference_entry")
        if not entry:
            return self.reference
        return self.reference.rstrip("\n") + f"\n\n\ndef run(*args, **kwargs):\n    return {entry}(*args, **kwargs)\n"

    def const_axes(self) -> dict[str, int]:
        return {n: a.value for n, a in self.axes.items() if a.type == "const" and a.value is not None}

    def to_json(self, strict: bool = True) -> dict:
        out = {"name": self.name, "op_type": self.op_type,
               "axes": {n: a.to_json(strict) for n, a in self.axes.items()},
               "inputs": {n: t.to_json(strict) for n, t in self.inputs.items()},
               "outputs": {n: t.to_json(strict) for n, t in self.outputs.items()},
               "reference": self.reference_with_run(), "tags": list(self.tags), "description": self.description,
               "constraints": list(self.constraints)}
        if not strict:
            out.update(self.extra)
        return out

    @classmethod
    def from_json(cls, obj: Any, where: str) -> "Definition":
        name = _req(obj, "name", where, kind=str)
        # SOL-ExecBench definitions may leave op_type out: the name's first word stands in (kept in extra)
        op_type = obj.get("op_type") or obj.get("type") or name.split("_")[0]
        if not isinstance(op_type, str):
            raise TraceFormatError(where, "op_type", f"expected str, got {type(op_type).__name__}")
        axes = {}
        for n, a in _req(obj, "axes", where, kind=dict).items():
            kind = _req(a, "type", where, f"axes.{n}.", str)
            if kind == "const":
                value = a.get("value")
                if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
                    raise TraceFormatError(where, f"axes.{n}.value", f"expected a non-negative int, got {value!r}")
                axes[n] = Axis("const", value, None, a.get("description"), _rest(a, _AXIS_KEYS))
            elif kind == "var":
                axes[n] = Axis("var", None, None, a.get("description"), _rest(a, _AXIS_KEYS))
            elif kind == "expr":
                expr = _req(a, "expression", where, f"axes.{n}.", str)
                try:
                    tree = ast.parse(expr, mode="eval")
                except SyntaxError as exc:
                    raise TraceFormatError(where, f"axes.{n}.expression", f"not an expression: {exc.msg}") from None
                for node in ast.walk(tree):
                    if isinstance(node, ast.Name) and node.id not in obj["axes"]:
                        raise TraceFormatError(where, f"axes.{n}.expression", f"axis {node.id!r} is not declared")
                axes[n] = Axis("expr", None, expr, a.get("description"), _rest(a, _AXIS_KEYS))
            else:
                raise TraceFormatError(where, f"axes.{n}.type", f"expected const, var or expr, got {kind!r}")

        # an fi_trace dump (``init``/``check`` sources, an ``fi_api:`` tag) may leave out what FlashInfer could not
        # extract at trace time: a derived const axis a shape still names (read as a const without a value, marked
        # ``undeclared``) and the reference of a template that has none (read as "", marked ``reference_missing``);
        # the strict core output keeps the gap, and flashinfer-bench rejects it, which is right
        dump = "init" in obj or "check" in obj or any(str(t).startswith("fi_api:") for t in obj.get("tags") or [])

        def tensors(key: str) -> dict:
            out = {}
            for n, t in _req(obj, key, where, kind=dict).items():
                prefix = f"{key}.{n}."
                if not isinstance(t, dict) or "shape" not in t:
                    raise TraceFormatError(where, prefix + "shape", "missing required field")
                shape = t["shape"]
                if shape is not None:
                    if not isinstance(shape, list) or not all(isinstance(s, str) for s in shape):
                        raise TraceFormatError(where, prefix + "shape", "expected a list of axis names or null")
                    for s in shape:  # fi_trace writes a fixed extent as a literal (``["1"]``)
                        if s in axes or s.isdecimal():
                            continue
                        if not dump:
                            raise TraceFormatError(where, prefix + "shape", f"axis {s!r} is not declared in axes")
                        axes[s] = Axis("const", extra={"undeclared": True})
                dtype = _req(t, "dtype", where, prefix, str)
                if dtype not in DTYPES and dtype != "unknown" and not (shape is None and dtype in SCALAR_KINDS):
                    raise TraceFormatError(where, prefix + "dtype", f"unknown dtype {dtype!r}")
                out[n] = TensorSpec(shape, dtype, t.get("description"), bool(t.get("optional", False)),
                                    t.get("param"), _rest(t, _TENSOR_KEYS))
            return out

        inputs, outputs = tensors("inputs"), tensors("outputs")
        missing = dump and not obj.get("reference")
        reference = "" if missing else _req(obj, "reference", where, kind=str)
        try:
            tree = ast.parse(reference)
        except SyntaxError as exc:
            raise TraceFormatError(where, "reference", f"not valid Python: line {exc.lineno}: {exc.msg}") from None
        funcs = [n.name for n in tree.body if isinstance(n, ast.FunctionDef)]
        entry = None
        if "run" not in funcs and not missing:
            # an fi_trace dump renders the template's reference function under its own name
            # (``_gqa_paged_decode_reference``): the last top-level function is the entry point
            if not funcs or not dump:
                raise TraceFormatError(where, "reference", "defines no top-level function 'run'")
            entry = funcs[-1]
        custom = obj.get("custom_inputs_entrypoint")
        if custom is not None:  # SOL-ExecBench: ``entrypoint(axes_and_scalars, device) -> {input: value}``
            if not isinstance(custom, str) or not custom.isidentifier():
                raise TraceFormatError(where, "custom_inputs_entrypoint", f"expected a function name, got {custom!r}")
            if custom not in funcs:
                raise TraceFormatError(where, "custom_inputs_entrypoint",
                                       f"{custom!r} is not a top-level function of reference")
        for i, c in enumerate(obj.get("constraints") or []):
            try:
                ast.parse(c, mode="eval")
            except (SyntaxError, TypeError):
                raise TraceFormatError(where, f"constraints[{i}]", f"not a Python expression: {c!r}") from None
        extra = _rest(obj, _DEF_KEYS)
        if "op_type" not in obj:
            extra["op_type_inferred"] = True
        if entry is not None:
            extra["reference_entry"] = entry
        if missing:
            extra["reference_missing"] = True
        return cls(name, op_type, axes, inputs, outputs, reference, list(obj.get("tags") or []),
                   obj.get("description"), list(obj.get("constraints") or []), extra)


# --------------------------------------------------------------------------------------------------- Workload

_INPUT_KEYS = {"random": ("type",), "scalar": ("type", "value"), "safetensors": ("type", "path", "tensor_key"),
               "custom": ("type",)}


@dataclass
class InputSpec:
    type: str  # "random", "scalar", "safetensors" or "custom" (SOL-ExecBench)
    value: Any = None
    path: str | None = None
    tensor_key: str | None = None
    extra: dict = field(default_factory=dict)

    def to_json(self, strict: bool = True) -> dict:
        out: dict = {"type": self.type}
        if self.type == "scalar":
            out["value"] = self.value
        if self.type == "safetensors":
            out.update(path=self.path, tensor_key=self.tensor_key)
        if not strict:
            out.update(self.extra)
        return out


@dataclass
class Workload:
    axes: dict[str, int]
    inputs: dict[str, InputSpec]
    uuid: str
    extra: dict = field(default_factory=dict)  # our ``description`` (what their evaluator cannot grade) lives here

    def to_json(self, strict: bool = True) -> dict:
        out = {"axes": dict(self.axes), "inputs": {n: s.to_json(strict) for n, s in self.inputs.items()},
               "uuid": self.uuid}
        if not strict:
            out.update(self.extra)
        return out

    @classmethod
    def from_json(cls, obj: Any, where: str, prefix: str = "workload.") -> "Workload":
        uuid = _req(obj, "uuid", where, prefix, str)
        axes = _req(obj, "axes", where, prefix, dict)
        for n, v in axes.items():
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise TraceFormatError(where, f"{prefix}axes.{n}", f"expected a non-negative int, got {v!r}")
        inputs = {}
        for n, s in _req(obj, "inputs", where, prefix, dict).items():
            p = f"{prefix}inputs.{n}."
            kind = _req(s, "type", where, p, str)
            if kind not in _INPUT_KEYS:
                raise TraceFormatError(where, p + "type", f"expected random, scalar, safetensors or custom, got {kind!r}")
            if kind == "scalar":
                value = _req(s, "value", where, p)
                if not isinstance(value, (int, float, bool)):
                    raise TraceFormatError(where, p + "value", f"expected a number or bool, got {value!r}")
                inputs[n] = InputSpec("scalar", value=value, extra=_rest(s, _INPUT_KEYS[kind]))
            elif kind == "safetensors":
                path = _req(s, "path", where, p, str)
                check_relative(path, where, p + "path")
                inputs[n] = InputSpec("safetensors", path=path, tensor_key=_req(s, "tensor_key", where, p, str),
                                      extra=_rest(s, _INPUT_KEYS[kind]))
            else:
                inputs[n] = InputSpec(kind, extra=_rest(s, _INPUT_KEYS[kind]))
        return cls(dict(axes), inputs, uuid, _rest(obj, ("axes", "inputs", "uuid")))


def check_relative(path: str, where: str, fld: str) -> None:
    """A path inside its root: neither absolute nor climbing out with ``..`` (a ``TraceFormatError`` otherwise)."""
    p = PurePosixPath(path.replace("\\", "/"))
    if p.is_absolute() or path.startswith("~") or (len(path) > 1 and path[1] == ":"):
        raise TraceFormatError(where, fld, f"absolute path not allowed: {path!r}")
    if ".." in p.parts:
        raise TraceFormatError(where, fld, f"path climbs out of its root ('..'): {path!r}")


# --------------------------------------------------------------------------------------------------- Solution

@dataclass
class SourceFile:
    path: str
    content: str


@dataclass
class Solution:
    name: str
    definition: str
    author: str
    language: str
    target_hardware: list[str]
    entry_point: str  # "<file>::<function>"
    sources: list[SourceFile]
    dependencies: list[str] = field(default_factory=list)
    destination_passing_style: bool = True
    binding: str | None = None
    description: str | None = None
    extra: dict = field(default_factory=dict)
    spec_extra: dict = field(default_factory=dict)

    @property
    def entry_file(self) -> str:
        return self.entry_point.split("::")[0]

    @property
    def entry_symbol(self) -> str:
        return self.entry_point.split("::")[1]

    def to_json(self, strict: bool = True) -> dict:
        spec = {"language": self.language, "target_hardware": list(self.target_hardware),
                "entry_point": self.entry_point, "dependencies": list(self.dependencies),
                "destination_passing_style": self.destination_passing_style, "binding": self.binding}
        out = {"name": self.name, "definition": self.definition, "author": self.author, "spec": spec,
               "sources": [{"path": s.path, "content": s.content} for s in self.sources],
               "description": self.description}
        if not strict:
            spec.update(self.spec_extra)
            out.update(self.extra)
        return out

    @classmethod
    def from_json(cls, obj: Any, where: str) -> "Solution":
        name = _req(obj, "name", where, kind=str)
        definition = _req(obj, "definition", where, kind=str)
        author = _req(obj, "author", where, kind=str)
        spec = _req(obj, "spec", where, kind=dict)
        language = _req(spec, "language", where, "spec.", str)
        if language not in LANGUAGES:
            raise TraceFormatError(where, "spec.language", f"expected one of {', '.join(LANGUAGES)}, got {language!r}")
        hardware = _req(spec, "target_hardware", where, "spec.", list)
        if not hardware:
            raise TraceFormatError(where, "spec.target_hardware", "must name at least one target")
        entry = _req(spec, "entry_point", where, "spec.", str)
        if entry.count("::") != 1 or not all(entry.split("::")):
            raise TraceFormatError(where, "spec.entry_point", f"expected '<file>::<function>', got {entry!r}")
        sources, seen = [], set()
        raw = _req(obj, "sources", where, kind=list)
        if not raw:
            raise TraceFormatError(where, "sources", "must hold at least one file")
        for i, s in enumerate(raw):
            path = _req(s, "path", where, f"sources[{i}].", str)
            check_relative(path, where, f"sources[{i}].path")
            content = _req(s, "content", where, f"sources[{i}].", str)
            if path in seen:
                raise TraceFormatError(where, f"sources[{i}].path", f"duplicate source path {path!r}")
            seen.add(path)
            sources.append(SourceFile(path, content))
        if entry.split("::")[0] not in seen:
            raise TraceFormatError(where, "spec.entry_point", f"entry file {entry.split('::')[0]!r} is not in sources")
        dps = spec.get("destination_passing_style", True)
        if not isinstance(dps, bool):
            raise TraceFormatError(where, "spec.destination_passing_style", f"expected bool, got {dps!r}")
        return cls(name, definition, author, language, list(hardware), entry, sources,
                   list(spec.get("dependencies") or []), dps, spec.get("binding"), obj.get("description"),
                   _rest(obj, ("name", "definition", "author", "spec", "sources", "description")),
                   _rest(spec, ("language", "target_hardware", "entry_point", "dependencies",
                                "destination_passing_style", "binding")))


# ------------------------------------------------------------------------------------------------------ Trace

@dataclass
class Evaluation:
    status: str
    environment: dict
    timestamp: str
    log: str = ""
    correctness: dict | None = None  # {max_relative_error, max_absolute_error, extra}
    performance: dict | None = None  # {latency_ms, reference_latency_ms, speedup_factor}
    extra: dict = field(default_factory=dict)

    def to_json(self, strict: bool = True) -> dict:
        out = {"status": self.status, "environment": self.environment, "timestamp": self.timestamp,
               "log": self.log, "correctness": self.correctness, "performance": self.performance}
        if not strict:
            out.update(self.extra)
        return out


@dataclass
class Trace:
    definition: str
    workload: Workload
    solution: str | None = None
    evaluation: Evaluation | None = None
    extra: dict = field(default_factory=dict)

    def to_json(self, strict: bool = True) -> dict:
        out = {"definition": self.definition, "workload": self.workload.to_json(strict), "solution": self.solution,
               "evaluation": None if self.evaluation is None else self.evaluation.to_json(strict)}
        if not strict:
            out.update(self.extra)
        return out

    @classmethod
    def from_json(cls, obj: Any, where: str, definition: str | None = None) -> "Trace":
        """A trace line; a bare SOL-ExecBench workload line (no ``workload`` key) takes ``definition``."""
        if isinstance(obj, dict) and "workload" not in obj and "uuid" in obj:
            if definition is None:
                raise TraceFormatError(where, "definition", "a bare workload line needs its definition's name")
            return cls(definition, Workload.from_json(obj, where, ""), extra={"bare_workload": True})
        name = _req(obj, "definition", where, kind=str)
        workload = Workload.from_json(_req(obj, "workload", where, kind=dict), where)
        ev = obj.get("evaluation")
        evaluation = None
        if ev is not None:
            status = _req(ev, "status", where, "evaluation.", str)
            if status not in STATUSES:
                raise TraceFormatError(where, "evaluation.status", f"expected one of {', '.join(STATUSES)}")
            evaluation = Evaluation(status, _req(ev, "environment", where, "evaluation.", dict),
                                    _req(ev, "timestamp", where, "evaluation.", str), ev.get("log", ""),
                                    ev.get("correctness"), ev.get("performance"),
                                    _rest(ev, ("status", "environment", "timestamp", "log", "correctness",
                                               "performance")))
        return cls(name, workload, obj.get("solution"), evaluation,
                   _rest(obj, ("definition", "workload", "solution", "evaluation")))


# ----------------------------------------------------------------------------------------------------- files

def _load(path: Path, root: Path | None = None) -> Any:
    where = _where(path, root)
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as exc:
        raise TraceFormatError(where, f"line {exc.lineno} column {exc.colno}", f"bad JSON: {exc.msg}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise TraceFormatError(where, "", f"cannot read: {exc}") from None


def _where(path: Path, root: Path | None) -> str:
    try:
        return str(Path(path).relative_to(root)) if root else str(path)
    except ValueError:
        return str(path)


def load_definition(path, root=None) -> Definition:
    return Definition.from_json(_load(path, root), _where(path, root))


def load_solution(path, root=None) -> Solution:
    return Solution.from_json(_load(path, root), _where(path, root))


def load_traces(path, root=None, definition: str | None = None) -> list[Trace]:
    """The lines of a ``.jsonl`` file (workload traces, evaluated traces or bare SOL workload lines)."""
    where = _where(path, root)
    out = []
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise TraceFormatError(where, "", f"cannot read: {exc}") from None
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TraceFormatError(f"{where}:{i}", f"column {exc.colno}", f"bad JSON: {exc.msg}") from None
        out.append(Trace.from_json(obj, f"{where}:{i}", definition))
    return out


def dumps(obj) -> str:
    """One object as strict core JSON (NaN and infinities as the strings pydantic writes with
    ``ser_json_inf_nan="strings"``)."""
    return json.dumps(_finite(obj.to_json(strict=True) if hasattr(obj, "to_json") else obj), allow_nan=False)


def _finite(x):
    if isinstance(x, float) and (x != x or x in (float("inf"), float("-inf"))):
        return "NaN" if x != x else ("Infinity" if x > 0 else "-Infinity")
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x
