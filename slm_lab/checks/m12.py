"""Checks for lab 12 — scaling: the loss-optimal size of an IsoFLOP valley, averaging gradients over ranks,
which micro-batches each rank draws, and the memory each device holds under ZeRO.

References: `slm_lab.scaling.fit_valley`, `slm_lab.distributed.rank_micro_batches` and
`slm_lab.train_memory.zero_bytes_per_device`; the all-reduce's reference is the mean over the ranks' tensors,
which is its definition. A wrong answer is compared with what each usual mistake returns on the same inputs,
and the mistake it matches is named.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .. import distributed, scaling, train_memory
from . import call, fail, forbids, passed
from .remote import Remote


def _number(out, what: str) -> float:
    if isinstance(out, Remote) or not isinstance(out, (int, float)) or isinstance(out, bool):
        got = out.type_name if isinstance(out, Remote) else type(out).__name__
        fail(f"{what} should return a Python number, got {got}; wrap it in float(...).")
    return float(out)


def _close(a: float, b: float, rel: float = 1e-6) -> bool:
    return math.isfinite(a) and abs(a - b) <= rel * abs(b)


# --------------------------------------------------------------------------- the valley's optimum ----
def _valley_mistakes(n: np.ndarray, loss: np.ndarray) -> dict[str, float]:
    """What each usual mistake returns on (n, loss)."""
    ln = np.log(n)
    c = np.polyfit(ln, loss, 2)
    lin = np.polyfit(n, loss, 2)
    c10 = np.polyfit(np.log10(n), loss, 2)
    return {
        "the parabola is fitted against N itself — fit it against ln N (a valley in log space is not one in N)":
            float(-lin[1] / (2 * lin[0])),
        "this is the best size you were given, not the parabola's vertex — fit the parabola and take its minimum":
            float(n[int(np.argmin(loss))]),
        "this is ln N at the vertex — exponentiate it to get a number of parameters": float(-c[1] / (2 * c[0])),
        "the fit is in log10 but the vertex is turned back with exp — undo the logarithm you took":
            float(math.exp(-c10[1] / (2 * c10[0]))),
        "np.polyfit lists the highest power first — the vertex is at −c[1] / (2·c[0])":
            float(math.exp(-c[1] / (2 * c[2]))),
    }


@forbids("slm_lab.scaling.fit_valley", "slm_lab.scaling.optimal_points", "slm_lab.scaling.exponents")
def check_optimal_size(optimal_size) -> None:
    """optimal_size(params, losses) → the N at the vertex of the parabola fitted to loss against ln N."""
    rng = np.random.default_rng(12)
    cases = [("an exact valley", np.array([2e4, 5e4, 1e5, 2e5, 5e5]), None),
             ("a noisy valley", np.array([3e4, 4.7e4, 8.4e4, 1.66e5, 2.45e5]), 0.01),
             ("a lopsided valley", np.array([1e5, 1.5e5, 4e5, 9e5, 3e6]), 0.005)]
    for name, n, noise in cases:
        loss = 0.08 * (np.log(n) - math.log(n[1] * 1.3)) ** 2 + 1.9
        if noise:
            loss = loss + noise * rng.standard_normal(len(n))
        ref, _ = scaling.fit_valley(n, loss)
        what = f"optimal_size on {name}"
        out = _number(call(optimal_size, [float(v) for v in n], [float(v) for v in loss], what=what), what)
        if _close(out, ref):
            continue
        for message, value in _valley_mistakes(n, loss).items():
            if _close(out, value, 1e-4):
                fail(f"{what}: {message}.")
        fail(f"{what} returned {out:,.6g}, expected {ref:,.6g} (the vertex of loss = c0·(ln N)² + c1·ln N + c2).")
    passed("loss-optimal size", "parabola in ln N, three valleys")


# ------------------------------------------------------------------------------- all-reduce mean ----
@forbids("slm_lab.distributed.average_gradients")
def check_all_reduce_mean(all_reduce_mean) -> None:
    """all_reduce_mean(grads) → what every rank holds after the all-reduce: grads is one {name: tensor} per
    rank; each rank must end with every tensor's mean over the ranks."""
    g = torch.Generator().manual_seed(12)
    ranks, names = 3, ("attn.weight", "mlp.weight")
    grads = [{k: torch.randn(4, 5, generator=g) for k in names} for _ in range(ranks)]
    sent = [{k: t.clone() for k, t in r.items()} for r in grads]
    mean = {k: torch.stack([r[k] for r in grads]).mean(0) for k in names}
    what = "all_reduce_mean"
    out = call(all_reduce_mean, sent, what=what)
    if not isinstance(out, (list, tuple)) or len(out) != ranks:
        fail(f"{what} should return a list with one dict per rank ({ranks}), got "
             f"{len(out) if isinstance(out, (list, tuple)) else type(out).__name__}.")
    mistakes = {
        "summed over the ranks but not divided — the all-reduce sums, then divide by the number of ranks":
            lambda k, r: mean[k] * ranks,
        f"divided by the number of tensors ({len(names)}), not the number of ranks ({ranks})":
            lambda k, r: mean[k] * ranks / len(names),
        "each rank kept its own gradient — the ranks must end with the same averaged gradient":
            lambda k, r: grads[r][k],
        "only rank 0 holds the average — every rank must step with it, or the models drift apart":
            lambda k, r: mean[k] if r == 0 else grads[r][k],
        "averaged inside each tensor (one number) instead of across the ranks, element by element":
            lambda k, r: grads[r][k].mean().expand_as(grads[r][k]),
    }
    for r, got in enumerate(out):
        if not isinstance(got, dict) or set(got) != set(names):
            fail(f"{what}: rank {r}'s entry should be a dict with the keys {sorted(names)}.")
        for k in names:
            t = got[k]
            if not isinstance(t, torch.Tensor) or t.shape != mean[k].shape:
                fail(f"{what}: rank {r}'s {k} should be a tensor of shape {tuple(mean[k].shape)}.")
    if all(torch.allclose(got[k], mean[k], atol=1e-6) for got in out for k in names):
        passed("all-reduce mean", f"{ranks} ranks, every rank the same mean")
        return
    for message, wrong in mistakes.items():
        if all(torch.allclose(got[k].double(), wrong(k, r).double(), atol=1e-6)
               for r, got in enumerate(out) for k in names):
            fail(f"{what}: {message}.")
    fail(f"{what}: the tensors are not the mean over the ranks (each element: the sum of the ranks' values / {ranks}).")


# ---------------------------------------------------------------------------------- whose batches ----
@forbids("slm_lab.distributed.rank_micro_batches")
def check_micro_batches(micro_batches) -> None:
    """micro_batches(rank, world_size, grad_accum) → the micro-batch indices this rank draws each step: the N
    ranks together draw 0 … N·A − 1, each exactly once, A per rank."""
    what = "micro_batches"
    for world, accum in ((2, 1), (4, 3), (3, 2)):
        mine = []
        for r in range(world):
            got = call(micro_batches, r, world, accum, what=f"{what}({r}, {world}, {accum})")
            if isinstance(got, Remote) or not isinstance(got, (list, tuple, range)):
                fail(f"{what} should return a list of indices, got {getattr(got, 'type_name', type(got).__name__)}.")
            mine.append([int(i) for i in got])
        where = f"{what} with {world} ranks and grad_accum {accum}"
        flat = [i for ids in mine for i in ids]
        if sorted(flat) == list(range(world * accum)) and all(len(ids) == accum for ids in mine):
            continue
        if all(ids == mine[0] for ids in mine):
            fail(f"{where}: every rank draws the same micro-batches {mine[0]} — {world} ranks then do the work of "
                 "one; give each rank its own.")
        if any(len(ids) != accum for ids in mine):
            fail(f"{where}: a rank draws {min(map(len, mine))}–{max(map(len, mine))} micro-batches; each draws "
                 f"grad_accum = {accum}.")
        if len(set(flat)) < len(flat):
            fail(f"{where}: ranks draw overlapping micro-batches ({sorted(flat)}) — rank r's block starts at r·{accum}.")
        fail(f"{where}: together the ranks draw {sorted(flat)}, not 0 … {world * accum - 1} — one process with "
             f"grad_accum {world * accum} would draw exactly those.")
    ref = distributed.rank_micro_batches(1, 3)
    passed("micro-batches per rank", f"disjoint, complete (rank 1 of any world with grad_accum 3: {ref})")


# ------------------------------------------------------------------------------------ ZeRO memory ----
def _zero_mistakes(psi: float, n: int, stage: int) -> dict[str, float]:
    full = 16 * psi
    return {
        "stage 1 shards only the optimizer state (fp32 master weights and moments: 12 bytes per parameter) — "
        "the bf16 weights and gradients stay whole": full / n if stage == 1 else math.nan,
        "stage 2 shards the gradients too": (4 * psi + 12 * psi / n) if stage == 2 else math.nan,
        "stage 3 shards the weights as well: every state is divided by the devices":
            (2 * psi + 14 * psi / n) if stage == 3 else math.nan,
        "mixed-precision AdamW keeps an fp32 master copy of the weights: 2 + 2 + 4 + 8 = 16 bytes per parameter, "
        "not 12": train_memory.zero_bytes_per_device(psi, n, stage) - (4 * psi if stage == 0 else 4 * psi / n),
        "plain data parallelism (stage 0) shards nothing: every device holds all 16 bytes per parameter":
            full / n if stage == 0 else math.nan,
    }


@forbids("slm_lab.train_memory.zero_bytes_per_device")
def check_zero_bytes(zero_bytes) -> None:
    """zero_bytes(n_params, n_devices, stage) → bytes of weights, gradients and optimizer state per device,
    mixed-precision AdamW, ZeRO stage 0–3."""
    for psi, n in ((7.5e9, 64), (1e9, 8)):
        for stage in range(4):
            what = f"zero_bytes({psi:.3g}, {n}, stage={stage})"
            ref = train_memory.zero_bytes_per_device(psi, n, stage)
            out = _number(call(zero_bytes, psi, n, stage, what=what), what)
            if _close(out, ref, 1e-6):
                continue
            for message, value in _zero_mistakes(psi, n, stage).items():
                if _close(out, value, 1e-6):
                    fail(f"{what}: {message}.")
            fail(f"{what} returned {out / 1e9:.4g} GB, expected {ref / 1e9:.4g} GB.")
    passed("ZeRO memory per device", "stages 0–3, ZeRO's 7.5B-on-64-GPUs figure")


CHECKS = {"12.optimal_size": check_optimal_size, "12.all_reduce_mean": check_all_reduce_mean,
          "12.micro_batches": check_micro_batches, "12.zero_bytes": check_zero_bytes}
