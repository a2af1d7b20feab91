"""Tiled attention with an online softmax (FlashAttention-style), in plain PyTorch.

Queries are cut into blocks of `block_q` rows and keys/values into blocks of `block_k` rows. For one
query block we visit the key blocks one at a time and keep three running statistics per query row:

    m    the largest score seen so far                       (B, H, bq)
    l    the sum of exp(score - m) over the keys seen so far (B, H, bq)
    acc  the sum of exp(score - m) · v, not yet divided by l (B, H, bq, dv)

When a new block raises the max from m to m', everything summed so far was computed against the
old max, so both l and acc are rescaled by exp(m - m'). After the last block out = acc / l, and
lse = m + log(l) is the log-sum-exp of the row — all the backward pass needs to rebuild the
softmax without storing it. Only a (bq, bk) tile of scores exists at a time: memory is linear in N.
"""
from __future__ import annotations

import math

import torch

from ..errors import SLMLabError
from .naive import check_qkv

__all__ = ["softmax_stats", "merge_softmax_stats", "tiled_attention", "tiled_attention_backward",
           "tile_schedule", "flash_attention"]


def softmax_stats(scores: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The statistics (m, l, acc) of one block of scores (..., bq, bk) with its values v (..., bk, dv).

    m = row max (..., bq); l = Σ exp(s - m) (..., bq); acc = exp(s - m) @ v (..., bq, dv).
    A row whose scores are all -inf (fully masked) gets m = -inf, l = 0, acc = 0.
    """
    m = scores.amax(dim=-1)
    p = torch.exp(scores - _finite(m)[..., None])
    return m, p.sum(dim=-1), p @ v


def merge_softmax_stats(m1: torch.Tensor, l1: torch.Tensor, acc1: torch.Tensor,
                        m2: torch.Tensor, l2: torch.Tensor, acc2: torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Combine the statistics of two blocks of keys into the statistics of both together.

    m (..., bq), l (..., bq), acc (..., bq, dv). Each side was summed against its own max, so each is
    rescaled to the common max m = max(m1, m2) before adding: exp(m1 - m) ≤ 1 never overflows.
    """
    m = torch.maximum(m1, m2)
    safe = _finite(m)                       # both sides -inf (fully masked): keep 0 · 0, not NaN
    a1, a2 = torch.exp(m1 - safe), torch.exp(m2 - safe)
    return m, a1 * l1 + a2 * l2, a1[..., None] * acc1 + a2[..., None] * acc2


def _finite(m: torch.Tensor) -> torch.Tensor:
    return m.masked_fill(torch.isinf(m) & (m < 0), 0.0)


def _check_blocks(block_q: int, block_k: int, what: str) -> None:
    for name, b in (("block_q", block_q), ("block_k", block_k)):
        if not isinstance(b, int) or b < 1:
            raise SLMLabError(f"{what}: {name}={b!r} must be a positive integer (a number of tokens per tile).")


def tile_schedule(n_q: int, n_k: int, block_q: int, block_k: int, causal: bool) -> torch.Tensor:
    """Which tiles a causal/non-causal pass computes: (⌈n_q/bq⌉, ⌈n_k/bk⌉) int tensor.

    2 = computed without a mask, 1 = computed with the causal (or sequence-end) mask, 0 = skipped
    because every (query, key) pair in it is masked — the work causal attention never does.
    """
    _check_blocks(block_q, block_k, "tile_schedule")
    rows, cols = -(-n_q // block_q), -(-n_k // block_k)
    grid = torch.zeros(rows, cols, dtype=torch.int64)
    for i in range(rows):
        q0, q1 = i * block_q, min((i + 1) * block_q, n_q)
        for j in range(cols):
            k0, k1 = j * block_k, min((j + 1) * block_k, n_k)
            if causal and k0 > q1 - 1:
                continue                                   # first key after the last query: all masked
            grid[i, j] = 1 if causal and k1 - 1 > q0 else 2
    return grid


def tiled_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False,
                    scale: float | None = None, block_q: int = 64, block_k: int = 64
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention one (block_q × block_k) tile at a time, never holding the N×S score matrix.

    q (B, H, N, d), k (B, H, S, d), v (B, H, S, dv) → out (B, H, N, dv) in q's dtype and
    lse (B, H, N) float32, the natural log-sum-exp of each row's scaled scores. Accumulates in
    float32; with `causal`, key tiles entirely after a query tile are skipped, not masked.
    """
    check_qkv(q, k, v, "tiled_attention")
    _check_blocks(block_q, block_k, "tiled_attention")
    B, H, N, d = q.shape
    S, dv = k.shape[-2], v.shape[-1]
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    out = torch.empty(B, H, N, dv, dtype=q.dtype, device=q.device)
    lse = torch.empty(B, H, N, dtype=torch.float32, device=q.device)
    for q0 in range(0, N, block_q):
        q1 = min(q0 + block_q, N)
        qi = q[:, :, q0:q1].float() * scale                            # (B, H, bq, d)
        m = torch.full((B, H, q1 - q0), float("-inf"), device=q.device)
        l = torch.zeros(B, H, q1 - q0, device=q.device)
        acc = torch.zeros(B, H, q1 - q0, dv, device=q.device)
        k_end = min(S, q1) if causal else S                            # later key tiles: all masked, skip
        for k0 in range(0, k_end, block_k):
            k1 = min(k0 + block_k, S)
            s = qi @ k[:, :, k0:k1].float().transpose(-2, -1)          # (B, H, bq, bk): the only scores held
            if causal and k1 - 1 > q0:                                 # tile crosses the diagonal
                keep = torch.arange(q0, q1, device=q.device)[:, None] >= torch.arange(k0, k1, device=q.device)
                s = s.masked_fill(~keep, float("-inf"))
            m_new = torch.maximum(m, s.amax(dim=-1))                    # finite: key 0 is in the first tile
            p = torch.exp(s - m_new[..., None])
            alpha = torch.exp(m - m_new)                                # rescales what was summed so far
            l = alpha * l + p.sum(dim=-1)
            acc = alpha[..., None] * acc + p @ v[:, :, k0:k1].float()
            m = m_new
        out[:, :, q0:q1] = (acc / l[..., None]).to(q.dtype)
        lse[:, :, q0:q1] = m + torch.log(l)
    return out, lse


def tiled_attention_backward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                             lse: torch.Tensor, dout: torch.Tensor, causal: bool = False,
                             scale: float | None = None, block_q: int = 64, block_k: int = 64
                             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients (dq, dk, dv) of tiled attention, recomputing each tile's softmax from lse.

    Shapes as in tiled_attention; dout like out. P = exp(s - lse) is rebuilt tile by tile, so the
    backward pass is linear in memory too. With D = rowsum(dout ∘ out):
    dv += Pᵀ dout, dP = dout vᵀ, dS = P ∘ (dP - D), dq += dS k · scale, dk += dSᵀ q · scale.
    """
    check_qkv(q, k, v, "tiled_attention_backward")
    _check_blocks(block_q, block_k, "tiled_attention_backward")
    if out.shape[:-1] != q.shape[:-1] or dout.shape != out.shape or lse.shape != q.shape[:-1]:
        raise SLMLabError(f"tiled_attention_backward: out {tuple(out.shape)}, dout {tuple(dout.shape)}, lse "
                          f"{tuple(lse.shape)} do not match q {tuple(q.shape)}; pass the forward pass's outputs.")
    N, S, d = q.shape[-2], k.shape[-2], q.shape[-1]
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    qf, kf, vf, do = q.float(), k.float(), v.float(), dout.float()
    D = (do * out.float()).sum(dim=-1)                                  # (B, H, N)
    dq, dk, dv = torch.zeros_like(qf), torch.zeros_like(kf), torch.zeros_like(vf)
    for k0 in range(0, S, block_k):                                     # outer loop over keys: dk, dv stay local
        k1 = min(k0 + block_k, S)
        kj, vj = kf[:, :, k0:k1], vf[:, :, k0:k1]
        for q0 in range(0, N, block_q):
            q1 = min(q0 + block_q, N)
            if causal and k0 > q1 - 1:
                continue
            s = (qf[:, :, q0:q1] @ kj.transpose(-2, -1)) * scale
            if causal and k1 - 1 > q0:
                keep = torch.arange(q0, q1, device=q.device)[:, None] >= torch.arange(k0, k1, device=q.device)
                s = s.masked_fill(~keep, float("-inf"))
            p = torch.exp(s - lse[:, :, q0:q1, None])                   # the softmax, rebuilt from lse
            dv[:, :, k0:k1] += p.transpose(-2, -1) @ do[:, :, q0:q1]
            ds = p * (do[:, :, q0:q1] @ vj.transpose(-2, -1) - D[:, :, q0:q1, None])
            dq[:, :, q0:q1] += (ds @ kj) * scale
            dk[:, :, k0:k1] += (ds.transpose(-2, -1) @ qf[:, :, q0:q1]) * scale
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


class _FlashAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, causal, scale, block_q, block_k, kernel):
        if kernel == "triton":
            from .triton_flash import triton_attention
            out, lse = triton_attention(q, k, v, causal=causal, scale=scale)
        else:
            out, lse = tiled_attention(q, k, v, causal=causal, scale=scale, block_q=block_q, block_k=block_k)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.args = (causal, scale, block_q, block_k, kernel)
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, lse = ctx.saved_tensors
        causal, scale, block_q, block_k, kernel = ctx.args
        if kernel == "triton":
            from .triton_flash import triton_attention_backward
            dq, dk, dv = triton_attention_backward(q, k, v, out, lse, dout, causal=causal, scale=scale)
        else:
            dq, dk, dv = tiled_attention_backward(q, k, v, out, lse, dout, causal=causal, scale=scale,
                                                  block_q=block_q, block_k=block_k)
        return dq, dk, dv, None, None, None, None, None


def flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False,
                    scale: float | None = None, block_q: int = 64, block_k: int = 64,
                    kernel: str = "tiled") -> torch.Tensor:
    """Differentiable tiled attention: forward and backward by `kernel` ('tiled': PyTorch, or 'triton'),
    the backward recomputing each tile's softmax from the log-sum-exp. q (B, H, N, d), k, v (B, H, S, ·)
    → (B, H, N, dv)."""
    if kernel not in ("tiled", "triton"):
        raise SLMLabError(f"flash_attention: kernel={kernel!r} is not one of 'tiled', 'triton'.")
    return _FlashAttention.apply(q, k, v, causal, scale, block_q, block_k, kernel)
