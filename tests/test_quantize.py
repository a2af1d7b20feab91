"""slm_lab.quantize against theory and independent references: round-to-nearest error within scale/2,
an exact int4 pack/unpack round trip, sizes counted by hand, the quantized Linear equal to F.linear
with the dequantized weight, PyTorch's own int8 path, and val loss kept on a trained model."""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from slm_lab import quantize as Q
from slm_lab.errors import SLMLabError
from slm_lab.evaluate import fixed_batches, mean_loss
from slm_lab.model import SLM, SLMConfig


def weight(rows=24, cols=100, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g) * 0.02 * (2.0 ** (torch.arange(rows) % 5 - 2)).unsqueeze(1)
    w[1, 7] = 0.5                                   # an outlier
    w[2] += 0.05                                    # a lopsided row
    return w


def assert_within_half_step(w, w_hat, step):
    err = (w - w_hat).abs()
    assert (err <= step / 2 * (1 + 1e-6) + 1e-9).all(), (err / step).max()


# ------------------------------------------------------------- the error bound ----
@pytest.mark.parametrize("bits", [8, 4, 3])
def test_absmax_per_channel_within_half_scale(bits):
    w = weight()
    q, scale = Q.absmax_quantize(w, bits, dim=-1)
    qmax = 2 ** (bits - 1) - 1
    assert q.dtype == torch.int8 and scale.shape == (w.shape[0], 1)
    assert torch.allclose(scale, w.abs().amax(1, keepdim=True) / qmax)          # by hand
    assert q.abs().max() == qmax                                                # the largest value uses the top code
    assert_within_half_step(w, Q.dequantize(q, scale), scale)


def test_absmax_per_tensor_is_coarser_than_per_channel():
    w = weight()
    q_t, s_t = Q.absmax_quantize(w, 8)
    q_c, s_c = Q.absmax_quantize(w, 8, dim=-1)
    assert s_t.shape == (1, 1) and torch.allclose(s_t, w.abs().max() / 127)
    assert_within_half_step(w, Q.dequantize(q_t, s_t), s_t)
    err_t = (w - Q.dequantize(q_t, s_t)).pow(2).mean()
    err_c = (w - Q.dequantize(q_c, s_c)).pow(2).mean()
    assert err_c < err_t / 4          # rows 2^4 apart in size: one scale for all wastes most codes


@pytest.mark.parametrize("bits", [8, 4])
def test_zeropoint_within_half_scale_and_uses_every_code(bits):
    w = weight()
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    q, scale, zero = Q.zeropoint_quantize(w, bits, dim=-1)
    lo, hi = w.amin(1, keepdim=True).clamp(max=0), w.amax(1, keepdim=True).clamp(min=0)
    assert torch.allclose(scale, (hi - lo) / (2 ** bits - 1))
    assert ((zero >= qmin) & (zero <= qmax)).all()
    mixed = (w.amin(1) < 0) & (w.amax(1) > 0)
    assert mixed.sum() >= 20 and not mixed[2]                                   # row 2 is all positive
    assert (q.amin(1)[mixed] == qmin).all() and (q.amax(1) == qmax).all()      # min → qmin, max → qmax
    assert zero[2].item() == qmin                                               # range widened to include 0
    assert_within_half_step(w, Q.dequantize(q, scale, zero), scale)
    zeros = torch.zeros(w.shape[0], 1)
    assert torch.equal(Q.dequantize(torch.full_like(zeros, 0).to(torch.int8) + zero, scale, zero), zeros)  # 0.0 exact


def test_zeropoint_beats_absmax_on_one_sided_values():
    x = torch.rand(1000, generator=torch.Generator().manual_seed(0)).reshape(1, -1)   # all ≥ 0, like post-ReLU
    qa, sa = Q.absmax_quantize(x, 8)
    qz, sz, z = Q.zeropoint_quantize(x, 8)
    assert torch.allclose(sz, sa * 127 / 255, rtol=1e-6)           # twice the codes over the same range
    assert (x - Q.dequantize(qz, sz, z)).abs().max() < (x - Q.dequantize(qa, sa)).abs().max()


@pytest.mark.parametrize("group_size,symmetric", [(32, False), (32, True), (64, False), (None, False), (128, False)])
def test_groups_within_half_scale_with_a_short_last_group(group_size, symmetric):
    w = weight(cols=100)                                        # 100 = 3 × 32 + 4: the last group is short
    q, scale, zero = Q.quantize_groups(w, 4, group_size, symmetric)
    g = group_size or 100
    assert scale.shape == (24, math.ceil(100 / g)) and (zero is None) == symmetric
    assert q.min() >= -8 and q.max() <= 7
    step = scale.repeat_interleave(g, 1)[:, :100]
    assert_within_half_step(w, Q.dequantize_groups(q, scale, zero, group_size), step)
    # each group's scale depends only on its own columns (here: the 4-column tail group)
    if group_size == 32:
        _, tail_scale, _ = Q.quantize_groups(w[:, 96:], 4, None, symmetric)
        assert torch.allclose(scale[:, -1:], tail_scale)


def test_float16_scales_round_up_and_keep_the_bound():
    w = weight()
    q, scale, zero = Q.quantize_groups(w, 4, 32, False, scale_dtype=torch.float16)
    _, exact, _ = Q.quantize_groups(w, 4, 32, False)
    assert scale.dtype == torch.float16
    assert (scale.float() >= exact).all() and (scale.float() <= exact * (1 + 2 ** -10)).all()
    assert_within_half_step(w, Q.dequantize_groups(q, scale, zero, 32),
                            scale.float().repeat_interleave(32, 1)[:, :100])


def test_groups_shrink_the_error():
    w = weight(cols=256)
    err = {g: (w - Q.dequantize_groups(*Q.quantize_groups(w, 4, g), g)).pow(2).mean().item() for g in (None, 128, 32)}
    assert err[32] < err[128] < err[None]


# -------------------------------------------------------------------- packing ----
def test_int4_pack_round_trip_is_exact_for_all_16_values():
    every = torch.arange(-8, 8, dtype=torch.int8)
    q = torch.stack([every, every.flip(0), every.roll(3)])                   # (3, 16)
    packed = Q.pack_int4(q)
    assert packed.dtype == torch.uint8 and packed.shape == (3, 8)
    assert torch.equal(Q.unpack_int4(packed), q)
    # the layout, by hand: -8 → 0b1000 in the low nibble, 7 → 0b0111 in the high one
    assert Q.pack_int4(torch.tensor([[-8, 7]], dtype=torch.int8)).item() == 0x78
    assert Q.pack_int4(torch.tensor([[-1, 0]], dtype=torch.int8)).item() == 0x0F
    odd = every[:15].reshape(1, 15)
    assert Q.pack_int4(odd).shape == (1, 8) and torch.equal(Q.unpack_int4(Q.pack_int4(odd), 15), odd)


def test_pack_rejects_values_outside_int4():
    with pytest.raises(SLMLabError, match=r"\[-8, 7\]"):
        Q.pack_int4(torch.tensor([[0, 8]], dtype=torch.int8))


# -------------------------------------------------------------- quantized layer ----
@pytest.mark.parametrize("bits,group_size", [(8, None), (4, 32), (4, 64), (4, None)])
def test_quantized_linear_equals_f_linear_with_dequantized_weight(bits, group_size):
    torch.manual_seed(0)
    lin = nn.Linear(100, 24)
    with torch.no_grad():
        lin.weight.copy_(weight())
    layer = Q.QuantizedLinear.from_linear(lin, bits, group_size, symmetric=bits == 8)
    x = torch.randn(2, 5, 100)
    if bits == 8:
        q, scale = Q.absmax_quantize(lin.weight, 8, dim=-1, scale_dtype=torch.float16)
        w_hat = Q.dequantize(q, scale)
    else:   # an independent route: per group, by slicing columns
        g = group_size or 100
        cols = [Q.zeropoint_quantize(lin.weight[:, i:i + g], 4, dim=-1, scale_dtype=torch.float16)
                for i in range(0, 100, g)]
        w_hat = torch.cat([Q.dequantize(*c) for c in cols], dim=1)
    assert torch.allclose(layer(x), F.linear(x, w_hat, lin.bias), atol=1e-6)
    assert torch.allclose(layer.qweight.dequantize(), w_hat, atol=1e-7)
    stored = {k: v for k, v in layer.state_dict().items()}
    assert not any(v.is_floating_point() and v.numel() == lin.weight.numel() for v in stored.values())
    assert stored["qweight.ints"].numel() == (100 * 24 // 2 if bits == 4 else 100 * 24)


def test_quantized_embedding_dequantizes_only_the_rows_asked_for():
    qw = Q.QuantizedWeight(weight(), 4, 32, symmetric=False)
    idx = torch.tensor([[3, 1, 3], [0, 23, 5]])
    assert torch.equal(Q.QuantizedEmbedding(qw)(idx), qw.dequantize()[idx])


# ---------------------------------------------------------------------- sizes ----
def small_model(**kw):
    torch.manual_seed(0)
    return SLM(SLMConfig(**{**dict(vocab_size=65, d_model=64, n_head=4, n_layer=2, block_size=64), **kw})).eval()


def test_model_bytes_counts_fp32_and_tied_weights_once():
    m = small_model()
    assert model_bytes_by_hand_fp32(m) == Q.model_bytes(m) == 4 * m.num_parameters()
    untied = small_model(tie_weights=False)
    assert Q.model_bytes(untied) == Q.model_bytes(m) + 4 * 65 * 64
    assert Q.model_bytes(m.to(torch.bfloat16)) == 2 * m.num_parameters()


def model_bytes_by_hand_fp32(m):
    cfg = m.cfg
    per_block = 4 * cfg.d_model * cfg.d_model + 3 * cfg.d_model * cfg.d_ff + 2 * cfg.d_model
    return 4 * (cfg.vocab_size * cfg.d_model + cfg.n_layer * per_block + cfg.d_model)


@pytest.mark.parametrize("bits,group_size", [(4, 64), (4, 32), (8, None)])
def test_model_bytes_of_a_quantized_model_by_hand(bits, group_size):
    m = small_model(d_ff=96)                 # 96 = 64 + 32: with groups of 64 the last group is short
    qm = Q.quantize_model(m, bits, group_size)
    d, f, V, L = 64, 96, 65, 2

    def matrix(out, inp):                    # integer codes + float16 scales + int8 zero-points
        groups = math.ceil(inp / (group_size or inp))
        codes = out * math.ceil(inp / 2) if bits == 4 else out * inp
        return codes + out * groups * 2 + (out * groups if bits < 8 else 0)

    block = 4 * matrix(d, d) + 2 * matrix(f, d) + matrix(d, f) + 2 * d * 4       # + two fp32 norms
    expected = L * block + matrix(V, d) + d * 4                                     # tied matrix once, final norm
    assert Q.model_bytes(qm) == expected
    assert qm.tok_emb.qweight is qm.lm_head.qweight                                 # shared, so stored once


def test_model_bytes_of_pytorch_dynamic_int8_by_hand():
    m = small_model(d_ff=96)
    dq = Q.torch_dynamic_int8(m)
    d, f, V, L = 64, 96, 65, 2
    matrix = lambda out, inp: out * inp + out * 16          # int8 + a float64 scale and an int64 zero per row
    per_layer_scalars = 4 + 8                                # each module's float32 scale and int64 zero-point
    linears = L * (4 * matrix(d, d) + 2 * matrix(f, d) + matrix(d, f)) + matrix(V, d)
    expected = linears + (L * 7 + 1) * per_layer_scalars + 4 * (V * d + (2 * L + 1) * d)   # fp32 embedding + norms
    assert Q.model_bytes(dq) == expected


# ------------------------------------------------------------- quantize_model ----
def test_quantize_model_copies_and_only_converts_what_was_asked():
    m = small_model()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    qm = Q.quantize_model(m, 4, 32, only=["blocks.1.mlp.down"])
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())          # original untouched
    converted = [n for n, mod in qm.named_modules() if isinstance(mod, Q.QuantizedLinear)]
    assert converted == ["blocks.1.mlp.down"]
    kept = Q.quantize_model(m, 4, 32, embedding=False)
    assert isinstance(kept.tok_emb, nn.Embedding) and isinstance(kept.lm_head, nn.Linear)
    assert kept.lm_head.weight is kept.tok_emb.weight
    assert Q.quantizable_layers(m)[0] == "tok_emb" and "lm_head" not in Q.quantizable_layers(m)
    with pytest.raises(SLMLabError, match="no Linear or Embedding named 'blocks.9.attn'"):
        Q.quantize_model(m, 4, 32, only=["blocks.9.attn"])
    with pytest.raises(SLMLabError, match="bits=1"):
        Q.quantize_model(m, 1)
    with pytest.raises(SLMLabError, match="group_size=0"):
        Q.quantize_model(m, 4, 0)


@pytest.fixture(scope="module")
def trained():
    """A small char model trained for a few seconds on Shakespeare, and fixed validation batches."""
    from slm_lab.data import get_batch
    from slm_lab.train import prepare_char_data

    tok, train_ids, val_ids = prepare_char_data("shakespeare")
    torch.manual_seed(0)
    model = SLM(SLMConfig(vocab_size=tok.vocab_size, d_model=64, n_head=4, n_layer=2, block_size=64))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(100):
        loss = model(*get_batch(train_ids, 16, 64, gen)).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), fixed_batches(val_ids, 64, 16, 4, seed=0)


def test_quantize_model_keeps_val_loss(trained):
    model, batches = trained
    base = mean_loss(model, batches)
    assert base < 2.6                                          # it learned something (ln V ≈ 4.4)
    for bits, group_size, tolerance in ((8, None, 0.01), (4, 32, 0.05)):
        qm = Q.quantize_model(model, bits, group_size)
        loss = mean_loss(qm, batches)
        assert abs(loss - base) / base < tolerance, (bits, group_size, loss, base)
        # an independent route to the same model: write the dequantized weights into a plain copy
        fake = SLM(model.cfg).eval()
        fake.load_state_dict(model.state_dict())
        with torch.no_grad():
            for name, mod in qm.named_modules():
                if isinstance(mod, (Q.QuantizedLinear, Q.QuantizedEmbedding)):
                    fake.get_submodule(name).weight.copy_(mod.qweight.dequantize())
        assert abs(mean_loss(fake, batches) - loss) < 1e-5
    coarse = mean_loss(Q.quantize_model(model, 2, None), batches)   # 2 bits per row: the test can tell
    assert coarse > base * 1.02 and coarse > loss


def test_pytorch_dynamic_int8_agrees_with_ours(trained):
    model, batches = trained
    base = mean_loss(model, batches)
    ours = mean_loss(Q.quantize_model(model, 8, None), batches)
    theirs = mean_loss(Q.torch_dynamic_int8(model), batches)
    assert abs(theirs - base) / base < 0.01 and abs(theirs - ours) / base < 0.01


def test_input_outliers_finds_a_planted_channel():
    """A channel 50× the others at the first layer's input shows as a ratio near 50 there, ~1 elsewhere."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16), nn.Linear(16, 8))
    x = torch.ones(2, 5, 16)
    x[..., 3] = 50.0
    r = Q.input_outliers(model, x)
    assert set(r) == {"0", "1"} and r["0"] == pytest.approx(50.0)
    flat = torch.ones(2, 5, 16)
    assert Q.input_outliers(model, flat)["0"] == pytest.approx(1.0)
    assert not any(m._forward_pre_hooks for m in model)                  # the hooks are gone afterwards
