"""Scaling fits against known answers: a parabola with a known vertex, an exact power law, IsoFLOP runs drawn
from a known L(N, D) whose optimum is known in closed form, Chinchilla's surface refitted from its own points;
FLOP counts against torch's FlopCounterMode; a budget too small for a model is one line."""
import dataclasses
import math

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from slm_lab import scaling
from slm_lab.errors import SLMLabError
from slm_lab.model import SLM
from slm_lab.sizing import count_parameters

# Hoffmann et al. (2022), eq. 10: their fitted surface, used here as a known truth
CHINCHILLA = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}


def test_the_valley_vertex_is_found_in_log_space():
    n = np.array([1e4, 3e4, 1e5, 3e5, 1e6])
    loss = 0.1 * (np.log(n) - math.log(7e4)) ** 2 + 2.0
    n_opt, coef = scaling.fit_valley(n, loss)
    assert n_opt == pytest.approx(7e4, rel=1e-9) and coef[0] == pytest.approx(0.1)
    linear = np.polyfit(n, loss, 2)                                   # the same points fitted against N itself
    assert abs(-linear[1] / (2 * linear[0]) - 7e4) > 0.5 * 7e4          # lands far from the optimum
    with pytest.raises(SLMLabError, match="do not bracket"):
        scaling.fit_valley(n, -loss)
    with pytest.raises(SLMLabError, match="three different sizes"):
        scaling.fit_valley([1e4, 1e4, 2e4], [1.0, 1.1, 1.2])


def test_power_law_exponent_and_coefficient():
    c = np.array([1e12, 3e12, 9e12, 2.7e13])
    e, k = scaling.fit_power_law(c, 3.0 * c ** 0.5)
    assert e == pytest.approx(0.5) and k == pytest.approx(3.0)


def runs_from_surface(p, budgets, shapes_n, noise=0.0, seed=0):
    rng = np.random.default_rng(seed)
    runs = []
    for c in budgets:
        for n in shapes_n:
            d = c / (6 * n)
            loss = float(scaling.loss_surface(n, d, p)) * (1 + noise * rng.standard_normal())
            runs.append(scaling.Run(c, (0, 0, 0), int(n), int(d), 1, c, c, loss, 0.0))
    return runs


def test_isoflop_exponents_recover_a_known_surface():
    budgets = [1e18, 1e19, 1e20, 1e21]
    runs = []
    for c in budgets:                         # five sizes around each budget's true optimum, a factor 2 apart
        n_true, _ = scaling.surface_optimum(CHINCHILLA, c)
        runs += runs_from_surface(CHINCHILLA, [c], n_true * np.array([0.25, 0.5, 1, 2, 4]))
    a_true = CHINCHILLA["beta"] / (CHINCHILLA["alpha"] + CHINCHILLA["beta"])          # 0.452
    e = scaling.exponents(runs)
    assert e["a"] == pytest.approx(a_true, abs=0.01) and e["b"] == pytest.approx(1 - a_true, abs=0.01)
    for o in scaling.optimal_points(runs):
        assert o["n_opt"] == pytest.approx(scaling.surface_optimum(CHINCHILLA, o["budget"])[0], rel=0.05)
    boot = scaling.bootstrap_exponents(runs, n_boot=200)
    assert boot["a"][0] <= e["a"] <= boot["a"][1] and boot["skipped"] < 200


def test_surface_optimum_is_the_minimum_on_the_budget():
    c = 5.76e23                                                         # Chinchilla's own budget
    n, d = scaling.surface_optimum(CHINCHILLA, c)
    grid = np.logspace(9, 12, 4001)
    best = grid[np.argmin(scaling.loss_surface(grid, c / (6 * grid), CHINCHILLA))]
    assert n == pytest.approx(best, rel=0.01) and 6 * n * d == pytest.approx(c)


def test_loss_surface_fit_recovers_its_parameters():
    truth = {"E": 1.2, "A": 30.0, "B": 200.0, "alpha": 0.4, "beta": 0.35}
    runs = runs_from_surface(truth, [1e12, 3e12, 9e12], [3e4, 6e4, 1.2e5, 2.4e5, 4.8e5])
    fit = scaling.fit_loss_surface(runs)
    pred = scaling.loss_surface([r.params for r in runs], [r.tokens for r in runs], fit)
    assert np.max(np.abs(pred / np.array([r.val_loss for r in runs]) - 1)) < 1e-3
    assert fit["E"] == pytest.approx(truth["E"], rel=0.05) and fit["alpha"] == pytest.approx(truth["alpha"], abs=0.05)


@pytest.mark.parametrize("shape", [scaling.SHAPES[0], scaling.SHAPES[-1]])
def test_flop_counts_match_torchs_counter(shape):
    """With attention written out, FlopCounterMode sees every matmul: it equals the attention-aware count;
    6·N·D (all parameters) is the count without attention. On the CPU the fused attention kernel is not
    counted by FlopCounterMode at all, so the counter alone would miss it."""
    cfg = dataclasses.replace(scaling.shape_config(shape, 84), attn_impl="explicit")
    model = SLM(cfg)
    x, y = torch.randint(0, 84, (4, cfg.block_size)), torch.randint(0, 84, (4, cfg.block_size))
    with FlopCounterMode(display=False) as counter:
        model(x, y).loss.backward()
    counted, tokens = counter.get_total_flops(), x.numel()
    assert scaling.train_flops(cfg, tokens, attention=True) == pytest.approx(counted, rel=1e-6)
    attention = counter.get_flop_counts()["Global"][torch.ops.aten.bmm]
    assert scaling.train_flops(cfg, tokens) == pytest.approx(counted - attention, rel=0.01)


def test_steps_for_budget_and_a_budget_too_small():
    cfg = scaling.shape_config(scaling.SHAPES[0], 84)
    steps = scaling.steps_for_budget(cfg, 1e12)
    assert steps == int(1e12 / (6 * count_parameters(cfg).total) // (scaling.BATCH * scaling.BLOCK))
    with pytest.raises(SLMLabError, match="buys only"):
        scaling.steps_for_budget(scaling.shape_config(scaling.SHAPES[-1], 84), 1e10)
    cfg_run = scaling.run_config(400)
    assert cfg_run.max_steps == 400 and (cfg_run.decay_steps or cfg_run.max_steps) == 400   # cosine ends with the run


def test_runs_survive_json():
    runs = runs_from_surface(CHINCHILLA, [1e18], [1e8, 2e8, 4e8])
    assert scaling.runs_from_json(scaling.runs_to_json(runs)) == runs


def test_a_sweep_with_a_budget_too_small_stops_before_training_anything(monkeypatch):
    trained = []
    monkeypatch.setattr(scaling, "train_point", lambda *a, **k: trained.append(a))
    data = torch.randint(0, 84, (20_000,))
    with pytest.raises(SLMLabError, match="buys only"):          # the first shape could train, the second not
        scaling.run_sweep(data, data, 84, budgets=(1e10,), progress=False)
    assert trained == []


def test_the_packaged_sweep_is_the_benchmarks_stored_one():
    """Notebook 12 replays slm_lab/results/scaling.json where the repository is not there (Colab): it must be
    benchmarks/results/scaling.json byte for byte (benchmarks/scaling.py writes both)."""
    from slm_lab.course.notebooks import ROOT

    assert scaling.STORED_SWEEP.read_bytes() == (ROOT / "benchmarks" / "results" / "scaling.json").read_bytes()
