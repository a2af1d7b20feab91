"""LoRA: fine-tune a frozen model through small low-rank adapters (Hu et al., 2021).

A frozen Linear with weight W (out, in) gets two trainable matrices, A (r, in) and B (out, r):

    y = x Wᵀ + b + (alpha / r) · dropout(x) Aᵀ Bᵀ          i.e. W' = W + (alpha / r) · B A

B starts at zero, so the adapted model starts exactly equal to the base model; A starts random,
so the gradient reaching B is not zero. Only A and B train: r · (in + out) numbers per layer
instead of in · out. After training, B A can be merged into W — the merged model is a plain model
with no extra cost at inference — or kept apart and saved on its own (a few hundred kB).

Shapes: x (..., in) → y (..., out). Layer names follow slm_lab.model: attention q_proj, k_proj,
v_proj, o_proj; Llama MLP gate, up, down; GPT-2 MLP fc, proj.
"""
from __future__ import annotations

import copy
import json
import math
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from .atomic import atomic_path, write_text
from .errors import SLMLabError

if TYPE_CHECKING:
    from .model import SLM

_M = TypeVar("_M", bound=nn.Module)

ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
LLAMA_MLP = ("gate", "up", "down")
GPT2_MLP = ("fc", "proj")
# Our layer names → the names of the same layers in transformers' LlamaForCausalLM (for peft).
HF_LLAMA_NAMES = {"q_proj": "q_proj", "k_proj": "k_proj", "v_proj": "v_proj", "o_proj": "o_proj",
                  "gate": "gate_proj", "up": "up_proj", "down": "down_proj"}
ADAPTER_WEIGHTS, ADAPTER_CONFIG = "adapter.safetensors", "adapter_config.json"


class LoRALinear(nn.Module):
    """A frozen nn.Linear plus a trainable low-rank update (alpha / r) · B A."""

    def __init__(self, base: nn.Linear, r: int = 4, alpha: float = 8.0, dropout: float = 0.0):
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise SLMLabError(f"LoRALinear wraps an nn.Linear, got {type(base).__name__}.")
        if not isinstance(r, int) or r <= 0:
            raise SLMLabError(f"the LoRA rank r={r!r} must be a positive integer (1, 4, 16, ...).")
        if alpha <= 0:
            raise SLMLabError(f"alpha={alpha} must be positive; the update is scaled by alpha / r.")
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        self.r, self.alpha = r, float(alpha)
        self.scaling = self.alpha / r
        w = base.weight
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features, dtype=w.dtype, device=w.device))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r, dtype=w.dtype, device=w.device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))    # nn.Linear's (and peft's) init
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def delta_weight(self) -> torch.Tensor:
        """(alpha / r) · B A, shape (out, in): what merging adds to the base weight."""
        return self.scaling * (self.lora_B @ self.lora_A)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., in) → (..., out)."""
        y = self.base(x)
        if self.merged:
            return y
        # x Aᵀ first: (..., r) is tiny, so we never form the (out, in) update during training.
        return y + F.linear(F.linear(self.dropout(x), self.lora_A), self.lora_B) * self.scaling

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the update into the base weight (in place); forward then costs one matmul."""
        if not self.merged:
            self.base.weight += self.delta_weight()
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Undo merge(): subtract the update again, so the adapter can keep training."""
        if self.merged:
            self.base.weight -= self.delta_weight()
            self.merged = False

    def merged_linear(self) -> nn.Linear:
        """A new plain nn.Linear with weight W + (alpha / r) · B A (this layer is left unchanged)."""
        out = nn.Linear(self.in_features, self.out_features, bias=self.base.bias is not None,
                        device=self.base.weight.device, dtype=self.base.weight.dtype)
        with torch.no_grad():
            w = self.base.weight if self.merged else self.base.weight + self.delta_weight()
            out.weight.copy_(w)
            if self.base.bias is not None:
                out.bias.copy_(self.base.bias)
        return out

    def extra_repr(self) -> str:
        return f"r={self.r}, alpha={self.alpha:g}, merged={self.merged}"


# ------------------------------------------------------------------ injection ----
def _matches(name: str, targets) -> bool:
    return any(name == t or name.endswith("." + t) for t in targets)


def linear_names(model: nn.Module) -> list[str]:
    """The short names (q_proj, up, ...) of the model's Linear layers that LoRA can target."""
    return sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules()
                   if isinstance(m, nn.Linear) and n != "lm_head"})


def inject_lora(model: nn.Module, targets=ATTENTION + LLAMA_MLP, r: int = 4, alpha: float = 8.0,
                dropout: float = 0.0) -> list[str]:
    """Replace every nn.Linear whose name is (or ends with '.') a target by a LoRALinear; freeze all else.

    Returns the full names of the wrapped layers. Only the adapters' A and B stay trainable.
    """
    if isinstance(targets, str):
        targets = (targets,)
    if any(isinstance(m, LoRALinear) for m in model.modules()):
        raise SLMLabError("this model already has LoRA adapters; merge or strip them before injecting new ones.")
    tied = getattr(getattr(model, "cfg", None), "tie_weights", False)
    if tied and "lm_head" in targets:
        raise SLMLabError("lm_head shares its weight with the token embedding here, so an adapter on it "
                          "would change the embedding too; leave lm_head out of the targets.")
    chosen = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and _matches(n, targets)]
    for t in targets:
        if not any(_matches(n, (t,)) for n in chosen):
            raise SLMLabError(f"LoRA target {t!r} matches no Linear layer of this model; "
                              f"choose from {', '.join(linear_names(model))}.")
    for p in model.parameters():
        p.requires_grad_(False)
    for name in chosen:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, LoRALinear(getattr(parent, child), r=r, alpha=alpha, dropout=dropout))
    return chosen


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}


def _replace_lora(model: _M, make) -> _M:
    for name, layer in list(lora_layers(model).items()):
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, make(layer))
    return model


def merge_lora(model: _M) -> _M:
    """A copy of the model with every adapter folded into its Linear: a plain model, all parameters trainable."""
    merged = _replace_lora(copy.deepcopy(model), lambda layer: layer.merged_linear())
    for p in merged.parameters():
        p.requires_grad_(True)
    return merged


def strip_lora(model: _M) -> _M:
    """A copy of the model with the adapters dropped: the base model again (unmerged weights)."""
    def base(layer: LoRALinear) -> nn.Linear:
        if layer.merged:
            layer.unmerge()
        return layer.base
    stripped = _replace_lora(copy.deepcopy(model), base)
    for p in stripped.parameters():
        p.requires_grad_(True)
    return stripped


# ------------------------------------------------------------------ counting ----
def trainable_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) numbers in the model's distinct parameters (a tied weight counts once): what trains
    under LoRA, out of all it holds. (The count from a config, by formula, is slm_lab.sizing.count_parameters.)"""
    params = list(model.parameters())     # .parameters() already yields a shared tensor once
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def lora_parameter_count(model: nn.Module, targets, r: int) -> int:
    """What LoRA adds, from the formula r · (in + out) per targeted Linear (no model change)."""
    return sum(r * (m.in_features + m.out_features) for n, m in model.named_modules()
               if isinstance(m, nn.Linear) and _matches(n, targets))


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes held in the optimizer's state tensors (AdamW: two moments per trainable number, plus steps)."""
    return sum(t.numel() * t.element_size() for state in optimizer.state.values()
               for t in state.values() if isinstance(t, torch.Tensor))


def measure_optimizer_state(model: nn.Module, train_cfg) -> int:
    """The AdamW state the course's training loop would allocate for this model, measured after one step
    on a copy (the model itself is not touched)."""
    from .train import make_optimizer

    clone = copy.deepcopy(model)
    optimizer = make_optimizer(clone, train_cfg)
    for p in clone.parameters():
        if p.requires_grad:
            p.grad = torch.zeros_like(p)
    optimizer.step()
    return optimizer_state_bytes(optimizer)


# ------------------------------------------------------------- save / load ----
def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the adapters: {'blocks.0.attn.q_proj.lora_A': (r, in), ...lora_B: (out, r)}."""
    out = {}
    for name, layer in lora_layers(model).items():
        if layer.merged:
            raise SLMLabError(f"{name} is merged; unmerge() it before saving the adapter on its own.")
        out[f"{name}.lora_A"] = layer.lora_A.detach().contiguous().cpu()
        out[f"{name}.lora_B"] = layer.lora_B.detach().contiguous().cpu()
    return out


def save_adapter(model: nn.Module, directory: str | Path, meta: dict | None = None) -> Path:
    """Write the adapters alone (adapter.safetensors + adapter_config.json), each file atomically."""
    from safetensors.torch import save_file

    layers = lora_layers(model)
    if not layers:
        raise SLMLabError("this model has no LoRA adapters to save; call inject_lora(model, ...) first.")
    state = adapter_state_dict(model)
    one = next(iter(layers.values()))
    config = {"r": one.r, "alpha": one.alpha, "layers": sorted(layers),
              "dropout": one.dropout.p if isinstance(one.dropout, nn.Dropout) else 0.0, "meta": meta or {}}
    directory = Path(directory)
    with atomic_path(directory / ADAPTER_WEIGHTS) as tmp:
        save_file(state, str(tmp))
    write_text(directory / ADAPTER_CONFIG, json.dumps(config, indent=2))
    return directory


def load_adapter(model: nn.Module, directory: str | Path) -> nn.Module:
    """Inject the saved adapters into a base model (in place) and load their weights; returns the model."""
    from safetensors.torch import load_file

    directory = Path(directory)
    for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
        if not (directory / name).is_file():
            raise SLMLabError(f"{directory} is not a LoRA adapter: {name} is missing; "
                              "save one with save_adapter(model, dir).")
    try:
        config = json.loads((directory / ADAPTER_CONFIG).read_text())
        layers, r, alpha = config["layers"], int(config["r"]), float(config["alpha"])
        state = load_file(str(directory / ADAPTER_WEIGHTS))
    except Exception as exc:     # JSON, missing keys or a truncated safetensors file
        raise SLMLabError(f"the adapter in {directory} is unreadable ({type(exc).__name__}); save it again.") from None
    if not lora_layers(model):
        missing = [n for n in layers if not isinstance(_get(model, n), nn.Linear)]
        if missing:
            raise SLMLabError(f"the adapter targets {missing[0]}, which this model does not have; "
                              "load it into the base model it was trained on.")
        inject_lora(model, tuple(layers), r=r, alpha=alpha, dropout=float(config.get("dropout", 0.0)))
    ours = adapter_state_dict(model)
    if set(ours) != set(state) or any(ours[k].shape != state[k].shape for k in ours):
        raise SLMLabError(f"the adapter in {directory} does not fit this model (different layers or shapes); "
                          "load it into the base model it was trained on.")
    with torch.no_grad():
        for name, layer in lora_layers(model).items():
            layer.lora_A.copy_(state[f"{name}.lora_A"])
            layer.lora_B.copy_(state[f"{name}.lora_B"])
    return model


def _get(model: nn.Module, name: str):
    try:
        return model.get_submodule(name)
    except AttributeError:
        return None


# ------------------------------------------------------------------ peft ----
def to_peft(model: SLM):
    """The same adapted model through Hugging Face peft: our base → LlamaForCausalLM, our A and B copied in.

    Returns a peft PeftModel whose logits match ours (Llama family only).
    """
    from peft import LoraConfig, get_peft_model

    from .hf import to_hf

    layers = lora_layers(model)
    if not layers:
        raise SLMLabError("this model has no LoRA adapters; inject_lora(model, ...) first.")
    if model.cfg.family != "llama":
        raise SLMLabError("the peft comparison maps our layers onto LlamaForCausalLM; use a Llama-family model.")
    one = next(iter(layers.values()))
    short = sorted({n.rsplit(".", 1)[-1] for n in layers})
    # peft types lora_alpha as int, but only divides it by r: a fractional alpha works and must stay as it is.
    config = LoraConfig(r=one.r, lora_alpha=one.alpha, lora_dropout=0.0, bias="none",  # type: ignore[arg-type]
                        target_modules=[HF_LLAMA_NAMES[s] for s in short])
    with warnings.catch_warnings():      # peft calls a transformers API that transformers 5 marks deprecated
        warnings.simplefilter("ignore", FutureWarning)
        peft_model = get_peft_model(to_hf(strip_lora(model)), config)
    theirs = dict(peft_model.named_parameters())
    with torch.no_grad():
        for name, layer in layers.items():
            hf_name = _hf_layer_name(name)
            theirs[f"base_model.model.{hf_name}.lora_A.default.weight"].copy_(layer.lora_A)
            theirs[f"base_model.model.{hf_name}.lora_B.default.weight"].copy_(layer.lora_B)
    return peft_model.eval()


def _hf_layer_name(name: str) -> str:
    """blocks.3.attn.q_proj → model.layers.3.self_attn.q_proj; blocks.3.mlp.up → model.layers.3.mlp.up_proj."""
    _, i, part, short = name.split(".")
    return f"model.layers.{i}.{'self_attn' if part == 'attn' else 'mlp'}.{HF_LLAMA_NAMES[short]}"
