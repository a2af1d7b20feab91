"""Checks for lab 06 — pruning: a magnitude mask at an exact sparsity, and removing MLP neurons.

The mask check uses weights with many equal magnitudes (ties at the threshold) and sparsities whose
count a floor or a quantile gets wrong; the neuron check compares the shrunken MLP with the same MLP
shrunk by `slm_lab.prune.remove_neurons`. The reference is `slm_lab.prune`.
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn

from .. import prune as package
from . import CheckFailed, Forbidden, call, expect_close, expect_tensor, fail, forbids, passed


# -------------------------------------------------------------- magnitude mask ----
def _check_one_mask(magnitude_mask, w: torch.Tensor, sparsity: float, what: str) -> None:
    original = w.clone()
    # How many to prune: as many as the package's mask prunes. Which ones is not unique when magnitudes tie
    # at the threshold, so the student's mask is judged by its count and order, not compared entry by entry.
    k, n = int((~package.magnitude_mask(w, sparsity)).sum()), w.numel()
    mask = call(magnitude_mask, w, sparsity, what=what)
    expect_tensor(mask, what=what, shape=w.shape)
    if not torch.equal(w, original):
        fail(f"{what} changed the weights in place — return a mask and leave the weights alone.")
    if mask.dtype != torch.bool:
        fail(f"{what} returned dtype {mask.dtype}; return a bool mask (True = keep), e.g. from a comparison.")
    mag = w.abs()

    def right(m):                         # exactly k pruned, and no pruned |w| above a kept one
        p = int((~m).sum())
        return p == k and (p in (0, n) or bool(mag[~m].max() <= mag[m].min()))

    if right(mask):
        return
    if right(~mask):
        fail(f"{what}: True must mean keep — your mask marks the weights to prune.")
    pruned = int((~mask).sum())
    if pruned not in (0, n) and mag[~mask].max() > mag[mask].min():
        if w[~mask].max() <= w[mask].min():
            fail(f"{what}: rank by magnitude |w|, not by value — large negative weights were pruned.")
        fail(f"{what}: a pruned weight has a larger |w| than a kept one — prune the smallest magnitudes.")
    ranked = mag.flatten().sort().values
    ties = 0 < k < n and bool(ranked[k - 1] == ranked[k])
    hint = ("several weights share the threshold magnitude, and comparing with a threshold keeps or drops all of "
            "them — rank with torch.argsort or topk and drop exactly k" if ties else
            "drop exactly k = round(sparsity · numel) weights (round, not int: 0.29 · 100 = 28.999…)")
    fail(f"{what}(sparsity={sparsity}) pruned {pruned} of {n} weights, expected {k} — {hint}.")


@forbids("slm_lab.prune.magnitude_mask", "slm_lab.prune.magnitude_masks")
def check_magnitude_mask(magnitude_mask) -> None:
    """magnitude_mask(weight, sparsity) → bool tensor of weight's shape, True = keep: exactly
    round(sparsity · numel) weights with the smallest |w| are False."""
    what = "magnitude_mask"
    g = torch.Generator().manual_seed(0)
    _check_one_mask(magnitude_mask, torch.randn(8, 12, generator=g), 0.4, what)
    _check_one_mask(magnitude_mask, torch.randn(10, 10, generator=g) - 1.0, 0.3, what)          # mostly negative
    _check_one_mask(magnitude_mask, torch.randn(10, 10, generator=g), 0.29, what)
    tied = torch.randint(-3, 4, (16, 16), generator=g).float()        # magnitudes 0, 1, 2, 3: ties everywhere
    for s in (0.2, 0.5, 0.75):
        _check_one_mask(magnitude_mask, tied, s, what)
    _check_one_mask(magnitude_mask, torch.randn(3, 5, 7, generator=g), 0.6, f"{what} on a 3-d tensor")
    for s in (0.0, 1.0):
        w = torch.randn(6, 6, generator=g)
        ref = package.magnitude_mask(w, s)                             # all True, then all False
        mask = call(magnitude_mask, w, s, what=f"{what}(sparsity={s})")
        if not isinstance(mask, torch.Tensor) or mask.shape != w.shape or not torch.equal(mask.bool(), ref):
            fail(f"{what}(sparsity={s}) should {'keep every weight' if s == 0 else 'prune every weight'}.")
    passed("magnitude mask", "exact count, ties, which weights survive")


# --------------------------------------------------------------- MLP neurons ----
def _mlp(bias: bool, seed: int):
    from ..model import SLMConfig, SwiGLU

    torch.manual_seed(seed)
    mlp = SwiGLU(SLMConfig(vocab_size=8, d_model=16, n_head=2, d_ff=24, bias=bias))
    if bias:
        with torch.no_grad():
            for layer in (mlp.gate, mlp.up, mlp.down):
                layer.bias.normal_()
    return mlp


def _shrunk(mlp, keep):
    """A copy of mlp shrunk to the neurons `keep` by the package."""
    ref = copy.deepcopy(mlp)
    package.remove_neurons(ref, keep)
    return ref


def _probe_remove_neurons(remove_neurons, mlp, keep, x) -> dict:
    """Where the student's function lives: shrink mlp in place; what became of gate, up and down
    ({name: type, weight shape, in, out, bias shape}) and the MLP's output on x (or why it failed)."""
    try:
        call(remove_neurons, mlp, keep, what="remove_neurons")
    except Forbidden:
        raise
    except CheckFailed as exc:
        return {"failed": str(exc)}
    layers = {}
    for name in ("gate", "up", "down"):
        layer = getattr(mlp, name, None)
        if not isinstance(layer, nn.Linear):
            layers[name] = {"type": type(layer).__name__, "weight": (), "in": 0, "out": 0, "bias": None}
            continue
        layers[name] = {"type": "Linear", "weight": tuple(layer.weight.shape), "in": layer.in_features,
                        "out": layer.out_features, "bias": tuple(layer.bias.shape) if layer.bias is not None else None}
    try:
        with torch.no_grad():
            out = mlp(x)
    except Exception as exc:  # noqa: BLE001 - a student's broken module
        out = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return {"layers": layers, "out": out}


@forbids("slm_lab.prune.remove_neurons", "slm_lab.prune.prune_structured")
def check_remove_neurons(remove_neurons) -> None:
    """remove_neurons(mlp, keep): shrink a SwiGLU MLP (gate, up, down) in place to the neurons `keep`
    (indices into d_ff): gate and up keep those rows (and bias entries), down those columns."""
    what = "remove_neurons"
    for bias in (False, True):
        mlp = _mlp(bias, seed=int(bias))
        keep = torch.randperm(24, generator=torch.Generator().manual_seed(1))[:10]        # unsorted on purpose
        ref, complement = _shrunk(mlp, keep), _shrunk(mlp, torch.tensor([j for j in range(24) if j not in keep]))
        x = torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(2))
        with torch.no_grad():
            want, other = ref(x), complement(x)
        seen = call(_probe_remove_neurons, remove_neurons, mlp, keep.clone(), x, what=what)
        if "failed" in seen:
            if "out of bounds for dimension 0 with size 16" in seen["failed"]:     # down.weight[keep]: rows, not columns
                fail(f"{what}: {seen['failed']} — the neurons are the *columns* of down (its inputs): "
                     "slice weight[:, keep].")
            fail(seen["failed"])
        for name, shape in (("gate", (10, 16)), ("up", (10, 16)), ("down", (16, 10))):
            layer = seen["layers"].get(name)
            if layer["type"] != "Linear":
                fail(f"{what}: mlp.{name} should still be an nn.Linear, got {layer['type']}.")
            got = tuple(layer["weight"])
            if got != shape:
                if got in ((14, 16), (16, 14)):
                    fail(f"{what}: mlp.{name} has 14 neurons, the 24 − 10 you were to drop — you removed the "
                         "neurons in `keep`; keep them and remove the others.")
                if name == "down" and got == (16, 24):
                    fail(f"{what}: mlp.down still reads 24 neurons — remove its columns too (down.weight[:, keep]).")
                if name == "down" and got[0] != 16:
                    fail(f"{what}: mlp.down.weight has shape {got}; the neurons are the *columns* of down "
                         "(its inputs) — slice weight[:, keep], not weight[keep].")
                if got == (24, 16):
                    fail(f"{what}: mlp.{name} still has 24 neurons — both gate and up produce the neurons; shrink both.")
                fail(f"{what}: mlp.{name}.weight has shape {got}, expected {shape}.")
            if layer["in"] != shape[1] or layer["out"] != shape[0]:
                fail(f"{what}: mlp.{name} has in_features={layer['in']}, out_features={layer['out']} "
                     f"but a weight of shape {got}; build a new nn.Linear of the smaller size.")
            if bias and tuple(layer["bias"] or ()) != (shape[0],):
                fail(f"{what}: mlp.{name}.bias should have shape ({shape[0]},) — slice the bias of gate and up with "
                     "the same neurons, keep down's bias whole.")
        out = seen["out"]
        if isinstance(out, str):
            fail(f"{what}: the shrunken MLP fails on an input: {out}")
        expect_tensor(out, what=what, shape=want.shape)
        if torch.allclose(out, other, atol=1e-5) and not torch.allclose(out, want, atol=1e-5):
            fail(f"{what}: you removed the neurons in `keep` — keep them and remove the others.")
        expect_close(out, want, what=f"{what}{' (with biases)' if bias else ''}", atol=1e-5,
                     hint="gate, up and down must keep the same neurons in the same order, with their trained "
                          "weights" + (" and biases" if bias else "") + " copied (not freshly initialised)")
    passed("remove_neurons", "shapes, gate/up rows, down columns, biases, outputs")


CHECKS = {"06.magnitude_mask": check_magnitude_mask, "06.remove_neurons": check_remove_neurons}
