"""Speculative decoding, measured: acceptance rate, tokens per target call and wall-clock speed-up against the
target alone, over the draft length k and the temperature, next to the theory; and where the cross-over lies.

Target: the `medium` preset (slm_lab.speculative.TARGET_PRESET, 4 blocks of width 384). Drafts of one shape
(module 04's student, 2 blocks of width 64): the student distilled from that target, and the same student
trained alone (same recipe and steps, no teacher: alpha = 0). For comparison, module 02's `small` model as the
target with the student distilled from it (greedy only): a draft that costs a fifth of its target does not pay.
For each (draft, k, temperature), every prompt (fixed windows of held-out text) is extended by --new tokens
with slm_lab.speculative and by the target alone (`SLM.generate`), interleaved so both see the same machine;
the speed-up is the ratio of their median times in this run. Costs for the theory: one decode step of
each model and the target's (k+1)-token verification step, medians over repeats (latency.time_decode's way).
The break-even cost ratio says how much cheaper than the target a draft must be, at the measured acceptance,
for a 1.5× speed-up — the size of target this pair would need.
Exactness: every greedy run is compared token for token with the target alone; and, sampling at T = 1 with the
distilled draft (k = 4), a chi-square test of the first generated token over --seeds seeds against the
target's exact next-token distribution, for the course's rule and for a plausible wrong one (the replacement
drawn from p instead of the residual), with each one's total-variation distance from p.
Prints one table and writes benchmarks/results/speculative.json.

    python benchmarks/speculative.py           # full: 2 drafts × k ∈ {1, 2, 4, 6} × T ∈ {0, 1} (+ small), 8 prompts
    python benchmarks/speculative.py --quick   # smoke models, k ∈ {2}, 2 prompts: checks it runs
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import time

import torch
from common import results_dir

from slm_lab import speculative
from slm_lab.distill import ALPHA, distill, distilled_student, student_config, student_train_config
from slm_lab.evaluate import fixed_batches
from slm_lab.latency import step_seconds
from slm_lab.model import SLM
from slm_lab.settings import seed_everything
from slm_lab.train import prepare_char_data, pretrained


@torch.inference_mode()
def sampling_exactness(target: SLM, draft: SLM, prompt: torch.Tensor, seeds: int, k: int = 4) -> dict:
    """The first token sampled (T = 1) after prompt by speculative decoding, over `seeds` seeds, against the
    target's exact distribution: chi-square p-value and total-variation distance, for each rule."""
    p = speculative.probs(target(prompt).logits[0, -1], 1.0)
    out = {"prompt_len": prompt.shape[1], "seeds": seeds, "k": k, "temperature": 1.0}
    for name, rule in (("accept_draft", speculative.accept_draft),
                       ("replacement from p (wrong)", speculative.replacement_from_p)):
        counts = torch.zeros_like(p)
        for s in range(seeds):
            ids, _ = speculative.speculative_generate(target, draft, prompt, k + 1, k=k, temperature=1.0, seed=s,
                                                      accept=rule)
            counts[ids[0, prompt.shape[1]]] += 1
        pval, stat, dof = speculative.chi_square_test(counts, p)
        out[name] = {"p_value": pval, "chi_square": stat, "dof": dof,
                     "tv_from_target": 0.5 * float((counts / seeds - p).abs().sum())}
        print(f"exactness, {name:<27}: first token over {seeds} seeds, χ² = {stat:.1f} ({dof} dof), p = {pval:.3g}, "
              f"TV from the target's distribution {out[name]['tv_from_target']:.3f}", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--new", type=int, default=48, help="tokens generated per prompt")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (decode at batch 1: 1 is fastest here)")
    parser.add_argument("--seeds", type=int, default=2000, help="sampled runs per rule in the exactness test")
    args = parser.parse_args()
    ks, temps = [1, 2, 4, 6], [0.0, 1.0]
    if args.quick:
        os.environ["SLM_LAB_PROFILE"] = "smoke"
        ks, temps, args.prompts, args.new, args.seeds = [2], [0.0, 1.0], 2, 12, 50
    torch.set_num_threads(args.threads)
    target = pretrained(speculative.TARGET_PRESET, progress=False).model.eval()
    distilled = distilled_student(speculative.TARGET_PRESET, progress=False).model.eval()
    tok, train_ids, val_ids = prepare_char_data("shakespeare")
    cfg = student_train_config()
    seed_everything(cfg.seed)
    alone = SLM(student_config(tok.vocab_size))
    t0 = time.perf_counter()
    distill(alone, None, train_ids, val_ids, cfg, alpha=0.0, progress=False)      # the same student, no teacher
    alone_seconds = time.perf_counter() - t0
    alone.eval()
    # (target name, target, draft name, draft): module 11's pair, the same target with the student trained
    # alone, and module 02's `small` model with its own distilled student — a target too cheap to pay.
    small = pretrained("small", progress=False).model.eval()
    pairs = [(speculative.TARGET_PRESET, target, "distilled", distilled),
             (speculative.TARGET_PRESET, target, "trained alone", alone),
             ("small", small, "distilled", distilled_student("small", progress=False).model.eval())]
    prompt_len = 32
    prompts = [x[:1, :prompt_len] for x, _ in fixed_batches(val_ids, prompt_len, 1, args.prompts, seed=1)]

    costs = {}
    for t_name, t_model, d_name, d_model in pairs:
        costs.setdefault(f"{t_name}_step_s", step_seconds(t_model, 1))
        for k in ks:
            costs.setdefault(f"{t_name}_verify_{k}_s", step_seconds(t_model, k + 1))
        costs[f"{d_name} for {t_name}_step_s"] = step_seconds(d_model, 1)

    rows = []
    print(f"{'target':<7} {'draft':<14} {'k':>2} {'T':>4} {'accept':>7} {'α':>6} {'tok/call':>9} {'speed-up':>9} "
          f"{'theory':>7}  target alone / speculative ms")
    for t_name, target_model, name, draft in pairs:
        cost_ratio = costs[f"{name} for {t_name}_step_s"] / costs[f"{t_name}_step_s"]
        for temp in (temps if t_name == speculative.TARGET_PRESET else [0.0]):
            for k in ks:
                spec_t, base_t, accepted, proposed, rejected, calls, produced = [], [], 0, 0, 0, 0, 0
                identical = 0
                for i, p in enumerate(prompts):
                    t0 = time.perf_counter()
                    alone_out = target_model.generate(p, args.new, temperature=temp, seed=i)
                    base_t.append(time.perf_counter() - t0)
                    t0 = time.perf_counter()
                    out, stats = speculative.speculative_generate(target_model, draft, p, args.new, k=k,
                                                                  temperature=temp, seed=i)
                    spec_t.append(time.perf_counter() - t0)
                    identical += bool(torch.equal(out, alone_out))
                    accepted, proposed = accepted + stats.accepted, proposed + stats.proposed
                    rejected += stats.rejected
                    calls, produced = calls + stats.target_calls, produced + out.shape[1] - p.shape[1]
                rate = accepted / max(proposed, 1)                    # share of the drafts kept
                alpha = accepted / max(accepted + rejected, 1)        # per judged token: the theory's α
                verify_ratio = costs[f"{t_name}_verify_{k}_s"] / costs[f"{t_name}_step_s"]
                theory = speculative.expected_speedup(alpha, k, cost_ratio, verify_ratio)
                speedup = statistics.median(base_t) / statistics.median(spec_t)
                row = {"target": t_name, "draft": name, "k": k, "temperature": temp, "acceptance_rate": rate,
                       "alpha": alpha,
                       "tokens_per_target_call": produced / calls, "speedup": speedup, "theory_speedup": theory,
                       "target_alone_s": statistics.median(base_t), "speculative_s": statistics.median(spec_t),
                       "cost_ratio": cost_ratio, "verify_ratio": verify_ratio,
                       "break_even_cost_ratio_1_5x": speculative.break_even_cost_ratio(alpha, k, verify_ratio, 1.5)}
                if temp == 0:                          # greedy: the target's own tokens, prompt by prompt
                    row["greedy_identical"] = f"{identical}/{len(prompts)}"
                rows.append(row)
                print(f"{t_name:<7} {name:<14} {k:>2} {temp:>4.1f} {rate:>7.1%} {alpha:>6.2f} "
                      f"{row['tokens_per_target_call']:>9.2f} "
                      f"{speedup:>8.2f}× {theory:>6.2f}×  "
                      f"{row['target_alone_s'] * 1e3:.1f} / {row['speculative_s'] * 1e3:.1f}",
                      flush=True)
    exactness = sampling_exactness(target, distilled, prompts[0], args.seeds)
    best = max(rows, key=lambda r: r["speedup"])
    print(f"\nbest: target {best['target']}, {best['draft']} draft, k={best['k']}, T={best['temperature']}: "
          f"{best['speedup']:.2f}× "
          f"(theory {best['theory_speedup']:.2f}×); draft/target step cost {best['cost_ratio']:.2f}; "
          f"for 1.5× at this acceptance the draft must cost ≤ {best['break_even_cost_ratio_1_5x']:.2f} of a target step")
    out = results_dir(args.quick) / "speculative.json"
    out.write_text(json.dumps({"what": "speculative decoding: the medium preset as the target, module 04's student "
                                       "(distilled from it, or trained alone) as the draft; module 02's small "
                                       "model with its own distilled student for comparison",
                               "target_preset": speculative.TARGET_PRESET,
                               "date": datetime.date.today().isoformat(), "machine": platform.machine(),
                               "cpus": os.cpu_count(), "threads": args.threads, "quick": args.quick,
                               "new_tokens": args.new, "prompts": args.prompts, "prompt_len": prompt_len,
                               "alpha_distilled": ALPHA, "alone_train_seconds": alone_seconds, "costs": costs,
                               "rows": rows, "best": best, "exactness": exactness}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
