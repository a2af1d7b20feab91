"""Planted mistakes: every lab check rejects at least three realistic wrong answers (beyond the unsolved
stub), each with a message naming the mistake made.

Most checks' mistakes live next to their tests (tests/test_checks*.py); this file holds those of lab 02's
head, KV-cache and cross-entropy tasks, the ones that completed lab 00's and lab 01's sets, and the count
that keeps every check at three or more.
"""
import math
import re
from pathlib import Path

import pytest
import torch

from checking import rejects, todo
from slm_lab.checks import m00, m01, m02
from test_checks import merge_good, pairs_good
from test_checks_accept_package import lab_check_modules

MINIMUM = 3


# ------------------------------------------------------------------- 02: heads, KV cache, cross-entropy ----
def split_heads(x, n):
    B, T, D = x.shape
    return x.view(B, T, n, D // n).transpose(1, 2)


def merge_heads(x):
    B, H, T, hd = x.shape
    return x.transpose(1, 2).reshape(B, T, H * hd)


def repeat_kv(x, n):
    return x.repeat_interleave(n, dim=1)


def append_kv(cache, k, v):
    return (k, v) if cache is None else (torch.cat([cache[0], k], 2), torch.cat([cache[1], v], 2))


def cross_entropy(z, t, ignore_index=-100):
    z, t = z.reshape(-1, z.shape[-1]), t.reshape(-1)
    z, t = z[t != ignore_index], t[t != ignore_index]
    m = z.max(-1, keepdim=True).values
    return (m.squeeze(-1) + (z - m).exp().sum(-1).log() - z.gather(-1, t[:, None]).squeeze(-1)).mean()


def test_heads_check():
    m02.check_heads(split_heads, merge_heads, repeat_kv)
    rejects(m02.check_heads, todo, merge_heads, repeat_kv, match="not done yet")
    rejects(m02.check_heads, lambda x, n: x.view(x.shape[0], n, x.shape[1], -1), merge_heads, repeat_kv,
            match="mixes time steps into heads")
    rejects(m02.check_heads, lambda x, n: x.view(x.shape[0], x.shape[1], -1, n).permute(0, 3, 1, 2), merge_heads,
            repeat_kv, match="not every n-th feature")
    rejects(m02.check_heads, split_heads, lambda x: x.reshape(x.shape[0], x.shape[2], -1), repeat_kv,
            match="mixes heads into time steps")
    rejects(m02.check_heads, split_heads, merge_heads, lambda x, n: x.repeat(1, n, 1, 1), match="tiled")
    rejects(m02.check_heads, split_heads, merge_heads, lambda x, n: x, match="repeat_kv(kv, 3) returned shape")


def test_append_kv_check():
    m02.check_append_kv(append_kv)
    rejects(m02.check_append_kv, todo, match="not done yet")
    rejects(m02.check_append_kv, lambda c, k, v: (k, v) if c is None else (torch.cat([k, c[0]], 2),
                                                                          torch.cat([v, c[1]], 2)),
            match="the new positions come first")
    rejects(m02.check_append_kv, lambda c, k, v: (k, v) if c is None else (torch.cat([c[0], k], -1),
                                                                          torch.cat([c[1], v], -1)),
            match="wrong axis")
    rejects(m02.check_append_kv, lambda c, k, v: (k, v), match="the cache was dropped")
    rejects(m02.check_append_kv, lambda c, k, v: (v, k) if c is None else (torch.cat([c[1], v], 2),
                                                                          torch.cat([c[0], k], 2)),
            match="keys and values are swapped")
    rejects(m02.check_append_kv, lambda c, k, v: (k, v) if c is None else [torch.cat([c[0], k], 2)],
            match="should return the pair")


def ce_naive_softmax(z, t, ignore_index=-100):
    p = z.exp() / z.exp().sum(-1, keepdim=True)
    return -p.gather(-1, t.clamp(min=0)[..., None]).log().mean()


def ce_counts_ignored(z, t, ignore_index=-100):
    losses = z.logsumexp(-1) - z.gather(-1, t.clamp(min=0)[..., None]).squeeze(-1)
    return (losses * (t != ignore_index)).sum() / t.numel()


def test_cross_entropy_check():
    m02.check_cross_entropy(cross_entropy)
    rejects(m02.check_cross_entropy, todo, match="not done yet")
    rejects(m02.check_cross_entropy, lambda z, t, ignore_index=-100: -cross_entropy(z, t), match="sign is flipped")
    rejects(m02.check_cross_entropy, ce_naive_softmax, match="exp overflows")
    rejects(m02.check_cross_entropy, ce_counts_ignored, match="still count in the mean")
    rejects(m02.check_cross_entropy, lambda z, t, ignore_index=-100: cross_entropy(z, t) / math.log(2),
            match="in bits")
    rejects(m02.check_cross_entropy, lambda z, t, ignore_index=-100: cross_entropy(z, t) * t.numel(),
            match="summed over positions")
    rejects(m02.check_cross_entropy, lambda z, t, ignore_index=-100: cross_entropy(z, t) / z.shape[-1],
            match="divided by the vocabulary size")
    rejects(m02.check_cross_entropy, lambda z, t, ignore_index=-100: z.logsumexp(-1) - z.gather(
        -1, t[..., None]).squeeze(-1), match="one number")


# ------------------------------------------------------------------------------- 00 and 01, completed ----
def test_lab00_answers_reject_more_slips():
    rejects(m00.check_answer, "00.fp16_memory", 7e9 * 1 / 1e9, match="that is int8")
    rejects(m00.check_answer, "00.fp16_memory", 7e9 * 2 / 2**30, match="that is GiB")
    rejects(m00.check_answer, "00.size_ratio", 175 - 3.8, match="is not how many times more")
    rejects(m00.check_answer, "00.size_ratio", 175e9, match="is not how many times more")
    rejects(m00.check_answer, "00.size_ratio", [175, 3.8], match="expected a number")
    rejects(m00.check_answer, "00.opt_hardware", 992 * 100_000, match="one zero too many")
    rejects(m00.check_answer, "00.opt_hardware", 10_000, match="is not the hardware cost")
    rejects(m00.check_answer, "00.phone_int4", 3.8e9 * 2 / 1e9, match="that is fp16")
    rejects(m00.check_fits, {n: p * 16 / 1e9 <= 8 for n, p in m00.FIT_MODELS.items()}, match="TinyLlama")  # bits
    rejects(m00.check_fits, [True] * len(m00.FIT_MODELS), match="exactly these keys")


def fits_in(models, budget_gb, bits, gb=1e9, bytes_per_bit=1 / 8, strict=False):
    size = {name: n * bits * bytes_per_bit / gb for name, n in models.items()}
    return {name: s < budget_gb if strict else s <= budget_gb for name, s in size.items()}


def test_fits_in_check():
    m00.check_fits_in(fits_in)
    rejects(m00.check_fits_in, todo, match="not done yet")
    rejects(m00.check_fits_in, lambda m, b, k: fits_in(m, b, k, bytes_per_bit=1), match="bits taken as bytes")
    rejects(m00.check_fits_in, lambda m, b, k: fits_in(m, b, 16), match="the bits argument is ignored")
    rejects(m00.check_fits_in, lambda m, b, k: fits_in(m, b, k, strict=True), match="compare with <=, not <")
    rejects(m00.check_fits_in, lambda m, b, k: fits_in(m, b, k, gb=2**30), match="that is GiB")
    rejects(m00.check_fits_in, lambda m, b, k: fits_in(m, 2 * b, k), match="so it does not fit")
    rejects(m00.check_fits_in, lambda m, b, k: list(fits_in(m, b, k).values()), match="should return a dict")


def test_lab01_pair_counts_and_merge_reject_more_mistakes():
    rejects(m01.check_pair_counts, lambda ids: pairs_good(ids[1:]), match="counts (1, 2) 1 times, expected 2")
    rejects(m01.check_pair_counts, lambda ids: list(pairs_good(ids).items()), match="should return a dict")
    rejects(m01.check_merge, lambda ids, pair, new_id: merge_good(ids, pair[::-1], new_id), match="returned")
    rejects(m01.check_merge, lambda ids, pair, new_id: [new_id if i == pair[0] else i for i in ids], match="returned")


# ------------------------------------------------------------------------------------------- the count ----
TESTS = Path(__file__).parent


def _rejections(check_name: str, module: str, check_id: str) -> int:
    """How many planted mistakes (rejects(...) calls, the unsolved stub not counted; for lab 00's answers,
    those naming the answer's id; parametrized mistakes of the Triton kernel, one each) the tests hold."""
    text = "\n".join(p.read_text(encoding="utf-8") for p in TESTS.glob("test_*.py"))
    if check_name == "check_answer":
        calls = re.findall(rf'rejects\(\s*{module}\.check_answer,\s*"{re.escape(check_id)}"[^\n]*', text)
    else:
        calls = re.findall(rf"rejects\(\s*{module}\.{check_name}\b[^\n]*", text)
    n = len([c for c in calls if "todo" not in c and "make_norm(todo)" not in c])
    if check_name == "check_triton_kernel":
        n += len(re.findall(r'^\s*\("\w+", "[^"]+"\),?$', (TESTS / "test_checks_m09.py").read_text(), re.M))
    return n


CHECK_IDS = [(mod.__name__.rsplit(".", 1)[-1], cid, fn) for mod in lab_check_modules() for cid, fn in mod.CHECKS.items()]


@pytest.mark.parametrize("module, check_id, check", CHECK_IDS, ids=[c[1] for c in CHECK_IDS])
def test_every_check_rejects_at_least_three_planted_mistakes(module, check_id, check):
    name = getattr(check, "__name__", "")
    name = "check_answer" if name == "<lambda>" else name
    assert _rejections(name, module, check_id) >= MINIMUM, f"{check_id} ({name}): plant more mistakes"
