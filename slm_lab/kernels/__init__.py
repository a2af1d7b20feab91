"""Attention kernels for module 09: naive (N² memory), tiled with an online softmax (linear memory,
PyTorch), and a FlashAttention-2-style forward kernel in Triton.

    from slm_lab.kernels import naive_attention, tiled_attention, triton_attention

The Triton names load lazily: importing this package never imports Triton (absent on macOS/Windows),
and the first use of `triton_attention` (defined in `triton_flash.py`) switches on the CPU interpreter
when there is no GPU.
"""
from __future__ import annotations

import importlib

from .naive import attention_flops, attention_scores, causal_mask, check_qkv, naive_attention, scores_bytes
from .tiled import (
    flash_attention,
    merge_softmax_stats,
    softmax_stats,
    tile_schedule,
    tiled_attention,
    tiled_attention_backward,
)

_LAZY = {name: "triton_flash" for name in ("triton_attention", "launch", "attn_fwd_kernel", "triton_available",
                                            "interpreting", "bf16_supported")}

__all__ = ["naive_attention", "attention_scores", "tiled_attention", "tiled_attention_backward",
           "flash_attention", "softmax_stats", "merge_softmax_stats", "tile_schedule", "causal_mask", "check_qkv",
           "attention_flops", "scores_bytes", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        module = importlib.import_module(f".{_LAZY[name]}", __name__)
        value = getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
