"""Latency: measure it on this machine, and predict it with a roofline whose rates are measured too.

Roofline: a step takes as long as the slower of moving its bytes and doing its FLOPs.
  decode (one new token, batch 1): read every weight once → time ≈ weight bytes ÷ memory bandwidth;
  prefill (a whole prompt at once): many tokens share each weight read → time ≈ FLOPs ÷ compute rate.
`measure_machine()` measures both rates here (a large-tensor sum and copy; an fp32 matrix multiply);
`time_decode` / `time_prefill` measure the course's SLM with its KV cache. Speed does not depend on the
weight values, so models built from a real config with random weights time like the real ones.
"""
from __future__ import annotations

import math
import os
import statistics
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn

from .errors import SLMLabError
from .model import SLM, SLMConfig
from .sizing import (
    Arch,
    Hardware,
    architecture,
    forward_flops_per_token,
    hardware,
    kv_cache_bytes,
    matmul_parameters,
    memory_needed,
    weight_bytes,
)
from .timing import median_seconds


# ------------------------------------------------------------------- roofline ----
def decode_seconds(arch: Arch, hw: str | Hardware, dtype: str = "bf16", context: int = 512, batch: int = 1,
                   n_devices: int = 1) -> float:
    """Roofline time for one decode step: every weight and the KV cache are read once, every sequence
    does its FLOPs; the slower of the two wins (at batch 1 it is the bytes)."""
    hw = hardware(hw)
    moved = weight_bytes(matmul_parameters(arch), dtype) + kv_cache_bytes(arch, context, batch, dtype)
    work = batch * forward_flops_per_token(arch, context)
    return max(moved / (hw.bandwidth * n_devices), work / (hw.flops * n_devices))


def prefill_seconds(arch: Arch, hw: str | Hardware, dtype: str = "bf16", prompt: int = 512, batch: int = 1) -> float:
    """Roofline time to read a prompt: prompt·2·matmul FLOPs plus causal attention (token t sees t+1 keys)."""
    hw, a = hardware(hw), architecture(arch)
    attention = 4.0 * a.n_layer * a.n_head * a.head_dim * prompt * (prompt + 1) / 2
    work = batch * (2.0 * matmul_parameters(a) * prompt + attention)
    moved = weight_bytes(matmul_parameters(a), dtype) + kv_cache_bytes(a, prompt, batch, dtype)
    return max(work / hw.flops, moved / hw.bandwidth)


@dataclass(frozen=True)
class ServingCost:
    n_devices: int
    tokens_per_s: float         # generated tokens per second, all sequences together
    dollars_per_million: float


def serving_cost(arch: Arch, hw: str | Hardware = "H100 80 GB", dtype: str = "bf16", batch: int = 32,
                 context: int = 2048) -> ServingCost:
    """Best-case (roofline) cost per million generated tokens: as many devices as the memory needs,
    `batch` sequences decoded together, each step as fast as bytes and FLOPs allow."""
    hw = hardware(hw)
    if hw.price_per_hour is None:
        raise SLMLabError(f"{hw.name} has no hourly price (you own it); pick a rented GPU such as 'H100 80 GB'.")
    n = max(1, math.ceil(memory_needed(arch, dtype, context, batch) / (hw.memory * hw.usable)))
    tps = batch / decode_seconds(arch, hw, dtype, context, batch, n_devices=n)
    return ServingCost(n, tps, n * hw.price_per_hour / 3600 / tps * 1e6)


# ---------------------------------------------------------------- measurement ----

@dataclass(frozen=True)
class MachineRates:
    """What this machine does, measured: bytes/s (read and copy) and fp32 matmul FLOP/s."""
    read_bandwidth: float
    copy_bandwidth: float
    matmul_flops: float
    threads: int
    device: str

    def hardware(self) -> Hardware:
        """This machine as the roofline sees it (reading weights is what decode does, so: read bandwidth)."""
        return Hardware(f"this machine ({self.threads} threads)", _ram_bytes(), self.read_bandwidth,
                        self.matmul_flops, usable=0.5, source="measured by slm_lab.latency.measure_machine")

    def to_dict(self) -> dict:
        return asdict(self)


def _ram_bytes() -> float:
    try:
        return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):   # not POSIX: unknown
        return float("nan")


def measure_bandwidth(megabytes: int = 512, repeats: int = 7) -> tuple[float, float]:
    """(read, copy) bytes/s on a float32 tensor far larger than the CPU caches; medians over repeats."""
    n = megabytes * 2**20 // 4
    src, dst = torch.ones(n), torch.empty(n)
    read = median_seconds(lambda: src.sum(), repeats)
    copy = median_seconds(lambda: dst.copy_(src), repeats)
    return 4 * n / read, 2 * 4 * n / copy          # a copy reads and writes every byte


def decode_read_bytes(model: nn.Module) -> int:
    """Bytes one decode step reads from its weights: every tensor of the model (float, packed integers,
    scales) except those only an embedding lookup uses, of which a step reads one row. A table that a
    head shares is read in full by the head, so it counts."""
    from torch.ao.nn.quantized.modules.linear import LinearPackedParams

    from .quantize import QuantizedEmbedding, tensor_bytes

    named = list(model.named_modules(remove_duplicate=False))      # a shared table appears under each user
    lookups = [n + "." for n, m in named if isinstance(m, (nn.Embedding, QuantizedEmbedding))]
    read: dict[int, torch.Tensor] = {}
    for name, m in named:
        if isinstance(m, (nn.Embedding, QuantizedEmbedding)) or any(name.startswith(p) for p in lookups):
            continue
        tensors = list(m.parameters(recurse=False)) + list(m.buffers(recurse=False))
        # torch.ao's packed dynamic-int8 weights hide from parameters(): read them from the module that
        # holds them (LinearPackedParams), not also from the Linear that wraps it
        if isinstance(m, LinearPackedParams):
            tensors += list(m._weight_bias())
        for t in tensors:
            if t is not None:
                read[id(t)] = t
    return sum(tensor_bytes(t) for t in read.values())


def weight_read_bandwidth(model: nn.Module, repeats: int = 7) -> list[float]:
    """Read bandwidth (bytes/s) on the buffers decode reads: each repeat sums every weight tensor of
    `model` once, in order — the same sizes, the same memory and the same cache state as a decode step
    of that model. Returns one figure per repeat (their spread is the measurement's noise)."""
    tensors = [t for t in list(model.parameters()) + list(model.buffers()) if t.dim() > 0]
    n_bytes = sum(t.numel() * t.element_size() for t in tensors)
    with torch.inference_mode():
        for t in tensors:                                   # warm-up: the pages are touched once
            t.sum()
        out = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            for t in tensors:
                t.sum()
            out.append(n_bytes / (time.perf_counter() - t0))
    return out


def measure_matmul_flops(n: int = 1024, repeats: int = 7) -> float:
    """FLOP/s of an n×n fp32 matrix multiply (2·n³ FLOPs), median over repeats."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)
    return 2 * n**3 / median_seconds(lambda: a @ b, repeats, warmup=2)


def measure_machine(megabytes: int = 512, matmul_n: int = 1024, repeats: int = 7) -> MachineRates:
    """Memory bandwidth and matmul rate of this CPU with torch's current thread count."""
    read, copy = measure_bandwidth(megabytes, repeats)
    return MachineRates(read, copy, measure_matmul_flops(matmul_n, repeats), torch.get_num_threads(), "cpu")


def _prompt(model, prompt_len: int, batch: int = 1) -> torch.Tensor:
    cfg = model.cfg
    if prompt_len < 1 or prompt_len > cfg.block_size:
        raise SLMLabError(f"prompt_len={prompt_len} must be between 1 and the model's block_size={cfg.block_size}.")
    return torch.randint(0, cfg.vocab_size, (batch, prompt_len), generator=torch.Generator().manual_seed(0))


@torch.inference_mode()
def time_prefill(model, prompt_len: int = 128, repeats: int = 5) -> float:
    """Median seconds to run a prompt of prompt_len tokens through the model (building its KV cache)."""
    model.eval()
    idx = _prompt(model, prompt_len)
    return median_seconds(lambda: model(idx, use_cache=True), repeats)


@torch.inference_mode()
def time_decode(model, prompt_len: int = 64, new_tokens: int = 64, repeats: int = 3) -> float:
    """Median decode speed in tokens/s: prefill once (not timed), then new_tokens greedy steps, each
    feeding only the newest token and the KV cache."""
    model.eval()
    if prompt_len + new_tokens > model.cfg.block_size:
        raise SLMLabError(f"prompt_len + new_tokens = {prompt_len + new_tokens} exceeds block_size="
                          f"{model.cfg.block_size}; use fewer tokens.")
    idx = _prompt(model, prompt_len)

    def decode():
        out = model(idx, use_cache=True)
        nxt, cache = out.logits[:, -1:].argmax(-1), out.kv_cache
        t0 = time.perf_counter()
        for _ in range(new_tokens):
            out = model(nxt, kv_cache=cache)
            nxt, cache = out.logits[:, -1:].argmax(-1), out.kv_cache
        return time.perf_counter() - t0

    decode()                                              # warm-up
    return new_tokens / statistics.median(decode() for _ in range(repeats))


@torch.no_grad()
def prepack_for_decode(model: nn.Module) -> nn.Module:
    """Store every nn.Linear weight transposed in memory, in place: same shape, same values, strides (1, out).

    nn.Linear keeps one row per output, so a matrix-vector product (a decode step) is a dot product along
    each short row; CPU BLAS kernels stream the transposed storage (one row per input, scaled rows added
    up) faster — the layout optimised runtimes "prepack" into. Outputs agree to float rounding and tied
    weights stay tied. For timing only: training and checkpoints expect the usual layout.
    """
    packed: dict[int, nn.Parameter] = {}
    for mod in model.modules():
        if isinstance(mod, nn.Linear):
            w = mod.weight
            if id(w) not in packed:
                packed[id(w)] = nn.Parameter(w.detach().t().contiguous().t(), requires_grad=w.requires_grad)
            mod.weight = packed[id(w)]
    for mod in model.modules():                       # an embedding tied to a head follows it
        if isinstance(mod, nn.Embedding) and id(mod.weight) in packed:
            mod.weight = packed[id(mod.weight)]
    return model


# ------------------------------------------------------- where decode time goes ----
@torch.inference_mode()
def step_seconds(model: SLM, n_tokens: int = 1, context: int = 64, repeats: int = 50, warmup: int = 3) -> float:
    """Median seconds of one forward pass over n_tokens new tokens after a cached context of `context`
    tokens: a decode step for n_tokens = 1, a speculative check of k drafts for k + 1. The cache is not
    changed (each call returns a new one), so every repeat times the same step."""
    model.eval()
    idx = _prompt(model, context)
    cache = model(idx, use_cache=True).kv_cache
    x = idx[:, -n_tokens:]
    return median_seconds(lambda: model(x, kv_cache=cache), repeats, warmup=warmup)


def skinny_twin(cfg: SLMConfig) -> SLMConfig:
    """Same family, depth and heads, but 8 dimensions per head and a tiny MLP and vocabulary: it runs the same
    operators per step as `cfg`, on almost no weights — its decode step is the fixed cost of running them."""
    return SLMConfig(family=cfg.family, vocab_size=64, block_size=cfg.block_size, n_layer=cfg.n_layer,
                     n_head=cfg.n_head, n_kv_head=cfg.n_kv_head, d_model=8 * cfg.n_head, d_ff=16, bias=cfg.bias,
                     tie_weights=cfg.tie_weights)


@torch.inference_mode()
def gemv_seconds(model: nn.Module, repeats: int = 5) -> float:
    """Median time to multiply one vector by every nn.Linear weight of `model` in forward order: a decode
    step's matrix-vector work and nothing else (the weights stream from memory as they do in decode)."""
    layers = [m for m in model.modules() if isinstance(m, nn.Linear)]
    inputs = [torch.ones(1, m.in_features, dtype=m.weight.dtype) for m in layers]

    def run():
        for m, x in zip(layers, inputs, strict=True):
            torch.nn.functional.linear(x, m.weight)
    return median_seconds(run, repeats)


def decode_breakdown(model: SLM, prompt_len: int = 64, new_tokens: int = 32, repeats: int = 3) -> dict:
    """Seconds per decode step, measured, next to its two parts measured apart: the fixed cost of running
    the step's operators (the skinny twin's step) and the matrix-vector products (`gemv_seconds`)."""
    step = 1 / time_decode(model, prompt_len, new_tokens, repeats)
    torch.manual_seed(0)
    fixed = 1 / time_decode(SLM(skinny_twin(model.cfg)).eval(), prompt_len, new_tokens, repeats)
    gemv = gemv_seconds(model, max(3, repeats))
    weights = sum(m.weight.numel() * m.weight.element_size() for m in model.modules() if isinstance(m, nn.Linear))
    return {"step_s": step, "fixed_s": fixed, "gemv_s": gemv, "gemv_bandwidth": weights / gemv,
            "explained_s": fixed + gemv}
