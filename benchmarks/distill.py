"""Distillation: the course's student trained alone vs distilled from module 02's `small` model.

Seeds 0, 1, 2 (each sets the student's initial weights and its batch order); the same fixed validation
batches for every model. Four ways to train the student:
  alone                  cross-entropy only, N steps
  distilled              T = 2, alpha = 0.5, the teacher run on every batch, N steps
  distilled, top-8 cache the same from the teacher's cached top-8 probabilities (one cache per seed)
  alone, equal compute   r·N steps, r = 1 + 2·N_teacher / (6·N_student): the FLOPs of a distilled run
Reports mean ± std over seeds of the final val loss, paired (same seed) differences, and the measured
training seconds (median over seeds; the online teacher's forward passes included, the cache's not).
With --lr-sweep it first trains the student alone at several learning rates (seeds 3 and 4, not among
the comparison seeds): the course's recipe uses the best, so the baseline is not handicapped.
Prints a table and writes benchmarks/results/distill.json.

    python benchmarks/distill.py --lr-sweep   # the full comparison, 800 steps (~20 minutes on 2 cores)
    python benchmarks/distill.py --quick      # 10 steps, the first seed, 4 val batches: checks the script runs
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
from dataclasses import asdict, replace

import torch
from common import results_dir

from slm_lab.distill import ALPHA, TEMPERATURE, cache_teacher, distill, student_config, student_train_config
from slm_lab.evaluate import fixed_batches, mean_loss
from slm_lab.model import SLM
from slm_lab.settings import seed_everything
from slm_lab.train import prepare_char_data, pretrained


def train_student(s_cfg, teacher, data: torch.Tensor, cfg, alpha: float, val_batches, cache=None) -> dict:
    """One student from scratch (weights and batches seeded by cfg.seed), distilled with `alpha` (0: alone)
    → its final and best validation loss, training seconds and validation curve."""
    seed_everything(cfg.seed)
    h = distill(SLM(s_cfg), teacher, data, None, cfg, TEMPERATURE, alpha, teacher_cache=cache,
                val_batches=val_batches, progress=False)
    return {"val_loss": h.val_loss[-1], "best_val_loss": min(h.val_loss), "seconds": h.train_time[-1],
            "val_steps": h.val_steps, "val_curve": h.val_loss, "val_time": h.val_time}


def mean_std(xs: list[float]) -> dict:
    return {"mean": statistics.mean(xs), "std": statistics.stdev(xs) if len(xs) > 1 else 0.0, "runs": xs}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="10 steps, the first seed, 4 validation batches; JSON outside benchmarks/results")
    ap.add_argument("--steps", type=int, default=800, help="student steps N (notebook 04 uses 400)")
    ap.add_argument("--lr-sweep", action="store_true", help="first train alone at several learning rates (seeds 3, 4)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--k", type=int, default=8, help="teacher logits kept per position in the cache")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    tok, train_ids, val_ids = prepare_char_data("shakespeare")
    teacher_ckpt = pretrained("small", progress=False)
    teacher = teacher_ckpt.model.eval()
    s_cfg = student_config(tok.vocab_size)
    base = student_train_config()
    steps = args.steps
    if args.quick:
        steps, args.seeds = 10, args.seeds[:1]
    base = replace(base, max_steps=steps, eval_interval=max(1, steps // 10))
    val_batches = fixed_batches(val_ids, s_cfg.block_size, 16, 4 if args.quick else 40, seed=0)
    n_t, n_s = teacher.num_parameters(), SLM(s_cfg).num_parameters()
    r = 1 + 2 * n_t / (6 * n_s)
    long_steps = int(round(r * steps))

    def run(seed: int, alpha: float, n: int, cache=None, **overrides):
        cfg = replace(base, seed=seed, max_steps=n, eval_interval=max(1, n // 10), **overrides)
        return train_student(s_cfg, teacher, train_ids, cfg, alpha, val_batches, cache)

    lr_sweep = {}
    if args.lr_sweep:
        for lr in (3e-3, 5e-3, 1e-2, 2e-2):
            lr_sweep[lr] = mean_std([run(seed, 0.0, steps, lr=lr, min_lr=lr / 10)["val_loss"] for seed in (3, 4)])
            print(f"alone, seeds 3 and 4, lr {lr:g} → {lr / 10:g}: val loss {lr_sweep[lr]['mean']:.4f} "
                  f"({', '.join(f'{v:.4f}' for v in lr_sweep[lr]['runs'])})", flush=True)
        best = min(lr_sweep, key=lambda lr: lr_sweep[lr]["mean"])
        print(f"best learning rate {best:g}; the course's recipe uses {base.lr:g}")

    runs = {"alone": [], "distilled": [], f"distilled, top-{args.k} cache": [], "alone, equal compute": []}
    cache_seconds = []
    for seed in args.seeds:
        runs["alone"].append(run(seed, 0.0, steps))
        runs["distilled"].append(run(seed, ALPHA, steps))
        cache = cache_teacher(teacher, train_ids, replace(base, seed=seed), k=args.k, temperature=TEMPERATURE,
                              block_size=s_cfg.block_size, progress=False)
        cache_seconds.append(cache.seconds)
        runs[f"distilled, top-{args.k} cache"].append(run(seed, ALPHA, steps, cache))
        runs["alone, equal compute"].append(run(seed, 0.0, long_steps))
        print(f"seed {seed}: " + ", ".join(f"{k} {v[-1]['val_loss']:.4f}" for k, v in runs.items()), flush=True)

    teacher_loss = mean_loss(teacher, val_batches)
    summary = {name: {"val_loss": mean_std([x["val_loss"] for x in rs]),
                      "seconds_median": statistics.median(x["seconds"] for x in rs)} for name, rs in runs.items()}
    paired = {name: mean_std([a["val_loss"] - x["val_loss"] for a, x in zip(runs["alone"], rs)])
              for name, rs in runs.items() if name != "alone"}
    print(f"\nteacher: {n_t:,} parameters, val loss {teacher_loss:.4f}; student: {n_s:,} parameters "
          f"({n_t / n_s:.1f}× fewer); N = {steps} steps, equal compute = {long_steps} steps (r = {r:.2f})")
    print(f"{'':<26} {'val loss (mean ± std)':>22} {'alone − this (paired)':>24} {'seconds':>8}")
    for name, s in summary.items():
        v = s["val_loss"]
        p = paired.get(name)
        diff = f"{p['mean']:+.4f} ± {p['std']:.4f}" if p else "—"
        print(f"{name:<26} {v['mean']:>13.4f} ± {v['std']:.4f} {diff:>24} {s['seconds_median']:>8.1f}")
    print(f"top-{args.k} cache: built in {statistics.median(cache_seconds):.1f} s per seed (median)")

    out = {
        "benchmark": "distill", "quick": args.quick, "threads": args.threads, "seeds": args.seeds,
        "machine": {"python": sys.version.split()[0], "torch": torch.__version__, "platform": platform.platform(),
                    "processor": platform.processor()},
        "teacher": {"path": str(teacher_ckpt.path.name), "parameters": n_t, "val_loss": teacher_loss,
                    "config": teacher.cfg.to_dict()},
        "student": {"parameters": n_s, "config": s_cfg.to_dict()},
        "train_config": asdict(base), "temperature": TEMPERATURE, "alpha": ALPHA, "top_k": args.k,
        "steps": steps, "equal_compute_steps": long_steps, "flop_ratio": r,
        "cache_seconds": cache_seconds, "lr_sweep_alone_seeds_3_4": {str(k): v for k, v in lr_sweep.items()},
        "summary": summary, "alone_minus_this": paired, "runs": runs,
    }
    path = results_dir(args.quick) / "distill.json"
    path.write_text(json.dumps(out, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
