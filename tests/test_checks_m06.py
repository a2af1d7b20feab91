"""Lab 06 checks accept the reference, reject the unsolved stub and name each planted mistake in one line."""
import torch
import torch.nn as nn

from slm_lab import prune
from slm_lab.checks import m06
from checking import rejects, todo


# ------------------------------------------------------------------ magnitude mask ----
def mask_good(w, s):
    k = round(s * w.numel())
    mask = torch.ones(w.numel(), dtype=torch.bool)
    mask[torch.argsort(w.abs().flatten())[:k]] = False
    return mask.view_as(w)


def mask_threshold(w, s):                     # keeps or drops every weight tied at the threshold
    k = round(s * w.numel())
    if k == 0:
        return torch.ones_like(w, dtype=torch.bool)
    return w.abs() > w.abs().flatten().kthvalue(k).values


def mask_int(w, s):                           # int(0.29 * 100) == 28
    k = int(s * w.numel())
    mask = torch.ones(w.numel(), dtype=torch.bool)
    mask[torch.argsort(w.abs().flatten())[:k]] = False
    return mask.view_as(w)


def mask_by_value(w, s):
    k = round(s * w.numel())
    mask = torch.ones(w.numel(), dtype=torch.bool)
    mask[torch.argsort(w.flatten())[:k]] = False
    return mask.view_as(w)


def mask_largest(w, s):
    k = round(s * w.numel())
    mask = torch.ones(w.numel(), dtype=torch.bool)
    mask[torch.argsort(w.abs().flatten(), descending=True)[:k]] = False
    return mask.view_as(w)


def mask_in_place(w, s):
    w.abs_()
    return mask_good(w, s)


def test_magnitude_mask_check():
    m06.check_magnitude_mask(mask_good)
    m06.check_magnitude_mask(prune.magnitude_mask)
    rejects(m06.check_magnitude_mask, todo, match="not done yet")
    rejects(m06.check_magnitude_mask, lambda w, s: ~mask_good(w, s), match="True must mean keep")
    rejects(m06.check_magnitude_mask, mask_by_value, match="not by value")
    rejects(m06.check_magnitude_mask, mask_largest, match="larger |w| than a kept one")
    rejects(m06.check_magnitude_mask, mask_int, match="round, not int")
    rejects(m06.check_magnitude_mask, mask_threshold, match="share the threshold magnitude")
    rejects(m06.check_magnitude_mask, lambda w, s: w.abs() > w.abs().quantile(s), match="expected")
    rejects(m06.check_magnitude_mask, lambda w, s: mask_good(w, s).float(), match="bool mask")
    rejects(m06.check_magnitude_mask, mask_in_place, match="in place")
    rejects(m06.check_magnitude_mask, lambda w, s: mask_good(w, s).flatten(), match="shape")


# ------------------------------------------------------------------- remove_neurons ----
def new_linear(w, b):
    layer = nn.Linear(w.shape[1], w.shape[0], bias=b is not None)
    with torch.no_grad():
        layer.weight.copy_(w)
        if b is not None:
            layer.bias.copy_(b)
    return layer


def neurons_good(mlp, keep):
    for name in ("gate", "up"):
        old = getattr(mlp, name)
        setattr(mlp, name, new_linear(old.weight[keep], None if old.bias is None else old.bias[keep]))
    mlp.down = new_linear(mlp.down.weight[:, keep], mlp.down.bias)


def neurons_down_rows(mlp, keep):
    for name in ("gate", "up"):
        old = getattr(mlp, name)
        setattr(mlp, name, new_linear(old.weight[keep], None if old.bias is None else old.bias[keep]))
    mlp.down = new_linear(mlp.down.weight[keep], None)


def neurons_forget_up(mlp, keep):
    mlp.gate = new_linear(mlp.gate.weight[keep], None if mlp.gate.bias is None else mlp.gate.bias[keep])
    mlp.down = new_linear(mlp.down.weight[:, keep], mlp.down.bias)


def neurons_inverted(mlp, keep):
    drop = torch.tensor([j for j in range(mlp.down.in_features) if j not in keep])
    neurons_good(mlp, drop)


def neurons_inconsistent(mlp, keep):          # gate/up sorted, down in the given order
    for name in ("gate", "up"):
        old = getattr(mlp, name)
        s = keep.sort().values
        setattr(mlp, name, new_linear(old.weight[s], None if old.bias is None else old.bias[s]))
    mlp.down = new_linear(mlp.down.weight[:, keep], mlp.down.bias)


def neurons_fresh(mlp, keep):                  # right sizes, weights not copied
    mlp.gate, mlp.up = nn.Linear(16, len(keep), bias=False), nn.Linear(16, len(keep), bias=False)
    mlp.down = nn.Linear(len(keep), 16, bias=False)


def neurons_weights_only(mlp, keep):           # swaps the weight tensors, leaves in/out_features stale
    mlp.gate.weight = nn.Parameter(mlp.gate.weight[keep])
    mlp.up.weight = nn.Parameter(mlp.up.weight[keep])
    mlp.down.weight = nn.Parameter(mlp.down.weight[:, keep])


def neurons_no_bias(mlp, keep):                # drops the biases of gate and up
    mlp.gate = new_linear(mlp.gate.weight[keep], None)
    mlp.up = new_linear(mlp.up.weight[keep], None)
    mlp.down = new_linear(mlp.down.weight[:, keep], mlp.down.bias)


def test_remove_neurons_check():
    m06.check_remove_neurons(neurons_good)
    m06.check_remove_neurons(prune.remove_neurons)
    rejects(m06.check_remove_neurons, todo, match="not done yet")
    rejects(m06.check_remove_neurons, neurons_down_rows, match="*columns* of down")
    rejects(m06.check_remove_neurons, neurons_forget_up, match="mlp.up still has 24 neurons")
    rejects(m06.check_remove_neurons, neurons_inverted, match="you removed the neurons in `keep`")
    rejects(m06.check_remove_neurons, neurons_inconsistent, match="same order")
    rejects(m06.check_remove_neurons, neurons_fresh, match="not freshly initialised")
    rejects(m06.check_remove_neurons, neurons_weights_only, match="in_features")
    rejects(m06.check_remove_neurons, neurons_no_bias, match="bias should have shape")
