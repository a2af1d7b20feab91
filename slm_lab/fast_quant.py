"""Quantized models that decode faster, not only smaller: the integers `quantize_model` stores, run by
PyTorch's packed weight-only CPU kernels instead of being dequantized on every call.

`QuantizedLinear` (module 05) rebuilds the float weight before each matmul, so it reads the small
integers *and* writes and reads a full float copy: slower than fp32. The kernels here read the integers
and multiply in one pass:
  int8, one scale per output channel, symmetric  → `aten._weight_int8pack_mm`
  int4, groups of 32–256 inputs (zero-points or not) → `aten._weight_int4pack_mm_for_cpu` (nibbles repacked)
Both take bfloat16 activations and bfloat16 scales (their fast paths on CPU: with float32 activations
the int8 kernel is slower than fp32's `F.linear`, measured in benchmarks/quant_speed.py), so outputs
agree with the teaching layer to bf16 rounding (about 0.3% relative), not bit for bit. The integers are
the same ones; only their layout changes.
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import SLMLabError
from .quantize import QuantizedLinear, QuantizedWeight

INT4_GROUPS = (32, 64, 128, 256)   # the group sizes the int4 kernel accepts
_N_MULTIPLE = 16                    # the int4 packing wants a multiple of 16 output rows: pad, then slice


def _rows(x: torch.Tensor) -> torch.Tensor:
    """x (..., in) → (M, in) bfloat16, the kernels' input."""
    return x.reshape(-1, x.shape[-1]).to(torch.bfloat16)


def int8_supported(qw: QuantizedWeight) -> bool:
    """The int8 kernel: 8 bits, symmetric, one scale per output channel."""
    return qw.bits == 8 and qw.symmetric and qw.group_size in (None, qw.in_features)


def int4_group(qw: QuantizedWeight) -> int | None:
    """The group size the int4 kernel would use for this weight, or None when it cannot run it. A row
    whose last group is shorter is padded with zero inputs to whole groups (they add nothing)."""
    g = qw.group_size or qw.in_features
    return g if qw.bits == 4 and g in INT4_GROUPS else None


class PackedInt8Linear(nn.Module):
    """y = x · (q · s)ᵀ + b with int8 q (out, in) and per-channel s, on `_weight_int8pack_mm`.
    x: (..., in) float → (..., out) in x's dtype."""

    def __init__(self, qweight: QuantizedWeight, bias: torch.Tensor | None = None):
        super().__init__()
        if not int8_supported(qweight):
            raise SLMLabError(f"the packed int8 kernel runs symmetric int8 with one scale per output channel; got "
                              f"{qweight.extra_repr()}. Quantize with bits=8, group_size=None, symmetric=True.")
        self.in_features, self.out_features = qweight.in_features, qweight.out_features
        self.register_buffer("ints", qweight.integers().contiguous())                  # (out, in) int8
        self.register_buffer("scale", qweight.scale.reshape(-1).to(torch.bfloat16))    # (out,)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.ops.aten._weight_int8pack_mm(_rows(x), self.ints, self.scale)
        y = y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias


class PackedInt4Linear(nn.Module):
    """y = x · Ŵᵀ + b with Ŵ = (q − zero) · s in groups of `group_size` inputs, on
    `_weight_int4pack_mm_for_cpu`. x: (..., in) float → (..., out) in x's dtype.

    The kernel computes (u − 8) · s + z from unsigned nibbles u in [0, 15]; the course stores signed
    q in [−8, 7] with an integer zero-point, so u = q + 8 and z = −zero · s give the same Ŵ.
    """

    def __init__(self, qweight: QuantizedWeight, bias: torch.Tensor | None = None):
        super().__init__()
        g = int4_group(qweight)
        if g is None:
            raise SLMLabError(f"the packed int4 kernel runs groups of {', '.join(map(str, INT4_GROUPS))} inputs; "
                              f"got {qweight.extra_repr()}. Quantize with bits=4 and one of those group sizes.")
        n_out, n_in = qweight.out_features, qweight.in_features
        self.in_features, self.out_features, self.group_size = n_in, n_out, g
        pad, self.pad_in = -n_out % _N_MULTIPLE, -n_in % g
        u = F.pad(qweight.integers().to(torch.int32) + 8, (0, self.pad_in), value=8)   # (out, in') in [0, 15]
        scale = qweight.scale.float().reshape(n_out, -1)                               # (out, in' / g)
        zero = torch.zeros_like(scale) if qweight.zero is None else qweight.zero.float().reshape(n_out, -1)
        u, scale, zero = (F.pad(t, (0, 0, 0, pad)) for t in (u, scale, zero))
        self.register_buffer("packed", torch.ops.aten._convert_weight_to_int4pack_for_cpu(u.contiguous(), 1))
        self.register_buffer("scale_zeros", torch.stack([scale, -zero * scale], -1)
                             .transpose(0, 1).contiguous().to(torch.bfloat16))         # (in / g, out, 2)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = _rows(x) if not self.pad_in else F.pad(_rows(x), (0, self.pad_in))
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(rows, self.packed, self.group_size, self.scale_zeros)
        y = y[:, : self.out_features].to(x.dtype).reshape(*x.shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias


def packed_linear(layer: QuantizedLinear) -> nn.Module:
    """The packed-kernel twin of a `QuantizedLinear`, or the layer itself when no kernel runs its format."""
    qw = layer.qweight
    if int8_supported(qw):
        return PackedInt8Linear(qw, layer.bias)
    if int4_group(qw) is not None:
        return PackedInt4Linear(qw, layer.bias)
    return layer


def pack_for_cpu(qmodel: nn.Module) -> nn.Module:
    """A copy of a `quantize_model` output whose QuantizedLinear layers run on the packed kernels where
    their format allows (the others stay as they are). Embeddings keep the teaching layout, which a row
    lookup reads directly; a head tied to one gets its own packed copy of the integers."""
    new = copy.deepcopy(qmodel)
    for name, m in list(new.named_modules()):
        if isinstance(m, QuantizedLinear):
            parent, _, attr = name.rpartition(".")
            setattr(new.get_submodule(parent) if parent else new, attr, packed_linear(m))
    return new.eval()


def packed_layers(model: nn.Module) -> dict[str, int]:
    """How many layers of each kind a model runs: what `pack_for_cpu` converted and what it left."""
    kinds = (PackedInt8Linear, PackedInt4Linear, QuantizedLinear, nn.Linear)
    counts = {k.__name__: 0 for k in kinds}
    for m in model.modules():
        for k in kinds:
            if isinstance(m, k):
                counts[k.__name__] += 1
                break
    return counts
