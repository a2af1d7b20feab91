"""Checks for lab 02 — build and train an SLM: attention, RMSNorm, RoPE, a training step, top-k."""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F

from . import call, expect_close, expect_tensor, fail, passed


# ------------------------------------------------------------------ references ----
def ref_attention(q, k, v, scale: bool = True, diagonal: int = 0):
    T, S = q.shape[-2], k.shape[-2]
    scores = q @ k.transpose(-2, -1)
    if scale:
        scores = scores / math.sqrt(q.shape[-1])
    mask = torch.ones(T, S, dtype=torch.bool).tril(diagonal=diagonal)
    return torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1) @ v


def ref_rmsnorm(x, weight, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def ref_rope(x, theta=10000.0, interleaved=False, direction=1.0):
    T, hd = x.shape[-2], x.shape[-1]
    inv = 1.0 / theta ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd)
    ang = direction * torch.outer(torch.arange(T, dtype=torch.float64), inv)   # (T, hd/2)
    cos, sin = ang.cos().to(x.dtype), ang.sin().to(x.dtype)
    if interleaved:
        x1, x2 = x[..., 0::2], x[..., 1::2]
        out = torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
        return out.flatten(-2)
    x1, x2 = x[..., : hd // 2], x[..., hd // 2:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


def ref_top_k(logits, k):
    kth = torch.topk(logits, min(k, logits.shape[-1]), dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def _close(a, b, atol=1e-5):
    return isinstance(a, torch.Tensor) and a.shape == b.shape and torch.allclose(a.double(), b.double(), atol=atol, rtol=1e-4)


def _qkv(B=2, H=3, T=7, hd=16, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, H, T, hd, generator=g) * scale for _ in range(3)]


# ------------------------------------------------------------------- checks ----
def check_attention(causal_attention) -> None:
    """causal_attention(q, k, v) with q, k, v of shape (B, H, T, hd) → (B, H, T, hd)."""
    what = "causal_attention"
    q, k, v = _qkv()
    out = call(causal_attention, q, k, v, what=what)
    expect_tensor(out, what=what, shape=q.shape, dtype=torch.float32)
    if torch.isnan(out[..., 0, :]).any():
        fail(f"{what}: position 0 returned NaN — every token must attend at least to itself; the mask is off by one (use tril, keep the diagonal).")
    # Changing keys/values after position 3 must not change outputs at positions 0..3.
    k2, v2 = k.clone(), v.clone()
    k2[:, :, 4:] += 5.0
    v2[:, :, 4:] -= 5.0
    out2 = call(causal_attention, q, k2, v2, what=what)
    changed = (out2[:, :, :4] - out[:, :, :4]).abs().amax(dim=(0, 1, 3))
    if (changed > 1e-5).any():
        t = int((changed > 1e-5).nonzero()[0])
        fail(f"{what}: future positions visible — the output at position {t} changed when only later keys/values changed; mask scores above the diagonal with -inf.")
    ones = torch.ones_like(v)
    avg = call(causal_attention, q, k, ones, what=what)
    if not torch.allclose(avg, ones, atol=1e-5):
        fail(f"{what}: attention weights are not normalised — with v = 1 the output should be all ones; take the softmax over the last dimension (the keys).")
    ref = ref_attention(q, k, v)
    if not _close(out, ref):
        if _close(out, ref_attention(q, k, v, scale=False)):
            fail(f"{what}: missing the 1/sqrt(head_dim) scaling of the scores.")
        if _close(out, ref_attention(q, k, v, diagonal=-1).nan_to_num(0.0)) or torch.isnan(out).any():
            fail(f"{what}: a token cannot see itself — the mask is off by one (keep the diagonal).")
        expect_close(out, ref, what=what)
    big = call(causal_attention, *_qkv(seed=1, scale=30.0), what=what)
    if not torch.isfinite(big).all():
        fail(f"{what}: NaN/inf for large inputs — exp overflows; subtract the row maximum before exp (torch.softmax does).")
    expect_close(big, ref_attention(*_qkv(seed=1, scale=30.0)), what=f"{what} (large inputs)", atol=1e-4)
    q, k, v = _qkv(B=1, H=2, T=1, hd=8, seed=2)
    expect_close(call(causal_attention, q, k, v, what=what), v, what=f"{what} with one token")
    passed("causal attention", "mask, scaling, normalisation, stability")


def check_rmsnorm(RMSNorm) -> None:
    """RMSNorm(dim, eps=1e-5): an nn.Module with a learnable `weight` (ones); normalises the last dim."""
    what = "RMSNorm"
    norm = call(RMSNorm, 16, what=f"{what}(16)")
    if not isinstance(norm, torch.nn.Module):
        fail(f"{what} should be an nn.Module subclass (class RMSNorm(nn.Module)).")
    w = getattr(norm, "weight", None)
    if not isinstance(w, torch.nn.Parameter) or tuple(w.shape) != (16,):
        fail(f"{what}(16) should have a learnable `weight` of shape (16,) — an nn.Parameter.")
    if not torch.allclose(w.detach(), torch.ones(16)):
        fail(f"{what}: initialise `weight` to ones so the layer starts as a pure normalisation.")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(16, generator=g) + 0.5)
    x = torch.randn(4, 5, 16, generator=g) * 3 + 1
    out = call(norm, x, what=what)
    expect_tensor(out, what=what, shape=x.shape)
    ref = ref_rmsnorm(x, norm.weight.detach(), 1e-5)
    if not _close(out, ref, atol=1e-4):
        if _close(out, F.layer_norm(x, (16,), norm.weight.detach(), eps=1e-5), atol=1e-4):
            fail(f"{what}: you subtracted the mean — that is LayerNorm; RMSNorm only divides by the root mean square.")
        if _close(out, ref_rmsnorm(x, torch.ones(16), 1e-5), atol=1e-4):
            fail(f"{what}: the output is not multiplied by `weight`.")
        expect_close(out, ref, what=what, atol=1e-4, hint="normalise over the last dimension: x / sqrt(mean(x²) + eps) · weight")
    zero = call(norm, torch.zeros(2, 16), what=what)
    if not torch.isfinite(zero).all():
        fail(f"{what}: an all-zero input gives NaN — add eps inside the square root.")
    small = call(call(RMSNorm, 16, eps=1e-2, what=f"{what}(16, eps=1e-2)"), x * 1e-2, what=what)
    expect_close(small, ref_rmsnorm(x * 1e-2, torch.ones(16), 1e-2), what=f"{what} with eps=1e-2", atol=1e-4,
                 hint="use the eps argument, inside the square root: sqrt(mean(x²) + eps)")
    passed("RMSNorm", "weight, values, eps")


def check_rope(apply_rope) -> None:
    """apply_rope(x, theta=10000.0): rotate x of shape (B, H, T, hd) by position, half-split pairs."""
    what = "apply_rope"
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 9, 16, generator=g)
    out = call(apply_rope, x, what=what)
    expect_tensor(out, what=what, shape=x.shape, dtype=x.dtype)
    if not torch.allclose(out[..., 0, :], x[..., 0, :], atol=1e-5):
        fail(f"{what}: position 0 changed — its angle is 0, so it must not be rotated (positions start at 0).")
    if not torch.allclose(out.norm(dim=-1), x.norm(dim=-1), atol=1e-4):
        fail(f"{what}: vector lengths changed — a rotation uses cos and sin of the same angle and preserves length.")
    ref = ref_rope(x)
    if not _close(out, ref, atol=1e-4):
        if _close(out, ref_rope(x, interleaved=True), atol=1e-4):
            fail(f"{what}: rotates adjacent pairs (x0, x1), (x2, x3)… — the course (like HF Llama) pairs x_i with x_(i + hd/2), the two halves.")
        if _close(out, ref_rope(x, direction=-1.0), atol=1e-4):
            fail(f"{what}: rotates the wrong way — rotate_half(x) is cat(-x2, x1), not cat(x2, -x1).")
        expect_close(out, ref, what=what, atol=1e-4,
                     hint="angle = position · theta^(-2i/hd) for i in 0..hd/2-1; out = x·cos + rotate_half(x)·sin")
    expect_close(call(apply_rope, x, theta=500.0, what=what), ref_rope(x, 500.0), what=f"{what} with theta=500",
                 atol=1e-4, hint="use the theta argument")
    passed("RoPE", "position 0, lengths, pairing, frequencies")


def _tiny_model(seed=0):
    from ..model import SLM, SLMConfig

    torch.manual_seed(seed)
    return SLM(SLMConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, d_model=8))


def _ref_step(model, opt, x, y, clip=1.0):
    opt.zero_grad(set_to_none=True)
    loss = model(x, y).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    opt.step()
    return loss.item()


def check_train_step(train_step) -> None:
    """train_step(model, optimizer, x, y) → float: zero grads, forward, backward, clip to 1.0, step."""
    what = "train_step"
    g = torch.Generator().manual_seed(0)
    x, y = torch.randint(0, 11, (4, 8), generator=g), torch.randint(0, 11, (4, 8), generator=g)
    ours, ref = _tiny_model(), _tiny_model()
    opt_ours = torch.optim.SGD(ours.parameters(), lr=1.0)       # a big step makes every mistake visible
    opt_ref = torch.optim.SGD(ref.parameters(), lr=1.0)
    before = copy.deepcopy(ours.state_dict())
    expected_loss = ref(x, y).loss.item()
    loss = call(train_step, ours, opt_ours, x, y, what=what)
    if isinstance(loss, torch.Tensor):
        if loss.numel() != 1:
            fail(f"{what} should return the loss, one number; got a tensor of shape {tuple(loss.shape)}.")
        fail(f"{what} should return a Python float (loss.item()), not a tensor that keeps the graph alive.")
    if not isinstance(loss, float):
        fail(f"{what} should return the loss as a float, got {type(loss).__name__}.")
    if not math.isclose(loss, expected_loss, rel_tol=1e-4):
        fail(f"{what} returned loss {loss:.4f}, expected {expected_loss:.4f} — the loss of model(x, y) before the update.")
    if all(torch.equal(before[k], v) for k, v in ours.state_dict().items()):
        fail(f"{what}: the parameters did not change — call optimizer.step() after loss.backward().")
    _ref_step(ref, opt_ref, x, y)
    x2, y2 = torch.randint(0, 11, (4, 8), generator=g), torch.randint(0, 11, (4, 8), generator=g)
    call(train_step, ours, opt_ours, x2, y2, what=what)
    _ref_step(ref, opt_ref, x2, y2)
    if not all(torch.allclose(a, b, atol=1e-5) for a, b in zip(ours.parameters(), ref.parameters())):
        # Which mistake? Replay the alternatives from the same start.
        alt = _tiny_model()
        alt_opt = torch.optim.SGD(alt.parameters(), lr=1.0)
        for xb, yb in ((x, y), (x2, y2)):
            alt(xb, yb).loss.backward()
            alt_opt.step()                                            # no clipping
            alt_opt.zero_grad()
        if all(torch.allclose(a, b, atol=1e-5) for a, b in zip(ours.parameters(), alt.parameters())):
            fail(f"{what}: gradients are not clipped — call torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0) before the step.")
        fail(f"{what}: after two steps the weights differ from the reference — zero the gradients every step "
             "(optimizer.zero_grad()) and clip them to norm 1.0 before optimizer.step().")
    passed("train_step", "loss, update, zero_grad, clipping")


def check_top_k(top_k_logits) -> None:
    """top_k_logits(logits, k): keep the k largest logits in each row, set the rest to -inf."""
    what = "top_k_logits"
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 20, generator=g)
    original = logits.clone()
    out = call(top_k_logits, logits, 5, what=what)
    expect_tensor(out, what=what, shape=logits.shape)
    if not torch.equal(logits, original):
        fail(f"{what} changed the input logits in place — return a new tensor (masked_fill, not masked_fill_).")
    kept = torch.isfinite(out).sum(dim=-1)
    if (kept != 5).any():
        fail(f"{what}(logits, k=5) keeps {kept.tolist()} tokens per row, expected 5 in each (off by one?).")
    top = torch.topk(logits, 5, dim=-1).indices
    if not torch.isfinite(out.gather(-1, top)).all():
        fail(f"{what} kept tokens that are not among the 5 largest logits.")
    if not torch.equal(out.gather(-1, top), logits.gather(-1, top)):
        fail(f"{what} changed the kept logits — leave them as they are (softmax renormalises later).")
    if not (torch.isinf(out) & (out < 0) | torch.isfinite(out)).all():
        fail(f"{what}: removed tokens must be -inf (probability 0 after softmax), not +inf or NaN.")
    expect_close(call(top_k_logits, logits, 50, what=what), logits, what=f"{what} with k larger than the vocabulary",
                 hint="when k ≥ vocabulary size, keep every token (torch.topk needs k ≤ size)")
    passed("top-k filtering", "count, which tokens, values, k ≥ V")


CHECKS = {"02.attention": check_attention, "02.rmsnorm": check_rmsnorm, "02.rope": check_rope,
          "02.train_step": check_train_step, "02.top_k": check_top_k}
