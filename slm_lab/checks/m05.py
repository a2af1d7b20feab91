"""Checks for lab 05 — quantization: absmax int8, zero-point, int4 groups, packing, a quantized Linear.

The lab's conventions (the same as `slm_lab.quantize`, with float32 scales): a weight w is (rows, cols)
like nn.Linear.weight; one scale per row (output channel) or per group of consecutive columns;
b signed bits hold [-2^(b-1), 2^(b-1) - 1]; round to nearest.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import call, expect_close, expect_tensor, fail, passed


# ------------------------------------------------------------------ references ----
def ref_absmax(w, bits=8):
    qmax = 2 ** (bits - 1) - 1
    scale = (w.abs().amax(dim=1, keepdim=True) / qmax).clamp(min=1e-12)
    return torch.round(w / scale).clamp(-qmax - 1, qmax).to(torch.int8), scale


def ref_zeropoint(w, bits=8, zero_sign=1.0):
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    lo = w.amin(dim=1, keepdim=True).clamp(max=0.0)
    hi = w.amax(dim=1, keepdim=True).clamp(min=0.0)
    scale = ((hi - lo) / (qmax - qmin)).clamp(min=1e-12)
    zero = qmin - zero_sign * torch.round(lo / scale)
    q = (torch.round(w / scale) + zero).clamp(qmin, qmax)
    return q.to(torch.int8), scale, zero


def ref_int4_groups(w, group_size=32, strided=False):
    rows, cols = w.shape
    n = cols // group_size
    if strided:      # the mistake: every n-th column in a group instead of neighbours
        g = w.reshape(rows, group_size, n).transpose(1, 2).reshape(rows * n, group_size)
    else:
        g = w.reshape(rows * n, group_size)
    q, scale, zero = ref_zeropoint(g, bits=4)
    q = q.reshape(rows, n, group_size)
    if strided:
        q = q.transpose(1, 2)
    return q.reshape(rows, cols), scale.reshape(rows, n), zero.reshape(rows, n)


def ref_dequant_groups(q, scale, zero, group_size=32):
    return (q.float() - zero.repeat_interleave(group_size, 1)) * scale.repeat_interleave(group_size, 1)


def ref_pack(q):
    u = q.to(torch.int16) & 0xF
    return (u[:, 0::2] | (u[:, 1::2] << 4)).to(torch.uint8)


def ref_unpack(p):
    p = p.to(torch.int16)
    v = torch.stack([p & 0xF, p >> 4], dim=-1).flatten(-2)
    return (v - 16 * (v > 7).to(torch.int16)).to(torch.int8)


def _weight(rows=16, cols=64, seed=0):
    """Rows of very different sizes (as in a trained layer), mixed signs in every row."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g) * 0.02
    return w * (2.0 ** (torch.arange(rows) % 6 - 3)).unsqueeze(1)


def _tuple(out, n, what, names):
    if not isinstance(out, (tuple, list)) or len(out) != n:
        fail(f"{what} should return a tuple ({names}), got {type(out).__name__}"
             f"{f' of length {len(out)}' if isinstance(out, (tuple, list)) else ''}.")
    return out


def _scale_shape(scale, rows, cols, what, expected):
    expect_tensor(scale, what=f"{what} (scale)")
    shape = tuple(scale.shape)
    if shape == expected:
        return
    if shape == (1, cols):
        fail(f"{what}: the scale is along the wrong axis — shape {shape} is one per column; "
             f"take max|w| over each row (dim=1, keepdim=True) for one scale per output channel.")
    if scale.numel() == 1:
        fail(f"{what}: one scale for the whole tensor — per-channel quantization needs one per row, shape {expected}.")
    if shape == (rows,):
        fail(f"{what}: scale has shape {shape}; keep the reduced dimension (keepdim=True) so it is {expected} and broadcasts against w.")
    fail(f"{what}: scale has shape {shape}, expected {expected}.")


def _within_half_step(w, w_hat, scale, what, why):
    err = (w.double() - w_hat.double()).abs()
    bound = scale.double().expand_as(err) / 2 * (1 + 1e-5) + 1e-9
    if torch.isnan(w_hat).any():
        fail(f"{what}: NaN after dequantizing{why}")
    bad = err > bound
    if bad.any():
        i, j = (int(v) for v in bad.nonzero()[0])
        fail(f"{what}: w[{i},{j}] = {w[i, j].item():.4g} comes back as {w_hat[i, j].item():.4g}, "
             f"an error of {err[i, j].item():.3g} > scale/2 = {bound[i, j].item():.3g}{why}")


# ------------------------------------------------------------------- checks ----
def check_absmax(absmax_quantize, dequantize) -> None:
    """absmax_quantize(w, bits=8) → (q int8 (rows, cols), scale (rows, 1)); dequantize(q, scale, zero=None)."""
    what = "absmax_quantize"
    w = _weight()
    rows, cols = w.shape
    out = _tuple(call(absmax_quantize, w.clone(), what=what), 2, what, "q, scale")
    q, scale = out
    expect_tensor(q, what=f"{what} (q)", shape=w.shape)
    _scale_shape(scale, rows, cols, what, (rows, 1))
    if q.dtype != torch.int8:
        fail(f"{what}: q has dtype {q.dtype}; store the integers as torch.int8 (one byte each).")
    ref_q, ref_scale = ref_absmax(w)
    amax = w.abs().amax(dim=1, keepdim=True)
    if not torch.allclose(scale.double(), ref_scale.double(), rtol=1e-5):
        if torch.allclose(scale.double(), (amax / 128).double(), rtol=1e-5):
            fail(f"{what}: scale = max|w| / 128 lets max|w| round to +128, which int8 cannot hold; divide by 2^(bits-1) - 1 = 127.")
        expect_close(scale, ref_scale, what=f"{what} (scale)", rtol=1e-5, atol=0,
                     hint="scale = max|w| over the row / (2^(bits-1) - 1)")
    if not torch.equal(q, ref_q):
        x = w / ref_scale
        if torch.equal(q, x.trunc().to(torch.int8)):
            fail(f"{what}: truncates toward zero instead of rounding to the nearest integer — use torch.round "
                 "(only rounding keeps every error within scale/2).")
        if torch.equal(q, x.floor().to(torch.int8)):
            fail(f"{what}: rounds down (floor) instead of to the nearest integer — use torch.round.")
        n = int((q != ref_q).sum())
        fail(f"{what}: {n} of {q.numel()} integers differ from round(w / scale).")
    w_hat = call(dequantize, q, scale, what="dequantize")
    expect_close(w_hat, ref_q.float() * ref_scale, what="dequantize(q, scale)", atol=1e-7, hint="w ≈ q · scale")
    _within_half_step(w, w_hat, ref_scale, what, ".")
    q4, s4 = _tuple(call(absmax_quantize, w.clone(), bits=4, what=f"{what}(w, bits=4)"), 2, what, "q, scale")
    if q4.abs().max() > 7 or not torch.allclose(s4.double().reshape(-1), (amax / 7).double().reshape(-1), rtol=1e-5):
        fail(f"{what}(w, bits=4): use the bits argument — 4 bits give integers in [-7, 7] with scale = max|w| / 7.")
    w0 = w.clone()
    w0[3] = 0.0                                          # a pruned (all-zero) row: max|w| = 0
    q0, s0 = _tuple(call(absmax_quantize, w0, what=what), 2, what, "q, scale")
    w0_hat = call(dequantize, q0, s0, what="dequantize")
    if not torch.isfinite(w0_hat).all() or not torch.isfinite(s0).all() or (s0 == 0).any():
        fail(f"{what}: an all-zero row (a pruned neuron) gives a zero scale and NaN — guard it, e.g. scale.clamp(min=1e-12).")
    if w0_hat[3].abs().max() > 0:
        fail(f"{what}: an all-zero row should come back as zeros.")
    passed("absmax int8", "per-row scale, rounding, error ≤ scale/2, bits, zero rows")


def check_zeropoint(zeropoint_quantize, dequantize) -> None:
    """zeropoint_quantize(w, bits=8) → (q int8, scale (rows, 1), zero (rows, 1)); w ≈ (q - zero) · scale."""
    what = "zeropoint_quantize"
    w = _weight(seed=1)
    w = w + 0.5 * w.std(dim=1, keepdim=True)            # lopsided rows (more room above 0), both signs in each
    rows, cols = w.shape
    out = _tuple(call(zeropoint_quantize, w.clone(), what=what), 3, what, "q, scale, zero")
    q, scale, zero = out
    expect_tensor(q, what=f"{what} (q)", shape=w.shape)
    _scale_shape(scale, rows, cols, what, (rows, 1))
    expect_tensor(zero, what=f"{what} (zero)", shape=(rows, 1))
    if q.dtype != torch.int8:
        fail(f"{what}: q has dtype {q.dtype}; store the integers as torch.int8 in [-128, 127].")
    ref_q, ref_scale, ref_zero = ref_zeropoint(w)
    expect_close(scale, ref_scale, what=f"{what} (scale)", rtol=1e-5, atol=0,
                 hint="scale = (max - min) / (2^bits - 1), with min ≤ 0 ≤ max")
    if not torch.equal(zero.double().round(), ref_zero.double()):
        _, _, flipped = ref_zeropoint(w, zero_sign=-1.0)
        if torch.equal(zero.double().round(), flipped.double()):
            fail(f"{what}: sign error in the zero-point — zero = qmin − round(min / scale), so that min maps to qmin.")
        if torch.equal(zero.double().round(), (-torch.round(w.amin(1, keepdim=True) / ref_scale)).double()):
            fail(f"{what}: zero-point uses the unsigned range 0..255 — add qmin = -128 so the codes are signed int8.")
        expect_close(zero.double(), ref_zero.double(), what=f"{what} (zero)", atol=0.5,
                     hint="zero = qmin − round(min / scale)")
    if not torch.equal(q, ref_q):
        fail(f"{what}: {int((q != ref_q).sum())} of {q.numel()} integers differ from clamp(round(w / scale) + zero, -128, 127).")
    w_hat = call(dequantize, q, scale, zero, what="dequantize")
    if not torch.allclose(w_hat.double(), ((ref_q.double() - ref_zero) * ref_scale).double(), atol=1e-7):
        if torch.allclose(w_hat.double(), ((ref_q.double() + ref_zero) * ref_scale).double(), atol=1e-7):
            fail("dequantize: sign error in the zero-point — subtract it: (q − zero) · scale.")
        fail("dequantize(q, scale, zero) should return (q − zero) · scale.")
    _within_half_step(w, w_hat, ref_scale, what, ".")
    q4, s4, z4 = _tuple(call(zeropoint_quantize, w.clone(), bits=4, what=f"{what}(w, bits=4)"), 3, what, "q, scale, zero")
    if q4.min() < -8 or q4.max() > 7:
        fail(f"{what}(w, bits=4): int4 values outside [-8, 7] (got [{int(q4.min())}, {int(q4.max())}]) — use the bits argument: qmin = -2^(bits-1), qmax = 2^(bits-1) - 1.")
    passed("zero-point int8", "scale, zero-point, dequantize, error ≤ scale/2")


def check_int4_groups(quantize_int4_groups) -> None:
    """quantize_int4_groups(w, group_size=32) → (q int8 in [-8, 7] (rows, cols), scale, zero (rows, cols // g))."""
    what = "quantize_int4_groups"
    w = _weight(rows=8, cols=128, seed=3)
    w[:, 5] *= 20.0                                      # an outlier column: groups confine its damage
    rows, cols = w.shape
    q, scale, zero = _tuple(call(quantize_int4_groups, w.clone(), 32, what=what), 3, what, "q, scale, zero")
    expect_tensor(q, what=f"{what} (q)", shape=w.shape)
    if q.min() < -8 or q.max() > 7:
        fail(f"{what}: int4 values outside [-8, 7] (got [{int(q.min())}, {int(q.max())}]) — "
             "4 signed bits hold -8 … 7 (qmin = -8, qmax = 7), not 0 … 15.")
    expect_tensor(scale, what=f"{what} (scale)")
    if tuple(scale.shape) != (rows, cols // 32):
        if tuple(scale.shape) in ((rows * cols // 32, 1), (rows * cols // 32,)):
            fail(f"{what}: scale has shape {tuple(scale.shape)}; reshape it to (rows, cols // group_size) = {(rows, cols // 32)}.")
        if tuple(scale.shape) in ((rows, 32), (1, cols), (cols // 32, rows)):
            fail(f"{what}: groups run along the wrong axis — each group is group_size neighbouring inputs "
                 f"within one row, so scale should be {(rows, cols // 32)}.")
        fail(f"{what}: scale has shape {tuple(scale.shape)}, expected (rows, cols // group_size) = {(rows, cols // 32)}.")
    expect_tensor(zero, what=f"{what} (zero)", shape=(rows, cols // 32))
    ref_q, ref_scale, ref_zero = ref_int4_groups(w, 32)
    if not torch.allclose(scale.double(), ref_scale.double(), rtol=1e-5):
        _, strided_scale, _ = ref_int4_groups(w, 32, strided=True)
        if torch.allclose(scale.double(), strided_scale.double(), rtol=1e-5):
            fail(f"{what}: groups are not neighbouring inputs — w.reshape(rows, cols // group_size, group_size) "
                 "puts group_size consecutive columns in each group.")
        expect_close(scale, ref_scale, what=f"{what} (scale)", rtol=1e-5, atol=0,
                     hint="zero-point quantization with bits=4 on each group")
    if not (torch.equal(q, ref_q) and torch.equal(zero.double().round(), ref_zero.double())):
        fail(f"{what}: the integers or zero-points differ from zero-point int4 quantization of each group "
             "(zero = -8 − round(min / scale)).")
    _within_half_step(w, ref_dequant_groups(q, scale.float(), zero.float()), ref_scale.repeat_interleave(32, 1), what, ".")
    q2, s2, _ = _tuple(call(quantize_int4_groups, w.clone(), 64, what=what), 3, what, "q, scale, zero")
    if tuple(s2.shape) != (rows, 2):
        fail(f"{what}(w, group_size=64): use the group_size argument — expected scale of shape {(rows, 2)}, got {tuple(s2.shape)}.")
    passed("int4 group-wise", "range [-8, 7], groups along rows, zero-points, error ≤ scale/2")


def check_pack(pack_int4, unpack_int4) -> None:
    """pack_int4(q (rows, cols) int8 in [-8, 7]) → (rows, cols // 2) uint8, column 2j in the low 4 bits;
    unpack_int4(packed) → q."""
    g = torch.Generator().manual_seed(4)
    every = torch.arange(-8, 8, dtype=torch.int8)                      # all 16 int4 values
    q = torch.cat([every.reshape(2, 8), every.flip(0).reshape(2, 8),
                   torch.randint(-8, 8, (4, 8), generator=g, dtype=torch.int8)])
    packed = call(pack_int4, q.clone(), what="pack_int4")
    expect_tensor(packed, what="pack_int4", shape=(q.shape[0], q.shape[1] // 2))
    if packed.dtype != torch.uint8:
        fail(f"pack_int4 returned dtype {packed.dtype}; a byte holding two int4 values is torch.uint8.")
    ref = ref_pack(q)
    if not torch.equal(packed, ref):
        swapped = ((ref & 0xF) << 4) | (ref >> 4)
        if torch.equal(packed, swapped):
            fail("pack_int4: nibble order — column 2j goes in the low 4 bits and column 2j+1 in the high 4 bits.")
        fail(f"pack_int4([[-8, -7]]) should be {ref_pack(torch.tensor([[-8, -7]], dtype=torch.int8)).item()} "
             "— mask each value to its 4-bit two's complement (q & 0xF) before shifting, then (hi << 4) | lo.")
    back = call(unpack_int4, ref.clone(), what="unpack_int4")
    expect_tensor(back, what="unpack_int4", shape=q.shape)
    if not torch.equal(back.to(torch.int16), q.to(torch.int16)):
        if torch.equal(back.to(torch.int16), q.to(torch.int16) & 0xF):
            fail("unpack_int4: values -8 … -1 came back as 8 … 15 — sign-extend: subtract 16 from nibbles ≥ 8.")
        if torch.equal(back.to(torch.int16), ref_unpack(((ref & 0xF) << 4) | (ref >> 4)).to(torch.int16)):
            fail("unpack_int4: nibble order — the low 4 bits are column 2j, the high 4 bits column 2j+1.")
        i, j = (int(v) for v in (back.to(torch.int16) != q.to(torch.int16)).nonzero()[0])
        fail(f"unpack_int4: the round trip is not exact — value {int(q[i, j])} at ({i}, {j}) came back as {int(back[i, j])}.")
    if back.dtype != torch.int8:
        fail(f"unpack_int4 returned dtype {back.dtype}; return the integers as torch.int8.")
    passed("int4 packing", "all 16 values, nibble order, sign")


def check_quantized_linear(QuantizedLinear) -> None:
    """QuantizedLinear(linear, group_size=32): int4 zero-point groups, packed; forward(x) = F.linear(x, Ŵ, b)."""
    what = "QuantizedLinear"
    torch.manual_seed(5)
    lin = nn.Linear(128, 48)
    with torch.no_grad():
        lin.weight.copy_(_weight(rows=48, cols=128, seed=5))
    layer = call(QuantizedLinear, lin, what=f"{what}(linear)")
    if not isinstance(layer, nn.Module):
        fail(f"{what} should be an nn.Module subclass (class QuantizedLinear(nn.Module)).")
    tensors = list(layer.state_dict().items())
    full = [k for k, t in tensors if t.is_floating_point() and t.numel() >= lin.weight.numel()]
    if full:
        fail(f"{what} keeps a float copy of the weight ({full[0]}) — store only the packed codes, scales and "
             "zero-points (register_buffer), and dequantize in forward.")
    if not any(t.dtype == torch.uint8 and t.numel() == lin.weight.numel() // 2 for _, t in tensors):
        fail(f"{what}: no packed int4 buffer — register the codes as a uint8 buffer of shape (out, in // 2) "
             "(register_buffer, so it moves and saves with the module).")
    x = torch.randn(2, 5, 128, generator=torch.Generator().manual_seed(6))
    y = call(layer, x, what=f"{what}.forward")
    q, s, z = ref_int4_groups(lin.weight.detach(), 32)
    w_hat = ref_dequant_groups(q, s, z)
    ref = F.linear(x, w_hat, lin.bias.detach())
    expect_tensor(y, what=f"{what}.forward", shape=(2, 5, 48))
    if not torch.allclose(y, ref, atol=1e-4, rtol=1e-4):
        if torch.allclose(y, F.linear(x, w_hat), atol=1e-4, rtol=1e-4):
            fail(f"{what}.forward leaves out the bias.")
        if torch.allclose(y, F.linear(x, lin.weight.detach(), lin.bias.detach()), atol=1e-5):
            fail(f"{what}.forward uses the original float weight — dequantize the stored codes instead.")
        expect_close(y, ref, what=f"{what}.forward", atol=1e-4, hint="y = F.linear(x, dequantized weight, bias)")
    lin_nb = nn.Linear(64, 16, bias=False)
    layer_nb = call(QuantizedLinear, lin_nb, what=f"{what}(linear without bias)")
    y_nb = call(layer_nb, x[..., :64], what=f"{what}.forward (no bias)")
    q, s, z = ref_int4_groups(lin_nb.weight.detach(), 32)
    expect_close(y_nb, F.linear(x[..., :64], ref_dequant_groups(q, s, z)), what=f"{what} without bias", atol=1e-4,
                 hint="a Linear may have bias=None")
    fp32 = sum(t.numel() * t.element_size() for t in lin.state_dict().values())
    stored = sum(t.numel() * t.element_size() for _, t in tensors)
    passed("quantized Linear", f"matches F.linear with the dequantized weight; {stored:,} bytes vs {fp32:,} as nn.Linear")


CHECKS = {"05.absmax": check_absmax, "05.zeropoint": check_zeropoint, "05.int4_groups": check_int4_groups,
          "05.pack": check_pack, "05.qlinear": check_quantized_linear}
