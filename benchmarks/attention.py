"""Attention kernels: peak memory and time on CPU; forward TFLOP/s on a GPU when there is one.

CPU (always): naive attention (materialises the N×N scores), tiled attention in PyTorch (online
softmax, linear memory) and PyTorch's fused scaled_dot_product_attention, for N = 512 … 8192,
d = 64, float32. Peak memory is measured in a fresh process (see slm_lab.kernels.bench.METHOD) and
compared with the analytical size; time is the median over repeats. Saves
benchmarks/results/attention_cpu.json.

GPU (only with CUDA): forward TFLOP/s of the Triton kernel (autotuned tiles) vs
scaled_dot_product_attention restricted to its flash backend vs naive attention in the input
dtype, fp16 and bf16, N = 1k … 16k, d = 64 and 128, causal and not; 16k tokens per batch and
2048 hidden (heads = 2048 / d), medians over CUDA-event-timed runs. Target on an H100/H200: the
Triton kernel at ≥ 70% of SDPA's throughput at N = 4096, d = 128, bf16. Saves attention_gpu.json.

    python benchmarks/attention.py                 # CPU table (+ GPU table when CUDA is present)
    python benchmarks/attention.py --quick         # small N: checks the script runs (JSON: see common.py)
    python benchmarks/attention.py --gpu-dry-run   # the GPU code path on CPU (interpreter, tiny sizes)
"""
from __future__ import annotations

import argparse
import json
import platform
import sys

import torch
import torch.nn.functional as F
from common import results_dir

from slm_lab.kernels import attention_flops, naive_attention, tiled_attention
from slm_lab.kernels.bench import METHOD, cuda_median_ms, expected_bytes, log_log_slope, measure_peak_memory, median_seconds

MiB = 2 ** 20


# ----------------------------------------------------------------------------- CPU ----
def cpu_table(ns, heads: int, head_dim: int, block: int, threads: int, repeats: int) -> dict:
    points = [dict(impl=impl, n=n, heads=heads, head_dim=head_dim, causal=causal, block=block)
              for causal in (False, True) for n in ns for impl in ("naive", "tiled", "sdpa")]
    mem = measure_peak_memory(points, threads=threads)
    torch.set_num_threads(threads)
    rows = []
    for p in mem:
        g = torch.Generator().manual_seed(0)
        q, k, v = (torch.randn(1, heads, p["n"], head_dim, generator=g) for _ in range(3))
        fn = {"naive": lambda: naive_attention(q, k, v, causal=p["causal"]),
              "tiled": lambda: tiled_attention(q, k, v, causal=p["causal"], block_q=block, block_k=block),
              "sdpa": lambda: F.scaled_dot_product_attention(q, k, v, is_causal=p["causal"])}[p["impl"]]
        sec = median_seconds(fn, repeats=repeats, warmup=1)
        exp = expected_bytes(p["impl"], p["n"], heads=heads, head_dim=head_dim, block=block,
                             causal=p["causal"]) if p["impl"] != "sdpa" else None
        rows.append({**p, "peak_mib": p["peak_bytes"] / MiB, "expected_mib": exp / MiB if exp else None,
                     "median_s": sec, "gflops": attention_flops(1, heads, p["n"], head_dim, p["causal"]) / sec / 1e9})
        print(f"  {p['impl']:<6} causal={p['causal']!s:<5} N={p['n']:>5}: {rows[-1]['peak_mib']:9.1f} MiB"
              f"  {sec * 1e3:9.1f} ms", file=sys.stderr)
    slopes = {}
    for causal in (False, True):
        for impl in ("naive", "tiled", "sdpa"):
            rs = [r for r in rows if r["impl"] == impl and r["causal"] == causal]
            slopes[f"{impl}{'_causal' if causal else ''}"] = {
                "memory": log_log_slope([r["n"] for r in rs], [r["peak_bytes"] for r in rs]),
                "time": log_log_slope([r["n"] for r in rs], [r["median_s"] for r in rs])}
    return {"rows": rows, "loglog_slopes": slopes}


def print_cpu(table: dict) -> None:
    print(f"\n{'impl':<7}{'causal':<8}{'N':>6}{'peak MiB':>11}{'expected':>10}{'median ms':>11}{'GFLOP/s':>9}")
    for r in table["rows"]:
        exp = f"{r['expected_mib']:.1f}" if r["expected_mib"] is not None else "—"
        print(f"{r['impl']:<7}{str(r['causal']):<8}{r['n']:>6}{r['peak_mib']:>11.1f}{exp:>10}"
              f"{r['median_s'] * 1e3:>11.1f}{r['gflops']:>9.1f}")
    print("\nlog-log slopes (2 = quadratic, 1 = linear): " + ", ".join(
        f"{k} memory {v['memory']:.2f} time {v['time']:.2f}" for k, v in table["loglog_slopes"].items()))


# ----------------------------------------------------------------------------- GPU ----
def naive_lowp(q, k, v, causal):
    """Naive attention as people write it on a GPU: scores in the input dtype, softmax over N×N."""
    s = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
    if causal:
        n = q.shape[-2]
        s = s.masked_fill(~torch.ones(n, n, dtype=torch.bool, device=q.device).tril(), float("-inf"))
    return torch.softmax(s, dim=-1) @ v


def gpu_table(ns, dims, dtypes, causals, tokens: int, hidden: int, timer, device: str,
              repeats: int, kernel_blocks: tuple | None = None) -> list[dict]:
    """TFLOP/s per (dtype, d, causal, N) for triton / sdpa-flash / naive; timer(fn) → median ms."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from slm_lab.kernels.triton_flash import triton_attention

    bm, bn = kernel_blocks or (None, None)
    rows = []
    for dtype_name in dtypes:
        dtype = getattr(torch, dtype_name)
        for d in dims:
            for causal in causals:
                for n in ns:
                    heads, batch = max(1, hidden // d), max(1, tokens // n)
                    g = torch.Generator(device=device).manual_seed(0)
                    q, k, v = (torch.randn(batch, heads, n, d, device=device, dtype=dtype, generator=g)
                               for _ in range(3))
                    flops = attention_flops(batch, heads, n, d, causal)
                    row = {"dtype": dtype_name, "head_dim": d, "causal": causal, "n": n, "batch": batch,
                           "heads": heads}

                    def flash():
                        if device == "cuda":
                            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                                return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
                        return F.scaled_dot_product_attention(q, k, v, is_causal=causal)

                    impls = {"triton": lambda: triton_attention(q, k, v, causal=causal, block_m=bm, block_n=bn)[0],
                             "sdpa_flash": flash, "naive": lambda: naive_lowp(q, k, v, causal)}
                    ref = flash()
                    row["triton_max_abs_err"] = (impls["triton"]().float() - ref.float()).abs().max().item()
                    for name, fn in impls.items():
                        try:
                            ms = timer(fn, repeats)
                            row[f"{name}_ms"], row[f"{name}_tflops"] = ms, flops / (ms * 1e-3) / 1e12
                        except torch.cuda.OutOfMemoryError:
                            row[f"{name}_ms"] = row[f"{name}_tflops"] = None
                            row[f"{name}_note"] = "out of memory"
                            torch.cuda.empty_cache()
                    rows.append(row)
                    tf = {key: row.get(f"{key}_tflops") for key in impls}
                    print(f"  {dtype_name} d={d} causal={causal!s:<5} N={n:>5}: " + "  ".join(
                        f"{key} {v:.1f}" if v is not None else f"{key} OOM" for key, v in tf.items())
                        + f"  (err {row['triton_max_abs_err']:.1e})", file=sys.stderr)
                    del q, k, v, ref
    return rows


def gpu_verdict(rows: list[dict]) -> dict:
    at = [r for r in rows if r["n"] == 4096 and r["head_dim"] == 128 and r["dtype"] == "bfloat16"
          and r.get("triton_tflops") and r.get("sdpa_flash_tflops")]
    ratios = {("causal" if r["causal"] else "non_causal"): r["triton_tflops"] / r["sdpa_flash_tflops"] for r in at}
    return {"triton_over_sdpa_at_4096_d128_bf16": ratios,
            "target_0.7_met": bool(ratios) and all(x >= 0.7 for x in ratios.values())}


def print_gpu(rows: list[dict]) -> None:
    print(f"\n{'dtype':<10}{'d':>4}{'causal':>8}{'N':>7}{'triton':>9}{'sdpa':>9}{'naive':>9}{'ratio':>7}   TFLOP/s")
    for r in rows:
        vals = [r.get(f"{k}_tflops") for k in ("triton", "sdpa_flash", "naive")]
        ratio = vals[0] / vals[1] if vals[0] and vals[1] else None
        print(f"{r['dtype']:<10}{r['head_dim']:>4}{str(r['causal']):>8}{r['n']:>7}" + "".join(
            f"{v:>9.1f}" if v is not None else f"{'OOM':>9}" for v in vals) + (f"{ratio:>7.2f}" if ratio else ""))


def cpu_ms(fn, repeats):
    return median_seconds(fn, repeats=repeats, warmup=1) * 1e3


# ---------------------------------------------------------------------------- main ----
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small N, fewer repeats, JSON outside benchmarks/results")
    ap.add_argument("--gpu-dry-run", action="store_true", help="run the GPU table's code on CPU, tiny sizes")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1: stable timings on a shared machine; memory does not depend on it)")
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    env = {"torch": torch.__version__, "python": platform.python_version(),
           "machine": platform.processor() or platform.machine(), "threads": args.threads}

    if args.gpu_dry_run:
        rows = gpu_table([64, 100], [32], ["float16", "bfloat16"], [False, True], tokens=128, hidden=64,
                         timer=cpu_ms, device="cpu", repeats=1, kernel_blocks=(32, 32))
        print_gpu(rows)
        print("dry run on CPU (Triton interpreter): the code path works; the numbers mean nothing.")
        return 0

    ns = [256, 512, 1024] if args.quick else [512, 1024, 2048, 4096, 8192]
    repeats = 2 if args.quick else args.repeats
    print(f"CPU: d=64, heads={args.heads}, float32, {args.threads} threads; peak memory = {METHOD}", file=sys.stderr)
    table = cpu_table(ns, heads=args.heads, head_dim=64, block=128, threads=args.threads, repeats=repeats)
    print_cpu(table)
    results = results_dir(args.quick)
    out = {"benchmark": "attention_cpu", **env, "head_dim": 64, "heads": args.heads, "batch": 1,
           "dtype": "float32", "tiled_block": 128, "repeats": repeats, "memory_method": METHOD, **table}
    (results / "attention_cpu.json").write_text(json.dumps(out, indent=2))
    print(f"saved {results / 'attention_cpu.json'}")

    if not torch.cuda.is_available():
        print("\nGPU: no CUDA device here — the GPU table (Triton vs SDPA flash vs naive) was not run.")
        return 0
    gns = [1024, 2048] if args.quick else [1024, 2048, 4096, 8192, 16384]
    gpu_repeats = 5 if args.quick else 20
    rows = gpu_table(gns, [64, 128], ["float16", "bfloat16"], [False, True], tokens=16384, hidden=2048,
                     timer=lambda fn, r: cuda_median_ms(fn, repeats=r, warmup=5), device="cuda",
                     repeats=gpu_repeats)
    print_gpu(rows)
    verdict = gpu_verdict(rows)
    print(f"\nTriton / SDPA-flash at N=4096, d=128, bf16: {verdict['triton_over_sdpa_at_4096_d128_bf16']} "
          f"(target ≥ 0.7: {'MET' if verdict['target_0.7_met'] else 'MISSED'})")
    out = {"benchmark": "attention_gpu", **env, "device": torch.cuda.get_device_name(),
           "timing": f"median of {gpu_repeats} CUDA-event-timed runs after 5 warm-up runs (autotuning happens in warm-up)",
           "rows": rows, "verdict": verdict}
    (results / "attention_gpu.json").write_text(json.dumps(out, indent=2))
    print(f"saved {results / 'attention_gpu.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
