"""Checks for lab 02 — build and train an SLM: attention, RMSNorm, RoPE, a training step, top-k.

The references are the package's own: `slm_lab.kernels.naive_attention` (causal), `slm_lab.model`'s
RMSNorm, rope_tables + apply_rope and top_k_logits. A wrong answer is compared with what a usual
mistake gives (mostly the package's output on changed inputs) to name it.
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F

from .. import model as package
from ..kernels.naive import naive_attention
from . import call, expect_close, expect_tensor, fail, forbids, passed


# ------------------------------------------------------- references and mistakes ----
def _attention(q, k, v, **kw):
    """The package's causal attention; scale=1.0 gives the unscaled mistake."""
    return naive_attention(q, k, v, causal=True, **kw)


def _mistake_hides_diagonal(q, k, v):
    """Causal attention whose mask hides the diagonal too: query t sees keys 0 … t-1, which is the package's
    causal attention of queries 1 … T-1 over keys 0 … T-2. Query 0 sees nothing (NaN there; 0 here)."""
    out = torch.zeros_like(v)
    out[..., 1:, :] = _attention(q[..., 1:, :], k[..., :-1, :], v[..., :-1, :])
    return out


def _rmsnorm(x, weight, eps):
    norm = package.RMSNorm(x.shape[-1], eps)
    with torch.no_grad():
        norm.weight.copy_(weight)
        return norm(x)


def _rope_tables(x, theta=10000.0):
    return package.rope_tables(x.shape[-1], x.shape[-2], theta)      # cos, sin: (T, hd)


def _mistake_interleaved(x, cos, sin):
    """RoPE on adjacent pairs (x0, x1), (x2, x3)…: the package's half-split rotation of x with its even
    and odd entries gathered into the two halves, then put back in place."""
    out = package.apply_rope(torch.cat([x[..., 0::2], x[..., 1::2]], dim=-1), cos, sin)
    return torch.stack(out.chunk(2, dim=-1), dim=-1).flatten(-2)


def _close(a, b, atol=1e-5):
    return (isinstance(a, torch.Tensor) and a.shape == b.shape
            and torch.allclose(a.double(), b.double(), atol=atol, rtol=1e-4))


def _qkv(B=2, H=3, T=7, hd=16, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, H, T, hd, generator=g) * scale for _ in range(3)]


# ------------------------------------------------------------------- checks ----
@forbids("slm_lab.kernels.naive.naive_attention",
         "slm_lab.kernels.naive.attention_scores",
         "slm_lab.kernels.tiled.tiled_attention",
         "slm_lab.kernels.tiled.flash_attention",
         "slm_lab.model.CausalSelfAttention",
         "torch.nn.functional.scaled_dot_product_attention",
         "torch.nn.MultiheadAttention")
def check_attention(causal_attention) -> None:
    """causal_attention(q, k, v) with q, k, v of shape (B, H, T, hd) → (B, H, T, hd)."""
    what = "causal_attention"
    q, k, v = _qkv()
    big_inputs = _qkv(seed=1, scale=30.0)
    one = _qkv(B=1, H=2, T=1, hd=8, seed=2)
    ref, ref_big = _attention(q, k, v), _attention(*big_inputs)
    unscaled, hides_diagonal = _attention(q, k, v, scale=1.0), _mistake_hides_diagonal(q, k, v)
    out = call(causal_attention, q, k, v, what=what)
    expect_tensor(out, what=what, shape=q.shape, dtype=torch.float32)
    if torch.isnan(out[..., 0, :]).any():
        fail(f"{what}: position 0 returned NaN — every token must attend at least to itself; "
             "the mask is off by one (use tril, keep the diagonal).")
    # Changing keys/values after position 3 must not change outputs at positions 0..3.
    k2, v2 = k.clone(), v.clone()
    k2[:, :, 4:] += 5.0
    v2[:, :, 4:] -= 5.0
    out2 = call(causal_attention, q, k2, v2, what=what)
    changed = (out2[:, :, :4] - out[:, :, :4]).abs().amax(dim=(0, 1, 3))
    if (changed > 1e-5).any():
        t = int((changed > 1e-5).nonzero()[0])
        fail(f"{what}: future positions visible — the output at position {t} changed when only later keys/values "
             "changed; mask scores above the diagonal with -inf.")
    ones = torch.ones_like(v)
    avg = call(causal_attention, q, k, ones, what=what)
    if not torch.allclose(avg, ones, atol=1e-5):
        fail(f"{what}: attention weights are not normalised — with v = 1 the output should be all ones; "
             "take the softmax over the last dimension (the keys).")
    if not _close(out, ref):
        if _close(out, unscaled):
            fail(f"{what}: missing the 1/sqrt(head_dim) scaling of the scores.")
        if _close(out, hides_diagonal) or torch.isnan(out).any():
            fail(f"{what}: a token cannot see itself — the mask is off by one (keep the diagonal).")
        expect_close(out, ref, what=what)
    big = call(causal_attention, *big_inputs, what=what)
    if not torch.isfinite(big).all():
        fail(f"{what}: NaN/inf for large inputs — exp overflows; subtract the row maximum before exp (torch.softmax does).")
    expect_close(big, ref_big, what=f"{what} (large inputs)", atol=1e-4)
    expect_close(call(causal_attention, *one, what=what), one[2], what=f"{what} with one token")
    passed("causal attention", "mask, scaling, normalisation, stability")


def _probe_rmsnorm(RMSNorm, weight, x, zero, small) -> tuple:
    """Where the student's class lives (the kernel, when graded): build RMSNorm(16), set its weight, return
    its outputs on x, on zeros, and of RMSNorm(16, eps=1e-2) on small."""
    what = "RMSNorm"
    norm = call(RMSNorm, 16, what=f"{what}(16)")
    if not isinstance(norm, torch.nn.Module):
        fail(f"{what} should be an nn.Module subclass (class RMSNorm(nn.Module)).")
    w = getattr(norm, "weight", None)
    if not isinstance(w, torch.nn.Parameter) or tuple(w.shape) != (16,):
        fail(f"{what}(16) should have a learnable `weight` of shape (16,) — an nn.Parameter.")
    if not torch.allclose(w.detach(), torch.ones(16)):
        fail(f"{what}: initialise `weight` to ones so the layer starts as a pure normalisation.")
    with torch.no_grad():
        w.copy_(weight)                  # w is norm.weight, checked above
    out = call(norm, x, what=what)
    return out, call(norm, zero, what=what), call(call(RMSNorm, 16, eps=1e-2, what=f"{what}(16, eps=1e-2)"), small,
                                                   what=what)


@forbids("slm_lab.model.RMSNorm", "torch.nn.RMSNorm", "torch.nn.functional.rms_norm")
def check_rmsnorm(RMSNorm) -> None:
    """RMSNorm(dim, eps=1e-5): an nn.Module with a learnable `weight` (ones); normalises the last dim."""
    what = "RMSNorm"
    g = torch.Generator().manual_seed(0)
    weight = torch.rand(16, generator=g) + 0.5
    x = torch.randn(4, 5, 16, generator=g) * 3 + 1
    ref, unweighted = _rmsnorm(x, weight, 1e-5), _rmsnorm(x, torch.ones(16), 1e-5)
    ref_small = _rmsnorm(x * 1e-2, torch.ones(16), 1e-2)
    out, zero, small = call(_probe_rmsnorm, RMSNorm, weight, x, torch.zeros(2, 16), x * 1e-2, what=what)
    expect_tensor(out, what=what, shape=x.shape)
    if not _close(out, ref, atol=1e-4):
        if _close(out, F.layer_norm(x, (16,), weight, eps=1e-5), atol=1e-4):
            fail(f"{what}: you subtracted the mean — that is LayerNorm; RMSNorm only divides by the root mean square.")
        if _close(out, unweighted, atol=1e-4):
            fail(f"{what}: the output is not multiplied by `weight`.")
        expect_close(out, ref, what=what, atol=1e-4,
                     hint="normalise over the last dimension: x / sqrt(mean(x²) + eps) · weight")
    if not torch.isfinite(expect_tensor(zero, what=what)).all():
        fail(f"{what}: an all-zero input gives NaN — add eps inside the square root.")
    expect_close(small, ref_small, what=f"{what} with eps=1e-2", atol=1e-4,
                 hint="use the eps argument, inside the square root: sqrt(mean(x²) + eps)")
    passed("RMSNorm", "weight, values, eps")


@forbids("slm_lab.model.apply_rope", "slm_lab.model.rope_tables", "slm_lab.model.rotate_half")
def check_rope(apply_rope) -> None:
    """apply_rope(x, theta=10000.0): rotate x of shape (B, H, T, hd) by position, half-split pairs."""
    what = "apply_rope"
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 9, 16, generator=g)
    cos, sin = _rope_tables(x)
    ref = package.apply_rope(x, cos, sin)
    interleaved = _mistake_interleaved(x, cos, sin)
    backwards = package.apply_rope(x, cos, -sin)                     # rotated by -angle
    ref_500 = package.apply_rope(x, *_rope_tables(x, 500.0))
    out = call(apply_rope, x, what=what)
    expect_tensor(out, what=what, shape=x.shape, dtype=x.dtype)
    if not torch.allclose(out[..., 0, :], x[..., 0, :], atol=1e-5):
        fail(f"{what}: position 0 changed — its angle is 0, so it must not be rotated (positions start at 0).")
    if not torch.allclose(out.norm(dim=-1), x.norm(dim=-1), atol=1e-4):
        fail(f"{what}: vector lengths changed — a rotation uses cos and sin of the same angle and preserves length.")
    if not _close(out, ref, atol=1e-4):
        if _close(out, interleaved, atol=1e-4):
            fail(f"{what}: rotates adjacent pairs (x0, x1), (x2, x3)… — the course (like HF Llama) pairs x_i with "
                 "x_(i + hd/2), the two halves.")
        if _close(out, backwards, atol=1e-4):
            fail(f"{what}: rotates the wrong way — rotate_half(x) is cat(-x2, x1), not cat(x2, -x1).")
        expect_close(out, ref, what=what, atol=1e-4,
                     hint="angle = position · theta^(-2i/hd) for i in 0..hd/2-1; out = x·cos + rotate_half(x)·sin")
    expect_close(call(apply_rope, x, theta=500.0, what=what), ref_500, what=f"{what} with theta=500",
                 atol=1e-4, hint="use the theta argument")
    passed("RoPE", "position 0, lengths, pairing, frequencies")


def _tiny_model(seed=0):
    torch.manual_seed(seed)
    return package.SLM(package.SLMConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, d_model=8))


def _ref_step(model, opt, x, y, clip=1.0):
    # The training step of slm_lab.train.train, whose loop body is not a function of its own to call.
    opt.zero_grad(set_to_none=True)
    loss = model(x, y).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    opt.step()
    return loss.item()


def _probe_train_step(train_step, x, y, x2, y2) -> tuple:
    """Two of the student's steps on a fresh tiny model: (first loss, did step 1 change the weights,
    the parameters after step 2)."""
    what = "train_step"
    ours = _tiny_model()
    opt = torch.optim.SGD(ours.parameters(), lr=1.0)       # a big step makes every mistake visible
    before = copy.deepcopy(ours.state_dict())
    loss = call(train_step, ours, opt, x, y, what=what)
    changed = not all(torch.equal(before[k], v) for k, v in ours.state_dict().items())
    call(train_step, ours, opt, x2, y2, what=what)
    return loss, changed, [p.detach().clone() for p in ours.parameters()]


@forbids("slm_lab.train.train")
def check_train_step(train_step) -> None:
    """train_step(model, optimizer, x, y) → float: zero grads, forward, backward, clip to 1.0, step."""
    what = "train_step"
    g = torch.Generator().manual_seed(0)
    x, y = torch.randint(0, 11, (4, 8), generator=g), torch.randint(0, 11, (4, 8), generator=g)
    x2, y2 = torch.randint(0, 11, (4, 8), generator=g), torch.randint(0, 11, (4, 8), generator=g)
    ref = _tiny_model()
    opt_ref = torch.optim.SGD(ref.parameters(), lr=1.0)
    expected_loss = _ref_step(ref, opt_ref, x, y)
    _ref_step(ref, opt_ref, x2, y2)
    loss, changed, params = call(_probe_train_step, train_step, x, y, x2, y2, what=what)
    if isinstance(loss, torch.Tensor):
        if loss.numel() != 1:
            fail(f"{what} should return the loss, one number; got a tensor of shape {tuple(loss.shape)}.")
        fail(f"{what} should return a Python float (loss.item()), not a tensor that keeps the graph alive.")
    if not isinstance(loss, float):
        fail(f"{what} should return the loss as a float, got {type(loss).__name__}.")
    if not math.isclose(loss, expected_loss, rel_tol=1e-4):
        fail(f"{what} returned loss {loss:.4f}, expected {expected_loss:.4f} — the loss of model(x, y) before the update.")
    if not changed:
        fail(f"{what}: the parameters did not change — call optimizer.step() after loss.backward().")
    if not (isinstance(params, list) and len(params) == len(list(ref.parameters()))
            and all(isinstance(a, torch.Tensor) and a.shape == b.shape and torch.allclose(a, b, atol=1e-5)
                    for a, b in zip(params, ref.parameters(), strict=False))):
        # Which mistake? Replay the alternatives from the same start.
        alt = _tiny_model()
        alt_opt = torch.optim.SGD(alt.parameters(), lr=1.0)
        for xb, yb in ((x, y), (x2, y2)):
            alt(xb, yb).loss.backward()
            alt_opt.step()                                            # no clipping
            alt_opt.zero_grad()
        if all(torch.allclose(a, b, atol=1e-5) for a, b in zip(params, alt.parameters(), strict=True)):
            fail(f"{what}: gradients are not clipped — call torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0) "
                 "before the step.")
        fail(f"{what}: after two steps the weights differ from the reference — zero the gradients every step "
             "(optimizer.zero_grad()) and clip them to norm 1.0 before optimizer.step().")
    passed("train_step", "loss, update, zero_grad, clipping")


@forbids("slm_lab.model.top_k_logits", "slm_lab.model.sample_next")
def check_top_k(top_k_logits) -> None:
    """top_k_logits(logits, k): keep the k largest logits in each row, set the rest to -inf."""
    what = "top_k_logits"
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 20, generator=g)
    original = logits.clone()
    ref, ref_all = package.top_k_logits(logits, 5), package.top_k_logits(logits, 50)
    top = torch.isfinite(ref)                                          # the 5 largest of each row
    out = call(top_k_logits, logits, 5, what=what)
    expect_tensor(out, what=what, shape=logits.shape)
    if not torch.equal(logits, original):
        fail(f"{what} changed the input logits in place — return a new tensor (masked_fill, not masked_fill_).")
    kept = torch.isfinite(out).sum(dim=-1)
    if (kept != 5).any():
        fail(f"{what}(logits, k=5) keeps {kept.tolist()} tokens per row, expected 5 in each (off by one?).")
    if not torch.isfinite(out[top]).all():
        fail(f"{what} kept tokens that are not among the 5 largest logits.")
    if not torch.equal(out[top], logits[top]):
        fail(f"{what} changed the kept logits — leave them as they are (softmax renormalises later).")
    if not (torch.isinf(out) & (out < 0) | torch.isfinite(out)).all():
        fail(f"{what}: removed tokens must be -inf (probability 0 after softmax), not +inf or NaN.")
    expect_close(out, ref, what=what)
    expect_close(call(top_k_logits, logits, 50, what=what), ref_all, what=f"{what} with k larger than the vocabulary",
                 hint="when k ≥ vocabulary size, keep every token (torch.topk needs k ≤ size)")
    passed("top-k filtering", "count, which tokens, values, k ≥ V")


CHECKS = {"02.attention": check_attention, "02.rmsnorm": check_rmsnorm, "02.rope": check_rope,
          "02.train_step": check_train_step, "02.top_k": check_top_k}
