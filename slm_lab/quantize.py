"""Quantization: store weights in fewer bits — absmax and zero-point integers per tensor, channel or
group, int4 packed two to a byte, a weight-only quantized Linear, and a model's true size in bytes.

Conventions. A weight W has the shape of `nn.Linear.weight`, (out, in). "Per channel" means one scale
per output row; "group-wise" cuts every row into groups of `group_size` consecutive inputs, each with
its own scale (and zero-point). b signed bits hold the integers [-2^(b-1), 2^(b-1) - 1]: [-128, 127]
for int8, [-8, 7] for int4. Rounding to nearest puts every dequantized value within scale/2 of the
original — the bound the tests check.

What is stored (and counted by `model_bytes`): integers as int8 (int4: two per uint8 byte), scales
as float16 (rounded *up* from float32 so that no value falls outside the integer range), zero-points
as int8. Weight-only: activations stay float32; each forward dequantizes the weights on the fly.
"""
from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import SLMLabError

_TINY_SCALE = 2.0 ** -24     # the smallest float16 step: a scale never underflows to 0 when stored


def qrange(bits: int) -> tuple[int, int]:
    """The signed integer range of `bits` bits: (-2^(bits-1), 2^(bits-1) - 1)."""
    if not isinstance(bits, int) or not 2 <= bits <= 8:
        raise SLMLabError(f"bits={bits!r} is not supported; quantize to an integer width from 2 to 8 (8 or 4 usually).")
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def _stored_scale(scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The scale as it will be stored in `dtype`, rounded up (never down) so no value overflows the range."""
    scale = scale.clamp(min=_TINY_SCALE)
    if dtype == torch.float32:
        return scale
    stored = scale.to(dtype)
    if not torch.isfinite(stored).all():
        raise SLMLabError(f"a scale of {scale.max().item():.3g} does not fit in {dtype}; use scale_dtype=torch.float32.")
    up = torch.nextafter(stored, torch.tensor(float("inf"), dtype=dtype))
    return torch.where(stored.float() < scale, up, stored)


def absmax_quantize(x: torch.Tensor, bits: int = 8, dim: int | None = None,
                    scale_dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric quantization: scale = max|x| / (2^(bits-1) - 1), q = round(x / scale).

    dim: the dimension each scale covers (reduced to find its max|x|); None = one scale for the whole
    tensor. For a weight (out, in), dim=-1 gives one scale per output row (per channel).
    Returns q (int8, x's shape) and scale (scale_dtype, x's shape with `dim` kept as size 1).
    """
    qmin, qmax = qrange(bits)
    x = x.detach().float()
    amax = x.abs().amax() if dim is None else x.abs().amax(dim=dim, keepdim=True)
    scale = _stored_scale(amax / qmax, scale_dtype)
    if dim is None:
        scale = scale.reshape([1] * x.dim())
    q = torch.round(x / scale.float()).clamp(qmin, qmax).to(torch.int8)
    return q, scale


def zeropoint_quantize(x: torch.Tensor, bits: int = 8, dim: int | None = None,
                       scale_dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Asymmetric quantization: the range [min, max] (widened to include 0) maps onto all 2^bits integers.

    scale = (max - min) / (2^bits - 1); zero = qmin - round(min / scale) is the integer that stands for
    0.0; q = clamp(round(x / scale) + zero, qmin, qmax). Including 0 in the range keeps 0.0 exact and
    the zero-point inside [qmin, qmax], so it fits in the same bits.
    dim as in `absmax_quantize`. Returns q (int8), scale (scale_dtype) and zero (int8), the last two
    with `dim` kept as size 1.
    """
    qmin, qmax = qrange(bits)
    x = x.detach().float()
    if dim is None:
        lo, hi = x.amin().reshape([1] * x.dim()), x.amax().reshape([1] * x.dim())
    else:
        lo, hi = x.amin(dim=dim, keepdim=True), x.amax(dim=dim, keepdim=True)
    lo, hi = lo.clamp(max=0.0), hi.clamp(min=0.0)
    scale = _stored_scale((hi - lo) / (qmax - qmin), scale_dtype)
    zero = (qmin - torch.round(lo / scale.float())).clamp(qmin, qmax)
    q = (torch.round(x / scale.float()) + zero).clamp(qmin, qmax).to(torch.int8)
    return q, scale, zero.to(torch.int8)


def dequantize(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None = None) -> torch.Tensor:
    """x̂ = (q - zero) · scale in float32 (zero None: symmetric). scale and zero broadcast against q."""
    x = q.float() if zero is None else q.float() - zero.float()
    return x * scale.float()


# ------------------------------------------------------------------------- groups ----
def quantize_groups(w: torch.Tensor, bits: int = 4, group_size: int | None = None, symmetric: bool = False,
                    scale_dtype: torch.dtype = torch.float32):
    """Group-wise quantization of a weight w (out, in): each row in groups of `group_size` inputs.

    group_size None = one group per row (per channel). When `in` is not a multiple of group_size the
    last group of each row is shorter. Returns q (int8, (out, in)), scale (scale_dtype, (out, G)) and
    zero (int8, (out, G), or None when symmetric), with G = ceil(in / group_size).
    """
    if w.dim() != 2:
        raise SLMLabError(f"quantize_groups expects a 2-D weight (out, in), got shape {tuple(w.shape)}.")
    n_out, n_in = w.shape
    g = n_in if group_size is None else group_size
    if not isinstance(g, int) or g <= 0:
        raise SLMLabError(f"group_size={group_size!r} must be a positive integer (or None for one group per row).")
    n_groups = math.ceil(n_in / g)
    pad = n_groups * g - n_in
    # Replicate the last column into the padding: it cannot widen a group's range.
    wp = F.pad(w.detach().float(), (0, pad), mode="replicate") if pad else w.detach().float()
    grouped = wp.reshape(n_out, n_groups, g)
    if symmetric:
        q, scale = absmax_quantize(grouped, bits, dim=-1, scale_dtype=scale_dtype)
        zero = None
    else:
        q, scale, zero = zeropoint_quantize(grouped, bits, dim=-1, scale_dtype=scale_dtype)
        zero = zero.squeeze(-1)
    return q.reshape(n_out, n_groups * g)[:, :n_in], scale.squeeze(-1), zero


def dequantize_groups(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None,
                      group_size: int | None) -> torch.Tensor:
    """Inverse of `quantize_groups`: q (..., in), scale and zero (..., G) → float32 (..., in)."""
    n_in = q.shape[-1]
    g = n_in if group_size is None else group_size
    s = scale.float().repeat_interleave(g, dim=-1)[..., :n_in]
    if zero is None:
        return q.float() * s
    return (q.float() - zero.float().repeat_interleave(g, dim=-1)[..., :n_in]) * s


# ----------------------------------------------------------------------- packing ----
def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """Two int4 values per byte: (..., n) int8 in [-8, 7] → (..., ceil(n/2)) uint8.

    Column 2j goes in the low 4 bits, column 2j+1 in the high 4 bits, each as 4-bit two's complement.
    """
    if q.numel() and (q.min() < -8 or q.max() > 7):
        raise SLMLabError(f"int4 values must lie in [-8, 7], got [{int(q.min())}, {int(q.max())}]; "
                          "quantize with bits=4 first.")
    u = q.to(torch.int16) & 0xF
    if u.shape[-1] % 2:
        u = torch.cat([u, torch.zeros_like(u[..., :1])], dim=-1)
    return (u[..., 0::2] | (u[..., 1::2] << 4)).to(torch.uint8)


def unpack_int4(packed: torch.Tensor, n: int | None = None) -> torch.Tensor:
    """Inverse of `pack_int4`: (..., m) uint8 → (..., n) int8 in [-8, 7] (n defaults to 2m)."""
    p = packed.to(torch.int16)
    v = torch.stack([p & 0xF, p >> 4], dim=-1).flatten(-2)
    v = v - 16 * (v > 7).to(torch.int16)          # 4-bit two's complement: 8..15 stand for -8..-1
    return v[..., : (n if n is not None else v.shape[-1])].to(torch.int8)


# ------------------------------------------------------------------------ modules ----
class QuantizedWeight(nn.Module):
    """A weight matrix (out, in) kept as integers (int4 packed two per byte) plus per-group scales
    (float16) and zero-points (int8, asymmetric only). `dequantize()` rebuilds the float matrix."""

    ints: torch.Tensor             # buffers, registered in __init__
    scale: torch.Tensor
    zero: torch.Tensor | None

    def __init__(self, weight: torch.Tensor, bits: int = 8, group_size: int | None = None,
                 symmetric: bool = True, scale_dtype: torch.dtype = torch.float16):
        super().__init__()
        q, scale, zero = quantize_groups(weight, bits, group_size, symmetric, scale_dtype)
        self.bits, self.group_size, self.symmetric = bits, group_size, symmetric
        self.out_features, self.in_features = weight.shape
        self.register_buffer("ints", pack_int4(q) if bits == 4 else q)   # other widths: one per byte
        self.register_buffer("scale", scale)
        self.register_buffer("zero", zero)

    def integers(self, rows: torch.Tensor | None = None) -> torch.Tensor:
        """The integer codes (out, in) as int8, or only `rows` (any shape of row indices) → (*rows, in)."""
        ints = self.ints if rows is None else self.ints[rows]
        return unpack_int4(ints, self.in_features) if self.bits == 4 else ints

    def dequantize(self, rows: torch.Tensor | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The float weight (out, in), or only the given rows (*rows, in) — what an embedding lookup needs."""
        scale = self.scale if rows is None else self.scale[rows]
        zero = self.zero if (rows is None or self.zero is None) else self.zero[rows]
        return dequantize_groups(self.integers(rows), scale, zero, self.group_size).to(dtype)

    def extra_repr(self) -> str:
        kind = "symmetric" if self.symmetric else "zero-point"
        return (f"({self.out_features}, {self.in_features}), int{self.bits}, "
                f"group_size={self.group_size or self.in_features}, {kind}")


class QuantizedLinear(nn.Module):
    """Weight-only quantized Linear: y = x · dequantize(W)ᵀ + b. x: (..., in) → (..., out).

    Stores the integers and scales (a `QuantizedWeight`, shareable with a `QuantizedEmbedding` when
    the weight is tied) and a float bias; dequantizes the weight on every call, in x's dtype.
    """

    def __init__(self, qweight: QuantizedWeight, bias: torch.Tensor | None = None):
        super().__init__()
        self.qweight = qweight
        self.in_features, self.out_features = qweight.in_features, qweight.out_features
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)

    @classmethod
    def from_linear(cls, linear: nn.Linear, bits: int = 8, group_size: int | None = None,
                    symmetric: bool = True, scale_dtype: torch.dtype = torch.float16) -> QuantizedLinear:
        return cls(QuantizedWeight(linear.weight, bits, group_size, symmetric, scale_dtype), linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.qweight.dequantize(dtype=x.dtype), self.bias)


class QuantizedEmbedding(nn.Module):
    """Embedding lookup from a `QuantizedWeight` (vocab, dim): dequantizes only the rows asked for.
    idx: (...) int64 → (..., dim) float32."""

    def __init__(self, qweight: QuantizedWeight):
        super().__init__()
        self.qweight = qweight

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.qweight.dequantize(rows=idx)


# ------------------------------------------------------------------------ a model ----
def _weight_users(model: nn.Module) -> list[list[tuple[str, nn.Linear | nn.Embedding]]]:
    """Linear/Embedding modules grouped by the weight they use (a tied embedding and head: one group)."""
    groups: dict[int, list[tuple[str, nn.Linear | nn.Embedding]]] = {}
    for name, m in model.named_modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            groups.setdefault(id(m.weight), []).append((name, m))
    return list(groups.values())


def quantizable_layers(model: nn.Module) -> list[str]:
    """Names of the Linear and Embedding modules `quantize_model` converts, one per weight matrix
    (a tied head is listed under the embedding whose matrix it shares)."""
    return [users[0][0] for users in _weight_users(model)]


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, module)


def quantize_model(model: nn.Module, bits: int = 8, group_size: int | None = None, *,
                   symmetric: bool | None = None, embedding: bool = True, only: Iterable[str] | None = None,
                   scale_dtype: torch.dtype = torch.float16) -> nn.Module:
    """A weight-only quantized COPY of `model` (the original is left untouched), in eval mode.

    Every nn.Linear becomes a `QuantizedLinear`; with embedding=True every nn.Embedding becomes a
    `QuantizedEmbedding`. A matrix shared by the embedding and the output head (weight tying) is
    quantized once and both modules use it, so it is stored once; with embedding=False embeddings and
    a head tied to one stay float32. Norms and biases stay float32.
    bits: 2–8 (4 is packed two per byte; other widths below 8 take a byte each);
    group_size: inputs per scale, None = one scale per output channel;
    symmetric: absmax (default for 8 bits) or zero-point (default below 8 bits);
    only: quantize just these module names (see `quantizable_layers`), e.g. for per-layer sensitivity.
    """
    qrange(bits)
    symmetric = bits >= 8 if symmetric is None else symmetric
    names = {name for users in _weight_users(model) for name, _ in users}
    wanted = names if only is None else set(only)
    if wanted - names:
        raise SLMLabError(f"no Linear or Embedding named {sorted(wanted - names)[0]!r}; choose from "
                          f"quantizable_layers(model), e.g. {quantizable_layers(model)[0]!r}.")
    new = copy.deepcopy(model)
    for users in _weight_users(new):
        if not any(name in wanted for name, _ in users):
            continue
        if not embedding and (len(users) > 1 or any(isinstance(m, nn.Embedding) for _, m in users)):
            continue
        qw = QuantizedWeight(users[0][1].weight, bits, group_size, symmetric, scale_dtype)
        for name, m in users:
            _set(new, name, QuantizedLinear(qw, m.bias) if isinstance(m, nn.Linear) else QuantizedEmbedding(qw))
    return new.eval()


# -------------------------------------------------------------------------- sizes ----
def tensor_bytes(t: torch.Tensor) -> int:
    """Bytes a tensor occupies: values × element size; a torch quantized tensor adds its scales and
    zero-points (float64 and int64 each, one per channel or one in all)."""
    if t.is_quantized:
        n = t.numel() * t.element_size()
        if t.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric,
                           torch.per_channel_affine_float_qparams):
            q = t.q_per_channel_scales()
            z = t.q_per_channel_zero_points()
            return n + q.numel() * q.element_size() + z.numel() * z.element_size()
        return n + 8 + 8
    return t.numel() * t.element_size()


def _flat(value):
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (tuple, list)):
        for v in value:
            yield from _flat(v)


def model_bytes(model: nn.Module) -> int:
    """True storage size: the bytes of every tensor in the model's state_dict, each tensor counted once.

    A tied embedding/head (one matrix used twice) counts once; packed int4 counts half a byte per value
    because it *is* stored that way; scales and zero-points count. Non-persistent buffers (the RoPE
    tables, recomputed from the config and never saved) are not part of the state_dict and not counted.
    Works for `quantize_model` results and for PyTorch's own quantized modules (torch.ao).
    """
    seen, total = set(), 0
    for value in model.state_dict(keep_vars=True).values():
        for t in _flat(value):
            key = (t.data_ptr(), t.dtype, tuple(t.shape), tuple(t.stride())) if not t.is_quantized else id(t)
            if key in seen:
                continue
            seen.add(key)
            total += tensor_bytes(t)
    return total


# ------------------------------------------------------------ activation outliers ----
@torch.no_grad()
def input_outliers(model: nn.Module, idx: torch.Tensor) -> dict[str, float]:
    """For every nn.Linear, how lopsided its inputs are across channels on the tokens idx (B, T):
    the largest channel's max |x| over the median channel's. Per-tensor activation quantization (ONNX
    Runtime's dynamic int8, PyTorch's) spends its one scale on the largest channel, so a ratio of 20 leaves
    the typical channel 1/20 of the int8 steps. Large trained LLMs grow such outlier channels (LLM.int8,
    Dettmers et al., 2022); weight-only quantization never rounds activations at all."""
    ratios: dict[str, float] = {}

    def hook(name):
        def record(module, args):
            amax = args[0].detach().abs().reshape(-1, args[0].shape[-1]).amax(0)      # (in,) per channel
            ratios[name] = max(ratios.get(name, 0.0), float(amax.max() / amax.median().clamp(min=1e-12)))
        return record

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    try:
        model.eval()(idx)
    finally:
        for h in handles:
            h.remove()
    return ratios


# ----------------------------------------------------------------- PyTorch's path ----
def torch_dynamic_int8(model: nn.Module, per_channel: bool = True) -> nn.Module:
    """PyTorch's own int8 path on CPU: `torch.ao.quantization.quantize_dynamic` on every nn.Linear.

    Weights become int8 (one scale per output channel with per_channel=True); activations are quantized
    to int8 on the fly, per batch, so the matmul runs on int8 (fbgemm/onednn kernels). Embeddings stay
    float32 (a tied head gets its own int8 copy). Returns a new model. torch.ao.quantization is
    deprecated since torch 2.10 in favour of the separate `torchao` package, which the course does not
    install; the deprecation warnings are silenced here.
    """
    from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig, quantize_dynamic

    qconfig = per_channel_dynamic_qconfig if per_channel else default_dynamic_qconfig
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        return quantize_dynamic(copy.deepcopy(model).eval(), {nn.Linear: qconfig}, dtype=torch.qint8)
