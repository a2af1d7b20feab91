"""Distillation where it pays: a student that sees only a sliver of the corpus, taught by a teacher that saw it all.

benchmarks/distill.py finds that at equal compute the student trained alone matches the distilled one: with
the whole corpus to learn from, the teacher's extra forward passes are better spent on more student steps.
Here the student's training data is cut to the first --fraction of the training text (the teacher,
module 02's `small` model, was trained on all of it), so more steps only repeat the same few characters.
For each fraction and seed (0, 1, 2; each sets the student's initial weights and batch order), the course's
student is trained three ways, evaluated on the same fixed validation batches:
  alone                  cross-entropy on the sliver, N steps
  distilled              T and alpha of the course (slm_lab.distill), the teacher run on every batch, N steps
  alone, equal compute   r·N steps, r = 1 + 2·N_teacher / (6·N_student): the FLOPs of the distilled run;
                         reported at its best validation point (early stopping, chosen on validation: a
                         generous baseline)
Reports mean ± std over seeds and the paired difference (alone − distilled, same seed) with a 95% t-interval.
Prints a table and writes benchmarks/results/distill_data.json.

    python benchmarks/distill_data.py             # fractions 0.02 and 0.1, 400 steps, 3 seeds (~12 min on 2 cores)
    python benchmarks/distill_data.py --quick     # 10 steps, one seed: checks the script runs
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
from dataclasses import asdict, replace

import torch
from common import results_dir
from distill import mean_std, train_student

from slm_lab.distill import ALPHA, TEMPERATURE, student_config, student_train_config
from slm_lab.evaluate import fixed_batches, mean_loss
from slm_lab.model import SLM
from slm_lab.train import prepare_char_data, pretrained

T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571}     # Student's t, two-sided 95%, by degrees of freedom


def interval(diffs: list[float]) -> tuple[float, float]:
    """95% t-interval of the mean of paired differences (nan for a single seed)."""
    if len(diffs) < 2:
        return float("nan"), float("nan")
    m, half = statistics.mean(diffs), T_975[len(diffs) - 1] * statistics.stdev(diffs) / math.sqrt(len(diffs))
    return m - half, m + half


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="10 steps, one seed; JSON outside benchmarks/results")
    ap.add_argument("--steps", type=int, default=400, help="student steps N")
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.02, 0.1])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    steps = 10 if args.quick else args.steps
    if args.quick:
        args.seeds, args.fractions = args.seeds[:1], args.fractions[:1]

    tok, train_ids, val_ids = prepare_char_data("shakespeare")
    teacher = pretrained("small", progress=False).model.eval()
    s_cfg = student_config(tok.vocab_size)
    base = replace(student_train_config(), max_steps=steps)
    val_batches = fixed_batches(val_ids, s_cfg.block_size, 16, 4 if args.quick else 40, seed=0)
    n_t, n_s = teacher.num_parameters(), SLM(s_cfg).num_parameters()
    r = 1 + 2 * n_t / (6 * n_s)
    long_steps = int(round(r * steps))

    def run(data: torch.Tensor, seed: int, alpha: float, n: int) -> dict:
        cfg = replace(base, seed=seed, max_steps=n, eval_interval=max(1, n // 20))
        return train_student(s_cfg, teacher if alpha else None, data, cfg, alpha, val_batches)

    results = {}
    for fraction in args.fractions:
        data = train_ids[: max(s_cfg.block_size + 2, int(len(train_ids) * fraction))]
        runs = {"alone": [], "distilled": [], "alone, equal compute": []}
        for seed in args.seeds:
            runs["alone"].append(run(data, seed, 0.0, steps))
            runs["distilled"].append(run(data, seed, ALPHA, steps))
            runs["alone, equal compute"].append(run(data, seed, 0.0, long_steps))
            print(f"fraction {fraction:g}, seed {seed}: alone {runs['alone'][-1]['val_loss']:.4f}, distilled "
                  f"{runs['distilled'][-1]['val_loss']:.4f}, alone × {r:.2f} steps: final "
                  f"{runs['alone, equal compute'][-1]['val_loss']:.4f}, best "
                  f"{runs['alone, equal compute'][-1]['best_val_loss']:.4f}", flush=True)
        # the equal-compute baseline at its best validation point; the others at their end
        score = {"alone": "val_loss", "distilled": "val_loss", "alone, equal compute": "best_val_loss"}
        summary = {name: mean_std([x[score[name]] for x in rs]) for name, rs in runs.items()}
        paired = {}
        for name in ("alone", "alone, equal compute"):
            diffs = [a[score[name]] - d["val_loss"] for a, d in zip(runs[name], runs["distilled"], strict=True)]
            lo, hi = interval(diffs)
            paired[name] = {**mean_std(diffs), "ci95": [lo, hi], "distillation_wins": lo > 0}
        results[str(fraction)] = {"fraction": fraction, "train_chars": len(data), "summary": summary,
                                  "minus_distilled": paired, "runs": runs,
                                  "seconds_median": {n: statistics.median(x["seconds"] for x in rs)
                                                     for n, rs in runs.items()}}

    teacher_loss = mean_loss(teacher, val_batches)
    print(f"\nteacher (all {len(train_ids):,} training characters): val loss {teacher_loss:.4f}; student "
          f"{n_s:,} parameters; N = {steps} steps, equal compute = {long_steps} steps (r = {r:.2f}); "
          f"{len(args.seeds)} seeds")
    print(f"{'fraction':>8} {'chars':>9} {'student':<22} {'val loss (mean ± std)':>22} "
          f"{'this − distilled, 95% CI':>30} {'seconds':>8}")
    for res in results.values():
        for name, s in res["summary"].items():
            p = res["minus_distilled"].get(name)
            diff = f"{p['mean']:+.4f} [{p['ci95'][0]:+.4f}, {p['ci95'][1]:+.4f}]" if p else "—"
            print(f"{res['fraction']:>8g} {res['train_chars']:>9,} {name:<22} {s['mean']:>13.4f} ± {s['std']:.4f} "
                  f"{diff:>30} {res['seconds_median'][name]:>8.1f}")
    for res in results.values():
        w = res["minus_distilled"]["alone, equal compute"]
        verdict = "distillation wins" if w["distillation_wins"] else (
            "alone wins" if w["ci95"][1] < 0 else "no difference shown")
        print(f"fraction {res['fraction']:g}, at equal compute: alone − distilled = {w['mean']:+.4f} nats "
              f"(95% CI {w['ci95'][0]:+.4f} to {w['ci95'][1]:+.4f}): {verdict}")
    out = {"benchmark": "distill_data", "quick": args.quick, "threads": args.threads, "seeds": args.seeds,
           "teacher_val_loss": teacher_loss, "teacher_train_chars": len(train_ids), "student_parameters": n_s,
           "train_config": asdict(base), "temperature": TEMPERATURE, "alpha": ALPHA, "steps": steps,
           "equal_compute_steps": long_steps, "flop_ratio": r, "results": results}
    path = results_dir(args.quick) / "distill_data.json"
    path.write_text(json.dumps(out, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
