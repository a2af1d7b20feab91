"""Scaling laws measured on a laptop: an IsoFLOP sweep of the course model and Chinchilla's fits on it.

An IsoFLOP sweep fixes a compute budget C (FLOPs, counted as module 03 does: C = 6·N·D with N the
parameters and D the training tokens) and trains several model sizes on exactly that budget, each with its
own cosine schedule ending at its last step. Validation loss against log N is a valley; the parabola
through it gives the loss-optimal size N_opt(C), and over budgets the power laws N_opt ∝ C^a and
D_opt = C / (6·N_opt) ∝ C^b (Hoffmann et al., 2022, "approach 2"; they found a ≈ b ≈ 0.5). A bootstrap
over the runs gives intervals. The same runs also fit L(N, D) = E + A/N^α + B/D^β ("approach 3"), which
can be asked about models the sweep never trained.

`run_sweep` trains the grid (benchmarks/scaling.py runs it and stores the results); everything else here
only fits numbers, so a notebook replays a stored sweep in seconds.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import SLMLabError
from .evaluate import fixed_batches, mean_loss
from .model import SLM, SLMConfig
from .sizing import count_parameters, forward_flops_per_token, training_flops
from .train import TrainConfig, train

# Model shapes (n_layer, d_model, n_head), deeper as they widen, parameters growing about 1.7x per step up
# to module 02's `small` (4 x 128). Each budget trains SIZES_PER_BUDGET consecutive shapes, one shape further
# up per budget: a 3x budget moves the optimum about √3 ≈ 1.7x (a pilot put the 3e12 optimum near 1e5).
SHAPES: tuple[tuple[int, int, int], ...] = ((2, 32, 4), (2, 40, 4), (2, 56, 4), (3, 64, 4), (3, 80, 4),
                                            (4, 96, 4), (4, 128, 4))
BUDGETS: tuple[float, ...] = (1e12, 3e12, 9e12)           # 6·N·D FLOPs, 3x apart: about 14 minutes on 2 cores
SIZES_PER_BUDGET = 5
BLOCK, BATCH = 128, 16                                     # every run: 16 sequences of 128 characters a step
LR, MIN_LR_RATIO, WARMUP_FRACTION = 3e-3, 0.1, 0.05
VAL_BATCHES, VAL_BATCH_SIZE, VAL_SEED = 16, 32, 0          # the fixed validation set every run is scored on
CHINCHILLA_EXPONENTS = {"a": 0.49, "b": 0.51}              # Hoffmann et al. (2022), Table 2, approach 2
# benchmarks/scaling.py's stored sweep, shipped with the package so notebook 12 replays it outside the repository
# (Colab); the benchmark writes it beside benchmarks/results/scaling.json and a test holds the two equal.
STORED_SWEEP = Path(__file__).parent / "results" / "scaling.json"


def shape_config(shape: tuple[int, int, int], vocab_size: int) -> SLMConfig:
    n_layer, d_model, n_head = shape
    return SLMConfig(vocab_size=vocab_size, family="llama", n_layer=n_layer, n_head=n_head, d_model=d_model,
                     block_size=BLOCK)


def budget_shapes(budget_index: int) -> tuple[tuple[int, int, int], ...]:
    """The SIZES_PER_BUDGET shapes the budget with this index trains."""
    return SHAPES[budget_index: budget_index + SIZES_PER_BUDGET]


def train_flops(cfg: SLMConfig, tokens: float, attention: bool = False) -> float:
    """Training FLOPs for `tokens` tokens: 6·N·D (N = all parameters, as module 03 counts), or with
    attention: 3 × (2 per matmul weight + attention over the full block) per token (`sizing`)."""
    if attention:
        return 3.0 * forward_flops_per_token(cfg, cfg.block_size) * tokens
    return training_flops(count_parameters(cfg).total, tokens)


def steps_for_budget(cfg: SLMConfig, budget: float, batch: int = BATCH) -> int:
    """Optimizer steps of `batch` × BLOCK tokens that spend `budget` 6·N·D FLOPs (one clear line if < 20)."""
    tokens = budget / (6.0 * count_parameters(cfg).total)
    steps = int(tokens // (batch * cfg.block_size))
    if steps < 20:
        raise SLMLabError(f"a budget of {budget:.2g} FLOPs buys only {steps} steps of a "
                          f"{count_parameters(cfg).total:,}-parameter model; raise the budget or pick smaller sizes.")
    return steps


def run_config(steps: int, seed: int = 0) -> TrainConfig:
    """The recipe of every sweep run: warmup, then cosine to MIN_LR_RATIO·LR exactly at the run's last step."""
    return TrainConfig(max_steps=steps, batch_size=BATCH, block_size=BLOCK, lr=LR, min_lr=LR * MIN_LR_RATIO,
                       warmup_steps=max(1, round(WARMUP_FRACTION * steps)), eval_interval=steps, eval_batches=1,
                       seed=seed, save_interval=0)


@dataclass
class Run:
    """One trained point of the sweep."""
    budget: float
    shape: tuple[int, int, int]
    params: int
    tokens: int
    steps: int
    flops_6nd: float
    flops_attention: float
    val_loss: float
    seconds: float


def train_point(shape, budget: float, train_ids: torch.Tensor, val_batches: list, vocab_size: int,
                seed: int = 0, progress: bool = False) -> Run:
    """Train one shape on one budget from scratch and score it on the fixed validation batches."""
    cfg = shape_config(shape, vocab_size)
    steps = steps_for_budget(cfg, budget)
    torch.manual_seed(seed)
    model = SLM(cfg)
    t0 = time.perf_counter()
    train(model, train_ids, None, run_config(steps, seed), val_batches=val_batches[:1], progress=progress,
          device="cpu")
    tokens = steps * BATCH * BLOCK
    return Run(budget, tuple(shape), count_parameters(cfg).total, tokens, steps, train_flops(cfg, tokens),
               train_flops(cfg, tokens, attention=True), mean_loss(model, val_batches), time.perf_counter() - t0)


def validation_batches(val_ids: torch.Tensor) -> list:
    return fixed_batches(val_ids, BLOCK, VAL_BATCH_SIZE, VAL_BATCHES, seed=VAL_SEED)


def run_sweep(train_ids: torch.Tensor, val_ids: torch.Tensor, vocab_size: int, budgets=BUDGETS,
              budget_indices=None, progress: bool = True) -> list[Run]:
    """Train every (budget, shape) point; budget_indices picks which of `budgets` (default all)."""
    val = validation_batches(val_ids)
    indices = range(len(budgets)) if budget_indices is None else budget_indices
    jobs = [(budgets[i], s) for i in indices for s in budget_shapes(i)]
    for c, s in jobs:                     # every budget checked before the first run trains
        steps_for_budget(shape_config(s, vocab_size), c)
    if progress:
        from tqdm.auto import tqdm
        jobs = tqdm(jobs, desc="IsoFLOP sweep")
    return [train_point(s, c, train_ids, val, vocab_size) for c, s in jobs]


# ------------------------------------------------------------------ fits ----
def fit_valley(params, losses) -> tuple[float, np.ndarray]:
    """The parabola L = c0·(ln N)² + c1·ln N + c2 through one budget's runs → (N at its vertex, coefficients).
    One line when it opens downwards (the sizes do not bracket the optimum)."""
    x, y = np.log(np.asarray(params, float)), np.asarray(losses, float)
    if len(np.unique(x)) < 3:
        raise SLMLabError("a parabola needs at least three different sizes; train more of them.")
    coef = np.polyfit(x, y, 2)
    if coef[0] <= 0:
        raise SLMLabError("the losses do not form a valley in log N (the parabola opens downwards): the sizes do "
                          "not bracket the optimum; add smaller and larger ones.")
    return float(math.exp(-coef[1] / (2 * coef[0]))), coef


def fit_power_law(x, y) -> tuple[float, float]:
    """y = k · x^e fitted as a line in log-log space → (e, k)."""
    e, log_k = np.polyfit(np.log(np.asarray(x, float)), np.log(np.asarray(y, float)), 1)
    return float(e), float(math.exp(log_k))


def optimal_points(runs: list[Run]) -> list[dict[str, float]]:
    """Per budget: the valley's N_opt, D_opt = C / (6 N_opt) and the parabola's loss at N_opt."""
    out = []
    for c in sorted({r.budget for r in runs}):
        pts = [r for r in runs if r.budget == c]
        n_opt, coef = fit_valley([r.params for r in pts], [r.val_loss for r in pts])
        out.append({"budget": c, "n_opt": n_opt, "d_opt": c / (6 * n_opt),
                    "loss_at_opt": float(np.polyval(coef, math.log(n_opt)))})
    return out


def exponents(runs: list[Run]) -> dict[str, float]:
    """a and b of N_opt ∝ C^a, D_opt ∝ C^b over the budgets, with the laws' coefficients."""
    opt = optimal_points(runs)
    c = [o["budget"] for o in opt]
    a, ka = fit_power_law(c, [o["n_opt"] for o in opt])
    b, kb = fit_power_law(c, [o["d_opt"] for o in opt])
    return {"a": a, "b": b, "k_n": ka, "k_d": kb}


def bootstrap_exponents(runs: list[Run], n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> dict[str, Any]:
    """Resample each budget's runs with replacement, refit; percentile intervals of a and b. Resamples
    that leave a budget without a valley (too few distinct sizes, a parabola opening down) are skipped
    and counted."""
    rng = np.random.default_rng(seed)
    by_budget = [[r for r in runs if r.budget == c] for c in sorted({r.budget for r in runs})]
    samples: dict[str, list[float]] = {"a": [], "b": []}
    skipped = 0
    for _ in range(n_boot):
        picked = [pts[i] for pts in by_budget for i in rng.integers(0, len(pts), len(pts))]
        try:
            e = exponents(picked)
        except SLMLabError:
            skipped += 1
            continue
        samples["a"].append(e["a"])
        samples["b"].append(e["b"])
    lo, hi = 100 * (1 - level) / 2, 100 * (1 + level) / 2
    return {k: [float(np.percentile(v, lo)), float(np.percentile(v, hi))] for k, v in samples.items()} | {
        "level": level, "n_boot": n_boot, "skipped": skipped}


def loss_surface(n, d, p: dict[str, float]):
    """L(N, D) = E + A / N^alpha + B / D^beta."""
    return p["E"] + p["A"] / np.asarray(n, float) ** p["alpha"] + p["B"] / np.asarray(d, float) ** p["beta"]


def fit_loss_surface(runs: list[Run], delta: float = 1e-3, steps: int = 200) -> dict[str, float]:
    """Chinchilla's approach 3: minimise the Huber loss (delta) between log L(N, D) and log loss, with
    L = exp(e) + exp(a - alpha·ln N) + exp(b - beta·ln D), by L-BFGS from a grid of starts; the best fit."""
    ln_n = torch.tensor([math.log(r.params) for r in runs], dtype=torch.float64)
    ln_d = torch.tensor([math.log(r.tokens) for r in runs], dtype=torch.float64)
    ln_l = torch.tensor([math.log(r.val_loss) for r in runs], dtype=torch.float64)
    best: tuple[float, list[float]] | None = None
    for e0 in (-1.0, 0.0, 0.5):
        for alpha0 in (0.2, 0.5, 1.0):
            for beta0 in (0.2, 0.5, 1.0):
                theta = torch.tensor([e0, 2.0, 8.0, alpha0, beta0], dtype=torch.float64, requires_grad=True)
                opt = torch.optim.LBFGS([theta], max_iter=steps, line_search_fn="strong_wolfe")

                def objective(theta=theta, opt=opt):
                    opt.zero_grad()
                    e, a, b, alpha, beta = theta
                    pred = torch.logsumexp(torch.stack([e.expand_as(ln_n), a - alpha * ln_n, b - beta * ln_d]), 0)
                    loss = torch.nn.functional.huber_loss(pred, ln_l, delta=delta, reduction="sum")
                    loss.backward()
                    return loss

                opt.step(objective)
                with torch.enable_grad():
                    value = float(objective().detach())
                if math.isfinite(value) and (best is None or value < best[0]):
                    best = (value, theta.detach().tolist())
    assert best is not None
    e, a, b, alpha, beta = best[1]
    return {"E": math.exp(e), "A": math.exp(a), "B": math.exp(b), "alpha": alpha, "beta": beta, "huber": best[0]}


def surface_optimum(p: dict[str, float], budget: float) -> tuple[float, float]:
    """(N, D) minimising L(N, D) on 6·N·D = budget, in closed form (Hoffmann et al., eq. 4)."""
    g = (p["alpha"] * p["A"] / (p["beta"] * p["B"])) ** (1 / (p["alpha"] + p["beta"]))
    n = g * (budget / 6) ** (p["beta"] / (p["alpha"] + p["beta"]))
    return n, budget / (6 * n)


def runs_to_json(runs: list[Run]) -> list[dict]:
    return [asdict(r) for r in runs]


def runs_from_json(rows: list[dict]) -> list[Run]:
    return [Run(**{**r, "shape": tuple(r["shape"])}) for r in rows]
