"""flashinfer-bench's ``rope_with_cos_sin_cache_{neox,gptj}_style_d{D}_rd{R}`` and FlashInfer's
``rope_cos_sin_cache`` / ``rope_cos_sin_cache_inplace`` templates <-> ``rotary_embedding``.

Both wrap ``flashinfer.rope.apply_rope_with_cos_sin_cache_inplace`` (the vLLM/SGLang convention the contract
follows): ``cos_sin_cache [max_seq_len, rotary_dim]`` holds cos in its first half and sin in its second,
``positions [num_tokens]`` index its rows, the first ``rotary_dim`` dims of every head of q and k are rotated and
the rest pass through; NeoX rotates the pairs ``(x[i], x[i + rd/2])``, GPT-J ``(x[2i], x[2i+1])``.

Mapping rules:

- flashinfer-bench's form (``form="fib"``): inputs ``q [num_tokens, num_qo_heads, head_size]``,
  ``k [num_tokens, num_kv_heads, head_size]``, ``cos_sin_cache``, ``positions``; outputs ``q_out`` / ``k_out``
  (returned, not written in place: their evaluator grades returned values). The style is part of the name
  (``neox_style`` -> ``is_neox=True``, ``gptj_style`` -> False; their docs' 1-kernel-1-definition rule);
  ``head_size`` and ``rotary_dim`` are const axes and must equal q's last dim and the cache's width;
- FlashInfer's template form (``form="fi"``, fi_trace dumps ``rope_cos_sin_cache[_inplace]_d{D}``): ``query`` /
  ``key`` flattened to ``[nnz, heads * head_size]``, the scalar ``head_size``, optional ``is_neox`` (default
  True, the API's), int32 ``positions``; outputs ``query_out`` / ``key_out``, or ``query`` / ``key`` in place;
- the contract rotates q and k in place: the adapter hands the Solution contiguous copies and writes the rotated
  values it returns into the contract's q and k (views of one qkv buffer whose V part is NaN);
- export: every check case goes out in both forms, named ``rope_with_cos_sin_cache_<style>_style_d{D}_rd{R}``
  (``rope_cos_sin_cache_d{D}``) plus ``_<dtype>`` where q is not bfloat16, ``_c<dtype>`` where the cache is not
  float32 and ``_pos<dtype>`` where positions are not the form's (int64 / int32): flashinfer-bench's published
  dtypes are bfloat16 q/k, a float32 cache and int64 positions.
"""
from __future__ import annotations

import re

from kernels.ops import Inputs
from servekernels.trace.schema import Axis, Definition, TensorSpec
from servekernels.trace.families._base import Family, Template, dtype_name, is_tensor, slug

_FIB = re.compile(r"^rope_with_cos_sin_cache_(neox|gptj)_style_d(\d+)_rd(\d+)(_[a-z0-9_]+)?$")
_FI = re.compile(r"^rope_cos_sin_cache(_inplace)?(_d\d+)?(_[a-z0-9_]+)?$")
_FIB_INPUTS = ("q", "k", "cos_sin_cache", "positions")
_FI_INPUTS = ("positions", "query", "key", "head_size", "cos_sin_cache", "is_neox")

_ROTATE = '''import torch


def _rotate(x, cos, sin, is_neox):
    # x [T, H, D] float64; cos/sin [T, rd/2]: the first rd dims rotated, the rest kept
    half = cos.shape[-1]
    c, s = cos[:, None, :], sin[:, None, :]
    out = x.clone()
    if is_neox:
        a, b = x[..., :half], x[..., half:2 * half]
        out[..., :half], out[..., half:2 * half] = a * c - b * s, b * c + a * s
    else:
        a, b = x[..., 0:2 * half:2], x[..., 1:2 * half:2]
        out[..., 0:2 * half:2], out[..., 1:2 * half:2] = a * c - b * s, b * c + a * s
    return out

'''

_FIB_RUN = _ROTATE + '''
@torch.no_grad()
def run(q, k, cos_sin_cache, positions):
    # float64 from the cache as stored, each output rounded once to q's dtype
    rows = cos_sin_cache[positions.long()].to(torch.float64)
    half = rows.shape[-1] // 2
    cos, sin = rows[:, :half], rows[:, half:]
    return (_rotate(q.to(torch.float64), cos, sin, {neox}).to(q.dtype),
            _rotate(k.to(torch.float64), cos, sin, {neox}).to(k.dtype))
'''

_FI_RUN = _ROTATE + '''
@torch.no_grad()
def run(positions, query, key, head_size, cos_sin_cache, is_neox=True):
    # query/key flattened [nnz, heads * head_size]; float64 from the cache as stored, rounded once
    rows = cos_sin_cache[positions.long()].to(torch.float64)
    half = rows.shape[-1] // 2
    cos, sin = rows[:, :half], rows[:, half:]
    neox = True if is_neox is None else bool(is_neox)
    n = query.shape[0]
    q = _rotate(query.to(torch.float64).view(n, -1, int(head_size)), cos, sin, neox)
    k = _rotate(key.to(torch.float64).view(n, -1, int(head_size)), cos, sin, neox)
    return q.reshape(query.shape).to(query.dtype), k.reshape(key.shape).to(key.dtype)
'''


def _scalar(x):
    return x.item() if is_tensor(x) else x


class RopeCosSinCache(Family):
    """``rotary_embedding`` in flashinfer-bench's form (``form="fib"``) or FlashInfer's template form
    (``form="fi"``); the module docstring has the rules."""

    op = "rotary_embedding"

    def __init__(self, form: str = "fib"):
        if form not in ("fib", "fi"):
            raise ValueError(f"form: 'fib' or 'fi', got {form!r}")
        self.form = form
        if form == "fib":
            self.name = "rope_with_cos_sin_cache"
            self.published = ("rope_with_cos_sin_cache_neox_style", "rope_with_cos_sin_cache_gptj_style")
            self.templates = ()
        else:
            self.name = "rope_cos_sin_cache"
            self.published = ("rope_cos_sin_cache", "rope_cos_sin_cache_inplace")
            sizes = dict(nnz=9, num_q_heads_x_head_size=4 * 128, num_k_heads_x_head_size=2 * 128, head_size=128,
                         max_seq_len=300, rotary_dim=64)
            self.templates = tuple(Template("rope", attr, sizes, _FI_INPUTS[:5]) for attr in (
                "apply_rope_with_cos_sin_cache_trace", "apply_rope_with_cos_sin_cache_inplace_trace"))

    # ------------------------------------------------------------------ which Definitions

    def covers(self, definition):
        return bool((_FIB if self.form == "fib" else _FI).match(definition.name))

    def _outputs(self, definition) -> tuple[str, str]:
        if self.form == "fib":
            return "q_out", "k_out"
        outs = getattr(definition, "outputs", None) or {}  # a template's stub has none: the returning form
        return ("query", "key") if "query" in outs else ("query_out", "key_out")

    def why_not(self, definition):
        need = _FIB_INPUTS if self.form == "fib" else _FI_INPUTS[:5]
        missing = [n for n in need if n not in definition.inputs]
        extra = [n for n, s in definition.inputs.items() if n not in _FIB_INPUTS + _FI_INPUTS and not s.optional]
        if missing or extra:
            return f"inputs {sorted(definition.inputs)}: this adapter maps {need} (missing {missing}, unknown {extra})"
        if set(definition.outputs) != set(self._outputs(definition)):
            return f"outputs {sorted(definition.outputs)}: this adapter maps {list(self._outputs(definition))}"
        if self.form == "fib":
            m = _FIB.match(definition.name)
            axes = definition.const_axes()
            for ax, want in (("head_size", int(m.group(2))), ("rotary_dim", int(m.group(3)))):
                if axes.get(ax) != want:
                    return f"axis {ax}: {axes.get(ax)}, the name says {want}"
        return ""

    def _plain(self, inputs):
        return True

    # ------------------------------------------------------------------ ours -> theirs

    def definition_for(self, spec, case, inputs, expected):
        positions, q, k, cache = inputs.args
        d, rd, neox = int(q.shape[2]), int(cache.shape[1]), bool(inputs.kwargs["is_neox"])
        hq, hk = int(q.shape[1]), int(k.shape[1])
        pos_dt = "int64" if self.form == "fib" else "int32"
        suffix = ("" if dtype_name(q) == "bfloat16" else f"_{slug(dtype_name(q))}") + (
            "" if dtype_name(cache) == "float32" else f"_c{slug(dtype_name(cache))}") + (
            "" if dtype_name(positions) == pos_dt else f"_pos{slug(dtype_name(positions))}")
        tags = ["servekernels", f"servekernels:op={self.op}",
                "fi_api:flashinfer.rope.apply_rope_with_cos_sin_cache_inplace"]
        what = (f"Rotary Position Embedding with a pre-computed cos/sin cache (first half cos, second half sin), "
                f"{'NeoX' if neox else 'GPT-J'} style, rotary_dim={rd} of head_size={d}; exported by servekernels "
                "from its rotary_embedding op (positions of a ragged batch, cache rows no token uses NaN).")
        if self.form == "fib":
            style = "neox" if neox else "gptj"
            return Definition(
                f"rope_with_cos_sin_cache_{style}_style_d{d}_rd{rd}" + suffix, "rope",
                {"num_tokens": Axis("var"), "num_qo_heads": Axis("var"), "num_kv_heads": Axis("var"),
                 "head_size": Axis("const", d), "rotary_dim": Axis("const", rd), "max_seq_len": Axis("var")},
                {"q": TensorSpec(["num_tokens", "num_qo_heads", "head_size"], dtype_name(q)),
                 "k": TensorSpec(["num_tokens", "num_kv_heads", "head_size"], dtype_name(k)),
                 "cos_sin_cache": TensorSpec(["max_seq_len", "rotary_dim"], dtype_name(cache)),
                 "positions": TensorSpec(["num_tokens"], dtype_name(positions))},
                {"q_out": TensorSpec(["num_tokens", "num_qo_heads", "head_size"], dtype_name(q)),
                 "k_out": TensorSpec(["num_tokens", "num_kv_heads", "head_size"], dtype_name(k))},
                _FIB_RUN.replace("{neox}", str(neox)), tags=["status:verified"] + tags, description=what)
        return Definition(
            f"rope_cos_sin_cache_d{d}" + suffix, "rope",
            {"nnz": Axis("var"), "num_q_heads_x_head_size": Axis("const", hq * d),
             "num_k_heads_x_head_size": Axis("const", hk * d), "head_size": Axis("const", d),
             "max_seq_len": Axis("var"), "rotary_dim": Axis("const", rd)},
            {"positions": TensorSpec(["nnz"], dtype_name(positions)),
             "query": TensorSpec(["nnz", "num_q_heads_x_head_size"], dtype_name(q)),
             "key": TensorSpec(["nnz", "num_k_heads_x_head_size"], dtype_name(k)),
             "head_size": TensorSpec(None, "int32"),
             "cos_sin_cache": TensorSpec(["max_seq_len", "rotary_dim"], dtype_name(cache)),
             "is_neox": TensorSpec(None, "int32", "1: NeoX halves, 0: GPT-J pairs", optional=True)},
            {"query_out": TensorSpec(["nnz", "num_q_heads_x_head_size"], dtype_name(q)),
             "key_out": TensorSpec(["nnz", "num_k_heads_x_head_size"], dtype_name(k))},
            _FI_RUN, tags=["status:verified"] + tags, description=what)

    def named(self, definition, inputs):
        positions, q, k, cache = inputs.args
        if self.form == "fib":
            return {"q": q, "k": k, "cos_sin_cache": cache, "positions": positions}
        n = int(q.shape[0])
        return {"positions": positions, "query": q.reshape(n, -1), "key": k.reshape(n, -1),
                "head_size": int(q.shape[2]), "cos_sin_cache": cache, "is_neox": int(bool(inputs.kwargs["is_neox"]))}

    # ------------------------------------------------------------------ theirs -> ours

    def _is_neox(self, definition, named) -> bool:
        if self.form == "fib":
            return _FIB.match(definition.name).group(1) == "neox"
        v = named.get("is_neox")
        return True if v is None else bool(_scalar(v))

    def inputs_from(self, definition, named):
        cache, positions = named["cos_sin_cache"], named["positions"]
        if self.form == "fib":
            q, k = named["q"], named["k"]
        else:
            d = int(_scalar(named["head_size"]))
            q = named["query"].reshape(named["query"].shape[0], -1, d)
            k = named["key"].reshape(named["key"].shape[0], -1, d)
        neox = self._is_neox(definition, named)
        shape = {"num_tokens": int(q.shape[0]), "num_q_heads": int(q.shape[1]), "num_kv_heads": int(k.shape[1]),
                 "head_dim": int(q.shape[2]), "rotary_dim": int(cache.shape[1]), "is_neox": neox,
                 "max_position": int(cache.shape[0]), "dtype": dtype_name(q), "cache_dtype": dtype_name(cache),
                 "positions_dtype": dtype_name(positions)}
        return Inputs(self.op, shape, (positions, q, k, cache), {"is_neox": neox})

    def implementation(self, definition, solve):
        fam = self
        q_name, k_name = self._outputs(definition)

        def impl(positions, q, k, cos_sin_cache, *, is_neox, rotary_dim=None):
            import torch

            from kernels.ops import Unsupported

            if fam.form == "fib" and bool(is_neox) != fam._is_neox(definition, {}):
                raise Unsupported(f"is_neox: {definition.name} fixes the {'NeoX' if not is_neox else 'GPT-J'} style")
            qc, kc = q.contiguous().clone(), k.contiguous().clone()
            named = fam.named(definition, Inputs(fam.op, {}, (positions, qc, kc, cos_sin_cache),
                                                  {"is_neox": bool(is_neox)}))
            got = solve(named)
            for dst, name in ((q, q_name), (k, k_name)):
                new = got[name]
                if not isinstance(new, torch.Tensor) or new.dtype != dst.dtype or new.numel() != dst.numel():
                    raise ValueError(f"{name}: expected a {dst.dtype} tensor of {dst.numel()} elements, got "
                                     f"{getattr(new, 'dtype', type(new).__name__)} {tuple(getattr(new, 'shape', ()))}")
                dst.copy_(new.reshape(dst.shape))
            return q, k

        return impl

    def theirs(self, definition, outputs):
        q_name, k_name = self._outputs(definition)
        q, k = outputs["q"], outputs["k"]
        if self.form == "fi":
            q, k = q.reshape(q.shape[0], -1), k.reshape(k.shape[0], -1)
        return {q_name: q, k_name: k}

    def template_named(self, template, init):
        return dict(init)
