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


# ------------------------------------------------------------ heads, KV cache, cross-entropy ----
def _split(x, n):           # (B, T, n·hd) → (B, n, T, hd): what CausalSelfAttention.forward does inline
    B, T, _ = x.shape
    return x.view(B, T, n, -1).transpose(1, 2)


def _merge(x):              # (B, H, T, hd) → (B, T, H·hd)
    B, H, T, hd = x.shape
    return x.transpose(1, 2).reshape(B, T, H * hd)


def _gqa_forward(attn, x, split, merge, repeat):
    """The course's CausalSelfAttention (no RoPE) computed with the given head functions: its projections,
    split, K/V repeated to the query heads, causal attention, merge, output projection."""
    q = split(attn.q_proj(x), attn.n_head)
    k, v = split(attn.k_proj(x), attn.n_kv_head), split(attn.v_proj(x), attn.n_kv_head)
    rep = attn.n_head // attn.n_kv_head
    k, v = repeat(k, rep), repeat(v, rep)
    return attn.o_proj(merge(naive_attention(q, k, v, causal=True)))


def _gqa_layer(n_head=4, n_kv_head=2, hd=6, seed=0):
    torch.manual_seed(seed)
    cfg = package.SLMConfig(family="llama", vocab_size=11, block_size=16, n_layer=1, n_head=n_head,
                            n_kv_head=n_kv_head, d_model=n_head * hd)
    attn = package.CausalSelfAttention(cfg).eval()
    attn.use_rope = False                 # positions are RoPE's task (check_rope); here only the heads matter
    return attn


def check_heads(split_heads, merge_heads, repeat_kv) -> None:
    """split_heads(x, n_heads): (B, T, n·hd) → (B, n, T, hd); merge_heads(x): (B, H, T, hd) → (B, T, H·hd);
    repeat_kv(x, n_rep): (B, K, T, hd) → (B, K·n_rep, T, hd), each K/V head serving n_rep consecutive
    query heads. Then the three together must give the course model's grouped-query attention."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 4 * 6, generator=g)
    heads = call(split_heads, x, 4, what="split_heads(x, 4)")
    expect_tensor(heads, what="split_heads(x, 4)", shape=(2, 4, 5, 6))
    if not torch.equal(heads, _split(x, 4)):
        if torch.equal(heads, x.view(2, 4, 5, 6)):
            fail("split_heads: reshaped (B, T, n·hd) straight to (B, n, T, hd), which mixes time steps into heads — "
                 "view as (B, T, n, hd) first, then swap the T and n axes.")
        if torch.equal(heads, x.view(2, 5, 6, 4).permute(0, 3, 1, 2)):
            fail("split_heads: head h must be the h-th block of hd consecutive features, not every n-th feature.")
        expect_close(heads, _split(x, 4), what="split_heads", hint="head h holds features h·hd … (h+1)·hd − 1")
    y = torch.randn(2, 3, 5, 4, generator=g)
    merged = call(merge_heads, y, what="merge_heads")
    expect_tensor(merged, what="merge_heads", shape=(2, 5, 12))
    if not torch.equal(merged, _merge(y)):
        if torch.equal(merged, y.reshape(2, 5, 12)):
            fail("merge_heads: reshaped (B, H, T, hd) straight to (B, T, H·hd), which mixes heads into time steps — "
                 "swap the H and T axes back first (then make it contiguous).")
        expect_close(merged, _merge(y), what="merge_heads", hint="merge_heads must undo split_heads")
    if not torch.equal(call(merge_heads, call(split_heads, x, 4, what="split_heads"), what="merge_heads"), x):
        fail("merge_heads(split_heads(x, n)) must give x back.")
    kv = torch.randn(2, 2, 5, 3, generator=g)
    rep = call(repeat_kv, kv, 3, what="repeat_kv(kv, 3)")
    want = kv.repeat_interleave(3, dim=1)
    expect_tensor(rep, what="repeat_kv(kv, 3)", shape=(2, 6, 5, 3))
    if not torch.equal(rep, want):
        if torch.equal(rep, kv.repeat(1, 3, 1, 1)):
            fail("repeat_kv: the copies are tiled (k0, k1, k0, k1, …); query heads 0 … n_rep−1 share K/V head 0, so "
                 "each head is repeated n_rep times in place (k0, k0, k0, k1, k1, k1).")
        expect_close(rep, want, what="repeat_kv", hint="K/V head j serves query heads j·n_rep … (j+1)·n_rep − 1")
    if not torch.equal(call(repeat_kv, kv, 1, what="repeat_kv(kv, 1)"), kv):
        fail("repeat_kv(kv, 1) must return kv unchanged (multi-head attention: one query head per K/V head).")
    for n_head, n_kv in ((4, 2), (6, 3), (4, 1)):       # grouped-query, another group size, multi-query
        attn = _gqa_layer(n_head, n_kv, seed=n_head + n_kv)
        xs = torch.randn(2, 7, n_head * 6, generator=g)
        with torch.no_grad():
            ref = attn(xs)[0]
            got = call(_gqa_forward, attn, xs, split_heads, merge_heads, repeat_kv, what="your heads in the model")
        expect_close(got, ref, what=f"grouped-query attention with n_head={n_head}, n_kv_head={n_kv}", atol=1e-5,
                     hint="split by heads of hd features, repeat each K/V head for its group, merge back")
    passed("heads", "split, merge, K/V repeated per group; equals the course's grouped-query attention")


def check_append_kv(append_kv) -> None:
    """append_kv(cache, k, v) → (k_all, v_all): cache is None (nothing yet) or the (k, v) so far, each
    (B, K, S, hd); k, v (B, K, T, hd) are the new positions; the result holds S + T positions, oldest first."""
    what = "append_kv"
    g = torch.Generator().manual_seed(1)
    k1, v1 = torch.randn(2, 3, 4, 5, generator=g), torch.randn(2, 3, 4, 5, generator=g)
    first = call(append_kv, None, k1, v1, what=f"{what}(None, k, v)")
    if not isinstance(first, (tuple, list)) or len(first) != 2:
        fail(f"{what} should return the pair (k_all, v_all), got {type(first).__name__}.")
    if not (torch.equal(expect_tensor(first[0], what=what), k1) and torch.equal(expect_tensor(first[1], what=what), v1)):
        if torch.equal(first[0], v1) and torch.equal(first[1], k1):
            fail(f"{what}: keys and values are swapped — return (keys, values).")
        fail(f"{what}(None, k, v): with an empty cache the result is just (k, v).")
    k2, v2 = torch.randn(2, 3, 4, 5, generator=g), torch.randn(2, 3, 4, 5, generator=g)   # (one token: below)
    out = call(append_kv, (k1.clone(), v1.clone()), k2, v2, what=what)
    want = (torch.cat([k1, k2], dim=2), torch.cat([v1, v2], dim=2))
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        fail(f"{what} should return the pair (k_all, v_all), got {type(out).__name__}.")
    ka, va = (expect_tensor(t, what=what) for t in out)
    if ka.shape != want[0].shape:
        if ka.shape == (2, 3, 4, 10) or ka.shape == (2, 6, 4, 5) or ka.shape == (4, 3, 4, 5):
            fail(f"{what}: joined along the wrong axis (got shape {tuple(ka.shape)}) — positions are axis 2 of "
                 "(B, K, S, hd).")
        if ka.shape == k2.shape:
            fail(f"{what}: the cache was dropped — return the old positions followed by the new ones.")
        fail(f"{what} returned keys of shape {tuple(ka.shape)}, expected {tuple(want[0].shape)}.")
    if torch.equal(ka, torch.cat([k2, k1], dim=2)):
        fail(f"{what}: the new positions come first — the cache holds positions oldest first, so append at the end.")
    if torch.equal(ka, want[1]) and torch.equal(va, want[0]):
        fail(f"{what}: keys and values are swapped — return (keys, values).")
    expect_close(ka, want[0], what=f"{what}: keys")
    expect_close(va, want[1], what=f"{what}: values")
    # A whole decode: the course's attention layer fed one token at a time through your cache must equal
    # one pass over the whole sequence.
    attn = _gqa_layer(4, 2, seed=3)
    xs = torch.randn(1, 6, 24, generator=g)
    with torch.no_grad():
        full = attn(xs)[0]
        got = call(_decode_with, attn, xs, append_kv, what="decoding with your cache")
    expect_close(got, full, what=f"{what}: decoding one token at a time vs the whole sequence at once", atol=1e-5)
    passed("KV cache", "empty cache, order, axis, keys vs values; token-by-token decoding equals one pass")


def _decode_with(attn, xs, append_kv):
    """Run the course's attention layer one position at a time, keeping its cache with append_kv."""
    cache, outs = None, []
    for t in range(xs.shape[1]):
        y, present = attn(xs[:, t:t + 1], past=cache)          # present = the layer's own cache + this step
        new_k, new_v = present[0][:, :, -1:], present[1][:, :, -1:]
        cache = append_kv(cache, new_k, new_v)
        outs.append(y)
    return torch.cat(outs, dim=1)


@forbids("torch.nn.functional.cross_entropy", "torch.nn.functional.nll_loss", "torch.nn.CrossEntropyLoss",
         "torch.nn.NLLLoss", "torch.nn.functional.log_softmax", "torch.log_softmax")
def check_cross_entropy(cross_entropy) -> None:
    """cross_entropy(logits, targets, ignore_index=-100) → a 0-d tensor: the mean over the positions whose
    target is not ignore_index of log Σ_v exp(logits_v) − logits_target; logits (B, T, V), targets (B, T)."""
    what = "cross_entropy"
    g = torch.Generator().manual_seed(2)
    logits, targets = torch.randn(3, 5, 7, generator=g) * 2, torch.randint(0, 7, (3, 5), generator=g)
    ref = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
    out = call(cross_entropy, logits, targets, what=what)
    if not isinstance(out, torch.Tensor) or out.numel() != 1:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        fail(f"{what} should return one number (a 0-d tensor, the mean over positions), got {shape}.")
    out = out.reshape(())
    if not torch.isclose(out, ref, atol=1e-5, rtol=1e-5):
        per_position = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none")
        if torch.isclose(out, -ref, atol=1e-5):
            fail(f"{what}: the sign is flipped — the loss is −log p(target), which is positive.")
        if torch.isclose(out, per_position.sum(), atol=1e-4):
            fail(f"{what}: summed over positions — take the mean, so the loss does not grow with batch and length.")
        if torch.isclose(out, ref / math.log(2), atol=1e-5):
            fail(f"{what}: this is in bits (log base 2) — the course's loss is in nats (natural log).")
        if torch.isclose(out, ref / logits.shape[-1], atol=1e-5):
            fail(f"{what}: divided by the vocabulary size too — average over positions only.")
        fail(f"{what} returned {out.item():.4f}, expected {ref.item():.4f}: log Σ exp(logits) − the target's logit, "
             "averaged over positions.")
    big = call(cross_entropy, logits * 1000, targets, what=what).reshape(())
    ref_big = F.cross_entropy(logits.flatten(0, 1) * 1000, targets.flatten())
    if not torch.isfinite(big):
        fail(f"{what} gives {big.item()} for large logits — exp overflows; subtract each row's max before the "
             "exponential (log Σ exp(z) = m + log Σ exp(z − m)).")
    expect_close(big, ref_big, what=f"{what} with large logits", atol=1e-2, rtol=1e-5)
    masked = targets.clone()
    masked[0, :3] = masked[2, 4] = -100
    ref_masked = F.cross_entropy(logits.flatten(0, 1), masked.flatten(), ignore_index=-100)
    got = call(cross_entropy, logits, masked, what=f"{what} with ignored targets").reshape(())
    if not torch.isclose(got, ref_masked, atol=1e-5):
        kept = masked.flatten() != -100
        if torch.isclose(got, F.cross_entropy(logits.flatten(0, 1), masked.flatten(), reduction="sum")
                         / masked.numel(), atol=1e-5):
            fail(f"{what}: ignored positions (target −100) still count in the mean — divide by the {int(kept.sum())} "
                 f"positions that are kept, not all {masked.numel()}.")
        fail(f"{what}: with some targets = ignore_index (−100) got {got.item():.4f}, expected {ref_masked.item():.4f} "
             "— leave those positions out of the sum and of the count.")
    passed("cross-entropy", "mean over positions, large logits, ignored targets")


CHECKS = {"02.attention": check_attention, "02.rmsnorm": check_rmsnorm, "02.rope": check_rope,
          "02.heads": check_heads, "02.append_kv": check_append_kv, "02.cross_entropy": check_cross_entropy,
          "02.train_step": check_train_step, "02.top_k": check_top_k}
