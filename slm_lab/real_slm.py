"""A real pretrained SLM through the course's own pipeline, when a network (or a cache) has one.

`load_slm` brings a Hugging Face Llama/GPT-2 checkpoint in as the course's `SLM` (through `slm_lab.hub` and
`slm_lab.hf.from_hf`, same logits); `token_batches` cuts a text into fixed next-token batches with its
tokenizer; `quantization_report` runs module 05's formats on it — loss, bytes, decode speed through the packed
kernels, and how lopsided each Linear's inputs are. Offline, `hub.hub_source` returns None and a notebook
prints one line instead (the functions here are tested on a random-weight Llama saved with save_pretrained).
"""
from __future__ import annotations

from pathlib import Path

import torch

from .evaluate import mean_loss
from .fast_quant import pack_for_cpu
from .hf import from_hf
from .hub import load_causal_lm
from .latency import time_decode
from .model import SLM
from .quantize import input_outliers, model_bytes, quantize_model

FORMATS: dict[str, tuple[int, int | None]] = {"int8 per channel": (8, None), "int4 g32": (4, 32)}   # (bits, group)


def load_slm(repo: str | Path, source: str) -> tuple[SLM, object]:
    """(the course's SLM with the checkpoint's weights, its transformers tokenizer); one SLMLabError line when
    it cannot be loaded (see `hub.load_causal_lm`)."""
    hf_model, tokenizer = load_causal_lm(repo, source)
    return from_hf(hf_model), tokenizer


def token_batches(tokenizer, text: str, n: int, length: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """n (x, y) pairs of shape (1, length): consecutive windows of the text's tokens, y shifted by one.
    Fewer when the text is too short for n windows."""
    ids = torch.tensor(tokenizer(text)["input_ids"])
    n = min(n, (ids.numel() - 1) // length)
    return [(ids[i * length: (i + 1) * length].view(1, -1), ids[i * length + 1: (i + 1) * length + 1].view(1, -1))
            for i in range(n)]


def quantization_report(model: SLM, batches, decode_tokens: int = 16, repeats: int = 2) -> dict:
    """fp32 and each of FORMATS: loss on the batches, bytes stored, decode tokens/s on the packed kernels
    (fp32 as it is); and the three most lopsided Linear inputs (`quantize.input_outliers`)."""
    prompt = min(32, model.cfg.block_size - decode_tokens)
    rows = {"fp32": {"loss": mean_loss(model, batches), "bytes": model_bytes(model),
                     "decode_tokens_per_s": time_decode(model, prompt, decode_tokens, repeats)}}
    for name, (bits, group) in FORMATS.items():
        q = quantize_model(model, bits, group)
        rows[name] = {"loss": mean_loss(q, batches), "bytes": model_bytes(q),
                      "decode_tokens_per_s": time_decode(pack_for_cpu(q), prompt, decode_tokens, repeats)}
    ratios = input_outliers(model, batches[0][0])
    return {"rows": rows, "outliers": sorted(ratios.items(), key=lambda kv: -kv[1])[:3]}
