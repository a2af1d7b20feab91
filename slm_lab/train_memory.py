"""Training memory: what a training step has to hold, computed from the config and measured on the model.

Four things live in memory while a model trains:
- the weights, the gradients and AdamW's two moments (`state_bytes`): 16 bytes per parameter in fp32 (4 + 4
  + 8); in mixed precision 2 + 2 bytes of bf16 weights and gradients plus a 4-byte fp32 master copy and the
  8-byte moments — still 16 (Rajbhandari et al., 2020, "ZeRO", §3.1, count K = 12 bytes of fp32 state);
- the activations autograd saves for the backward pass (`activation_bytes`): they grow with batch × context.
`zero_bytes_per_device` divides the 16 bytes the way ZeRO's stages (and FSDP) shard them over N devices.
`saved_activation_bytes` and `state_bytes_held` measure the same quantities on a real model and optimizer.
"""
from __future__ import annotations

import torch

from .errors import SLMLabError
from .model import SLMConfig

STATE_BYTES: dict[str, dict[str, int]] = {
    "fp32": {"weights": 4, "gradients": 4, "adam moments": 8},
    "mixed": {"weights": 2, "gradients": 2, "fp32 master weights": 4, "adam moments": 8},
}
ZERO_STAGES = {0: "none (plain data parallel)", 1: "optimizer state", 2: "+ gradients", 3: "+ weights (FSDP)"}


def state_bytes(n_params: float, precision: str = "fp32") -> dict[str, float]:
    """Bytes of each per-parameter state for n_params parameters ('fp32' or 'mixed' precision)."""
    if precision not in STATE_BYTES:
        raise SLMLabError(f"precision={precision!r} is not one of {', '.join(STATE_BYTES)}.")
    return {name: b * n_params for name, b in STATE_BYTES[precision].items()}


def zero_bytes_per_device(n_params: float, n_devices: int, stage: int, precision: str = "mixed") -> float:
    """Weights + gradients + optimizer state on each of n_devices data-parallel devices under ZeRO `stage`:
    stage 1 shards the optimizer state (master weights and moments), 2 also the gradients, 3 the weights too."""
    if stage not in ZERO_STAGES:
        raise SLMLabError(f"ZeRO stage {stage} does not exist; use 0, 1, 2 or 3.")
    if n_devices < 1:
        raise SLMLabError(f"n_devices={n_devices} must be at least 1.")
    parts = state_bytes(n_params, precision)
    sharded = {"weights": stage >= 3, "gradients": stage >= 2}
    return sum(b / n_devices if sharded.get(name, stage >= 1) else b for name, b in parts.items())


def activation_bytes(cfg: SLMConfig, batch: int, context: int, bytes_per_value: int = 4) -> int:
    """Bytes autograd saves for backward in one training forward of the course's Llama model (dropout 0).

    Per token and layer: each RMSNorm keeps its input, the normalised x and the output (3·D), and 1/rms (1);
    attention keeps q, k and v after RoPE (k and v repeated to all H heads when grouped) and its output
    (4·H·hd), plus the softmax's log-sum-exp (H); SwiGLU keeps gate(x), silu(gate(x)), up(x) and their product
    (4·d_ff). RoPE's inputs are not kept: multiplying by a constant table needs only the table. After the
    blocks: the final norm (3·D + 1), the log-softmax of the logits (V), and the int64 ids and targets.
    """
    if cfg.family != "llama" or cfg.dropout:
        raise SLMLabError("activation_bytes counts the Llama family without dropout, the course's models.")
    D, H, hd, F, V = cfg.d_model, cfg.n_head, cfg.head_dim, cfg.d_ff, cfg.vocab_size
    per_layer = 2 * (3 * D + 1) + 4 * H * hd + H + 4 * F
    per_token = bytes_per_value * (cfg.n_layer * per_layer + 3 * D + 1 + V) + 2 * 8
    return batch * context * per_token


def saved_activation_bytes(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    """Measured: bytes of the distinct tensors autograd saves during model(x, y)'s forward pass (weights and
    buffers excluded; tensors sharing memory counted once)."""
    storages: dict[int, int] = {}
    own = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        if s.data_ptr() not in own:
            storages[s.data_ptr()] = max(storages.get(s.data_ptr(), 0), s.nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x, y).loss.backward()
    return sum(storages.values())


def state_bytes_held(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, int]:
    """Measured after an optimizer step: bytes of the weights, their gradients and the optimizer's tensors."""
    params = [p for p in model.parameters() if p.requires_grad]
    moments = [t for state in optimizer.state.values() for t in state.values()
               if torch.is_tensor(t) and t.dim() > 0]
    return {"weights": sum(p.numel() * p.element_size() for p in params),
            "gradients": sum(p.grad.numel() * p.grad.element_size() for p in params if p.grad is not None),
            "adam moments": sum(t.numel() * t.element_size() for t in moments)}
