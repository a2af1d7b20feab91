"""Naive attention: the textbook formula that materialises every query-key score.

    out = softmax(q kᵀ / √d + mask) v

The score matrix has one entry per (query, key) pair, so for a sequence of N tokens it holds
B·H·N² numbers — memory that grows with the square of the context. This is the baseline the
tiled versions (tiled.py, triton_flash.py) must equal, while never holding that matrix.
"""
from __future__ import annotations

import math

import torch

from ..errors import SLMLabError

__all__ = ["naive_attention", "attention_scores", "check_qkv", "causal_mask", "attention_flops",
           "scores_bytes"]

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, what: str = "attention") -> None:
    """Raise SLMLabError (one sentence) unless q (B, H, N, d), k (B, H, S, d), v (B, H, S, dv) fit together."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise SLMLabError(f"{what}: {name} must be a torch.Tensor, got {type(t).__name__}.")
        if t.dim() != 4:
            raise SLMLabError(f"{what}: {name} has shape {tuple(t.shape)}; expected 4 dimensions "
                              "(batch, heads, tokens, head_dim) — add the missing axes with unsqueeze.")
        if t.dtype not in FLOAT_DTYPES:
            raise SLMLabError(f"{what}: {name} has dtype {t.dtype}; use float32, float16 or bfloat16.")
    if not (q.dtype == k.dtype == v.dtype):
        raise SLMLabError(f"{what}: q, k, v have dtypes {q.dtype}, {k.dtype}, {v.dtype}; cast them to one dtype.")
    if not (q.device == k.device == v.device):
        raise SLMLabError(f"{what}: q, k, v are on {q.device}, {k.device}, {v.device}; move them to one device.")
    if q.shape[:2] != k.shape[:2] or k.shape[:3] != v.shape[:3]:
        raise SLMLabError(f"{what}: shapes q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} do not fit; "
                          "batch and heads must match, and k and v need the same number of tokens.")
    if q.shape[-1] != k.shape[-1]:
        raise SLMLabError(f"{what}: q has head_dim {q.shape[-1]} but k has {k.shape[-1]}; they must be equal.")
    if k.shape[-2] == 0 or q.shape[-2] == 0:
        raise SLMLabError(f"{what}: got an empty sequence (q {tuple(q.shape)}, k {tuple(k.shape)}); "
                          "pass at least one token.")


def causal_mask(n_q: int, n_k: int, device=None) -> torch.Tensor:
    """(n_q, n_k) bool, True where query i may see key j: j ≤ i (top-left aligned, like SDPA's is_causal)."""
    return torch.ones(n_q, n_k, dtype=torch.bool, device=device).tril()


def attention_scores(q: torch.Tensor, k: torch.Tensor, causal: bool = False,
                     scale: float | None = None) -> torch.Tensor:
    """The scores q kᵀ · scale (default 1/√d) of q (B, H, N, d) and k (B, H, S, d) → (B, H, N, S); with
    `causal`, keys after their query are -inf. float32 (float64 for float64 inputs). Its logsumexp over
    the keys is the `lse` that the tiled kernels return."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    dtype = torch.promote_types(q.dtype, torch.float32)
    scores = (q.to(dtype) @ k.to(dtype).transpose(-2, -1)) * scale       # (B, H, N, S): the N² tensor
    if causal:
        scores.masked_fill_(~causal_mask(q.shape[-2], k.shape[-2], q.device), float("-inf"))
    return scores


def naive_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False,
                    scale: float | None = None) -> torch.Tensor:
    """softmax(q kᵀ · scale) v with the whole (B, H, N, S) score matrix in memory.

    q (B, H, N, d), k (B, H, S, d), v (B, H, S, dv) → (B, H, N, dv), same dtype as q.
    Softmax runs in float32, or float64 for float64 inputs (torch.softmax subtracts the row max, so
    large scores do not overflow).
    """
    check_qkv(q, k, v, "naive_attention")
    scores = attention_scores(q, k, causal, scale)
    return (torch.softmax(scores, dim=-1) @ v.to(scores.dtype)).to(q.dtype)


def attention_flops(batch: int, heads: int, n: int, head_dim: int, causal: bool = False) -> float:
    """Forward FLOPs of attention: two matmuls (q kᵀ and p v) of 2·N·N·d each; causal does half the work."""
    flops = 4.0 * batch * heads * n * n * head_dim
    return flops / 2 if causal else flops


def scores_bytes(batch: int, heads: int, n: int, dtype: torch.dtype = torch.float32) -> int:
    """Bytes of one materialised (B, H, N, N) score matrix — what naive attention holds (at least twice)."""
    return batch * heads * n * n * torch.finfo(dtype).bits // 8
