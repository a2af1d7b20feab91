"""Checks for lab 07 — LoRA: the LoRA layer, merging it into a plain Linear, injecting it by name.

The reference is `slm_lab.lora` (LoRALinear, inject_lora); every input is fresh and random, and the
layer under test always has in ≠ out and alpha / r ∉ {1, alpha, r/alpha}, so a transposed matrix or a
wrong scale cannot pass by coincidence.
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn

from .. import lora as package
from . import call, expect_close, expect_tensor, fail, forbids, passed

IN, OUT, R, ALPHA = 12, 10, 3, 6.0          # scaling alpha / r = 2
# Further layers for check_lora_linear: other sizes, and alpha / r not whole, so alpha // r ≠ alpha / r.
_LAYERS = ((IN, OUT, R, ALPHA), (7, 9, 3, 8.0), (16, 5, 4, 10.0))


def _base(seed: int = 0, bias: bool = True, n_in: int = IN, n_out: int = OUT) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(n_in, n_out, bias=bias)


def _param(layer, name: str, shape: tuple, what: str) -> nn.Parameter:
    p = getattr(layer, name, None)
    if not isinstance(p, nn.Parameter):
        fail(f"{what} should have an nn.Parameter `{name}` of shape {shape}; "
             f"got {type(p).__name__ if p is not None else 'nothing'}.")
    if tuple(p.shape) != shape:
        hint = " (A maps in → r, B maps r → out)" if tuple(p.shape) == shape[::-1] else ""
        fail(f"{what}: `{name}` has shape {tuple(p.shape)}, expected {shape}{hint}.")
    return p


def _scale_slip(factor: float, r: int, alpha: float) -> str | None:
    """Name the scale a student used instead of alpha / r, if it is a common one."""
    slips = {1.0: "the update is not scaled — multiply B·A·x by alpha / r",
             alpha: "the update is scaled by alpha, not alpha / r",
             r / alpha: "the scale is inverted: use alpha / r, not r / alpha",
             alpha * r: "the update is scaled by alpha · r, not alpha / r",
             1.0 / r: "the update is scaled by 1 / r, not alpha / r"}
    if alpha // r != alpha / r:
        slips[alpha // r] = f"the scale uses floor division: alpha // r = {alpha // r:g}, use alpha / r"
    for value, msg in slips.items():
        if abs(factor - value) < 1e-3 * max(1.0, abs(value)):
            return msg
    return None


@forbids("slm_lab.lora.LoRALinear")
def check_lora_linear(LoRALinear) -> None:
    """LoRALinear(base: nn.Linear, r, alpha): frozen base + (alpha / r)·B·A·x with A (r, in), B (out, r) = 0."""
    for seed, (n_in, n_out, r, alpha) in enumerate(_LAYERS):
        _check_lora_layer(LoRALinear, seed, n_in, n_out, r, alpha)
    passed("LoRA layer", "B = 0 at start, frozen base, alpha / r scaling, gradients")


def _check_lora_layer(LoRALinear, seed: int, IN: int, OUT: int, R: int, ALPHA: float) -> None:  # noqa: N803
    what = "LoRALinear"
    base = _base(seed, n_in=IN, n_out=OUT)
    w0, b0 = base.weight.detach().clone(), base.bias.detach().clone()
    g = torch.Generator().manual_seed(1 + seed)
    x = torch.randn(4, 5, IN, generator=g)
    A_trained, B_trained = torch.randn(R, IN, generator=g), torch.randn(OUT, R, generator=g)
    reference = package.LoRALinear(copy.deepcopy(base), R, ALPHA)
    with torch.no_grad():
        ref_start = reference(x)                       # B = 0: the base layer's output
        reference.lora_A.copy_(A_trained)
        reference.lora_B.copy_(B_trained)
        ref = reference(x)
        delta = (ref - ref_start) / reference.scaling   # B·A·x, unscaled
    seen = call(_probe_lora_layer, LoRALinear, base, R, ALPHA, x, A_trained, B_trained, what=what)
    A, B = seen["A"], seen["B"]
    if B.abs().max() > 0:
        fail(f"{what}: lora_B must start at zero, so the adapted layer starts exactly equal to the base layer "
             f"(max |B| = {B.abs().max().item():.3g}).")
    if A.abs().max() == 0:
        fail(f"{what}: lora_A is all zeros too — with A = B = 0 neither gets a gradient and nothing ever trains; "
             "initialise A randomly (only B starts at zero).")
    for name in ("weight", "bias"):
        if seen["base_trainable"][name]:
            fail(f"{what}: the base layer's {name} is still trainable — freeze it with requires_grad_(False); "
                 "only lora_A and lora_B should train.")
    if seen["trainable"] != R * (IN + OUT):
        fail(f"{what} has {seen['trainable']} trainable numbers, expected r·(in + out) = {R * (IN + OUT)} (just A and B).")
    out = expect_tensor(seen["out_start"], what=what, shape=(4, 5, OUT))
    expect_close(out, ref_start, what=f"{what} at initialisation", atol=1e-5,
                 hint="with B = 0 the output must be the base layer's output, bias included")
    out = expect_tensor(seen["out_trained"], what=what, shape=(4, 5, OUT))
    if not torch.allclose(out, ref, atol=1e-4, rtol=1e-4):
        got = (out.detach() - ref_start)
        factor = float((got * delta).sum() / (delta * delta).sum())
        if torch.allclose(got, factor * delta, atol=1e-3, rtol=1e-3):
            slip = _scale_slip(factor, R, ALPHA)
            if slip:
                fail(f"{what}: {slip} (= {ALPHA / R:g} here).")
        expect_close(out, ref, what=what, atol=1e-4,
                     hint="output = base(x) + (alpha / r) · (x @ A.T) @ B.T")
    if seen["backward"]:
        fail(f"{what}: loss.backward() fails ({seen['backward']}) — no gradient reaches lora_A or lora_B; "
             "use the parameters themselves in forward (no .data, .detach(), no copy).")
    for name in ("lora_A", "lora_B"):
        grad = seen["grads"][name]
        if not isinstance(grad, torch.Tensor) or grad.abs().max() == 0:
            fail(f"{what}: no gradient reaches {name} — use the parameter itself in forward (no .data, .detach(), no copy).")
    if seen["base_grad"]:
        fail(f"{what}: the base weight received a gradient — it should be frozen.")
    if not (torch.equal(seen["base_after"][0], w0) and torch.equal(seen["base_after"][1], b0)):
        fail(f"{what} changed the base layer's weights — the base must stay exactly as it was.")


def _probe_lora_layer(LoRALinear, base, R: int, ALPHA: float, x, A_trained, B_trained) -> dict:  # noqa: N803
    """Where the student's class lives: wrap `base`, read A and B, run it at start and with A, B set to the
    trained values, backpropagate; everything the check compares, as data."""
    what = "LoRALinear"
    layer = call(LoRALinear, base, R, ALPHA, what=f"{what}(base, r={R}, alpha={ALPHA:g})")
    if not isinstance(layer, nn.Module):
        fail(f"{what} should be an nn.Module subclass (class LoRALinear(nn.Module)).")
    A = _param(layer, "lora_A", (R, base.in_features), what)
    B = _param(layer, "lora_B", (base.out_features, R), what)
    seen: dict = {"A": A.detach().clone(), "B": B.detach().clone(),
                  "base_trainable": {"weight": base.weight.requires_grad, "bias": base.bias.requires_grad},
                  "trainable": sum(p.numel() for p in layer.parameters() if p.requires_grad)}
    seen["out_start"] = call(layer, x, what=what)
    with torch.no_grad():                       # a trained-looking adapter
        A.copy_(A_trained)
        B.copy_(B_trained)
    seen["out_trained"] = call(layer, x, what=what)
    loss = call(layer, x, what=what).pow(2).sum()
    seen["backward"] = ""
    try:                                         # outside call(): a forward built on .data cannot backpropagate
        loss.backward()
    except RuntimeError as exc:
        seen["backward"] = str(exc).splitlines()[0]
    seen["grads"] = {"lora_A": A.grad, "lora_B": B.grad}
    seen["base_grad"] = base.weight.grad is not None
    seen["base_after"] = (base.weight.detach().clone(), base.bias.detach().clone())
    return seen


def _lora(seed: int = 0, bias: bool = True):
    layer = package.LoRALinear(_base(seed, bias), r=R, alpha=ALPHA)
    g = torch.Generator().manual_seed(seed + 10)
    with torch.no_grad():
        layer.lora_A.copy_(torch.randn(R, IN, generator=g))
        layer.lora_B.copy_(torch.randn(OUT, R, generator=g))
    return layer


def _probe_merge(merge_lora, layer, x) -> dict:
    """Where the student's function lives: merge `layer`; the merged layer's type, shapes and output on x,
    and the LoRA layer's state afterwards."""
    merged = call(merge_lora, layer, what="merge_lora")
    linear = isinstance(merged, nn.Linear)
    seen = {"type": "Linear" if linear else type(merged).__name__,
            "layer_after": {k: v.detach().clone() for k, v in layer.state_dict().items()},
            "weight": tuple(merged.weight.shape) if linear else (), "bias": linear and merged.bias is not None}
    try:
        with torch.no_grad():
            seen["out"] = merged(x) if linear else "it is not a layer"
    except Exception as exc:  # noqa: BLE001 - a student's broken layer
        seen["out"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return seen


@forbids("slm_lab.lora.merge_lora", "slm_lab.lora.LoRALinear.merged_linear")
def check_merge(merge_lora) -> None:
    """merge_lora(layer) → a new nn.Linear with weight W + (alpha / r)·B·A and the same bias."""
    what = "merge_lora"
    for bias in (True, False):
        layer = _lora(bias=bias)
        before = copy.deepcopy(layer.state_dict())
        x = torch.randn(6, IN, generator=torch.Generator().manual_seed(3))
        with torch.no_grad():
            ref, base_out = layer(x), layer.base(x)     # the adapted layer (the package's LoRALinear) and its base
            delta = (ref - base_out) / layer.scaling     # B·A·x, unscaled
        seen = call(_probe_merge, merge_lora, layer, x, what=what)
        if seen["type"] != "Linear":
            fail(f"{what} should return an nn.Linear (a plain layer with no adapter), got {seen['type']}.")
        if any(not torch.equal(v, seen["layer_after"].get(k, torch.empty(0))) for k, v in before.items()):
            fail(f"{what} changed the LoRA layer it was given — build a new Linear (clone the weight) and leave "
                 "the adapter as it was.")
        if tuple(seen["weight"]) != (OUT, IN):
            fail(f"{what}: the merged weight has shape {tuple(seen['weight'])}, expected (out, in) = {(OUT, IN)}.")
        if bias and not seen["bias"]:
            fail(f"{what}: the merged layer has no bias but the base layer had one — copy it over.")
        out = seen["out"]
        if isinstance(out, str):
            fail(f"the layer {what} returned raised {out}")
        expect_tensor(out, what=f"the layer {what} returned", shape=ref.shape)
        if not torch.allclose(out, ref, atol=1e-5, rtol=1e-5):
            got = out - base_out
            factor = float((got * delta).sum() / (delta * delta).sum())
            if torch.allclose(got, factor * delta, atol=1e-3, rtol=1e-3) and _scale_slip(factor, R, ALPHA):
                fail(f"{what}: {_scale_slip(factor, R, ALPHA)} (= {ALPHA / R:g}) when merging.")
            expect_close(out, ref, what=f"{what}: merged(x) vs layer(x)", atol=1e-5,
                         hint="W_merged = W + (alpha / r) · B @ A, shape (out, in)")
    passed("merge", "merged Linear equals the adapted layer within 1e-5; the adapter is untouched")


def _small_model(family: str = "llama"):
    from ..model import SLM, SLMConfig

    torch.manual_seed(0)
    return SLM(SLMConfig(family=family, vocab_size=17, block_size=16, n_layer=2, n_head=2, d_model=16)).eval()


def _has_adapter(module) -> bool:
    return (isinstance(getattr(module, "lora_A", None), nn.Parameter)
            and isinstance(getattr(module, "lora_B", None), nn.Parameter))


def _probe_inject(inject_lora, model, targets, ids) -> dict:
    """Where the student's function lives: inject into `model` (r=2, alpha=4); what it returned, which
    modules carry an adapter, what is trainable, and the logits afterwards."""
    names = call(inject_lora, model, targets, 2, 4.0, what=f"inject_lora(model, {targets}, r=2, alpha=4)")
    seen = {"names": list(names) if isinstance(names, (list, tuple)) else names,
            "wrapped": [n for n, m in model.named_modules() if _has_adapter(m)],
            "kinds": {n: type(m).__name__ for n, m in model.named_modules()},
            "trainable_names": [n for n, p in model.named_parameters() if p.requires_grad],
            "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad)}
    try:
        with torch.no_grad():
            seen["after"] = model(ids).logits
    except Exception as exc:  # noqa: BLE001 - a student's broken model
        seen["after"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return seen


@forbids("slm_lab.lora.inject_lora")
def check_inject(inject_lora) -> None:
    """inject_lora(model, targets, r, alpha) → names: wrap Linears named `t` or ending in `.t`; freeze the rest."""
    what = "inject_lora"
    for family, targets in (("llama", ("q_proj", "v_proj")), ("gpt2", ("proj",))):
        model = _small_model(family)
        ids = torch.randint(0, 17, (2, 9), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            before = model(ids).logits
        reference = copy.deepcopy(model)
        expected = package.inject_lora(reference, targets, r=2, alpha=4.0)
        want = sum(p.numel() for p in reference.parameters() if p.requires_grad)
        seen = call(_probe_inject, inject_lora, model, targets, ids, what=f"{what}(model, {targets}, r=2, alpha=4)")
        names, wrapped = seen["names"], seen["wrapped"]
        if not isinstance(names, (list, tuple)):
            fail(f"{what} should return the list of names it wrapped, got {type(names).__name__}.")
        for n in expected:
            if n not in wrapped:
                fail(f"{what}(targets={targets}): {n} is still a plain {seen['kinds'].get(n, 'module')} — replace it on "
                     "its parent module (setattr(parent, child_name, LoRALinear(...))).")
        for n in wrapped:
            if n not in expected:
                fail(f"{what}(targets={targets}): {n} was wrapped but its name is not a target — match whole names "
                     "(name == t or name.endswith('.' + t)), not substrings.")
        if sorted(map(str, names)) != sorted(expected):
            fail(f"{what} returned {sorted(map(str, names))[:4]}…, expected the wrapped names {expected[:4]}….")
        for n in seen["trainable_names"]:
            if not n.endswith(("lora_A", "lora_B")):
                fail(f"{what}: {n} is still trainable — freeze every parameter of the model, then leave only the "
                     "adapters' A and B trainable.")
        if seen["trainable"] != want:
            fail(f"{what}: {seen['trainable']} trainable numbers, expected Σ r·(in + out) = {want} over the wrapped layers.")
        after = seen["after"]
        if isinstance(after, str):
            fail(f"{what}: the model fails after injection: {after}")
        expect_close(after, before, what=f"{what}: the model's logits right after injection", atol=1e-5,
                     hint="freshly injected adapters (B = 0) must not change the model")
    passed("inject_lora", "whole-name matching, replaced on the parent, everything else frozen, output unchanged")


CHECKS = {"07.lora_linear": check_lora_linear, "07.merge": check_merge, "07.inject": check_inject}
