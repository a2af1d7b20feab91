"""The deployment table: the course's `small` model in PyTorch fp32, ONNX Runtime fp32, int8 and int4,
under a device profile (1 CPU thread, a memory budget).

For each configuration, in a fresh process: file size, load time, prefill time for a prompt of a quarter
of the context (at most 64 tokens), greedy decode tokens/s for the rest of the context with the KV cache
(medians over repeats after a warm-up) and peak resident memory (VmHWM: runtime + model + cache). Accuracy: validation loss on the same fixed
Shakespeare batches for every variant, and whether greedy tokens equal PyTorch's. Target on a 2-core
laptop-class CPU at 1 thread: ORT int8 decode ≥ 2× PyTorch eager fp32 tokens/s, file ≤ 0.3× fp32.
Saves benchmarks/results/deploy.json.

    flock /tmp/slm_heavy.lock python benchmarks/deploy.py            # the real table (full profile model)
    python benchmarks/deploy.py --quick                                 # a tiny random model (JSON: see common.py)
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import results_dir

from slm_lab import measure
from slm_lab.checkpoint import load_checkpoint, save_checkpoint
from slm_lab.evaluate import fixed_batches, mean_loss
from slm_lab.onnx_export import export_onnx
from slm_lab.onnx_quantize import quantize_int4, quantize_int8
from slm_lab.onnx_runtime import onnx_mean_loss

PROMPT = ("ROMEO:\nBut, soft! what light through yonder window breaks?\nIt is the east, and Juliet is the sun.\n"
          "Arise, fair sun, and kill the envious moon,\n")


def quick_checkpoint(folder: Path) -> Path:
    from slm_lab.model import SLM, SLMConfig
    from slm_lab.tokenizer import CharTokenizer

    tok = CharTokenizer(PROMPT)
    torch.manual_seed(0)
    return save_checkpoint(folder / "ckpt", SLM(SLMConfig(vocab_size=tok.vocab_size, n_layer=2, d_model=64,
                                                          n_head=4, block_size=256)), tok)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt", default=None, help="checkpoint directory (default: the course's `small` model)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--budget-mib", type=float, default=128.0, help="the device's memory budget for the process")
    ap.add_argument("--prompt-tokens", type=int, default=None, help="default: a quarter of the context, at most 64")
    ap.add_argument("--new-tokens", type=int, default=None, help="default: the rest of the context")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--quick", action="store_true", help="tiny random model, few tokens, JSON outside benchmarks/results")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="slm_deploy_bench_") as work:     # the ONNX files, the quick checkpoint
        return run(args, Path(work))


def run(args, work: Path) -> int:
    if args.quick:
        ckpt_dir, args.new_tokens, args.repeats = quick_checkpoint(work), 16, 2
    elif args.ckpt:
        ckpt_dir = Path(args.ckpt)
    else:
        from slm_lab.train import pretrained

        ckpt_dir = pretrained("small").path
    ckpt = load_checkpoint(ckpt_dir)
    block = ckpt.model.cfg.block_size
    args.prompt_tokens = args.prompt_tokens or min(64, block // 4)
    args.new_tokens = min(args.new_tokens or block, block - args.prompt_tokens)   # never past the context
    prompt = ckpt.tokenizer.encode((PROMPT * 4)[:args.prompt_tokens])
    t0 = time.perf_counter()
    fp32 = export_onnx(ckpt.model, work / "model.onnx")
    export_s = time.perf_counter() - t0
    int8 = quantize_int8(fp32, work / "model.int8.onnx")
    int4 = quantize_int4(fp32, work / "model.int4.onnx")
    configs = {"pytorch fp32": ("pytorch", ckpt_dir, Path(ckpt_dir) / "model.safetensors"),
               "onnxruntime fp32": ("onnxruntime", fp32, fp32),
               "onnxruntime int8": ("onnxruntime", int8, int8),
               "onnxruntime int4": ("onnxruntime", int4, int4)}
    profile = measure.DeviceProfile(threads=args.threads, memory_budget_mib=args.budget_mib)
    rows = measure.measure_all(configs, prompt, args.new_tokens, repeats=args.repeats, profile=profile, progress=False)

    # Accuracy on held-out Shakespeare: the same fixed batches for every variant.
    torch.set_num_threads(args.threads)
    if args.quick:
        val = torch.tensor(ckpt.tokenizer.encode(PROMPT * 20))
    else:
        from slm_lab.train import prepare_char_data

        val = prepare_char_data("shakespeare")[2]
    batches = fixed_batches(val, block, 8, 2 if args.quick else 10, seed=0)
    losses = {"pytorch fp32": mean_loss(ckpt.model, batches)}
    for name, path in (("onnxruntime fp32", fp32), ("onnxruntime int8", int8), ("onnxruntime int4", int4)):
        losses[name] = onnx_mean_loss(path, batches)
    ref_tokens = rows[0]["tokens"]
    for r in rows:
        r["path"] = Path(r["path"]).name                      # no machine-specific paths in the results
        r["val_loss"] = losses[r["name"]]
        r["val_loss_change"] = losses[r["name"]] / losses["pytorch fp32"] - 1
        r["greedy_tokens_equal_pytorch"] = r["tokens"] == ref_tokens
        r["greedy_prefix_equal_pytorch"] = next((i for i, (a, b) in enumerate(zip(r["tokens"], ref_tokens)) if a != b),
                                                len(ref_tokens))
        del r["tokens"]
    by = {r["name"]: r for r in rows}
    speedup = by["onnxruntime int8"]["decode_tokens_per_s"] / by["pytorch fp32"]["decode_tokens_per_s"]
    size_ratio = by["onnxruntime int8"]["file_mb"] / by["onnxruntime fp32"]["file_mb"]
    print(measure.format_table(rows))
    print("\nval loss: " + ", ".join(f"{n} {losses[n]:.4f}" for n in losses))
    print("greedy tokens equal to PyTorch: " + ", ".join(f"{r['name']} {r['greedy_tokens_equal_pytorch']}" for r in rows))
    print(f"target (1 thread): int8 decode {speedup:.2f}× PyTorch eager fp32 (≥ 2: {'met' if speedup >= 2 else 'MISSED'}), "
          f"int8 file {size_ratio:.3f}× the fp32 ONNX file (≤ 0.3: {'met' if size_ratio <= 0.3 else 'MISSED'})")
    result = {"machine": {"platform": platform.platform(), "processor": platform.processor(), "python": sys.version.split()[0],
                          "torch": torch.__version__, "onnxruntime": __import__("onnxruntime").__version__,
                          "cpu_count": __import__("os").cpu_count()},
              "checkpoint": checkpoint_label(args, ckpt), "model": ckpt.model.cfg.to_dict(), "parameters": ckpt.model.num_parameters(),
              "profile": {"threads": profile.threads, "memory_budget_mib": profile.memory_budget_mib},
              "prompt_tokens": len(prompt), "new_tokens": args.new_tokens, "repeats": args.repeats,
              "export_s": export_s, "rows": rows,
              "target": {"int8_decode_speedup_vs_pytorch": speedup, "int8_size_ratio_vs_fp32_onnx": size_ratio,
                         "met": bool(speedup >= 2 and size_ratio <= 0.3)},
              "date": time.strftime("%Y-%m-%d %H:%M")}
    path = results_dir(args.quick) / "deploy.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"saved {path}")
    return 0


def checkpoint_label(args, ckpt) -> str:
    if args.quick:
        return "quick: a tiny random model"
    return args.ckpt or f"pretrained('small'), {ckpt.meta.get('profile')} profile"


if __name__ == "__main__":
    sys.exit(main())
