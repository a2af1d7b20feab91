"""Do quantized models decode faster? fp32, bf16, int8 and int4, through the teaching layer and the packed kernels.

For the course's `small` model (trained weights) and a SmolLM2-135M-shaped model (random weights: speed does
not depend on their values) it measures decode tokens/s (prefill 64 tokens, then 32 greedy single-token steps
on the KV cache; median over repeats) at 1 and 2 threads for:
  fp32                 the model as trained
  bf16                 every weight and activation in bfloat16
  int8 / int4 teaching `quantize_model` (module 05): integers stored, dequantized on every call
  int8 / int4 packed   the same integers on PyTorch's packed CPU kernels (`slm_lab.fast_quant.pack_for_cpu`)
  int8 dynamic         `torch.ao` dynamic quantization: int8 weights *and* activations (other numbers)
int8 is symmetric with one scale per output channel; int4 has zero-points in groups of 32 inputs.

Each row also gets its roofline: bytes one decode step reads (`latency.decode_read_bytes`) ÷ read bandwidth.
The bandwidth is measured on the buffers decode reads (every weight of the 135M-shaped fp32 model summed once,
`latency.weight_read_bandwidth`), several times through the run, between the decode measurements; the table
prints its spread, and every row uses its median. The packed path's logits are compared with the teaching
path's (the same integers; the kernels compute in bf16). Prints a table, writes benchmarks/results/quant_speed.json.

    python benchmarks/quant_speed.py             # ~6 min on 2 cores
    python benchmarks/quant_speed.py --quick     # the 135M shape cut to 2 layers, 4 tokens: checks the script runs
"""
from __future__ import annotations

import argparse
import copy
import datetime
import json
import statistics
import sys
from dataclasses import replace

import torch
from common import results_dir

from slm_lab import latency, sizing
from slm_lab.fast_quant import pack_for_cpu, packed_layers
from slm_lab.model import SLM
from slm_lab.quantize import quantize_model, torch_dynamic_int8
from slm_lab.train import pretrained

PROMPT, NEW = 64, 32
REAL = "SmolLM2-135M"
INT4_GROUP = 32
TARGETS = {"int4": 2.0, "int8": 1.3}       # decode speed-up over fp32 on the 135M shape, fastest path
ROOFLINE_TARGET = 0.5


def variants(model: SLM) -> dict[str, torch.nn.Module]:
    int8, int4 = quantize_model(model, 8, None), quantize_model(model, 4, INT4_GROUP)
    return {"fp32": model, "bf16": copy.deepcopy(model).to(torch.bfloat16),
            "int8 teaching": int8, "int8 packed": pack_for_cpu(int8), "int8 dynamic": torch_dynamic_int8(model),
            "int4 teaching": int4, "int4 packed": pack_for_cpu(int4)}


@torch.inference_mode()
def parity(teach: torch.nn.Module, packed: torch.nn.Module, vocab: int) -> dict:
    """Packed against teaching logits on one prompt: relative error and next-token agreement."""
    idx = torch.randint(0, vocab, (1, PROMPT), generator=torch.Generator().manual_seed(1))
    a, b = packed(idx).logits.float(), teach(idx).logits.float()
    return {"logits_rel_error": float((a - b).norm() / b.norm()),
            "argmax_agreement": float((a.argmax(-1) == b.argmax(-1)).float().mean())}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="the 135M shape cut to 2 layers, 4 new tokens, 1 repeat; JSON outside benchmarks/results")
    ap.add_argument("--repeats", type=int, default=3, help="timed decodes per measurement (median)")
    args = ap.parse_args(argv)
    repeats = 1 if args.quick else args.repeats
    prompt, new = (8, 4) if args.quick else (PROMPT, NEW)
    card = sizing.card(REAL)
    if args.quick:
        card = replace(card, name=f"{card.name}, 2 layers", n_layer=2)
    torch.manual_seed(0)
    real = SLM(card.slm_config()).eval()
    models = {"course small": pretrained("small", progress=False).model.eval(), card.name: real}
    bandwidth: list[float] = []

    def probe() -> None:
        """Read bandwidth on the 135M model's weights, always at 2 threads: one figure for every row."""
        torch.set_num_threads(2)
        bandwidth.extend(latency.weight_read_bandwidth(real, repeats=3))

    rows, checks = [], {}
    for name, model in models.items():
        vs = variants(model)
        checks[name] = {"int8": parity(vs["int8 teaching"], vs["int8 packed"], model.cfg.vocab_size),
                        "int4": parity(vs["int4 teaching"], vs["int4 packed"], model.cfg.vocab_size),
                        "packed_layers": {k: packed_layers(vs[f"{k} packed"]) for k in ("int8", "int4")}}
        for threads in (1, 2):
            probe()                                    # between rows
            torch.set_num_threads(threads)
            for kind, m in vs.items():
                tps = latency.time_decode(m, prompt, new, repeats=repeats)
                rows.append({"model": name, "threads": threads, "kind": kind, "decode_tokens_per_s": tps,
                             "read_mb": latency.decode_read_bytes(m) / 1e6})
                print(f"  {name}, {threads} thread(s), {kind}: {tps:.1f} tok/s", file=sys.stderr)
    probe()
    bw = statistics.median(bandwidth)
    for r in rows:
        base = next(x for x in rows if x["model"] == r["model"] and x["threads"] == r["threads"] and x["kind"] == "fp32")
        r["speedup_vs_fp32"] = r["decode_tokens_per_s"] / base["decode_tokens_per_s"]
        r["roofline_tokens_per_s"] = bw / (r["read_mb"] * 1e6)
        r["roofline_ratio"] = r["decode_tokens_per_s"] / r["roofline_tokens_per_s"]

    print(f"read bandwidth on the 135M model's weights, 2 threads, {len(bandwidth)} measurements through the run: "
          f"median {bw / 1e9:.1f} GB/s, min {min(bandwidth) / 1e9:.1f}, max {max(bandwidth) / 1e9:.1f} "
          "(every row's roofline uses the median)")
    print(f"\n{'model':<16}{'threads':>8}{'kind':>15}{'read MB':>9}{'tok/s':>9}{'× fp32':>8}{'roofline':>10}{'ratio':>7}")
    for r in rows:
        print(f"{r['model']:<16}{r['threads']:>8}{r['kind']:>15}{r['read_mb']:>9.1f}{r['decode_tokens_per_s']:>9.1f}"
              f"{r['speedup_vs_fp32']:>8.2f}{r['roofline_tokens_per_s']:>10.1f}{r['roofline_ratio']:>7.2f}")
    print("\npacked vs teaching logits (same integers, bf16 kernels):")
    for name, c in checks.items():
        print(f"  {name}: " + "; ".join(f"{k} rel. error {c[k]['logits_rel_error']:.4f}, next token agrees "
                                        f"{c[k]['argmax_agreement']:.1%}" for k in ("int8", "int4")))
    targets = {}
    for kind, want in TARGETS.items():
        best = max((r for r in rows if r["model"] == card.name and r["kind"].startswith(kind)),
                   key=lambda r: r["speedup_vs_fp32"])
        targets[kind] = {"min_speedup": want, "speedup": best["speedup_vs_fp32"], "path": best["kind"],
                         "threads": best["threads"], "met": best["speedup_vs_fp32"] >= want}
        print(f"{card.name}: fastest {kind} path is {best['kind']} at {best['threads']} thread(s), "
              f"{best['speedup_vs_fp32']:.2f}× fp32 — target ≥ {want} {'MET' if targets[kind]['met'] else 'MISSED'}")
    best = max((r for r in rows if r["model"] == card.name), key=lambda r: r["roofline_ratio"])
    targets["roofline"] = {"min_ratio": ROOFLINE_TARGET, "ratio": best["roofline_ratio"], "path": best["kind"],
                           "threads": best["threads"], "met": best["roofline_ratio"] >= ROOFLINE_TARGET}
    print(f"{card.name}: closest to its roofline is {best['kind']} at {best['threads']} thread(s), "
          f"{best['roofline_ratio']:.2f} — target ≥ {ROOFLINE_TARGET} {'MET' if targets['roofline']['met'] else 'MISSED'}")
    out = {"benchmark": "quant_speed", "date": datetime.date.today().isoformat(), "torch": torch.__version__,
           "repeats": repeats, "setup": {"prompt": prompt, "new_tokens": new, "int4_group": INT4_GROUP},
           "bandwidth": {"median": bw, "min": min(bandwidth), "max": max(bandwidth), "samples": bandwidth,
                         "threads": 2, "measured_on": f"{card.name} fp32 weights"},
           "rows": rows, "parity": checks, "targets": targets}
    path = results_dir(args.quick) / "quant_speed.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"saved {path}")


if __name__ == "__main__":
    main()
