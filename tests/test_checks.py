"""Every lab check accepts the reference, rejects the unsolved stub and rejects planted mistakes
with the one-line reason a student should read."""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from slm_lab.checks import m00, m01, m02
from checking import rejects, todo


# ---------------------------------------------------------------- 02 attention ----
def attention_good(q, k, v):
    T = q.shape[-2]
    s = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    s = s.masked_fill(torch.triu(torch.ones(T, T, dtype=torch.bool), 1), float("-inf"))
    return torch.softmax(s, -1) @ v


def attention_no_mask(q, k, v):
    return torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), -1) @ v


def attention_wrong_axis(q, k, v):
    T = q.shape[-2]
    s = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    s = s.masked_fill(torch.triu(torch.ones(T, T, dtype=torch.bool), 1), float("-inf"))
    return torch.softmax(s, -2).nan_to_num(0.0) @ v


def attention_no_scale(q, k, v):
    T = q.shape[-2]
    s = (q @ k.transpose(-2, -1)).masked_fill(torch.triu(torch.ones(T, T, dtype=torch.bool), 1), float("-inf"))
    return torch.softmax(s, -1) @ v


def attention_diag_masked(q, k, v):
    T = q.shape[-2]
    s = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    s = s.masked_fill(torch.triu(torch.ones(T, T, dtype=torch.bool), 0), float("-inf"))
    return torch.softmax(s, -1) @ v


def attention_naive_exp(q, k, v):
    T = q.shape[-2]
    s = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    e = torch.exp(s) * torch.tril(torch.ones(T, T))
    return e / e.sum(-1, keepdim=True) @ v


def test_attention_check():
    m02.check_attention(attention_good)
    rejects(m02.check_attention, todo, match="not done yet")
    rejects(m02.check_attention, attention_no_mask, match="future positions visible")
    rejects(m02.check_attention, attention_wrong_axis, match="not normalised")
    rejects(m02.check_attention, attention_no_scale, match="missing the 1/sqrt(head_dim)")
    rejects(m02.check_attention, attention_diag_masked, match="off by one")
    rejects(m02.check_attention, attention_naive_exp, match="NaN/inf for large inputs")
    rejects(m02.check_attention, lambda q, k, v: attention_good(q, k, v)[..., :-1, :], match="shape")


# ------------------------------------------------------------------ 02 RMSNorm ----
def make_norm(forward, init=torch.ones):
    class Norm(nn.Module):
        def __init__(self, dim, eps=1e-5):
            super().__init__()
            self.eps, self.weight = eps, nn.Parameter(init(dim))

        def forward(self, x):
            return forward(self, x)
    return Norm


RMSGood = make_norm(lambda s, x: x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + s.eps) * s.weight)
RMSNoEps = make_norm(lambda s, x: x / x.pow(2).mean(-1, keepdim=True).sqrt() * s.weight)
RMSLayerNorm = make_norm(lambda s, x: F.layer_norm(x, x.shape[-1:], s.weight, eps=s.eps))
RMSNoWeight = make_norm(lambda s, x: x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + s.eps))
RMSWrongDim = make_norm(lambda s, x: x * torch.rsqrt(x.pow(2).mean(0, keepdim=True) + s.eps) * s.weight)
RMSZeroInit = make_norm(lambda s, x: x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + s.eps) * s.weight,
                        init=torch.zeros)
RMSEpsOutside = make_norm(lambda s, x: x / (x.pow(2).mean(-1, keepdim=True).sqrt() + s.eps) * s.weight)


def test_rmsnorm_check():
    m02.check_rmsnorm(RMSGood)
    rejects(m02.check_rmsnorm, make_norm(todo), match="not done yet")
    rejects(m02.check_rmsnorm, RMSNoEps, match="add eps inside the square root")
    rejects(m02.check_rmsnorm, RMSLayerNorm, match="that is LayerNorm")
    rejects(m02.check_rmsnorm, RMSNoWeight, match="not multiplied by `weight`")
    rejects(m02.check_rmsnorm, RMSWrongDim, match="values are off")
    rejects(m02.check_rmsnorm, RMSZeroInit, match="initialise `weight` to ones")
    rejects(m02.check_rmsnorm, RMSEpsOutside, match="inside the square root")


# --------------------------------------------------------------------- 02 RoPE ----
def rope(x, theta=10000.0, interleaved=False, direction=1.0):
    """A student's RoPE, written out in float64; the knobs plant the pairing and direction mistakes."""
    T, hd = x.shape[-2], x.shape[-1]
    inv = 1.0 / theta ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd)
    ang = direction * torch.outer(torch.arange(T, dtype=torch.float64), inv)   # (T, hd/2)
    cos, sin = ang.cos().to(x.dtype), ang.sin().to(x.dtype)
    if interleaved:
        x1, x2 = x[..., 0::2], x[..., 1::2]
        return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2)
    x1, x2 = x[..., : hd // 2], x[..., hd // 2:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


def rope_good(x, theta=10000.0):
    return rope(x, theta)


def rope_mismatched_angles(x, theta=10000.0):
    from slm_lab.model import rotate_half
    T, hd = x.shape[-2:]
    inv = 1.0 / theta ** (torch.arange(0, hd, 2) / hd)
    ang = torch.outer(torch.arange(T).float(), inv).repeat(1, 2)
    return x * ang.cos() + rotate_half(x) * (2 * ang).sin()


def test_rope_check():
    m02.check_rope(rope_good)
    rejects(m02.check_rope, todo, match="not done yet")
    rejects(m02.check_rope, lambda x, theta=10000.0: rope(x, theta, interleaved=True), match="adjacent pairs")
    rejects(m02.check_rope, lambda x, theta=10000.0: rope(x, theta, direction=-1.0), match="wrong way")
    rejects(m02.check_rope, lambda x, theta=10000.0: rope(x, 10000.0), match="use the theta argument")
    # positions starting at 1 instead of 0
    rejects(m02.check_rope, lambda x, theta=10000.0: rope(torch.cat([x[..., :1, :], x], -2), theta)[..., 1:, :],
            match="position 0 changed")
    # sin of twice the angle: position 0 still unrotated, but lengths change
    rejects(m02.check_rope, rope_mismatched_angles, match="lengths changed")


# --------------------------------------------------------------- 02 train_step ----
def step_good(model, opt, x, y):
    opt.zero_grad()
    loss = model(x, y).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return loss.item()


def step_no_zero_grad(model, opt, x, y):
    loss = model(x, y).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return loss.item()


def step_no_clip(model, opt, x, y):
    opt.zero_grad()
    loss = model(x, y).loss
    loss.backward()
    opt.step()
    return loss.item()


def step_no_step(model, opt, x, y):
    opt.zero_grad()
    loss = model(x, y).loss
    loss.backward()
    return loss.item()


def step_returns_tensor(model, opt, x, y):
    step_good(model, opt, x, y)
    return model(x, y).loss


def test_train_step_check():
    m02.check_train_step(step_good)
    rejects(m02.check_train_step, todo, match="not done yet")
    rejects(m02.check_train_step, step_no_zero_grad, match="zero the gradients")
    rejects(m02.check_train_step, step_no_clip, match="not clipped")
    rejects(m02.check_train_step, step_no_step, match="did not change")
    rejects(m02.check_train_step, step_returns_tensor, match="Python float")


# -------------------------------------------------------------------- 02 top-k ----
def topk_good(logits, k):
    kth = torch.topk(logits, min(k, logits.shape[-1]), dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def topk_plus_one(logits, k):
    return topk_good(logits, k + 1)


def topk_inplace(logits, k):
    kth = torch.topk(logits, min(k, logits.shape[-1]), dim=-1).values[..., -1:]
    return logits.masked_fill_(logits < kth, float("-inf"))


def topk_smallest(logits, k):
    kth = torch.topk(logits, k, dim=-1, largest=False).values[..., -1:]
    return logits.masked_fill(logits > kth, float("-inf"))


def topk_no_clamp(logits, k):
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def test_top_k_check():
    m02.check_top_k(topk_good)
    rejects(m02.check_top_k, todo, match="not done yet")
    rejects(m02.check_top_k, topk_plus_one, match="keeps [6, 6, 6] tokens per row, expected 5")
    rejects(m02.check_top_k, topk_inplace, match="in place")
    rejects(m02.check_top_k, topk_smallest, match="not among the 5 largest")
    rejects(m02.check_top_k, topk_no_clamp, match="raised RuntimeError")
    rejects(m02.check_top_k, lambda l, k: topk_good(l, k) - l.max(-1, keepdim=True).values, match="changed the kept logits")


# ----------------------------------------------------------------------- 01 ----
def pairs_good(ids):
    counts = {}
    for p in zip(ids, ids[1:]):
        counts[p] = counts.get(p, 0) + 1
    return counts


def merge_good(ids, pair, new_id):
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == tuple(pair):
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def merge_overlapping(ids, pair, new_id):
    out = []
    i = 0
    while i < len(ids):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == pair:
            out.append(new_id)
        else:
            out.append(ids[i])
        i += 1
    return out


def merge_drops_last(ids, pair, new_id):
    out, i = [], 0
    while i < len(ids) - 1:
        if (ids[i], ids[i + 1]) == pair:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def _train(text, vocab_size, units=lambda t: list(t.encode("utf-8")), choose=max):
    """A student's BPE trainer; `units` and `choose` let the planted mistakes differ in one place."""
    ids, merges = units(text), {}
    for new_id in range(256, vocab_size):
        counts = pairs_good(ids)
        pair = choose(counts, key=counts.get)
        ids = merge_good(ids, pair, new_id)
        merges[pair] = new_id
    return merges


def train_good(text, vocab_size):
    return _train(text, vocab_size)


def train_least_frequent(text, vocab_size):
    return _train(text, vocab_size, choose=min)


def train_one_short(text, vocab_size):
    return train_good(text, vocab_size - 1)


def encode_good(text, merges):
    ids = list(text.encode("utf-8"))
    for pair, new_id in merges.items():          # in the order learned: the earliest merge first
        ids = merge_good(ids, pair, new_id)
    return ids


def decode_good(ids, merges):
    vocab = {i: bytes([i]) for i in range(256)}
    for (a, b), i in merges.items():
        vocab[i] = vocab[a] + vocab[b]
    return b"".join(vocab[i] for i in ids).decode("utf-8")


def decode_per_token(ids, merges):
    vocab = {i: bytes([i]) for i in range(256)}
    for (a, b), i in merges.items():
        vocab[i] = vocab[a] + vocab[b]
    return "".join(vocab[i].decode("utf-8", errors="replace") for i in ids)


def encode_latest_first(text, merges):
    ids = list(text.encode("utf-8"))
    for pair, new_id in reversed(list(merges.items())):
        ids = merge_good(ids, pair, new_id)
    return ids


def train_code_points(text, vocab_size):
    """Held-out mistake: BPE over Unicode code points (ord) instead of UTF-8 bytes."""
    return _train(text, vocab_size, units=lambda t: [ord(c) for c in t])


def encode_most_frequent_first(text, merges):
    """Held-out mistake: merge the learned pair most frequent in this text first, not the earliest learned."""
    ids = list(text.encode("utf-8"))
    while True:
        counts = pairs_good(ids)
        known = [p for p in counts if p in merges]
        if not known:
            return ids
        pair = max(known, key=counts.get)
        ids = merge_good(ids, pair, merges[pair])


def test_lab01_checks():
    m01.check_pair_counts(pairs_good)
    rejects(m01.check_pair_counts, todo, match="not done yet")
    rejects(m01.check_pair_counts, lambda ids: pairs_good(ids[:-1]), match="misses the pair")
    rejects(m01.check_pair_counts, lambda ids: {p: 1 for p in zip(ids, ids[1:])}, match="counts (1, 2) 1 times, expected 2")

    m01.check_merge(merge_good)
    rejects(m01.check_merge, todo, match="not done yet")
    rejects(m01.check_merge, merge_overlapping, match="returned")
    rejects(m01.check_merge, merge_drops_last, match="returned")

    m01.check_train_bpe(train_good)
    rejects(m01.check_train_bpe, todo, match="not done yet")
    rejects(m01.check_train_bpe, train_least_frequent, match="always merge the most frequent pair")
    rejects(m01.check_train_bpe, train_one_short, match="learned 19 merges, expected 276 - 256 = 20")
    rejects(m01.check_train_bpe, train_code_points, match="trains on Unicode code points")

    merges = train_good(m01.SAMPLE, 300)
    m01.check_round_trip(encode_good, decode_good, merges)
    rejects(m01.check_round_trip, todo, decode_good, merges, match="not done yet")
    rejects(m01.check_round_trip, encode_good, decode_per_token, merges, match="decode(encode(text)) != text")
    rejects(m01.check_round_trip, encode_latest_first, decode_good, merges, match="earliest-learned merge first")
    rejects(m01.check_round_trip, encode_most_frequent_first, decode_good, merges,
            match="applies the pair most frequent in the text first")


# ----------------------------------------------------------------------- 00 ----
def test_lab00_checks():
    m00.check_answer("00.fp16_memory", 7e9 * 2 / 1e9)
    rejects(m00.check_answer, "00.fp16_memory", 7e9 * 16 / 1e9, match="that is bits")
    rejects(m00.check_answer, "00.fp16_memory", 7e9 * 4 / 1e9, match="that is fp32")
    rejects(m00.check_answer, "00.fp16_memory", ..., match="not done yet")
    m00.check_answer("00.size_ratio", 175e9 / 3.8e9)
    rejects(m00.check_answer, "00.size_ratio", 3.8 / 175, match="inverse ratio")
    m00.check_answer("00.opt_hardware", 992 * 10_000)
    rejects(m00.check_answer, "00.opt_hardware", 992 * 1_000, match="one zero short")
    m00.check_answer("00.phone_int4", 3.8e9 * 0.5 / 1e9)
    rejects(m00.check_answer, "00.phone_int4", 3.8e9 * 4 / 1e9, match="that is bits")
    rejects(m00.check_answer, "00.phone_int4", 3.8, match="that is int8")
    good = {n: p * 2 / 1e9 <= 8 for n, p in m00.FIT_MODELS.items()}
    m00.check_fits(good)
    rejects(m00.check_fits, {n: p * 4 / 1e9 <= 8 for n, p in m00.FIT_MODELS.items()}, match="Phi-3-mini")
    rejects(m00.check_fits, {"GPT-3": False}, match="exactly these keys")
