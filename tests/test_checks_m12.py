"""Lab 12's checks accept the reference answers, reject the unsolved stub and name planted mistakes."""
import math

import numpy as np
import torch
from checking import rejects, todo

from slm_lab.checks import m12


def optimal_size(params, losses, log=np.log, unlog=np.exp, vertex=lambda c: -c[1] / (2 * c[0])):
    return float(unlog(vertex(np.polyfit(log(np.asarray(params)), np.asarray(losses), 2))))


def test_optimal_size_check():
    m12.check_optimal_size(optimal_size)
    m12.check_optimal_size(lambda n, l: optimal_size(n, l, log=np.log10, unlog=lambda v: 10 ** v))   # any base, undone
    rejects(m12.check_optimal_size, todo, match="not done yet")
    rejects(m12.check_optimal_size, lambda n, l: optimal_size(n, l, log=np.asarray, unlog=float),
            match="fitted against N itself")
    rejects(m12.check_optimal_size, lambda n, l: float(n[int(np.argmin(l))]), match="the best size you were given")
    rejects(m12.check_optimal_size, lambda n, l: optimal_size(n, l, unlog=float), match="this is ln N")
    rejects(m12.check_optimal_size, lambda n, l: optimal_size(n, l, log=np.log10), match="log10 but the vertex")
    rejects(m12.check_optimal_size, lambda n, l: optimal_size(n, l, vertex=lambda c: -c[1] / (2 * c[2])),
            match="highest power first")
    rejects(m12.check_optimal_size, lambda n, l: np.array([optimal_size(n, l)]), match="should return a Python number")
    rejects(m12.check_optimal_size, lambda n, l: 2 * optimal_size(n, l), match="expected")


def all_reduce_mean(grads):
    names = grads[0].keys()
    mean = {k: torch.stack([g[k] for g in grads]).mean(0) for k in names}
    return [{k: mean[k].clone() for k in names} for _ in grads]


def test_all_reduce_mean_check():
    m12.check_all_reduce_mean(all_reduce_mean)
    rejects(m12.check_all_reduce_mean, todo, match="not done yet")
    rejects(m12.check_all_reduce_mean, lambda g: [{k: v * len(g) for k, v in r.items()} for r in all_reduce_mean(g)],
            match="summed over the ranks but not divided")
    rejects(m12.check_all_reduce_mean,
            lambda g: [{k: v * len(g) / len(r) for k, v in r.items()} for r in all_reduce_mean(g)],
            match="divided by the number of tensors")
    rejects(m12.check_all_reduce_mean, lambda g: [all_reduce_mean(g)[0], *g[1:]], match="only rank 0 holds")
    rejects(m12.check_all_reduce_mean, lambda g: g, match="each rank kept its own gradient")
    rejects(m12.check_all_reduce_mean, lambda g: [{k: v.mean().expand_as(v) for k, v in r.items()} for r in g],
            match="averaged inside each tensor")
    rejects(m12.check_all_reduce_mean, lambda g: all_reduce_mean(g)[:1], match="one dict per rank")


def micro_batches(rank, world, accum):
    return list(range(rank * accum, (rank + 1) * accum))


def test_micro_batches_check():
    m12.check_micro_batches(micro_batches)
    m12.check_micro_batches(lambda r, w, a: [r + i * w for i in range(a)])            # interleaved: also a partition
    rejects(m12.check_micro_batches, todo, match="not done yet")
    rejects(m12.check_micro_batches, lambda r, w, a: list(range(a)), match="every rank draws the same")
    rejects(m12.check_micro_batches, lambda r, w, a: list(range(r, r + a)), match="overlapping")
    rejects(m12.check_micro_batches, lambda r, w, a: [i + 1 for i in micro_batches(r, w, a)], match="not 0 …")
    rejects(m12.check_micro_batches, lambda r, w, a: list(range(r * w, (r + 1) * w)), match="micro-batches; each draws")


def zero_bytes(psi, n, stage, master=4):
    weights, grads, state = 2 * psi, 2 * psi, (master + 8) * psi
    return weights / (n if stage >= 3 else 1) + grads / (n if stage >= 2 else 1) + state / (n if stage >= 1 else 1)


def test_zero_bytes_check():
    m12.check_zero_bytes(zero_bytes)
    rejects(m12.check_zero_bytes, todo, match="not done yet")
    rejects(m12.check_zero_bytes, lambda p, n, s: 16 * p / n if s >= 1 else 16 * p, match="stage 1 shards only")
    rejects(m12.check_zero_bytes, lambda p, n, s: zero_bytes(p, n, 1 if s == 2 else s), match="stage 2 shards")
    rejects(m12.check_zero_bytes, lambda p, n, s: zero_bytes(p, n, 2 if s == 3 else s), match="stage 3 shards")
    rejects(m12.check_zero_bytes, lambda p, n, s: zero_bytes(p, n, s, master=0), match="not 12")
    rejects(m12.check_zero_bytes, lambda p, n, s: 16 * p / n if s == 0 else zero_bytes(p, n, s),
            match="shards nothing")
    rejects(m12.check_zero_bytes, lambda p, n, s: math.floor(zero_bytes(p, n, s) / 1e9), match="expected")
