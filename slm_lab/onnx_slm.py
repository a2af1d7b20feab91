"""The exported SLM behind the PyTorch SLM's call, so the course's evaluation code runs ONNX Runtime unchanged.

`OnnxAsSLM(path)` answers `model(idx, kv_cache=..., use_cache=...)` with an `SLMOutput` (torch logits, the
graph's presents as the cache) and has the `cfg` fields callers read: `task_eval` scores it, `chat.chat`
decodes with it, `latency.time_decode` times it — the same code paths as the PyTorch model, so accuracy and
speed compare like for like. Loading the graph is `slm_lab.onnx_runtime`; writing it, `slm_lab.onnx_export`.
"""
from __future__ import annotations

from types import SimpleNamespace

import torch
import torch.nn as nn

from .errors import SLMLabError
from .model import SLMOutput
from .onnx_runtime import OnnxLM


class OnnxAsSLM(nn.Module):
    """An exported graph behind the SLM's call: `model(idx, kv_cache=..., use_cache=...)` gives an SLMOutput
    whose logits are torch tensors, so code written for the SLM (task_eval, chat.chat, latency.time_decode)
    scores and times the ONNX Runtime model unchanged. Inference only; the cache is the graph's NumPy
    presents, opaque to callers as the SLM's is."""

    def __init__(self, path_or_session, threads: int = 1):
        super().__init__()
        self.lm = OnnxLM(path_or_session, threads)
        s = self.lm.spec
        self.cfg = SimpleNamespace(vocab_size=s.vocab_size, block_size=s.block_size, n_layer=s.n_layer,
                                   n_kv_head=s.n_kv_head, head_dim=s.head_dim)
        self.anchor = nn.Parameter(torch.zeros(0), requires_grad=False)   # callers read the device from parameters()

    def forward(self, idx: torch.Tensor, targets=None, kv_cache=None, use_cache: bool = False):
        if targets is not None:
            raise SLMLabError("OnnxAsSLM runs inference only; compute losses from its logits.")
        logits, presents = self.lm.forward(idx.cpu().numpy(), kv_cache)
        return SLMOutput(torch.from_numpy(logits), None, presents if (use_cache or kv_cache) else None)
