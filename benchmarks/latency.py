"""Latency on this machine: measured prefill and decode next to a roofline built from measured rates.

First it measures the machine: memory bandwidth (sum and copy of a 512 MB float32 tensor) and the fp32
matmul rate (1024×1024 GEMM), medians over repeats. Then, for each model that fits in memory here —
the course presets and real architectures built from their configs with random weights (speed does not
depend on weight values) — it measures decode tokens/s (prefill 64 tokens, then 32 single-token steps on
the KV cache) — as stored, and with the same weights stored transposed ("prepacked", the layout CPU
matrix-vector kernels stream fastest) — and prefill ms (128 tokens), next to the roofline prediction:
  decode  ≈ weight bytes ÷ read bandwidth      (every weight is read once per new token)
  prefill ≈ FLOPs ÷ matmul rate                (the prompt's tokens share each weight read)
To explain the gap, each decode step is also split into parts measured apart: the fixed cost of its operators
(a "skinny twin" with the same depth and heads but almost no weights) and its matrix-vector products alone
(every Linear once, on one vector, at the bandwidth those kernels reach). The ~130M-parameter models are
also exported to ONNX and decoded by ONNX Runtime (module 08's runtime): the same weights through
kernels tuned for matrix-vector work. The roofline's read bandwidth is measured on the buffers decode reads —
every weight of the SmolLM2-135M-shaped model summed once (`latency.weight_read_bandwidth`) — before every
row and at the end, and every row uses the median of those measurements; their spread is printed (a single
probe at the start and one at the end moved 1.8× within one run). The matmul rate is measured at the start
and the end (the better one is the ceiling). Prints a table and writes benchmarks/results/latency.json.

    python benchmarks/latency.py                 # presets, GPT-2 124M, SmolLM2-135M/360M, TinyLlama-1.1B
    python benchmarks/latency.py --quick         # presets + SmolLM2-135M cut to 2 layers, a small machine probe,
                                                 # 2 repeats: checks the script runs (JSON: see common.py)
    python benchmarks/latency.py --no-onnx       # skip the ONNX Runtime column (no export, ~1 min faster)
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import torch
from common import results_dir

from slm_lab import latency, sizing
from slm_lab.model import SLM

REAL = ("GPT-2 124M", "SmolLM2-135M", "SmolLM2-360M", "TinyLlama-1.1B")
PROMPT, NEW, PREFILL = 64, 32, 128
TARGET = ("SmolLM2-135M", 0.5)     # its measured decode should reach at least half the roofline
ONNX = ("GPT-2 124M", "SmolLM2-135M")   # exported and decoded by ONNX Runtime too (~50 s of export each)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def vocab_size() -> int:
    from slm_lab.train import prepare_char_data

    return prepare_char_data("shakespeare")[0].vocab_size


def quick_card() -> sizing.ModelCard:
    """--quick's one real architecture: the target's, cut to 2 layers (the same code path in seconds)."""
    target = sizing.card(TARGET[0])
    return replace(target, name=f"{target.name}, 2 layers", n_layer=2)


def onnxruntime_decode(model: SLM, prompt: int, new: int, repeats: int, threads: int) -> float:
    """Decode tokens/s of `model` exported to ONNX (KV cache) and run by ONNX Runtime, same prompt and steps."""
    from slm_lab.measure import measure_in_process
    from slm_lab.onnx_export import export_onnx

    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(model, Path(tmp) / "model.onnx")
        ids = [i % model.cfg.vocab_size for i in range(1, prompt + 1)]
        return measure_in_process("onnxruntime", str(path), ids, new, repeats=repeats, threads=threads)["decode_tokens_per_s"]


def measure(card: sizing.ModelCard, repeats: int, onnx: bool = False, threads: int = 2) -> dict:
    """Time one model built from its config with random weights: decode as stored and prepacked (and through
    ONNX Runtime when onnx=True), prefill."""
    torch.manual_seed(0)
    model = SLM(card.slm_config()).eval()
    n = model.num_parameters()
    assert n == sizing.count_parameters(card).total, f"{card.name}: built {n}, formula {sizing.count_parameters(card).total}"
    block = model.cfg.block_size                          # nanogpt-cpu reads only 64 tokens
    prompt, new = min(PROMPT, block // 2), min(NEW, block // 2)
    prefill = min(PREFILL, block)
    parts = latency.decode_breakdown(model, prompt, new, repeats=repeats)      # measured step + its two parts
    tps = 1 / parts["step_s"]
    pre = latency.time_prefill(model, prefill, repeats=repeats)
    ort = onnxruntime_decode(model, prompt, new, repeats, threads) if onnx else None
    tps_packed = latency.time_decode(latency.prepack_for_decode(model), prompt, new, repeats=repeats)
    return dict(model=card.name, params=n, weight_mb=sizing.weight_bytes(n, "fp32") / 1e6, prompt=prompt,
                new_tokens=new, prefill_tokens=prefill, decode_tokens_per_s=tps, decode_prepacked_tokens_per_s=tps_packed,
                decode_onnxruntime_tokens_per_s=ort,
                prefill_ms=pre * 1e3, step_ms=parts["step_s"] * 1e3, fixed_ms=parts["fixed_s"] * 1e3,
                gemv_ms=parts["gemv_s"] * 1e3, gemv_gb_per_s=parts["gemv_bandwidth"] / 1e9,
                fixed_plus_gemv_ms=parts["explained_s"] * 1e3)


def add_roofline(row: dict, card: sizing.ModelCard, hw: sizing.Hardware) -> dict:
    context = row["prompt"] + row["new_tokens"] // 2      # the average context a decode step attends to
    pred_tps = 1 / latency.decode_seconds(card, hw, "fp32", context=context)
    pred_pre = latency.prefill_seconds(card, hw, "fp32", prompt=row["prefill_tokens"]) * 1e3
    return {**row, "decode_pred_tokens_per_s": pred_tps, "decode_ratio": row["decode_tokens_per_s"] / pred_tps,
            "decode_prepacked_ratio": row["decode_prepacked_tokens_per_s"] / pred_tps,
            "decode_onnxruntime_ratio": (row["decode_onnxruntime_tokens_per_s"] / pred_tps
                                         if row["decode_onnxruntime_tokens_per_s"] else None),
            "prefill_pred_ms": pred_pre, "prefill_ratio": pred_pre / row["prefill_ms"]}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="presets + SmolLM2-135M cut to 2 layers, a small machine "
                    "probe, 2 repeats; JSON outside benchmarks/results")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5, help="timed repeats per measurement (median)")
    ap.add_argument("--no-onnx", action="store_true", help="skip exporting to ONNX and decoding with ONNX Runtime")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    repeats = 2 if args.quick else args.repeats

    probe = dict(megabytes=64, matmul_n=512, repeats=3) if args.quick else dict(repeats=max(3, repeats + 2))
    rates = latency.measure_machine(**probe)
    real = [quick_card()] if args.quick else [sizing.card(n) for n in REAL]
    target_name, onnx_names = (real[0].name, {real[0].name}) if args.quick else (TARGET[0], set(ONNX))
    cards = list(sizing.course_cards(vocab_size()).values()) + real
    torch.manual_seed(0)
    probe_model = SLM(next(c for c in real if c.name == target_name).slm_config()).eval()
    bandwidth: list[float] = []
    raw = []
    for c in cards:
        bandwidth.extend(latency.weight_read_bandwidth(probe_model, repeats=3))    # between rows, same buffers
        raw.append(measure(c, repeats, onnx=c.name in onnx_names and not args.no_onnx, threads=args.threads))
        print(f"  timed {c.name} ({raw[-1]['params']:,} parameters)", file=sys.stderr)
    bandwidth.extend(latency.weight_read_bandwidth(probe_model, repeats=3))
    del probe_model
    after = latency.measure_machine(**probe)
    bw = statistics.median(bandwidth)
    # One read bandwidth for every row (the median of the probes); the matmul rate is a ceiling: the better one.
    peak = latency.MachineRates(bw, max(rates.copy_bandwidth, after.copy_bandwidth),
                                max(rates.matmul_flops, after.matmul_flops), args.threads, "cpu")
    rows = [add_roofline(r, c, peak.hardware()) for r, c in zip(raw, cards)]
    print(f"machine: {cpu_name()} | {args.threads} threads | torch {torch.__version__}")
    for label, r in (("start", rates), ("end", after)):
        print(f"  {label:<5}: read {r.read_bandwidth / 1e9:.1f} GB/s, copy {r.copy_bandwidth / 1e9:.1f} GB/s, "
              f"fp32 matmul {r.matmul_flops / 1e9:.1f} GFLOP/s")
    print(f"  read bandwidth on {target_name}'s weights, {len(bandwidth)} probes through the run: median "
          f"{bw / 1e9:.1f} GB/s (min {min(bandwidth) / 1e9:.1f}, max {max(bandwidth) / 1e9:.1f})")
    print(f"  roofline uses that median, {peak.read_bandwidth / 1e9:.1f} GB/s, and the better matmul rate, "
          f"{peak.matmul_flops / 1e9:.1f} GFLOP/s")
    print(f"\n{'':<42}{'--------- decode tokens/s ---------':>36}{'------ prefill ms ------':>30}")
    print(f"{'model':<20}{'params':>13}{'fp32 MB':>9}{'as stored':>11}{'prepacked':>11}{'roofline':>10}"
          f"{'ratios':>11}{'measured':>11}{'roofline':>10}{'ratio':>7}")
    for r in rows:
        ratios = f"{r['decode_ratio']:.2f}/{r['decode_prepacked_ratio']:.2f}"
        print(f"{r['model']:<20}{r['params']:>13,}{r['weight_mb']:>9.1f}{r['decode_tokens_per_s']:>11.1f}"
              f"{r['decode_prepacked_tokens_per_s']:>11.1f}{r['decode_pred_tokens_per_s']:>10.1f}{ratios:>11}"
              f"{r['prefill_ms']:>11.1f}{r['prefill_pred_ms']:>10.1f}{r['prefill_ratio']:>7.2f}")
    print("ratio = measured ÷ roofline speed (decode: tokens/s ÷ predicted, as stored / prepacked; prefill: "
          "predicted ms ÷ measured ms). prepacked = the same weights stored transposed (latency.prepack_for_decode)")
    ort_rows = [r for r in rows if r["decode_onnxruntime_tokens_per_s"]]
    if ort_rows:
        print("\nThe same weights decoded by ONNX Runtime (fp32, exported with the KV cache, same threads):")
        print(f"{'model':<20}{'PyTorch tok/s':>15}{'ORT tok/s':>11}{'ORT / PyTorch':>15}{'ORT / roofline':>16}")
        for r in ort_rows:
            print(f"{r['model']:<20}{r['decode_tokens_per_s']:>15.1f}{r['decode_onnxruntime_tokens_per_s']:>11.1f}"
                  f"{r['decode_onnxruntime_tokens_per_s'] / r['decode_tokens_per_s']:>15.2f}"
                  f"{r['decode_onnxruntime_ratio']:>16.2f}")
    print("\nWhere a decode step goes (as stored): the fixed cost of its operators (a skinny twin: same depth and "
          "heads, ~no weights) plus its matrix-vector products alone")
    print(f"{'model':<20}{'step ms':>9}{'fixed ms':>10}{'GEMV ms':>9}{'GEMV GB/s':>11}{'fixed+GEMV':>12}{'step/sum':>10}")
    for r in rows:
        print(f"{r['model']:<20}{r['step_ms']:>9.2f}{r['fixed_ms']:>10.2f}{r['gemv_ms']:>9.2f}{r['gemv_gb_per_s']:>11.1f}"
              f"{r['fixed_plus_gemv_ms']:>12.2f}{r['step_ms'] / r['fixed_plus_gemv_ms']:>10.2f}")
    target = next(r for r in rows if r["model"] == target_name)
    kinds = {"decode_ratio": "PyTorch as stored", "decode_prepacked_ratio": "PyTorch prepacked",
             "decode_onnxruntime_ratio": "ONNX Runtime"}
    met = {k: target[k] is not None and target[k] >= TARGET[1] for k in kinds}
    print(f"\n{target_name} decodes at " + ", ".join(
        f"{target[k]:.2f} of its roofline with {label} ({'MET' if met[k] else 'MISSED'})"
        for k, label in kinds.items() if target[k] is not None) + f"; target ≥ {TARGET[1]}")
    out = {"benchmark": "latency", "date": datetime.date.today().isoformat(), "threads": args.threads,
           "torch": torch.__version__, "machine": cpu_name(), "repeats": repeats, "dtype": "fp32",
           "setup": {"decode": f"prefill {PROMPT} tokens, then {NEW} single-token steps on the KV cache "
                               "(at most half the block each)", "prefill_tokens": PREFILL,
                     "decode_context_for_roofline": "prompt + new_tokens / 2"},
           "rates_at_start": rates.to_dict(), "rates_at_end": after.to_dict(), "roofline_rates": peak.to_dict(),
           "bandwidth": {"median": bw, "min": min(bandwidth), "max": max(bandwidth), "samples": bandwidth,
                         "measured_on": f"{target_name} fp32 weights (latency.weight_read_bandwidth)"},
           "rows": rows,
           "target": {"model": target_name, "min_decode_ratio": TARGET[1], "decode_ratio": target["decode_ratio"],
                      "decode_prepacked_ratio": target["decode_prepacked_ratio"],
                      "decode_onnxruntime_ratio": target["decode_onnxruntime_ratio"],
                      "met_as_stored": met["decode_ratio"], "met_prepacked": met["decode_prepacked_ratio"],
                      "met_onnxruntime": met["decode_onnxruntime_ratio"]},
           "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
           "median_decode_ratio_real_models": statistics.median(
               r["decode_ratio"] for r in rows if r["model"] in {c.name for c in real})}
    path = results_dir(args.quick) / "latency.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"saved {path}")


if __name__ == "__main__":
    main()
