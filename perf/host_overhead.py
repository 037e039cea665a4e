"""Host time of one validate=True and one validate=False call per catalogue case (kernels replaced by a
recorder), next to the modeled kernel time t_roof on h100-sxm and h200. Host times: this CPU; kernel: modeled."""
from __future__ import annotations
import statistics, time
import numpy as np
from kernels.runtime import configure_triton
configure_triton()
import torch
import kernels.triton as T
from kernels.reference.quant import Fp8Weight, Int4Weight
from perf.launch_recorder import recorded_launches
from roofline import catalogue as CAT
from roofline.specs import get_spec

DT = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32, "float8_e4m3fn": torch.float8_e4m3fn}

def attention(op, s):
    bs, lens = s["block_size"], s["seq_len"]
    ql = [1] * len(lens) if s["q_len"] == 1 else s["q_len"]
    need = [-(-n // bs) for n in lens]
    nb = sum(need) + 2
    perm = torch.randperm(nb).to(torch.int32)
    table = torch.full((len(lens), max(need) + 2), -1, dtype=torch.int32)
    st = 0
    for i, n in enumerate(need):
        table[i, :n] = perm[st:st + n]; st += n
    kc = torch.empty((nb, bs, s["num_kv_heads"], s["head_dim"]), dtype=DT[s["kv_dtype"]])
    q = torch.empty((sum(ql), s["num_q_heads"], s["head_dim"]), dtype=DT[s["dtype"]])
    sl = torch.tensor(lens, dtype=torch.int32)
    if op == "paged_decode":
        return (q, kc, kc.clone() if False else torch.empty_like(kc), table, sl), {}, {"max_seq_len": max(lens)}
    qsl = torch.tensor(np.concatenate([[0], np.cumsum(ql)]), dtype=torch.int32)
    return (q, kc, torch.empty_like(kc), table, sl, qsl), {}, {"max_query_len": max(ql), "max_seq_len": max(lens)}

def build(op, s):
    if op in ("paged_decode", "paged_prefill"):
        return attention(op, s)
    if op == "merge_states":
        return (torch.empty((s["num_states"], s["num_tokens"], s["num_heads"], s["head_dim"]), dtype=DT[s["dtype"]]),
                torch.zeros((s["num_states"], s["num_tokens"], s["num_heads"]))), {}, {}
    if op == "write_kv":
        t, bs = s["num_tokens"], s["block_size"]
        kc = torch.empty((-(-t // bs) + 1, bs, s["num_kv_heads"], s["head_dim"]), dtype=DT[s["kv_dtype"]])
        k = torch.empty((t, s["num_kv_heads"], s["head_dim"]), dtype=DT[s["dtype"]])
        return (k, torch.empty_like(k), kc, torch.empty_like(kc), torch.arange(t, dtype=torch.int64)), {}, {}
    if op.startswith("grouped_gemm"):
        e, n, k, t = s["experts"], s["n"], s["k"], s["tokens"]
        offs = torch.tensor(np.concatenate([[0], np.cumsum(s["group_sizes"])]), dtype=torch.int32)
        a = torch.empty((t, k), dtype=torch.bfloat16)
        if op == "grouped_gemm":
            return (a, torch.empty((e, n, k), dtype=torch.bfloat16), offs), {}, {}
        if op == "grouped_gemm_int4":
            g = s["group_size"]
            return (a, Int4Weight(torch.empty((e, n, k // 2), dtype=torch.uint8), torch.ones((e, n, k // g)), None, g), offs), {}, {}
        w = Fp8Weight(torch.empty((e, n, k), dtype=torch.float8_e4m3fn), torch.ones((e, -(-n // 128), -(-k // 128))), "block", (128, 128))
        return (torch.empty((t, k), dtype=torch.float8_e4m3fn), torch.ones((t, -(-k // 128))), w, offs), {}, {}
    t, h, i, e, kk, fmt = s["tokens"], s["hidden"], s["intermediate"], s["experts"], s["top_k"], s["weight_format"]
    def w(n, k):
        if fmt == "int4":
            return Int4Weight(torch.empty((e, n, k // 2), dtype=torch.uint8), torch.ones((e, n, k // 128)), None, 128)
        if fmt == "fp8":
            return Fp8Weight(torch.empty((e, n, k), dtype=torch.float8_e4m3fn), torch.ones((e, -(-n // 128), -(-k // 128))), "block", (128, 128))
        return torch.empty((e, n, k), dtype=torch.bfloat16)
    ids = ((torch.arange(t)[:, None] + torch.arange(kk)[None, :]) % e).to(torch.int32)
    return (torch.zeros((t, h), dtype=torch.bfloat16), w(2 * i, h), w(h, i), ids, torch.full((t, kk), 1.0 / kk)), {}, {}

def host_us(fn, reps=15):
    fn(); fn()
    xs = []
    for _ in range(reps):
        t0 = time.perf_counter(); fn(); xs.append(time.perf_counter() - t0)
    return statistics.median(xs) * 1e6

def main():
    torch.set_num_threads(1)
    h100, h200 = get_spec("h100-sxm"), get_spec("h200")
    print("| op | case | host, validate=True (us) | host, validate=False (us) | t_roof h100-sxm (us, modeled) | t_roof h200 (us, modeled) | validated host / t_roof h200 |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for c in CAT.catalogue():
        args, kw, hints = build(c.op, c.shape)
        fn = getattr(T, c.op)
        with recorded_launches():
            tv = host_us(lambda: fn(*args, **kw))
            tf = host_us(lambda: fn(*args, **kw, **hints, validate=False))
        cost = CAT.case_cost(c.op, c.shape)
        r1, r2 = cost.roof(h100)["t_roof_s"] * 1e6, cost.roof(h200)["t_roof_s"] * 1e6
        print(f"| {c.op} | {c.name} | {tv:.0f} | {tf:.0f} | {r1:.1f} | {r2:.1f} | {100 * tv / r2:.0f} % |", flush=True)

if __name__ == "__main__":
    main()
