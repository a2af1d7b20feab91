"""Lab 09 checks accept a correct answer, reject the unsolved stub and reject each classic
FlashAttention mistake with the one-line reason a student should read. The Triton kernel variants
run under the interpreter on CPU (TRITON_INTERPRET=1 is set before any kernel is defined)."""
import importlib.util
import math
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"        # before Triton defines a kernel

from slm_lab.checks import m09  # noqa: E402
from checking import rejects, todo  # noqa: E402


# ------------------------------------------------------------------ 09.merge ----
def merge_good(m1, l1, acc1, m2, l2, acc2):
    m = torch.maximum(m1, m2)
    a1, a2 = torch.exp(m1 - m), torch.exp(m2 - m)
    return m, a1 * l1 + a2 * l2, a1[..., None] * acc1 + a2[..., None] * acc2


def merge_no_acc_rescale(m1, l1, acc1, m2, l2, acc2):
    m, l, _ = merge_good(m1, l1, acc1, m2, l2, acc2)
    return m, l, acc1 + acc2


def merge_no_l_rescale(m1, l1, acc1, m2, l2, acc2):
    m, _, acc = merge_good(m1, l1, acc1, m2, l2, acc2)
    return m, l1 + l2, acc


def merge_max_not_subtracted(m1, l1, acc1, m2, l2, acc2):
    # statistics relative to 0 instead of the max: right for small scores, overflows for large ones
    a1, a2 = torch.exp(m1), torch.exp(m2)
    return torch.maximum(m1, m2), a1 * l1 + a2 * l2, a1[..., None] * acc1 + a2[..., None] * acc2


def merge_factor_not_per_row(m1, l1, acc1, m2, l2, acc2):
    m = torch.maximum(m1, m2)
    a1, a2 = torch.exp(m1 - m), torch.exp(m2 - m)
    return m, a1 * l1 + a2 * l2, a1.mean() * acc1 + a2.mean() * acc2


def merge_min(m1, l1, acc1, m2, l2, acc2):
    m = torch.minimum(m1, m2)
    a1, a2 = torch.exp(m1 - m), torch.exp(m2 - m)
    return m, a1 * l1 + a2 * l2, a1[..., None] * acc1 + a2[..., None] * acc2


def test_merge_check():
    m09.check_merge(merge_good)
    rejects(m09.check_merge, todo, match="not done yet")
    rejects(m09.check_merge, merge_no_acc_rescale, match="the accumulator is not rescaled")
    rejects(m09.check_merge, merge_no_l_rescale, match="l is not rescaled")
    rejects(m09.check_merge, merge_max_not_subtracted, match="NaN/inf for large scores")
    rejects(m09.check_merge, merge_factor_not_per_row, match="acc is off")
    rejects(m09.check_merge, merge_min, match="NaN/inf for large scores")
    rejects(m09.check_merge, lambda *a: merge_good(*a)[:2], match="three tensors")


# ------------------------------------------------------------------ 09.tiled ----
def tiled(q, k, v, causal=False, block_q=32, block_k=32, mistake=None):
    """A student's tiled attention; `mistake` plants one classic error."""
    B, H, N, d = q.shape
    out, lse = torch.empty_like(q), torch.empty(B, H, N)
    for q0 in range(0, N, block_q):
        q1 = min(q0 + block_q, N)
        qi = q[:, :, q0:q1] / math.sqrt(d)
        m = torch.full((B, H, q1 - q0), float("-inf"))
        l, acc = torch.zeros(B, H, q1 - q0), torch.zeros(B, H, q1 - q0, d)
        hi = min(N, (q0 // block_q + 1) * block_k) if mistake == "square_tiles" else min(N, q1)
        for k0 in range(0, hi if causal else N, block_k):
            k1 = min(k0 + block_k, N)
            s = qi @ k[:, :, k0:k1].transpose(-2, -1)
            if causal:
                rows, cols = torch.arange(q0, q1)[:, None], torch.arange(k0, k1)[None, :]
                keep = {"causal_diag": rows > cols, "causal_next": rows + 1 >= cols}.get(mistake, rows >= cols)
                s = s.masked_fill(~keep, float("-inf"))
            m_new = torch.maximum(m, s.amax(-1))
            if mistake == "no_max":
                p, alpha = torch.exp(s), torch.ones_like(m)
            else:
                p, alpha = torch.exp(s - m_new[..., None]), torch.exp(m - m_new)
            l = alpha * l + p.sum(-1)
            acc = (acc if mistake == "no_acc_rescale" else alpha[..., None] * acc) + p @ v[:, :, k0:k1]
            m = m_new
        norm = {"no_division": torch.ones_like(l), "last_tile_sum": p.sum(-1)}.get(mistake, l)
        out[:, :, q0:q1] = acc / norm[..., None]
        lse[:, :, q0:q1] = {"lse_no_max": torch.log(l), "no_max": torch.log(l),
                            "lse_base2": (m + torch.log(l)) / math.log(2)}.get(mistake, m + torch.log(l))
    return out, lse


def planted(mistake):
    return lambda q, k, v, causal=False, block_q=32, block_k=32: tiled(q, k, v, causal, block_q, block_k, mistake)


def tiled_full_matrix(q, k, v, causal=False, block_q=32, block_k=32):
    s = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if causal:
        s = s.masked_fill(~torch.ones(s.shape[-2:], dtype=torch.bool).tril(), float("-inf"))
    return torch.softmax(s, -1) @ v, torch.logsumexp(s, -1)


def tiled_with_full_mask(q, k, v, causal=False, block_q=32, block_k=32):
    """Correct tiling that slices its causal mask from one (N × N) boolean matrix."""
    N = q.shape[-2]
    full = torch.ones(N, N, dtype=torch.bool).tril()
    B, H, _, d = q.shape
    out, lse = torch.empty_like(q), torch.empty(B, H, N)
    for q0 in range(0, N, block_q):
        qi = q[:, :, q0:q0 + block_q] / math.sqrt(d)
        m = torch.full(qi.shape[:-1], float("-inf"))
        l, acc = torch.zeros(qi.shape[:-1]), torch.zeros(qi.shape)
        for k0 in range(0, N, block_k):
            s = qi @ k[:, :, k0:k0 + block_k].transpose(-2, -1)
            if causal:
                s = s.masked_fill(~full[q0:q0 + block_q, k0:k0 + block_k], float("-inf"))
            m_new = torch.maximum(m, s.amax(-1))
            p = torch.exp(s - m_new[..., None].nan_to_num(0.0, neginf=0.0))
            alpha = torch.exp(m - m_new).nan_to_num(0.0)
            l, acc, m = alpha * l + p.sum(-1), alpha[..., None] * acc + p @ v[:, :, k0:k0 + block_k], m_new
        out[:, :, q0:q0 + block_q] = acc / l[..., None]
        lse[:, :, q0:q0 + block_q] = m + torch.log(l)
    return out, lse


def test_tiled_check():
    m09.check_tiled(planted(None))
    rejects(m09.check_tiled, todo, match="not done yet")
    rejects(m09.check_tiled, planted("no_acc_rescale"), match="the accumulator is not rescaled")
    rejects(m09.check_tiled, planted("no_max"), match="NaN/inf for large inputs")
    rejects(m09.check_tiled, planted("causal_diag"), match="off by one")
    rejects(m09.check_tiled, planted("causal_next"), match="off by one")
    rejects(m09.check_tiled, planted("no_division"), match="wrong final normalisation")
    rejects(m09.check_tiled, planted("last_tile_sum"), match="wrong final normalisation")
    rejects(m09.check_tiled, planted("lse_no_max"), match="lse misses the max")
    rejects(m09.check_tiled, planted("lse_base2"), match="lse is in base 2")
    # held out: the causal loop counts key tiles as if block_k == block_q (right for 16 × 16 tiles only)
    rejects(m09.check_tiled, planted("square_tiles"), match="whatever block_k is")
    rejects(m09.check_tiled, tiled_full_matrix, match="full (B, H, N, N) score matrix")
    m09.check_tiled(tiled_with_full_mask)                 # an (N × N) boolean mask is not the score matrix
    rejects(m09.check_tiled, lambda *a, **kw: planted(None)(*a, **kw)[0], match="should return (out, lse)")


# ----------------------------------------------------------------- 09.triton ----
KERNEL = '''
import triton
import triton.language as tl


@triton.jit
def attention_kernel(Q, K, V, O, LSE, N, sm_scale,
                     HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                     CAUSAL: tl.constexpr, UPCAST: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    base = pid_bh.to(tl.int64) * N * HEAD_DIM
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    q = tl.load(Q + base + offs_m[:, None] * HEAD_DIM + offs_d[None, :], mask=offs_m[:, None] < N, other=0.0)
    if UPCAST:
        q = q.to(tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    hi = N
    if CAUSAL:
        hi = tl.minimum((pid_m + 1) * BLOCK_M, N)
    for start_n in range(0, hi, BLOCK_N):
        cols = start_n + offs_n
        kv = base + cols[:, None] * HEAD_DIM + offs_d[None, :]
        k = tl.load(K + kv, mask=cols[:, None] < N, other=0.0)
        v = tl.load(V + kv, mask=cols[:, None] < N, other=0.0)
        if UPCAST:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
        s = tl.dot(q, tl.trans(k)) * sm_scale
        keep = cols[None, :] < N
        if CAUSAL:
            keep = keep & (offs_m[:, None] >= cols[None, :])
        s = tl.where(keep, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.exp(s - m_new[:, None])
        alpha = tl.exp(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m_i = m_new
    acc = acc / l_i[:, None]
    tl.store(O + base + offs_m[:, None] * HEAD_DIM + offs_d[None, :], acc.to(O.dtype.element_ty), mask=offs_m[:, None] < N)
    tl.store(LSE + pid_bh * N + offs_m, m_i + tl.log(l_i), mask=offs_m < N)
'''

MISTAKES = {
    "no_acc_rescale": [("acc = acc * alpha[:, None] + ", "acc = acc + ")],
    "no_max": [("p = tl.exp(s - m_new[:, None])", "p = tl.exp(s)"),
               ("alpha = tl.exp(m_i - m_new)", "alpha = tl.full([BLOCK_M], 1.0, tl.float32)"),
               ("m_i + tl.log(l_i)", "tl.log(l_i)")],
    "causal_diag": [("offs_m[:, None] >= cols[None, :]", "offs_m[:, None] > cols[None, :]")],
    "causal_next": [("offs_m[:, None] >= cols[None, :]", "offs_m[:, None] + 1 >= cols[None, :]")],
    "no_division": [("acc = acc / l_i[:, None]", "acc = acc")],
    "last_tile_sum": [("acc = acc / l_i[:, None]", "acc = acc / tl.sum(p, 1)[:, None]")],
    "no_upcast": [("    if UPCAST:\n        q = q.to(tl.float32)\n", ""),
                  ("        if UPCAST:\n            k = k.to(tl.float32)\n            v = v.to(tl.float32)\n", "")],
    "no_col_mask": [("keep = cols[None, :] < N", "keep = cols[None, :] >= 0")],
    "stub": [("    pid_m = tl.program_id(0)\n", "    raise NotImplementedError\n    pid_m = tl.program_id(0)\n")],
}


def load_kernel(tmp_path, mistake=None):
    """Write the kernel (with one planted mistake) to a file and import it: Triton reads the source."""
    src = KERNEL
    for old, new in MISTAKES.get(mistake, []):
        assert old in src, old
        src = src.replace(old, new)
    path = tmp_path / f"kernel_{mistake or 'good'}.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.attention_kernel


triton = pytest.importorskip("triton")


def test_triton_check_accepts_the_lab_kernel_and_the_package_kernel(tmp_path):
    from slm_lab.kernels.triton_flash import attn_fwd_kernel
    m09.check_triton_kernel(load_kernel(tmp_path))
    m09.check_triton_kernel(attn_fwd_kernel)


@pytest.mark.parametrize("mistake, match", [
    ("stub", "not done yet"),
    ("no_acc_rescale", "the accumulator is not rescaled"),
    ("no_max", "NaN/inf for large inputs"),
    ("causal_diag", "off by one"),
    ("causal_next", "off by one"),
    ("no_division", "wrong final normalisation"),
    ("last_tile_sum", "wrong final normalisation"),
    # held out: no float32 upcast (only fp32 was fed), and keys j ≥ N left unmasked (told "normalisation")
    ("no_upcast", "cast q, k and v to float32"),
    ("no_col_mask", "keys beyond N are not masked"),
])
def test_triton_check_rejects(tmp_path, mistake, match):
    rejects(m09.check_triton_kernel, load_kernel(tmp_path, mistake), match=match)


def test_triton_check_rejects_a_plain_function():
    rejects(m09.check_triton_kernel, tiled, match="@triton.jit")
