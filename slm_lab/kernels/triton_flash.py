"""A FlashAttention-2-style forward kernel in Triton, with its launcher (and a backward pass).

One Triton *program* computes one tile of BLOCK_M query rows for one (batch, head): it loads its
queries once, loops over the key/value tiles with the online softmax of tiled.py, and writes the
output rows and their log-sum-exp. Programs run in parallel on a GPU: a grid of
(⌈N / BLOCK_M⌉, batch · heads).

Without a GPU, Triton's *interpreter* runs the same kernel with NumPy, one program after another:
`TRITON_INTERPRET=1` must be set before a kernel is defined (decorated), so this module switches it
on at import when CUDA is absent. The interpreter has no bfloat16 arithmetic (NumPy lacks the type),
so the kernel casts what it loads to float32 when `UPCAST` is set, and the launcher lets it store
bf16 results as float32 (the interpreter's downcast truncates) and rounds them with torch. On a GPU
the tiles stay in fp16/bf16 and `tl.dot` runs on the tensor cores with float32 accumulation.

Importing this module never fails: without Triton (macOS, Windows) `triton_attention` raises one
SLMLabError saying how to get it, and tiled.py's PyTorch version still works everywhere.
"""
from __future__ import annotations

import math
import os

import torch

from ..errors import SLMLabError
from .naive import check_qkv

if not torch.cuda.is_available() and "TRITON_INTERPRET" not in os.environ:
    os.environ["TRITON_INTERPRET"] = "1"       # no GPU: kernels defined from here on are interpreted

try:
    import triton
    import triton.language as tl
except ImportError:                            # pragma: no cover - depends on the platform
    triton = tl = None

__all__ = ["triton_available", "interpreting", "triton_attention", "triton_attention_backward", "launch",
           "attn_fwd_kernel", "attn_bwd_dkdv_kernel", "attn_bwd_dq_kernel", "NO_TRITON"]

NO_TRITON = ("Triton is not installed here (it ships for Linux only); run `pip install 'slm_lab[kernels]'` "
             "on Linux or open the notebook in Colab — tiled_attention (PyTorch) works everywhere.")


def triton_available() -> bool:
    return triton is not None


def interpreting() -> bool:
    """True when Triton kernels run in the CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


BF16_CAPABILITY = (8, 0)    # Ampere: the first GPUs whose tensor cores (and so Triton's tl.dot) take bfloat16


def bf16_supported(device: torch.device | str | None = None) -> bool:
    """Whether the kernel can run in bfloat16 here: under the interpreter (which upcasts), or on a GPU of compute
    capability 8.0 or newer. Colab's free T4 (capability 7.5) has no bfloat16 in Triton: use float16 there."""
    if interpreting() or not torch.cuda.is_available():
        return True
    return torch.cuda.get_device_capability(device) >= BF16_CAPABILITY


if triton is not None:
    @triton.jit
    def _attend_tiles(acc, l_i, m_i, q, K, V, base, offs_m, offs_d, N, qk_scale, lo, hi,
                      HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, MASKED: tl.constexpr,
                      CAUSAL: tl.constexpr, UPCAST: tl.constexpr):
        """Fold key tiles [lo, hi) into the running (acc, l_i, m_i) of one query tile."""
        offs_n = tl.arange(0, BLOCK_N)
        for start_n in range(lo, hi, BLOCK_N):
            cols = start_n + offs_n                                             # key positions of this tile
            kv_off = base + cols[:, None] * HEAD_DIM + offs_d[None, :]
            if MASKED:                                                          # tail or diagonal tile
                k = tl.load(K + kv_off, mask=cols[:, None] < N, other=0.0)
                v = tl.load(V + kv_off, mask=cols[:, None] < N, other=0.0)
            else:                                                               # fully inside: no mask
                k = tl.load(K + kv_off)
                v = tl.load(V + kv_off)
            if UPCAST:                                                          # interpreter: no bf16 math
                k = k.to(tl.float32)
                v = v.to(tl.float32)
            s = tl.dot(q, tl.trans(k)) * qk_scale                               # (BLOCK_M, BLOCK_N), log2 units
            if MASKED:
                keep = cols[None, :] < N
                if CAUSAL:
                    keep = keep & (offs_m[:, None] >= cols[None, :])
                s = tl.where(keep, s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))                               # running max
            p = tl.math.exp2(s - m_new[:, None])                                # ≤ 1: never overflows
            alpha = tl.math.exp2(m_i - m_new)                                   # rescale the old sums
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None])                # acc·alpha + p @ v
            m_i = m_new
        return acc, l_i, m_i

    @triton.jit
    def attn_fwd_kernel(Q, K, V, O, LSE, N, sm_scale,
                        HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                        CAUSAL: tl.constexpr, UPCAST: tl.constexpr):
        """O[b, h, rows] = softmax(Q Kᵀ · sm_scale) V for one tile of BLOCK_M rows; LSE = log-sum-exp.

        Q, K, V, O: contiguous (B, H, N, HEAD_DIM); LSE: (B, H, N) float32.
        Grid: (⌈N / BLOCK_M⌉, B · H). BLOCK_M must be a multiple of BLOCK_N.
        """
        pid_m = tl.program_id(0)                                  # which query tile
        pid_bh = tl.program_id(1)                                 # which (batch, head)
        base = pid_bh.to(tl.int64) * N * HEAD_DIM                 # int64: B·H·N·d can pass 2³¹
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, HEAD_DIM)
        q_off = base + offs_m[:, None] * HEAD_DIM + offs_d[None, :]
        q = tl.load(Q + q_off, mask=offs_m[:, None] < N, other=0.0)
        if UPCAST:
            q = q.to(tl.float32)
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
        qk_scale = sm_scale * 1.4426950408889634                  # log2(e): exp(x) = exp2(x·log2 e), one instruction
        if CAUSAL:
            full_end = pid_m * BLOCK_M                            # tiles left of the diagonal: all visible
            hi = tl.minimum(full_end + BLOCK_M, N)                # tiles right of it: skipped entirely
        else:
            full_end = (N // BLOCK_N) * BLOCK_N                   # whole tiles; the ragged tail is masked
            hi = N
        acc, l_i, m_i = _attend_tiles(acc, l_i, m_i, q, K, V, base, offs_m, offs_d, N, qk_scale,
                                      0, full_end, HEAD_DIM, BLOCK_N, False, CAUSAL, UPCAST)
        acc, l_i, m_i = _attend_tiles(acc, l_i, m_i, q, K, V, base, offs_m, offs_d, N, qk_scale,
                                      full_end, hi, HEAD_DIM, BLOCK_N, True, CAUSAL, UPCAST)
        acc = acc / l_i[:, None]                                  # normalise once, at the end
        tl.store(O + q_off, acc.to(O.dtype.element_ty), mask=offs_m[:, None] < N)
        lse = (m_i + tl.math.log2(l_i)) * 0.6931471805599453      # back to natural log
        tl.store(LSE + pid_bh * N + offs_m, lse, mask=offs_m < N)
    @triton.jit
    def attn_bwd_dkdv_kernel(Q, K, V, DO, LSE, DELTA, DK, DV, N, sm_scale,
                             HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                             CAUSAL: tl.constexpr, UPCAST: tl.constexpr):
        """dK, dV for one tile of BLOCK_N keys: loop over the query tiles that can see them.

        P = exp(S - LSE) is rebuilt per tile; DELTA = rowsum(dO ∘ O). Grid: (⌈N / BLOCK_N⌉, B · H).
        """
        pid_n = tl.program_id(0)
        pid_bh = tl.program_id(1)
        base = pid_bh.to(tl.int64) * N * HEAD_DIM
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_m = tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, HEAD_DIM)
        kv_off = base + offs_n[:, None] * HEAD_DIM + offs_d[None, :]
        k = tl.load(K + kv_off, mask=offs_n[:, None] < N, other=0.0)
        v = tl.load(V + kv_off, mask=offs_n[:, None] < N, other=0.0)
        if UPCAST:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
        dk = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
        dv = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
        lo = 0
        if CAUSAL:
            lo = (pid_n * BLOCK_N // BLOCK_M) * BLOCK_M              # earlier queries cannot see these keys
        for start_m in range(lo, N, BLOCK_M):
            rows = start_m + offs_m
            q_off = base + rows[:, None] * HEAD_DIM + offs_d[None, :]
            q = tl.load(Q + q_off, mask=rows[:, None] < N, other=0.0)
            do = tl.load(DO + q_off, mask=rows[:, None] < N, other=0.0)
            if UPCAST:
                q = q.to(tl.float32)
                do = do.to(tl.float32)
            lse = tl.load(LSE + pid_bh * N + rows, mask=rows < N, other=0.0)
            delta = tl.load(DELTA + pid_bh * N + rows, mask=rows < N, other=0.0)
            keep = (rows[:, None] < N) & (offs_n[None, :] < N)
            if CAUSAL:
                keep = keep & (rows[:, None] >= offs_n[None, :])
            p = tl.where(keep, tl.exp(tl.dot(q, tl.trans(k)) * sm_scale - lse[:, None]), 0.0)   # (BLOCK_M, BLOCK_N)
            dv += tl.dot(tl.trans(p).to(do.dtype), do)
            ds = p * (tl.dot(do, tl.trans(v)) - delta[:, None])
            dk += tl.dot(tl.trans(ds).to(q.dtype), q)
        tl.store(DK + kv_off, (dk * sm_scale).to(DK.dtype.element_ty), mask=offs_n[:, None] < N)
        tl.store(DV + kv_off, dv.to(DV.dtype.element_ty), mask=offs_n[:, None] < N)

    @triton.jit
    def attn_bwd_dq_kernel(Q, K, V, DO, LSE, DELTA, DQ, N, sm_scale,
                           HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                           CAUSAL: tl.constexpr, UPCAST: tl.constexpr):
        """dQ for one tile of BLOCK_M queries: loop over the key tiles it sees. Grid: (⌈N / BLOCK_M⌉, B · H)."""
        pid_m = tl.program_id(0)
        pid_bh = tl.program_id(1)
        base = pid_bh.to(tl.int64) * N * HEAD_DIM
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, HEAD_DIM)
        q_off = base + offs_m[:, None] * HEAD_DIM + offs_d[None, :]
        q = tl.load(Q + q_off, mask=offs_m[:, None] < N, other=0.0)
        do = tl.load(DO + q_off, mask=offs_m[:, None] < N, other=0.0)
        if UPCAST:
            q = q.to(tl.float32)
            do = do.to(tl.float32)
        lse = tl.load(LSE + pid_bh * N + offs_m, mask=offs_m < N, other=0.0)
        delta = tl.load(DELTA + pid_bh * N + offs_m, mask=offs_m < N, other=0.0)
        dq = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
        hi = N
        if CAUSAL:
            hi = tl.minimum((pid_m + 1) * BLOCK_M, N)                 # later keys: all masked
        for start_n in range(0, hi, BLOCK_N):
            cols = start_n + offs_n
            kv_off = base + cols[:, None] * HEAD_DIM + offs_d[None, :]
            k = tl.load(K + kv_off, mask=cols[:, None] < N, other=0.0)
            v = tl.load(V + kv_off, mask=cols[:, None] < N, other=0.0)
            if UPCAST:
                k = k.to(tl.float32)
                v = v.to(tl.float32)
            keep = (offs_m[:, None] < N) & (cols[None, :] < N)
            if CAUSAL:
                keep = keep & (offs_m[:, None] >= cols[None, :])
            p = tl.where(keep, tl.exp(tl.dot(q, tl.trans(k)) * sm_scale - lse[:, None]), 0.0)
            ds = p * (tl.dot(do, tl.trans(v)) - delta[:, None])
            dq += tl.dot(ds.to(k.dtype), k)
        tl.store(DQ + q_off, (dq * sm_scale).to(DQ.dtype.element_ty), mask=offs_m[:, None] < N)
else:                                                             # pragma: no cover
    attn_fwd_kernel = attn_bwd_dkdv_kernel = attn_bwd_dq_kernel = None


_AUTOTUNED = None


def _autotuned():
    """The kernel with autotuned tile sizes (GPU only: autotuning times each config on the device)."""
    global _AUTOTUNED
    if _AUTOTUNED is None:
        # A short list, since each config compiles once per dtype, head dim and causal flag: tile shapes
        # from the range Triton's fused-attention tutorial searches (not tuned here: no GPU was available).
        configs = [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
                   for bm, bn, w, s in ((64, 32, 4, 3), (64, 64, 4, 3), (64, 64, 4, 4), (128, 32, 4, 3),
                                        (128, 64, 4, 3), (128, 64, 8, 3), (128, 64, 8, 4), (128, 128, 8, 3))]
        _AUTOTUNED = triton.autotune(configs, key=["N", "HEAD_DIM", "CAUSAL"])(attn_fwd_kernel)
    return _AUTOTUNED


def _check_launch(q, k, v, block_m, block_n, what):
    if triton is None:
        raise SLMLabError(NO_TRITON)
    check_qkv(q, k, v, what)
    if not (q.shape == k.shape == v.shape):
        raise SLMLabError(f"{what}: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} must have one shape "
                          "(self-attention with equal head dims); use tiled_attention for other cases.")
    d = q.shape[-1]
    if d < 16 or d > 256 or d & (d - 1):
        raise SLMLabError(f"{what}: head_dim {d} is not a power of two between 16 and 256 (tl.arange and tl.dot "
                          "need one); pad the head dim or use tiled_attention.")
    for name, b in (("block_m", block_m), ("block_n", block_n)):
        if b is not None and (not isinstance(b, int) or b < 16 or b & (b - 1)):
            raise SLMLabError(f"{what}: {name}={b!r} must be a power of two ≥ 16 (the smallest tl.dot tile).")
    if block_m is not None and block_n is not None and block_m % block_n:
        raise SLMLabError(f"{what}: block_m={block_m} must be a multiple of block_n={block_n} so the causal "
                          "diagonal starts on a key-tile boundary.")
    if q.device.type != "cuda" and not interpreting():
        raise SLMLabError(f"{what}: the tensors are on {q.device} but the Triton interpreter is off; set "
                          "TRITON_INTERPRET=1 before the kernel is defined (restart, set it, then import) or use a GPU.")
    if q.dtype == torch.bfloat16 and not bf16_supported(q.device):
        major, minor = torch.cuda.get_device_capability(q.device)
        raise SLMLabError(f"{what}: this GPU (compute capability {major}.{minor}) has no bfloat16 in Triton; "
                          "use float16 or float32 (bf16 needs 8.0, Ampere or newer).")


def launch(kernel, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False,
           scale: float | None = None, block_m: int | None = None, block_n: int | None = None
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Run a kernel with attn_fwd_kernel's signature on q, k, v (B, H, N, d) → (out (B, H, N, d), lse (B, H, N)).

    `kernel` is attn_fwd_kernel or a student's kernel with the same arguments. Block sizes default
    to 64 × 64 (interpreter, or an explicit GPU launch); pass kernel=None on a GPU to autotune them.
    """
    _check_launch(q, k, v, block_m, block_n, "triton_attention")
    B, H, N, d = q.shape
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    upcast = interpreting()
    # The interpreter's float32 → bfloat16 cast truncates instead of rounding: store float32, round with torch.
    store = torch.float32 if upcast and q.dtype == torch.bfloat16 else q.dtype
    out = torch.empty(q.shape, dtype=store, device=q.device)
    lse = torch.empty(B, H, N, dtype=torch.float32, device=q.device)
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    if kernel is None and not upcast:
        if block_m is not None or block_n is not None:
            raise SLMLabError("triton_attention: autotuning picks the block sizes; "
                              "pass block_m/block_n with a kernel, not both.")
        grid = lambda meta: (triton.cdiv(N, meta["BLOCK_M"]), B * H)  # noqa: E731
        _autotuned()[grid](q, k, v, out, lse, N, scale, HEAD_DIM=d, CAUSAL=bool(causal), UPCAST=False)
        return out, lse
    kernel = attn_fwd_kernel if kernel is None else kernel
    block_m, block_n = block_m or 64, block_n or 64
    if block_m % block_n:
        raise SLMLabError(f"triton_attention: block_m={block_m} must be a multiple of block_n={block_n}.")
    kernel[(triton.cdiv(N, block_m), B * H)](q, k, v, out, lse, N, scale, HEAD_DIM=d, BLOCK_M=block_m,
                                              BLOCK_N=block_n, CAUSAL=bool(causal), UPCAST=upcast)
    return out.to(q.dtype), lse


def triton_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False,
                     scale: float | None = None, block_m: int | None = None, block_n: int | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """FlashAttention-2-style forward in Triton: q, k, v (B, H, N, d) → (out (B, H, N, d), lse (B, H, N) fp32).

    On a GPU with no block sizes given, the tile sizes are autotuned; under the interpreter
    (CPU) the kernel runs with 64 × 64 tiles unless told otherwise.
    """
    if block_m is None and block_n is None and not interpreting() and q.is_cuda:
        return launch(None, q, k, v, causal, scale)
    return launch(attn_fwd_kernel, q, k, v, causal, scale, block_m, block_n)


def triton_attention_backward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                              lse: torch.Tensor, dout: torch.Tensor, causal: bool = False,
                              scale: float | None = None, block_m: int = 64, block_n: int = 64
                              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients (dq, dk, dv) in Triton, recomputing P from lse: two kernels, one per key tile
    (dk, dv) and one per query tile (dq), so no program writes where another does.

    q, k, v, out, dout: (B, H, N, d); lse: (B, H, N) float32 from the forward pass.
    """
    _check_launch(q, k, v, block_m, block_n, "triton_attention_backward")
    if out.shape != q.shape or dout.shape != q.shape or lse.shape != q.shape[:-1]:
        raise SLMLabError(f"triton_attention_backward: out {tuple(out.shape)}, dout {tuple(dout.shape)}, lse "
                          f"{tuple(lse.shape)} do not match q {tuple(q.shape)}; pass the forward pass's outputs.")
    B, H, N, d = q.shape
    q, k, v, dout = q.contiguous(), k.contiguous(), v.contiguous(), dout.contiguous()
    lse = lse.float().contiguous()
    delta = (dout.float() * out.float()).sum(-1).contiguous()        # (B, H, N): rowsum(dO ∘ O)
    upcast = interpreting()
    store = torch.float32 if upcast and q.dtype == torch.bfloat16 else q.dtype
    dq, dk, dv = (torch.empty(q.shape, dtype=store, device=q.device) for _ in range(3))
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    meta = dict(HEAD_DIM=d, BLOCK_M=block_m, BLOCK_N=block_n, CAUSAL=bool(causal), UPCAST=upcast)
    attn_bwd_dkdv_kernel[(triton.cdiv(N, block_n), B * H)](q, k, v, dout, lse, delta, dk, dv, N, scale, **meta)
    attn_bwd_dq_kernel[(triton.cdiv(N, block_m), B * H)](q, k, v, dout, lse, delta, dq, N, scale, **meta)
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)
