"""Data-parallel training on this machine: 1 process against 2 (torchrun, gloo), and the equivalence numbers.

    python benchmarks/ddp.py            # tiny and small presets, 60 steps each → results/ddp.json
    python benchmarks/ddp.py --quick    # 6 steps of tiny: checks the script, numbers mean nothing

Each run is `slm-lab train` in a fresh process (the 2-process one through `--nproc 2`), so imports and start-up
are paid alike. Throughput is the tokens of all ranks over the training time rank 0 records (validation
excluded). Two processes on 2 cores get one core each, where one process uses both for its matmuls: on this
machine data parallelism can only add the all-reduce. The equivalence: the 2-process loss curve and weights
against one process accumulating 2 micro-batches (the same sequences, `slm_lab.distributed`).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from common import results_dir

from slm_lab.checkpoint import load_checkpoint, load_trainer_state
from slm_lab.train import train_preset


def run(preset: str, steps: int, nproc: int, out: Path, profile: str) -> dict:
    cmd = [sys.executable, "-m", "slm_lab.cli", "train", "--preset", preset, "--steps", str(steps), "--out", str(out)]
    if nproc > 1:
        cmd += ["--nproc", str(nproc)]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "SLM_LAB_PROFILE": profile})
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-1500:]}")
    h = load_trainer_state(out)["history"]
    return {"nproc": nproc, "steps": steps, "tokens_per_step": h["tokens_per_step"],
            "train_s": h["train_time"][-1], "tokens_per_s": h["tokens_per_step"] * steps / h["train_time"][-1],
            "train_loss": h["train_loss"], "val_loss": h["val_loss"][-1]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    profile = "smoke" if args.quick else "full"
    os.environ["SLM_LAB_PROFILE"] = profile
    presets, steps = (("tiny",), 6) if args.quick else (("tiny", "small"), 60)
    rows = []
    print(f"{'preset':<7} {'processes':>9} {'tokens/step':>11} {'tokens/s':>9} {'× 1 process':>11}")
    for preset in presets:
        with tempfile.TemporaryDirectory() as tmp:
            one = run(preset, steps, 1, Path(tmp) / "one", profile)
            two = run(preset, steps, 2, Path(tmp) / "two", profile)
            ddp_model = load_checkpoint(Path(tmp) / "two").model
        acc_model, _, acc = train_preset(preset, progress=False, device="cpu", max_steps=steps, grad_accum=2)
        loss_diff = max(abs(a - b) for a, b in zip(two["train_loss"], acc.train_loss, strict=True))
        weight_diff = max(float((a - b).abs().max()) for a, b in
                          zip(ddp_model.state_dict().values(), acc_model.state_dict().values(), strict=True))
        for r in (one, two):
            r.update(preset=preset, speedup=r["tokens_per_s"] / one["tokens_per_s"])
            print(f"{preset:<7} {r['nproc']:>9} {r['tokens_per_step']:>11,} {r['tokens_per_s']:>9,.0f} "
                  f"{r['speedup']:>10.2f}×")
        two["equivalence"] = {"max_abs_loss_diff_vs_accumulation": loss_diff, "max_abs_weight_diff": weight_diff,
                              "loss_curve_accumulation": acc.train_loss}
        print(f"        2 processes vs 1 process accumulating 2 micro-batches: loss curves differ by at most "
              f"{loss_diff:.2e}, weights by {weight_diff:.2e}")
        rows += [one, two]
    result = {"machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
                          "python": sys.version.split()[0], "cuda": torch.cuda.is_available()},
              "quick": args.quick, "backend": "nccl" if torch.cuda.is_available() else "gloo", "rows": rows}
    path = results_dir(args.quick) / "ddp.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
