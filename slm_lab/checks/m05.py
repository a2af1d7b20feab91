"""Checks for lab 05 — quantization: absmax int8, zero-point, int4 groups, packing, a quantized Linear.

The lab's conventions (the same as `slm_lab.quantize`, with float32 scales): a weight w is (rows, cols)
like nn.Linear.weight; one scale per row (output channel) or per group of consecutive columns;
b signed bits hold [-2^(b-1), 2^(b-1) - 1]; round to nearest. The reference is `slm_lab.quantize`.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import quantize as package
from . import call, expect_close, expect_tensor, fail, forbids, passed


def _int4_groups(w, group_size=32):
    """The package's int4 zero-point quantization of each group of `group_size` consecutive columns."""
    return package.quantize_groups(w, bits=4, group_size=group_size)


def _quantized_linear(linear: nn.Linear, group_size=32):
    """The package's weight-only int4 Linear with the lab's conventions: zero-point groups, float32 scales."""
    return package.QuantizedLinear.from_linear(linear, bits=4, group_size=group_size, symmetric=False,
                                               scale_dtype=torch.float32)


def _mistake_strided_scale(w, group_size=32):
    """The scales of groups made of every n-th column (n = cols // group_size) instead of neighbours:
    the package's group-wise quantization of w with those columns moved next to each other."""
    rows, cols = w.shape
    return _int4_groups(w.reshape(rows, group_size, cols // group_size).transpose(1, 2).reshape(rows, cols),
                        group_size)[1]


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
        fail(f"{what}: scale has shape {shape}; keep the reduced dimension (keepdim=True) so it is {expected} "
             "and broadcasts against w.")
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
@forbids("slm_lab.quantize.absmax_quantize", "slm_lab.quantize.dequantize")
def check_absmax(absmax_quantize, dequantize) -> None:
    """absmax_quantize(w, bits=8) → (q int8 (rows, cols), scale (rows, 1)); dequantize(q, scale, zero=None)."""
    what = "absmax_quantize"
    w = _weight()
    rows, cols = w.shape
    ref_q, ref_scale = package.absmax_quantize(w, 8, dim=1)
    ref_w_hat = package.dequantize(ref_q, ref_scale)
    _, ref_s4 = package.absmax_quantize(w, 4, dim=1)
    qmax4 = package.qrange(4)[1]
    out = _tuple(call(absmax_quantize, w.clone(), what=what), 2, what, "q, scale")
    q, scale = out
    expect_tensor(q, what=f"{what} (q)", shape=w.shape)
    _scale_shape(scale, rows, cols, what, (rows, 1))
    if q.dtype != torch.int8:
        fail(f"{what}: q has dtype {q.dtype}; store the integers as torch.int8 (one byte each).")
    if not torch.allclose(scale.double(), ref_scale.double(), rtol=1e-5):
        if torch.allclose(scale.double(), ref_scale.double() * 127 / 128, rtol=1e-5):       # max|w| / 128
            fail(f"{what}: scale = max|w| / 128 lets max|w| round to +128, which int8 cannot hold; "
                 "divide by 2^(bits-1) - 1 = 127.")
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
    expect_close(w_hat, ref_w_hat, what="dequantize(q, scale)", atol=1e-7, hint="w ≈ q · scale")
    _within_half_step(w, w_hat, ref_scale, what, ".")
    q4, s4 = _tuple(call(absmax_quantize, w.clone(), bits=4, what=f"{what}(w, bits=4)"), 2, what, "q, scale")
    if q4.abs().max() > qmax4 or not torch.allclose(s4.double().reshape(-1), ref_s4.double().reshape(-1), rtol=1e-5):
        fail(f"{what}(w, bits=4): use the bits argument — 4 bits give integers in [-7, 7] with scale = max|w| / 7.")
    w0 = w.clone()
    w0[3] = 0.0                                          # a pruned (all-zero) row: max|w| = 0
    q0, s0 = _tuple(call(absmax_quantize, w0, what=what), 2, what, "q, scale")
    w0_hat = call(dequantize, q0, s0, what="dequantize")
    if not torch.isfinite(w0_hat).all() or not torch.isfinite(s0).all() or (s0 == 0).any():
        fail(f"{what}: an all-zero row (a pruned neuron) gives a zero scale and NaN — guard it, "
             "e.g. scale.clamp(min=1e-12).")
    if w0_hat[3].abs().max() > 0:
        fail(f"{what}: an all-zero row should come back as zeros.")
    passed("absmax int8", "per-row scale, rounding, error ≤ scale/2, bits, zero rows")


@forbids("slm_lab.quantize.zeropoint_quantize", "slm_lab.quantize.dequantize")
def check_zeropoint(zeropoint_quantize, dequantize) -> None:
    """zeropoint_quantize(w, bits=8) → (q int8, scale (rows, 1), zero (rows, 1)); w ≈ (q - zero) · scale."""
    what = "zeropoint_quantize"
    w = _weight(seed=1)
    w = w + 0.5 * w.std(dim=1, keepdim=True)            # lopsided rows (more room above 0), both signs in each
    rows, cols = w.shape
    ref_q, ref_scale, ref_zero = package.zeropoint_quantize(w, 8, dim=1)
    qmin = package.qrange(8)[0]
    flipped = 2 * qmin - ref_zero.double()              # qmin + round(min / scale): the sign error
    unsigned = ref_zero.double() - qmin                 # -round(min / scale): codes 0 … 255
    ref_w_hat = package.dequantize(ref_q, ref_scale, ref_zero)
    plus_zero = package.dequantize(ref_q, ref_scale, -ref_zero.double())        # (q + zero) · scale
    qmin4, qmax4 = package.qrange(4)
    out = _tuple(call(zeropoint_quantize, w.clone(), what=what), 3, what, "q, scale, zero")
    q, scale, zero = out
    expect_tensor(q, what=f"{what} (q)", shape=w.shape)
    _scale_shape(scale, rows, cols, what, (rows, 1))
    expect_tensor(zero, what=f"{what} (zero)", shape=(rows, 1))
    if q.dtype != torch.int8:
        fail(f"{what}: q has dtype {q.dtype}; store the integers as torch.int8 in [-128, 127].")
    expect_close(scale, ref_scale, what=f"{what} (scale)", rtol=1e-5, atol=0,
                 hint="scale = (max - min) / (2^bits - 1), with min ≤ 0 ≤ max")
    if not torch.equal(zero.double().round(), ref_zero.double()):
        if torch.equal(zero.double().round(), flipped):
            fail(f"{what}: sign error in the zero-point — zero = qmin − round(min / scale), so that min maps to qmin.")
        if torch.equal(zero.double().round(), unsigned):
            fail(f"{what}: zero-point uses the unsigned range 0..255 — add qmin = -128 so the codes are signed int8.")
        expect_close(zero.double(), ref_zero.double(), what=f"{what} (zero)", atol=0.5,
                     hint="zero = qmin − round(min / scale)")
    if not torch.equal(q, ref_q):
        fail(f"{what}: {int((q != ref_q).sum())} of {q.numel()} integers differ from "
             "clamp(round(w / scale) + zero, -128, 127).")
    w_hat = call(dequantize, q, scale, zero, what="dequantize")
    if not torch.allclose(w_hat.double(), ref_w_hat.double(), atol=1e-7):
        if torch.allclose(w_hat.double(), plus_zero.double(), atol=1e-7):
            fail("dequantize: sign error in the zero-point — subtract it: (q − zero) · scale.")
        fail("dequantize(q, scale, zero) should return (q − zero) · scale.")
    _within_half_step(w, w_hat, ref_scale, what, ".")
    q4, s4, z4 = _tuple(call(zeropoint_quantize, w.clone(), bits=4, what=f"{what}(w, bits=4)"), 3, what, "q, scale, zero")
    if q4.min() < qmin4 or q4.max() > qmax4:
        fail(f"{what}(w, bits=4): int4 values outside [-8, 7] (got [{int(q4.min())}, {int(q4.max())}]) — "
             "use the bits argument: qmin = -2^(bits-1), qmax = 2^(bits-1) - 1.")
    passed("zero-point int8", "scale, zero-point, dequantize, error ≤ scale/2")


@forbids("slm_lab.quantize.quantize_groups", "slm_lab.quantize.dequantize_groups")
def check_int4_groups(quantize_int4_groups) -> None:
    """quantize_int4_groups(w, group_size=32) → (q int8 in [-8, 7] (rows, cols), scale, zero (rows, cols // g))."""
    what = "quantize_int4_groups"
    w = _weight(rows=8, cols=128, seed=3)
    w[:, 5] *= 20.0                                      # an outlier column: groups confine its damage
    rows, cols = w.shape
    ref_q, ref_scale, ref_zero = _int4_groups(w, 32)
    strided_scale = _mistake_strided_scale(w, 32)
    q, scale, zero = _tuple(call(quantize_int4_groups, w.clone(), 32, what=what), 3, what, "q, scale, zero")
    expect_tensor(q, what=f"{what} (q)", shape=w.shape)
    if q.min() < -8 or q.max() > 7:
        fail(f"{what}: int4 values outside [-8, 7] (got [{int(q.min())}, {int(q.max())}]) — "
             "4 signed bits hold -8 … 7 (qmin = -8, qmax = 7), not 0 … 15.")
    expect_tensor(scale, what=f"{what} (scale)")
    if tuple(scale.shape) != (rows, cols // 32):
        if tuple(scale.shape) in ((rows * cols // 32, 1), (rows * cols // 32,)):
            fail(f"{what}: scale has shape {tuple(scale.shape)}; reshape it to (rows, cols // group_size) = "
                 f"{(rows, cols // 32)}.")
        if tuple(scale.shape) in ((rows, 32), (1, cols), (cols // 32, rows)):
            fail(f"{what}: groups run along the wrong axis — each group is group_size neighbouring inputs "
                 f"within one row, so scale should be {(rows, cols // 32)}.")
        fail(f"{what}: scale has shape {tuple(scale.shape)}, expected (rows, cols // group_size) = {(rows, cols // 32)}.")
    expect_tensor(zero, what=f"{what} (zero)", shape=(rows, cols // 32))
    if not torch.allclose(scale.double(), ref_scale.double(), rtol=1e-5):
        if torch.allclose(scale.double(), strided_scale.double(), rtol=1e-5):
            fail(f"{what}: groups are not neighbouring inputs — w.reshape(rows, cols // group_size, group_size) "
                 "puts group_size consecutive columns in each group.")
        expect_close(scale, ref_scale, what=f"{what} (scale)", rtol=1e-5, atol=0,
                     hint="zero-point quantization with bits=4 on each group")
    if not (torch.equal(q, ref_q) and torch.equal(zero.double().round(), ref_zero.double())):
        fail(f"{what}: the integers or zero-points differ from zero-point int4 quantization of each group "
             "(zero = -8 − round(min / scale)).")
    _within_half_step(w, package.dequantize_groups(q, scale.float(), zero.float(), 32),
                      ref_scale.repeat_interleave(32, 1), what, ".")
    q2, s2, _ = _tuple(call(quantize_int4_groups, w.clone(), 64, what=what), 3, what, "q, scale, zero")
    if tuple(s2.shape) != (rows, 2):
        fail(f"{what}(w, group_size=64): use the group_size argument — expected scale of shape {(rows, 2)}, "
             f"got {tuple(s2.shape)}.")
    passed("int4 group-wise", "range [-8, 7], groups along rows, zero-points, error ≤ scale/2")


@forbids("slm_lab.quantize.pack_int4", "slm_lab.quantize.unpack_int4")
def check_pack(pack_int4, unpack_int4) -> None:
    """pack_int4(q (rows, cols) int8 in [-8, 7]) → (rows, cols // 2) uint8, column 2j in the low 4 bits;
    unpack_int4(packed) → q."""
    g = torch.Generator().manual_seed(4)
    every = torch.arange(-8, 8, dtype=torch.int8)                      # all 16 int4 values
    q = torch.cat([every.reshape(2, 8), every.flip(0).reshape(2, 8),
                   torch.randint(-8, 8, (4, 8), generator=g, dtype=torch.int8)])
    ref = package.pack_int4(q)
    swapped = package.pack_int4(q.reshape(q.shape[0], -1, 2).flip(-1).reshape(q.shape))    # columns 2j ↔ 2j+1
    example = package.pack_int4(torch.tensor([[-8, -7]], dtype=torch.int8)).item()
    read_backwards = package.unpack_int4(swapped)     # what unpacking reads with the nibbles the wrong way round
    packed = call(pack_int4, q.clone(), what="pack_int4")
    expect_tensor(packed, what="pack_int4", shape=(q.shape[0], q.shape[1] // 2))
    if packed.dtype != torch.uint8:
        fail(f"pack_int4 returned dtype {packed.dtype}; a byte holding two int4 values is torch.uint8.")
    if not torch.equal(packed, ref):
        if torch.equal(packed, swapped):
            fail("pack_int4: nibble order — column 2j goes in the low 4 bits and column 2j+1 in the high 4 bits.")
        fail(f"pack_int4([[-8, -7]]) should be {example} "
             "— mask each value to its 4-bit two's complement (q & 0xF) before shifting, then (hi << 4) | lo.")
    back = call(unpack_int4, ref.clone(), what="unpack_int4")
    expect_tensor(back, what="unpack_int4", shape=q.shape)
    if not torch.equal(back.to(torch.int16), q.to(torch.int16)):
        if torch.equal(back.to(torch.int16), q.to(torch.int16) & 0xF):
            fail("unpack_int4: values -8 … -1 came back as 8 … 15 — sign-extend: subtract 16 from nibbles ≥ 8.")
        if torch.equal(back.to(torch.int16), read_backwards.to(torch.int16)):
            fail("unpack_int4: nibble order — the low 4 bits are column 2j, the high 4 bits column 2j+1.")
        i, j = (int(v) for v in (back.to(torch.int16) != q.to(torch.int16)).nonzero()[0])
        fail(f"unpack_int4: the round trip is not exact — value {int(q[i, j])} at ({i}, {j}) came back as "
             f"{int(back[i, j])}.")
    if back.dtype != torch.int8:
        fail(f"unpack_int4 returned dtype {back.dtype}; return the integers as torch.int8.")
    passed("int4 packing", "all 16 values, nibble order, sign")


def _probe_quantized_linear(QuantizedLinear, lin, lin_nb, x) -> tuple:
    """Where the student's class lives: build it from both Linears; (its state_dict, its outputs on x)."""
    what = "QuantizedLinear"
    layer = call(QuantizedLinear, lin, what=f"{what}(linear)")
    if not isinstance(layer, nn.Module):
        fail(f"{what} should be an nn.Module subclass (class QuantizedLinear(nn.Module)).")
    state = {k: t.detach() for k, t in layer.state_dict().items()}
    y = call(layer, x, what=f"{what}.forward")
    layer_nb = call(QuantizedLinear, lin_nb, what=f"{what}(linear without bias)")
    return state, y, call(layer_nb, x[..., :64], what=f"{what}.forward (no bias)")


@forbids("slm_lab.quantize.QuantizedLinear", "slm_lab.quantize.QuantizedWeight", "slm_lab.quantize.quantize_groups")
def check_quantized_linear(QuantizedLinear) -> None:
    """QuantizedLinear(linear, group_size=32): int4 zero-point groups, packed; forward(x) = F.linear(x, Ŵ, b)."""
    what = "QuantizedLinear"
    torch.manual_seed(5)
    lin = nn.Linear(128, 48)
    with torch.no_grad():
        lin.weight.copy_(_weight(rows=48, cols=128, seed=5))
    lin_nb = nn.Linear(64, 16, bias=False)
    x = torch.randn(2, 5, 128, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        reference = _quantized_linear(lin)
        w_hat = reference.qweight.dequantize()
        ref, no_bias = reference(x), F.linear(x, w_hat)
        float_weight = lin(x)
        ref_nb = _quantized_linear(lin_nb)(x[..., :64])
    tensors, y, y_nb = call(_probe_quantized_linear, QuantizedLinear, lin, lin_nb, x, what=what)
    tensors = list(tensors.items()) if isinstance(tensors, dict) else []
    full = [k for k, t in tensors if isinstance(t, torch.Tensor) and t.is_floating_point()
            and t.numel() >= lin.weight.numel()]
    if full:
        fail(f"{what} keeps a float copy of the weight ({full[0]}) — store only the packed codes, scales and "
             "zero-points (register_buffer), and dequantize in forward.")
    if not any(isinstance(t, torch.Tensor) and t.dtype == torch.uint8 and t.numel() == lin.weight.numel() // 2
               for _, t in tensors):
        fail(f"{what}: no packed int4 buffer — register the codes as a uint8 buffer of shape (out, in // 2) "
             "(register_buffer, so it moves and saves with the module).")
    expect_tensor(y, what=f"{what}.forward", shape=(2, 5, 48))
    if not torch.allclose(y, ref, atol=1e-4, rtol=1e-4):
        if torch.allclose(y, no_bias, atol=1e-4, rtol=1e-4):
            fail(f"{what}.forward leaves out the bias.")
        if torch.allclose(y, float_weight, atol=1e-5):
            fail(f"{what}.forward uses the original float weight — dequantize the stored codes instead.")
        expect_close(y, ref, what=f"{what}.forward", atol=1e-4, hint="y = F.linear(x, dequantized weight, bias)")
    expect_close(y_nb, ref_nb, what=f"{what} without bias", atol=1e-4,
                 hint="a Linear may have bias=None")
    fp32 = sum(t.numel() * t.element_size() for t in lin.state_dict().values())
    stored = sum(t.numel() * t.element_size() for _, t in tensors if isinstance(t, torch.Tensor))
    passed("quantized Linear", f"matches F.linear with the dequantized weight; {stored:,} bytes vs {fp32:,} as nn.Linear")


CHECKS = {"05.absmax": check_absmax, "05.zeropoint": check_zeropoint, "05.int4_groups": check_int4_groups,
          "05.pack": check_pack, "05.qlinear": check_quantized_linear}
