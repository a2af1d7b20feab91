"""Pruning: take away the weights a trained model uses least.

- Unstructured (magnitude) pruning zeroes single weights, the smallest |w| first — per matrix or with
  one global threshold. Masks keep them at zero through further training (`keep_masks`). The matrices
  keep their shape, so a dense matmul is exactly as slow as before: zeros only pay off with sparse
  kernels or sparse storage.
- Structured pruning removes whole attention heads and MLP neurons: rows and columns disappear, the
  model counts fewer parameters and runs faster. The same number is kept in every layer, so one config
  describes the result. With grouped-query attention a key/value head and the query heads that share it
  go together (a kv group); with n_kv_head == n_head a group is one head.

Which units to remove: the ones that add least to the residual stream — the mean L2 norm, over
calibration tokens, of each head's (group's) slice of o_proj's output and of each neuron's column of
the MLP's down projection times its activation.

Shapes: D d_model, H query heads, K kv heads (groups), r = H / K, hd head dim, F MLP width.
"""
from __future__ import annotations

import copy
from typing import cast

import torch
import torch.nn as nn

from .errors import SLMLabError
from .model import MLP, SLM, Block, CausalSelfAttention, SLMConfig, SwiGLU

# Linear layers inside the blocks; embeddings, the (tied) head and the norms are never pruned.
PRUNABLE = ("q_proj", "k_proj", "v_proj", "o_proj", "gate", "up", "down", "fc", "proj")


# ----------------------------------------------------------------- unstructured ----
def prunable_weights(model: nn.Module) -> dict[str, nn.Parameter]:
    """The weight matrices magnitude pruning may touch, by parameter name (blocks.0.attn.q_proj.weight, …)."""
    out = {}
    for name, p in model.named_parameters():
        parts = name.split(".")
        if parts[0] == "blocks" and parts[-1] == "weight" and parts[-2] in PRUNABLE and p.dim() == 2:
            out[name] = p
    return out


def _n_pruned(numel: int, sparsity: float) -> int:
    if not 0.0 <= sparsity <= 1.0:
        raise SLMLabError(f"sparsity={sparsity} must be between 0 (keep everything) and 1 (prune everything).")
    return int(round(sparsity * numel))


def magnitude_mask(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    """A bool mask of weight's shape, True = keep: exactly round(sparsity · numel) smallest-|w| entries are
    False. Ties at the threshold are broken by position (the earlier entry goes first)."""
    k = _n_pruned(weight.numel(), sparsity)
    order = torch.sort(weight.detach().abs().flatten(), stable=True).indices
    mask = torch.ones(weight.numel(), dtype=torch.bool, device=weight.device)
    mask[order[:k]] = False
    return mask.view_as(weight)


def magnitude_masks(model: nn.Module, sparsity: float, scope: str = "global") -> dict[str, torch.Tensor]:
    """Masks for every prunable matrix. scope="layer": each matrix loses `sparsity` of its weights;
    scope="global": one threshold over all of them, so matrices with smaller weights lose more."""
    weights = prunable_weights(model)
    if scope == "layer":
        return {name: magnitude_mask(w, sparsity) for name, w in weights.items()}
    if scope != "global":
        raise SLMLabError(f"scope={scope!r} is unknown; use 'global' (one threshold) or 'layer' (each matrix).")
    flat = magnitude_mask(torch.cat([w.detach().flatten() for w in weights.values()]), sparsity)
    masks, start = {}, 0
    for name, w in weights.items():
        masks[name] = flat[start:start + w.numel()].view_as(w)
        start += w.numel()
    return masks


@torch.no_grad()
def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Zero the pruned weights in place."""
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        if name not in params or params[name].shape != mask.shape:
            raise SLMLabError(f"mask {name!r} does not fit this model; compute the masks from the model you prune.")
        params[name].mul_(mask.to(params[name].device))


def sparsity(model: nn.Module) -> float:
    """Fraction of exact zeros among the prunable weights."""
    weights = prunable_weights(model).values()
    return sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)


class MaskKeeper:
    """Keeps pruned weights at exactly zero while training goes on (see `keep_masks`); `remove()` stops it."""

    def __init__(self, handles: list):
        self.handles = handles

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []


def keep_masks(model: nn.Module, masks: dict[str, torch.Tensor],
               optimizer: torch.optim.Optimizer | None = None) -> MaskKeeper:
    """Zero the pruned weights and keep them zero through further training.

    A gradient hook zeroes their gradients, so a fresh optimizer (e.g. the one `slm_lab.train.train`
    makes) never moves them and they do not count in gradient clipping. An optimizer that already has
    state — AdamW's running averages from before pruning — would still move them, so pass it: a step
    hook then re-applies the masks after every optimizer.step().
    """
    apply_masks(model, masks)
    params = dict(model.named_parameters())
    # m.to(g.device): train() may move the model to the GPU after the masks were made on the CPU.
    handles = [params[name].register_hook(lambda g, m=mask: g * m.to(g.device)) for name, mask in masks.items()]
    if optimizer is not None:
        handles.append(optimizer.register_step_post_hook(lambda opt, args, kwargs: apply_masks(model, masks)))
    return MaskKeeper(handles)


# ------------------------------------------------------------------- structured ----
def _blocks(model: SLM) -> list[Block]:
    """model.blocks, typed: to a type checker an nn.ModuleList holds plain nn.Modules."""
    return cast("list[Block]", list(model.blocks))


@torch.no_grad()
def unit_importance(model: SLM, batches: list) -> tuple[torch.Tensor, torch.Tensor]:
    """(heads (n_layer, K), neurons (n_layer, F)): the mean L2 norm over calibration tokens of what each
    kv group of heads and each MLP neuron adds to the residual stream. batches: (x, y) pairs."""
    first = _blocks(model)[0]
    H, K = first.attn.n_head, first.attn.n_kv_head
    heads = torch.zeros(len(model.blocks), K)
    neurons = torch.zeros(len(model.blocks), _mlp_layers(first.mlp)[2].in_features)
    tokens, hooks = 0, []

    def on_o_proj(i, attn):
        def hook(module, inputs):
            y = inputs[0].flatten(0, -2).view(-1, K, H // K, attn.head_dim)                # (N, K, r, hd)
            w = module.weight.view(module.out_features, K, H // K, attn.head_dim)           # (D, K, r, hd)
            heads[i] += torch.einsum("nkrh,dkrh->nkd", y, w).norm(dim=-1).sum(0)
        return hook

    def on_down(i):
        def hook(module, inputs):
            h = inputs[0].flatten(0, -2)                                                     # (N, F)
            neurons[i] += h.abs().sum(0) * module.weight.norm(dim=0)
        return hook

    for i, block in enumerate(_blocks(model)):
        hooks.append(block.attn.o_proj.register_forward_pre_hook(on_o_proj(i, block.attn)))
        hooks.append(_mlp_layers(block.mlp)[2].register_forward_pre_hook(on_down(i)))
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        for x, _ in batches:
            model(x.to(device))
            tokens += x.numel()
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return heads / tokens, neurons / tokens


def _mlp_layers(mlp: SwiGLU | MLP) -> tuple[list[nn.Linear], str, nn.Linear]:
    """(the layers whose rows are neurons, their names, the layer whose columns are neurons)."""
    if hasattr(mlp, "gate"):
        glu = cast(SwiGLU, mlp)
        return [glu.gate, glu.up], "gate up", glu.down          # SwiGLU: down(silu(gate x) · up x)
    gelu = cast(MLP, mlp)
    return [gelu.fc], "fc", gelu.proj                           # GPT-2: proj(gelu(fc x))


def _sliced(layer: nn.Linear, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None) -> nn.Linear:
    """A new Linear holding the given rows (outputs, with their bias) and/or columns (inputs) of layer."""
    w = layer.weight.detach()
    w = w[rows] if rows is not None else w
    w = w[:, cols] if cols is not None else w
    new = nn.Linear(w.shape[1], w.shape[0], bias=layer.bias is not None, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        new.weight.copy_(w)
        if layer.bias is not None:
            new.bias.copy_(layer.bias.detach()[rows] if rows is not None else layer.bias.detach())
    return new


@torch.no_grad()
def remove_neurons(mlp: SwiGLU | MLP, keep: torch.Tensor) -> None:
    """Keep only MLP neurons `keep` (indices into F), in place: SwiGLU gate/up rows and down columns,
    or GPT-2 fc rows (and bias) and proj columns."""
    ins, names, out = _mlp_layers(mlp)
    keep = torch.as_tensor(keep, dtype=torch.long).sort().values
    for layer, name in zip(ins, names.split(), strict=True):
        setattr(mlp, name, _sliced(layer, rows=keep))
    setattr(mlp, "down" if hasattr(mlp, "down") else "proj", _sliced(out, cols=keep))


@torch.no_grad()
def remove_heads(attn: CausalSelfAttention, keep: torch.Tensor) -> None:
    """Keep only kv groups `keep` (indices into K) of a CausalSelfAttention, in place: their k/v rows, the
    q rows of the query heads that share them, and those heads' o_proj columns."""
    H, K, hd = attn.n_head, attn.n_kv_head, attn.head_dim
    keep = torch.as_tensor(keep, dtype=torch.long).sort().values
    r = H // K
    q_heads = (keep[:, None] * r + torch.arange(r)).flatten()                              # (len(keep) · r,)
    q_rows = (q_heads[:, None] * hd + torch.arange(hd)).flatten()
    kv_rows = (keep[:, None] * hd + torch.arange(hd)).flatten()
    attn.q_proj = _sliced(attn.q_proj, rows=q_rows)
    attn.k_proj = _sliced(attn.k_proj, rows=kv_rows)
    attn.v_proj = _sliced(attn.v_proj, rows=kv_rows)
    attn.o_proj = _sliced(attn.o_proj, cols=q_rows)
    attn.n_head, attn.n_kv_head = len(q_heads), len(keep)


def prune_structured(model: SLM, batches: list, n_kv_head: int | None = None, d_ff: int | None = None) -> SLM:
    """A smaller copy of `model` with n_kv_head kv groups (n_kv_head · H/K query heads) and d_ff MLP neurons
    in every layer — the most important ones on the calibration `batches` — and a config that says so."""
    cfg = model.cfg
    first = _blocks(model)[0]
    K, F = first.attn.n_kv_head, _mlp_layers(first.mlp)[2].in_features
    n_kv_head, d_ff = n_kv_head or K, d_ff or F
    if not 1 <= n_kv_head <= K or not 1 <= d_ff <= F:
        raise SLMLabError(f"keep 1…{K} kv heads and 1…{F} neurons per layer (asked for n_kv_head={n_kv_head}, "
                          f"d_ff={d_ff}); structured pruning can only remove units.")
    heads, neurons = unit_importance(model, batches)
    pruned = copy.deepcopy(model)
    for i, block in enumerate(_blocks(pruned)):
        if n_kv_head < K:
            remove_heads(block.attn, heads[i].topk(n_kv_head).indices)
        if d_ff < F:
            remove_neurons(block.mlp, neurons[i].topk(d_ff).indices)
    attn = _blocks(pruned)[0].attn
    pruned.cfg = SLMConfig.from_dict(dict(cfg.to_dict(), n_head=attn.n_head, n_kv_head=attn.n_kv_head,
                                          head_dim=attn.head_dim, d_ff=d_ff))
    return pruned

