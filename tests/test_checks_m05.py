"""Lab 05 checks accept the reference, reject the unsolved stub and reject planted quantization
mistakes — truncation, the scale along the wrong axis, int4 values outside [-8, 7], a sign error in
the zero-point, a Linear that keeps its float weight — each with the one-line reason a student reads."""
import torch
import torch.nn as nn
import torch.nn.functional as F

from slm_lab import quantize
from slm_lab.checks import m05
from checking import rejects, todo


# A student's answers, written out (independent of slm_lab.quantize, the checks' reference); the knobs
# plant mistakes.
def zeropoint(w, bits=8, zero_sign=1.0):
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    lo = w.amin(dim=1, keepdim=True).clamp(max=0.0)
    hi = w.amax(dim=1, keepdim=True).clamp(min=0.0)
    scale = ((hi - lo) / (qmax - qmin)).clamp(min=1e-12)
    zero = qmin - zero_sign * torch.round(lo / scale)
    q = (torch.round(w / scale) + zero).clamp(qmin, qmax)
    return q.to(torch.int8), scale, zero


def int4_groups(w, group_size=32, strided=False):
    rows, cols = w.shape
    n = cols // group_size
    if strided:      # the mistake: every n-th column in a group instead of neighbours
        g = w.reshape(rows, group_size, n).transpose(1, 2).reshape(rows * n, group_size)
    else:
        g = w.reshape(rows * n, group_size)
    q, scale, zero = zeropoint(g, bits=4)
    q = q.reshape(rows, n, group_size)
    if strided:
        q = q.transpose(1, 2)
    return q.reshape(rows, cols), scale.reshape(rows, n), zero.reshape(rows, n)


def dequant_groups(q, scale, zero, group_size=32):
    return (q.float() - zero.repeat_interleave(group_size, 1)) * scale.repeat_interleave(group_size, 1)


# ------------------------------------------------------------------- absmax ----
def absmax_good(w, bits=8):
    qmax = 2 ** (bits - 1) - 1
    scale = (w.abs().amax(dim=1, keepdim=True) / qmax).clamp(min=1e-8)
    return torch.round(w / scale).clamp(-qmax - 1, qmax).to(torch.int8), scale


def dequant_good(q, scale, zero=None):
    return (q.float() - (0 if zero is None else zero)) * scale


def absmax_trunc(w, bits=8):
    qmax = 2 ** (bits - 1) - 1
    scale = (w.abs().amax(dim=1, keepdim=True) / qmax).clamp(min=1e-8)
    return (w / scale).to(torch.int8), scale            # a cast truncates toward zero


def absmax_wrong_axis(w, bits=8):
    qmax = 2 ** (bits - 1) - 1
    scale = (w.abs().amax(dim=0, keepdim=True) / qmax).clamp(min=1e-8)
    return torch.round(w / scale).clamp(-qmax - 1, qmax).to(torch.int8), scale


def absmax_per_tensor(w, bits=8):
    qmax = 2 ** (bits - 1) - 1
    scale = w.abs().max() / qmax
    return torch.round(w / scale).to(torch.int8), scale


def absmax_128(w, bits=8):
    scale = w.abs().amax(dim=1, keepdim=True) / 2 ** (bits - 1)
    return torch.round(w / scale).clamp(-128, 127).to(torch.int8), scale


def absmax_no_guard(w, bits=8):
    qmax = 2 ** (bits - 1) - 1
    scale = w.abs().amax(dim=1, keepdim=True) / qmax
    return torch.round(w / scale).to(torch.int8), scale


def absmax_ignores_bits(w, bits=8):
    return absmax_good(w, 8)


def test_absmax_check():
    m05.check_absmax(absmax_good, dequant_good)
    m05.check_absmax(lambda w, bits=8: quantize.absmax_quantize(w, bits, dim=1), quantize.dequantize)
    rejects(m05.check_absmax, todo, dequant_good, match="not done yet")
    rejects(m05.check_absmax, absmax_good, todo, match="not done yet")
    rejects(m05.check_absmax, absmax_trunc, dequant_good, match="truncates toward zero instead of rounding")
    rejects(m05.check_absmax, absmax_wrong_axis, dequant_good, match="scale is along the wrong axis")
    rejects(m05.check_absmax, absmax_per_tensor, dequant_good, match="one scale for the whole tensor")
    rejects(m05.check_absmax, absmax_128, dequant_good, match="divide by 2^(bits-1) - 1 = 127")
    rejects(m05.check_absmax, absmax_no_guard, dequant_good, match="all-zero row")
    rejects(m05.check_absmax, absmax_ignores_bits, dequant_good, match="use the bits argument")
    rejects(m05.check_absmax, lambda w, bits=8: (absmax_good(w, bits)[0].float(), absmax_good(w, bits)[1]),
            dequant_good, match="torch.int8")
    rejects(m05.check_absmax, absmax_good, lambda q, s, z=None: q.float() / s, match="dequantize(q, scale)")


# ---------------------------------------------------------------- zero-point ----
def zp_good(w, bits=8):
    q, scale, zero = zeropoint(w, bits)
    return q, scale, zero.to(torch.int8)


def zp_sign_error(w, bits=8):
    q, scale, zero = zeropoint(w, bits, zero_sign=-1.0)
    return q, scale, zero


def zp_unsigned(w, bits=8):
    lo = w.amin(1, keepdim=True).clamp(max=0)
    hi = w.amax(1, keepdim=True).clamp(min=0)
    scale = (hi - lo) / (2 ** bits - 1)
    zero = -torch.round(lo / scale)
    return (torch.round(w / scale) + zero).clamp(0, 2 ** bits - 1).to(torch.int8), scale, zero


def zp_fixed_bits(w, bits=8):
    q, scale, zero = zeropoint(w, 8)
    if bits == 4:                       # plausible: 4-bit codes kept in the unsigned range 0..15
        q = (q.to(torch.int16) + 128).clamp(0, 15).to(torch.int8)
    return q, scale, zero


def test_zeropoint_check():
    m05.check_zeropoint(zp_good, dequant_good)
    rejects(m05.check_zeropoint, todo, dequant_good, match="not done yet")
    rejects(m05.check_zeropoint, zp_sign_error, dequant_good, match="sign error in the zero-point")
    rejects(m05.check_zeropoint, zp_good, lambda q, s, z=None: (q.float() + z) * s,
            match="dequantize: sign error in the zero-point")
    rejects(m05.check_zeropoint, zp_unsigned, dequant_good, match="unsigned range")
    rejects(m05.check_zeropoint, lambda w, bits=8: absmax_good(w, bits) + (torch.zeros(w.shape[0], 1),),
            dequant_good, match="scale")
    rejects(m05.check_zeropoint, zp_fixed_bits, dequant_good, match="int4 values outside [-8, 7]")
    rejects(m05.check_zeropoint, lambda w, bits=8: zp_good(w, bits)[:2], dequant_good, match="should return a tuple")


# --------------------------------------------------------------- int4 groups ----
def groups_good(w, group_size=32):
    rows, cols = w.shape
    q, scale, zero = zp_good(w.reshape(-1, group_size), 4)
    return q.reshape(rows, cols), scale.reshape(rows, -1), zero.reshape(rows, -1)


def groups_unsigned(w, group_size=32):
    q, scale, zero = groups_good(w, group_size)
    return q.to(torch.int16) + 8, scale, zero + 8


def groups_strided(w, group_size=32):
    return int4_groups(w, group_size, strided=True)


def groups_wrong_dim(w, group_size=32):
    rows, cols = w.shape
    g = w.reshape(rows, cols // group_size, group_size)
    lo, hi = g.amin(1, keepdim=True).clamp(max=0), g.amax(1, keepdim=True).clamp(min=0)
    scale = (hi - lo) / 15
    zero = -8 - torch.round(lo / scale)
    q = (torch.round(g / scale) + zero).clamp(-8, 7)
    return q.reshape(rows, cols).to(torch.int8), scale.reshape(rows, -1), zero.reshape(rows, -1)


def groups_fixed_size(w, group_size=32):
    return groups_good(w, 32)


def groups_qmax8(w, group_size=32):
    rows, cols = w.shape
    g = w.reshape(-1, group_size)
    lo, hi = g.amin(1, keepdim=True).clamp(max=0), g.amax(1, keepdim=True).clamp(min=0)
    scale = (hi - lo) / 16                    # 17 levels: -8 … 8
    zero = -8 - torch.round(lo / scale)
    q = torch.round(g / scale) + zero
    return q.reshape(rows, cols).to(torch.int8), scale.reshape(rows, -1), zero.reshape(rows, -1)


def test_int4_groups_check():
    m05.check_int4_groups(groups_good)
    m05.check_int4_groups(lambda w, group_size=32: int4_groups(w, group_size))
    rejects(m05.check_int4_groups, todo, match="not done yet")
    rejects(m05.check_int4_groups, groups_unsigned, match="int4 values outside [-8, 7]")
    rejects(m05.check_int4_groups, groups_qmax8, match="int4 values outside [-8, 7]")
    rejects(m05.check_int4_groups, groups_strided, match="groups are not neighbouring inputs")
    rejects(m05.check_int4_groups, groups_wrong_dim, match="groups run along the wrong axis")
    rejects(m05.check_int4_groups, groups_fixed_size, match="use the group_size argument")
    rejects(m05.check_int4_groups, lambda w, group_size=32: (lambda q, s, z: (q, s.reshape(-1, 1), z))(*groups_good(w, group_size)),
            match="reshape it to (rows, cols // group_size)")


# -------------------------------------------------------------------- packing ----
def pack_good(q):
    u = q.to(torch.int16) & 0xF
    return (u[:, 0::2] | (u[:, 1::2] << 4)).to(torch.uint8)


def unpack_good(p):
    p = p.to(torch.int16)
    v = torch.stack([p & 0xF, p >> 4], dim=-1).flatten(-2)
    return (v - 16 * (v > 7).to(torch.int16)).to(torch.int8)


def pack_swapped(q):
    u = q.to(torch.int16) & 0xF
    return ((u[:, 0::2] << 4) | u[:, 1::2]).to(torch.uint8)


def pack_no_mask(q):
    return (q[:, 0::2].to(torch.int16) | (q[:, 1::2].to(torch.int16) << 4)).to(torch.uint8)


def unpack_no_sign(p):
    p = p.to(torch.int16)
    return torch.stack([p & 0xF, p >> 4], -1).flatten(-2).to(torch.int8)


def unpack_swapped(p):
    p = p.to(torch.int16)
    v = torch.stack([p >> 4, p & 0xF], -1).flatten(-2)
    return (v - 16 * (v > 7).to(torch.int16)).to(torch.int8)


def test_pack_check():
    m05.check_pack(pack_good, unpack_good)
    rejects(m05.check_pack, todo, unpack_good, match="not done yet")
    rejects(m05.check_pack, pack_good, todo, match="not done yet")
    rejects(m05.check_pack, pack_swapped, unpack_good, match="nibble order")
    rejects(m05.check_pack, pack_no_mask, unpack_good, match="mask each value")
    rejects(m05.check_pack, pack_good, unpack_no_sign, match="sign-extend")
    rejects(m05.check_pack, pack_good, unpack_swapped, match="nibble order")
    rejects(m05.check_pack, lambda q: q.to(torch.uint8), unpack_good, match="shape")


def test_pack_reference_is_exact():
    every = torch.arange(-8, 8, dtype=torch.int8).reshape(1, 16)
    assert torch.equal(quantize.unpack_int4(quantize.pack_int4(every)), every)
    assert quantize.pack_int4(torch.tensor([[-8, 7]], dtype=torch.int8)).item() == 0x78
    assert torch.equal(pack_good(every), quantize.pack_int4(every))        # the student answer above is right


# ----------------------------------------------------------- quantized Linear ----
def make_qlinear(keep_float=False, packed=True, bias=True, use_float=False):
    class QLinear(nn.Module):
        def __init__(self, linear, group_size=32):
            super().__init__()
            self.group_size = group_size
            q, s, z = int4_groups(linear.weight.detach(), group_size)
            self.register_buffer("codes", pack_good(q) if packed else q)
            self.register_buffer("scale", s)
            self.register_buffer("zero", z)
            self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone())
            if keep_float or use_float:
                self.weight = nn.Parameter(linear.weight.detach().clone())

        def forward(self, x):
            if use_float:
                return F.linear(x, self.weight, self.bias)
            q = unpack_good(self.codes) if packed else self.codes
            w = dequant_groups(q, self.scale, self.zero, self.group_size)
            return F.linear(x, w, self.bias if bias else None)
    return QLinear


def test_quantized_linear_check(capsys):
    m05.check_quantized_linear(make_qlinear())
    assert "bytes vs" in capsys.readouterr().out
    rejects(m05.check_quantized_linear, todo, match="not done yet")
    rejects(m05.check_quantized_linear, make_qlinear(keep_float=True), match="keeps a float copy of the weight")
    rejects(m05.check_quantized_linear, make_qlinear(packed=False), match="no packed int4 buffer")
    rejects(m05.check_quantized_linear, make_qlinear(bias=False), match="leaves out the bias")

    class Plain(nn.Linear):                 # "quantized" in name only
        def __init__(self, linear, group_size=32):
            super().__init__(linear.in_features, linear.out_features)
    rejects(m05.check_quantized_linear, Plain, match="keeps a float copy")
