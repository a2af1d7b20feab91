"""The IsoFLOP sweep of module 12: 3 compute budgets × 5 sizes of the course model on 2 CPU cores, and its fits.

    python benchmarks/scaling.py              # the full sweep (about 15 minutes on 2 cores) → results/scaling.json
    python benchmarks/scaling.py --budget 0   # rerun one budget only (its 5 runs), printed, not stored
    python benchmarks/scaling.py --quick      # budgets 10x smaller: checks the script, numbers mean nothing

Every run trains from scratch with the course's train() (cosine to its own last step) and is scored on the
same fixed validation batches (`slm_lab.scaling`). The fits: per budget, the parabola in ln N and its
optimum; N_opt ∝ C^a and D_opt ∝ C^b with bootstrap intervals over runs; L(N, D) = E + A/N^α + B/D^β on
all runs, and again on the two smaller budgets to predict the largest one (how far it extrapolates).
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time

import torch
from common import COMMITTED, results_dir

from slm_lab import scaling
from slm_lab.errors import SLMLabError
from slm_lab.train import prepare_char_data

PACKAGE_COPY = scaling.STORED_SWEEP


def fits(runs: list[scaling.Run]) -> dict:
    """Every fit the lecture shows; a fit that cannot be made (no valley) is recorded as its one line."""
    out: dict = {}
    try:
        out["optimal"] = scaling.optimal_points(runs)
        out["exponents"] = scaling.exponents(runs)
        out["bootstrap"] = scaling.bootstrap_exponents(runs)
    except SLMLabError as exc:
        out["error"] = str(exc)
    out["surface"] = scaling.fit_loss_surface(runs)
    budgets = sorted({r.budget for r in runs})
    if len(budgets) >= 3:
        held = budgets[-1]
        part = scaling.fit_loss_surface([r for r in runs if r.budget != held])
        test = [r for r in runs if r.budget == held]
        pred = scaling.loss_surface([r.params for r in test], [r.tokens for r in test], part)
        out["extrapolation"] = {"fit_budgets": budgets[:-1], "held_out_budget": held, "surface": part,
                                "points": [{"params": r.params, "val_loss": r.val_loss, "predicted": float(p)}
                                           for r, p in zip(test, pred, strict=True)]}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="budgets 10x smaller (a check that the script runs)")
    ap.add_argument("--budget", type=int, default=None, help="rerun only this budget index (not stored)")
    ap.add_argument("--budgets", type=float, nargs="+", default=None,
                    help="other budgets in 6ND FLOPs (e.g. 1e12 3e12 9e12 2.7e13), one per shape window")
    args = ap.parse_args()
    torch.set_num_threads(2)
    budgets = tuple(c / 10 for c in scaling.BUDGETS) if args.quick else tuple(args.budgets or scaling.BUDGETS)
    if len(budgets) > len(scaling.SHAPES) - scaling.SIZES_PER_BUDGET + 1:
        raise SystemExit(f"{len(budgets)} budgets need more shapes than slm_lab.scaling.SHAPES has; give at most "
                         f"{len(scaling.SHAPES) - scaling.SIZES_PER_BUDGET + 1}, or add shapes.")
    if args.budget is not None and not 0 <= args.budget < len(budgets):
        raise SystemExit(f"--budget {args.budget} is not a budget index; use 0 to {len(budgets) - 1}.")
    tok, train_ids, val_ids = prepare_char_data("shakespeare")
    t0 = time.perf_counter()
    try:
        runs = scaling.run_sweep(train_ids, val_ids, tok.vocab_size, budgets,
                                 None if args.budget is None else [args.budget], progress=True)
    except SLMLabError as exc:            # e.g. a budget too small for a model: one line, not a traceback
        raise SystemExit(f"scaling.py: {exc}") from None
    wall = time.perf_counter() - t0
    print(f"{'budget':>9} {'shape':>12} {'params':>9} {'tokens':>11} {'D/N':>6} {'val loss':>9} {'s':>6}")
    for r in runs:
        print(f"{r.budget:>9.2g} {str(r.shape):>12} {r.params:>9,} {r.tokens:>11,} {r.tokens / r.params:>6.0f} "
              f"{r.val_loss:>9.4f} {r.seconds:>6.1f}")
    print(f"sweep: {len(runs)} runs in {wall:.0f} s")
    if args.budget is not None:
        return
    result = {"machine": {"platform": platform.platform(), "python": sys.version.split()[0],
                          "torch": torch.__version__, "threads": torch.get_num_threads()},
              "quick": args.quick, "budgets": list(budgets), "shapes": [list(s) for s in scaling.SHAPES],
              "sizes_per_budget": scaling.SIZES_PER_BUDGET, "batch": scaling.BATCH, "block": scaling.BLOCK,
              "lr": scaling.LR, "wall_s": wall, "runs": scaling.runs_to_json(runs), "fits": fits(runs)}
    f = result["fits"]
    if "exponents" in f:
        e, bs = f["exponents"], f["bootstrap"]
        for o in f["optimal"]:
            print(f"C = {o['budget']:.2g}: N_opt = {o['n_opt']:,.0f}, D_opt = {o['d_opt']:,.0f} "
                  f"({o['d_opt'] / o['n_opt']:.0f} tokens per parameter)")
        print(f"N_opt ∝ C^{e['a']:.2f} (95% bootstrap {bs['a'][0]:.2f}–{bs['a'][1]:.2f}), D_opt ∝ C^{e['b']:.2f} "
              f"({bs['b'][0]:.2f}–{bs['b'][1]:.2f}); Chinchilla: a = {scaling.CHINCHILLA_EXPONENTS['a']}, "
              f"b = {scaling.CHINCHILLA_EXPONENTS['b']}")
    else:
        print(f"no power law: {f['error']}")
    s = f["surface"]
    print(f"L(N, D) = {s['E']:.3f} + {s['A']:.3g}/N^{s['alpha']:.3f} + {s['B']:.3g}/D^{s['beta']:.3f}")
    if "extrapolation" in f:
        errs = [abs(p["predicted"] - p["val_loss"]) for p in f["extrapolation"]["points"]]
        print(f"fitted on the two smaller budgets, the surface predicts the largest budget's losses within "
              f"{max(errs):.3f} nats (mean {sum(errs) / len(errs):.3f})")
    path = results_dir(args.quick) / "scaling.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")
    if path.parent.resolve() == COMMITTED.resolve():   # the copy notebook 12 replays where there is no repository
        PACKAGE_COPY.write_text(path.read_text())
        print(f"wrote {PACKAGE_COPY}")


if __name__ == "__main__":
    main()
