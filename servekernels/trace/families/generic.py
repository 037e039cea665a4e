"""Any op of the registry as a ``sk_<op>_<case>`` Definition in the contract's own terms."""
from __future__ import annotations

import dataclasses
import json
from typing import Any

from kernels.ops import Inputs, OpSpec, registry
from servekernels.trace import references as REF
from servekernels.trace.schema import Axis, Definition, TensorSpec
from servekernels.trace.families._base import (CONTROL, Family,
                                               dtype_name, is_tensor, slug)

def _is_struct(x) -> bool:
    return dataclasses.is_dataclass(x) and not isinstance(x, type) or (isinstance(x, tuple) and hasattr(x, "_fields"))


def _fields(x) -> list[tuple[str, Any]]:
    if dataclasses.is_dataclass(x):
        return [(f.name, getattr(x, f.name)) for f in dataclasses.fields(x)]
    return list(zip(x._fields, x))


def _const(v) -> Any:
    """A JSON value for a constant, or raise TypeError."""
    import torch

    if isinstance(v, torch.dtype):
        return str(v).replace("torch.", "")
    if isinstance(v, (tuple, list)):
        return [_const(x) for x in v]
    if v is None or isinstance(v, (str, int, float, bool)):
        return v
    raise TypeError(type(v).__name__)


def flatten(spec: OpSpec, args: tuple, kwargs: dict) -> tuple[dict, dict, dict]:
    """A contract call as ``(tensors and scalars by input name, constants by dotted name, structs)``: tensors and
    numbers become inputs (a struct's tensor fields as ``<arg>_<field>``), the rest constants; control keywords
    and None are left out. ``structs``: ``{arg: (type, [field names])}`` to rebuild the call."""
    sig = spec.contract_signature()
    bound = sig.bind_partial(*args, **{k: v for k, v in kwargs.items() if k in sig.parameters})
    named, consts, structs = {}, {}, {}
    for pname, value in bound.arguments.items():
        if pname in CONTROL or value is None:
            continue
        if is_tensor(value):
            named[pname] = value
        elif isinstance(value, bool) or not isinstance(value, (int, float)) and not _is_struct(value):
            consts[pname] = _const(value)
        elif isinstance(value, (int, float)):
            named[pname] = value
        else:
            fields = _fields(value)
            structs[pname] = (type(value), [f for f, _ in fields])
            for f, v in fields:
                if is_tensor(v):
                    named[f"{pname}_{f}"] = v
                elif v is not None:
                    consts[f"{pname}.{f}"] = _const(v)
    import torch

    for n, v in list(named.items()):  # flashinfer-bench has no unsigned dtype: uint8 travels as its int8 bits
        if is_tensor(v) and v.dtype == torch.uint8:
            named[n] = v.view(torch.int8)
            consts[f"{n}.view"] = "uint8"
    return named, consts, structs


def unflatten(spec: OpSpec, named: dict, consts: dict, structs: dict) -> tuple[tuple, dict]:
    """The contract call back from ``flatten``'s parts."""
    import torch

    sig = spec.contract_signature()
    named = {n: (v.view(getattr(torch, consts[f"{n}.view"])) if f"{n}.view" in consts else v)
             for n, v in named.items()}
    args, kwargs = [], {}
    for pname, p in sig.parameters.items():
        if pname in structs:
            typ, fields = structs[pname]
            value = typ(**{f: named.get(f"{pname}_{f}", _unconst(consts.get(f"{pname}.{f}"), tuple_ok=True))
                           for f in fields})
        elif pname in named:
            value = named[pname]
        elif pname in consts:
            value = _unconst(consts[pname], pname)
        else:
            continue
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and len(args) == list(sig.parameters).index(pname):
            args.append(value)
        else:
            kwargs[pname] = value
    return tuple(args), kwargs


def _unconst(v, name: str = "", tuple_ok: bool = False):
    """A constant back: a struct field's list was a tuple (a block size); an argument's list stays a list."""
    import torch

    if isinstance(v, list) and tuple_ok:
        return tuple(v)
    if isinstance(v, str) and name.endswith("dtype") and hasattr(torch, v):
        return getattr(torch, v)
    return v


_TAG = "servekernels:"


class Generic(Family):
    """Any op of the registry, one Definition per check case, in the contract's own terms."""

    name = "sk"

    def __init__(self, op: str):
        self.op = op

    def covers(self, definition):
        return f"{_TAG}op={self.op}" in definition.tags and definition.name.startswith("sk_")

    def _consts(self, definition) -> dict:
        return {t[len(_TAG) + 6:].split("=", 1)[0]: json.loads(t.split("=", 1)[1])
                for t in definition.tags if t.startswith(f"{_TAG}const:")}

    def definition_for(self, spec, case, inputs, expected):
        named, consts, structs = flatten(spec, inputs.args, inputs.kwargs)
        out_dtypes = _out_dtypes(spec, inputs, named, expected)
        axes, ins = {}, {}
        for n, v in named.items():
            if is_tensor(v):
                dims = []
                for i, size in enumerate(v.shape):
                    ax = f"{n}_{i}"
                    axes[ax] = Axis("const", int(size))
                    dims.append(ax)
                ins[n] = TensorSpec(dims, dtype_name(v))
            else:
                ins[n] = TensorSpec(None, "float32" if isinstance(v, float) else "int32")
        outs = {}
        in_place = _in_place(spec)
        for o in spec.outputs:
            e = expected[o]
            dims = []
            for i, size in enumerate(getattr(e, "shape", ())):
                match = next((a for a, ax in axes.items() if ax.value == int(size) and a.endswith(f"_{i}")), None)
                match = match or next((a for a, ax in axes.items() if ax.value == int(size)), None)
                if match is None:
                    match = f"{o}_{i}"
                    axes[match] = Axis("const", int(size))
                dims.append(match)
            oname = f"{o}_out" if o in ins else o
            outs[oname] = TensorSpec(dims, out_dtypes[o], f"{o} after the call (written in place)" if o in in_place
                                     else None)
        body = REF.OPS.get(self.op)
        self_contained = body is not None
        body = body or REF.FALLBACK
        params = list(ins)
        call_kw = ", ".join(f"{p}={p}" for p in params)
        struct_paths = {k: f"{t.__module__}:{t.__qualname__}" for k, (t, _) in structs.items()}
        run = ("import torch\n\n_OP = %r\n_CONSTS = %r\n_STRUCTS = %r\n_OUT_DTYPES = (%s)\n%s\n\n"
               "@torch.no_grad()\ndef run(%s):\n    return _reference(%s)\n") % (
            self.op, consts, struct_paths,
            "".join(f"torch.{out_dtypes[o]}, " for o in spec.outputs), body, ", ".join(params), call_kw)
        tags = ["servekernels", f"{_TAG}op={self.op}", f"{_TAG}case={case}"]
        tags += [f"{_TAG}const:{k}={json.dumps(v)}" for k, v in consts.items()]  # .view: the bits' real dtype
        tags += [f"{_TAG}struct:{k}={t.__module__}:{t.__qualname__}" for k, (t, _) in structs.items()]
        desc = f"servekernels {self.op} ({spec.summary}), check case {case}, in the contract's own terms."
        if not self_contained:
            desc += " Its reference is not self-contained yet: judge it with `servekernels trace judge`."
        if any(o in in_place for o in spec.outputs):
            desc += " In place in the contract: here the outputs are the written tensors, returned whole."
        return Definition(f"sk_{slug(self.op)}_{slug(case)}", f"sk_{self.op}", axes, ins, outs, run,
                          tags=tags, description=desc)

    def named(self, definition, inputs):
        named, _, _ = flatten(registry()[self.op], inputs.args, inputs.kwargs)
        return named

    def _structs(self, definition) -> dict:
        import importlib

        out = {}
        for t in definition.tags:
            if t.startswith(f"{_TAG}struct:"):
                arg, path = t[len(_TAG) + 7:].split("=", 1)
                mod, _, qual = path.partition(":")
                typ = getattr(importlib.import_module(mod), qual)
                out[arg] = (typ, [f.name for f in dataclasses.fields(typ)] if dataclasses.is_dataclass(typ)
                            else list(typ._fields))
        return out

    def implementation(self, definition, solve):
        spec = registry()[self.op]
        in_place = _in_place(spec)

        def impl(*args, **kwargs):
            named, _, _ = flatten(spec, args, kwargs)
            got = solve(named)
            outs = []
            for o in spec.outputs:
                oname = f"{o}_out" if f"{o}_out" in definition.outputs else o
                outs.append(got[oname])
            if in_place:
                sig = spec.contract_signature()
                bound = sig.bind_partial(*args, **kwargs)
                for o, value in zip(spec.outputs, outs):
                    if o in in_place:
                        bound.arguments[o].copy_(value)
                return None
            if kwargs.get("return_lse") is False and len(outs) > 1:
                return outs[0]
            return outs[0] if len(outs) == 1 else tuple(outs)

        return impl


def _in_place(spec: OpSpec) -> set:
    names = list(spec.contract_signature().parameters)
    return {names[i] for i in spec.writes if i < len(names)} & set(spec.outputs)


def _out_dtypes(spec: OpSpec, inputs: Inputs, named: dict, expected: dict) -> dict:
    """Each output's dtype by the contract: the spec's ``out_dtypes``, else ``out_dtype``, else the written
    argument's, else the first floating input's (never float8)."""
    got = {}
    if spec.out_dtypes is not None:
        got = {k: str(v).replace("torch.", "") for k, v in (spec.out_dtypes(inputs) or {}).items()}
    for o in spec.outputs:
        if o in got:
            continue
        if o in named and is_tensor(named[o]):
            got[o] = dtype_name(named[o])
        elif inputs.kwargs.get("out_dtype") is not None:
            got[o] = str(inputs.kwargs["out_dtype"]).replace("torch.", "")
        else:
            default = spec.contract_signature().parameters.get("out_dtype")
            if default is not None and isinstance(default.default, str):
                got[o] = default.default
            else:
                floats = [dtype_name(v) for v in named.values() if is_tensor(v) and v.is_floating_point()
                          and "float8" not in dtype_name(v)]
                got[o] = floats[0] if floats else "float32"
    return got




def call_reference(op: str, named: dict, consts: dict, struct_paths: dict) -> tuple:
    """This project's float64 reference of ``op`` on a Definition's named inputs, outputs cast to the contract's
    dtypes (what a generic Definition's ``run`` calls for an op with no torch body of its own)."""
    import importlib

    import torch

    spec = registry()[op]
    structs = {}
    for arg, path in struct_paths.items():
        mod, _, qual = path.partition(":")
        typ = getattr(importlib.import_module(mod), qual)
        structs[arg] = (typ, [f.name for f in dataclasses.fields(typ)] if dataclasses.is_dataclass(typ)
                        else list(typ._fields))
    args, kwargs = unflatten(spec, named, consts, structs)
    inputs = Inputs(op, {}, args, kwargs)
    got = spec.call(spec.reference_fn(), inputs)
    out = []
    for o in spec.outputs:
        v = got[o]
        out.append(torch.as_tensor(v) if not is_tensor(v) else v)
    return tuple(out)


def _generic_inputs_from(self, definition, named):
    """A generic Definition's inputs as the op's call (``Inputs.data`` None: an op whose judge needs more than
    the call, attention's batch, judges our own workloads, rebuilt by the registry, instead)."""
    spec = registry()[self.op]
    args, kwargs = unflatten(spec, named, self._consts(definition), self._structs(definition))
    return Inputs(self.op, {}, args, kwargs)


Generic.inputs_from = _generic_inputs_from


def call_contract(op: str, fn, args: tuple, kwargs: dict) -> dict:
    """Any implementation of ``op`` called with the contract's arguments: ``{output: value}`` (the LSE asked
    for where the op has one; an in-place op's written arguments cloned first and returned)."""
    spec = registry()[op]
    sig = spec.contract_signature()
    names = list(sig.parameters)
    args = list(args)
    written = {}
    for i in spec.writes:
        if i < len(args):
            args[i] = args[i].clone()
            written[names[i]] = args[i]
    kw = dict(kwargs)
    if "return_lse" in sig.parameters:
        kw["return_lse"] = True
    got = fn(*args, **kw)
    got = got if isinstance(got, tuple) else (got,)
    out = dict(zip([o for o in spec.outputs if o not in written], got))  # fused_add_rms_norm returns out, writes
    out.update({o: v for o, v in written.items() if o in spec.outputs})  # residual
    return {o: out[o] for o in spec.outputs}
