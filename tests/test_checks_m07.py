"""Lab 07 checks accept the reference, reject the unsolved stub and name each planted LoRA mistake."""
import math

import torch
import torch.nn as nn

from slm_lab import lora
from slm_lab.checks import m07
from checking import rejects


def make_lora(init_B=torch.zeros, scale=lambda r, a: a / r, freeze=True, a_shape=None, zero_A=False, detach_A=False,
              data=False):
    """A student's LoRALinear with one knob per plausible mistake."""
    class Student(nn.Module):
        def __init__(self, base, r, alpha):
            super().__init__()
            self.base = base
            if freeze:
                for p in base.parameters():
                    p.requires_grad_(False)
            shape = a_shape(r, base) if a_shape else (r, base.in_features)
            self.lora_A = nn.Parameter(torch.zeros(*shape) if zero_A else torch.randn(*shape) / math.sqrt(base.in_features))
            self.lora_B = nn.Parameter(init_B(base.out_features, r))
            self.scaling = scale(r, alpha)

        def forward(self, x):
            A = self.lora_A.detach() if detach_A else self.lora_A
            if data:                                  # both adapters through .data: nothing to backpropagate
                return self.base(x) + (x @ self.lora_A.data.T @ self.lora_B.data.T) * self.scaling
            return self.base(x) + (x @ A.T @ self.lora_B.T) * self.scaling
    return Student


class Todo(nn.Module):
    def __init__(self, base, r, alpha):
        super().__init__()
        raise NotImplementedError


def test_lora_linear_check():
    m07.check_lora_linear(make_lora())
    m07.check_lora_linear(lambda base, r, alpha: lora.LoRALinear(base, r, alpha))     # the course's own layer
    rejects(m07.check_lora_linear, Todo, match="not done yet")
    rejects(m07.check_lora_linear, make_lora(init_B=torch.randn), match="lora_B must start at zero")
    rejects(m07.check_lora_linear, make_lora(zero_A=True), match="lora_A is all zeros too")
    rejects(m07.check_lora_linear, make_lora(freeze=False), match="base layer's weight is still trainable")
    rejects(m07.check_lora_linear, make_lora(scale=lambda r, a: 1.0), match="the update is not scaled")
    rejects(m07.check_lora_linear, make_lora(scale=lambda r, a: r / a), match="the scale is inverted")
    rejects(m07.check_lora_linear, make_lora(scale=lambda r, a: a), match="scaled by alpha, not alpha / r")
    rejects(m07.check_lora_linear, make_lora(a_shape=lambda r, base: (base.in_features, r)),
            match="(A maps in → r, B maps r → out)")
    rejects(m07.check_lora_linear, make_lora(detach_A=True), match="no gradient reaches lora_A")
    # held out: floor division (right for alpha 6, r 3 only), and a forward on .data (backward used to crash)
    rejects(m07.check_lora_linear, make_lora(scale=lambda r, a: a // r), match="the scale uses floor division")
    rejects(m07.check_lora_linear, make_lora(data=True), match="loss.backward() fails")


def merge_good(layer):
    out = nn.Linear(layer.base.in_features, layer.base.out_features, bias=layer.base.bias is not None)
    with torch.no_grad():
        out.weight.copy_(layer.base.weight + layer.scaling * layer.lora_B @ layer.lora_A)
        if layer.base.bias is not None:
            out.bias.copy_(layer.base.bias)
    return out


def merge_in_place(layer):
    with torch.no_grad():
        layer.base.weight += layer.scaling * layer.lora_B @ layer.lora_A
    return layer.base


def merge_no_scale(layer):
    out = merge_good(layer)
    with torch.no_grad():
        out.weight.copy_(layer.base.weight + layer.lora_B @ layer.lora_A)
    return out


def merge_drops_bias(layer):
    out = nn.Linear(layer.base.in_features, layer.base.out_features, bias=False)
    with torch.no_grad():
        out.weight.copy_(layer.base.weight + layer.scaling * layer.lora_B @ layer.lora_A)
    return out


def merge_transposed(layer):
    out = nn.Linear(layer.base.in_features, layer.base.out_features)
    out.weight = nn.Parameter(layer.base.weight.T.detach().clone())
    return out


def test_merge_check():
    m07.check_merge(merge_good)
    m07.check_merge(lambda layer: layer.merged_linear())
    rejects(m07.check_merge, lambda layer: (_ for _ in ()).throw(NotImplementedError), match="not done yet")
    rejects(m07.check_merge, merge_in_place, match="changed the LoRA layer it was given")
    rejects(m07.check_merge, merge_no_scale, match="the update is not scaled")
    rejects(m07.check_merge, merge_drops_bias, match="has no bias but the base layer had one")
    rejects(m07.check_merge, merge_transposed, match="expected (out, in)")
    rejects(m07.check_merge, lambda layer: layer, match="should return an nn.Linear")


def make_inject(match=lambda n, t: n == t or n.endswith("." + t), freeze_all=True, set_on_parent=True, first_only=False):
    def inject(model, targets, r, alpha):
        names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and any(match(n, t) for t in targets)]
        if first_only:
            names = names[:1]
        if freeze_all:
            for p in model.parameters():
                p.requires_grad_(False)
        for n in names:
            parent_name, _, child = n.rpartition(".")
            parent = model.get_submodule(parent_name)
            new = lora.LoRALinear(getattr(parent, child), r, alpha)
            if set_on_parent:
                setattr(parent, child, new)
        return names
    return inject


def test_inject_check():
    m07.check_inject(make_inject())
    m07.check_inject(lambda model, targets, r, alpha: lora.inject_lora(model, targets, r, alpha))
    rejects(m07.check_inject, lambda *a: (_ for _ in ()).throw(NotImplementedError), match="not done yet")
    rejects(m07.check_inject, make_inject(match=lambda n, t: t in n), match="match whole names")
    rejects(m07.check_inject, make_inject(freeze_all=False), match="tok_emb.weight is still trainable")
    rejects(m07.check_inject, make_inject(set_on_parent=False), match="is still a plain Linear")
    rejects(m07.check_inject, make_inject(first_only=True), match="blocks.0.attn.v_proj is still a plain Linear")
