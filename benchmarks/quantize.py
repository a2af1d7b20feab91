"""Quantization targets on the module-02 model: val loss and true bytes for float32, bfloat16, int8 per
channel and int4 in groups of 32 / 64 / 128 (plus PyTorch's dynamic int8 for reference).

Targets (issue 5): int8 weight-only ≤ 1 % val-loss increase at ≤ 0.27× the float32 bytes;
int4 group 64 ≤ 5 % at ≤ 0.16×. Losses are deterministic (fixed validation batches, the same for
every variant); forward-pass speed is the median of repeats on one batch. Prints a table and writes
benchmarks/results/quantize.json.

    python benchmarks/quantize.py            # the full table on the cached full-profile `small` model
    python benchmarks/quantize.py --quick    # 2 batches, 1 repeat: checks the script runs (JSON: see common.py)
"""
from __future__ import annotations

import argparse
import copy
import json
import platform

import torch
from common import results_dir

from slm_lab import quantize as Q
from slm_lab.evaluate import fixed_batches, mean_loss
from slm_lab.settings import profile
from slm_lab.timing import median_seconds
from slm_lab.train import prepare_char_data, pretrained

TARGETS = {"int8 per channel": (1.0, 0.27), "int4 g64": (5.0, 0.16)}      # max increase %, max bytes ratio

VARIANTS = {   # name → (bits, group_size, how to build it)
    "float32": (32, None, lambda m: m),
    "bfloat16": (16, None, lambda m: copy.deepcopy(m).to(torch.bfloat16)),
    "int8 per channel": (8, None, lambda m: Q.quantize_model(m, 8, None)),
    "int4 g32": (4, 32, lambda m: Q.quantize_model(m, 4, 32)),
    "int4 g64": (4, 64, lambda m: Q.quantize_model(m, 4, 64)),
    "int4 g128": (4, 128, lambda m: Q.quantize_model(m, 4, 128)),
    "int4 g64, embedding float32": (4, 64, lambda m: Q.quantize_model(m, 4, 64, embedding=False)),
    "PyTorch dynamic int8": (8, None, Q.torch_dynamic_int8),
}


def forward_seconds(model, x, repeats: int) -> float:
    """Median seconds of a no-grad forward pass over the batch x (B, T), after one warm-up pass."""
    with torch.no_grad():
        return median_seconds(lambda: model(x), repeats)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2 batches, 1 timing repeat, JSON outside benchmarks/results")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batches", type=int, default=40, help="validation batches of 16 × block_size tokens")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    ckpt = pretrained("small")
    model = ckpt.model.eval()
    _, _, val_ids = prepare_char_data("shakespeare")
    n_batches = 2 if args.quick else args.batches
    batches = fixed_batches(val_ids, model.cfg.block_size, 16, n_batches, seed=0)
    repeats = 1 if args.quick else 5

    rows, base = {}, None
    for name, (bits, group, build) in VARIANTS.items():
        m = build(model)
        loss = mean_loss(m, batches)
        base = loss if base is None else base
        size = Q.model_bytes(m)
        rows[name] = dict(bits=bits, group_size=group, val_loss=loss, bytes=size,
                          forward_s=forward_seconds(m, batches[0][0], repeats))
    fp32 = rows["float32"]
    for name, r in rows.items():
        r["increase_pct"] = 100 * (r["val_loss"] / base - 1)
        r["ratio_fp32"] = r["bytes"] / fp32["bytes"]
        r["tokens_per_s"] = batches[0][0].numel() / r["forward_s"]
        if name in TARGETS:
            max_inc, max_ratio = TARGETS[name]
            r["target"] = f"<= {max_inc:g}% at <= {max_ratio}x"
            r["met"] = r["increase_pct"] <= max_inc and r["ratio_fp32"] <= max_ratio

    print(f"model: {model.num_parameters():,} parameters, {model.cfg.n_layer} layers × d_model {model.cfg.d_model}, "
          f"profile {profile()}, {n_batches * 16 * model.cfg.block_size:,} validation tokens")
    print(f"{'variant':<29}{'val loss':>9}{'increase':>10}{'bytes':>12}{'× fp32':>8}{'tok/s':>9}  target")
    for name, r in rows.items():
        goal = f"{r['target']}: {'met' if r['met'] else 'MISSED'}" if "target" in r else ""
        print(f"{name:<29}{r['val_loss']:>9.4f}{r['increase_pct']:>+9.2f}%{r['bytes']:>12,}{r['ratio_fp32']:>8.3f}"
              f"{r['tokens_per_s']:>9,.0f}  {goal}")
    out = {"benchmark": "quantize", "profile": profile(), "threads": args.threads, "torch": torch.__version__,
           "machine": platform.processor() or platform.machine(),
           "model": {"config": model.cfg.to_dict(), "parameters": model.num_parameters(),
                     "checkpoint_meta": {k: v for k, v in ckpt.meta.items() if k != "train_config"}},
           "eval": {"batches": n_batches, "batch_size": 16, "block_size": model.cfg.block_size, "seed": 0},
           "timing": f"median of {repeats} forward passes over one batch of 16 × {model.cfg.block_size} tokens",
           "storage": "model_bytes: every state_dict tensor once; int4 packed two per byte; float16 scales, "
                      "int8 zero-points; PyTorch's per-channel scales float64 and zero-points int64",
           "rows": rows}
    path = results_dir(args.quick) / "quantize.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(out, indent=2))
    tmp.replace(path)
    print(f"saved {path}")


if __name__ == "__main__":
    main()
