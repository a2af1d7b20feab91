"""Attention kernels equal PyTorch's scaled_dot_product_attention: naive, tiled (PyTorch) and the
Triton kernel (under TRITON_INTERPRET=1 on CPU, compiled on a GPU), causal and not, sequence lengths
that are not multiples of the tile, head dims 32/64/128, and inputs large enough to overflow exp."""
import importlib.util
import math
import os
import sys

import pytest
import torch
import torch.nn.functional as F

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"        # before Triton defines a kernel

from slm_lab.errors import SLMLabError  # noqa: E402
from slm_lab.kernels import (attention_flops, flash_attention, merge_softmax_stats, naive_attention,  # noqa: E402
                             scores_bytes, softmax_stats, tile_schedule, tiled_attention,
                             tiled_attention_backward)
from slm_lab.kernels import bench  # noqa: E402

TOL = {torch.float32: dict(atol=2e-5, rtol=1e-4), torch.float16: dict(atol=2e-3, rtol=2e-3),
       torch.bfloat16: dict(atol=1.6e-2, rtol=1.6e-2)}


def qkv(B=2, H=3, N=37, d=32, dtype=torch.float32, scale=1.0, seed=0, S=None, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    shapes = [(B, H, N, d), (B, H, S or N, d), (B, H, S or N, d)]
    return [(torch.randn(s, generator=g) * scale).to(device=device, dtype=dtype) for s in shapes]


def sdpa(q, k, v, causal):
    """The reference: PyTorch's attention in float32 on the same (rounded) inputs."""
    if q.dtype != torch.float64:
        q, k, v = q.float(), k.float(), v.float()
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal)


def ref_lse(q, k, causal):
    s = (q.double() @ k.double().transpose(-2, -1)) / math.sqrt(q.shape[-1])
    if causal:
        s = s.masked_fill(~torch.ones(s.shape[-2:], dtype=torch.bool, device=s.device).tril(), float("-inf"))
    return s.logsumexp(-1)


def assert_close(out, ref, dtype):
    assert out.dtype == dtype and out.shape == ref.shape
    torch.testing.assert_close(out.float(), ref.float(), **TOL[dtype])


# ----------------------------------------------------------------- naive + tiled ----
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("d", [32, 64, 128])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_naive_and_tiled_equal_sdpa(causal, d, dtype):
    q, k, v = qkv(N=37, d=d, dtype=dtype)
    ref = sdpa(q, k, v, causal)
    assert_close(naive_attention(q, k, v, causal=causal), ref, dtype)
    out, lse = tiled_attention(q, k, v, causal=causal, block_q=16, block_k=8)   # 37 = 2·16 + 5 = 4·8 + 5
    assert_close(out, ref, dtype)
    assert lse.dtype == torch.float32
    torch.testing.assert_close(lse.double(), ref_lse(q, k, causal), atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("blocks", [(1, 1), (7, 3), (64, 64), (8, 32)])
@pytest.mark.parametrize("causal", [False, True])
def test_tiled_any_tile_shape(blocks, causal):
    q, k, v = qkv(B=1, H=2, N=21, d=16)
    out, _ = tiled_attention(q, k, v, causal=causal, block_q=blocks[0], block_k=blocks[1])
    torch.testing.assert_close(out, sdpa(q, k, v, causal), **TOL[torch.float32])


@pytest.mark.parametrize("causal", [False, True])
def test_tiled_cross_attention_lengths(causal):
    # 11 queries, 29 keys; causal is top-left aligned (query i sees keys ≤ i), like SDPA's is_causal
    q, k, v = qkv(N=11, S=29, d=16)
    out, lse = tiled_attention(q, k, v, causal=causal, block_q=4, block_k=8)
    torch.testing.assert_close(out, sdpa(q, k, v, causal), **TOL[torch.float32])
    torch.testing.assert_close(lse.double(), ref_lse(q, k, causal), atol=1e-4, rtol=1e-5)


def test_large_inputs_would_overflow_a_naive_exp_but_not_the_online_softmax():
    q, k, v = qkv(N=40, d=64, scale=8.0)
    scores = q @ k.transpose(-2, -1) / 8.0
    assert torch.isinf(torch.exp(scores)).any()          # the inputs really are in the overflow regime
    for causal in (False, True):
        # scores of size ~500 carry float32 rounding of ~1e-4 into the weights: compare with float64
        ref = sdpa(q.double(), k.double(), v.double(), causal).float()
        out, lse = tiled_attention(q, k, v, causal=causal, block_q=16, block_k=16)
        assert torch.isfinite(out).all() and torch.isfinite(lse).all()
        torch.testing.assert_close(out, ref, atol=1e-3, rtol=1e-3)
        torch.testing.assert_close(naive_attention(q, k, v, causal), ref, atol=1e-3, rtol=1e-3)
        torch.testing.assert_close(lse.double(), ref_lse(q, k, causal), atol=1e-3, rtol=1e-5)


def test_merge_of_two_blocks_equals_softmax_over_both():
    g = torch.Generator().manual_seed(0)
    s, v = torch.randn(4, 5, 30, generator=g) * 5, torch.randn(4, 30, 8, generator=g)
    s[..., 20:] += 10                                     # the second block has the larger max
    m, l, acc = merge_softmax_stats(*softmax_stats(s[..., :20], v[:, :20]), *softmax_stats(s[..., 20:], v[:, 20:]))
    torch.testing.assert_close(acc / l[..., None], torch.softmax(s, -1) @ v, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(m + l.log(), s.logsumexp(-1), atol=1e-5, rtol=1e-5)
    masked = softmax_stats(torch.full((4, 5, 3), float("-inf")), torch.randn(4, 3, 8))
    assert torch.isinf(masked[0]).all() and (masked[1] == 0).all() and (masked[2] == 0).all()
    m2, l2, acc2 = merge_softmax_stats(*masked, *masked)  # both fully masked: zeros, not NaN
    assert (l2 == 0).all() and (acc2 == 0).all()


def test_tile_schedule_counts_and_tiled_attention_computes_exactly_those_tiles():
    from torch.utils._python_dispatch import TorchDispatchMode

    grid = tile_schedule(64, 64, 16, 16, causal=True)
    assert grid.tolist() == [[1, 0, 0, 0], [2, 1, 0, 0], [2, 2, 1, 0], [2, 2, 2, 1]]
    assert (tile_schedule(64, 64, 16, 16, causal=False) == 2).all()
    assert tile_schedule(50, 50, 16, 16, causal=False)[-1, -1] == 2      # ragged tile: computed (sliced)
    matmuls = []

    class Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.overloadpacket in (torch.ops.aten.bmm, torch.ops.aten.mm, torch.ops.aten.matmul):
                matmuls.append(func)
            return func(*args, **(kwargs or {}))

    q, k, v = qkv(B=1, H=1, N=64, d=16)
    for causal in (False, True):
        matmuls.clear()
        with Count():
            tiled_attention(q, k, v, causal=causal, block_q=16, block_k=16)
        assert len(matmuls) == 2 * int((tile_schedule(64, 64, 16, 16, causal) > 0).sum())   # q·kᵀ and p·v
    assert len(matmuls) == 2 * 10                            # causal: 10 of 16 tiles, 6 skipped


@pytest.mark.parametrize("causal", [False, True])
def test_backward_from_lse_equals_autograd(causal):
    q, k, v = qkv(B=1, H=2, N=29, d=16, seed=1)
    dout = torch.randn_like(q)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    F.scaled_dot_product_attention(*leaves, is_causal=causal).backward(dout)
    out, lse = tiled_attention(q, k, v, causal=causal, block_q=8, block_k=8)
    grads = tiled_attention_backward(q, k, v, out, lse, dout, causal=causal, block_q=8, block_k=4)
    for ours, leaf in zip(grads, leaves):
        torch.testing.assert_close(ours, leaf.grad, atol=1e-5, rtol=1e-4)
    mine = [t.clone().requires_grad_() for t in (q, k, v)]
    flash_attention(*mine, causal=causal, block_q=8, block_k=8).backward(dout)
    for ours, leaf in zip(mine, leaves):
        torch.testing.assert_close(ours.grad, leaf.grad, atol=1e-5, rtol=1e-4)


def test_bad_input_is_one_sentence():
    q, k, v = qkv(N=8, d=16)
    cases = [lambda: naive_attention(q[0], k, v), lambda: tiled_attention(q, k[..., :8], v),
             lambda: tiled_attention(q, k.half(), v), lambda: tiled_attention(q, k, v, block_q=0),
             lambda: naive_attention(q.long(), k.long(), v.long()), lambda: tiled_attention(q, k, v[:, :, :3]),
             lambda: flash_attention(q, k, v, kernel="cuda"), lambda: bench.measure_peak_memory([{"impl": "fast", "n": 8}])]
    for case in cases:
        with pytest.raises(SLMLabError) as info:
            case()
        msg = str(info.value)
        assert "\n" not in msg and msg.endswith(".") and msg.count(". ") == 0, msg


def test_sizes_and_flops():
    assert scores_bytes(1, 32, 8192, torch.bfloat16) == 32 * 8192 * 8192 * 2          # 4 GiB per layer
    assert attention_flops(1, 1, 1024, 64) == 4 * 1024 * 1024 * 64
    assert attention_flops(1, 1, 1024, 64, causal=True) == 2 * 1024 * 1024 * 64
    assert bench.log_log_slope([1, 2, 4, 8], [3, 12, 48, 192]) == pytest.approx(2.0)
    assert bench.log_log_slope([1, 2, 4, 8], [5, 10, 20, 40]) == pytest.approx(1.0)


def test_peak_memory_measurement_matches_the_tensors_it_allocates():
    # naive holds two (N × N) float32 matrices: at N = 1024 that is 8 MiB — the measurement must see it
    naive, tiled = bench.measure_peak_memory([{"impl": "naive", "n": 1024}, {"impl": "tiled", "n": 1024}])
    expected = bench.expected_bytes("naive", 1024)
    assert 0.85 * expected < naive["peak_bytes"] < 1.25 * expected, (naive, expected)
    assert tiled["peak_bytes"] < naive["peak_bytes"] / 4


# ---------------------------------------------------------------------- Triton ----
triton = pytest.importorskip("triton")
from slm_lab.kernels import triton_attention as triton_mod_fn  # noqa: E402
from slm_lab.kernels.triton_flash import interpreting, launch, triton_attention_backward  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("d", [32, 64, 128])
def test_triton_equals_sdpa(causal, d):
    # 100 tokens = one 64-row tile + a ragged 36-row tile; 64 × 32 tiles exercise both loop phases
    q, k, v = qkv(B=1, H=2, N=100, d=d, device=DEVICE)
    out, lse = triton_mod_fn(q, k, v, causal=causal, block_m=64, block_n=32)
    tol = TOL[torch.float32] if DEVICE == "cpu" else dict(atol=2e-3, rtol=2e-3)   # GPU fp32 dot: TF32
    torch.testing.assert_close(out, sdpa(q, k, v, causal), **tol)
    torch.testing.assert_close(lse.double(), ref_lse(q, k, causal), atol=1e-3 if DEVICE == "cuda" else 1e-4, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_triton_low_precision(dtype):
    # the interpreter computes bf16 wrongly unless loads are upcast: the kernel's UPCAST path
    q, k, v = qkv(B=1, H=2, N=70, d=64, dtype=dtype, device=DEVICE)
    out, _ = triton_mod_fn(q, k, v, causal=True, block_m=32, block_n=32)
    assert_close(out, sdpa(q, k, v, True), dtype)


def test_triton_large_inputs_and_default_tiles():
    q, k, v = qkv(B=1, H=1, N=80, d=64, scale=8.0, device=DEVICE)
    assert torch.isinf(torch.exp(q @ k.transpose(-2, -1) / 8.0)).any()
    out, lse = triton_mod_fn(q, k, v, causal=True)
    assert torch.isfinite(out).all() and torch.isfinite(lse).all()
    ref = sdpa(q.double(), k.double(), v.double(), True).float()
    torch.testing.assert_close(out, ref, atol=1e-3 if DEVICE == "cpu" else 3e-3, rtol=1e-3)


@pytest.mark.parametrize("causal", [False, True])
def test_triton_backward_equals_autograd(causal):
    # 70 tokens: ragged tiles in both kernels; 32 × 16 tiles: the causal start of the dk/dv loop is mid-tile
    q, k, v = qkv(B=1, H=2, N=70, d=32, seed=2, device=DEVICE)
    dout = torch.randn_like(q)
    leaves = [t.double().requires_grad_() for t in (q, k, v)]
    F.scaled_dot_product_attention(*leaves, is_causal=causal).backward(dout.double())
    out, lse = triton_mod_fn(q, k, v, causal=causal, block_m=32, block_n=16)
    grads = triton_attention_backward(q, k, v, out, lse, dout, causal=causal, block_m=32, block_n=16)
    tol = dict(atol=1e-5, rtol=1e-4) if DEVICE == "cpu" else dict(atol=3e-3, rtol=3e-3)
    for ours, leaf in zip(grads, leaves):
        torch.testing.assert_close(ours.double(), leaf.grad, **tol)
    mine = [t.clone().requires_grad_() for t in (q, k, v)]                # the same through autograd
    flash_attention(*mine, causal=causal, kernel="triton").backward(dout)
    for ours, leaf in zip(mine, leaves):
        torch.testing.assert_close(ours.grad.double(), leaf.grad, **tol)


def test_triton_bad_input(monkeypatch):
    q, k, v = qkv(B=1, H=1, N=16, d=16)
    for case, needle in [(lambda: triton_mod_fn(q[..., :12], k[..., :12], v[..., :12]), "power of two"),
                         (lambda: triton_mod_fn(q, k[:, :, :8], v[:, :, :8]), "one shape"),
                         (lambda: triton_mod_fn(q, k, v, block_m=16, block_n=32), "multiple of block_n"),
                         (lambda: triton_mod_fn(q, k, v, block_m=24), "power of two")]:
        with pytest.raises(SLMLabError, match=needle):
            case()
    if DEVICE == "cpu":
        monkeypatch.setenv("TRITON_INTERPRET", "0")
        assert not interpreting()
        with pytest.raises(SLMLabError, match="TRITON_INTERPRET=1"):
            launch(None, q, k, v)


def test_without_triton_the_package_imports_and_says_how_to_get_it(monkeypatch):
    # load a fresh copy of the module with `import triton` failing, as on macOS
    monkeypatch.setitem(sys.modules, "triton", None)
    monkeypatch.setitem(sys.modules, "triton.language", None)
    path = os.path.join(os.path.dirname(__file__), "..", "slm_lab", "kernels", "triton_flash.py")
    spec = importlib.util.spec_from_file_location("slm_lab.kernels._no_triton_copy", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert not module.triton_available()
    q, k, v = qkv(B=1, H=1, N=16, d=16)
    with pytest.raises(SLMLabError, match="Triton is not installed") as info:
        module.triton_attention(q, k, v)
    assert "\n" not in str(info.value)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (compiled Triton, autotuning)")
def test_triton_compiled_autotuned_bf16_on_gpu():
    assert not interpreting()
    q, k, v = qkv(B=2, H=4, N=1000, d=128, dtype=torch.bfloat16, device="cuda")
    for causal in (False, True):
        out, _ = triton_mod_fn(q, k, v, causal=causal)        # autotuned tiles
        ref = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        torch.testing.assert_close(out, ref, atol=2e-2, rtol=2e-2)


def test_bf16_on_a_gpu_without_it_is_one_line(monkeypatch):
    """Colab's free T4 (compute capability 7.5) has no bfloat16 in Triton: the launch says so and what to use;
    Ampere (8.0) and the interpreter are fine."""
    from slm_lab.kernels import triton_flash

    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    assert not triton_flash.bf16_supported()
    q = torch.zeros(1, 1, 32, 32, dtype=torch.bfloat16)
    monkeypatch.setattr(torch.Tensor, "device", property(lambda self: torch.device("cuda")))
    with pytest.raises(SLMLabError, match=r"compute capability 7\.5\) has no bfloat16 in Triton; use float16"):
        triton_flash._check_launch(q, q, q, None, None, "triton_attention")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    assert triton_flash.bf16_supported()
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    assert triton_flash.bf16_supported()
