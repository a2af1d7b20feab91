"""Instruction tuning, measured: task accuracy with 95% intervals for the ways module 10 compares.

On the offline instruction data (`slm_lab.instruct`: three task families) it fine-tunes module 02's
`small` model with the course's train() (`slm_lab.sft`) and scores each result on the test split
(`slm_lab.task_eval`: multiple choice by mean log-likelihood, exact match of the greedy answer):
  - untuned: the pretrained model with the chat tokens added, no fine-tuning (zero-shot; its 128-token
    context has no room for few-shot examples);
  - SFT, loss on the answers only (masked), and on every token (unmasked), each over --seeds seeds;
  - SFT from random initialisation (same architecture and steps: what pretraining buys), over --seeds;
  - LoRA (r=8 on attention and MLP, the embedding trainable for the new tokens) against full fine-tuning:
    accuracy, trainable parameters, optimizer state;
  - the first recipe (500 steps at 2e-3) against `sft.SFT`, seed 0;
  - the masked SFT model compressed: int8 and int4 weights (module 05's quantize_model), half the MLP
    neurons removed and healed by a short SFT (module 06's prune_structured), and exported to ONNX Runtime
    (module 08: fp32, int8 per channel, int4 in blocks of 32) — accuracy, size and decode speed of each.
Multiple-choice families are scored by the mean or the sum of the answer's log-probabilities, whichever
gets more validation items right for that run (task_eval.pick_length_norm); both test accuracies are kept.
Prints one table and writes benchmarks/results/instruct.json (every run's per-family accuracy, interval,
baseline, seconds).

    python benchmarks/instruct.py             # full profile sizes, 2 seeds (about 25 minutes on 2 cores)
    python benchmarks/instruct.py --quick     # the smoke model, 10 steps, 15 test items: checks it runs
"""
from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from common import results_dir

from slm_lab import chat, instruct, sft, task_eval
from slm_lab.evaluate import fixed_batches
from slm_lab.latency import time_decode
from slm_lab.lora import ATTENTION, LLAMA_MLP, inject_lora, measure_optimizer_state
from slm_lab.prune import prune_structured
from slm_lab.quantize import model_bytes, quantize_model
from slm_lab.train import pretrained

HEAL_STEPS = 200        # SFT steps after pruning (module 06 heals the same way, with more steps)


def record_onnx(model, tok, record, fp32_bytes: int) -> None:
    """The tuned model exported to ONNX Runtime (module 08), as fp32, int8 per channel and int4 blocks of 32."""
    try:
        from slm_lab.onnx_export import export_onnx
        from slm_lab.onnx_quantize import quantize_int4, quantize_int8
        from slm_lab.onnx_slm import OnnxAsSLM
    except ImportError as exc:                   # the deploy extra is not installed
        print(f"ONNX rows skipped: {exc}")
        return
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = export_onnx(model, Path(tmp) / "model.onnx")
        files = {"fp32": fp32, "int8": quantize_int8(fp32, Path(tmp) / "model.int8.onnx", per_channel=True),
                 "int4": quantize_int4(fp32, Path(tmp) / "model.int4.onnx")}
        for name, path in files.items():
            record(f"SFT masked, ONNX Runtime {name}", OnnxAsSLM(path, threads=os.cpu_count() or 1), tok, 0.0,
                   speed=True, bytes=path.stat().st_size, fp32_bytes=fp32_bytes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=sft.SFT.max_steps)
    args = parser.parse_args()
    if args.quick:
        os.environ["SLM_LAB_PROFILE"] = "smoke"
        args.seeds, args.steps = 1, 10
    torch.set_num_threads(os.cpu_count() or 1)
    base = pretrained("small", progress=False)
    vocab = set(base.tokenizer.chars)
    split = instruct.build(vocab)
    test = split.test[:15] if args.quick else split.test
    val = split.val[:15] if args.quick else split.val     # loss curves and the scoring rule; accuracy is on `test`
    base_rates = instruct.baselines(split)

    def fresh(random_init: bool = False):
        model = copy.deepcopy(base.model)
        if random_init:
            torch.manual_seed(1234)
            model = type(model)(model.cfg)
        return chat.add_chat_tokens(model, base.tokenizer)

    runs: list[dict] = []

    def record(name: str, model, tok, seconds: float, speed: bool = False, **extra) -> dict:
        t0 = time.perf_counter()
        norm = task_eval.pick_length_norm(model, tok, val)
        res = task_eval.evaluate_tasks(model, tok, test, base_rates, norm)
        other = task_eval.evaluate_tasks(model, tok, [e for e in test if e.choices], base_rates,
                                         {f: not v for f, v in norm.items()})
        row = {"run": name, "train_seconds": seconds, "eval_seconds": time.perf_counter() - t0,
               "length_norm": norm, "tasks": {k: r.to_dict() for k, r in res.items()},
               "other_scoring": {k: r.to_dict() for k, r in other.items()}, **extra}
        if speed:                                # tokens/s: 32 greedy steps after a 64-token prompt, median of 5
            row["decode_tokens_per_s"] = time_decode(model, 64, 32, repeats=1 if args.quick else 5)
        runs.append(row)
        accs = "  ".join(f"{k} {r.accuracy:.1%} [{r.interval[0]:.1%}, {r.interval[1]:.1%}]" for k, r in res.items())
        size = (f"  {row['bytes'] / 1e6:.2f} MB, {row['decode_tokens_per_s']:,.0f} tok/s" if speed else "")
        print(f"{name:<44} {accs}{size}", flush=True)
        return row

    model, tok = fresh()
    record("untuned (zero-shot)", model, tok, 0.0)
    tuned = None
    for mask in (True, False):
        for seed in range(args.seeds):
            model, tok = fresh()
            t0 = time.perf_counter()
            hist = sft.finetune(model, tok, split.train, val, mask=mask, seed=seed, max_steps=args.steps, progress=False)
            record(f"SFT {'masked' if mask else 'unmasked'} seed {seed}", model, tok, time.perf_counter() - t0,
                   mask=mask, seed=seed, val_loss=hist.val_loss[-1])
            if mask and seed == 0:
                tuned = (model, tok)
    for seed in range(args.seeds):
        model, tok = fresh(random_init=True)
        t0 = time.perf_counter()
        sft.finetune(model, tok, split.train, val, seed=seed, max_steps=args.steps, progress=False)
        record(f"random init, SFT seed {seed}", model, tok, time.perf_counter() - t0, seed=seed)

    # LoRA against full fine-tuning: trainable parameters and the optimizer state they need
    model, tok = fresh()
    full_trainable = sum(p.numel() for p in model.parameters())
    full_state = measure_optimizer_state(model, sft.SFT)
    inject_lora(model, ATTENTION + LLAMA_MLP, r=8, alpha=16.0)
    model.tok_emb.weight.requires_grad_(True)           # the new chat tokens' rows must learn
    lora_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    lora_state = measure_optimizer_state(model, sft.SFT)
    t0 = time.perf_counter()
    sft.finetune(model, tok, split.train, val, seed=0, max_steps=args.steps, progress=False)
    record("LoRA r=8, SFT seed 0", model, tok, time.perf_counter() - t0, trainable=lora_trainable,
           full_trainable=full_trainable, optimizer_state_bytes=lora_state, full_optimizer_state_bytes=full_state)

    # the first recipe, for comparison with sft.SFT
    model, tok = fresh()
    t0 = time.perf_counter()
    sft.finetune(model, tok, split.train, val, seed=0, max_steps=max(1, args.steps // 2), lr=2e-3, min_lr=2e-4,
                 progress=False)
    record("SFT masked, first recipe", model, tok, time.perf_counter() - t0, steps=max(1, args.steps // 2), lr=2e-3)

    # compression keeps the skill?
    model, tok = tuned
    fp32_bytes = model_bytes(model)
    record("SFT masked, fp32", model, tok, 0.0, speed=True, bytes=fp32_bytes, fp32_bytes=fp32_bytes)
    for bits in (8, 4):
        q = quantize_model(copy.deepcopy(model), bits=bits, group_size=None if bits == 8 else 32)
        record(f"SFT masked, int{bits}", q, tok, 0.0, speed=True, bytes=model_bytes(q), fp32_bytes=fp32_bytes)
    ids, _ = chat.sft_stream(tok, [(e.prompt, e.answer) for e in split.train[:256]], model.cfg.block_size)
    calib = fixed_batches(ids, model.cfg.block_size, 8, 4)
    d_ff = model.cfg.d_ff
    pruned = prune_structured(model, calib, d_ff=d_ff // 2)
    record("SFT masked, MLP pruned to half", pruned, tok, 0.0, speed=True, bytes=model_bytes(pruned),
           fp32_bytes=fp32_bytes, d_ff=d_ff // 2)
    t0 = time.perf_counter()
    heal = max(1, args.steps // 50) if args.quick else HEAL_STEPS
    sft.finetune(pruned, tok, split.train, val, seed=0, max_steps=heal, progress=False)
    record(f"SFT masked, MLP pruned to half, healed {heal} steps", pruned, tok, time.perf_counter() - t0, speed=True,
           bytes=model_bytes(pruned), fp32_bytes=fp32_bytes, d_ff=d_ff // 2)
    record_onnx(model, tok, record, fp32_bytes)

    def mean_acc(prefix: str, family: str) -> float:
        vals = [r["tasks"][family]["accuracy"] for r in runs if r["run"].startswith(prefix)]
        return statistics.mean(vals) if vals else float("nan")

    summary = {f: {"masked": mean_acc("SFT masked seed", f), "unmasked": mean_acc("SFT unmasked", f),
                   "random_init": mean_acc("random init", f), "untuned": mean_acc("untuned", f),
                   "baseline": base_rates[f]} for f in instruct.FAMILIES}
    print("\nmean accuracy over seeds:")
    for f, s in summary.items():
        print(f"{f:<12} " + "  ".join(f"{k} {v:.1%}" for k, v in s.items()))
    out = results_dir(args.quick) / "instruct.json"
    out.write_text(json.dumps({"what": "task accuracy of module 02's small model after instruction tuning",
                               "date": datetime.date.today().isoformat(), "machine": platform.machine(),
                               "cpus": os.cpu_count(), "quick": args.quick, "steps": args.steps,
                               "seeds": args.seeds, "n_train": len(split.train), "n_test": len(test),
                               "baselines": base_rates, "runs": runs, "summary": summary}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
