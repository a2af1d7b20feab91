"""Checks for lab 09 — attention kernels: merging softmax statistics, tiled attention, the Triton kernel.

Each check compares with the package's float64 softmax attention (`slm_lab.kernels`: naive_attention,
attention_scores for the log-sum-exp, softmax_stats and merge_softmax_stats) on fresh random inputs and
names the classic FlashAttention mistakes in one line: an accumulator (or sum) not rescaled when the
max grows, the max not subtracted (overflow for large scores), the causal mask off by one, the wrong
final normalisation, a log-sum-exp in the wrong base — and, for tiled attention, the full N×N score
matrix held in memory after all.
"""
from __future__ import annotations

import inspect
import math
import warnings

import torch

from .. import kernels as package
from . import call, expect_tensor, fail, forbids, passed


# ------------------------------------------------------- references and mistakes ----
def _reference(q, k, v, causal=False):
    """The package's attention in float64 and its natural log-sum-exp: (out (B, H, N, dv), lse (B, H, N))."""
    q, k, v = (t.double() for t in (q, k, v))
    return package.naive_attention(q, k, v, causal=causal), package.attention_scores(q, k, causal).logsumexp(-1)


def _mistake_tiled(q, k, v, causal, bq, bk, rescale_acc=True, rescale_l=True):
    """Tiled attention with a rescale left out on purpose — what a mistaken kernel computes (float64)."""
    B, H, N, d = q.shape
    s_all = package.attention_scores(q.double(), k.double(), causal)
    out = torch.empty(B, H, N, v.shape[-1], dtype=torch.float64, device=q.device)
    for q0 in range(0, N, bq):
        m = torch.full((B, H, min(bq, N - q0)), float("-inf"), dtype=torch.float64, device=q.device)
        l = torch.zeros_like(m)
        acc = torch.zeros(*m.shape, v.shape[-1], dtype=torch.float64, device=q.device)
        for k0 in range(0, min(N, q0 + bq) if causal else N, bk):
            s = s_all[:, :, q0:q0 + bq, k0:k0 + bk]
            m_new = torch.maximum(m, s.amax(-1))
            p = torch.exp(s - m_new[..., None])
            alpha = torch.exp(m - m_new)
            l = (alpha * l if rescale_l else l) + p.sum(-1)
            acc = (alpha[..., None] * acc if rescale_acc else acc) + p @ v[:, :, k0:k0 + bk].double()
            m = m_new
        out[:, :, q0:q0 + bq] = acc / l[..., None]
    return out


def _qkv(B=1, H=2, N=50, d=16, seed=0, scale=1.0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(B, H, N, d, generator=g) * scale).to(device) for _ in range(3)]


def _close(a, b, atol):
    return isinstance(a, torch.Tensor) and a.shape == b.shape and bool(
        torch.allclose(a.detach().double().cpu(), b.detach().double().cpu(), atol=atol, rtol=atol))


def _err(a, b):
    return (a.detach().double().cpu() - b.detach().double().cpu()).abs().nan_to_num(float("inf")).max().item()


# ------------------------------------------------------------- 09.merge ----
@forbids("slm_lab.kernels.tiled.merge_softmax_stats")
def check_merge(merge_softmax_stats) -> None:
    """merge_softmax_stats(m1, l1, acc1, m2, l2, acc2) → (m, l, acc): two key blocks' statistics as one."""
    what = "merge_softmax_stats"
    g = torch.Generator().manual_seed(0)

    def blocks(scale=1.0, shift=0.0):
        s = torch.randn(3, 6, 20, generator=g) * scale
        s[..., 10:] += shift                                         # block 2 has the larger max
        v = torch.randn(3, 20, 5, generator=g)
        b1 = package.softmax_stats(s[..., :10].double(), v[:, :10].double())
        b2 = package.softmax_stats(s[..., 10:].double(), v[:, 10:].double())
        return s, v, tuple(t.float() for t in b1), tuple(t.float() for t in b2)   # float32, like a kernel

    s, v, b1, b2 = blocks(shift=2.0)
    ref_m, ref_l, ref_acc = package.merge_softmax_stats(*(t.double() for t in (*b1, *b2)))
    full = torch.softmax(s, dim=-1) @ v                               # attention over both blocks at once
    _, _, big1, big2 = blocks(scale=60.0, shift=40.0)
    got = call(merge_softmax_stats, *b1, *b2, what=what)
    if not isinstance(got, (tuple, list)) or len(got) != 3:
        fail(f"{what} should return three tensors (m, l, acc), got {type(got).__name__}.")
    m, l, acc = got
    expect_tensor(m, what=f"{what}: m", shape=ref_m.shape)
    expect_tensor(l, what=f"{what}: l", shape=ref_l.shape)
    expect_tensor(acc, what=f"{what}: acc", shape=ref_acc.shape)
    big = call(merge_softmax_stats, *big1, *big2, what=what)
    if not all(torch.isfinite(t).all() for t in big[1:]):
        fail(f"{what}: NaN/inf for large scores (max ≈ 200, float32) — exp(m1) overflows; rescale with exp(m1 - m) "
             "and exp(m2 - m), where m = max(m1, m2), so the factors stay ≤ 1.")
    if not _close(m, ref_m, 1e-6):
        fail(f"{what}: m should be the larger of the two maxima, torch.maximum(m1, m2).")
    if not _close(l, ref_l, 1e-5):
        if _close(l, b1[1] + b2[1], 1e-5):
            fail(f"{what}: l is not rescaled — l1 and l2 were summed against different maxima; "
                 "l = exp(m1 - m)·l1 + exp(m2 - m)·l2.")
        fail(f"{what}: l is off by up to {_err(l, ref_l):.3g}; l = exp(m1 - m)·l1 + exp(m2 - m)·l2 with m = max(m1, m2).")
    if not _close(acc, ref_acc, 1e-5):
        if _close(acc, b1[2] + b2[2], 1e-5):
            fail(f"{what}: the accumulator is not rescaled — acc1 and acc2 were summed against different maxima; "
                 "acc = exp(m1 - m)·acc1 + exp(m2 - m)·acc2 (each row scaled: [..., None]).")
        fail(f"{what}: acc is off by up to {_err(acc, ref_acc):.3g}; acc = exp(m1 - m)·acc1 + exp(m2 - m)·acc2, "
             "each row scaled by its own factor ([..., None]).")
    if not _close(acc / l[..., None], full, 1e-5):
        fail(f"{what}: acc / l does not equal softmax(scores) @ v over both blocks.")
    masked = (torch.full_like(b2[0], float("-inf")), torch.zeros_like(b2[1]), torch.zeros_like(b2[2]))
    m3, l3, acc3 = call(merge_softmax_stats, *b1, *masked, what=what)
    if not (torch.isfinite(l3).all() and torch.isfinite(acc3).all()):
        fail(f"{what}: merging with a fully masked block (m2 = -inf, l2 = 0, acc2 = 0) gave NaN — "
             "its factor exp(m2 - m) should be 0.")
    if not (_close(l3, b1[1], 1e-6) and _close(acc3, b1[2], 1e-6)):
        fail(f"{what}: merging with a fully masked block must leave block 1 unchanged.")
    passed("merging softmax statistics", "max, rescaled sum and accumulator, large scores, masked block")


# ----------------------------------------------- shared: tiled attention and the kernel ----
def _padded_keys(q, k, v, bk):
    """The mistake of not masking keys j ≥ N in the last key tile: zero keys and values up to a multiple of bk."""
    N = k.shape[-2]
    pad = -N % bk
    k, v = (torch.cat([t, t.new_zeros(*t.shape[:-2], pad, t.shape[-1])], -2) for t in (k, v))
    return package.naive_attention(q.double(), k.double(), v.double())


def _diagnose(attend, what: str, *, multi: tuple[int, int], single: int, device: str = "cpu",
              atol: float = 1e-4, shape: tuple[int, int, int, int] = (1, 2, 50, 16), seed: int = 0) -> None:
    """Run attend(q, k, v, causal, block_q, block_k) → (out, lse) through the probes, first problem wins."""
    B, H, N, d = shape
    q, k, v = _qkv(B, H, N, d, seed=seed, device=device)
    qb, kb, vb = _qkv(B, H, N, d, seed=seed + 1, scale=12.0, device=device)
    ref_out, ref_lse = _reference(q, k, v)
    ref_b, _ = _reference(qb, kb, vb)
    ref_c, ref_lse_c = _reference(q, k, v, causal=True)
    row_max = package.attention_scores(q.double(), k.double()).amax(-1)

    def run(q, k, v, causal, bq, bk, label=""):
        got = call(attend, q, k, v, causal, bq, bk, what=what)
        if not isinstance(got, (tuple, list)) or len(got) != 2:
            fail(f"{what} should return (out, lse), got {type(got).__name__}.")
        out, lse = got
        expect_tensor(out, what=f"{what}{label}: out", shape=q.shape)
        expect_tensor(lse, what=f"{what}{label}: lse", shape=q.shape[:-1])
        return out, lse

    # 1. one key tile (the max cannot change): only the normalisation can be wrong
    ones = torch.ones_like(v)
    out1, _ = run(q, k, ones, False, single, single, " (one tile)")
    if torch.isnan(out1).any():
        fail(f"{what}: NaN with a single key tile — check the division by l (is l zero?).")
    if not _close(out1, ones, atol) and -N % single and _close(out1, _padded_keys(q, k, ones, single), atol):
        fail(f"{what}: keys beyond N are not masked — the last key tile reads past the end (zeros, from other=0.0) "
             "and their exp(0 - m) counts in l; set the scores of columns ≥ N to -inf.")
    if not _close(out1, ones, atol):
        fail(f"{what}: wrong final normalisation — with v = 1 every output must be 1; divide acc by l "
             "(the running sum of exp), once, after the last key tile.")
    out1, lse1 = run(q, k, v, False, single, single, " (one tile)")
    if not _close(out1, ref_out, atol):
        fail(f"{what} with one key tile: values are off by up to {_err(out1, ref_out):.3g} — "
             "scores are q·kᵀ / sqrt(head_dim), p = exp(scores - m), out = (p @ v) / l.")
    # 2. many tiles: the running max grows from tile to tile
    bq, bk = multi
    out, lse = run(q, k, v, False, bq, bk)
    if torch.isnan(out).any():
        fail(f"{what}: NaN with several key tiles (block_q={bq}, block_k={bk}) — "
             "check the tile bounds of the last, shorter tile.")
    if not _close(out, ref_out, atol):
        if _close(out, _mistake_tiled(q, k, v, False, bq, bk, rescale_acc=False), atol):
            fail(f"{what}: the accumulator is not rescaled — when the running max grows from m to m_new, "
                 "multiply acc (not only l) by exp(m - m_new) before adding p @ v.")
        if _close(out, _mistake_tiled(q, k, v, False, bq, bk, rescale_l=False), atol) or \
           _close(out, _mistake_tiled(q, k, v, False, bq, bk, rescale_acc=False, rescale_l=False), atol):
            fail(f"{what}: the running sum l is not rescaled — when the max grows from m to m_new, "
                 "l = l·exp(m - m_new) + sum(p), and the same factor multiplies acc.")
        out_ones, _ = run(q, k, torch.ones_like(v), False, bq, bk)
        if not _close(out_ones, torch.ones_like(v), atol):
            fail(f"{what}: wrong final normalisation across tiles — with v = 1 the output must be 1; "
                 "divide acc by the final running sum l (all key tiles), once, after the loop.")
        fail(f"{what}: values are off by up to {_err(out, ref_out):.3g} with block_q={bq}, block_k={bk} "
             "(correct with one tile: check how tiles are sliced and combined).")
    # 3. large scores: exp overflows unless the running max is subtracted
    outb, _ = run(qb, kb, vb, False, bq, bk, " (large inputs)")
    if not torch.isfinite(outb).all():
        fail(f"{what}: NaN/inf for large inputs (scores up to ~1000) — exp overflows; subtract the running "
             "max before exp: p = exp(s - m_new).")
    if not _close(outb, ref_b, 10 * atol):
        fail(f"{what} (large inputs): values are off by up to {_err(outb, ref_b):.3g}.")
    if not _close(lse, ref_lse, atol):
        if _close(lse * math.log(2), ref_lse, atol):
            fail(f"{what}: lse is in base 2 — multiply by ln 2 to get the natural log-sum-exp.")
        if _close(lse + row_max.to(lse.device), ref_lse, atol):
            fail(f"{what}: lse misses the max — the log-sum-exp is m + log(l), not log(l).")
        fail(f"{what}: lse is off by up to {_err(lse, ref_lse):.3g}; lse = m + log(l) in natural log.")
    # 4. causal: the diagonal, the next token, tiles after the diagonal
    outc, lsec = run(q, k, v, True, bq, bk, " (causal)")
    if torch.isnan(outc).any():
        rows = torch.isnan(outc).any(-1).any(0).any(0).nonzero().flatten().tolist()
        fail(f"{what} (causal): NaN at position {rows[0]} — a token must see itself: keep keys j ≤ i "
             "(the mask is off by one if it hides the diagonal).")
    for t in (0, bq - 1, bq, q.shape[-2] - 2):
        k2, v2 = k.clone(), v.clone()
        k2[:, :, t + 1] += 3.0
        v2[:, :, t + 1] -= 3.0
        out2, _ = run(q, k2, v2, True, bq, bk, " (causal)")
        if not _close(out2[:, :, : t + 1], outc[:, :, : t + 1], atol):
            fail(f"{what} (causal): the output at position {t} changed when only key {t + 1} changed — the mask "
                 "is off by one: query i may see keys j ≤ i, never j = i + 1.")
    if not _close(outc, ref_c, atol):
        fail(f"{what} (causal, block_q={bq}, block_k={bk}, N={N}): values are off by up to {_err(outc, ref_c):.3g} — "
             "a query tile needs the keys up to its last row, min(N, q0 + block_q), whatever block_k is; "
             "mask scores with j > i to -inf in the tiles that cross the diagonal, and skip only tiles that lie "
             "entirely after it.")
    if not _close(lsec, ref_lse_c, atol):
        fail(f"{what} (causal): lse is off by up to {_err(lsec, ref_lse_c):.3g} — masked keys must not count in l.")


# ------------------------------------------------------------- 09.tiled ----
def _largest_scores_tensor(fn, *args):
    """Run fn(*args) and return the largest numel of any tensor an op produced (None if unsupported)."""
    try:
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils._pytree import tree_leaves
    except ImportError:                                            # pragma: no cover - older torch
        return fn(*args), None
    sizes = []

    class Spy(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            res = func(*args, **(kwargs or {}))
            sizes.extend(t.numel() for t in tree_leaves(res) if isinstance(t, torch.Tensor))
            return res

    with Spy():
        res = fn(*args)
    return res, max(sizes, default=0)


@forbids("slm_lab.kernels.tiled.tiled_attention",
         "slm_lab.kernels.tiled.flash_attention",
         "slm_lab.kernels.naive.naive_attention",
         "torch.nn.functional.scaled_dot_product_attention")
def _largest_in_call(tiled_attention, q, k, v) -> int | None:
    """Where the student's function lives: the largest tensor any op made during a causal 16 × 16 call."""
    return _largest_scores_tensor(lambda: call(tiled_attention, q, k, v, causal=True, block_q=16, block_k=16,
                                               what="tiled_attention"))[1]


def check_tiled(tiled_attention) -> None:
    """tiled_attention(q, k, v, causal=False, block_q=32, block_k=32) → (out (B, H, N, d), lse (B, H, N))."""
    what = "tiled_attention"

    def attend(q, k, v, causal, bq, bk):
        return tiled_attention(q, k, v, causal=causal, block_q=bq, block_k=bk)

    _diagnose(attend, what, multi=(16, 16), single=64)
    # Tiles that are not square (either way), other shapes and head sizes: right only for 16 × 16 is not right.
    _diagnose(attend, what, multi=(32, 16), single=64, shape=(2, 3, 45, 8), seed=5)
    _diagnose(attend, what, multi=(8, 24), single=48, shape=(1, 2, 37, 32), seed=7)
    B, H, N = 1, 3, 96
    q, k, v = _qkv(B=B, H=H, N=N, seed=3)
    biggest = call(_largest_in_call, tiled_attention, q, k, v, what=what)
    if biggest is not None and biggest >= B * H * N * N:          # an (N × N) mask alone is allowed
        fail(f"{what}: an intermediate tensor has {biggest} elements, as many as the full (B, H, N, N) score "
             f"matrix ({B * H * N * N}); compute one (block_q × block_k) tile of scores at a time.")
    passed("tiled attention", "normalisation, rescaling, lse, causal mask, large inputs, no N×N tensor")


# ------------------------------------------------------------ 09.triton ----
def _launch(kernel, q, k, v, causal: bool, block_m: int, block_n: int):
    """Where the student's kernel lives: launch it (slm_lab.kernels.triton_flash.launch) → (out, lse)."""
    from ..errors import SLMLabError
    from ..kernels.triton_flash import launch, triton_available

    what = "attention kernel"
    if not triton_available():
        fail(f"{what}: Triton is not installed here — this exercise needs Linux (or Colab); the other checks still run.")
    if kernel is None or not hasattr(kernel, "fn") and not hasattr(kernel, "run"):
        fail(f"{what}: expected a @triton.jit function, got {type(kernel).__name__}; decorate it with @triton.jit.")
    source = inspect.getsource(getattr(kernel, "fn", kernel)) if hasattr(kernel, "fn") else ""
    try:
        with warnings.catch_warnings():                        # NumPy overflow noise from the interpreter
            warnings.simplefilter("ignore", RuntimeWarning)
            return launch(kernel, q, k, v, causal=causal, block_m=block_m, block_n=block_n)
    except SLMLabError as exc:
        fail(f"{what}: {exc}")
    except Exception as exc:                                   # the interpreter wraps the kernel's errors
        if isinstance(exc.__cause__, NotImplementedError) or "raise NotImplementedError" in source:
            raise NotImplementedError from exc
        cause = exc.__cause__ or exc
        fail(f"{what} raised {type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''}".rstrip(": "))


def check_triton_kernel(kernel) -> None:
    """kernel: a @triton.jit function with attn_fwd_kernel's signature
    (Q, K, V, O, LSE, N, sm_scale, HEAD_DIM, BLOCK_M, BLOCK_N, CAUSAL, UPCAST), launched by
    slm_lab.kernels.triton_flash.launch — under the interpreter on CPU, compiled on a GPU."""
    from ..kernels.triton_flash import interpreting

    what = "attention kernel"
    device = "cuda" if torch.cuda.is_available() and not interpreting() else "cpu"

    def attend(q, k, v, causal, bq, bk):
        return call(_launch, kernel, q, k, v, causal, bq, bk, what=what)

    atol = 1e-4 if device == "cpu" else 2e-3                       # GPU fp32 tl.dot uses TF32
    _diagnose(attend, what, multi=(32, 16), single=64, device=device, atol=atol)
    _diagnose(attend, what, multi=(16, 16), single=64, device=device, atol=atol, shape=(2, 1, 37, 32), seed=5)
    # Half precision: the interpreter's bfloat16 arithmetic is wrong unless what is loaded is cast to float32 under
    # UPCAST (on a GPU tl.dot takes bf16 directly); fp16 for the record, bf16 for the mistake.
    from ..kernels.triton_flash import bf16_supported

    for dtype in (torch.float16, torch.bfloat16) if bf16_supported(device) else (torch.float16,):   # not on a T4
        q, k, v = (t.to(dtype) for t in _qkv(1, 2, 40, 16, seed=9, device=device))
        ref_out, _ = _reference(q, k, v, causal=True)
        out, _ = attend(q, k, v, True, 32, 16)
        expect_tensor(out, what=f"{what} ({dtype}): out", shape=q.shape)
        if not _close(out, ref_out, 2e-2):
            name = str(dtype).removeprefix("torch.")
            fail(f"{what}: with {name} inputs values are off by up to {_err(out, ref_out):.3g} (float32 inputs pass) — "
                 "when UPCAST is set, cast q, k and v to float32 right after loading them (x.to(tl.float32)).")
    passed("Triton attention kernel", f"{'interpreter' if device == 'cpu' else 'compiled on the GPU'}: "
           "normalisation, rescaling, lse, causal mask, large inputs")


CHECKS = {"09.merge": check_merge, "09.tiled": check_tiled, "09.triton": check_triton_kernel}
